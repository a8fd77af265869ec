//! Place in the flow: the first layer (config → checkpoint → … → engine); everything below reads it.
//! `config.json` (both dialects) and `generation_config.json` of a Qwen v1 model directory, and the
//! sampling parameters taken from the latter.
//!
//! Dialects (spec §1.1, §1.2): v1.1 keys `hidden_size`, `num_hidden_layers`, `num_attention_heads`,
//! `intermediate_size`, `max_position_embeddings`; the Aug-2023 keys `n_embd`, `n_layer`, `n_head`,
//! `ffn_hidden_size`, `n_positions`, `padded_vocab_size`. `intermediate_size` is twice the MLP width.
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// Architecture of one Qwen v1 checkpoint. Dimension names: C hidden, L layers, H heads, D head dim,
/// F mlp width, V vocab rows, S `seq_length`.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenConfig {
    /// C
    pub hidden_size: usize,
    /// L
    pub num_layers: usize,
    /// H (MHA: K/V heads = H)
    pub num_heads: usize,
    /// D (`kv_channels`)
    pub head_dim: usize,
    /// F = `intermediate_size` / 2 (width of w1, w2)
    pub mlp_width: usize,
    /// V = rows of wte and lm_head (padded; the tokenizer has 151851 ids)
    pub vocab_size: usize,
    /// S: training length, threshold of dynamic NTK and logN (spec §3)
    pub seq_length: usize,
    pub max_position_embeddings: usize,
    pub rotary_emb_base: f64,
    pub layer_norm_epsilon: f32,
    pub use_dynamic_ntk: bool,
    pub use_logn_attn: bool,
    pub tie_word_embeddings: bool,
    /// The dtype flags of config.json: at most one is true; all false means "auto".
    pub bf16: bool,
    pub fp16: bool,
    pub fp32: bool,
}

/// The longest sequence the logN table of the reference covers (spec §3.2).
pub const MAX_SEQ_LEN_LOGN: usize = 32767;

fn get<'a>(m: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| m.get(*k).filter(|v| !v.is_null()))
}

fn usize_field(m: &Map<String, Value>, path: &Path, keys: &[&str], default: Option<usize>) -> Result<usize> {
    match get(m, keys) {
        Some(v) => v.as_u64().filter(|&n| n > 0 && n < (1u64 << 40)).map(|n| n as usize).ok_or_else(|| {
            // Name the key the file has (keys[0] may be an alias it does not use).
            let key = keys.iter().find(|k| m.get(**k).is_some_and(|x| !x.is_null())).unwrap_or(&keys[0]);
            Error::bad_file(path, format!("`{key}` must be a positive integer below 2^40, got {v}"))
        }),
        None => default.ok_or_else(|| Error::bad_file(path, format!("missing `{}`", keys.join("` / `")))),
    }
}

fn f64_field(m: &Map<String, Value>, path: &Path, key: &str, default: f64) -> Result<f64> {
    match get(m, &[key]) {
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| Error::bad_file(path, format!("`{key}` must be a number, got {v}"))),
        None => Ok(default),
    }
}

fn bool_field(m: &Map<String, Value>, path: &Path, key: &str, default: bool) -> Result<bool> {
    match get(m, &[key]) {
        Some(v) => v.as_bool().ok_or_else(|| Error::bad_file(path, format!("`{key}` must be true or false, got {v}"))),
        None => Ok(default),
    }
}

fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    parse_json_object(&crate::files::read_json_text(path)?, path)
}

fn parse_json_object(text: &str, path: &Path) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::bad_file(path, "expected a JSON object")),
        Err(e) => Err(Error::bad_file(path, format!("invalid JSON: {e}"))),
    }
}

impl QwenConfig {
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_map(&read_json_object(path)?, path)
    }

    /// `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        Self::from_map(&parse_json_object(text, path)?, path)
    }

    fn from_map(m: &Map<String, Value>, path: &Path) -> Result<Self> {
        if let Some(t) = get(m, &["model_type"]) {
            if t.as_str() != Some("qwen") {
                return Err(Error::bad_file(
                    path,
                    format!("model_type {t} is not a Qwen v1 model (expected \"qwen\")"),
                ));
            }
        }
        if let Some(q) = get(m, &["quantization_config"]) {
            QuantConfig::from_value(q, path)?; // validated here; read by `QuantConfig::load`
        }
        let hidden_size = usize_field(m, path, &["hidden_size", "n_embd"], None)?;
        let num_layers = usize_field(m, path, &["num_hidden_layers", "n_layer"], None)?;
        let num_heads = usize_field(m, path, &["num_attention_heads", "n_head"], None)?;
        if hidden_size % num_heads != 0 {
            return Err(Error::bad_file(
                path,
                format!("hidden size {hidden_size} is not a multiple of {num_heads} heads"),
            ));
        }
        let head_dim = usize_field(m, path, &["kv_channels"], Some(hidden_size / num_heads))?;
        if head_dim % 2 != 0 || head_dim > 256 {
            return Err(Error::bad_file(path, format!("kv_channels {head_dim} must be even and at most 256")));
        }
        let intermediate = usize_field(m, path, &["intermediate_size", "ffn_hidden_size"], None)?;
        if intermediate % 2 != 0 {
            return Err(Error::bad_file(
                path,
                format!("intermediate_size {intermediate} must be even (it is 2 x the MLP width)"),
            ));
        }
        let vocab_size = usize_field(m, path, &["padded_vocab_size", "vocab_size"], None)?;
        let seq_length = usize_field(m, path, &["seq_length"], Some(8192))?;
        let max_position_embeddings =
            usize_field(m, path, &["max_position_embeddings", "n_positions"], Some(seq_length))?;
        let rotary_emb_base = f64_field(m, path, "rotary_emb_base", 10000.0)?;
        if rotary_emb_base <= 1.0 {
            return Err(Error::bad_file(path, format!("rotary_emb_base {rotary_emb_base} must be > 1")));
        }
        let rotary_pct = f64_field(m, path, "rotary_pct", 1.0)?;
        if rotary_pct != 1.0 {
            return Err(Error::bad_file(path, format!("rotary_pct {rotary_pct} is not supported (only 1.0)")));
        }
        let layer_norm_epsilon = f64_field(m, path, "layer_norm_epsilon", 1e-6)?;
        if !(layer_norm_epsilon > 0.0 && layer_norm_epsilon < 1.0) {
            return Err(Error::bad_file(path, format!("layer_norm_epsilon {layer_norm_epsilon} out of range")));
        }
        if !bool_field(m, path, "no_bias", true)? {
            return Err(Error::bad_file(path, "no_bias=false (biases on c_proj/w1/w2) is not supported"));
        }
        let (bf16, fp16, fp32) = (
            bool_field(m, path, "bf16", false)?,
            bool_field(m, path, "fp16", false)?,
            bool_field(m, path, "fp32", false)?,
        );
        if [bf16, fp16, fp32].iter().filter(|&&b| b).count() > 1 {
            return Err(Error::bad_file(path, "at most one of bf16 / fp16 / fp32 may be true"));
        }
        Ok(QwenConfig {
            hidden_size,
            num_layers,
            num_heads,
            head_dim,
            mlp_width: intermediate / 2,
            vocab_size,
            seq_length,
            max_position_embeddings,
            rotary_emb_base,
            layer_norm_epsilon: layer_norm_epsilon as f32,
            use_dynamic_ntk: bool_field(m, path, "use_dynamic_ntk", true)?,
            use_logn_attn: bool_field(m, path, "use_logn_attn", true)?,
            tie_word_embeddings: bool_field(m, path, "tie_word_embeddings", false)?,
            bf16,
            fp16,
            fp32,
        })
    }

    /// H * D: width of each of Q, K, V.
    pub fn proj_size(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Number of weight parameters (embedding + layers + final norm + lm_head unless tied).
    pub fn num_params(&self) -> usize {
        let (c, f, p, v) = (self.hidden_size, self.mlp_width, self.proj_size(), self.vocab_size);
        let layer = 2 * c + 3 * p * c + 3 * p + p * c + 3 * f * c;
        v * c + self.num_layers * layer + c + if self.tie_word_embeddings { 0 } else { v * c }
    }

    /// The KV-cache length to use: `requested` (None or 0: the model's own limit, i.e.
    /// max(max_position_embeddings, seq_length) capped by the logN table). `arg` names the argument in
    /// the error when `requested` exceeds what the model supports.
    pub fn resolve_max_seq_len(&self, requested: Option<usize>, arg: &str) -> Result<usize> {
        let supported = self.max_supported_seq_len();
        match requested {
            None | Some(0) => Ok(supported.min(self.max_position_embeddings.max(self.seq_length))),
            Some(n) if n > supported => {
                Err(Error::invalid(format!("{arg} {n} exceeds the model's limit of {supported} tokens (logN table)")))
            }
            Some(n) => Ok(n),
        }
    }

    /// Largest sequence the model supports: the logN table limit when logN is on, else unbounded by
    /// the model (the KV cache size decides).
    pub fn max_supported_seq_len(&self) -> usize {
        if self.use_logn_attn {
            MAX_SEQ_LEN_LOGN
        } else {
            usize::MAX
        }
    }
}

/// How a quantized checkpoint's linear weights are stored (spec §7): `quantization_config` of
/// config.json as transformers writes it, or AutoGPTQ's `quantize_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantConfig {
    /// bitsandbytes `load_in_4bit` with `bnb_4bit_quant_type` "nf4" (blocks of 64);
    /// `double_quant` = `bnb_4bit_use_double_quant`.
    Bnb4 { double_quant: bool },
    /// bitsandbytes `load_in_8bit`: Int8 weights with a per-row scale (`SCB`).
    Bnb8,
    /// AutoGPTQ: `bits` 4 or 8, `group_size` inputs per scale, `desc_act` (g_idx in act order).
    Gptq { bits: u32, group_size: usize, desc_act: bool },
}

impl QuantConfig {
    /// The quantization of the model directory `dir`: config.json's `quantization_config`, else
    /// `quantize_config.json` (AutoGPTQ), else None (a float checkpoint).
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let cfg_path = dir.join("config.json");
        let m = read_json_object(&cfg_path)?;
        if let Some(q) = get(&m, &["quantization_config"]) {
            return Self::from_value(q, &cfg_path).map(Some);
        }
        let gptq_path = dir.join("quantize_config.json");
        if gptq_path.exists() {
            let m = read_json_object(&gptq_path)?;
            return Self::gptq(&m, &gptq_path).map(Some);
        }
        Ok(None)
    }

    /// Parse a `quantization_config` object; `path` names the file in errors.
    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let Value::Object(m) = v else {
            return Err(Error::bad_file(path, format!("`quantization_config` must be an object, got {v}")));
        };
        let method = get(m, &["quant_method"]).and_then(|v| v.as_str());
        match method {
            Some("gptq") => Self::gptq(m, path),
            Some("bitsandbytes") | None => Self::bnb(m, path),
            Some(other) => Err(Error::bad_file(
                path,
                format!("quantization_config: quant_method {other:?} is not supported (bitsandbytes or gptq)"),
            )),
        }
    }

    fn bnb(m: &Map<String, Value>, path: &Path) -> Result<Self> {
        let four = bool_field(m, path, "load_in_4bit", false)?;
        let eight = bool_field(m, path, "load_in_8bit", false)?;
        match (four, eight) {
            (true, false) => {
                let qt = get(m, &["bnb_4bit_quant_type"]).and_then(|v| v.as_str()).unwrap_or("fp4");
                if qt != "nf4" {
                    return Err(Error::bad_file(
                        path,
                        format!("quantization_config: bnb_4bit_quant_type {qt:?} is not supported (only \"nf4\")"),
                    ));
                }
                Ok(QuantConfig::Bnb4 { double_quant: bool_field(m, path, "bnb_4bit_use_double_quant", false)? })
            }
            (false, true) => Ok(QuantConfig::Bnb8),
            _ => Err(Error::bad_file(
                path,
                "quantization_config: exactly one of load_in_4bit / load_in_8bit must be true (bitsandbytes)",
            )),
        }
    }

    fn gptq(m: &Map<String, Value>, path: &Path) -> Result<Self> {
        let bits = usize_field(m, path, &["bits"], None)?;
        if bits != 4 && bits != 8 {
            return Err(Error::bad_file(path, format!("GPTQ bits = {bits} is not supported (4 or 8)")));
        }
        let group_size = match get(m, &["group_size"]) {
            Some(v) => v.as_i64().filter(|&g| g > 0).map(|g| g as usize).ok_or_else(|| {
                Error::bad_file(path, format!("GPTQ group_size {v} is not supported (a positive group size, e.g. 128)"))
            })?,
            None => return Err(Error::bad_file(path, "GPTQ config has no `group_size`")),
        };
        if let Some(f) = get(m, &["checkpoint_format"]).and_then(|v| v.as_str()) {
            if f != "gptq" {
                return Err(Error::bad_file(
                    path,
                    format!("GPTQ checkpoint_format {f:?} is not supported (only \"gptq\": zeros stored minus one)"),
                ));
            }
        }
        Ok(QuantConfig::Gptq { bits: bits as u32, group_size, desc_act: bool_field(m, path, "desc_act", false)? })
    }
}

/// A token id of generation_config.json must be one the tokenizer knows (ids >= VOCAB_LEN have no text,
/// and no model can be trained to emit them meaningfully).
fn check_token_id(path: &Path, key: &str, id: u32) -> Result<()> {
    let n = crate::tokenizer::VOCAB_LEN;
    if id >= n {
        return Err(Error::bad_file(
            path,
            format!("`{key}` has token id {id}, beyond the vocabulary (the Qwen tokenizer has {n} ids, 0..{})", n - 1),
        ));
    }
    Ok(())
}

/// `generation_config.json` (spec §5.6). A missing field takes the Hugging Face default.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// "chatml" (chat models) or "raw" (base models).
    pub chat_format: String,
    pub eos_token_id: u32,
    pub pad_token_id: u32,
    pub stop_words_ids: Vec<Vec<u32>>,
    pub max_new_tokens: usize,
    pub max_window_size: usize,
    pub do_sample: bool,
    pub top_k: usize,
    pub top_p: f32,
    pub temperature: f32,
    pub repetition_penalty: f32,
}

impl Default for GenerationConfig {
    /// Hugging Face `GenerationConfig` defaults, with Qwen's eos and window.
    fn default() -> Self {
        GenerationConfig {
            chat_format: "raw".into(),
            eos_token_id: crate::tokenizer::ENDOFTEXT,
            pad_token_id: crate::tokenizer::ENDOFTEXT,
            stop_words_ids: vec![],
            max_new_tokens: 512,
            max_window_size: 6144,
            do_sample: false,
            top_k: 50,
            top_p: 1.0,
            temperature: 1.0,
            repetition_penalty: 1.0,
        }
    }
}

impl GenerationConfig {
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_map(&read_json_object(path)?, path)
    }

    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        Self::from_map(&parse_json_object(text, path)?, path)
    }

    fn from_map(m: &Map<String, Value>, path: &Path) -> Result<Self> {
        let d = GenerationConfig::default();
        let id = |key: &str, default: u32| -> Result<u32> {
            match get(m, &[key]) {
                Some(v) => {
                    let id = v
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| Error::bad_file(path, format!("`{key}` must be a token id, got {v}")))?;
                    check_token_id(path, key, id)?;
                    Ok(id)
                }
                None => Ok(default),
            }
        };
        let chat_format = match get(m, &["chat_format"]) {
            None => d.chat_format.clone(),
            Some(Value::String(s)) if s == "chatml" || s == "raw" => s.clone(),
            Some(v) => {
                return Err(Error::bad_file(path, format!("`chat_format` must be \"chatml\" or \"raw\", got {v}")))
            }
        };
        let stop_words_ids = match get(m, &["stop_words_ids"]) {
            None => vec![],
            Some(v) => serde_json::from_value::<Vec<Vec<u32>>>(v.clone())
                .map_err(|_| Error::bad_file(path, format!("`stop_words_ids` must be a list of id lists, got {v}")))?,
        };
        for (i, ids) in stop_words_ids.iter().enumerate() {
            for &id in ids {
                check_token_id(path, &format!("stop_words_ids[{i}]"), id)?;
            }
        }
        // The ranges of sampler::SamplingParams::validate, checked here so the message names the file.
        let top_p = f64_field(m, path, "top_p", d.top_p as f64)?;
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::bad_file(path, format!("`top_p` must be in (0, 1], got {top_p}")));
        }
        let temperature = f64_field(m, path, "temperature", d.temperature as f64)?;
        if temperature < 0.0 || temperature > f32::MAX as f64 {
            return Err(Error::bad_file(
                path,
                format!("`temperature` must be a finite number >= 0, got {temperature}"),
            ));
        }
        let repetition_penalty = f64_field(m, path, "repetition_penalty", d.repetition_penalty as f64)?;
        if !(repetition_penalty > 0.0 && repetition_penalty <= f32::MAX as f64) {
            return Err(Error::bad_file(
                path,
                format!("`repetition_penalty` must be a finite number > 0, got {repetition_penalty}"),
            ));
        }
        let top_k = match get(m, &["top_k"]) {
            None => d.top_k,
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| Error::bad_file(path, format!("`top_k` must be a non-negative integer, got {v}")))?,
        };
        Ok(GenerationConfig {
            chat_format,
            eos_token_id: id("eos_token_id", d.eos_token_id)?,
            pad_token_id: id("pad_token_id", d.pad_token_id)?,
            stop_words_ids,
            max_new_tokens: usize_field(m, path, &["max_new_tokens"], Some(d.max_new_tokens))?,
            max_window_size: usize_field(m, path, &["max_window_size"], Some(d.max_window_size))?,
            do_sample: bool_field(m, path, "do_sample", d.do_sample)?,
            top_k,
            top_p: top_p as f32,
            temperature: temperature as f32,
            repetition_penalty: repetition_penalty as f32,
        })
    }
}

/// The sampling parameters of one generation (spec §5.6): what `generation_config.json` sets, plus the
/// seed of the host's random generator. The host sampler (`sampler::Sampler`) and the GPU's sampling
/// kernels both read them.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub do_sample: bool,
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1 disables top-p.
    pub top_p: f32,
    /// 1 disables the penalty.
    pub repetition_penalty: f32,
    pub seed: u64,
}

/// Below this temperature sampling degenerates to greedy decoding.
const MIN_TEMPERATURE: f32 = 1e-5;

impl SamplingParams {
    pub fn from_generation_config(g: &GenerationConfig, seed: u64) -> Self {
        SamplingParams {
            do_sample: g.do_sample,
            temperature: g.temperature,
            top_k: g.top_k,
            top_p: g.top_p,
            repetition_penalty: g.repetition_penalty,
            seed,
        }
    }

    /// Plain argmax, no penalty.
    pub fn greedy() -> Self {
        SamplingParams { do_sample: false, temperature: 1.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }

    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if t.is_nan() || t < 0.0 || t.is_infinite() {
            return Err(Error::invalid(format!("temperature must be a finite number >= 0, got {t}")));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(Error::invalid(format!("top_p must be in (0, 1], got {p}")));
        }
        let r = self.repetition_penalty;
        if !(r > 0.0 && r.is_finite()) {
            return Err(Error::invalid(format!("repetition_penalty must be a finite number > 0, got {r}")));
        }
        Ok(())
    }

    /// True when the pipeline reduces to argmax (no sampling, or a vanishing temperature): no uniform
    /// draw is taken for such a step.
    pub fn is_greedy(&self) -> bool {
        !self.do_sample || self.temperature < MIN_TEMPERATURE
    }
}
