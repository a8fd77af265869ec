//! `attention_prefill_{bf16,f16}` (cuda/attention_prefill.cu, run 4's verified WMMA kernel, the
//! default), `attention_prefill_mma_{bf16,f16}` (cuda/attention_prefill_mma.cu, mma.sync) and
//! `attention_prefill_wmma_{bf16,f16}` (cuda/attention_prefill_wmma.cu, WMMA with the longest tile
//! first): causal flash attention over the KV cache for a chunk of T query rows; oracle
//! `cpu::attention`.
use super::params::positional;
use super::{dim_u32, AttentionPrefillParams};
use crate::backend::cuda::device::{DevSlice, Gpu, GpuDType, Launch};
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;

/// Query rows per block and threads per block of the kernel (`AP_BQ`, `AP_THREADS`).
const BQ: usize = 64;
const THREADS: u32 = 128;
/// Dynamic shared memory up to which no opt-in is needed.
const SMEM_DEFAULT: usize = 48 * 1024;

/// Head dims the kernel is instantiated for.
pub fn attention_prefill_supports(d: usize) -> bool {
    matches!(d, 16 | 32 | 64 | 128)
}

/// Which prefill attention kernel (same contract, same oracle; `Tuning::attn`, QWEN_ATTN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefillKernel {
    /// `attention_prefill_*`: run 4's WMMA kernel, grid (tiles, H), verified on the H200 (the default).
    Run4,
    /// `attention_prefill_mma_*`: mma.sync m16n8k16 with S, P and O in registers (not yet verified).
    Mma,
    /// `attention_prefill_wmma_*`: run 4's WMMA kernel with the heaviest query tile dispatched first,
    /// grid (H, tiles) (not yet verified).
    Wmma,
}

impl PrefillKernel {
    pub const ALL: [PrefillKernel; 3] = [PrefillKernel::Run4, PrefillKernel::Mma, PrefillKernel::Wmma];

    fn entry(self, dt: GpuDType) -> String {
        match self {
            PrefillKernel::Run4 => format!("attention_prefill_{}", dt.suffix()),
            PrefillKernel::Mma => format!("attention_prefill_mma_{}", dt.suffix()),
            PrefillKernel::Wmma => format!("attention_prefill_wmma_{}", dt.suffix()),
        }
    }

    /// Dynamic shared memory at head dim `d`, as `ap_smem_bytes(D)` / `at_smem_bytes(D)` in each .cu.
    /// Mma: one K and one V tile `[64, D + 8]` T. Run4, Wmma: the same plus S `[64, 68]` f32 (P
    /// aliased on it) and 3 × 64 f32 softmax statistics.
    fn smem_bytes(self, d: usize) -> usize {
        let tiles = 2 * 64 * (d + 8) * 2;
        match self {
            PrefillKernel::Mma => tiles,
            PrefillKernel::Run4 | PrefillKernel::Wmma => tiles + 64 * 68 * 4 + 3 * 64 * 4,
        }
    }
}

/// Causal attention of T query rows against the cache: query row t is at position `*pos0 + t` and
/// sees cache rows `0..=pos0 + t`. q `[T, P]` T, k_cache / v_cache `[cap, P]` T, out `[T, P]` T,
/// pos0 a device u32, P = H·D; `scale` the softmax scale (the model's `attention_scale(D)` = 1/√D).
/// The caller guarantees `pos0 + T <= cap` (the kernel clamps positions to `cap - 1` so it never
/// reads past the cache either way).
pub fn attention_prefill(
    gpu: &Gpu,
    s: &CudaStream,
    kernel: PrefillKernel,
    dt: GpuDType,
    p: &AttentionPrefillParams<DevSlice, usize>,
) -> Result<()> {
    let (t, h, d, cap) = (p.t, p.h, p.d, p.cap);
    if !attention_prefill_supports(d) {
        return Err(Error::Backend(format!(
            "attention_prefill: head dim D = {d} is not supported (kernels exist for D = 16, 32, 64, 128)"
        )));
    }
    if h == 0 || h > 65535 {
        return Err(Error::Backend(format!("attention_prefill: H = {h} heads is outside 1..=65535")));
    }
    if cap == 0 || t > cap {
        return Err(Error::Backend(format!("attention_prefill: T = {t} rows do not fit a KV cache of {cap} rows")));
    }
    let width = h * d;
    dim_u32(width, "attention_prefill P = H * D")?;
    let row = width * dt.size();
    let bytes = |rows: usize, what: &str| {
        rows.checked_mul(row).ok_or_else(|| Error::Backend(format!("attention_prefill: {what} size overflows")))
    };
    p.q.need(bytes(t, "q")?, "attention_prefill q [T, P]")?;
    p.k_cache.need(bytes(cap, "k_cache")?, "attention_prefill k_cache [cap, P]")?;
    p.v_cache.need(bytes(cap, "v_cache")?, "attention_prefill v_cache [cap, P]")?;
    p.out.need(bytes(t, "out")?, "attention_prefill out [T, P]")?;
    p.pos0.need(4, "attention_prefill pos0 [1] u32")?;
    // The kernel moves every row in 16-byte pieces (rows are P·2 = 32·k bytes long).
    for (buf, what) in [(p.q, "q"), (p.k_cache, "k_cache"), (p.v_cache, "v_cache"), (p.out, "out")] {
        if buf.ptr.0 % 16 != 0 {
            return Err(Error::Backend(format!("internal: attention_prefill {what} is not 16-byte aligned")));
        }
    }
    if t == 0 {
        return Ok(());
    }
    let name = kernel.entry(dt);
    let smem = kernel.smem_bytes(d);
    if smem > SMEM_DEFAULT {
        gpu.allow_smem(&name, dim_u32(smem, "attention_prefill shared memory")?)?;
    }
    // Run4: (query tiles, H). Mma, Wmma: (H, query tiles), the kernel takes the tiles from the last
    // (heaviest) down; grid.y <= 65535.
    let tiles = t.div_ceil(BQ);
    if tiles > 65535 {
        return Err(Error::Backend(format!(
            "internal: attention_prefill of {t} queries exceeds the grid (65535 tiles of {BQ})"
        )));
    }
    let (h32, tiles32) = (dim_u32(h, "H")?, dim_u32(tiles, "T / 64")?);
    let grid = if kernel == PrefillKernel::Run4 { (tiles32, h32, 1) } else { (h32, tiles32, 1) };
    let cfg = Launch::new(grid, THREADS, dim_u32(smem, "attention_prefill shared memory")?);
    let kp = p.kernel()?;
    // SAFETY: q and out hold [T, P] T, k_cache and v_cache [cap, P] T, pos0 one u32 (checked above),
    // all 16-byte aligned; D is one either kernel is instantiated for and the block is the 128 threads
    // and `smem` bytes it expects (raised above 48 KiB first). The kernel reads q rows < T, cache rows
    // <= min(pos0 + T - 1, cap - 1) and writes out rows < T, columns h·D..h·D+D of head h < H only.
    // Run 4's kernel takes the fields positionally, the others the struct by value.
    unsafe {
        match kernel {
            PrefillKernel::Run4 => gpu.launch(s, &name, cfg, &positional::attention_prefill(&kp)),
            PrefillKernel::Mma | PrefillKernel::Wmma => gpu.launch_params(s, &name, cfg, &kp),
        }
    }
}
