//! Place in the flow: beside it (writes what `checkpoint` reads); the built-in tiny model and the benches' models.
//! Random-weight models in the real Qwen v1 format (config, generation config, index + shards, vocabulary).
//!
//! `synth_model` writes a directory that `Checkpoint::open` reads like a downloaded one: HF v1.1
//! `config.json`, a ChatML `generation_config.json`, `qwen.tiktoken`, `model.safetensors.index.json`
//! and bf16 shards `model-0000k-of-0000n.safetensors` split in model order (layers straddle shards,
//! as in the real 7B). Weights come from a counter-based RNG keyed by (seed, tensor name, element
//! index), so the output is identical whatever the thread count or chunking, and tensors stream to
//! disk in fixed-size chunks: memory stays at one chunk, whatever the model size.
use crate::checkpoint::{Checkpoint, DType};
use crate::error::{Error, Result};
use crate::files;
use rayon::prelude::*;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The vocabulary, embedded so a synthesized model is complete on its own.
const VOCAB: &[u8] = include_bytes!("../assets/qwen.tiktoken");

/// Bump when the generated values change: cached models with another stamp are rebuilt.
const GENERATOR: &str = "qwen-rt synth v2";
/// File in every synthesized directory recording how it was made (ignored by the loader).
const STAMP_FILE: &str = "qwen_rt_synth.json";

/// Elements generated per streamed chunk (x 2 bytes for bf16 = 32 MiB).
const CHUNK_ELEMS: usize = 16 << 20;
/// Elements per parallel task inside a chunk.
const TASK_ELEMS: usize = 64 << 10;

/// Sizes of a synthesized model (HF v1.1 meaning of each field).
#[derive(Debug, Clone, PartialEq)]
pub struct SynthPreset {
    pub name: String,
    /// C
    pub hidden_size: usize,
    /// H (D = C / H)
    pub num_heads: usize,
    /// L
    pub num_layers: usize,
    /// 2 x F
    pub intermediate_size: usize,
    /// V
    pub vocab_size: usize,
    /// S
    pub seq_length: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_epsilon: f64,
}

impl SynthPreset {
    /// C 64, H 4 (D 16), L 2, F 176, V 151936 (the real tokenizer works), S 64 (NTK and logN
    /// kick in on short prompts).
    pub fn tiny() -> Self {
        SynthPreset {
            name: "tiny".into(),
            hidden_size: 64,
            num_heads: 4,
            num_layers: 2,
            intermediate_size: 2 * 176,
            vocab_size: 151936,
            seq_length: 64,
            max_position_embeddings: 32768,
            layer_norm_epsilon: 1e-6,
        }
    }

    /// The real Qwen-7B v1.1 shape.
    pub fn seven_b() -> Self {
        SynthPreset {
            name: "7b".into(),
            hidden_size: 4096,
            num_heads: 32,
            num_layers: 32,
            intermediate_size: 22016,
            vocab_size: 151936,
            seq_length: 8192,
            max_position_embeddings: 32768,
            layer_norm_epsilon: 1e-6,
        }
    }

    /// "tiny" or "7b".
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "7b" | "7B" => Ok(Self::seven_b()),
            _ => Err(Error::invalid(format!("unknown synth preset {name:?} (expected \"tiny\" or \"7b\")"))),
        }
    }

    fn validate(&self) -> Result<()> {
        let ok = self.hidden_size > 0
            && self.num_heads > 0
            && self.hidden_size % self.num_heads == 0
            && (self.hidden_size / self.num_heads) % 2 == 0
            && self.num_layers > 0
            && self.intermediate_size > 0
            && self.intermediate_size % 2 == 0
            && self.vocab_size > 0
            && self.seq_length > 0;
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(format!("synth preset {:?} has inconsistent sizes: {self:?}", self.name)))
        }
    }
}

/// How to write a synthesized model.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Start a new shard before a tensor that would push the current one past this many bytes.
    pub max_shard_bytes: u64,
    /// Write one `model.safetensors` instead of an index + shards.
    pub single_file: bool,
    /// Storage type of every float tensor.
    pub dtype: DType,
    /// Store the five linears of every layer as GPTQ (random codes), not as floats.
    pub gptq: Option<SynthGptq>,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions { max_shard_bytes: 2_000_000_000, single_file: false, dtype: DType::BF16, gptq: None }
    }
}

/// A GPTQ checkpoint as AutoGPTQ writes the official Qwen-7B-Chat-Int4 / -Int8 (`quant::gptq` layout,
/// symmetric, `desc_act` false), with random codes instead of quantized weights: for benchmarks and
/// load tests where no real GPTQ checkpoint can be downloaded. Each linear `X.weight` `[N, K]`
/// becomes `X.qweight` I32 `[K·bits/32, N]` (uniformly random words, so every code value occurs),
/// `X.qzeros` I32 `[G, N·bits/32]` (every field 2^(bits−1) − 1: the symmetric zero 2^(bits−1), stored
/// minus one), `X.scales` F16 `[G, N]` (about 2·absmax/(2^bits − 1) of the float preset's weights, so
/// the dequantized weights have its scale) and `X.g_idx` I32 `[K]` = k / group; G = K / group.
/// config.json gets AutoGPTQ's `quantization_config`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthGptq {
    /// 4 or 8
    pub bits: u32,
    /// Inputs per scale (128 in the official checkpoints); divides every K.
    pub group: usize,
}

impl SynthGptq {
    fn validate(self, p: &SynthPreset) -> Result<()> {
        let per = 32 / self.bits.max(1) as usize;
        let bad =
            |why: String| Err(Error::invalid(format!("synth --gptq {} (group {}): {why}", self.bits, self.group)));
        if self.bits != 4 && self.bits != 8 {
            return bad("bits must be 4 or 8".into());
        }
        if self.group == 0 {
            return bad("the group size must be at least 1".into());
        }
        for t in plan(p, None).iter().filter(|t| is_linear(&t.name)) {
            let (n, k) = (t.shape[0], t.shape[1]);
            if k % self.group != 0 || k % per != 0 || n % per != 0 {
                return bad(format!(
                    "`{}` is [{n}, {k}]: the group must divide K and {per} (values per word) divide K and N",
                    t.name
                ));
            }
        }
        Ok(())
    }

    /// The scale that makes the dequantized weights as large as the float preset's (uniform,
    /// std 0.02, so absmax ≈ 0.02·√3): AutoGPTQ's symmetric scale 2·absmax / (2^bits − 1).
    fn scale(self) -> f32 {
        2.0 * 0.02 * 3f32.sqrt() / ((1u32 << self.bits) - 1) as f32
    }
}

/// How a float tensor's values are drawn.
#[derive(Debug, Clone, Copy)]
enum Init {
    /// Uniform, mean 0, this standard deviation (matrices, biases).
    Uniform(f32),
    /// center + uniform in [-spread, spread] (RMSNorm weights around 1, GPTQ scales).
    Around(f32, f32),
}

/// How a planned tensor is stored and filled.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// In the model's float dtype (`SynthOptions::dtype`), drawn with `Init`.
    Float(Init),
    /// F16 whatever the model dtype (GPTQ scales), drawn with `Init`.
    F16(Init),
    /// I32: uniformly random 32-bit words (GPTQ qweight).
    Words,
    /// I32: every word this value (GPTQ qzeros).
    Repeat(u32),
    /// I32: element k holds k / group (GPTQ g_idx without act-order).
    GroupIndex(usize),
}

/// One tensor of the model, in model order.
struct Planned {
    name: String,
    shape: Vec<usize>,
    fill: Fill,
}

/// The five linears of a layer, the ones quantized checkpoints store quantized.
fn is_linear(name: &str) -> bool {
    ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.w1.weight", "mlp.w2.weight", "mlp.c_proj.weight"]
        .iter()
        .any(|s| name.starts_with("transformer.h.") && name.ends_with(s))
}

/// The GPTQ tensors that replace the linear `X.weight` `[N, K]` (see `SynthGptq`).
fn gptq_tensors(weight: &str, n: usize, k: usize, q: SynthGptq) -> Vec<Planned> {
    let x = weight.strip_suffix(".weight").unwrap_or(weight);
    let (per, g) = (32 / q.bits as usize, k / q.group);
    let zero = (1u32 << (q.bits - 1)) - 1; // stored minus one
    let zeros = (0..per).fold(0u32, |w, j| w | zero << (q.bits as usize * j));
    let t = |s: &str, shape: Vec<usize>, fill| Planned { name: format!("{x}.{s}"), shape, fill };
    vec![
        t("qweight", vec![k / per, n], Fill::Words),
        t("qzeros", vec![g, n / per], Fill::Repeat(zeros)),
        t("scales", vec![g, n], Fill::F16(Init::Around(q.scale(), 0.05 * q.scale()))),
        t("g_idx", vec![k], Fill::GroupIndex(q.group)),
    ]
}

/// Every tensor of spec §2.2, in the order the model uses them (the order shards are cut in); with
/// `gptq`, each linear replaced by its GPTQ tensors.
fn plan(p: &SynthPreset, gptq: Option<SynthGptq>) -> Vec<Planned> {
    let (c, f, v) = (p.hidden_size, p.intermediate_size / 2, p.vocab_size);
    let pr = c; // P = H * D = C for the presets (kv_channels = C / H)
    let m = |name: String, shape: Vec<usize>| Planned { name, shape, fill: Fill::Float(Init::Uniform(0.02)) };
    let norm = |name: String| Planned { name, shape: vec![c], fill: Fill::Float(Init::Around(1.0, 0.1)) };
    let mut out = vec![m("transformer.wte.weight".into(), vec![v, c])];
    for i in 0..p.num_layers {
        let n = |s: &str| format!("transformer.h.{i}.{s}");
        let lin = |s: &str, shape: Vec<usize>| match gptq {
            Some(q) => gptq_tensors(&n(s), shape[0], shape[1], q),
            None => vec![m(n(s), shape)],
        };
        out.push(norm(n("ln_1.weight")));
        out.extend(lin("attn.c_attn.weight", vec![3 * pr, c]));
        out.push(Planned { name: n("attn.c_attn.bias"), shape: vec![3 * pr], fill: Fill::Float(Init::Uniform(0.02)) });
        out.extend(lin("attn.c_proj.weight", vec![c, pr]));
        out.push(norm(n("ln_2.weight")));
        out.extend(lin("mlp.w1.weight", vec![f, c]));
        out.extend(lin("mlp.w2.weight", vec![f, c]));
        out.extend(lin("mlp.c_proj.weight", vec![c, f]));
    }
    out.push(norm("transformer.ln_f.weight".into()));
    out.push(m("lm_head.weight".into(), vec![v, c]));
    out
}

/// One tensor of a preset as a generator on another device needs it: element i is
/// `offset + scale * u(key, i)` with `u` the uniform draw of [`value`] (splitmix64 of
/// `key ^ i * 0xD6E8FEB86659FD93`, top 24 bits mapped to [-1, 1)).
#[derive(Debug, Clone, PartialEq)]
pub struct SynthTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub key: u64,
    pub offset: f32,
    pub scale: f32,
}

/// Every tensor of `p` with seed `seed`, in model order: what `synth_model` writes, so the GPU can
/// generate the same weights without a file (`qwen-run bench --synth 7b`).
pub fn synth_tensors(p: &SynthPreset, seed: u64) -> Vec<SynthTensor> {
    plan(p, None)
        .into_iter()
        .map(|t| {
            let Fill::Float(init) = t.fill else { unreachable!("a float plan has only float tensors") };
            let (offset, scale) = init.affine();
            SynthTensor { key: tensor_key(seed, &t.name), name: t.name, shape: t.shape, offset, scale }
        })
        .collect()
}

/// Element `i` of `t` in f32 (before rounding to the storage dtype).
pub fn synth_tensor_value(t: &SynthTensor, i: u64) -> f32 {
    value(t.key, i, (t.offset, t.scale))
}

/// The config of `p` (bf16 checkpoint), as `synth_model` writes it.
pub fn synth_config(p: &SynthPreset) -> Result<crate::config::QwenConfig> {
    let text = config_json(p, DType::BF16, None).to_string();
    crate::config::QwenConfig::from_json_str(&text, Path::new("<synth config>"))
}

/// splitmix64's output function (Steele, Lea & Flood): `z` advanced by the golden gamma, then mixed.
/// The generator of every synth tensor; also the benches' random operands.
#[inline(always)]
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Per-tensor stream key: the seed mixed with an FNV-1a hash of the name.
fn tensor_key(seed: u64, name: &str) -> u64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    splitmix64(seed ^ splitmix64(h))
}

impl Init {
    /// (offset, scale): value = offset + scale * u with u uniform in [-1, 1).
    fn affine(self) -> (f32, f32) {
        match self {
            Init::Uniform(std) => (0.0, std * 3f32.sqrt()),
            Init::Around(center, spread) => (center, spread),
        }
    }
}

/// The 64 random bits of element `i` of the tensor keyed `key` (float values and GPTQ words alike).
#[inline(always)]
fn draw(key: u64, i: u64) -> u64 {
    splitmix64(key ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// Element `i` of the tensor keyed `key`.
#[inline(always)]
fn value(key: u64, i: u64, (offset, scale): (f32, f32)) -> f32 {
    let bits = draw(key, i);
    let u = (bits >> 40) as f32 * (2.0 / (1u64 << 24) as f32) - 1.0; // uniform [-1, 1)
    offset + scale * u
}

/// bf16 bits of a finite `x`, rounded to nearest even (what `half::bf16::from_f32` gives for
/// finite inputs, in a form that stays fast in unoptimized builds).
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// Fill `out` (elements `base..base + out.len() / es`, little-endian bytes) with the random values
/// of tensor `key`.
fn fill_random(out: &mut [u8], dtype: DType, key: u64, base: u64, init: Init) {
    let a = init.affine();
    match dtype {
        DType::BF16 => match bytemuck::try_cast_slice_mut::<u8, u16>(out) {
            Ok(words) => {
                let mut j = 0;
                while j < words.len() {
                    words[j] = bf16_bits(value(key, base + j as u64, a)).to_le();
                    j += 1;
                }
            }
            Err(_) => {
                for (j, o) in out.chunks_exact_mut(2).enumerate() {
                    o.copy_from_slice(&bf16_bits(value(key, base + j as u64, a)).to_le_bytes());
                }
            }
        },
        DType::F16 => {
            for (j, o) in out.chunks_exact_mut(2).enumerate() {
                let x = value(key, base + j as u64, a);
                o.copy_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes());
            }
        }
        DType::F32 => {
            for (j, o) in out.chunks_exact_mut(4).enumerate() {
                o.copy_from_slice(&value(key, base + j as u64, a).to_le_bytes());
            }
        }
    }
}

fn encode(x: f32, dtype: DType, out: &mut [u8]) {
    match dtype {
        DType::BF16 => out.copy_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes()),
        DType::F16 => out.copy_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes()),
        DType::F32 => out.copy_from_slice(&x.to_le_bytes()),
    }
}

/// Where a written tensor's values come from.
enum Source<'a> {
    /// A float tensor drawn from (key, init).
    Random {
        key: u64,
        init: Init,
    },
    /// Exact float values (tests and tools).
    Values(&'a [f32]),
    /// Integer words: random (key), constant, or k / group.
    Words(u64),
    Repeat(u32),
    GroupIndex(usize),
}

/// Element type of a written tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Elem {
    Float(DType),
    I32,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::Float(d) => d.size(),
            Elem::I32 => 4,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Elem::Float(d) => d.name(),
            Elem::I32 => "I32",
        }
    }
}

struct ToWrite<'a> {
    name: &'a str,
    dtype: Elem,
    shape: &'a [usize],
    source: Source<'a>,
}

/// Fill `out` (I32 elements `base..`, little-endian) from an integer source.
fn fill_words(out: &mut [u8], source: &Source<'_>, base: u64) {
    for (j, o) in out.chunks_exact_mut(4).enumerate() {
        let i = base + j as u64;
        let w = match *source {
            Source::Words(key) => draw(key, i) as u32,
            Source::Repeat(w) => w,
            Source::GroupIndex(group) => (i / group as u64) as u32,
            Source::Random { .. } | Source::Values(_) => unreachable!("float sources are not words"),
        };
        o.copy_from_slice(&w.to_le_bytes());
    }
}

fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::invalid(format!("shape {shape:?} overflows")))
}

/// Write one safetensors file as the `safetensors` crate does: 8-byte LE header length, JSON header
/// (keys sorted, `__metadata__` {"format": "pt"}, padded with spaces to a multiple of 8), then the
/// data, largest dtype first then by name, so every tensor is aligned to its element size.
fn write_safetensors_inner(path: &Path, tensors: &mut [ToWrite<'_>]) -> Result<()> {
    tensors.sort_by(|a, b| b.dtype.size().cmp(&a.dtype.size()).then(a.name.cmp(b.name)));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0usize;
    for t in tensors.iter() {
        let bytes = numel(t.shape)? * t.dtype.size();
        header.insert(
            t.name.to_string(),
            json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [off, off + bytes]}),
        );
        off += bytes;
    }
    let mut text = serde_json::to_string(&header).map_err(|e| Error::invalid(format!("header JSON: {e}")))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(path, e);
    w.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(text.as_bytes()).map_err(io)?;
    // u64 storage so the byte view is 8-byte aligned (bf16 chunks are filled as u16 words).
    let mut store: Vec<u64> = Vec::new();
    for t in tensors.iter() {
        let n = numel(t.shape)?;
        let es = t.dtype.size();
        let mut start = 0usize;
        while start < n {
            let len = CHUNK_ELEMS.min(n - start);
            store.resize((len * es).div_ceil(8), 0);
            let buf = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut store)[..len * es];
            match (&t.source, t.dtype) {
                (Source::Values(v), Elem::Float(dtype)) => {
                    let v = v.get(start..start + len).ok_or_else(|| {
                        Error::invalid(format!("tensor `{}`: {} values for shape {:?}", t.name, v.len(), t.shape))
                    })?;
                    for (x, o) in v.iter().zip(buf.chunks_exact_mut(es)) {
                        encode(*x, dtype, o);
                    }
                }
                (Source::Random { key, init }, Elem::Float(dtype)) => {
                    buf.par_chunks_mut(TASK_ELEMS * es).enumerate().for_each(|(ci, part)| {
                        fill_random(part, dtype, *key, (start + ci * TASK_ELEMS) as u64, *init);
                    });
                }
                (Source::Words(_) | Source::Repeat(_) | Source::GroupIndex(_), Elem::I32) => {
                    buf.par_chunks_mut(TASK_ELEMS * es).enumerate().for_each(|(ci, part)| {
                        fill_words(part, &t.source, (start + ci * TASK_ELEMS) as u64);
                    });
                }
                _ => return Err(Error::invalid(format!("tensor `{}`: its source does not fit its dtype", t.name))),
            }
            w.write_all(buf).map_err(io)?;
            start += len;
        }
    }
    w.flush().map_err(io)?;
    w.into_inner().map_err(|e| Error::io(path, e.into_error()))?.sync_all().map_err(io)?;
    Ok(())
}

/// Write a safetensors file holding the given tensors (name, dtype, shape, values as f32, rounded
/// to nearest-even in the dtype). For tests and tools that need exact, known contents.
pub fn write_safetensors(path: &Path, tensors: &[(&str, DType, &[usize], &[f32])]) -> Result<()> {
    let mut list = Vec::with_capacity(tensors.len());
    for &(name, dtype, shape, values) in tensors {
        if numel(shape)? != values.len() {
            return Err(Error::invalid(format!("tensor `{name}`: {} values for shape {shape:?}", values.len())));
        }
        list.push(ToWrite { name, dtype: Elem::Float(dtype), shape, source: Source::Values(values) });
    }
    write_safetensors_inner(path, &mut list)
}

fn config_json(p: &SynthPreset, dtype: DType, gptq: Option<SynthGptq>) -> serde_json::Value {
    let mut cfg = json!({
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig",
            "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"
        },
        "attn_dropout_prob": 0.0,
        "bf16": false,
        "emb_dropout_prob": 0.0,
        "fp16": false,
        "fp32": false,
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "initializer_range": 0.02,
        "kv_channels": p.hidden_size / p.num_heads,
        "layer_norm_epsilon": p.layer_norm_epsilon,
        "max_position_embeddings": p.max_position_embeddings,
        "model_type": "qwen",
        "no_bias": true,
        "num_attention_heads": p.num_heads,
        "num_hidden_layers": p.num_layers,
        "onnx_safe": null,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "scale_attn_weights": true,
        "seq_length": p.seq_length,
        "tie_word_embeddings": false,
        "tokenizer_class": "QWenTokenizer",
        "torch_dtype": match dtype { DType::BF16 => "bfloat16", DType::F16 => "float16", DType::F32 => "float32" },
        "transformers_version": "4.32.0",
        "use_cache": true,
        "use_dynamic_ntk": true,
        "use_flash_attn": "auto",
        "use_logn_attn": true,
        "vocab_size": p.vocab_size
    });
    if let Some(q) = gptq {
        // As the official Qwen-7B-Chat-Int4's config.json has it (AutoGPTQ 0.4).
        cfg["quantization_config"] = json!({
            "bits": q.bits, "group_size": q.group, "damp_percent": 0.01, "desc_act": false,
            "static_groups": false, "sym": true, "true_sequential": true, "model_name_or_path": null,
            "model_file_base_name": "model", "quant_method": "gptq"
        });
    }
    cfg
}

/// Qwen-7B-Chat's generation config (ChatML), with the window and repetition penalty of v1.1 chat.
fn generation_config_json() -> serde_json::Value {
    json!({
        "chat_format": "chatml",
        "decay_bound": 0.0,
        "decay_factor": 1.0,
        "eos_token_id": 151643,
        "factual_nucleus_sampling": false,
        "max_context_size": 1024,
        "max_generate_size": 512,
        "max_new_tokens": 512,
        "max_window_size": 6144,
        "pad_token_id": 151643,
        "stop_words_ids": [[151643]],
        "do_sample": true,
        "repetition_penalty": 1.1,
        "top_k": 0,
        "top_p": 0.8,
        "transformers_version": "4.31.0"
    })
}

fn stamp(p: &SynthPreset, seed: u64, opts: &SynthOptions) -> serde_json::Value {
    json!({
        "generator": GENERATOR, "preset": p.name, "seed": seed, "dtype": opts.dtype.name(),
        "single_file": opts.single_file, "max_shard_bytes": opts.max_shard_bytes,
        "gptq": opts.gptq.map(|q| json!({"bits": q.bits, "group": q.group}))
    })
}

/// Write every file of the model into `tmp` (an empty directory).
fn write_all_files(tmp: &Path, p: &SynthPreset, seed: u64, opts: &SynthOptions) -> Result<()> {
    files::write_json(&tmp.join(STAMP_FILE), &stamp(p, seed, opts))?;
    files::write_json(&tmp.join("config.json"), &config_json(p, opts.dtype, opts.gptq))?;
    files::write_json(&tmp.join("generation_config.json"), &generation_config_json())?;
    let vocab = tmp.join("qwen.tiktoken");
    std::fs::write(&vocab, VOCAB).map_err(|e| Error::io(&vocab, e))?;

    let tensors = plan(p, opts.gptq);
    let elem = |f: Fill| match f {
        Fill::Float(_) => Elem::Float(opts.dtype),
        Fill::F16(_) => Elem::Float(DType::F16),
        Fill::Words | Fill::Repeat(_) | Fill::GroupIndex(_) => Elem::I32,
    };
    let to_write = |range: std::ops::Range<usize>| -> Vec<ToWrite<'_>> {
        tensors[range]
            .iter()
            .map(|t| {
                let key = tensor_key(seed, &t.name);
                let source = match t.fill {
                    Fill::Float(init) | Fill::F16(init) => Source::Random { key, init },
                    Fill::Words => Source::Words(key),
                    Fill::Repeat(w) => Source::Repeat(w),
                    Fill::GroupIndex(g) => Source::GroupIndex(g),
                };
                ToWrite { name: &t.name, dtype: elem(t.fill), shape: &t.shape, source }
            })
            .collect()
    };
    if opts.single_file {
        return write_safetensors_inner(&tmp.join("model.safetensors"), &mut to_write(0..tensors.len()));
    }
    let sizes: Vec<u64> =
        tensors.iter().map(|t| (t.shape.iter().product::<usize>() * elem(t.fill).size()) as u64).collect();
    let shards = files::shard_ranges(&sizes, opts.max_shard_bytes.max(1));
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for (k, range) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, n);
        for (t, size) in tensors[range.clone()].iter().zip(&sizes[range.clone()]) {
            weight_map.insert(t.name.clone(), json!(file));
            total += size;
        }
        write_safetensors_inner(&tmp.join(&file), &mut to_write(range))?;
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    files::write_json(&tmp.join("model.safetensors.index.json"), &index)
}

/// A fresh, unique sibling of `dir` to write into (same filesystem, so the final rename is atomic).
fn temp_sibling(dir: &Path) -> Result<PathBuf> {
    let tmp = files::temp_sibling_path(dir, "synth output")?;
    let parent = tmp.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// Synthesize into a fresh temporary sibling of `dir`; on failure nothing is left behind.
fn synth_to_temp(dir: &Path, preset: &SynthPreset, seed: u64, opts: &SynthOptions) -> Result<PathBuf> {
    preset.validate()?;
    if let Some(q) = opts.gptq {
        q.validate(preset)?;
    }
    let tmp = temp_sibling(dir)?;
    match write_all_files(&tmp, preset, seed, opts) {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn is_nonempty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut r| r.next().is_some()).unwrap_or(false)
}

/// Write a complete random-weight model directory at `dir` (which must not exist, or be empty).
/// The files are written next to `dir` and renamed into place, so a failure leaves nothing half
/// written.
pub fn synth_model(dir: &Path, preset: &SynthPreset, seed: u64, opts: &SynthOptions) -> Result<()> {
    if dir.exists() && (!dir.is_dir() || is_nonempty_dir(dir)) {
        return Err(Error::bad_file(dir, "synth output exists and is not an empty directory; refusing to overwrite"));
    }
    let tmp = synth_to_temp(dir, preset, seed, opts)?;
    std::fs::rename(&tmp, dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        Error::io(dir, e)
    })
}

/// Whether `dir` holds a usable built-in tiny model from this generator (stamp, configs,
/// vocabulary, every weight of the right shape).
fn usable(dir: &Path) -> bool {
    let want = stamp(&SynthPreset::tiny(), 0, &SynthOptions::default());
    let stamp_ok = std::fs::read_to_string(dir.join(STAMP_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v == want);
    let vocab_ok = std::fs::metadata(dir.join("qwen.tiktoken")).map(|m| m.len() == VOCAB.len() as u64).unwrap_or(false);
    stamp_ok
        && vocab_ok
        && Checkpoint::open(dir).and_then(|ck| crate::weights::Weights::from_checkpoint(&ck).map(|_| ())).is_ok()
}

/// The tiny preset, seed 0, cached under `<temp dir>/qwen-rt-builtin-tiny-v1`: synthesized on first
/// use (atomically, safe against concurrent callers), reused afterwards.
pub fn builtin_tiny_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join("qwen-rt-builtin-tiny-v1");
    for _ in 0..3 {
        if usable(&dir) {
            return Ok(dir);
        }
        if dir.exists() {
            // Broken, or from another generator version: move it aside and delete it (a process
            // still mapping its files keeps them until it unmaps; the rename is atomic).
            let stale = temp_sibling(&dir)?;
            if std::fs::rename(&dir, stale.join("old")).is_ok() {
                let _ = std::fs::remove_dir_all(&stale);
            } else {
                let _ = std::fs::remove_dir(&stale);
            }
        }
        let tmp = synth_to_temp(&dir, &SynthPreset::tiny(), 0, &SynthOptions::default())?;
        if std::fs::rename(&tmp, &dir).is_err() {
            // Someone else won the race; use theirs.
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    // Still unusable after three fresh writes: report why.
    let ck = Checkpoint::open(&dir)?;
    crate::weights::Weights::from_checkpoint(&ck)?;
    Err(Error::bad_file(dir, "built-in tiny model: stamp or vocabulary missing or wrong after rebuilding it"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half() {
        // Ties, near-ties, subnormals, large and small magnitudes: same bits as the `half` crate.
        let mut xs = vec![0.0f32, -0.0, 1.0, -1.0, f32::MIN_POSITIVE, 1.0e-40, 3.0e38, -3.0e38];
        xs.extend((0..16u32).map(|k| f32::from_bits(0x3F80_8000 + (k << 16)))); // exact ties
        xs.extend((0..100_000u64).map(|i| value(99, i, Init::Uniform(0.5).affine()) * 1.0e3));
        for x in xs {
            assert_eq!(bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{x:e}");
        }
    }
}
