//! `fill_uniform_{bf16,f16}` (cuda/fill.cu); oracle `synth::value` (the safetensors generator).
use super::params::positional;
use super::FillParams;
use crate::backend::cuda::device::{DevSlice, Gpu, GpuDType, Launch};
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;

/// `out[i] = T(offset + scale · u(key, i))` for i < n: the values `synth_model` writes.
pub fn fill_uniform(gpu: &Gpu, s: &CudaStream, dt: GpuDType, p: &FillParams<DevSlice>) -> Result<()> {
    let n = usize::try_from(p.n).map_err(|_| Error::Backend(format!("internal: fill_uniform n = {}", p.n)))?;
    p.out.need(n.saturating_mul(dt.size()), "fill_uniform out [n]")?;
    if n == 0 {
        return Ok(());
    }
    let blocks = n.div_ceil(256).min(65535 * 8) as u32;
    let name = format!("fill_uniform_{}", dt.suffix());
    let args = positional::fill_uniform(&p.kernel()?);
    // SAFETY: out holds n values of T (checked); the grid-stride loop writes indices < n only.
    unsafe { gpu.launch(s, &name, Launch::new((blocks, 1, 1), 256, 0), &args) }
}
