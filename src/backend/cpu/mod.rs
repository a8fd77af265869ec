//! Place in the flow: backend::**cpu**, the f32 oracle backend (beside `cuda`), behind `model::Model`.
//! The CPU reference backend: the forward pass of spec §2 in plain f32, llama2.c style.
//! It is the oracle for every CUDA kernel (`cpu::rmsnorm` <-> `rmsnorm_bf16` …).
//!
//! Weights stay in the memory map in their stored dtype (bf16 / f16 / f32); a matmul converts one
//! weight row at a time to f32 and dots it with every input row, so a 15 GB bf16 checkpoint runs
//! without ever holding an f32 copy of a matrix. Only the small tensors (norms, the c_attn bias)
//! are converted at load. Activations and the KV cache are f32.
//!
//! The five linears of each layer are `quant::Linear`s (`quant::QuantWeights`): float views, or
//! quantized matrices (a quantized checkpoint, or `--quant` at load) computed with exactly their
//! dequantized weights. `wte`, the norms and `lm_head` are always float.
//!
//! Dimension letters: T tokens of this call, C hidden, H heads, D head dim, P = H*D, F mlp width,
//! V vocab rows, K / N the input / output width of a matmul.
mod kv_cache;
mod matmul;
mod ops;
mod pool;

pub use matmul::{matmul, LinearMatmul};
pub use ops::{add, attention, dot, embedding, rmsnorm, rope, swiglu};

use super::LoadOptions;
use crate::checkpoint::{Checkpoint, TensorView};
use crate::config::{QuantConfig, QwenConfig};
use crate::error::{Error, Result};
use crate::model::{self, Model, Sequence};
use crate::quant::QuantWeights;
use crate::weights::Weights;
use kv_cache::KvCache;
use pool::WorkerPool;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// The model.
// ---------------------------------------------------------------------------------------------

/// A Qwen v1 model on the CPU: weight views into the mmap (linears possibly quantized) + f32
/// copies of the small tensors.
pub struct CpuModel {
    config: QwenConfig,
    weights: QuantWeights,
    /// Per layer `[C]` f32.
    ln_1: Vec<Vec<f32>>,
    /// Per layer `[3P]` f32.
    c_attn_b: Vec<Vec<f32>>,
    /// Per layer `[C]` f32.
    ln_2: Vec<Vec<f32>>,
    /// `[C]` f32.
    ln_f: Vec<f32>,
    pool: WorkerPool,
}

/// A small tensor as f32, checked to hold `n` values.
fn small_f32(t: &TensorView, n: usize) -> Result<Vec<f32>> {
    if t.numel() != n {
        return Err(t.error(format!("expected {n} values, got shape {:?}", t.shape)));
    }
    Ok(t.to_f32_vec())
}

/// The weights of `ck` as `opts.quant` asks (spec §7): a quantized checkpoint as stored (`--quant`
/// is then an error), a float one quantized at load (one tensor at a time, never an f32 copy of
/// the model) or as it is.
pub(crate) fn load_weights(ck: &Checkpoint, opts: &LoadOptions) -> Result<QuantWeights> {
    match (QuantConfig::load(&ck.dir)?, opts.quant) {
        (Some(_), Some(f)) => Err(Error::invalid(format!(
            "--quant {} on an already quantized model ({}): use --quant none",
            f.name(),
            ck.dir.display()
        ))),
        (Some(_), None) => QuantWeights::from_checkpoint(ck),
        (None, Some(f)) => QuantWeights::quantize(&Weights::from_checkpoint(ck)?, f),
        (None, None) => Ok(QuantWeights::dense(&Weights::from_checkpoint(ck)?)),
    }
}

impl CpuModel {
    /// Resolve the weights of `ck` (no copy of the float matrices; `opts.quant` quantizes the
    /// linears one at a time) and start `opts.threads` workers (0 = all cores).
    pub fn load(ck: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        let pool = WorkerPool::new(opts.threads)?;
        let weights = pool.install(|| load_weights(ck, opts))?;
        let config = weights.config.clone();
        let (c, p) = (config.hidden_size, config.proj_size());
        if weights.layers.len() != config.num_layers {
            return Err(Error::bad_file(
                &ck.dir,
                format!("{} layers of weights for {} in the config", weights.layers.len(), config.num_layers),
            ));
        }
        let mut ln_1 = Vec::new();
        let mut c_attn_b = Vec::new();
        let mut ln_2 = Vec::new();
        for l in &weights.layers {
            ln_1.push(small_f32(&l.ln_1, c)?);
            c_attn_b.push(small_f32(&l.c_attn_b, 3 * p)?);
            ln_2.push(small_f32(&l.ln_2, c)?);
        }
        let ln_f = small_f32(&weights.ln_f, c)?;
        Ok(CpuModel { config, weights, ln_1, c_attn_b, ln_2, ln_f, pool })
    }

    /// The weights as computed with (`format`: how the linears are quantized, None: float).
    pub fn weights(&self) -> &QuantWeights {
        &self.weights
    }

    /// Worker threads of this model's pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The forward pass of spec §2.3 for `tokens` at positions `pos0..pos0+T`. The caller has
    /// validated the ids and reserved cache rows `0..pos0+T`; K/V are written at `pos0..`, the
    /// cache length is not advanced. Returns logits `[T, V]` or `[V]` (last token).
    fn forward_tokens(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        pos0: usize,
        inv_freq: &[f32],
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let w = &self.weights;
        let (t, c, h, d, f, v) =
            (tokens.len(), cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_width, cfg.vocab_size);
        let p = h * d;
        let eps = cfg.layer_norm_epsilon;
        let mut x = vec![0f32; t * c]; // [T, C] residual stream
        embedding(&w.wte, tokens, &mut x)?;
        let mut a = vec![0f32; t * c]; // [T, C] normed
        let mut qkv = vec![0f32; t * 3 * p]; // [T, 3P]
        let (mut q, mut k, mut vv) = (vec![0f32; t * p], vec![0f32; t * p], vec![0f32; t * p]); // [T, P] each
        let mut att = vec![0f32; t * p]; // [T, P]
        let mut y = vec![0f32; t * c]; // [T, C]
        let (mut up, mut gate) = (vec![0f32; t * f], vec![0f32; t * f]); // [T, F] each
        let mut g = vec![0f32; t * f]; // [T, F]
        for (l, lw) in w.layers.iter().enumerate() {
            rmsnorm(&x, &self.ln_1[l], eps, &mut a);
            lw.c_attn.matmul(&a, Some(&self.c_attn_b[l]), &mut qkv)?;
            for (ti, row) in qkv.chunks_exact(3 * p).enumerate() {
                let dst = ti * p..(ti + 1) * p;
                q[dst.clone()].copy_from_slice(&row[..p]);
                k[dst.clone()].copy_from_slice(&row[p..2 * p]);
                vv[dst].copy_from_slice(&row[2 * p..]);
            }
            rope(&mut q, h, d, pos0, inv_freq);
            rope(&mut k, h, d, pos0, inv_freq);
            for (ti, row) in q.chunks_exact_mut(p).enumerate() {
                let s = model::logn_scale(cfg, pos0 + ti);
                if s != 1.0 {
                    row.iter_mut().for_each(|e| *e *= s);
                }
            }
            cache.write(l, pos0, &k, &vv);
            let (kc, vc) = cache.layer(l, pos0 + t); // [pos0+T, P] each
            attention(&q, kc, vc, pos0, h, d, &mut att);
            lw.c_proj.matmul(&att, None, &mut y)?;
            add(&mut x, &y);
            rmsnorm(&x, &self.ln_2[l], eps, &mut a);
            lw.w1.matmul(&a, None, &mut up)?;
            lw.w2.matmul(&a, None, &mut gate)?;
            swiglu(&up, &gate, &mut g);
            lw.mlp_c_proj.matmul(&g, None, &mut y)?;
            add(&mut x, &y);
        }
        let rows = if all_logits { &x[..] } else { &x[(t - 1) * c..] }; // [T', C]
        let mut hn = vec![0f32; rows.len()];
        rmsnorm(rows, &self.ln_f, eps, &mut hn);
        let mut logits = vec![0f32; rows.len() / c * v]; // [T', V]
        matmul(&hn, &w.lm_head, None, &mut logits)?;
        Ok(logits)
    }
}

impl Model for CpuModel {
    fn config(&self) -> &QwenConfig {
        &self.config
    }
    fn backend_name(&self) -> &'static str {
        "cpu"
    }
    fn new_sequence(self: Arc<Self>, max_seq_len: usize) -> Result<Box<dyn Sequence>> {
        model::check_capacity(&self.config, max_seq_len)?;
        let cache = KvCache::new(self.config.num_layers, self.config.proj_size(), max_seq_len);
        let inv_freq = model::inv_freq(&self.config, 1.0);
        Ok(Box::new(CpuSequence { model: self, cache, alpha: 1.0, inv_freq }))
    }
    fn quantized_bytes(&self) -> Option<(usize, usize)> {
        let w = &self.weights;
        w.format?;
        let held = w.byte_len();
        let v = self.config.vocab_size.max(1);
        let wte = w.wte.byte_len();
        let unread = if self.config.tie_word_embeddings { 0 } else { wte - wte / v };
        Some((held, held - unread))
    }
}

/// One sequence on a `CpuModel`: its KV cache and the NTK alpha fixed by its prefill.
pub struct CpuSequence {
    model: Arc<CpuModel>,
    cache: KvCache,
    /// Dynamic-NTK alpha in force (1 before any prefill).
    alpha: f64,
    /// `[D/2]` inverse frequencies for `alpha`.
    inv_freq: Vec<f32>,
}

impl CpuSequence {
    /// Rows of KV cache memory allocated (grows on demand up to the capacity).
    pub fn allocated_rows(&self) -> usize {
        self.cache.allocated_rows()
    }
}

impl Sequence for CpuSequence {
    fn config(&self) -> &QwenConfig {
        &self.model.config
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn capacity(&self) -> usize {
        self.cache.capacity()
    }
    fn reset(&mut self) {
        self.cache.clear();
        self.alpha = 1.0;
        self.inv_freq = model::inv_freq(&self.model.config, 1.0);
    }
    fn ntk_alpha(&self) -> f64 {
        self.alpha
    }
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let cfg = &self.model.config;
        model::check_forward(cfg, tokens, self.cache.len(), self.cache.capacity())?;
        let (pos0, t) = (self.cache.len(), tokens.len());
        // Prefill fixes alpha from the prompt length; decode reuses it (spec §3.1).
        let prefill = if pos0 == 0 {
            let alpha = model::ntk_alpha(cfg, t);
            Some((alpha, model::inv_freq(cfg, alpha)))
        } else {
            None
        };
        self.cache.reserve(pos0 + t)?;
        let inv_freq = prefill.as_ref().map_or(&self.inv_freq[..], |(_, f)| &f[..]);
        let model = &self.model;
        let cache = &mut self.cache;
        let logits = model.pool.install(|| model.forward_tokens(cache, tokens, pos0, inv_freq, all_logits))?;
        model.weights.check_mapped()?; // a weight file truncated under us: the logits are garbage
        self.cache.advance(t);
        if let Some((alpha, inv_freq)) = prefill {
            self.alpha = alpha;
            self.inv_freq = inv_freq;
        }
        Ok(logits)
    }
}
