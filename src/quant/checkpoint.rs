//! `QuantWeights`: every weight of the forward pass with the five linears of each layer as a
//! `Linear` (float view or `QuantMatrix`), built three ways:
//! - `from_checkpoint`: a quantized checkpoint as transformers + bitsandbytes or AutoGPTQ save it
//!   (validated: shapes, statistics, quant_state, group size, bits; every error names file and
//!   tensor);
//! - `quantize`: a float checkpoint quantized at load, one tensor at a time (streaming);
//! - `dense`: a float checkpoint as it is (every linear `Linear::Dense`).
//!
//! Quantized: `attn.c_attn`, `attn.c_proj`, `mlp.w1`, `mlp.w2`, `mlp.c_proj` weights. Float: `wte`,
//! `lm_head`, `ln_1`, `ln_2`, `ln_f`, `c_attn.bias`.
//!
//! Stored layouts, per quantized linear X (e.g. `transformer.h.0.attn.c_attn`):
//! - bitsandbytes 4-bit: `X.weight` U8 `[ceil(N·K/2), 1]`, `X.weight.absmax` F32 `[B]` (U8 with
//!   double quant), `X.weight.quant_map` F32 `[16]`, with double quant `X.weight.nested_absmax` F32
//!   and `X.weight.nested_quant_map` F32 `[256]`, and `X.weight.quant_state.bitsandbytes__nf4` U8:
//!   JSON {quant_type, blocksize, shape, nested_blocksize, nested_offset, …};
//! - bitsandbytes 8-bit: `X.weight` I8 `[N, K]`, `X.SCB` F32 `[N]` (`X.weight_format` ignored);
//! - GPTQ: `X.qweight`, `X.qzeros`, `X.scales`, `X.g_idx` (see `gptq`), `X.bias` optional.
use super::{matrix::Bytes, nf4, Linear, QuantFormat, QuantMatrix};
use crate::checkpoint::{Checkpoint, IntDType, IntTensorView, TensorView};
use crate::config::{QuantConfig, QwenConfig};
use crate::error::{Error, Result};
use crate::weights::{checked, Weights};
use std::sync::Arc;

/// One transformer block (C hidden, P = H·D, F mlp width; linears `[N, K]`).
#[derive(Clone, Debug)]
pub struct QuantLayer {
    /// `[C]`
    pub ln_1: TensorView,
    /// `[3P, C]`
    pub c_attn: Linear,
    /// `[3P]`
    pub c_attn_b: TensorView,
    /// `[C, P]`
    pub c_proj: Linear,
    /// `[C]`
    pub ln_2: TensorView,
    /// `[F, C]` up
    pub w1: Linear,
    /// `[F, C]` gate
    pub w2: Linear,
    /// `[C, F]` down
    pub mlp_c_proj: Linear,
}

/// Every weight of the model, linears possibly quantized.
#[derive(Clone, Debug)]
pub struct QuantWeights {
    pub config: QwenConfig,
    /// None: every linear is `Dense`.
    pub format: Option<QuantFormat>,
    /// `[V, C]`
    pub wte: TensorView,
    pub layers: Vec<QuantLayer>,
    /// `[C]`
    pub ln_f: TensorView,
    /// `[V, C]`
    pub lm_head: TensorView,
}

/// The five quantized linears of layer i: (name prefix, N, K).
fn linear_names(cfg: &QwenConfig, i: usize) -> [(String, usize, usize); 5] {
    let (c, p, f) = (cfg.hidden_size, cfg.proj_size(), cfg.mlp_width);
    let n = |s: &str| format!("transformer.h.{i}.{s}");
    [
        (n("attn.c_attn"), 3 * p, c),
        (n("attn.c_proj"), c, p),
        (n("mlp.w1"), f, c),
        (n("mlp.w2"), f, c),
        (n("mlp.c_proj"), c, f),
    ]
}

impl QuantWeights {
    /// `Weights::check_mapped` for these weights: Err naming the tensor and file when a weight file
    /// faulted (truncated or failed to read) while mapped. Checks every float view (embedding, norms,
    /// biases, lm_head, dense linears); a fault is recorded per mapped file, so the packed integer
    /// tensors of a quantized shard are covered by any float tensor in the same shard.
    pub fn check_mapped(&self) -> Result<()> {
        let layers = self.layers.iter().flat_map(|l| {
            let dense = [&l.c_attn, &l.c_proj, &l.w1, &l.w2, &l.mlp_c_proj].into_iter().filter_map(|x| match x {
                Linear::Dense(t) => Some(t),
                Linear::Quant(_) => None,
            });
            [&l.ln_1, &l.c_attn_b, &l.ln_2].into_iter().chain(dense)
        });
        let mut last: Option<&TensorView> = None;
        for t in [&self.wte, &self.ln_f, &self.lm_head].into_iter().chain(layers) {
            if !last.is_some_and(|l| l.shares_map(t)) {
                t.check_mapped()?;
                last = Some(t);
            }
        }
        Ok(())
    }
}

impl QuantWeights {
    /// A float checkpoint as it is.
    pub fn dense(w: &Weights) -> Self {
        Self::from_weights(w, None, |t| Ok(Linear::Dense(t.clone()))).expect("dense never fails")
    }

    /// A float checkpoint quantized at load to `format` (NF4, NF4 with double quant, or Int8), one
    /// tensor at a time: each linear is read from the memory map in chunks and never held as f32.
    pub fn quantize(w: &Weights, format: QuantFormat) -> Result<Self> {
        if let QuantFormat::Gptq { .. } = format {
            return Err(Error::invalid("GPTQ weights are loaded from GPTQ checkpoints, not made at load"));
        }
        Self::from_weights(w, Some(format), |t| Ok(Linear::Quant(Arc::new(QuantMatrix::quantize(t, format)?))))
    }

    fn from_weights(
        w: &Weights,
        format: Option<QuantFormat>,
        f: impl Fn(&TensorView) -> Result<Linear>,
    ) -> Result<Self> {
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(QuantLayer {
                    ln_1: l.ln_1.clone(),
                    c_attn: f(&l.c_attn_w)?,
                    c_attn_b: l.c_attn_b.clone(),
                    c_proj: f(&l.c_proj)?,
                    ln_2: l.ln_2.clone(),
                    w1: f(&l.w1)?,
                    w2: f(&l.w2)?,
                    mlp_c_proj: f(&l.mlp_c_proj)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(QuantWeights {
            config: w.config.clone(),
            format,
            wte: w.wte.clone(),
            layers,
            ln_f: w.ln_f.clone(),
            lm_head: w.lm_head.clone(),
        })
    }

    /// A quantized checkpoint (its config says how: `QuantConfig::load`). A float checkpoint is
    /// an error here (use `dense` or `quantize`).
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Self> {
        let qc = QuantConfig::load(&ck.dir)?.ok_or_else(|| {
            Error::bad_file(ck.dir.join("config.json"), "not a quantized checkpoint (no quantization_config)")
        })?;
        let cfg = &ck.config;
        let (c, p, v) = (cfg.hidden_size, cfg.proj_size(), cfg.vocab_size);
        let format = match qc {
            QuantConfig::Bnb4 { double_quant } => QuantFormat::Nf4 { double_quant },
            QuantConfig::Bnb8 => QuantFormat::Int8,
            QuantConfig::Gptq { bits, group_size, .. } => QuantFormat::Gptq { bits, group: group_size },
        };
        let get = |name: &str, shape: &[usize]| checked(ck, name, shape);
        let wte = get("transformer.wte.weight", &[v, c])?;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let n = |s: &str| format!("transformer.h.{i}.{s}");
                let [a, b, w1, w2, d] =
                    linear_names(cfg, i).map(|(name, rows, cols)| read_linear(ck, format, &name, rows, cols));
                Ok(QuantLayer {
                    ln_1: get(&n("ln_1.weight"), &[c])?,
                    c_attn: a?,
                    c_attn_b: get(&n("attn.c_attn.bias"), &[3 * p])?,
                    c_proj: b?,
                    ln_2: get(&n("ln_2.weight"), &[c])?,
                    w1: w1?,
                    w2: w2?,
                    mlp_c_proj: d?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_f = get("transformer.ln_f.weight", &[c])?;
        let lm_head = if cfg.tie_word_embeddings { wte.clone() } else { get("lm_head.weight", &[v, c])? };
        Ok(QuantWeights { config: cfg.clone(), format: Some(format), wte, layers, ln_f, lm_head })
    }

    /// Bytes of all weights as held (quantized linears count their packed bytes and statistics).
    pub fn byte_len(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.ln_1, &l.c_attn_b, &l.ln_2].iter().map(|t| t.byte_len()).sum::<usize>()
                    + [&l.c_attn, &l.c_proj, &l.w1, &l.w2, &l.mlp_c_proj].iter().map(|w| w.byte_len()).sum::<usize>()
            })
            .sum();
        let head = if self.config.tie_word_embeddings { 0 } else { self.lm_head.byte_len() };
        self.wte.byte_len() + l + self.ln_f.byte_len() + head
    }
}

/// An integer tensor with exactly `dtype` and `shape`.
fn int_tensor(ck: &Checkpoint, name: &str, dtype: IntDType, shape: &[usize], what: &str) -> Result<IntTensorView> {
    let t = ck.int_tensors.get(name).ok_or_else(|| match ck.tensors.get(name) {
        Some(f) => {
            f.error(format!("{what}: expected {} {shape:?}, found {} {:?}", dtype.name(), f.dtype.name(), f.shape))
        }
        None => Error::tensor(ck.dir.clone(), name, format!("{what}: missing from the checkpoint")),
    })?;
    if t.dtype != dtype || t.shape != shape {
        return Err(t.error(format!(
            "{what}: expected {} {shape:?}, found {} {:?}",
            dtype.name(),
            t.dtype.name(),
            t.shape
        )));
    }
    Ok(t.clone())
}

/// A float tensor with exactly `shape` (any float dtype), as f32.
fn float_values(ck: &Checkpoint, name: &str, shape: &[usize], what: &str) -> Result<(TensorView, Vec<f32>)> {
    let t = ck.tensors.get(name).ok_or_else(|| match ck.int_tensors.get(name) {
        Some(i) => {
            i.error(format!("{what}: expected a float tensor {shape:?}, found {} {:?}", i.dtype.name(), i.shape))
        }
        None => Error::tensor(ck.dir.clone(), name, format!("{what}: missing from the checkpoint")),
    })?;
    if t.shape != shape {
        return Err(t.error(format!("{what}: shape {:?}, expected {shape:?}", t.shape)));
    }
    let v = t.to_f32_vec();
    if let Some(x) = v.iter().find(|x| !x.is_finite()) {
        return Err(t.error(format!("{what}: holds a non-finite value {x}")));
    }
    Ok((t.clone(), v))
}

fn i32_values(t: &IntTensorView) -> Vec<i32> {
    t.bytes().chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Read the quantized linear `prefix` (`[N, K]` in `nn.Linear` terms) of `format`.
fn read_linear(ck: &Checkpoint, format: QuantFormat, prefix: &str, n: usize, k: usize) -> Result<Linear> {
    let m = match format {
        QuantFormat::Nf4 { double_quant } => read_nf4(ck, prefix, n, k, double_quant)?,
        QuantFormat::Int8 => {
            let name = format!("{prefix}.weight");
            let codes = int_tensor(ck, &name, IntDType::I8, &[n, k], "Int8 weight codes")?;
            let (_, scb) = float_values(ck, &format!("{prefix}.SCB"), &[n], "Int8 row scales (SCB)")?;
            QuantMatrix::from_int8(&codes.file.clone(), &name, n, k, Bytes::Mapped(codes), scb)?
        }
        QuantFormat::Gptq { bits, group } => read_gptq(ck, prefix, n, k, bits, group)?,
    };
    Ok(Linear::Quant(Arc::new(m)))
}

fn read_nf4(ck: &Checkpoint, prefix: &str, n: usize, k: usize, double_quant: bool) -> Result<QuantMatrix> {
    let name = format!("{prefix}.weight");
    let total = n * k;
    let blocks = total.div_ceil(nf4::BLOCK);
    let codes = int_tensor(ck, &name, IntDType::U8, &[total.div_ceil(2), 1], "NF4 packed weight")?;
    let file = codes.file.clone();
    // quant_state JSON: the format must be what we compute.
    let qs_name = format!("{name}.quant_state.bitsandbytes__nf4");
    let qs = ck.int_tensors.get(&qs_name).ok_or_else(|| {
        let fp4 = ck.int_tensors.contains_key(&format!("{name}.quant_state.bitsandbytes__fp4"));
        Error::tensor(
            file.as_ref().clone(),
            qs_name.as_str(),
            if fp4 { "missing: this weight is FP4, only NF4 is supported" } else { "missing from the checkpoint" },
        )
    })?;
    let state: serde_json::Value =
        serde_json::from_slice(qs.bytes()).map_err(|e| qs.error(format!("quant_state is not valid JSON: {e}")))?;
    let field = |key: &str| state.get(key).filter(|v| !v.is_null());
    if field("quant_type").and_then(|v| v.as_str()) != Some("nf4") {
        return Err(qs.error(format!("quant_type {:?}, expected \"nf4\"", field("quant_type"))));
    }
    if field("blocksize").and_then(|v| v.as_u64()) != Some(nf4::BLOCK as u64) {
        return Err(qs.error(format!("blocksize {:?} is not supported (64)", field("blocksize"))));
    }
    let shape: Option<Vec<usize>> = field("shape").and_then(|v| serde_json::from_value(v.clone()).ok());
    if shape.as_deref() != Some(&[n, k][..]) {
        return Err(qs.error(format!("shape {:?}, expected [{n}, {k}] from config.json", field("shape"))));
    }
    let (_, qmap) = float_values(ck, &format!("{name}.quant_map"), &[16], "NF4 quant_map")?;
    if qmap.iter().zip(&nf4::NF4_CODE).any(|(a, b)| a.to_bits() != b.to_bits()) {
        return Err(Error::tensor(file.as_ref().clone(), format!("{name}.quant_map"), "is not the NF4 code table"));
    }
    let nested = field("nested_offset").is_some();
    if nested != double_quant {
        return Err(qs.error(format!(
            "double quantization is {} here but bnb_4bit_use_double_quant is {double_quant} in config.json",
            if nested { "on" } else { "off" }
        )));
    }
    let absmax = if double_quant {
        if field("nested_blocksize").and_then(|v| v.as_u64()) != Some(super::blockwise8::BLOCK as u64) {
            return Err(qs.error(format!("nested_blocksize {:?} is not supported (256)", field("nested_blocksize"))));
        }
        let offset = field("nested_offset")
            .and_then(|v| v.as_f64())
            .filter(|x| x.is_finite())
            .ok_or_else(|| qs.error(format!("nested_offset {:?} is not a number", field("nested_offset"))))?
            as f32;
        let q = int_tensor(ck, &format!("{name}.absmax"), IntDType::U8, &[blocks], "NF4 double-quantized absmax")?;
        let b2 = blocks.div_ceil(super::blockwise8::BLOCK);
        let (_, absmax2) = float_values(ck, &format!("{name}.nested_absmax"), &[b2], "NF4 nested absmax")?;
        let (_, map) = float_values(ck, &format!("{name}.nested_quant_map"), &[256], "NF4 nested quant_map")?;
        let map: Box<[f32; 256]> = Box::new(map.try_into().expect("256 values (shape checked)"));
        nf4::Absmax::Double(nf4::DoubleQuant { q: q.bytes().to_vec(), absmax2, map, offset })
    } else {
        nf4::Absmax::Plain(float_values(ck, &format!("{name}.absmax"), &[blocks], "NF4 absmax")?.1)
    };
    QuantMatrix::from_nf4(&file, &name, n, k, Bytes::Mapped(codes), absmax)
}

fn read_gptq(ck: &Checkpoint, prefix: &str, n: usize, k: usize, bits: u32, group: usize) -> Result<QuantMatrix> {
    let per = 32 / bits as usize;
    if k % group != 0 {
        return Err(Error::tensor(
            ck.dir.clone(),
            format!("{prefix}.qweight"),
            format!("GPTQ group_size {group} does not divide the {k} inputs"),
        ));
    }
    if k % per != 0 || n % per != 0 {
        return Err(Error::tensor(
            ck.dir.clone(),
            format!("{prefix}.qweight"),
            format!("{bits}-bit GPTQ packs {per} values per int32: K {k} and N {n} must be multiples"),
        ));
    }
    let g = k / group;
    let qweight = int_tensor(ck, &format!("{prefix}.qweight"), IntDType::I32, &[k / per, n], "GPTQ qweight")?;
    let qzeros = int_tensor(ck, &format!("{prefix}.qzeros"), IntDType::I32, &[g, n / per], "GPTQ qzeros")?;
    let (_, scales) = float_values(ck, &format!("{prefix}.scales"), &[g, n], "GPTQ scales")?;
    let g_idx = match ck.int_tensors.get(&format!("{prefix}.g_idx")) {
        Some(_) => i32_values(&int_tensor(ck, &format!("{prefix}.g_idx"), IntDType::I32, &[k], "GPTQ g_idx")?),
        None => (0..k).map(|i| (i / group) as i32).collect(), // old checkpoints: sequential groups
    };
    // A bias on a layer Qwen has without one (c_attn's is read as the model's own bias).
    if !prefix.ends_with("c_attn") {
        if let Some(b) = ck.tensors.get(&format!("{prefix}.bias")) {
            if b.to_f32_vec().iter().any(|&x| x != 0.0) {
                return Err(b.error("a non-zero bias on a layer Qwen has without bias is not supported"));
            }
        }
    }
    let file = qweight.file.clone();
    QuantMatrix::from_gptq(
        &file,
        &format!("{prefix}.qweight"),
        bits,
        group,
        k,
        n,
        Bytes::Mapped(qweight),
        qzeros.bytes(),
        scales,
        &g_idx,
    )
}
