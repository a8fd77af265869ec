//! A Hugging Face Qwen v1 model directory as users download it, memory-mapped, zero copy.
//!
//! Files: `config.json`, `generation_config.json` (optional), `qwen.tiktoken`, and the weights as
//! `model.safetensors` or shards listed in `model.safetensors.index.json`. `pytorch_model.bin` is
//! refused with a message that says how to convert. Every header is validated before use: header
//! length inside the file, offsets in range and consistent with dtype x shape, known dtype. A bad
//! file is an `Error` naming the file and the tensor; never a panic.
use crate::config::{GenerationConfig, QwenConfig};
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    BF16,
    F16,
    F32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::BF16 | DType::F16 => 2,
            DType::F32 => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
        }
    }
}

/// One tensor: a typed view into a memory-mapped shard. Cloning is cheap (an `Arc`).
/// Invariant (checked when the checkpoint is opened): `offset + numel * dtype.size() <= mmap.len()`.
#[derive(Clone)]
pub struct TensorView {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// The shard file, for error messages.
    pub file: Arc<PathBuf>,
    mmap: Arc<Mmap>,
    offset: usize,
}

impl std::fmt::Debug for TensorView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {} in {}", self.name, self.shape, self.dtype.name(), self.file.display())
    }
}

impl TensorView {
    /// Built only by the checkpoint reader after validating the range.
    pub(crate) fn new(name: String, dtype: DType, shape: Vec<usize>, file: Arc<PathBuf>, mmap: Arc<Mmap>, offset: usize) -> Self {
        let v = TensorView { name, dtype, shape, file, mmap, offset };
        assert!(v.offset + v.byte_len() <= v.mmap.len(), "TensorView out of range (checked by the reader)");
        v
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap[self.offset..self.offset + self.byte_len()]
    }
    /// Convert elements `[start, start + out.len())` (flattened) to f32.
    pub fn read_f32(&self, start: usize, out: &mut [f32]) {
        let es = self.dtype.size();
        let b = &self.bytes()[start * es..(start + out.len()) * es];
        match self.dtype {
            DType::F32 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            DType::BF16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
            DType::F16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
        }
    }
    /// The whole tensor as f32 (use for small tensors: norms, biases).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.numel()];
        self.read_f32(0, &mut v);
        v
    }
    /// Error helper that names this tensor and its file.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::tensor(self.file.as_ref().clone(), self.name.clone(), msg)
    }
}

/// An opened model directory.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: QwenConfig,
    /// From `generation_config.json`, or the defaults when the file is absent.
    pub generation: GenerationConfig,
    /// Every tensor of every shard, by name.
    pub tensors: BTreeMap<String, TensorView>,
}

impl Checkpoint {
    /// Open `dir`: parse the configs, map every shard, validate every header. Does not check
    /// tensors against the config (that is `weights::Weights::from_checkpoint`).
    pub fn open(dir: &Path) -> Result<Self> {
        let _ = dir;
        todo!("checkpoint::Checkpoint::open")
    }

    /// The named tensor, or an error naming the tensor and the directory.
    pub fn tensor(&self, name: &str) -> Result<&TensorView> {
        self.tensors.get(name).ok_or_else(|| {
            Error::tensor(self.dir.clone(), name, "missing from the checkpoint")
        })
    }

    /// Path of the vocabulary file (`qwen.tiktoken`) in the directory.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("qwen.tiktoken")
    }
}
