//! `embedding_{bf16,f16}` (cuda/embedding.cu); oracle `cpu::embedding`.
use super::params::positional;
use super::{dim_u32, need_aligned, EmbeddingParams};
use crate::backend::cuda::device::{DevSlice, Gpu, GpuDType, Launch};
use crate::error::Result;
use cudarc::driver::CudaStream;

/// `out[t] = f32(wte[ids[t]])` for `t` tokens: wte `[V, C]` T, ids `[T]` u32, out `[T, C]` f32.
pub fn embedding(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    p: &EmbeddingParams<DevSlice, usize>,
    t: usize,
) -> Result<()> {
    let (v, c) = (p.v, p.c);
    p.wte.need(v * c * dt.size(), "embedding wte [V, C]")?;
    p.ids.need(t * 4, "embedding ids [T]")?;
    p.out.need(t * c * 4, "embedding out [T, C]")?;
    if c % 8 == 0 {
        // The kernel's vector path (C % 8 == 0): wte rows as uint4 (8 values of T).
        need_aligned(p.wte, 16, "embedding wte")?;
    }
    if t == 0 {
        return Ok(());
    }
    let name = format!("embedding_{}", dt.suffix());
    let cfg = Launch::new((dim_u32(t, "T")?, 1, 1), 256, 0);
    let args = positional::embedding(&p.kernel()?);
    // SAFETY: wte holds [V, C] T, ids [T] u32, out [T, C] f32 (checked above); the kernel reads
    // row ids[t] only when ids[t] < V and writes row t < T (one block per token).
    unsafe { gpu.launch(s, &name, cfg, &args) }
}
