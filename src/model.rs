//! Place in the flow: config → checkpoint → weights → tokenizer → **model** → backend.
//! The model as the rest of the crate sees it, whatever the backend: a `Model` holds the weights
//! (shared, read-only, `Send + Sync`); a `Sequence` is one sequence's KV cache on that model.
//! Also the position-dependent math every backend shares: dynamic NTK and logN (spec §3).
use crate::config::{QwenConfig, SamplingParams};
use crate::error::{Error, Result};
use std::sync::Arc;

/// A loaded model on one backend. Many sequences (on many threads) may share it.
pub trait Model: Send + Sync {
    fn config(&self) -> &QwenConfig;
    /// "cpu" or "cuda" (a model of an embedder's own, given to `Engine::open_with_model`, names itself).
    fn backend_name(&self) -> &'static str;
    /// A new empty sequence whose KV cache holds up to `max_seq_len` tokens.
    fn new_sequence(self: Arc<Self>, max_seq_len: usize) -> Result<Box<dyn Sequence>>;
    /// For quantized weights: (bytes of all weights as held, bytes one decode step reads: all but
    /// the embedding table, of which one row), the packed codes and their statistics counted as
    /// stored. None: float weights, which the bench counts at 2 bytes per parameter.
    fn quantized_bytes(&self) -> Option<(usize, usize)> {
        None
    }
}

/// One sequence: the tokens seen so far live in its KV cache.
pub trait Sequence: Send {
    fn config(&self) -> &QwenConfig;
    /// Tokens in the KV cache.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The most tokens the KV cache can hold.
    fn capacity(&self) -> usize;
    /// Forget every token (the next `forward` is a prefill again).
    fn reset(&mut self);
    /// The dynamic-NTK alpha in force (fixed by the prefill; 1 before any).
    fn ntk_alpha(&self) -> f64;
    /// Run `tokens` (T >= 1) at positions len()..len()+T, appending K/V to the cache.
    /// A call on an empty sequence is the prefill and fixes the NTK alpha from T.
    /// Returns logits: `[T, V]` row-major if `all_logits`, else `[V]` of the last token.
    /// Errors (nothing is changed): empty `tokens`, an id >= V, or len()+T > capacity().
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>>;
    /// `forward(tokens)`, then the next id drawn on the device where the backend can: the sampling
    /// pipeline of `params` (spec §5.6) over the last row's logits, given `context` (every id of
    /// prompt + output so far, `tokens` included), walked with the host's uniform draw `u` in [0, 1)
    /// (ignored when greedy). The CUDA backend samples on the GPU and copies back only the id; this
    /// default returns the last row's logits `[V]` for the host's sampler (`generate::next_token`).
    fn forward_sample(&mut self, tokens: &[u32], params: &SamplingParams, u: f64, context: &[u32]) -> Result<Sampled> {
        let _ = (params, u, context);
        Ok(Sampled::Logits(self.forward(tokens, false)?))
    }
}

/// What `Sequence::forward_sample` gives back.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampled {
    /// The backend sampled on its device.
    Id(u32),
    /// The logits `[V]` of the last token, for the host to sample.
    Logits(Vec<f32>),
}

/// The checks every backend's `Sequence::forward` makes before touching anything: at least one
/// token, every id < V, and room for `tokens` after the `len` cached ones in `capacity`.
pub fn check_forward(config: &QwenConfig, tokens: &[u32], len: usize, capacity: usize) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::invalid("forward: no tokens (need at least one)"));
    }
    if let Some((i, &id)) = tokens.iter().enumerate().find(|(_, &id)| id as usize >= config.vocab_size) {
        return Err(Error::invalid(format!(
            "token id {id} at position {i} is out of range (vocab size {})",
            config.vocab_size
        )));
    }
    if tokens.len() > capacity.saturating_sub(len) {
        return Err(Error::ContextFull(format!(
            "{} in the sequence + {} new exceed its capacity of {capacity}",
            crate::error::count(len, "token"),
            tokens.len()
        )));
    }
    Ok(())
}

/// The `i`-th id of the benchmarks' synthetic prompts: spread over the regular BPE tokens (no special
/// token, so a prompt never holds an <|endoftext|> or ChatML marker) that `config`'s vocabulary has.
pub fn bench_id(config: &QwenConfig, i: usize) -> u32 {
    let n = config.vocab_size.min(crate::tokenizer::NUM_REGULAR as usize).max(1);
    ((i as u64 * 7919 + 13) % n as u64) as u32
}

/// Softmax scale of attention scores, 1/√D computed in f64 and stored as f32 (every backend).
pub fn attention_scale(head_dim: usize) -> f32 {
    (1.0 / (head_dim as f64).sqrt()) as f32
}

/// The checks every backend's `Model::new_sequence` makes on the requested KV capacity.
pub fn check_capacity(config: &QwenConfig, max_seq_len: usize) -> Result<()> {
    let limit = config.max_supported_seq_len();
    if max_seq_len == 0 || max_seq_len > limit {
        return Err(Error::invalid(format!(
            "max_seq_len {max_seq_len} must be between 1 and {limit} (the model's limit, spec §3.2)"
        )));
    }
    Ok(())
}

/// Dynamic-NTK alpha for a prefill of `prompt_len` tokens (spec §3.1):
/// context_value = log2(L / S) + 1, alpha = max(1, 2^ceil(context_value) - 1); 1 when disabled.
pub fn ntk_alpha(config: &QwenConfig, prompt_len: usize) -> f64 {
    if !config.use_dynamic_ntk || prompt_len <= config.seq_length {
        return 1.0;
    }
    let context_value = (prompt_len as f64 / config.seq_length as f64).log2() + 1.0;
    (2f64.powf(context_value.ceil()) - 1.0).max(1.0)
}

/// Rotary base after NTK scaling: base * alpha^(D / (D - 2)) (python float math, spec §3.1).
pub fn rope_base(config: &QwenConfig, alpha: f64) -> f64 {
    let d = config.head_dim as f64;
    config.rotary_emb_base * alpha.powf(d / (d - 2.0))
}

/// inv_freq[j] = 1 / base'^(2j / D), j < D/2, in fp32 as torch computes it
/// (`python_float ** fp32_tensor`: the base is rounded to fp32 first).
pub fn inv_freq(config: &QwenConfig, alpha: f64) -> Vec<f32> {
    let base = rope_base(config, alpha) as f32;
    let d = config.head_dim;
    (0..d / 2).map(|j| 1.0f32 / base.powf((2 * j) as f32 / d as f32)).collect()
}

/// logN query scale at 0-based position `pos` (spec §3.2): ln(pos+1)/ln(S) if pos+1 > S else 1,
/// computed in f64 and stored as fp32 like the reference table.
pub fn logn_scale(config: &QwenConfig, pos: usize) -> f32 {
    let i = pos + 1;
    if !config.use_logn_attn || i <= config.seq_length {
        return 1.0;
    }
    ((i as f64).ln() / (config.seq_length as f64).ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{synth_config, SynthPreset};
    use crate::tokenizer::NUM_REGULAR;

    #[test]
    fn bench_ids_are_regular_tokens_of_the_vocabulary() {
        let big = synth_config(&SynthPreset::from_name("7b").unwrap()).unwrap();
        let ids: Vec<u32> = (0..100_000).map(|i| bench_id(&big, i)).collect();
        assert!(ids.iter().all(|&id| id < NUM_REGULAR), "a special token in a bench prompt");
        assert!(ids.iter().any(|&id| id > NUM_REGULAR - 100), "not spread over the vocabulary");
        let tiny = synth_config(&SynthPreset::tiny()).unwrap();
        assert!((0..10_000).all(|i| (bench_id(&tiny, i) as usize) < tiny.vocab_size));
    }
}
