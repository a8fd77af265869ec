//! Quantized linear weights (spec §7): NF4 and Int8 exactly as bitsandbytes computes them, and the
//! official GPTQ checkpoints (AutoGPTQ packing). In the data flow after `weights`: a
//! `QuantMatrix` is either quantized at load from a float `TensorView` (streaming, one tensor at a
//! time) or read from a quantized checkpoint (`checkpoint::QuantWeights`), and the CPU computes
//! with exactly its dequantized weights (code × scale in f32) straight from the packed bytes.
//!
//! Which tensors: every `attn.c_attn`, `attn.c_proj`, `mlp.w1`, `mlp.w2`, `mlp.c_proj` weight;
//! `wte`, `lm_head`, biases and norms stay in the model dtype (as transformers + bitsandbytes and
//! AutoGPTQ do).
//!
//! Files in data-flow order: `nf4` (+ `blockwise8`, its double quantization), `int8`, `gptq` (the
//! formats) → `matrix` (`QuantMatrix`: quantize, `decode_rows`) → `simd` (kernel dispatch, the
//! dot of decoded rows) → `gemv` (fused dequant-dot kernels over packed rows) → `matmul`
//! (`QuantMatrix::matmul`, `Linear`) → `checkpoint` (the quantized-weights view of a checkpoint);
//! `bnb` (one linear as bitsandbytes serializes it) → `writer` (`quantize_checkpoint`: a float
//! checkpoint written quantized, `qwen-run quantize`).
pub mod blockwise8;
pub mod bnb;
pub mod checkpoint;
pub mod gemv;
pub mod gptq;
pub mod int8;
pub mod matmul;
pub mod matrix;
pub mod nf4;
pub mod simd;
pub mod writer;

pub use checkpoint::{QuantLayer, QuantWeights};
pub use matmul::Linear;
pub use matrix::{Bytes, QuantData, QuantMatrix};
pub use simd::Kernel;
pub use writer::{quantize_checkpoint, QuantizeOptions, QuantizeSummary};

/// A quantization format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantFormat {
    /// bitsandbytes NF4, blocks of 64; `double_quant`: the absmax themselves 8-bit quantized
    /// (`bnb_4bit_use_double_quant`, `--quant nf4-dq`).
    Nf4 { double_quant: bool },
    /// bitsandbytes Int8 weights, one scale per output row (`load_in_8bit`).
    Int8,
    /// AutoGPTQ: `bits` 4 or 8, `group` inputs per scale (128 for Qwen's checkpoints).
    Gptq { bits: u32, group: usize },
}

impl QuantFormat {
    /// The `--quant` spelling: `nf4`, `nf4-dq`, `int8`, `gptq-int4`, `gptq-int8`.
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Nf4 { double_quant: false } => "nf4",
            QuantFormat::Nf4 { double_quant: true } => "nf4-dq",
            QuantFormat::Int8 => "int8",
            QuantFormat::Gptq { bits: 8, .. } => "gptq-int8",
            QuantFormat::Gptq { .. } => "gptq-int4",
        }
    }

    /// Parse a `--quant` value that asks to quantize at load: `nf4`, `nf4-dq` or `int8`
    /// (`none` → None).
    pub fn parse_load(s: &str) -> crate::Result<Option<QuantFormat>> {
        match s {
            "none" => Ok(None),
            "nf4" => Ok(Some(QuantFormat::Nf4 { double_quant: false })),
            "nf4-dq" => Ok(Some(QuantFormat::Nf4 { double_quant: true })),
            "int8" => Ok(Some(QuantFormat::Int8)),
            _ => Err(crate::Error::invalid(format!("--quant {s}: expected none, nf4, nf4-dq or int8"))),
        }
    }
}
