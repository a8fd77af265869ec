//! Place in the flow: model → **backend** → sampler; the implementations of `model::Model`.
//! Backends: `cpu` (the f32 reference, the oracle for every kernel) and `cuda` (the product).
//! `load_model` picks one from `--backend` and returns it behind `model::Model`; `bench` measures one.
pub mod bench;
pub mod cpu;
pub mod cuda;
pub mod kernels;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::quant::QuantFormat;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Cpu,
    Cuda,
    /// The GPU when one is usable, else the CPU (with a one-line note on stderr).
    Auto,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "cuda" => Ok(BackendKind::Cuda),
            "auto" => Ok(BackendKind::Auto),
            _ => Err(Error::invalid(format!("--backend must be cpu, cuda or auto, got `{s}`"))),
        }
    }
}

/// Compute dtype requested with `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDType {
    Auto,
    F32,
    BF16,
    F16,
}

impl std::str::FromStr for ComputeDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(ComputeDType::Auto),
            "f32" | "fp32" | "float32" => Ok(ComputeDType::F32),
            "bf16" | "bfloat16" => Ok(ComputeDType::BF16),
            "f16" | "fp16" | "float16" => Ok(ComputeDType::F16),
            _ => Err(Error::invalid(format!("--dtype must be auto, f32, bf16 or f16, got `{s}`"))),
        }
    }
}

/// How to load a model (`engine::Engine::open`, `load_model`).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub backend: BackendKind,
    pub dtype: ComputeDType,
    /// CPU worker threads; 0 = all cores.
    pub threads: usize,
    /// KV cache length of every session, in tokens; None or 0: the model's limit
    /// (`QwenConfig::resolve_max_seq_len`). Resolved by `engine::Engine::open`.
    pub max_seq_len: Option<usize>,
    /// Report on stderr while loading: the progress bar, the built-in tiny model, a model directory
    /// without `qwen.tiktoken` (the backend's own fallback notes are printed either way).
    pub progress: bool,
    /// Quantize a float checkpoint's linears at load (`--quant nf4|nf4-dq|int8`; on the CUDA backend
    /// by cuda/gemv_quant.cu, verified on a GPU in H200 run 5).
    /// None: the checkpoint as stored (a quantized checkpoint stays quantized).
    pub quant: Option<QuantFormat>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            backend: BackendKind::Auto,
            dtype: ComputeDType::Auto,
            threads: 0,
            max_seq_len: None,
            progress: false,
            quant: None,
        }
    }
}

/// Whether `kind` runs on the GPU here: `Cuda` requires it (the error says why not), `Auto`
/// takes it when usable and otherwise prints a one-line note and picks the CPU.
pub fn use_cuda(kind: BackendKind) -> Result<bool> {
    Ok(match kind {
        BackendKind::Cpu => false,
        BackendKind::Cuda => {
            cuda::probe()?;
            true
        }
        BackendKind::Auto => match cuda::probe() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("note: {e}; using the CPU backend");
                false
            }
        },
    })
}

/// Load the weights of `ck` onto the chosen backend.
pub fn load_model(ck: &Checkpoint, opts: &LoadOptions) -> Result<Arc<dyn Model>> {
    // Quantized weights (a quantized checkpoint or --quant) run on either backend: the CUDA kernels
    // for them (cuda/gemv_quant.cu) passed the GPU suite in H200 run 5.
    if use_cuda(opts.backend)? {
        return cuda::load(ck, opts);
    }
    match opts.dtype {
        ComputeDType::Auto | ComputeDType::F32 => {}
        d => {
            return Err(Error::invalid(format!(
                "--dtype {d:?}: the CPU backend computes in f32 (bf16/f16 weights are converted on the fly); use --dtype auto or f32"
            )))
        }
    }
    Ok(Arc::new(cpu::CpuModel::load(ck, opts)?))
}
