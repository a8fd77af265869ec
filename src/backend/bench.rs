//! Place in the flow: backend::**bench**, beside the backends: measures a loaded `Model` (prefill and
//! decode tok/s) and, on the GPU, what only the CUDA backend can tell (copy bandwidth, memory in
//! use, the decode step alone, a kernel-by-kernel profile). `qwen-run bench` formats the results.
use super::cuda::graph::CudaModel;
use super::LoadOptions;
use crate::checkpoint::Checkpoint;
use crate::config::SamplingParams;
use crate::error::{Error, Result};
use crate::model::{self, Model, Sampled};
use crate::synth::SynthPreset;
use crate::tokenizer::VOCAB_LEN;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub use super::cuda::device::KernelTime;

/// Timed prefill passes per length on the GPU (median reported, after an untimed pass of that length).
pub const GPU_PREFILL_REPS: usize = 3;

/// What one benchmark run measured.
pub struct BenchReport {
    pub backend: String,
    pub model: String,
    /// All weights, at 2 bytes per parameter (bf16); quantized: as held (`Model::quantized_bytes`).
    pub weight_bytes: usize,
    /// Weight bytes one decode step reads (bf16, or quantized as held): everything but the
    /// embedding table, of which it reads one row.
    pub bytes_per_token: usize,
    /// Seconds from start to weights ready, and what was loaded ("file" or "generated on GPU").
    pub load: Option<(f64, String)>,
    /// (tokens, tok/s): the median of `prefill_reps` timed passes.
    pub prefill: Vec<(usize, f64)>,
    pub prefill_reps: usize,
    pub decode_prompt: usize,
    pub decode_tokens: usize,
    pub decode_tok_s: f64,
    /// Capacity (tokens) of the one sequence the run uses: the longest prefill or decode context.
    pub context: usize,
    pub device: Option<DeviceStats>,
}

/// What the GPU adds to a report.
pub struct DeviceStats {
    pub name: String,
    /// Measured device-to-device copy bandwidth, bytes read + written per second.
    pub copy_bytes_per_s: f64,
    /// Device memory in use (total - free) at the end of the run, with its sequence still
    /// allocated: weights, the plan and KV cache for `BenchReport::context` tokens, cuBLAS
    /// workspace, the CUDA context.
    pub mem_used_bytes: usize,
}

impl BenchReport {
    /// Decode speed as a fraction of the bandwidth floor: bytes per token over the measured copy
    /// bandwidth gives the fastest possible step.
    pub fn floor_fraction(&self) -> Option<f64> {
        let d = self.device.as_ref()?;
        let floor_tok_s = d.copy_bytes_per_s / self.bytes_per_token as f64;
        Some(self.decode_tok_s / floor_tok_s)
    }
}

/// The median of `v` (the mean of the middle two for an even count); `v` is sorted in place.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The greedy id of `logits` `[V]` (the bench's decode needs a valid next id, not the sampler's
/// exact pipeline): the first largest over the tokenizer's ids, NaN never winning.
fn greedy_id(logits: &[f32]) -> u32 {
    let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
    for (i, &x) in logits.iter().take(VOCAB_LEN as usize).enumerate() {
        if x > best_v {
            (best, best_v) = (i, x);
        }
    }
    best as u32
}

/// One greedy decode step on the model's backend (on the GPU only the id crosses).
fn greedy_step(seq: &mut dyn model::Sequence, tokens: &[u32], context: &[u32]) -> Result<u32> {
    Ok(match seq.forward_sample(tokens, &SamplingParams::greedy(), 0.0, context)? {
        Sampled::Id(id) => id,
        Sampled::Logits(l) => greedy_id(&l),
    })
}

/// Prefill at each length (the sequence reset before each pass), then decode `decode` tokens
/// greedily (sampling on the model's backend, so on the GPU only the id crosses) after a
/// `decode_prompt`-token prompt. With `prefill_reps` > 1 each length gets an untimed pass of its
/// own first (a GEMM shape's first call pays for cuBLAS's heuristics and lazy kernel loading, which
/// a steady state does not) and the median of `prefill_reps` timed passes is reported; with 1 (the
/// CPU, where a 7B pass takes seconds) one timed pass after the shortest length's warm-up. Token
/// ids are a fixed pseudo-random pattern below the vocab size. `at_end` runs last, while the
/// sequence is still allocated (the GPU bench reads memory in use there).
pub fn run(
    model: &Arc<dyn Model>,
    max_seq_len: usize,
    prefill: &[usize],
    decode: usize,
    decode_prompt: usize,
    prefill_reps: usize,
    at_end: &mut dyn FnMut(&mut BenchReport) -> Result<()>,
) -> Result<BenchReport> {
    let cfg = model.config().clone();
    let ids = |n: usize| -> Vec<u32> { (0..n).map(|i| model::bench_id(&cfg, i)).collect() };
    let decode_prompt = decode_prompt.max(1);
    let need = prefill.iter().copied().max().unwrap_or(0).max(decode_prompt + decode + 1);
    if need > max_seq_len {
        return Err(Error::invalid(format!(
            "the benchmark needs {need} tokens of context, --max-seq-len is {max_seq_len}"
        )));
    }
    let mut report = BenchReport {
        backend: model.backend_name().into(),
        model: format!("C={} L={} V={}", cfg.hidden_size, cfg.num_layers, cfg.vocab_size),
        weight_bytes: cfg.num_params() * 2,
        // untied: the embedding table is read one row per token; tied: it is also the lm_head
        bytes_per_token: (cfg.num_params()
            - if cfg.tie_word_embeddings { 0 } else { (cfg.vocab_size - 1) * cfg.hidden_size })
            * 2,
        load: None,
        prefill: vec![],
        prefill_reps: prefill_reps.max(1),
        decode_prompt,
        decode_tokens: decode,
        decode_tok_s: 0.0,
        context: need,
        device: None,
    };
    if let Some((held, read)) = model.quantized_bytes() {
        (report.weight_bytes, report.bytes_per_token) = (held, read);
    }
    let mut seq = model.clone().new_sequence(need)?;
    // Warm-up, untimed: the decode path (a few tokens) and the prefill path at the shortest length
    // (the first GEMM pays for cuBLAS's heuristics and lazy kernel loading).
    seq.forward(&ids(4.min(need.max(1))), false)?;
    if let Some(&n) = prefill.iter().min() {
        seq.reset();
        seq.forward(&ids(n), false)?;
    }
    let reps = report.prefill_reps;
    for &n in prefill {
        if reps > 1 {
            seq.reset();
            seq.forward(&ids(n), false)?;
        }
        let mut rates = Vec::with_capacity(reps);
        for _ in 0..reps {
            seq.reset();
            let t = Instant::now();
            seq.forward(&ids(n), false)?;
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        report.prefill.push((n, median(&mut rates)));
    }
    if decode > 0 {
        seq.reset();
        let mut ctx = ids(decode_prompt);
        let mut id = greedy_step(seq.as_mut(), &ctx.clone(), &ctx)?;
        let t = Instant::now();
        for _ in 0..decode {
            ctx.push(id);
            id = greedy_step(seq.as_mut(), &[id], &ctx)?;
        }
        report.decode_tok_s = decode as f64 / t.elapsed().as_secs_f64();
    }
    at_end(&mut report)?;
    drop(seq);
    Ok(report)
}

/// `QWEN_PROFILE=STEPS`: the decode steps to profile kernel by kernel after a GPU benchmark (None
/// when unset). Read before the run, so a bad value costs no benchmark.
pub fn profile_steps_from_env() -> Result<Option<usize>> {
    match std::env::var("QWEN_PROFILE") {
        Err(_) => Ok(None),
        Ok(v) => Ok(Some(v.trim().parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
            Error::invalid(format!("QWEN_PROFILE={v:?}: expected the number of decode steps to profile"))
        })?)),
    }
}

/// Where the GPU benchmark's weights come from.
pub enum GpuBenchSource<'a> {
    /// A synth preset (tiny or 7b) generated on the GPU, no file.
    Synth(&'a str),
    /// A model directory, streamed to the GPU (the load path timed too).
    Dir(&'a Path),
}

/// A model on the GPU ready to be measured, and how long it took to get there.
pub struct GpuBench {
    model: Arc<CudaModel>,
    /// KV capacity the run may use (`LoadOptions::max_seq_len` resolved).
    pub max_seq_len: usize,
    /// Seconds from start to weights ready, and what was loaded.
    pub load: (f64, String),
}

impl GpuBench {
    /// One line naming every CUDA switch in force and whether it is verified (`Tuning::describe`).
    pub fn tuning(&self) -> String {
        self.model.tuning().describe()
    }

    /// Load (or generate) the weights on GPU 0 in `opts.dtype`, timing it.
    pub fn open(source: GpuBenchSource, opts: &LoadOptions) -> Result<GpuBench> {
        let t = Instant::now();
        let (model, how) = match source {
            GpuBenchSource::Synth(preset) => {
                let p = SynthPreset::from_name(preset)?;
                (CudaModel::synthetic(&p, 0, opts.dtype)?, "generated on the GPU")
            }
            GpuBenchSource::Dir(dir) => {
                let ck = Checkpoint::open(dir)?;
                (CudaModel::load(&ck, opts)?, "file, streamed to the GPU")
            }
        };
        let secs = t.elapsed().as_secs_f64();
        let max_seq_len = model.config().resolve_max_seq_len(opts.max_seq_len, "--max-seq-len")?;
        Ok(GpuBench { model: Arc::new(model), max_seq_len, load: (secs, how.into()) })
    }

    /// `run` with `GPU_PREFILL_REPS`, plus the device's copy bandwidth and memory in use.
    pub fn report(&self, prefill: &[usize], decode: usize, decode_prompt: usize) -> Result<BenchReport> {
        let gpu = self.model.gpu().clone();
        let copy = gpu.copy_bandwidth()?;
        let model: Arc<dyn Model> = self.model.clone();
        let mut report = run(&model, self.max_seq_len, prefill, decode, decode_prompt, GPU_PREFILL_REPS, &mut |r| {
            let (free, total) = gpu.mem_info()?;
            r.device =
                Some(DeviceStats { name: gpu.name.clone(), copy_bytes_per_s: copy, mem_used_bytes: total - free });
            Ok(())
        })?;
        report.load = Some(self.load.clone());
        Ok(report)
    }

    /// Milliseconds of the decode step alone (the captured graph replayed back to back after a
    /// `context`-token prompt); an error when there is no graph.
    pub fn decode_step_ms(&self, context: usize, steps: usize) -> Result<f64> {
        super::cuda::bench::time_decode_graph(&self.model, context, steps)
    }

    /// Every kernel's time over `steps` decode steps after a `context`-token prompt.
    pub fn profile(&self, context: usize, steps: usize) -> Result<Vec<KernelTime>> {
        super::cuda::bench::profile_decode(&self.model, context, steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
    }

    #[test]
    fn greedy_id_is_the_first_largest_real_id() {
        let mut l = vec![0.0f32; VOCAB_LEN as usize + 10];
        l[5] = 2.0;
        l[9] = 2.0;
        l[VOCAB_LEN as usize + 3] = 9.0; // a padding row never wins
        l[0] = f32::NAN;
        assert_eq!(greedy_id(&l), 5);
    }
}
