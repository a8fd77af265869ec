//! The bitsandbytes serialization of one quantized linear, as transformers saves a 4-bit / 8-bit model
//! (the state dict of `bnb.nn.Linear4bit` / `Linear8bitLt`): the tensors `writer` stores and
//! `checkpoint::read_linear` reads back. For the weight `X.weight` `[N, K]` of source dtype T:
//!
//! - NF4 (`Params4bit`, `QuantState.as_dict(packed=True)`):
//!   `X.weight` U8 `[ceil(N·K/2), 1]` (two codes per byte), `X.weight.absmax` F32 `[B]`,
//!   `X.weight.quant_map` F32 `[16]`, `X.weight.quant_state.bitsandbytes__nf4` U8: the UTF-8 of
//!   Python's `json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": T, "shape": [N, K]})`;
//! - NF4 with double quant: `X.weight.absmax` is U8 `[B]` (the 8-bit codes), plus
//!   `X.weight.nested_absmax` F32 `[ceil(B/256)]`, `X.weight.nested_quant_map` F32 `[256]`, and the
//!   JSON gains `"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": <f32 as Python float>`;
//! - Int8 (`Linear8bitLt._save_to_state_dict`): `X.weight` I8 `[N, K]`, `X.SCB` F32 `[N]`,
//!   `X.weight_format` U8 `[]` = 0 (row-major; kept for bitsandbytes' backward compatibility).
//!
//! B = ceil(N·K/64). T is "bfloat16", "float16" or "float32" (`str(dtype).strip("torch.")`).
use super::{nf4, QuantData, QuantFormat, QuantMatrix};
use crate::checkpoint::DType;

/// Element type of a serialized tensor (safetensors names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDType {
    F32,
    BF16,
    F16,
    U8,
    I8,
}

impl OutDType {
    pub fn size(self) -> usize {
        match self {
            OutDType::F32 => 4,
            OutDType::BF16 | OutDType::F16 => 2,
            OutDType::U8 | OutDType::I8 => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            OutDType::F32 => "F32",
            OutDType::BF16 => "BF16",
            OutDType::F16 => "F16",
            OutDType::U8 => "U8",
            OutDType::I8 => "I8",
        }
    }
    pub fn of_float(d: DType) -> Self {
        match d {
            DType::F32 => OutDType::F32,
            DType::BF16 => OutDType::BF16,
            DType::F16 => OutDType::F16,
        }
    }
}

/// One tensor to store: name, dtype, shape and (after quantizing) its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct OutTensor {
    pub name: String,
    pub dtype: OutDType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// A tensor's place in the plan before its bytes exist: name, dtype, shape. `exact` is false for
/// the quant_state JSON, whose length (the printed `nested_offset`) is known only after
/// quantizing: its shape is then an upper bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub name: String,
    pub dtype: OutDType,
    pub shape: Vec<usize>,
    pub exact: bool,
}

impl Planned {
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// `str(torch.dtype).strip("torch.")` of a source dtype.
fn torch_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F32 => "float32",
    }
}

/// The longest `nested_offset` Python prints (shortest round-trip f64 of an f32: at most 17
/// significant digits, sign, point, `e-308`).
const LONGEST_FLOAT: f64 = -1.2345678901234567e-300;

/// The tensors the linear `prefix` (e.g. `transformer.h.0.mlp.w1`) of shape `[n, k]` becomes in
/// `format`, in a fixed order. The quant_state's length is an upper bound (`exact` false).
pub fn plan(prefix: &str, n: usize, k: usize, format: QuantFormat, src: DType) -> Vec<Planned> {
    let p = |name: String, dtype, shape: Vec<usize>| Planned { name, dtype, shape, exact: true };
    let w = format!("{prefix}.weight");
    let total = n * k;
    let blocks = total.div_ceil(nf4::BLOCK);
    match format {
        QuantFormat::Nf4 { double_quant } => {
            let mut v = vec![p(w.clone(), OutDType::U8, vec![total.div_ceil(2), 1])];
            let offset = double_quant.then_some(LONGEST_FLOAT);
            let state_len = quant_state_json(src, n, k, offset).len();
            if double_quant {
                v.push(p(format!("{w}.absmax"), OutDType::U8, vec![blocks]));
                v.push(p(format!("{w}.nested_absmax"), OutDType::F32, vec![blocks.div_ceil(super::blockwise8::BLOCK)]));
                v.push(p(format!("{w}.nested_quant_map"), OutDType::F32, vec![256]));
            } else {
                v.push(p(format!("{w}.absmax"), OutDType::F32, vec![blocks]));
            }
            v.push(p(format!("{w}.quant_map"), OutDType::F32, vec![16]));
            v.push(Planned {
                name: format!("{w}.quant_state.bitsandbytes__nf4"),
                dtype: OutDType::U8,
                shape: vec![state_len],
                exact: false,
            });
            v
        }
        QuantFormat::Int8 => vec![
            p(w, OutDType::I8, vec![n, k]),
            p(format!("{prefix}.SCB"), OutDType::F32, vec![n]),
            p(format!("{prefix}.weight_format"), OutDType::U8, vec![]),
        ],
        QuantFormat::Gptq { .. } => Vec::new(),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The tensors of `plan(prefix, m.n, m.k, m.format(), src)` with their bytes, in the same order
/// (the quant_state at its exact length). `m` is an NF4 or Int8 matrix.
pub fn serialize(prefix: &str, m: &QuantMatrix, src: DType) -> Vec<OutTensor> {
    let plan = plan(prefix, m.n, m.k, m.format(), src);
    let bytes: Vec<Vec<u8>> = match &m.data {
        QuantData::Nf4 { codes, absmax } => {
            let mut b = vec![codes.as_slice().to_vec()];
            let offset = match absmax {
                nf4::Absmax::Plain(a) => {
                    b.push(f32_bytes(a));
                    None
                }
                nf4::Absmax::Double(d) => {
                    b.push(d.q.clone());
                    b.push(f32_bytes(&d.absmax2));
                    b.push(f32_bytes(&d.map[..]));
                    Some(d.offset as f64)
                }
            };
            b.push(f32_bytes(&nf4::NF4_CODE));
            b.push(quant_state_json(src, m.n, m.k, offset).into_bytes());
            b
        }
        QuantData::Int8 { codes, scb } => vec![codes.as_slice().to_vec(), f32_bytes(scb), vec![0u8]],
        QuantData::Gptq { .. } => Vec::new(),
    };
    plan.into_iter()
        .zip(bytes)
        .map(|(p, bytes)| {
            let shape = if p.exact { p.shape } else { vec![bytes.len()] };
            OutTensor { name: p.name, dtype: p.dtype, shape, bytes }
        })
        .collect()
}

/// The `quant_state.bitsandbytes__nf4` JSON exactly as bitsandbytes packs it (`json.dumps` with
/// Python's default separators and float repr); `nested_offset` with double quant.
pub fn quant_state_json(src: DType, n: usize, k: usize, nested_offset: Option<f64>) -> String {
    let mut s =
        format!(r#"{{"quant_type": "nf4", "blocksize": 64, "dtype": "{}", "shape": [{n}, {k}]"#, torch_name(src));
    if let Some(o) = nested_offset {
        s += &format!(r#", "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": {}"#, python_float(o));
    }
    s.push('}');
    s
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional for 1e-4 <= |x| < 1e16
/// (always with a `.`), else `d.ddde±XX` with at least two exponent digits. `x` must be finite.
pub fn python_float(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` prints the shortest round-trip digits: "-1.2345e-5".
    let e = format!("{x:e}");
    let (mant, exp) = e.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mant) = mant.strip_prefix('-').map_or(("", mant), |m| ("-", m));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// config.json's `quantization_config` as transformers writes it for `format`
/// (`BitsAndBytesConfig.to_dict()`, transformers 5.x; compute dtype float32, as the CPU computes).
pub fn quantization_config(format: QuantFormat) -> serde_json::Value {
    let (four, dq) = match format {
        QuantFormat::Nf4 { double_quant } => (true, double_quant),
        _ => (false, false),
    };
    serde_json::json!({
        "quant_method": "bitsandbytes",
        "_load_in_8bit": !four,
        "_load_in_4bit": four,
        "llm_int8_threshold": 6.0,
        "llm_int8_skip_modules": null,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "bnb_4bit_quant_type": if four { "nf4" } else { "fp4" },
        "bnb_4bit_use_double_quant": dq,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "load_in_4bit": four,
        "load_in_8bit": !four
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        // Python 3: repr() of each value.
        for (x, want) in [
            (0.1314188688993454, "0.1314188688993454"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123456789012345.0, "123456789012345.0"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (1.2345678901234567e-300, "1.2345678901234568e-300"),
            (0.03125, "0.03125"),
        ] {
            assert_eq!(python_float(x), want, "{x:e}");
        }
    }
}
