//! `rmsnorm_{bf16,f16}` and `add_rmsnorm_{bf16,f16}` (cuda/rmsnorm.cu); oracles `cpu::rmsnorm`,
//! `cpu::add` + `cpu::rmsnorm`.
use super::params::positional;
use super::{dim_u32, f32_bytes, need_aligned, RmsnormParams};
use crate::backend::cuda::device::{DevSlice, Gpu, GpuDType, Launch};
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;

/// Threads per block of both kernels (one block per row, grid (T)).
pub const RMSNORM_BLOCK: u32 = 256;

/// Grid and block of `rmsnorm` / `add_rmsnorm` for `t` rows: one block of 256 threads per row.
pub fn rmsnorm_launch(t: usize) -> Result<Launch> {
    Ok(Launch::new((dim_u32(t, "T")?, 1, 1), RMSNORM_BLOCK, 0))
}

fn check_c(c: usize, what: &str) -> Result<u32> {
    if c == 0 {
        return Err(Error::Backend(format!("internal: {what} with C = 0")));
    }
    dim_u32(c, "C")
}

/// `out = T((x · 1/sqrt(mean(x²) + eps)) · w)` for `t` rows: x `[T, C]` f32, w `[C]` T, out `[T, C]` T
/// (`p.y` unused).
pub fn rmsnorm(gpu: &Gpu, s: &CudaStream, dt: GpuDType, p: &RmsnormParams<DevSlice, usize>, t: usize) -> Result<()> {
    let c = p.c;
    check_c(c, "rmsnorm")?;
    p.x.need(f32_bytes(t * c), "rmsnorm x [T, C]")?;
    p.w.need(c * dt.size(), "rmsnorm w [C]")?;
    p.out.need(t * c * dt.size(), "rmsnorm out [T, C]")?;
    if c % 4 == 0 {
        // The kernel's vector path (C % 4 == 0): x as float4, w and out as 4 values of T.
        need_aligned(p.x, 16, "rmsnorm x")?;
        need_aligned(p.w, 8, "rmsnorm w")?;
        need_aligned(p.out, 8, "rmsnorm out")?;
    }
    if t == 0 {
        return Ok(());
    }
    let name = format!("rmsnorm_{}", dt.suffix());
    let cfg = rmsnorm_launch(t)?;
    let args = positional::rmsnorm(&p.kernel()?);
    // SAFETY: x holds [T, C] f32, w [C] T, out [T, C] T (checked above); block b < T reads row b
    // of x and all of w and writes row b of out, nothing else.
    unsafe { gpu.launch(s, &name, cfg, &args) }
}

/// `x += y` (stored back, f32), then `out = rmsnorm(x)` for `t` rows: x, y `[T, C]` f32, w `[C]` T,
/// out `[T, C]` T.
pub fn add_rmsnorm(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    p: &RmsnormParams<DevSlice, usize>,
    t: usize,
) -> Result<()> {
    let c = p.c;
    check_c(c, "add_rmsnorm")?;
    p.x.need(f32_bytes(t * c), "add_rmsnorm x [T, C]")?;
    p.y.need(f32_bytes(t * c), "add_rmsnorm y [T, C]")?;
    p.w.need(c * dt.size(), "add_rmsnorm w [C]")?;
    p.out.need(t * c * dt.size(), "add_rmsnorm out [T, C]")?;
    if c % 4 == 0 {
        // The kernel's vector path (C % 4 == 0): x, y as float4, w and out as 4 values of T.
        need_aligned(p.x, 16, "add_rmsnorm x")?;
        need_aligned(p.y, 16, "add_rmsnorm y")?;
        need_aligned(p.w, 8, "add_rmsnorm w")?;
        need_aligned(p.out, 8, "add_rmsnorm out")?;
    }
    if t == 0 {
        return Ok(());
    }
    let name = format!("add_rmsnorm_{}", dt.suffix());
    let cfg = rmsnorm_launch(t)?;
    let args = positional::add_rmsnorm(&p.kernel()?);
    // SAFETY: x, y hold [T, C] f32, w [C] T, out [T, C] T (checked above); block b < T reads and
    // writes row b of x, reads row b of y and all of w, writes row b of out.
    unsafe { gpu.launch(s, &name, cfg, &args) }
}
