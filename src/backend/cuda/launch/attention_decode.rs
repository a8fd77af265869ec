//! `attention_decode_{bf16,f16}` + `attention_decode_combine_{bf16,f16}` (cuda/attention_decode.cu,
//! run 4's verified kernels) and `attention_decode_fused_{bf16,f16}` (cuda/attention_decode_fused.cu,
//! the combine in the last block, not yet verified): split-K causal attention (FlashDecoding) for
//! decode steps and as the any-`D` prefill fallback; oracle `cpu::attention`.
use super::params::positional;
use super::{dim_u32, f32_bytes, AttentionDecodeParams};
use crate::backend::cuda::device::{DevSlice, Gpu, GpuDType, Launch};
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;

/// Threads of an `attention_decode` block (`ADEC_THREADS` in the .cu).
const DECODE_THREADS: u32 = 256;
/// Threads of an `attention_decode_combine` block (`ADEC_COMBINE_THREADS` in the .cu).
const COMBINE_THREADS: u32 = 512;
/// Largest head dim the kernel handles (8 columns per lane, 32 lanes).
pub const DECODE_MAX_D: usize = 256;

/// How the key range of a KV cache is cut for split-K decode attention. Fixed for a sequence's
/// life (from its capacity), so a decode step captured in a CUDA graph keeps its grid while pos0
/// grows; splits past the current key count exit after writing an empty partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSplit {
    /// Keys per split.
    pub split_len: usize,
    /// Number of splits; `n_splits * split_len >= cap`.
    pub n_splits: usize,
}

impl DecodeSplit {
    /// Splits for a cache of `cap` rows: `split_len` 64 up to 1024 rows (so small caches still
    /// get several splits), 128 up to 16384 (64 splits at 8K: at batch 1 with 1K keys that is
    /// still 8·H = 256 busy blocks), 256 beyond (bounds the grid and the combine's work);
    /// `n_splits = ceil(cap / split_len)` (at least 1).
    pub fn for_capacity(cap: usize) -> DecodeSplit {
        let split_len = if cap <= 1024 {
            64
        } else if cap <= 16384 {
            128
        } else {
            256
        };
        DecodeSplit::with_len(cap, split_len)
    }

    /// `split_len` keys per split over a cache of `cap` rows (`split_len` >= 1).
    pub fn with_len(cap: usize, split_len: usize) -> DecodeSplit {
        DecodeSplit { split_len, n_splits: cap.div_ceil(split_len).max(1) }
    }

    /// What a sequence of `cap` rows uses: `for_capacity`, or `keys` per split (`Tuning::adec_split`,
    /// QWEN_ADEC_SPLIT, a tuning aid).
    pub fn for_sequence(cap: usize, keys: Option<usize>) -> DecodeSplit {
        keys.map_or_else(|| DecodeSplit::for_capacity(cap), |n| DecodeSplit::with_len(cap, n))
    }

    /// Splits of the grid that covers `keys` keys when the grid is sized by length (`AdecGrid::Length`):
    /// the splits those keys need, rounded up to a power of two (so a sequence captures at most
    /// log2(n_splits) + 1 decode graphs), never more than `n_splits`.
    pub fn bucket_splits(self, keys: usize) -> usize {
        keys.max(1).div_ceil(self.split_len).next_power_of_two().min(self.n_splits)
    }
}

/// Bytes of `part_o` (`[T, H, n_splits, D]` f32) and `part_ml` (`[T, H, n_splits, 2]` f32) for
/// `t` queries.
pub fn decode_workspace_bytes(t: usize, h: usize, d: usize, split: DecodeSplit) -> (usize, usize) {
    let parts = t * h * split.n_splits;
    (f32_bytes(parts * d), f32_bytes(parts * 2))
}

/// Causal attention of `t` queries at absolute positions `*pos0 + i` (i < t) over a KV cache of
/// `cap` rows: query i sees keys `0 .. min(*pos0 + i + 1, cap)` (a position past the cache clamps
/// to all `cap` rows). q `[T, P]` T, k_cache / v_cache `[cap, P]` T, part_o / part_ml the split
/// partials (sizes from [`decode_workspace_bytes`] for `plan`), out `[T, P]` T, pos0 `[1]` u32 on the
/// device; P = H·D, `scale` the softmax scale (`attention_scale(D)`). `fused`: one launch of
/// `attention_decode_fused` (counters `[T, H]` u32, all zero; left zero), whose last split block of
/// each (query, head) does the combine (splits without keys are not written). Else run 4's split
/// kernel then its combine kernel (every split's partial written; `counters` unused).
///
/// `p.split_len` is `plan.split_len`; the grid has `p.n_splits` (1..=`plan.n_splits`) splits:
/// `plan.n_splits` covers the whole cache (run 4); fewer size it by the current length
/// (`AdecGrid::Length`). The kernels combine only the splits the grid has, so the CALLER guarantees
/// that every query's key count, `min(*pos0 + i + 1, cap)`, is at most `p.n_splits · split_len` (the
/// executor picks `p.n_splits = plan.bucket_splits(pos0 + t)` from the position it writes to `pos0`,
/// and captures one decode graph per bucket).
pub fn attention_decode(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    p: &AttentionDecodeParams<DevSlice, usize>,
    t: usize,
    plan: DecodeSplit,
    fused: bool,
) -> Result<()> {
    let (h, d, cap, grid_splits) = (p.h, p.d, p.cap, p.n_splits);
    if p.split_len != plan.split_len {
        return Err(Error::Backend(format!(
            "internal: attention_decode split_len {} is not the plan's {}",
            p.split_len, plan.split_len
        )));
    }
    if grid_splits == 0 || grid_splits > plan.n_splits {
        return Err(Error::Backend(format!(
            "internal: attention_decode grid of {grid_splits} splits, the plan has 1..={}",
            plan.n_splits
        )));
    }
    if h == 0 || d == 0 || d > DECODE_MAX_D {
        return Err(Error::Backend(format!(
            "attention_decode: H = {h}, D = {d} unsupported (need H >= 1 and 1 <= D <= {DECODE_MAX_D})"
        )));
    }
    // cap < 2^31 keeps the kernel's u32 key loop (key + 1024) from wrapping.
    if cap == 0 || cap > i32::MAX as usize {
        return Err(Error::Backend(format!("attention_decode: KV cache capacity {cap} must be in 1..2^31")));
    }
    let DecodeSplit { split_len, n_splits } = plan;
    if split_len == 0 || n_splits == 0 || split_len.checked_mul(n_splits).is_none_or(|covered| covered < cap) {
        return Err(Error::Backend(format!(
            "attention_decode: {n_splits} splits of {split_len} keys do not cover the {cap}-row cache"
        )));
    }
    // CUDA grid limits: y and z at most 65535.
    if h > 65535 || t > 65535 {
        return Err(Error::Backend(format!("attention_decode: H = {h} or T = {t} exceeds the 65535 grid limit")));
    }
    let width = h * d;
    let row = width * dt.size();
    let (o_bytes, ml_bytes) = decode_workspace_bytes(t, h, d, plan);
    p.q.need(t * row, "attention_decode q [T, P]")?;
    p.k_cache.need(cap * row, "attention_decode k_cache [cap, P]")?;
    p.v_cache.need(cap * row, "attention_decode v_cache [cap, P]")?;
    p.part_o.need(o_bytes, "attention_decode part_o [T, H, n_splits, D]")?;
    p.part_ml.need(ml_bytes, "attention_decode part_ml [T, H, n_splits, 2]")?;
    p.out.need(t * row, "attention_decode out [T, P]")?;
    p.pos0.need(4, "attention_decode pos0 [1]")?;
    if fused {
        p.counters.need(t * h * 4, "attention_decode counters [T, H]")?;
    }
    if t == 0 {
        return Ok(());
    }
    let (t32, h32) = (dim_u32(t, "T")?, dim_u32(h, "H")?);
    dim_u32(width, "P = H*D")?;
    if n_splits > i32::MAX as usize {
        return Err(Error::Backend(format!("attention_decode: {n_splits} splits exceed the grid limit")));
    }
    // The kernels' n_splits is the grid's (the partials' stride); the workspace holds the plan's.
    let kp = p.kernel()?;
    let cfg = Launch::new((kp.n_splits, h32, t32), DECODE_THREADS, 0);
    // SAFETY: q holds [T, P] T, k/v_cache [cap, P] T, part_o [T, H, n_splits, D] f32, part_ml
    // [T, H, n_splits, 2] f32 (the plan's n_splits >= the grid's, which the kernels index by), pos0
    // one u32, out [T, P] T, counters (fused) [T, H] u32 (all checked above). Block (split, h, t)
    // reads q row t, cache rows < min(*pos0 + t + 1, cap) <= cap (clamped in the kernel whatever
    // *pos0 holds), columns h*D..h*D+D < P, and writes only its own partial (t, h, split); fused it
    // also updates counters[t, h] and, as the last block of (t, h), reads the partials (t, h, i <
    // n_splits) and writes out row t, columns h*D..h*D+D.
    if fused {
        let name = format!("attention_decode_fused_{}", dt.suffix());
        return unsafe { gpu.launch_params(s, &name, cfg, &kp) };
    }
    let name = format!("attention_decode_{}", dt.suffix());
    unsafe { gpu.launch(s, &name, cfg, &positional::attention_decode(&kp)) }?;

    let name = format!("attention_decode_combine_{}", dt.suffix());
    let cfg = Launch::new((h32, t32, 1), COMBINE_THREADS, 0);
    // SAFETY: same buffers as above; block (h, t) reads the partials (t, h, i) for
    // i < min(ceil(n_keys / split_len), n_splits) and writes out row t, columns h*D..h*D+D < P.
    unsafe { gpu.launch(s, &name, cfg, &positional::attention_decode_combine(&kp)) }
}
