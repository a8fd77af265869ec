//! `gemv_{bf16,f16}` (cuda/gemv.cu): the decode matmul for B <= 8 rows; oracle `cpu::matmul`.
use super::dim_u32;
use crate::backend::cuda::device::{Arg, DevSlice, Gpu, GpuDType, Launch};
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;

/// The largest batch `gemv` takes (the kernel keeps B fp32 accumulators per lane in registers).
pub const GEMV_MAX_B: usize = 8;

/// Threads per block (8 warps); must match GEMV_WARPS in cuda/gemv.cu.
const GEMV_BLOCK: u32 = 256;
const GEMV_WARPS: u64 = 8;

/// How `gemv` runs (cuda/gemv.cu's header): `stages` 1 (load a pass, then multiply it) or 2 (the
/// next pass's loads in flight while this one is multiplied); `blocks_per_sm` caps the grid at that
/// many blocks per multiprocessor so each warp streams several rows (0: no cap, one row per warp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvConfig {
    pub stages: u32,
    pub blocks_per_sm: u32,
}

impl GemvConfig {
    /// The default, or `QWEN_GEMV=STAGES,BLOCKS_PER_SM` (read once; for tuning runs). A value that
    /// does not parse is said on stderr, once, and the default used: a tuning run must not measure
    /// the default while believing it measures something else.
    pub fn get() -> GemvConfig {
        static CFG: std::sync::OnceLock<GemvConfig> = std::sync::OnceLock::new();
        *CFG.get_or_init(|| match std::env::var("QWEN_GEMV") {
            Err(_) => GemvConfig::DEFAULT,
            Ok(v) => GemvConfig::parse(&v).unwrap_or_else(|| {
                let d = GemvConfig::DEFAULT;
                eprintln!(
                    "warning: QWEN_GEMV={v:?} is not STAGES,BLOCKS_PER_SM with STAGES 1 or 2; using {},{}",
                    d.stages, d.blocks_per_sm
                );
                d
            }),
        })
    }

    /// Chosen by the sweep in benches/kernels/gemv.rs (BENCHMARKS.md).
    pub const DEFAULT: GemvConfig = GemvConfig { stages: 2, blocks_per_sm: 8 };

    /// "STAGES,BLOCKS_PER_SM", e.g. "2,4"; None if malformed.
    pub fn parse(s: &str) -> Option<GemvConfig> {
        let (a, b) = s.split_once(',')?;
        let stages = a.trim().parse().ok().filter(|s| (1..=2).contains(s))?;
        Some(GemvConfig { stages, blocks_per_sm: b.trim().parse().ok()? })
    }

    /// Blocks for N rows on a device with `sms` multiprocessors.
    fn grid(self, n: usize, sms: u32) -> usize {
        let one_row_per_warp = n.div_ceil(GEMV_WARPS as usize);
        match self.blocks_per_sm {
            0 => one_row_per_warp,
            b => one_row_per_warp.min(b as usize * sms as usize).max(1),
        }
    }
}

/// `y[b, n] = Σ_k w[n, k] · x[b, k]` (fp32 accumulation): w `[N, K]` T, x `[B, K]` T, y `[B, N]` f32,
/// B in 1..=`GEMV_MAX_B`. Any N, K (the kernel takes 16-byte loads when K % 8 == 0 and w, x are
/// 16-byte aligned, scalar loads otherwise). Runs with `GemvConfig::get()`.
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
    gemv_with(gpu, s, dt, w, x, y, n, k, b, GemvConfig::get())
}

/// `gemv` with an explicit configuration (tests and the tuning bench).
#[allow(clippy::too_many_arguments)]
pub fn gemv_with(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    w: DevSlice,
    x: DevSlice,
    y: DevSlice,
    n: usize,
    k: usize,
    b: usize,
    cfg: GemvConfig,
) -> Result<()> {
    if b == 0 || b > GEMV_MAX_B {
        return Err(Error::Backend(format!("internal: gemv batch B = {b}, supported 1..={GEMV_MAX_B}")));
    }
    if !(1..=2).contains(&cfg.stages) {
        return Err(Error::Backend(format!("internal: gemv stages = {}, supported 1 or 2", cfg.stages)));
    }
    let (n32, k32, b32) = (dim_u32(n, "gemv N")?, dim_u32(k, "gemv K")?, dim_u32(b, "gemv B")?);
    // u32 · u32 · small constant: no overflow in usize (64-bit).
    w.need(n * k * dt.size(), "gemv w [N, K]")?;
    x.need(b * k * dt.size(), "gemv x [B, K]")?;
    y.need(b * n * 4, "gemv y [B, N]")?;
    if n == 0 {
        return Ok(());
    }
    let grid = cfg.grid(n, gpu.sms);
    // The kernel counts one warp's rows x passes in u32 (at most ceil(N / warps) x ceil(K / 256)).
    let warps = grid as u64 * GEMV_WARPS;
    if (n as u64).div_ceil(warps) * (k as u64).div_ceil(256).max(1) > u32::MAX as u64 {
        return Err(Error::Backend(format!("internal: gemv N {n} x K {k} is too large for {grid} blocks")));
    }
    let grid = dim_u32(grid, "gemv grid")?;
    let name = format!("gemv_{}", dt.suffix());
    let launch = Launch::new((grid, 1, 1), GEMV_BLOCK, 0);
    let args = [
        Arg::Ptr(w.ptr),
        Arg::Ptr(x.ptr),
        Arg::Ptr(y.ptr),
        Arg::U32(n32),
        Arg::U32(k32),
        Arg::U32(b32),
        Arg::U32(cfg.stages),
    ];
    // SAFETY: w holds [N, K] T, x [B, K] T, y [B, N] f32 (checked above), 1 <= B <= 8; the kernel
    // (warp g takes rows g, g + warps, ... < N) reads w rows n < N at k < K (loads past a row's end
    // are clamped into the row), x rows b < B at k < K, and writes y[b, n] for b < B, n < N only.
    unsafe { gpu.launch(s, &name, launch, &args) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_config_parses_and_sizes_the_grid() {
        assert_eq!(GemvConfig::parse("1,0"), Some(GemvConfig { stages: 1, blocks_per_sm: 0 }));
        assert_eq!(GemvConfig::parse(" 2 , 4"), Some(GemvConfig { stages: 2, blocks_per_sm: 4 }));
        assert_eq!(GemvConfig::parse("3,4"), None);
        assert_eq!(GemvConfig::parse("2"), None);
        assert_eq!(GemvConfig::parse("x,1"), None);
        let one_row = GemvConfig { stages: 2, blocks_per_sm: 0 };
        assert_eq!(one_row.grid(4096, 132), 512);
        assert_eq!(one_row.grid(1, 132), 1);
        let capped = GemvConfig { stages: 2, blocks_per_sm: 4 };
        assert_eq!(capped.grid(12288, 132), 528);
        assert_eq!(capped.grid(4096, 132), 512);
        assert_eq!(capped.grid(7, 132), 1);
    }
}
