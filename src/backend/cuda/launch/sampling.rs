//! `sample_mark_f32`, `sample_process_f32`, `sample_draw_f32`, `sample_greedy_f32` (cuda/sampling.cu); oracle
//! `sampler::Sampler` (`probabilities` for the distribution, the walk of `sample` for the id).
use super::{dim_u32, f32_bytes};
use crate::backend::cuda::device::{Arg, DevSlice, Gpu, Launch};
use crate::error::{Error, Result};
use crate::sampler::SamplingParams;
use cudarc::driver::CudaStream;

/// Threads of the single `sample_draw_f32` block (`SMP_THREADS` in sampling.cu).
const DRAW_THREADS: u32 = 1024;
/// Block of `sample_mark_f32` / `sample_process_f32`.
const BLOCK: u32 = 256;
/// Most blocks of the grid-stride `sample_mark_f32`.
const MARK_MAX_BLOCKS: usize = 1024;
/// Largest V / n_ctx: the kernels' u32 index arithmetic (`tid * ⌈V/1024⌉`, `v + 3·1024`) stays below 2^32.
const MAX_DIM: usize = 1 << 31;
/// Below this temperature the pipeline is greedy (`sampler.rs` MIN_TEMPERATURE; the kernel checks it too).
const MIN_TEMPERATURE: f32 = 1e-5;

/// Workspace bytes for V logits: the repetition-penalty flag array `[V]` u8, then (at the next
/// 8-byte boundary) the greedy kernel's per-block results `[⌈V/256⌉]` u64 and its ticket counter (one
/// u32). The caller zeroes it ONCE at allocation; every `sample` call leaves the flags and the counter
/// zero again (`sample_process_f32` / `sample_greedy_f32` clear each flag they consume, the last
/// greedy block resets the counter), so it must not be shared by two sampling calls in flight.
pub fn sample_workspace_bytes(v: usize) -> usize {
    greedy_part_offset(v) + 8 * v.div_ceil(BLOCK as usize) + 8
}

/// Byte offset of the greedy per-block results in the workspace (after the flags, 8-aligned).
fn greedy_part_offset(v: usize) -> usize {
    v.div_ceil(8) * 8
}

/// Byte offset of the greedy kernel's ticket counter (u32) in the workspace: with the `[V]` flags
/// before it, what must be zero between calls (the block results in between are scratch).
pub fn sample_counter_offset(v: usize) -> usize {
    greedy_part_offset(v) + 8 * v.div_ceil(BLOCK as usize)
}

/// Steps 0-6 of `Sampler` on `logits` `[V]` f32 (modified in place by steps 0-1: NaN and ids
/// `>= vocab_len` → -inf, repetition penalty), context ids `ctx_ids` `[n_ctx]` u32 on the device; the
/// chosen id lands in `out_id` (one u32) and the final distribution in `probs` `[V]` f32 (one-hot when
/// greedy). `u` in [0, 1) is the host's uniform draw (`Sampler::next_uniform`; ignored when greedy).
/// `flags`: `sample_workspace_bytes(V)`, all zero on entry (and on exit). `ctx_ids` is not read (and
/// may be empty) when the penalty is 1 or `n_ctx` is 0.
#[allow(clippy::too_many_arguments)]
pub fn sample(
    gpu: &Gpu,
    s: &CudaStream,
    logits: DevSlice,
    v: usize,
    vocab_len: usize,
    ctx_ids: DevSlice,
    n_ctx: usize,
    params: &SamplingParams,
    u: f64,
    flags: DevSlice,
    probs: DevSlice,
    out_id: DevSlice,
) -> Result<()> {
    params.validate()?;
    if v == 0 || v > MAX_DIM {
        return Err(Error::Backend(format!("internal: GPU sampling needs 1 <= V <= 2^31, got V = {v}")));
    }
    if n_ctx > MAX_DIM {
        return Err(Error::Backend(format!("internal: GPU sampling context of {n_ctx} ids exceeds 2^31")));
    }
    let greedy = !params.do_sample || params.temperature < MIN_TEMPERATURE;
    if !greedy && !(0.0..1.0).contains(&u) {
        return Err(Error::Backend(format!("internal: GPU sampling needs a uniform draw in [0, 1), got {u}")));
    }
    logits.need(f32_bytes(v), "sample logits [V]")?;
    flags.need(sample_workspace_bytes(v), "sample workspace (flags [V] u8, greedy results)")?;
    probs.need(f32_bytes(v), "sample probs [V]")?;
    out_id.need(4, "sample out_id [1] u32")?;
    let vu = dim_u32(v, "V")?;
    // ids >= vocab_len are padding rows; vocab_len >= V masks nothing.
    let vocab = dim_u32(vocab_len.min(v), "vocab_len")?;
    let penalise = params.repetition_penalty != 1.0 && n_ctx > 0;

    if penalise {
        ctx_ids.need(n_ctx * 4, "sample ctx_ids [n_ctx]")?;
        let blocks = n_ctx.div_ceil(BLOCK as usize).min(MARK_MAX_BLOCKS);
        let cfg = Launch::new((dim_u32(blocks, "mark blocks")?, 1, 1), BLOCK, 0);
        let args = [Arg::Ptr(ctx_ids.ptr), Arg::U32(dim_u32(n_ctx, "n_ctx")?), Arg::Ptr(flags.ptr), Arg::U32(vu)];
        // SAFETY: ctx_ids holds [n_ctx] u32 and flags [V] u8 (checked above); the grid-stride kernel reads
        // ctx_ids[i] for i < n_ctx and writes flags[id] only for id < V.
        unsafe { gpu.launch(s, "sample_mark_f32", cfg, &args)? };
    }

    // Without the mark launch the flags are all zero; penalty 1 keeps even a stale flag harmless.
    let penalty = if penalise { params.repetition_penalty } else { 1.0 };
    let blocks = dim_u32(v.div_ceil(BLOCK as usize), "process blocks")?;
    if greedy {
        let part = flags.ptr.offset(greedy_part_offset(v));
        let counter = flags.ptr.offset(sample_counter_offset(v));
        let cfg = Launch::new((blocks, 1, 1), BLOCK, 0);
        let args = [
            Arg::Ptr(logits.ptr),
            Arg::U32(vu),
            Arg::U32(vocab),
            Arg::Ptr(flags.ptr),
            Arg::F32(penalty),
            Arg::Ptr(probs.ptr),
            Arg::Ptr(out_id.ptr),
            Arg::Ptr(part),
            Arg::Ptr(counter),
        ];
        // SAFETY: logits and probs hold [V] f32, out_id one u32, and the workspace (checked above:
        // sample_workspace_bytes(V)) the [V] u8 flags, ⌈V/256⌉ u64 block results and the u32 counter
        // at the offsets used here; thread v < V touches index v of logits, flags and probs, block b
        // writes part[b], the last block reads every part, writes out_id and probs[id < V].
        return unsafe { gpu.launch(s, "sample_greedy_f32", cfg, &args) };
    }
    let cfg = Launch::new((blocks, 1, 1), BLOCK, 0);
    let args = [Arg::Ptr(logits.ptr), Arg::U32(vu), Arg::U32(vocab), Arg::Ptr(flags.ptr), Arg::F32(penalty)];
    // SAFETY: logits holds [V] f32 and flags [V] u8 (checked above); thread v < V touches index v only.
    unsafe { gpu.launch(s, "sample_process_f32", cfg, &args)? };

    // top_k >= V keeps everything: pass 0 (disabled); then top_k < V <= 2^31 fits a u32.
    let top_k = if params.top_k >= v { 0 } else { dim_u32(params.top_k, "top_k")? };
    let cfg = Launch::new((1, 1, 1), DRAW_THREADS, 0);
    let args = [
        Arg::Ptr(logits.ptr),
        Arg::U32(vu),
        Arg::U32(greedy as u32),
        Arg::F32(params.temperature),
        Arg::U32(top_k),
        Arg::F32(params.top_p),
        Arg::U64(u.to_bits()), // the kernel's `double u`: the same 8 bytes
        Arg::Ptr(probs.ptr),
        Arg::Ptr(out_id.ptr),
    ];
    // SAFETY: logits [V] f32 is read, probs [V] f32 written (scratch, then the distribution) and
    // out_id [1] u32 written (all checked above); one block of 1024 threads, indices < V only.
    unsafe { gpu.launch(s, "sample_draw_f32", cfg, &args) }
}
