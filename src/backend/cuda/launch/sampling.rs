//! `sample_mark_f32`, `sample_process_f32`, `sample_draw_f32` (cuda/sampling.cu, run 4's verified
//! kernels, bisection cuts) and the post-run-4 `sample_draw_radix_f32`, `sample_greedy_f32` and
//! multi-block top-p path `sample_prep_f32`, `sample_exp_f32`, `sample_cut_f32`, `sample_walk_f32`
//! (cuda/sampling_fast.cu, the top-p path in cuda/sampling_topp.cu); oracle `sampler::Sampler` (`probabilities` for the distribution, the walk
//! of `sample` for the id).
use super::params::positional;
use super::{dim_u32, f32_bytes, SampleParams};
use crate::backend::cuda::device::{DevSlice, Gpu, Launch};
use crate::config::SamplingParams;
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;

/// Threads of the single `sample_draw_f32` / `sample_draw_radix_f32` block (`SMP_THREADS` / `SMF_THREADS`).
const DRAW_THREADS: u32 = 1024;
/// Block of `sample_mark_f32` / `sample_process_f32`.
const BLOCK: u32 = 256;
/// Most blocks of the grid-stride `sample_mark_f32`.
const MARK_MAX_BLOCKS: usize = 1024;
/// Largest V / n_ctx: the kernels' u32 index arithmetic (`tid * ⌈V/1024⌉`, `v + 3·1024`) stays below 2^32.
const MAX_DIM: usize = 1 << 31;
/// Below this temperature the pipeline is greedy (`sampler.rs` MIN_TEMPERATURE; the kernel checks it too).
const MIN_TEMPERATURE: f32 = 1e-5;

/// Ids per block of the multi-block top-p kernels (`SMP_MB_IDS`; blocks of `BLOCK` threads).
const MB_IDS: usize = 1024;
/// Radix passes of `sample_cut_f32`: 30 bits of e, 8 a pass.
const CUT_PASSES: usize = 4;
/// Bytes reserved for the multi-block path's `SmpState` (2104 bytes, cuda/sampling_topp.cu).
const STATE_BYTES: usize = 2112;

/// Workspace bytes for V logits: the repetition-penalty flag array `[V]` u8, then (at the next
/// 8-byte boundary) the per-block results `[⌈V/256⌉]` u64 (greedy; the multi-block path uses the
/// first ⌈V/1024⌉ as f32 / f64), the ticket counter (one u32) and the multi-block path's search state.
/// The caller zeroes it ONCE at allocation; every `sample` call leaves the flags and the counter
/// zero again (`sample_process_f32` / `sample_greedy_f32` / `sample_prep_f32` clear each flag they
/// consume, every last block resets the counter; `sample_prep_f32` initialises the state), so it
/// must not be shared by two sampling calls in flight.
pub fn sample_workspace_bytes(v: usize) -> usize {
    state_offset(v) + STATE_BYTES
}

/// Byte offset of the multi-block path's `SmpState` (after the counter, 8-aligned).
fn state_offset(v: usize) -> usize {
    (sample_counter_offset(v) + 4).div_ceil(8) * 8
}

/// Which sampling kernels run (`Tuning::sampler`, QWEN_SAMPLER).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerPath {
    /// Run 4's verified pipeline for every draw, greedy too: `sample_process_f32` + the one-block
    /// `sample_draw_f32` with bisection cuts (the default).
    Run4,
    /// Greedy by `sample_greedy_f32`; every sampled draw by `sample_process_f32` + the one-block
    /// `sample_draw_radix_f32` (not yet verified).
    Block,
    /// As Block, but without a top-k cut (Qwen's defaults) the multi-block top-p path (not yet verified).
    Auto,
}

/// How one `sample` call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleDraw {
    /// `sample_process_f32` + run 4's one-block `sample_draw_f32` (bisection), greedy included.
    Run4,
    /// `sample_prep_f32`, `sample_exp_f32`, 4 × `sample_cut_f32`, `sample_walk_f32`: each pass over
    /// the whole GPU. Top-k 0 only (Qwen's defaults); greedy by `sample_greedy_f32`.
    MultiBlock,
    /// `sample_process_f32` + the one-block `sample_draw_radix_f32`: any parameters; greedy by
    /// `sample_greedy_f32`.
    OneBlock,
}

impl SampleDraw {
    /// The draw `path` takes for `params` over V logits.
    pub fn for_params(path: SamplerPath, params: &SamplingParams, v: usize) -> SampleDraw {
        match path {
            SamplerPath::Run4 => SampleDraw::Run4,
            SamplerPath::Auto if Self::multi_block_can(params, v) => SampleDraw::MultiBlock,
            SamplerPath::Auto | SamplerPath::Block => SampleDraw::OneBlock,
        }
    }

    /// Every path that can run `params` (for tests and benches that compare them).
    pub fn all_for(params: &SamplingParams, v: usize) -> Vec<SampleDraw> {
        if Self::multi_block_can(params, v) {
            vec![SampleDraw::Run4, SampleDraw::MultiBlock, SampleDraw::OneBlock]
        } else {
            vec![SampleDraw::Run4, SampleDraw::OneBlock]
        }
    }

    fn multi_block_can(params: &SamplingParams, v: usize) -> bool {
        params.top_k == 0 || params.top_k >= v
    }
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

/// Steps 0-6 of `Sampler` on `p.logits` `[V]` f32 (modified in place by steps 0-1: NaN and ids
/// `>= vocab_len` → -inf, repetition penalty), context ids `p.ctx_ids` `[n_ctx]` u32 on the device; the
/// chosen id lands in `p.out_id` (one u32) and the final distribution in `p.probs` `[V]` f32 (one-hot
/// when greedy). `u` in [0, 1) is the host's uniform draw (`Sampler::next_uniform`; ignored when
/// greedy). `p.flags`: the workspace, `sample_workspace_bytes(V)`, all zero on entry (and on exit).
/// `ctx_ids` is not read (and may be empty) when the penalty is 1 or `n_ctx` is 0. The caller sets
/// those buffers, `v`, `vocab_len` (ids >= it are padding; >= V masks nothing) and `n_ctx`; the
/// launcher sets the fields `params` and `u` decide and carves `part`, `counter` and `state` out of
/// the workspace. `draw` is the path of a sampled draw (`SampleDraw::for_params` picks it from the
/// `Tuning`; greedy runs `sample_greedy_f32` except on Run4); MultiBlock with a top-k cut is refused.
pub fn sample(
    gpu: &Gpu,
    s: &CudaStream,
    draw: SampleDraw,
    p: &SampleParams<DevSlice, usize>,
    params: &SamplingParams,
    u: f64,
) -> Result<()> {
    params.validate()?;
    let (v, n_ctx) = (p.v, p.n_ctx);
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
    let ws = p.flags;
    p.logits.need(f32_bytes(v), "sample logits [V]")?;
    ws.need(sample_workspace_bytes(v), "sample workspace (flags [V] u8, block results, counter, search state)")?;
    if draw == SampleDraw::MultiBlock && !SampleDraw::multi_block_can(params, v) {
        return Err(Error::Backend(format!(
            "internal: the multi-block sampler has no top-k cut (top_k = {})",
            params.top_k
        )));
    }
    p.probs.need(f32_bytes(v), "sample probs [V]")?;
    p.out_id.need(4, "sample out_id [1] u32")?;
    let penalise = params.repetition_penalty != 1.0 && n_ctx > 0;
    if penalise {
        p.ctx_ids.need(n_ctx * 4, "sample ctx_ids [n_ctx]")?;
    }
    // Without the mark launch the flags are all zero; penalty 1 keeps even a stale flag harmless.
    let kp = SampleParams {
        vocab_len: p.vocab_len.min(v),
        penalty: if penalise { params.repetition_penalty } else { 1.0 },
        greedy: greedy as usize,
        temperature: params.temperature,
        // top_k >= V keeps everything: 0 (disabled); then top_k < V <= 2^31 fits a u32.
        top_k: if params.top_k >= v { 0 } else { params.top_k },
        top_p: params.top_p,
        thr: (1.0 - params.top_p as f64) as f32, // as the CPU and sample_draw_f32
        u,
        part: ws.sub(greedy_part_offset(v), sample_counter_offset(v) - greedy_part_offset(v))?,
        counter: ws.sub(sample_counter_offset(v), 4)?,
        state: ws.sub(state_offset(v), STATE_BYTES)?,
        ..*p
    }
    .kernel()?;

    if penalise {
        let blocks = n_ctx.div_ceil(BLOCK as usize).min(MARK_MAX_BLOCKS);
        let cfg = Launch::new((dim_u32(blocks, "mark blocks")?, 1, 1), BLOCK, 0);
        // SAFETY: ctx_ids holds [n_ctx] u32 and flags [V] u8 (checked above); the grid-stride kernel reads
        // ctx_ids[i] for i < n_ctx and writes flags[id] only for id < V.
        unsafe { gpu.launch(s, "sample_mark_f32", cfg, &positional::sample_mark(&kp))? };
    }

    let blocks = dim_u32(v.div_ceil(BLOCK as usize), "process blocks")?;
    if draw != SampleDraw::Run4 {
        // The cross-block ticket of sample_greedy_f32 / the multi-block path is zeroed at the head of
        // every call (issue 13 §2a): a launch that died half-way cannot leave a stale ticket behind.
        gpu.memset(s, kp.counter, 0, 4)?;
    }
    if greedy && draw != SampleDraw::Run4 {
        let cfg = Launch::new((blocks, 1, 1), BLOCK, 0);
        // SAFETY: logits and probs hold [V] f32, out_id one u32, and the workspace (checked above:
        // sample_workspace_bytes(V)) the [V] u8 flags, ⌈V/256⌉ u64 block results and the u32 counter
        // at the offsets used here; thread v < V touches index v of logits, flags and probs, block b
        // writes part[b], the last block reads every part, writes out_id and probs[id < V].
        return unsafe { gpu.launch_params(s, "sample_greedy_f32", cfg, &kp) };
    }
    if draw == SampleDraw::MultiBlock {
        return sample_multi_block(gpu, s, &kp, params.top_p < 1.0);
    }
    let cfg = Launch::new((blocks, 1, 1), BLOCK, 0);
    // SAFETY: logits holds [V] f32 and flags [V] u8 (checked above); thread v < V touches index v only.
    unsafe { gpu.launch(s, "sample_process_f32", cfg, &positional::sample_process(&kp))? };

    let cfg = Launch::new((1, 1, 1), DRAW_THREADS, 0);
    // SAFETY: logits [V] f32 is read, probs [V] f32 written (scratch, then the distribution) and
    // out_id [1] u32 written (all checked above); one block of 1024 threads, indices < V only (both
    // draw kernels read the same fields).
    unsafe {
        if draw == SampleDraw::Run4 {
            gpu.launch(s, "sample_draw_f32", cfg, &positional::sample_draw(&kp))
        } else {
            gpu.launch_params(s, "sample_draw_radix_f32", cfg, &kp)
        }
    }
}

/// Steps 0-6 without a top-k cut on ⌈V/1024⌉ blocks per pass (cuda/sampling_topp.cu): prep (steps
/// 0-1, temperature, max), exp (e, Z), the top-p search (4 passes; only when `cut`, top_p < 1) and
/// the walk, each taking the same `p` (its buffers checked by `sample`).
fn sample_multi_block(gpu: &Gpu, s: &CudaStream, p: &SampleParams, cut: bool) -> Result<()> {
    let grid = (dim_u32((p.v as usize).div_ceil(MB_IDS), "sampling blocks")?, 1, 1);
    let cfg = Launch::new(grid, BLOCK, 0);
    // SAFETY: logits and probs hold [V] f32, out_id one u32, and the workspace
    // (sample_workspace_bytes(V), checked by sample) the [V] u8 flags, ⌈V/256⌉ ≥ ⌈V/1024⌉ u64
    // block results, the u32 counter and STATE_BYTES ≥ sizeof(SmfState) at the offsets of part,
    // counter and state; thread ids index [V] only below V, block b writes part[b] only, the last
    // blocks read part[..grid].
    unsafe { gpu.launch_params(s, "sample_prep_f32", cfg, p)? };
    // SAFETY: as above (reads and writes probs [V], atomics on the state).
    unsafe { gpu.launch_params(s, "sample_exp_f32", cfg, p)? };
    if cut {
        for _ in 0..CUT_PASSES {
            // SAFETY: as above (reads probs [V], atomics on the state, the last block updates it).
            unsafe { gpu.launch_params(s, "sample_cut_f32", cfg, p)? };
        }
    }
    // SAFETY: as above (writes probs [V] and part[..grid], the last block reads them and writes out_id).
    unsafe { gpu.launch_params(s, "sample_walk_f32", cfg, p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_layout_holds_every_region() {
        for v in [1usize, 7, 1000, 1023, 1024, 1025, 151936, 1 << 20] {
            let (part, counter, state) = (greedy_part_offset(v), sample_counter_offset(v), state_offset(v));
            assert!(part >= v && part % 8 == 0, "V {v}: block results after the flags, 8-aligned");
            // The multi-block path keeps ⌈V/1024⌉ f64 there, the greedy kernel ⌈V/256⌉ u64.
            assert!(part + 8 * v.div_ceil(MB_IDS) <= counter && part + 8 * v.div_ceil(BLOCK as usize) <= counter);
            assert!(state >= counter + 4 && state % 8 == 0, "V {v}: the state after the counter, 8-aligned");
            assert_eq!(sample_workspace_bytes(v), state + STATE_BYTES);
        }
    }
}
