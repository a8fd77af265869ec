//! `gemv_{bf16,f16}` (cuda/gemv.cu, run 4's verified kernel) and `gemv_plain_{bf16,f16}` (cuda/gemv_fused.cu, the post-run-4 stream): the decode matmul for B <= 8 rows; oracle `cpu::matmul`.
//! `gemv_swiglu_*`, `gemv_qkv_rope_*` and `gemv_residual_rmsnorm_*` (gemv_fused.cu): the same matmul with swiglu.cu /
//! rotary.cu / rmsnorm.cu's add_rmsnorm fused into its epilogue (oracle: `cpu::matmul`, then
//! `cpu::swiglu` / `cpu::rope` + `model::logn_scale` / `cpu::add` + `cpu::rmsnorm`).
use super::params::positional;
use super::rotary::check_rope_operands;
use super::{dim_u32, f32_bytes, GemvFusedParams, GemvParams, RopeParams};
use crate::backend::cuda::device::{DevSlice, Gpu, GpuDType, Launch};
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;

/// The largest batch `gemv` takes (the kernel keeps B fp32 accumulators per lane in registers).
pub const GEMV_MAX_B: usize = 8;

/// Threads per block (8 warps); must match GEMV_WARPS in cuda/gemv.cu.
const GEMV_BLOCK: u32 = 256;
const GEMV_WARPS: u64 = 8;

/// Which GEMV kernel the plain matmul runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvKernel {
    /// `gemv_*` (cuda/gemv.cu): run 4's verified kernel, the default.
    Run4,
    /// `gemv_plain_*` (cuda/gemv_fused.cu): the post-run-4 stream the fused epilogues use (the same
    /// sums; two passes in flight before the PDL wait; the optional L2 prefetch). Not yet verified on
    /// a GPU; on with QWEN_FUSE=1 or a QWEN_GEMV prefetch.
    Stream,
}

/// How `gemv` runs (cuda/gemv.cu's header): `kernel`; `stages` 1 (load a pass, then multiply it) or
/// 2 (the next pass's loads in flight while this one is multiplied); `blocks_per_sm` caps the grid at
/// that many blocks per multiprocessor so each warp streams several rows (0: no cap, one row per
/// warp); `prefetch_mb` (an experiment, 0 = off; `GemvKernel::Stream` only): up to that many MB of the
/// grid's first items are asked into L2 before the kernel waits for the previous one (PDL), to keep
/// DRAM busy across the boundary. The fused launchers always run the stream (gemv_fused.cu) and
/// ignore `kernel`. Part of `Tuning` (QWEN_GEMV), passed down by the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvConfig {
    pub kernel: GemvKernel,
    pub stages: u32,
    pub blocks_per_sm: u32,
    pub prefetch_mb: u32,
}

impl GemvConfig {
    /// Chosen by the sweep in benches/kernels/gemv.rs (BENCHMARKS.md).
    /// Run 4 verified this one (H200, 2026-11-26).
    pub const DEFAULT: GemvConfig = GemvConfig::new(2, 8);

    /// Run 4's kernel with `stages` and `blocks_per_sm`, no prefetch.
    pub const fn new(stages: u32, blocks_per_sm: u32) -> GemvConfig {
        GemvConfig { kernel: GemvKernel::Run4, stages, blocks_per_sm, prefetch_mb: 0 }
    }

    /// The stream kernel (`GemvKernel::Stream`) with `stages`, `blocks_per_sm` and `prefetch_mb`.
    pub const fn stream(stages: u32, blocks_per_sm: u32, prefetch_mb: u32) -> GemvConfig {
        GemvConfig { kernel: GemvKernel::Stream, stages, blocks_per_sm, prefetch_mb }
    }

    /// "STAGES,BLOCKS_PER_SM" or "STAGES,BLOCKS_PER_SM,PREFETCH_MB", e.g. "2,4" or "2,8,24"; None if
    /// malformed. A PREFETCH_MB > 0 needs (and selects) the stream kernel.
    pub fn parse(s: &str) -> Option<GemvConfig> {
        let mut it = s.split(',').map(str::trim);
        let stages = it.next()?.parse().ok().filter(|s| (1..=2).contains(s))?;
        let blocks_per_sm = it.next()?.parse().ok()?;
        let prefetch_mb = match it.next() {
            None => 0,
            Some(p) => p.parse().ok()?,
        };
        if it.next().is_some() {
            return None;
        }
        let kernel = if prefetch_mb > 0 { GemvKernel::Stream } else { GemvKernel::Run4 };
        Some(GemvConfig { kernel, stages, blocks_per_sm, prefetch_mb })
    }

    /// The kernel's `cfg` word for a grid of `grid` blocks over items of `item_bytes` bytes of W:
    /// bits 0-7 the stage count, bits 8-31 how many leading warps prefetch their first item.
    fn word(self, grid: usize, item_bytes: usize) -> u32 {
        let warps = grid * GEMV_WARPS as usize;
        let prefetch = if self.prefetch_mb == 0 || item_bytes == 0 {
            0
        } else {
            ((self.prefetch_mb as usize) << 20).div_ceil(item_bytes).min(warps).min((1 << 24) - 1)
        };
        self.stages | ((prefetch as u32) << 8)
    }

    /// Blocks for `n` items (rows, or row pairs of a fused epilogue) on a device with `sms`
    /// multiprocessors.
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
/// 16-byte aligned, scalar loads otherwise). Runs with `GemvConfig::DEFAULT` (tests; the executor
/// passes its `Tuning`'s configuration to `gemv_with`); `p.stages` is the launcher's.
pub fn gemv(gpu: &Gpu, s: &CudaStream, dt: GpuDType, p: &GemvParams<DevSlice, usize>) -> Result<()> {
    gemv_with(gpu, s, dt, p, GemvConfig::DEFAULT)
}

/// `gemv` with an explicit configuration (tests and the tuning bench): run 4's `gemv` (positional)
/// or, for `GemvKernel::Stream`, `gemv_plain` (gemv_fused.cu, by value).
pub fn gemv_with(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    p: &GemvParams<DevSlice, usize>,
    cfg: GemvConfig,
) -> Result<()> {
    if cfg.kernel == GemvKernel::Run4 && cfg.prefetch_mb > 0 {
        return Err(Error::Backend(
            "internal: the GEMV L2 prefetch needs GemvKernel::Stream (run 4's gemv has none)".into(),
        ));
    }
    let (n, k, b) = (p.n, p.k, p.b);
    let Some((launch, word)) = gemv_grid(gpu, "gemv", dt, p.w, p.x, (n, 1, k, b), cfg)? else { return Ok(()) };
    p.y.need(f32_bytes(b * n), "gemv y [B, N]")?;
    // SAFETY (both kernels): w holds [N, K] T, x [B, K] T (gemv_grid), y [B, N] f32 (above), 1 <= B
    // <= 8; the kernel (warp g takes rows g, g + warps, ... < N) reads w rows n < N at k < K (loads
    // past a row's end are clamped into the row), x rows b < B at k < K, and writes y[b, n] for
    // b < B, n < N only.
    match cfg.kernel {
        // Run 4's kernel takes the stage count where the stream takes its cfg word (stages | prefetch).
        GemvKernel::Run4 => {
            let kp = GemvParams { stages: cfg.stages as usize, ..*p }.kernel()?;
            let name = format!("gemv_{}", dt.suffix());
            // SAFETY: as above.
            unsafe { gpu.launch(s, &name, launch, &positional::gemv(&kp)) }
        }
        GemvKernel::Stream => {
            let fp = GemvFusedParams { w: p.w, x: p.x, k, b, cfg: word as usize, y: p.y, n, ..Default::default() };
            let name = format!("gemv_plain_{}", dt.suffix());
            // SAFETY: as above.
            unsafe { gpu.launch_params(s, &name, launch, &fp.kernel()?) }
        }
    }
}

/// The matmul with SwiGLU fused into its epilogue: `out[b, f] = T(up · silu(gate))` with
/// up = `w[f] · x[b]`, gate = `w[F + f] · x[b]` (f32 sums, exactly `gemv` + `swiglu`'s bits):
/// w `[2F, K]` T (the executor's w1 ‖ w2), x `[B, K]` T, out `[B, F]` T, B in 1..=`GEMV_MAX_B`
/// (fields w, x, k, b, f, out of `p`); `cfg` as `gemv_with` (its `kernel` is ignored: the fused
/// kernels are the stream's).
pub fn gemv_swiglu(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    p: &GemvFusedParams<DevSlice, usize>,
    cfg: GemvConfig,
) -> Result<()> {
    let (f, k, b) = (p.f, p.k, p.b);
    let Some((launch, word)) = gemv_grid(gpu, "gemv_swiglu", dt, p.w, p.x, (f, 2, k, b), cfg)? else { return Ok(()) };
    p.out.need(b * f * dt.size(), "gemv_swiglu out [B, F]")?;
    let kp = GemvFusedParams { cfg: word as usize, ..*p }.kernel()?;
    let name = format!("gemv_swiglu_{}", dt.suffix());
    // SAFETY: w holds [2F, K] T, x [B, K] T (gemv_grid), out [B, F] T (above), 1 <= B <= 8; warp g
    // takes items f = g, g + warps, ... < F, reads w rows f and F + f (< 2F) at k < K (clamped into
    // the row) and x rows b < B, and writes out[b, f] for b < B, f < F only.
    unsafe { gpu.launch_params(s, &name, launch, &kp) }
}

/// The QKV matmul with `qkv_rope_append` fused into its epilogue, for one token (decode, `p.b` = 1):
/// bias add, rotate-half RoPE at p = `*pos0`, logN on q, q → `q` `[1, P]` T, k / v → row p of
/// `k_cache` / `v_cache` `[cap, P]` T (nothing at all when p >= cap). w `[3P, K]` T (c_attn), x `[1, K]`
/// T, bias `[3P]` T, inv_freq `[D/2]` f32, pos0 `[1]` u32 (device scalar); P = H·D, D even, <= 256.
/// Stores exactly what `gemv` + `qkv_rope_append` store; `cfg` as `gemv_with`.
pub fn gemv_qkv_rope(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    p: &GemvFusedParams<DevSlice, usize>,
    cfg: GemvConfig,
) -> Result<()> {
    need_one_row("gemv_qkv_rope", p.b)?;
    let rope = RopeParams {
        qkv: DevSlice::default(),
        bias: p.bias,
        inv_freq: p.inv_freq,
        pos0: p.pos0,
        q: p.q,
        k_cache: p.k_cache,
        v_cache: p.v_cache,
        t: 1,
        h: p.h,
        d: p.d,
        cap: p.cap,
        s: p.s,
        use_logn: p.use_logn,
    };
    let width = check_rope_operands("gemv_qkv_rope", dt, &rope)?;
    // Items: the 3P/2 pairs (x[j], x[j + D/2]) of q, k and v.
    let Some((launch, word)) = gemv_grid(gpu, "gemv_qkv_rope", dt, p.w, p.x, (3 * width / 2, 2, p.k, 1), cfg)? else {
        return Ok(());
    };
    let kp = GemvFusedParams { cfg: word as usize, ..*p }.kernel()?;
    let name = format!("gemv_qkv_rope_{}", dt.suffix());
    // SAFETY: w holds [3P, K] T and x [1, K] T (gemv_grid), bias [3P] T, inv_freq [D/2] f32, pos0 one
    // u32, q [1, P] T, both caches [cap, P] T (above). Warp g takes pairs i = g, g + warps, ... < 3P/2,
    // reads w rows (i / (D/2))·D + i % (D/2) and that + D/2 (< 3P) at k < K, bias at those rows,
    // inv_freq[i % (D/2)] and pos0; it writes only when p = *pos0 < cap (64-bit): two columns of
    // head (i / (D/2)) % H in q, or in row p of the k or v cache.
    unsafe { gpu.launch_params(s, &name, launch, &kp) }
}

/// Bytes of `gemv_residual_rmsnorm`'s workspace for C rows: the per-block partial sums of squares
/// (`[blocks]` f32, at most ⌈C / 8⌉ blocks) and, after them at a 4-byte boundary, the ticket counter
/// (one u32, zero on entry and on exit).
pub fn residual_norm_workspace_bytes(c: usize) -> usize {
    f32_bytes(c.div_ceil(GEMV_WARPS as usize)) + 4
}

/// The output projection of a layer with the residual add and the next RMSNorm fused in, for one
/// token (decode, `p.b` = 1): `resid[n] += Σ_k w[n, k] · x[k]` (the f32 residual stream `[C]`, same
/// bits as `gemv` + `add_rmsnorm`'s add), then `a = T((resid · inv) · w_ln)` with `inv = 1 / sqrt(Σ
/// resid² / C + eps)`, done by the last block to finish (`add_rmsnorm`'s expression; Σ x² in another
/// order, so `a` may differ from it by an ulp of T). w `[C, K]` T, x `[1, K]` T, w_ln `[C]` T, a `[C]`
/// T; `p.partials` is the whole workspace, `residual_norm_workspace_bytes(C)`, its counter zero (left
/// zero; `p.counter` is the launcher's).
pub fn gemv_residual_rmsnorm(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    p: &GemvFusedParams<DevSlice, usize>,
    cfg: GemvConfig,
) -> Result<()> {
    need_one_row("gemv_residual_rmsnorm", p.b)?;
    let (c, k) = (p.c, p.k);
    let Some((launch, word)) = gemv_grid(gpu, "gemv_residual_rmsnorm", dt, p.w, p.x, (c, 1, k, 1), cfg)? else {
        return Ok(());
    };
    p.resid.need(f32_bytes(c), "gemv_residual_rmsnorm resid [C]")?;
    p.w_ln.need(c * dt.size(), "gemv_residual_rmsnorm w_ln [C]")?;
    p.a.need(c * dt.size(), "gemv_residual_rmsnorm a [C]")?;
    p.partials.need(residual_norm_workspace_bytes(c), "gemv_residual_rmsnorm workspace")?;
    debug_assert!(launch.grid.0 as usize <= c.div_ceil(GEMV_WARPS as usize));
    let counter = p.partials.sub(f32_bytes(c.div_ceil(GEMV_WARPS as usize)), 4)?;
    let kp = GemvFusedParams { cfg: word as usize, counter, ..*p }.kernel()?;
    let name = format!("gemv_residual_rmsnorm_{}", dt.suffix());
    // SAFETY: w holds [C, K] T and x [1, K] T (gemv_grid), resid [C] f32, w_ln and a [C] T, and the
    // workspace ⌈C/8⌉ f32 partials (>= the grid's blocks) + the u32 counter (above). Warp g takes rows
    // n = g, g + warps, ... < C: reads w row n (k < K, clamped into the row) and x, reads and writes
    // resid[n]; block i writes partials[i] and updates the counter; the last block reads every partial
    // and resid[0..C], w_ln[0..C], writes a[0..C] and resets the counter.
    unsafe { gpu.launch_params(s, &name, launch, &kp) }
}

/// The one-token kernels (B = 1) refuse another batch.
fn need_one_row(what: &str, b: usize) -> Result<()> {
    if b != 1 {
        return Err(Error::Backend(format!("internal: {what} is for one token, got B = {b}")));
    }
    Ok(())
}

/// The checks every gemv-family launch shares, and its launch shape: `(items, rows_per_item, k, b)`:
/// `items` work items of `rows_per_item` weight rows each (w `[items · rows_per_item, K]` T), x `[B, K]`
/// T, B in 1..=`GEMV_MAX_B`, a valid configuration, and one warp's items × rows × passes within the
/// kernel's u32 step counter; with the kernel's `cfg` word. None when there are no items (nothing
/// to launch).
fn gemv_grid(
    gpu: &Gpu,
    what: &str,
    dt: GpuDType,
    w: DevSlice,
    x: DevSlice,
    (items, rows_per_item, k, b): (usize, usize, usize, usize),
    cfg: GemvConfig,
) -> Result<Option<(Launch, u32)>> {
    if b == 0 || b > GEMV_MAX_B {
        return Err(Error::Backend(format!("internal: {what} batch B = {b}, supported 1..={GEMV_MAX_B}")));
    }
    if !(1..=2).contains(&cfg.stages) {
        return Err(Error::Backend(format!("internal: {what} stages = {}, supported 1 or 2", cfg.stages)));
    }
    let rows = items * rows_per_item;
    dim_u32(rows, "gemv rows")?;
    dim_u32(k, "gemv K")?;
    // u32 · u32 · small constant: no overflow in usize (64-bit).
    w.need(rows * k * dt.size(), &format!("{what} w [rows, K]"))?;
    x.need(b * k * dt.size(), &format!("{what} x [B, K]"))?;
    if items == 0 {
        return Ok(None);
    }
    let grid = cfg.grid(items, gpu.sms);
    // The kernel counts one warp's items x rows x passes in u32 (passes <= ceil(K / 256)).
    let warps = grid as u64 * GEMV_WARPS;
    let steps = (items as u64).div_ceil(warps) * rows_per_item as u64 * (k as u64).div_ceil(256).max(1);
    if steps > u32::MAX as u64 {
        return Err(Error::Backend(format!("internal: {what} of {rows} x {k} is too large for {grid} blocks")));
    }
    let launch = Launch::new((dim_u32(grid, "gemv grid")?, 1, 1), GEMV_BLOCK, 0);
    Ok(Some((launch, cfg.word(grid, rows_per_item * k * dt.size()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_config_parses_and_sizes_the_grid() {
        assert_eq!(GemvConfig::parse("1,0"), Some(GemvConfig::new(1, 0)));
        assert_eq!(GemvConfig::parse(" 2 , 4"), Some(GemvConfig::new(2, 4)));
        assert_eq!(GemvConfig::parse("2,8,24"), Some(GemvConfig::stream(2, 8, 24)));
        assert_eq!(GemvConfig::parse("3,4"), None);
        assert_eq!(GemvConfig::parse("2"), None);
        assert_eq!(GemvConfig::parse("x,1"), None);
        assert_eq!(GemvConfig::parse("2,8,x"), None);
        assert_eq!(GemvConfig::parse("2,8,1,1"), None);
        // The kernel word: stages in the low byte, prefetching warps above (24 MB of 8 KB rows = 3072
        // warps; never more than the grid has).
        assert_eq!(GemvConfig::new(2, 8).word(512, 8192), 2);
        let p = GemvConfig::stream(2, 8, 24);
        assert_eq!(p.word(512, 8192), 2 | (3072 << 8));
        assert_eq!(p.word(100, 8192), 2 | (800 << 8));
        let one_row = GemvConfig::new(2, 0);
        assert_eq!(one_row.grid(4096, 132), 512);
        assert_eq!(one_row.grid(1, 132), 1);
        let capped = GemvConfig::new(2, 4);
        assert_eq!(capped.grid(12288, 132), 528);
        assert_eq!(capped.grid(4096, 132), 512);
        assert_eq!(capped.grid(7, 132), 1);
    }
}
