//! Place in the flow: the CUDA backend's measuring hooks (beside `graph`, the executor), used by
//! `backend::bench`: the decode step alone (graph replays between events) and a kernel-by-kernel
//! profile of decode steps. Measuring aids only; nothing in the generation path calls them.
use super::device::KernelTime;
use super::graph::{CudaModel, CudaSequence};
use crate::error::{Error, Result};
use crate::model::{self, Model};
use std::sync::Arc;

/// A sequence with room for `steps` more tokens after a `context`-token prompt (prefilled, then
/// one decode step, untimed: the graph is captured there unless `graph` is false). Ids as the
/// bench's prompts (`model::bench_id`).
fn warm_sequence(m: &Arc<CudaModel>, context: usize, steps: usize, graph: bool) -> Result<CudaSequence> {
    let cfg = m.config();
    let mut seq = CudaSequence::new(m.clone(), context.max(1) + steps + 1)?;
    seq.no_graph |= !graph;
    let prompt: Vec<u32> = (0..context.max(1)).map(|i| model::bench_id(cfg, i)).collect();
    seq.run(&prompt, false)?;
    seq.run(&[model::bench_id(cfg, 1)], false)?;
    Ok(seq)
}

/// Every kernel of `steps` decode steps after a `context`-token prompt, launched one by one (no
/// graph; the same fusion and GEMV settings as decoding) and each bracketed by timed events: a
/// measuring aid (`qwen-run bench` with `QWEN_PROFILE=STEPS`) that needs no profiler. The events
/// serialise the launches, so this is each kernel's own duration, not its overlap with the next.
pub fn profile_decode(m: &Arc<CudaModel>, context: usize, steps: usize) -> Result<Vec<KernelTime>> {
    let mut seq = warm_sequence(m, context, steps, false)?;
    let gpu = m.gpu();
    gpu.profile_start();
    let ran = (0..steps).try_for_each(|i| seq.run(&[model::bench_id(m.config(), i + 2)], false).map(|_| ()));
    let times = gpu.profile_take();
    ran?;
    times
}

/// GPU milliseconds of one decode step alone: the captured graph replayed `steps` times back to
/// back between two events, after a `context`-token prompt (every replay rewrites the same
/// position). No sampling and no host round trip between steps, so the bench's decode time per
/// token minus this is what those cost (`qwen-run bench --backend cuda` prints both).
pub fn time_decode_graph(m: &Arc<CudaModel>, context: usize, steps: usize) -> Result<f64> {
    let seq = warm_sequence(m, context, 0, true)?;
    let Some(gr) = seq.graph.as_ref() else {
        return Err(Error::Backend(
            "the decode step was not captured as a graph (QWEN_CUDA_GRAPH=0 or capture failed)".into(),
        ));
    };
    let s = &*seq.stream;
    gr.launch(s)?; // warm
    let ms = m.gpu().time_ms(s, || (0..steps).try_for_each(|_| gr.launch(s)))?;
    Ok(ms / steps.max(1) as f64)
}
