//! Place in the flow: backend::cuda: device → launch → **plan** → upload → graph.
//! The static plan of one sequence on the GPU: every activation, workspace and the KV cache sized
//! once from the config, the capacity and the prefill chunk, carved out of two allocations
//! (llm.c's `malloc_and_point`). Nothing is allocated per token. Pure arithmetic: testable without
//! a GPU, and the source of the "needs X GiB" check before anything is allocated.
use super::device::GpuDType;
use super::launch::{decode_workspace_bytes, DecodeSplit};
use crate::config::QwenConfig;

/// Alignment of every region (bytes): keeps 16-byte vector loads and WMMA tiles aligned.
pub const ALIGN: usize = 256;

/// Tokens per prefill pass: longer prompts run in chunks of this many (attention sees the cache).
pub const PREFILL_CHUNK: usize = 1024;

/// Rows of logits computed per lm_head pass when every position's logits are wanted.
pub const LOGIT_ROWS: usize = 16;

/// Query rows per launch of the split-K attention when it stands in for flash-attention in a
/// prefill (head dims the flash kernel is not built for); bounds its partial-result workspace.
pub const FALLBACK_ROWS: usize = 16;

/// One named region: byte offset into its allocation and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Region {
    pub offset: usize,
    pub bytes: usize,
}

/// Where every activation lives. Letters: Tm = prefill chunk, C hidden, P = H·D, F mlp width,
/// V vocab rows, R = LOGIT_ROWS, cap = KV rows, L layers; T is the compute dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub dt: GpuDType,
    /// Tokens per pass (Tm).
    pub chunk: usize,
    /// KV cache rows (cap).
    pub cap: usize,
    pub split: DecodeSplit,
    /// `[Tm]` u32 token ids of this pass.
    pub ids: Region,
    /// `[1]` u32 position of the first token of this pass (read by the position-dependent kernels).
    pub pos0: Region,
    /// `[1]` u32 position of a sub-range of the pass (split-K attention standing in for
    /// flash-attention processes the queries in slices of FALLBACK_ROWS).
    pub pos_sub: Region,
    /// `[D/2]` f32 rotary inverse frequencies of this sequence's NTK alpha.
    pub inv_freq: Region,
    /// `[Tm, C]` f32 residual stream.
    pub x: Region,
    /// `[Tm, C]` f32 output of c_proj / mlp.c_proj before the residual add.
    pub y: Region,
    /// `[Tm, C]` T normed input of the next matmul (after the last layer: ln_f output).
    pub a: Region,
    /// `[Tm, 3P]` f32 c_attn output.
    pub qkv: Region,
    /// `[Tm, P]` T rotated, logN-scaled queries.
    pub q: Region,
    /// `[Tm, P]` T attention output.
    pub att: Region,
    /// `[Tm, 2F]` f32 w1 ‖ w2 outputs (up ‖ gate).
    pub upgate: Region,
    /// `[Tm, F]` T SwiGLU output.
    pub g: Region,
    /// `[R, V]` f32 logits.
    pub logits: Region,
    /// Split-K attention partials `[rows, H, n_splits, D]` f32 and `[rows, H, n_splits, 2]` f32,
    /// rows = FALLBACK_ROWS.
    pub part_o: Region,
    pub part_ml: Region,
    /// `[rows, H]` u32 tickets of the fused decode-attention combine, rows = FALLBACK_ROWS (zeroed
    /// at allocation, left zeroed by the kernel).
    pub adec_counters: Region,
    /// Workspace of the decode step's fused residual + RMSNorm GEMV (`residual_norm_workspace_bytes`;
    /// zeroed at allocation, its counter left zero by the kernel).
    pub norm_ws: Region,
    /// `[cap]` u32 ids of the sequence so far (repetition penalty context).
    pub ctx_ids: Region,
    /// Sampling workspace: `[V]` u8 flags and the greedy kernel's block results and counter
    /// (`sample_workspace_bytes`; zeroed at allocation, flags and counter left zeroed by the kernels).
    pub flags: Region,
    /// `[V]` f32 sampling distribution.
    pub probs: Region,
    /// `[1]` u32 sampled id.
    pub out_id: Region,
    /// Bytes of the activation allocation.
    pub act_bytes: usize,
    /// `[L, cap, P]` T keys then `[L, cap, P]` T values: bytes of the KV allocation.
    pub kv_bytes: usize,
    /// Bytes of one layer's K (or V) cache: cap · P · 2.
    pub kv_layer_bytes: usize,
}

struct Carver {
    next: usize,
}

impl Carver {
    fn take(&mut self, bytes: usize) -> Region {
        let r = Region { offset: self.next, bytes };
        self.next += bytes.div_ceil(ALIGN).max(1) * ALIGN;
        r
    }
}

impl Plan {
    /// The plan for a sequence of `cap` tokens on a model with `cfg`, computing in `dt`, with
    /// `split_keys` keys per decode-attention split (`Tuning::adec_split`; None: by capacity).
    pub fn new(cfg: &QwenConfig, dt: GpuDType, cap: usize, split_keys: Option<usize>) -> Plan {
        let (c, h, d, f, v) = (cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_width, cfg.vocab_size);
        let p = h * d;
        let es = dt.size();
        let chunk = cap.clamp(1, PREFILL_CHUNK);
        let split = DecodeSplit::for_sequence(cap, split_keys);
        let (po, pml) = decode_workspace_bytes(FALLBACK_ROWS, h, d, split);
        let mut k = Carver { next: 0 };
        let plan_ids = k.take(chunk * 4);
        let pos0 = k.take(4);
        let pos_sub = k.take(4);
        let inv_freq = k.take(d / 2 * 4);
        let x = k.take(chunk * c * 4);
        let y = k.take(chunk * c * 4);
        let a = k.take(chunk * c * es);
        let qkv = k.take(chunk * 3 * p * 4);
        let q = k.take(chunk * p * es);
        let att = k.take(chunk * p * es);
        let upgate = k.take(chunk * 2 * f * 4);
        let g = k.take(chunk * f * es);
        let logits = k.take(LOGIT_ROWS.min(chunk) * v * 4);
        let part_o = k.take(po);
        let part_ml = k.take(pml);
        let adec_counters = k.take(FALLBACK_ROWS * h * 4);
        let norm_ws = k.take(super::launch::residual_norm_workspace_bytes(c));
        let ctx_ids = k.take(cap * 4);
        let flags = k.take(super::launch::sample_workspace_bytes(v));
        let probs = k.take(v * 4);
        let out_id = k.take(4);
        let kv_layer_bytes = cap * p * es;
        Plan {
            dt,
            chunk,
            cap,
            split,
            ids: plan_ids,
            pos0,
            pos_sub,
            inv_freq,
            x,
            y,
            a,
            qkv,
            q,
            att,
            upgate,
            g,
            logits,
            part_o,
            part_ml,
            adec_counters,
            norm_ws,
            ctx_ids,
            flags,
            probs,
            out_id,
            act_bytes: k.next,
            kv_bytes: 2 * cfg.num_layers * kv_layer_bytes,
            kv_layer_bytes,
        }
    }

    /// Every region with its name, in allocation order (for tests and the memory report).
    pub fn regions(&self) -> Vec<(&'static str, Region)> {
        vec![
            ("ids", self.ids),
            ("pos0", self.pos0),
            ("pos_sub", self.pos_sub),
            ("inv_freq", self.inv_freq),
            ("x", self.x),
            ("y", self.y),
            ("a", self.a),
            ("qkv", self.qkv),
            ("q", self.q),
            ("att", self.att),
            ("upgate", self.upgate),
            ("g", self.g),
            ("logits", self.logits),
            ("part_o", self.part_o),
            ("part_ml", self.part_ml),
            ("ctx_ids", self.ctx_ids),
            ("flags", self.flags),
            ("probs", self.probs),
            ("out_id", self.out_id),
        ]
    }

    /// The cross-block ticket counters of the fused decode kernels (`adec_counters`, then `norm_ws`
    /// whose counter is its last u32; carved one after the other): one region, zeroed by a memset
    /// node at the head of every decode step (issue 13 §2a).
    pub fn step_counters(&self) -> Region {
        let end = self.norm_ws.offset + self.norm_ws.bytes;
        Region { offset: self.adec_counters.offset, bytes: end - self.adec_counters.offset }
    }

    /// Device bytes this sequence needs: activations + KV cache.
    pub fn total_bytes(&self) -> usize {
        self.act_bytes + self.kv_bytes
    }
}

/// Device bytes of the weights of `cfg` in `dt` (every tensor aligned like the upload does; the
/// lm_head counted once more unless tied to the embedding).
pub fn weight_bytes(cfg: &QwenConfig, dt: GpuDType, tied: bool) -> usize {
    let (c, p, f, v) = (cfg.hidden_size, cfg.proj_size(), cfg.mlp_width, cfg.vocab_size);
    let al = |n: usize| (n * dt.size()).div_ceil(ALIGN) * ALIGN;
    let layer = al(c) + al(3 * p * c) + al(3 * p) + al(c * p) + al(c) + al(2 * f * c) + al(c * f);
    al(v * c) + cfg.num_layers * layer + al(c) + if tied { 0 } else { al(v * c) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_7b() -> QwenConfig {
        crate::synth::synth_config(&crate::synth::SynthPreset::seven_b()).unwrap()
    }

    #[test]
    fn regions_are_aligned_disjoint_and_sized() {
        let cfg = cfg_7b();
        for cap in [1, 7, 2048, 8192, 32768] {
            let plan = Plan::new(&cfg, GpuDType::BF16, cap, None);
            let mut end = 0;
            for (name, r) in plan.regions() {
                assert_eq!(r.offset % ALIGN, 0, "{name} misaligned");
                assert!(r.offset >= end, "{name} overlaps the previous region");
                assert!(r.bytes > 0, "{name} is empty");
                end = r.offset + r.bytes;
            }
            assert!(end <= plan.act_bytes);
            assert_eq!(plan.x.bytes, plan.chunk * 4096 * 4);
            assert_eq!(plan.upgate.bytes, plan.chunk * 2 * 11008 * 4);
            assert_eq!(plan.kv_bytes, 2 * 32 * cap * 4096 * 2);
        }
    }

    #[test]
    fn seven_b_fits_the_memory_target_at_2k() {
        // performance.md: peak GPU memory at a 2K context <= 16.5 GiB (bf16).
        let cfg = cfg_7b();
        let plan = Plan::new(&cfg, GpuDType::BF16, 2048, None);
        let total = weight_bytes(&cfg, GpuDType::BF16, false) + plan.total_bytes();
        let gib = total as f64 / (1u64 << 30) as f64;
        assert!(gib < 16.5, "7B at 2K context plans {gib:.2} GiB");
        assert!(gib > 15.0, "7B plan suspiciously small: {gib:.2} GiB");
    }
}
