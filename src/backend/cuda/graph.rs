//! Place in the flow: backend::cuda, last: device → launch → plan → upload → **graph** (the executor).
//! The GPU executor: `CudaModel` (weights on the device, shared by every sequence) and
//! `CudaSequence` (one static plan: activations, KV cache, its own stream, a cuBLAS handle and the
//! captured decode graph).
//!
//! A pass runs the tokens in the plan's `ids` at positions `pos0..` (both device scalars/buffers):
//! embedding → L × [c_attn · qkv_rope_append · attention · c_proj · add_rmsnorm · w12 · swiglu ·
//! mlp.c_proj · add_rmsnorm] → lm_head. The residual add is fused into the next norm (the last one
//! is ln_f); at decode qkv_rope_append, swiglu and add_rmsnorm run in the epilogue of the GEMV
//! before them (`gemv_qkv_rope`, `gemv_swiglu`, `gemv_residual_rmsnorm`; swiglu also for prefill
//! chunks of up to 8 tokens), so a decode layer is 5 launches. A one-token pass (decode) is
//! captured once as a CUDA graph and replayed: everything that changes between steps (the id,
//! pos0, the NTK inverse frequencies) lives in device memory.
use super::device::{cuda_err, gib, set_current, DevBuf, DevSlice, Gpu, GpuDType};
use super::launch::{self, Blas, GEMV_MAX_B};
use super::plan::{Plan, Region, FALLBACK_ROWS, LOGIT_ROWS};
use super::switches::{AdecGrid, Tuning};
use super::upload::{synth_weights, upload_weights, GpuWeights};
use super::upload_quant::{upload_quant_weights, GpuQuantLayer};
use crate::backend::{ComputeDType, LoadOptions};
use crate::checkpoint::Checkpoint;
use crate::config::{QwenConfig, SamplingParams};
use crate::error::{Error, Result};
use crate::model::{self, Model, Sampled, Sequence};
use crate::synth::SynthPreset;
use crate::tokenizer::VOCAB_LEN;
use crate::weights::Weights;
use cudarc::driver::{result, sys, CudaStream};
use std::sync::Arc;

/// Device memory a sequence needs beyond its plan: the cuBLAS handle and workspace, the
/// instantiated decode graph.
const SEQUENCE_RESERVE_BYTES: usize = 256 << 20;

/// The GPU compute dtype for `--dtype`: auto and bf16 → bf16, f16 → f16; f32 is the CPU backend's.
fn gpu_dtype(d: ComputeDType) -> Result<GpuDType> {
    match d {
        ComputeDType::Auto | ComputeDType::BF16 => Ok(GpuDType::BF16),
        ComputeDType::F16 => Ok(GpuDType::F16),
        ComputeDType::F32 => Err(Error::invalid(
            "--dtype f32: the CUDA backend computes in bf16 or f16 (f32 is the CPU reference: --backend cpu)",
        )),
    }
}

/// The switches, read once per load (`Tuning::from_env`: bad values said), with PDL as the device
/// has it; the paths on that no GPU run has verified yet are said once on stderr.
fn load_tuning(gpu: &Gpu) -> Tuning {
    let mut tuning = Tuning::from_env();
    tuning.pdl = gpu.pdl;
    let u = tuning.unverified();
    if !u.is_empty() {
        eprintln!("note: CUDA paths not yet verified on a GPU are on: {}", u.join("; "));
    }
    tuning
}

/// A Qwen v1 model whose weights live on one GPU.
pub struct CudaModel {
    gpu: Arc<Gpu>,
    config: QwenConfig,
    dt: GpuDType,
    w: GpuWeights,
    tuning: Tuning,
}

impl CudaModel {
    /// Open GPU 0, check the weights, and stream them up in the compute dtype (`opts.dtype`:
    /// auto and bf16 → bf16, f16 → f16; f32 is the CPU backend's). Quantized weights (a quantized
    /// checkpoint, or `opts.quant`) are uploaded packed (`upload_quant`) and run on the
    /// quantized-weight kernels, which no GPU run has verified yet: said once on stderr.
    pub fn load(ck: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        let quantized = opts.quant.is_some() || crate::config::QuantConfig::load(&ck.dir)?.is_some();
        let (weights, qweights) = if quantized {
            let qw = crate::backend::cpu::load_weights(ck, opts)?;
            (None, Some(qw))
        } else {
            (Some(Weights::from_checkpoint(ck)?), None)
        };
        let (config, n_layers) = match (&weights, &qweights) {
            (Some(w), _) => (w.config.clone(), w.layers.len()),
            (_, Some(q)) => (q.config.clone(), q.layers.len()),
            _ => unreachable!("one of them is loaded"),
        };
        if n_layers != config.num_layers || config.num_layers == 0 {
            return Err(Error::bad_file(
                &ck.dir,
                format!("{n_layers} layers of weights for {} in the config", config.num_layers),
            ));
        }
        let dt = gpu_dtype(opts.dtype)?;
        if config.head_dim % 2 != 0 || config.head_dim > 256 {
            return Err(Error::bad_file(
                &ck.dir,
                format!("head dim {} is not supported by the CUDA kernels (even, at most 256)", config.head_dim),
            ));
        }
        let gpu = Gpu::open(0)?;
        let tuning = load_tuning(&gpu);
        let w = match (&weights, &qweights) {
            (Some(w), _) => upload_weights(&gpu, w, dt, opts.progress)?,
            (_, Some(q)) => {
                if tuning.fuse {
                    eprintln!("note: QWEN_FUSE=1: the fused GEMV epilogues take dense weights; the quantized linears run unfused");
                }
                upload_quant_weights(&gpu, q, dt, opts.progress)?
            }
            _ => unreachable!("one of them is loaded"),
        };
        Ok(CudaModel { gpu, config, dt, w, tuning })
    }

    /// A model of synth preset `p` (seed `seed`) generated on the GPU: the weights `synth_model`
    /// would write, without a file (`qwen-run bench --synth 7b`).
    pub fn synthetic(p: &SynthPreset, seed: u64, dtype: ComputeDType) -> Result<Self> {
        let dt = gpu_dtype(dtype)?;
        if p.num_layers == 0 {
            return Err(Error::invalid(format!("synth preset {}: no layers", p.name)));
        }
        let gpu = Gpu::open(0)?;
        let tuning = load_tuning(&gpu);
        let (config, w) = synth_weights(&gpu, p, seed, dt)?;
        Ok(CudaModel { gpu, config, dt, w, tuning })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    pub fn dtype(&self) -> GpuDType {
        self.dt
    }
    /// The switches this model runs with (read once at load; `qwen-run bench` prints them).
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }
    /// This model with `tuning` instead of the environment's (GPU tests and A/B runs of one path).
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = Tuning { pdl: self.gpu.pdl, ..tuning };
        self
    }
    /// A sequence of capacity `cap` as its concrete type (GPU tests: `poison_step_counters`).
    pub fn cuda_sequence(self: &Arc<Self>, cap: usize) -> Result<CudaSequence> {
        CudaSequence::new(self.clone(), cap)
    }
    /// Whether the linears are quantized (`upload_quant`).
    pub fn is_quantized(&self) -> bool {
        self.w.quant.is_some()
    }
}

impl Model for CudaModel {
    fn config(&self) -> &QwenConfig {
        &self.config
    }
    fn backend_name(&self) -> &'static str {
        "cuda"
    }
    fn new_sequence(self: Arc<Self>, max_seq_len: usize) -> Result<Box<dyn Sequence>> {
        Ok(Box::new(CudaSequence::new(self, max_seq_len)?))
    }
    /// The device bytes: the linears as uploaded (packed codes and scales), the rest in T; a decode
    /// step reads one row of the (untied) embedding table.
    fn quantized_bytes(&self) -> Option<(usize, usize)> {
        if !self.is_quantized() {
            return None;
        }
        let row = self.config.hidden_size * self.dt.size();
        let wte = if self.config.tie_word_embeddings { 0 } else { self.config.vocab_size * row - row };
        Some((self.w.bytes, self.w.bytes.saturating_sub(wte)))
    }
}

/// A linear layer's weight as the executor passes it: dense T `[N, K]`, or quantized.
#[derive(Clone, Copy)]
enum Lin<'a> {
    Dense(DevSlice),
    Quant(&'a launch::QuantWeight),
}

/// Bytes of a quantized model's dequantization scratch: the largest stacked linear of a layer in T
/// (`[max(3P·C, C·P, 2F·C, C·F)]`).
fn dequant_scratch_bytes(cfg: &QwenConfig, dt: GpuDType) -> usize {
    let (c, p, f) = (cfg.hidden_size, cfg.proj_size(), cfg.mlp_width);
    [3 * p * c, c * p, 2 * f * c, c * f].into_iter().max().unwrap_or(0) * dt.size()
}

/// The captured decode step: the raw graph and its executable, destroyed on drop. Graph objects
/// are not internally synchronised: a sequence is used by one thread at a time (`&mut self`),
/// which is what makes moving it between threads sound.
pub(super) struct DecodeGraph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    ctx: Arc<cudarc::driver::CudaContext>,
}
// SAFETY: see above; the graph is only launched or dropped through `&mut CudaSequence`.
unsafe impl Send for DecodeGraph {}

impl DecodeGraph {
    pub(super) fn launch(&self, s: &CudaStream) -> Result<()> {
        // SAFETY: exec is a live instantiated graph of this context; s is a live stream of it.
        unsafe { result::graph::launch(self.exec, s.cu_stream()) }.map_err(cuda_err("replaying the decode graph"))
    }
}

impl Drop for DecodeGraph {
    fn drop(&mut self) {
        if set_current(&self.ctx) {
            // SAFETY: both handles were created by `capture` and are destroyed exactly once.
            unsafe {
                let _ = result::graph::exec_destroy(self.exec);
                let _ = result::graph::destroy(self.graph);
            }
        }
    }
}

/// One sequence on a `CudaModel`. Fields drop in order: the graph and the cuBLAS handle before
/// the stream they use, the buffers before the model (whose weights the graph reads).
pub struct CudaSequence {
    pub(super) graph: Option<DecodeGraph>,
    /// Graphs captured for other length buckets (`AdecGrid::Length`): (grid splits, graph); `graph`
    /// is the current bucket's, `graph_splits` its grid.
    other_graphs: Vec<(usize, DecodeGraph)>,
    graph_splits: usize,
    /// None when libcublas cannot be loaded: prefill matmuls then run as GEMVs of 8 rows.
    blas: Option<Blas>,
    act: DevBuf,
    kv: DevBuf,
    pub(super) stream: Arc<CudaStream>,
    model: Arc<CudaModel>,
    plan: Plan,
    len: usize,
    alpha: f64,
    /// Capture failed once (or QWEN_CUDA_GRAPH=0): decode launches kernel by kernel.
    pub(super) no_graph: bool,
    /// The pointwise kernels after a GEMV run in its epilogue (`gemv_qkv_rope` and
    /// `gemv_residual_rmsnorm` at decode, `gemv_swiglu` up to 8 tokens) and the split-K attention
    /// combines in its own last block (`Tuning::fuse`, QWEN_FUSE=1; not yet verified on a GPU).
    fuse: bool,
    /// Prefill attention (`Tuning::attn`): run 4's WMMA kernel (default), QWEN_ATTN=mma / wmma the
    /// newer ones, QWEN_ATTN=splitk (None) the split-K decode kernel on slices of the queries.
    prefill_kernel: Option<launch::PrefillKernel>,
    /// The context ids currently in `plan.ctx_ids` (for the repetition penalty on the GPU).
    ctx_on_device: Vec<u32>,
    /// Quantized models: one layer's largest linear dequantized to T (`[rows, K]`, rows up to 2F for
    /// w1 ‖ w2), the prefill GEMM's weight operand, reused by every linear of every layer.
    dq_scratch: Option<DevBuf>,
}

impl CudaSequence {
    pub(super) fn new(model: Arc<CudaModel>, cap: usize) -> Result<Self> {
        model::check_capacity(&model.config, cap)?;
        if cap > i32::MAX as usize {
            return Err(Error::invalid(format!("max_seq_len {cap} is beyond what the CUDA kernels index (2^31 - 1)")));
        }
        let gpu = model.gpu.clone();
        let plan = Plan::new(&model.config, model.dt, cap, model.tuning.adec_split);
        let scratch_bytes = if model.is_quantized() { dequant_scratch_bytes(&model.config, model.dt) } else { 0 };
        let (free, _) = gpu.mem_info()?;
        if plan.total_bytes() + scratch_bytes + SEQUENCE_RESERVE_BYTES > free {
            return Err(Error::Backend(format!(
                "a sequence of {cap} tokens needs {:.2} GiB on the GPU (KV cache {:.2} GiB + activations {:.2} GiB + {:.2} GiB for cuBLAS and the graph{}), {:.2} GiB free",
                gib(plan.total_bytes() + scratch_bytes + SEQUENCE_RESERVE_BYTES),
                gib(plan.kv_bytes),
                gib(plan.act_bytes),
                gib(SEQUENCE_RESERVE_BYTES),
                if scratch_bytes > 0 {
                    format!(" + {:.2} GiB to dequantize a layer's weights for prefill", gib(scratch_bytes))
                } else {
                    String::new()
                },
                gib(free)
            )));
        }
        let act = gpu.alloc(plan.act_bytes)?;
        let kv = gpu.alloc(plan.kv_bytes)?;
        let dq_scratch = if scratch_bytes > 0 { Some(gpu.alloc(scratch_bytes)?) } else { None };
        let stream = gpu.ctx.new_stream().map_err(cuda_err("creating a sequence stream"))?;
        let blas = match Blas::new(&gpu, &stream) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("note: {e}; prefill matmuls run on the GEMV kernel (slower)");
                None
            }
        };
        let tuning = model.tuning;
        let quantized = model.is_quantized();
        let seq = CudaSequence {
            model,
            stream,
            blas,
            plan,
            act,
            kv,
            len: 0,
            alpha: 1.0,
            graph: None,
            no_graph: !tuning.graph,
            // The fused epilogues read dense T weights: a quantized model runs unfused.
            fuse: tuning.fuse && !quantized,
            prefill_kernel: tuning.attn,
            other_graphs: Vec::new(),
            graph_splits: 0,
            ctx_on_device: Vec::new(),
            dq_scratch,
        };
        // The sampling flags and the attention tickets must start zeroed (the kernels leave them zeroed).
        gpu.memset(&seq.stream, seq.r(seq.plan.flags).ptr, 0, seq.plan.flags.bytes)?;
        gpu.memset(&seq.stream, seq.r(seq.plan.adec_counters).ptr, 0, seq.plan.adec_counters.bytes)?;
        gpu.memset(&seq.stream, seq.r(seq.plan.norm_ws).ptr, 0, seq.plan.norm_ws.bytes)?;
        seq.write_inv_freq(1.0)?;
        seq.stream.synchronize().map_err(cuda_err("initialising a sequence"))?;
        Ok(seq)
    }

    /// Test hook (issue 13 §2a): write a stale ticket into every cross-block counter of the decode
    /// step, as a launch that died half-way would leave it. The next decode step must still be right
    /// (its memset node zeroes them first).
    #[doc(hidden)]
    pub fn poison_step_counters(&self) -> Result<()> {
        let sc = self.r(self.plan.step_counters());
        self.model.gpu.memset(&self.stream, sc.ptr, 0x01, sc.bytes)?;
        self.stream.synchronize().map_err(cuda_err("poisoning the step counters"))
    }

    /// A plan region as a device slice.
    fn r(&self, r: Region) -> DevSlice {
        DevSlice::new(self.act.ptr().offset(r.offset), r.bytes)
    }

    /// Rows `row0..row0+n` of a region whose rows are `row_bytes` long.
    fn rows(&self, r: Region, row0: usize, n: usize, row_bytes: usize) -> Result<DevSlice> {
        self.r(r).sub(row0 * row_bytes, n * row_bytes)
    }

    /// Layer `l`'s key and value caches, `[cap, P]` T each.
    fn kv(&self, l: usize) -> Result<(DevSlice, DevSlice)> {
        let all = self.kv.slice();
        let lb = self.plan.kv_layer_bytes;
        let layers = self.model.config.num_layers;
        Ok((all.sub(l * lb, lb)?, all.sub((layers + l) * lb, lb)?))
    }

    fn write_inv_freq(&self, alpha: f64) -> Result<()> {
        let f = model::inv_freq(&self.model.config, alpha);
        self.model.gpu.write_on(&self.stream, self.r(self.plan.inv_freq).ptr, &f)
    }

    /// `y[t, N] = x[t, K] · Wᵀ`: GEMV for up to 8 rows, cuBLAS above (GEMV in 8-row slices without it).
    #[allow(clippy::too_many_arguments)]
    fn matmul(&self, w: DevSlice, x: DevSlice, y: DevSlice, t: usize, n: usize, k: usize) -> Result<()> {
        let (g, s, dt) = (&*self.model.gpu, &*self.stream, self.model.dt);
        let cfg = self.model.tuning.gemv;
        if t <= GEMV_MAX_B {
            return launch::gemv_with(g, s, dt, &launch::GemvParams { w, x, y, n, k, b: t, stages: 0 }, cfg);
        }
        if let Some(b) = &self.blas {
            return b.gemm(dt, w, x, y, t, n, k);
        }
        let (xr, yr) = (k * dt.size(), n * 4);
        let mut r0 = 0;
        while r0 < t {
            let m = GEMV_MAX_B.min(t - r0);
            let (x, y) = (x.sub(r0 * xr, m * xr)?, y.sub(r0 * yr, m * yr)?);
            launch::gemv_with(g, s, dt, &launch::GemvParams { w, x, y, n, k, b: m, stages: 0 }, cfg)?;
            r0 += m;
        }
        Ok(())
    }

    /// `y[t, N] = x[t, K] · Wᵀ` for a linear `w` (N, K from the weight): dense, `matmul`; quantized,
    /// `quant_matmul` of the one matrix.
    fn linear(&self, w: Lin<'_>, x: DevSlice, y: DevSlice, t: usize, n: usize, k: usize) -> Result<()> {
        match w {
            Lin::Dense(w) => self.matmul(w, x, y, t, n, k),
            Lin::Quant(q) if q.shape() == (n, k) => self.quant_matmul(&[q], x, y, t),
            Lin::Quant(q) => {
                Err(Error::Backend(format!("internal: a quantized {:?} weight used as [{n}, {k}]", q.shape())))
            }
        }
    }

    /// `y[t, ΣN] = x[t, K] · [W0; W1; …]ᵀ` for quantized matrices stacked by rows (w1 ‖ w2 gives the
    /// `[t, 2F]` up ‖ gate rows): one token, the quantized GEMV of each into its columns of y; more,
    /// each dequantized to T into its rows of the sequence's scratch, then one `matmul` (cuBLAS).
    fn quant_matmul(&self, ws: &[&launch::QuantWeight], x: DevSlice, y: DevSlice, t: usize) -> Result<()> {
        let (g, s, dt) = (&*self.model.gpu, &*self.stream, self.model.dt);
        let k = ws[0].shape().1;
        if ws.iter().any(|w| w.shape().1 != k) {
            return Err(Error::Backend("internal: stacked quantized matrices of different K".into()));
        }
        let n_all: usize = ws.iter().map(|w| w.shape().0).sum();
        if t == 1 {
            let mut n0 = 0;
            for w in ws {
                let n = w.shape().0;
                let (nf4, int8) = (self.model.tuning.nf4, self.model.tuning.int8);
                launch::gemv_quant_with(g, s, dt, w, x, y.sub(n0 * 4, n * 4)?, nf4, int8)?;
                n0 += n;
            }
            return Ok(());
        }
        let scratch = self
            .dq_scratch
            .as_ref()
            .ok_or_else(|| Error::Backend("internal: a quantized matmul without the dequantization scratch".into()))?
            .slice();
        let row = k * dt.size();
        let mut n0 = 0;
        for w in ws {
            let n = w.shape().0;
            launch::dequant_with(g, s, dt, w, scratch.sub(n0 * row, n * row)?, self.model.tuning.gptq_dequant)?;
            n0 += n;
        }
        self.matmul(scratch.sub(0, n_all * row)?, x, y, t, n_all, k)
    }

    /// Causal attention of the `t` queries in `q` (positions pos0..) over the cache.
    /// `pos0` is the host copy of the device scalar (used to slice the fallback path).
    #[allow(clippy::too_many_arguments)]
    fn attention(&self, q: DevSlice, kc: DevSlice, vc: DevSlice, att: DevSlice, t: usize, pos0: usize) -> Result<()> {
        let cfg = &self.model.config;
        let (g, s, dt) = (&*self.model.gpu, &*self.stream, self.model.dt);
        let (h, d, cap) = (cfg.num_heads, cfg.head_dim, self.plan.cap);
        let (part_o, part_ml) = (self.r(self.plan.part_o), self.r(self.plan.part_ml));
        let counters = if self.fuse { self.r(self.plan.adec_counters) } else { DevSlice::default() };
        let split = self.plan.split;
        let (split_len, scale) = (split.split_len, model::attention_scale(d));
        if t == 1 {
            let pos = self.r(self.plan.pos0);
            // QWEN_ADEC_GRID=length: the grid for this length's bucket (the graph is per bucket).
            let splits = match self.model.tuning.adec_grid {
                AdecGrid::Capacity => self.plan.split.n_splits,
                AdecGrid::Length => self.plan.split.bucket_splits(pos0 + 1),
            };
            let p = launch::AttentionDecodeParams {
                q,
                k_cache: kc,
                v_cache: vc,
                part_o,
                part_ml,
                pos0: pos,
                h,
                d,
                cap,
                split_len,
                n_splits: splits,
                scale,
                out: att,
                counters,
            };
            return launch::attention_decode(g, s, dt, &p, 1, split, self.fuse);
        }
        if let Some(kernel) = self.prefill_kernel.filter(|_| launch::attention_prefill_supports(d)) {
            let pos = self.r(self.plan.pos0);
            let p = launch::AttentionPrefillParams {
                q,
                k_cache: kc,
                v_cache: vc,
                out: att,
                pos0: pos,
                t,
                h,
                d,
                cap,
                scale,
            };
            return launch::attention_prefill(g, s, kernel, dt, &p);
        }
        // Split-K kernel for the queries in slices of FALLBACK_ROWS, each with its own pos0.
        let row = h * d * dt.size();
        let pos_sub = self.r(self.plan.pos_sub);
        let mut r0 = 0;
        while r0 < t {
            let m = FALLBACK_ROWS.min(t - r0);
            g.set_u32(s, pos_sub.ptr, (pos0 + r0) as u32)?;
            let (qs, os) = (q.sub(r0 * row, m * row)?, att.sub(r0 * row, m * row)?);
            let p = launch::AttentionDecodeParams {
                q: qs,
                k_cache: kc,
                v_cache: vc,
                part_o,
                part_ml,
                pos0: pos_sub,
                h,
                d,
                cap,
                split_len,
                n_splits: split.n_splits,
                scale,
                out: os,
                counters,
            };
            launch::attention_decode(g, s, dt, &p, m, split, self.fuse)?;
            r0 += m;
        }
        Ok(())
    }

    /// `x += h · wᵀ` (the residual stream, `[t, C]` f32; h `[t, K]` T), then `a = RMSNorm(x) · w_ln`:
    /// at decode with fusion one `gemv_residual_rmsnorm`, else the matmul into y and `add_rmsnorm`.
    fn project_residual_norm(&self, w: Lin<'_>, h: DevSlice, w_ln: DevSlice, t: usize, k: usize) -> Result<()> {
        let cfg = &self.model.config;
        let (g, s, dt) = (&*self.model.gpu, &*self.stream, self.model.dt);
        let (c, eps, pl) = (cfg.hidden_size, cfg.layer_norm_epsilon, &self.plan);
        let x = self.rows(pl.x, 0, t, c * 4)?; // [t, C] f32
        let a = self.rows(pl.a, 0, t, c * dt.size())?; // [t, C] T
        if let (Lin::Dense(w), true) = (w, t == 1 && self.fuse) {
            let ws = self.r(pl.norm_ws);
            let p = launch::GemvFusedParams {
                w,
                x: h,
                k,
                b: 1,
                c,
                resid: x,
                w_ln,
                a,
                partials: ws,
                eps,
                ..Default::default()
            };
            return launch::gemv_residual_rmsnorm(g, s, dt, &p, self.model.tuning.gemv);
        }
        let y = self.rows(pl.y, 0, t, c * 4)?; // [t, C] f32
        self.linear(w, h, y, t, c, k)?;
        launch::add_rmsnorm(g, s, dt, &launch::RmsnormParams { x, y, w: w_ln, out: a, c, eps }, t)
    }

    /// The transformer on the `t` tokens in `ids` at positions `pos0..` (host copy `pos0`):
    /// ends with the ln_f-normed rows in `a`.
    fn layers(&self, t: usize, pos0: usize) -> Result<()> {
        let m = &*self.model;
        let cfg = &m.config;
        let (g, s, dt) = (&*m.gpu, &*self.stream, m.dt);
        let (c, h, d, f, v) = (cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_width, cfg.vocab_size);
        let (p, eps, es) = (h * d, cfg.layer_norm_epsilon, dt.size());
        let pl = &self.plan;
        let ids = self.rows(pl.ids, 0, t, 4)?; // [t] u32
        let x = self.rows(pl.x, 0, t, c * 4)?; // [t, C] f32
        let a = self.rows(pl.a, 0, t, c * es)?; // [t, C] T
        let qkv = self.rows(pl.qkv, 0, t, 3 * p * 4)?; // [t, 3P] f32
        let q = self.rows(pl.q, 0, t, p * es)?; // [t, P] T
        let att = self.rows(pl.att, 0, t, p * es)?; // [t, P] T
        let upgate = self.rows(pl.upgate, 0, t, 2 * f * 4)?; // [t, 2F] f32
        let gact = self.rows(pl.g, 0, t, f * es)?; // [t, F] T
        let (inv_freq, pos) = (self.r(pl.inv_freq), self.r(pl.pos0));
        if t == 1 && self.fuse {
            // The fused kernels' cross-block tickets are zeroed at the head of every decode step (a
            // memset node of the captured graph), whatever an earlier launch left (issue 13 §2a).
            let sc = self.r(pl.step_counters());
            g.memset(s, sc.ptr, 0, sc.bytes)?;
        }
        launch::embedding(g, s, dt, &launch::EmbeddingParams { wte: m.w.wte, ids, out: x, v, c }, t)?;
        let ln_1 = m.w.layers[0].ln_1;
        launch::rmsnorm(g, s, dt, &launch::RmsnormParams { x, w: ln_1, out: a, c, eps, ..Default::default() }, t)?;
        for (l, lw) in m.w.layers.iter().enumerate() {
            let (kc, vc) = self.kv(l)?;
            // Quantized linears (fuse is off for them: CudaSequence::new).
            let ql = m.w.quant.as_ref().map(|q| &q[l]);
            let lin = |dense: DevSlice, quant: fn(&GpuQuantLayer) -> &launch::QuantWeight| match ql {
                Some(q) => Lin::Quant(quant(q)),
                None => Lin::Dense(dense),
            };
            if t == 1 && self.fuse {
                let p = launch::GemvFusedParams {
                    w: lw.c_attn_w,
                    x: a,
                    k: c,
                    b: 1,
                    bias: lw.c_attn_b,
                    inv_freq,
                    pos0: pos,
                    q,
                    k_cache: kc,
                    v_cache: vc,
                    h,
                    d,
                    cap: pl.cap,
                    s: cfg.seq_length,
                    use_logn: cfg.use_logn_attn as usize,
                    ..Default::default()
                };
                launch::gemv_qkv_rope(g, s, dt, &p, m.tuning.gemv)?;
            } else {
                self.linear(lin(lw.c_attn_w, |q| &q.c_attn), a, qkv, t, 3 * p, c)?;
                let p = launch::RopeParams {
                    qkv,
                    bias: lw.c_attn_b,
                    inv_freq,
                    pos0: pos,
                    q,
                    k_cache: kc,
                    v_cache: vc,
                    t,
                    h,
                    d,
                    cap: pl.cap,
                    s: cfg.seq_length,
                    use_logn: cfg.use_logn_attn as usize,
                };
                launch::qkv_rope_append(g, s, dt, &p)?;
            }
            self.attention(q, kc, vc, att, t, pos0)?;
            self.project_residual_norm(lin(lw.c_proj, |q| &q.c_proj), att, lw.ln_2, t, p)?;
            if t <= GEMV_MAX_B && self.fuse {
                let p = launch::GemvFusedParams { w: lw.w12, x: a, k: c, b: t, f, out: gact, ..Default::default() };
                launch::gemv_swiglu(g, s, dt, &p, m.tuning.gemv)?;
            } else {
                match ql {
                    Some(q) => self.quant_matmul(&[&q.w1, &q.w2], a, upgate, t)?,
                    None => self.matmul(lw.w12, a, upgate, t, 2 * f, c)?,
                }
                launch::swiglu(g, s, dt, &launch::SwigluParams { upgate, out: gact, f, t })?;
            }
            let next = m.w.layers.get(l + 1).map_or(m.w.ln_f, |n| n.ln_1);
            self.project_residual_norm(lin(lw.mlp_c_proj, |q| &q.mlp_c_proj), gact, next, t, f)?;
        }
        Ok(())
    }

    /// logits[0..n] = lm_head · a[row0..row0+n] (f32 `[n, V]`, n <= LOGIT_ROWS).
    fn lm_head(&self, row0: usize, n: usize) -> Result<()> {
        let cfg = &self.model.config;
        let (c, v, es) = (cfg.hidden_size, cfg.vocab_size, self.model.dt.size());
        let a = self.rows(self.plan.a, row0, n, c * es)?;
        let logits = self.rows(self.plan.logits, 0, n, v * 4)?;
        self.matmul(self.model.w.lm_head, a, logits, n, v, c)
    }

    /// One decode step for the id already in `ids[0]` at `pos0`: the captured graph, captured on
    /// first use; kernel by kernel if capture is off or failed. Leaves the logits in row 0.
    fn decode_step(&mut self, pos0: usize) -> Result<()> {
        if self.model.tuning.adec_grid == AdecGrid::Length && !self.no_graph {
            // One graph per length bucket of the decode attention's grid.
            let want = self.plan.split.bucket_splits(pos0 + 1);
            if self.graph.is_some() && self.graph_splits != want {
                let old = self.graph.take().expect("checked");
                self.other_graphs.push((self.graph_splits, old));
            }
            if self.graph.is_none() {
                if let Some(i) = self.other_graphs.iter().position(|(n, _)| *n == want) {
                    self.graph = Some(self.other_graphs.swap_remove(i).1);
                }
                self.graph_splits = want;
            }
        }
        if self.graph.is_none() && !self.no_graph {
            match self.capture(pos0) {
                Ok(gr) => self.graph = Some(gr),
                Err(e) => {
                    eprintln!("note: CUDA graph capture failed ({e}); decoding kernel by kernel");
                    self.no_graph = true;
                }
            }
        }
        match &self.graph {
            Some(gr) => gr.launch(&self.stream),
            None => {
                self.layers(1, pos0)?;
                self.lm_head(0, 1)
            }
        }
    }

    /// Record one decode step on the sequence's stream and instantiate it. The capture is ended
    /// with the raw driver call whatever happened, so the stream never stays in capture mode.
    fn capture(&self, pos0: usize) -> Result<DecodeGraph> {
        let s = &self.stream;
        let ctx = self.model.gpu.ctx.clone();
        if !set_current(&ctx) {
            return Err(Error::Backend("cannot make the CUDA context current".into()));
        }
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        // SAFETY: s is a live stream of the current context, not capturing.
        unsafe { result::stream::begin_capture(s.cu_stream(), mode) }.map_err(cuda_err("starting a graph capture"))?;
        let recorded = self.layers(1, pos0).and_then(|_| self.lm_head(0, 1));
        set_current(&ctx);
        // SAFETY: ends the capture begun above on the same stream.
        let ended = unsafe { result::stream::end_capture(s.cu_stream()) };
        let graph = ended.map_err(cuda_err("ending the graph capture"))?;
        if graph.is_null() {
            recorded?;
            return Err(Error::Backend("the decode capture recorded nothing".into()));
        }
        // SAFETY: graph is the live graph just captured; it is destroyed on every path below.
        let exec = match recorded.and_then(|_| {
            unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) }
                .map_err(cuda_err("instantiating the decode graph"))
        }) {
            Ok(e) => e,
            Err(e) => {
                let _ = unsafe { result::graph::destroy(graph) };
                return Err(e);
            }
        };
        let g = DecodeGraph { graph, exec, ctx };
        // SAFETY: exec is live; uploading ahead only moves setup cost out of the first replay.
        unsafe { result::graph::upload(g.exec, s.cu_stream()) }.map_err(cuda_err("uploading the decode graph"))?;
        Ok(g)
    }

    /// Validate, then run `tokens` through the model; logits of every row (downloaded) if
    /// `all_logits`, else only the last row's, left on the device in logits row 0.
    pub(super) fn run(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        model::check_forward(&self.model.config, tokens, self.len, self.plan.cap)?;
        let pos0 = self.len;
        self.model.gpu.bind()?;
        // On a device error `len` and `alpha` stay as they were (nothing is changed, as the trait
        // promises): a failed pass only wrote KV rows >= pos0, which the next pass overwrites, and
        // inv_freq is rewritten only by a prefill (pos0 == 0).
        self.run_validated(tokens, all_logits, pos0)
    }

    fn run_validated(&mut self, tokens: &[u32], all_logits: bool, pos0: usize) -> Result<Vec<f32>> {
        let (g, v) = (self.model.gpu.clone(), self.model.config.vocab_size);
        let prefill = pos0 == 0;
        let alpha = if prefill { model::ntk_alpha(&self.model.config, tokens.len()) } else { self.alpha };
        if prefill {
            self.write_inv_freq(alpha)?;
        }
        let mut out = Vec::new();
        let mut pos = pos0;
        let chunks: Vec<&[u32]> = tokens.chunks(self.plan.chunk).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let t = chunk.len();
            g.set_u32(&self.stream, self.r(self.plan.pos0).ptr, pos as u32)?;
            if t == 1 {
                g.set_u32(&self.stream, self.r(self.plan.ids).ptr, chunk[0])?;
                self.decode_step(pos)?;
                if all_logits {
                    out.extend(g.read_on::<f32>(&self.stream, self.r(self.plan.logits).ptr, v)?);
                }
            } else {
                g.write_on(&self.stream, self.r(self.plan.ids).ptr, chunk)?;
                self.layers(t, pos)?;
                if all_logits {
                    let mut r0 = 0;
                    while r0 < t {
                        let n = LOGIT_ROWS.min(t - r0);
                        self.lm_head(r0, n)?;
                        out.extend(g.read_on::<f32>(&self.stream, self.r(self.plan.logits).ptr, n * v)?);
                        r0 += n;
                    }
                } else if ci + 1 == chunks.len() {
                    self.lm_head(t - 1, 1)?;
                }
            }
            pos += t;
        }
        self.len = pos;
        self.alpha = alpha;
        Ok(out)
    }

    /// Put `context` into `ctx_ids` (uploading only what is new when it extends what is there).
    fn sync_context(&mut self, context: &[u32]) -> Result<()> {
        let have = &self.ctx_on_device;
        let start = if context.len() >= have.len() && context[..have.len()] == have[..] { have.len() } else { 0 };
        let dst = self.r(self.plan.ctx_ids).ptr.offset(start * 4);
        self.model.gpu.write_on(&self.stream, dst, &context[start..])?;
        self.ctx_on_device.truncate(start);
        self.ctx_on_device.extend_from_slice(&context[start..]);
        Ok(())
    }
}

impl Sequence for CudaSequence {
    fn config(&self) -> &QwenConfig {
        &self.model.config
    }
    fn len(&self) -> usize {
        self.len
    }
    fn capacity(&self) -> usize {
        self.plan.cap
    }
    fn reset(&mut self) {
        self.len = 0;
        self.alpha = 1.0;
    }
    fn ntk_alpha(&self) -> f64 {
        self.alpha
    }
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let (pos0, alpha) = (self.len, self.alpha);
        let out = self.run(tokens, all_logits)?;
        let v = self.model.config.vocab_size;
        let out = if all_logits {
            out
        } else {
            self.model.gpu.read_on::<f32>(&self.stream, self.r(self.plan.logits).ptr, v)?
        };
        if let Some(row) = out.chunks(v).position(|r| r.iter().any(|x| !x.is_finite())) {
            let at = if all_logits { pos0 + row } else { pos0 + tokens.len() - 1 };
            return Err(self.non_finite(pos0, alpha, at));
        }
        Ok(out)
    }
    /// The pass, then the whole sampling pipeline on the GPU: only the id comes back.
    fn forward_sample(&mut self, tokens: &[u32], params: &SamplingParams, u: f64, context: &[u32]) -> Result<Sampled> {
        if context.len() > self.plan.cap {
            return Ok(Sampled::Logits(self.forward(tokens, false)?));
        }
        // Parameters are checked before the pass, so bad parameters change nothing.
        params.validate()?;
        self.run(tokens, false)?;
        self.sync_context(context)?;
        let v = self.model.config.vocab_size;
        let u = if params.is_greedy() { 0.0 } else { u };
        let (g, s) = (&*self.model.gpu, &*self.stream);
        let pl = &self.plan;
        let logits = self.rows(pl.logits, 0, 1, v * 4)?;
        let p = launch::SampleParams {
            logits,
            v,
            vocab_len: v.min(VOCAB_LEN as usize),
            flags: self.r(pl.flags),
            ctx_ids: self.r(pl.ctx_ids),
            n_ctx: context.len(),
            probs: self.r(pl.probs),
            out_id: self.r(pl.out_id),
            ..Default::default()
        };
        let draw = launch::SampleDraw::for_params(self.model.tuning.sampler, params, v);
        let sampled = launch::sample(g, s, draw, &p, params, u);
        if let Err(e) = sampled {
            // The penalty flags must be all zero for the next call, whatever step failed.
            let _ = g.memset(s, self.r(pl.flags).ptr, 0, pl.flags.bytes);
            return Err(e);
        }
        let id = g.read_on::<u32>(s, self.r(pl.out_id).ptr, 1)?[0];
        // The sampler turned NaN into -inf in place: a finite pass never picks a non-finite logit.
        let best =
            if (id as usize) < v { g.read_on::<f32>(s, logits.ptr.offset(id as usize * 4), 1)?[0] } else { f32::NAN };
        if !best.is_finite() {
            let (pos0, alpha) = (self.len - tokens.len(), if self.len == tokens.len() { 1.0 } else { self.alpha });
            return Err(self.non_finite(pos0, alpha, self.len - 1));
        }
        Ok(Sampled::Id(id))
    }
}

impl CudaSequence {
    /// A pass from `pos0` produced a non-finite logit at position `at` (in f16 this is Qwen's
    /// activation outliers overflowing ±65504; tests/kernels/model.rs, tiny-outlier-f16): undo it
    /// (length and alpha back to before the call, as for any failed forward) and say so, instead of
    /// returning NaN/inf logits or an id sampled from them.
    fn non_finite(&mut self, pos0: usize, alpha: f64, at: usize) -> Error {
        self.len = pos0;
        self.alpha = alpha;
        let why = match self.model.dt {
            GpuDType::F16 => "the activations overflowed the f16 range (±65504); --dtype bf16 has the range of f32",
            GpuDType::BF16 => "NaN or inf in the weights or activations",
        };
        Error::Backend(format!("non-finite logits at position {at} in {:?}: {why}", self.model.dt))
    }
}

impl Drop for CudaSequence {
    fn drop(&mut self) {
        // Buffers are freed after the stream has finished with them.
        let _ = self.model.gpu.bind();
        let _ = self.stream.synchronize();
    }
}
