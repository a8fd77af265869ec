//! `swiglu_{bf16,f16}` (cuda/swiglu.cu); oracle `cpu::swiglu`.
use super::params::positional;
use super::{dim_u32, f32_bytes, need_aligned, SwigluParams};
use crate::backend::cuda::device::{DevSlice, Gpu, GpuDType, Launch};
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;

/// Threads per block (the kernel's `SWIGLU_BLOCK`).
pub const SWIGLU_BLOCK: u32 = 256;

/// Grid and block of `swiglu` for `t` rows of width `f`, as the kernel expects: a row is
/// U = F/4 units of 4 values when F % 4 == 0, else F units of 1; B = ceil(U / 256) blocks per row;
/// grid (T·B) 1-D (block b: row b / B), block 256.
pub fn swiglu_launch(t: usize, f: usize) -> Result<Launch> {
    let units = if f % 4 == 0 { f / 4 } else { f };
    let per_row = units.div_ceil(SWIGLU_BLOCK as usize);
    let blocks = t.checked_mul(per_row).filter(|&b| b <= i32::MAX as usize).ok_or_else(|| {
        Error::Backend(format!("internal: swiglu T = {t}, F = {f} needs more blocks than a 1-D grid holds"))
    })?;
    Ok(Launch::new((dim_u32(blocks, "swiglu blocks")?, 1, 1), SWIGLU_BLOCK, 0))
}

/// `out[t, f] = T(up · gate / (1 + exp(-gate)))` with upgate `[T, 2F]` f32 (row = up ‖ gate),
/// out `[T, F]` T.
pub fn swiglu(gpu: &Gpu, s: &CudaStream, dt: GpuDType, p: &SwigluParams<DevSlice, usize>) -> Result<()> {
    let (t, f) = (p.t, p.f);
    if f == 0 {
        return Err(Error::Backend("internal: swiglu with F = 0".into()));
    }
    dim_u32(2 * f, "2F")?;
    p.upgate.need(f32_bytes(t * 2 * f), "swiglu upgate [T, 2F]")?;
    p.out.need(t * f * dt.size(), "swiglu out [T, F]")?;
    if f % 4 == 0 {
        // The kernel's vector path (F % 4 == 0): upgate as float4, out as 4 values of T.
        need_aligned(p.upgate, 16, "swiglu upgate")?;
        need_aligned(p.out, 8, "swiglu out")?;
    }
    let args = positional::swiglu(&p.kernel()?);
    if t == 0 {
        return Ok(());
    }
    let name = format!("swiglu_{}", dt.suffix());
    let cfg = swiglu_launch(t, f)?;
    // SAFETY: upgate holds [T, 2F] f32 and out [T, F] T (checked above); the kernel maps block b to
    // row b / B < T (and also checks row < T) and touches only columns < F of that row.
    unsafe { gpu.launch(s, &name, cfg, &args) }
}
