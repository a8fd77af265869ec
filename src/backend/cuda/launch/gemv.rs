//! `gemv_{bf16,f16}` (cuda/gemv.cu): the decode matmul for B <= 8 rows; oracle `cpu::matmul`.
use super::dim_u32;
use crate::backend::cuda::device::{Arg, DevSlice, Gpu, GpuDType, Launch};
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;

/// The largest batch `gemv` takes (the kernel keeps B fp32 accumulators per lane in registers).
pub const GEMV_MAX_B: usize = 8;

/// Threads per block (8 warps) and rows of W per block (one per warp); must match GEMV_WARPS in
/// cuda/gemv.cu.
const GEMV_BLOCK: u32 = 256;
const GEMV_ROWS_PER_BLOCK: u64 = 8;

/// `y[b, n] = Σ_k w[n, k] · x[b, k]` (fp32 accumulation): w `[N, K]` T, x `[B, K]` T, y `[B, N]` f32,
/// B in 1..=`GEMV_MAX_B`. Any N, K (the kernel takes 16-byte loads when K % 8 == 0 and w, x are
/// 16-byte aligned, scalar loads otherwise).
#[allow(clippy::too_many_arguments)]
pub fn gemv(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    w: DevSlice,
    x: DevSlice,
    y: DevSlice,
    n: usize,
    k: usize,
    b: usize,
) -> Result<()> {
    if b == 0 || b > GEMV_MAX_B {
        return Err(Error::Backend(format!("internal: gemv batch B = {b}, supported 1..={GEMV_MAX_B}")));
    }
    let (n32, k32, b32) = (dim_u32(n, "gemv N")?, dim_u32(k, "gemv K")?, dim_u32(b, "gemv B")?);
    // u32 · u32 · small constant: no overflow in usize (64-bit).
    w.need(n * k * dt.size(), "gemv w [N, K]")?;
    x.need(b * k * dt.size(), "gemv x [B, K]")?;
    y.need(b * n * 4, "gemv y [B, N]")?;
    if n == 0 {
        return Ok(());
    }
    let grid = dim_u32(n.div_ceil(GEMV_ROWS_PER_BLOCK as usize), "gemv grid")?;
    debug_assert!(grid as u64 * GEMV_ROWS_PER_BLOCK >= n as u64);
    let name = format!("gemv_{}", dt.suffix());
    let cfg = Launch::new((grid, 1, 1), GEMV_BLOCK, 0);
    let args = [Arg::Ptr(w.ptr), Arg::Ptr(x.ptr), Arg::Ptr(y.ptr), Arg::U32(n32), Arg::U32(k32), Arg::U32(b32)];
    // SAFETY: w holds [N, K] T, x [B, K] T, y [B, N] f32 (checked above), 1 <= B <= 8; the kernel
    // (one warp per row n < N, exiting when n >= N) reads w row n at k < K, x rows b < B at k < K,
    // and writes y[b, n] for b < B only.
    unsafe { gpu.launch(s, &name, cfg, &args) }
}
