//! `gemv_{bf16,f16}` (cuda/gemv.cu, run 4's verified kernel) and `gemv_plain_{bf16,f16}` (cuda/gemv_fused.cu, the post-run-4 stream): the decode matmul for B <= 8 rows; oracle `cpu::matmul`.
//! `gemv_swiglu_*`, `gemv_qkv_rope_*` and `gemv_residual_rmsnorm_*` (gemv_fused.cu): the same matmul with swiglu.cu /
//! rotary.cu / rmsnorm.cu's add_rmsnorm fused into its epilogue (oracle: `cpu::matmul`, then
//! `cpu::swiglu` / `cpu::rope` + `model::logn_scale` / `cpu::add` + `cpu::rmsnorm`).
use super::rotary::check_rope_operands;
use super::{dim_u32, f32_bytes};
use crate::backend::cuda::device::{Arg, DevSlice, Gpu, GpuDType, Launch};
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
/// passes its `Tuning`'s configuration to `gemv_with`).
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
    gemv_with(gpu, s, dt, w, x, y, n, k, b, GemvConfig::DEFAULT)
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
    if cfg.kernel == GemvKernel::Run4 && cfg.prefetch_mb > 0 {
        return Err(Error::Backend(
            "internal: the GEMV L2 prefetch needs GemvKernel::Stream (run 4's gemv has none)".into(),
        ));
    }
    let Some((launch, word)) = gemv_grid(gpu, "gemv", w, x, n, 1, k, b, dt, cfg)? else { return Ok(()) };
    y.need(f32_bytes(b * n), "gemv y [B, N]")?;
    // Run 4's kernel takes the stage count where the stream takes its cfg word (stages | prefetch).
    let (name, word) = match cfg.kernel {
        GemvKernel::Run4 => (format!("gemv_{}", dt.suffix()), cfg.stages),
        GemvKernel::Stream => (format!("gemv_plain_{}", dt.suffix()), word),
    };
    let args = [
        Arg::Ptr(w.ptr),
        Arg::Ptr(x.ptr),
        Arg::Ptr(y.ptr),
        Arg::U32(dim_u32(n, "gemv N")?),
        Arg::U32(dim_u32(k, "gemv K")?),
        Arg::U32(dim_u32(b, "gemv B")?),
        Arg::U32(word),
    ];
    // SAFETY: w holds [N, K] T, x [B, K] T (gemv_grid), y [B, N] f32 (above), 1 <= B <= 8; the
    // kernel (warp g takes rows g, g + warps, ... < N) reads w rows n < N at k < K (loads past a
    // row's end are clamped into the row), x rows b < B at k < K, and writes y[b, n] for b < B,
    // n < N only.
    unsafe { gpu.launch(s, &name, launch, &args) }
}

/// The matmul with SwiGLU fused into its epilogue: `out[b, f] = T(up · silu(gate))` with
/// up = `w[f] · x[b]`, gate = `w[F + f] · x[b]` (f32 sums, exactly `gemv` + `swiglu`'s bits):
/// w `[2F, K]` T (the executor's w1 ‖ w2), x `[B, K]` T, out `[B, F]` T, B in 1..=`GEMV_MAX_B`;
/// `cfg` as `gemv_with` (its `kernel` is ignored: the fused kernels are the stream's).
#[allow(clippy::too_many_arguments)]
pub fn gemv_swiglu(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    w: DevSlice,
    x: DevSlice,
    out: DevSlice,
    f: usize,
    k: usize,
    b: usize,
    cfg: GemvConfig,
) -> Result<()> {
    let Some((launch, word)) = gemv_grid(gpu, "gemv_swiglu", w, x, f, 2, k, b, dt, cfg)? else { return Ok(()) };
    out.need(b * f * dt.size(), "gemv_swiglu out [B, F]")?;
    let name = format!("gemv_swiglu_{}", dt.suffix());
    let args = [
        Arg::Ptr(w.ptr),
        Arg::Ptr(x.ptr),
        Arg::Ptr(out.ptr),
        Arg::U32(dim_u32(f, "gemv_swiglu F")?),
        Arg::U32(dim_u32(k, "gemv_swiglu K")?),
        Arg::U32(dim_u32(b, "gemv_swiglu B")?),
        Arg::U32(word),
    ];
    // SAFETY: w holds [2F, K] T, x [B, K] T (gemv_grid), out [B, F] T (above), 1 <= B <= 8; warp g
    // takes items f = g, g + warps, ... < F, reads w rows f and F + f (< 2F) at k < K (clamped into
    // the row) and x rows b < B, and writes out[b, f] for b < B, f < F only.
    unsafe { gpu.launch(s, &name, launch, &args) }
}

/// The QKV matmul with `qkv_rope_append` fused into its epilogue, for one token (decode): bias add,
/// rotate-half RoPE at p = `*pos0`, logN on q, q → `q` `[1, P]` T, k / v → row p of `k_cache` /
/// `v_cache` `[cap, P]` T (nothing at all when p >= cap). w `[3P, K]` T (c_attn), x `[1, K]` T,
/// bias `[3P]` T, inv_freq `[D/2]` f32, pos0 `[1]` u32 (device scalar); P = H·D, D even, <= 256.
/// Stores exactly what `gemv` + `qkv_rope_append` store; `cfg` as `gemv_with`.
#[allow(clippy::too_many_arguments)]
pub fn gemv_qkv_rope(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    w: DevSlice,
    x: DevSlice,
    bias: DevSlice,
    inv_freq: DevSlice,
    pos0: DevSlice,
    q: DevSlice,
    k_cache: DevSlice,
    v_cache: DevSlice,
    k: usize,
    h: usize,
    d: usize,
    cap: usize,
    seq_length: usize,
    use_logn: bool,
    cfg: GemvConfig,
) -> Result<()> {
    // One token (the kernel instantiates B = 1).
    let p = check_rope_operands("gemv_qkv_rope", dt, bias, inv_freq, pos0, q, k_cache, v_cache, 1, h, d, cap)?;
    // Items: the 3P/2 pairs (x[j], x[j + D/2]) of q, k and v.
    let Some((launch, word)) = gemv_grid(gpu, "gemv_qkv_rope", w, x, 3 * p / 2, 2, k, 1, dt, cfg)? else {
        return Ok(());
    };
    let name = format!("gemv_qkv_rope_{}", dt.suffix());
    let args = [
        Arg::Ptr(w.ptr),
        Arg::Ptr(x.ptr),
        Arg::Ptr(bias.ptr),
        Arg::Ptr(inv_freq.ptr),
        Arg::Ptr(pos0.ptr),
        Arg::Ptr(q.ptr),
        Arg::Ptr(k_cache.ptr),
        Arg::Ptr(v_cache.ptr),
        Arg::U32(dim_u32(k, "gemv_qkv_rope K")?),
        Arg::U32(1),
        Arg::U32(word),
        Arg::U32(dim_u32(h, "H")?),
        Arg::U32(dim_u32(d, "D")?),
        Arg::U32(dim_u32(cap, "cap")?),
        Arg::U32(dim_u32(seq_length, "seq_length")?),
        Arg::U32(use_logn as u32),
    ];
    // SAFETY: w holds [3P, K] T and x [1, K] T (gemv_grid), bias [3P] T, inv_freq [D/2] f32, pos0 one
    // u32, q [1, P] T, both caches [cap, P] T (above). Warp g takes pairs i = g, g + warps, ... < 3P/2,
    // reads w rows (i / (D/2))·D + i % (D/2) and that + D/2 (< 3P) at k < K, bias at those rows,
    // inv_freq[i % (D/2)] and pos0; it writes only when p = *pos0 < cap (64-bit): two columns of
    // head (i / (D/2)) % H in q, or in row p of the k or v cache.
    unsafe { gpu.launch(s, &name, launch, &args) }
}

/// Bytes of `gemv_residual_rmsnorm`'s workspace for C rows: the per-block partial sums of squares
/// (`[blocks]` f32, at most ⌈C / 8⌉ blocks) and, after them at a 4-byte boundary, the ticket counter
/// (one u32, zero on entry and on exit).
pub fn residual_norm_workspace_bytes(c: usize) -> usize {
    f32_bytes(c.div_ceil(GEMV_WARPS as usize)) + 4
}

/// The output projection of a layer with the residual add and the next RMSNorm fused in, for one
/// token (decode): `x[n] += Σ_k w[n, k] · x_in[k]` (the f32 residual stream `[C]`, same bits as
/// `gemv` + `add_rmsnorm`'s add), then `a = T((x · inv) · w_ln)` with `inv = 1 / sqrt(Σ x² / C +
/// eps)`, done by the last block to finish (`add_rmsnorm`'s expression; Σ x² in another order, so
/// `a` may differ from it by an ulp of T). w `[C, K]` T, x_in `[1, K]` T, w_ln `[C]` T, a `[C]` T;
/// `workspace`: `residual_norm_workspace_bytes(C)`, its counter zero (left zero).
#[allow(clippy::too_many_arguments)]
pub fn gemv_residual_rmsnorm(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    w: DevSlice,
    x_in: DevSlice,
    x: DevSlice,
    w_ln: DevSlice,
    a: DevSlice,
    workspace: DevSlice,
    c: usize,
    k: usize,
    eps: f32,
    cfg: GemvConfig,
) -> Result<()> {
    let Some((launch, word)) = gemv_grid(gpu, "gemv_residual_rmsnorm", w, x_in, c, 1, k, 1, dt, cfg)? else {
        return Ok(());
    };
    x.need(f32_bytes(c), "gemv_residual_rmsnorm x [C]")?;
    w_ln.need(c * dt.size(), "gemv_residual_rmsnorm w_ln [C]")?;
    a.need(c * dt.size(), "gemv_residual_rmsnorm a [C]")?;
    workspace.need(residual_norm_workspace_bytes(c), "gemv_residual_rmsnorm workspace")?;
    debug_assert!(launch.grid.0 as usize <= c.div_ceil(GEMV_WARPS as usize));
    let counter = workspace.ptr.offset(f32_bytes(c.div_ceil(GEMV_WARPS as usize)));
    let name = format!("gemv_residual_rmsnorm_{}", dt.suffix());
    let args = [
        Arg::Ptr(w.ptr),
        Arg::Ptr(x_in.ptr),
        Arg::Ptr(x.ptr),
        Arg::Ptr(w_ln.ptr),
        Arg::Ptr(a.ptr),
        Arg::Ptr(workspace.ptr),
        Arg::Ptr(counter),
        Arg::U32(dim_u32(c, "gemv_residual_rmsnorm C")?),
        Arg::U32(dim_u32(k, "gemv_residual_rmsnorm K")?),
        Arg::U32(word),
        Arg::F32(eps),
    ];
    // SAFETY: w holds [C, K] T and x_in [1, K] T (gemv_grid), x [C] f32, w_ln and a [C] T, and the
    // workspace ⌈C/8⌉ f32 partials (>= the grid's blocks) + the u32 counter (above). Warp g takes rows
    // n = g, g + warps, ... < C: reads w row n (k < K, clamped into the row) and x_in, reads and writes
    // x[n]; block i writes partials[i] and updates the counter; the last block reads every partial
    // and x[0..C], w_ln[0..C], writes a[0..C] and resets the counter.
    unsafe { gpu.launch(s, &name, launch, &args) }
}

/// The checks every gemv-family launch shares, and its launch shape: `items` work items of
/// `rows_per_item` weight rows each (w `[items · rows_per_item, K]` T), x `[B, K]` T, B in
/// 1..=`GEMV_MAX_B`, a valid configuration, and one warp's items × rows × passes within the
/// kernel's u32 step counter; with the kernel's `cfg` word. None when there are no items (nothing
/// to launch).
#[allow(clippy::too_many_arguments)]
fn gemv_grid(
    gpu: &Gpu,
    what: &str,
    w: DevSlice,
    x: DevSlice,
    items: usize,
    rows_per_item: usize,
    k: usize,
    b: usize,
    dt: GpuDType,
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
