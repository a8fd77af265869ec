//! `embedding_{bf16,f16}` (cuda/embedding.cu); oracle `cpu::embedding`.
use super::{dim_u32, need_aligned};
use crate::backend::cuda::device::{Arg, DevSlice, Gpu, GpuDType, Launch};
use crate::error::Result;
use cudarc::driver::CudaStream;

/// `out[t] = f32(wte[ids[t]])`: wte `[V, C]` T, ids `[T]` u32, out `[T, C]` f32.
#[allow(clippy::too_many_arguments)]
pub fn embedding(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    wte: DevSlice,
    ids: DevSlice,
    out: DevSlice,
    t: usize,
    v: usize,
    c: usize,
) -> Result<()> {
    wte.need(v * c * dt.size(), "embedding wte [V, C]")?;
    ids.need(t * 4, "embedding ids [T]")?;
    out.need(t * c * 4, "embedding out [T, C]")?;
    if c % 8 == 0 {
        // The kernel's vector path (C % 8 == 0): wte rows as uint4 (8 values of T).
        need_aligned(wte, 16, "embedding wte")?;
    }
    if t == 0 {
        return Ok(());
    }
    let name = format!("embedding_{}", dt.suffix());
    let cfg = Launch::new((dim_u32(t, "T")?, 1, 1), 256, 0);
    let args = [
        Arg::Ptr(wte.ptr),
        Arg::Ptr(ids.ptr),
        Arg::Ptr(out.ptr),
        Arg::U32(dim_u32(v, "V")?),
        Arg::U32(dim_u32(c, "C")?),
    ];
    // SAFETY: wte holds [V, C] T, ids [T] u32, out [T, C] f32 (checked above); the kernel reads
    // row ids[t] only when ids[t] < V and writes row t < T (one block per token).
    unsafe { gpu.launch(s, &name, cfg, &args) }
}
