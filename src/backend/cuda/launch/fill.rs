//! `fill_uniform_{bf16,f16}` (cuda/fill.cu); oracle `synth::value` (the safetensors generator).
use crate::backend::cuda::device::{Arg, DevSlice, Gpu, GpuDType, Launch};
use crate::error::Result;
use cudarc::driver::CudaStream;

/// `out[i] = T(offset + scale · u(key, i))` for i < n: the values `synth_model` writes.
#[allow(clippy::too_many_arguments)]
pub fn fill_uniform(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    out: DevSlice,
    n: usize,
    key: u64,
    offset: f32,
    scale: f32,
) -> Result<()> {
    out.need(n * dt.size(), "fill_uniform out [n]")?;
    if n == 0 {
        return Ok(());
    }
    let blocks = n.div_ceil(256).min(65535 * 8) as u32;
    let name = format!("fill_uniform_{}", dt.suffix());
    let args = [Arg::Ptr(out.ptr), Arg::U64(n as u64), Arg::U64(key), Arg::F32(offset), Arg::F32(scale)];
    // SAFETY: out holds n values of T (checked); the grid-stride loop writes indices < n only.
    unsafe { gpu.launch(s, &name, Launch::new((blocks, 1, 1), 256, 0), &args) }
}
