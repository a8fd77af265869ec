//! `gemv_{nf4,int8,gptq4,gptq8}_{bf16,f16}` and `dequant_*` (cuda/gemv_quant.cu): the decode matmul
//! straight from quantized weights (one token) and their dequantization to T for the prefill GEMM;
//! oracle `quant::QuantMatrix::matmul` / `decode_rows`. Verified in H200 run 5 (2026-12-04, `8be7cb9`);
//! `gemv_nf4_rows` (QWEN_NF4=rows), `gemv_int8_rows` (QWEN_INT8=rows) and `dequant_gptq{4,8}_tile`
//! (QWEN_GPTQ_DEQUANT=tile) are newer and not yet verified.
//!
//! Parameters: one `#[repr(C)]` struct per format, the mirror of cuda/quant_params.h (declared with
//! `params.rs`' `kernel_params!`; `QUANT_LAYOUTS` is the table tests/kernel_params.rs checks against
//! bindgen's reading of the header), passed by value (`Gpu::launch_params`).
use super::params::{kernel_params, KernelField, ParamsLayout};
use super::{dim_u32, f32_bytes};
use crate::backend::cuda::device::{DevPtr, DevSlice, Gpu, GpuDType, KernelParams, Launch};
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;

/// Threads per block of every entry (gemv_quant.cu's GQ_THREADS).
const BLOCK: u32 = 256;
/// Rows per block of the NF4 / Int8 GEMVs (one per warp).
const ROWS_PER_BLOCK: usize = 8;
/// Threads and rows per block of `gemv_nf4_rows` (GQ_NF4R_THREADS: 4 warps of 4 rows).
const NF4_ROWS_BLOCK: u32 = 128;
const NF4_ROWS_PER_BLOCK: usize = 16;
/// Threads and rows per block of `gemv_int8_rows` (GQ_I8R_THREADS: 4 warps of 4 rows).
const INT8_ROWS_BLOCK: u32 = 128;
const INT8_ROWS_PER_BLOCK: usize = 16;
/// Columns per block of the GPTQ GEMV (GQ_GPTQ_COLS).
const GPTQ_COLS: usize = 16;
/// A tile of `dequant_gptq*_tile`: 32 columns (GQ_DQT_COLS) by 256 slots (32 chunks of 8: 32 word
/// rows of gptq4, 64 of gptq8).
const GPTQ_TILE_COLS: usize = 32;
const GPTQ_TILE_SLOTS: usize = 256;
/// Dynamic shared memory a kernel may use without opting in.
const SMEM_DEFAULT: usize = 48 << 10;
/// The most dynamic shared memory an sm_90 block can opt into (227 KiB); less on sm_80/86/89, where
/// the driver refuses the launch with an error.
const SMEM_MAX: usize = 227 << 10;

kernel_params! {
    QUANT_LAYOUTS;

    /// cuda/quant_params.h `QuantNf4Params`: `gemv_nf4`, `dequant_nf4`.
    pub struct QuantNf4Params<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub codes: Buf,
        pub absmax: Buf,
        pub x: Buf,
        pub out: Buf,
        pub n: Dim,
        pub k: Dim,
    }

    /// cuda/quant_params.h `QuantInt8Params`: `gemv_int8`, `dequant_int8`.
    pub struct QuantInt8Params<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub codes: Buf,
        pub scb: Buf,
        pub x: Buf,
        pub out: Buf,
        pub n: Dim,
        pub k: Dim,
    }

    /// cuda/quant_params.h `QuantGptqParams`: `gemv_gptq4/8`, `dequant_gptq4/8` (perm 0: identity).
    pub struct QuantGptqParams<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub qweight: Buf,
        pub row_group: Buf,
        pub perm: Buf,
        pub scales: Buf,
        pub zeros: Buf,
        pub x: Buf,
        pub out: Buf,
        pub n: Dim,
        pub k: Dim,
        pub rows: Dim,
        pub groups: Dim,
    }
}

/// One quantized linear weight W `[N, K]` on the GPU, in the device layout of cuda/quant_params.h
/// (built by `upload_quant`).
#[derive(Clone, Copy, Debug)]
pub enum QuantWeight {
    /// codes `[ceil(N·K/2)]` u8, absmax `[ceil(N·K/64)]` f32 (nf4-dq decoded at upload).
    Nf4 { codes: DevSlice, absmax: DevSlice, n: usize, k: usize },
    /// codes `[N, K]` i8, scb `[N]` f32.
    Int8 { codes: DevSlice, scb: DevSlice, n: usize, k: usize },
    /// qweight `[rows, N]` u32 (K-permuted slots), row_group `[rows]` u32, perm `[rows·32/bits]` u32
    /// (None: identity), scales `[groups, N]` f32, zeros `[groups, N]` u16 (true zeros).
    Gptq {
        bits: u32,
        qweight: DevSlice,
        row_group: DevSlice,
        perm: Option<DevSlice>,
        scales: DevSlice,
        zeros: DevSlice,
        n: usize,
        k: usize,
        rows: usize,
        groups: usize,
    },
}

impl QuantWeight {
    /// (N, K).
    pub fn shape(&self) -> (usize, usize) {
        match *self {
            QuantWeight::Nf4 { n, k, .. } | QuantWeight::Int8 { n, k, .. } | QuantWeight::Gptq { n, k, .. } => (n, k),
        }
    }
}

/// The format's entry `kind_format_dtype` (kind "gemv" or "dequant").
fn entry(kind: &str, w: &QuantWeight, dt: GpuDType) -> String {
    let f = match w {
        QuantWeight::Nf4 { .. } => "nf4",
        QuantWeight::Int8 { .. } => "int8",
        QuantWeight::Gptq { bits: 8, .. } => "gptq8",
        QuantWeight::Gptq { .. } => "gptq4",
    };
    format!("{kind}_{f}_{}", dt.suffix())
}

/// What a launch passes: the format's parameter struct with x and out filled in.
enum Params {
    Nf4(QuantNf4Params),
    Int8(QuantInt8Params),
    Gptq(QuantGptqParams),
}

/// Check every weight buffer against W's shape and build the parameter struct (x, out as given).
fn params(w: &QuantWeight, x: DevPtr, out: DevPtr) -> Result<Params> {
    let (n, k) = w.shape();
    let (n32, k32) = (dim_u32(n, "quantized W N")?, dim_u32(k, "quantized W K")?);
    let total = n.checked_mul(k).ok_or_else(|| Error::Backend("internal: quantized W N·K overflows".into()))?;
    Ok(match *w {
        QuantWeight::Nf4 { codes, absmax, .. } => {
            codes.need(total.div_ceil(2), "NF4 codes [ceil(N·K/2)]")?;
            absmax.need(f32_bytes(total.div_ceil(64)), "NF4 absmax [ceil(N·K/64)] f32")?;
            Params::Nf4(QuantNf4Params { codes: codes.ptr, absmax: absmax.ptr, x, out, n: n32, k: k32 })
        }
        QuantWeight::Int8 { codes, scb, .. } => {
            codes.need(total, "Int8 codes [N, K]")?;
            scb.need(f32_bytes(n), "Int8 SCB [N] f32")?;
            Params::Int8(QuantInt8Params { codes: codes.ptr, scb: scb.ptr, x, out, n: n32, k: k32 })
        }
        QuantWeight::Gptq { bits, qweight, row_group, perm, scales, zeros, rows, groups, .. } => {
            if bits != 4 && bits != 8 {
                return Err(Error::Backend(format!("internal: GPTQ bits {bits} (4 or 8)")));
            }
            if n % 4 != 0 {
                return Err(Error::Backend(format!("internal: GPTQ N = {n} is not a multiple of 4")));
            }
            let slots = rows * (32 / bits as usize);
            if perm.is_none() && slots != k {
                return Err(Error::Backend(format!(
                    "internal: GPTQ without a permutation has {slots} slots for K {k}"
                )));
            }
            qweight.need(rows * n * 4, "GPTQ qweight [rows, N] u32")?;
            row_group.need(rows * 4, "GPTQ row_group [rows] u32")?;
            if let Some(p) = perm {
                p.need(slots * 4, "GPTQ perm [slots] u32")?;
            }
            scales.need(f32_bytes(groups * n), "GPTQ scales [G, N] f32")?;
            zeros.need(groups * n * 2, "GPTQ zeros [G, N] u16")?;
            Params::Gptq(QuantGptqParams {
                qweight: qweight.ptr,
                row_group: row_group.ptr,
                perm: perm.map_or(DevPtr(0), |p| p.ptr),
                scales: scales.ptr,
                zeros: zeros.ptr,
                x,
                out,
                n: n32,
                k: k32,
                rows: dim_u32(rows, "GPTQ rows")?,
                groups: dim_u32(groups, "GPTQ groups")?,
            })
        }
    })
}

/// Which kernel runs an NF4 decode GEMV (`Tuning::nf4`, QWEN_NF4). Both give the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nf4Kernel {
    /// `gemv_nf4`: a row per warp, a 256-entry byte → value-pair table in shared memory (the default).
    Warp,
    /// `gemv_nf4_rows`: four rows per warp sharing x, a conflict-free 16-entry table (not yet verified).
    Rows,
}

/// Which kernel runs an Int8 decode GEMV (`Tuning::int8`, QWEN_INT8). Both give the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Kernel {
    /// `gemv_int8`: a row per warp (the default).
    Warp,
    /// `gemv_int8_rows`: four rows per warp sharing each lane's converted x (not yet verified).
    Rows,
}

/// `y[n] = Σ_k w[n, k] · x[k]` for one token (f32 accumulation), w the exact dequantized weight:
/// x `[K]` T, y `[N]` f32. The decode step's matmul for quantized weights (NF4 by `gemv_nf4`, Int8
/// by `gemv_int8`).
pub fn gemv_quant(gpu: &Gpu, s: &CudaStream, dt: GpuDType, w: &QuantWeight, x: DevSlice, y: DevSlice) -> Result<()> {
    gemv_quant_with(gpu, s, dt, w, x, y, Nf4Kernel::Warp, Int8Kernel::Warp)
}

/// `gemv_quant` with NF4 on the kernel `nf4` names and Int8 on the one `int8` names (GPTQ has one).
#[allow(clippy::too_many_arguments)]
pub fn gemv_quant_with(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    w: &QuantWeight,
    x: DevSlice,
    y: DevSlice,
    nf4: Nf4Kernel,
    int8: Int8Kernel,
) -> Result<()> {
    let (n, k) = w.shape();
    x.need(k * dt.size(), "quantized gemv x [K]")?;
    y.need(f32_bytes(n), "quantized gemv y [N] f32")?;
    if n == 0 {
        return Ok(());
    }
    let name = entry("gemv", w, dt);
    match params(w, x.ptr, y.ptr)? {
        Params::Nf4(p) if nf4 == Nf4Kernel::Rows => {
            let grid = dim_u32(n.div_ceil(NF4_ROWS_PER_BLOCK), "NF4 rows gemv grid")?;
            let launch = Launch::new((grid, 1, 1), NF4_ROWS_BLOCK, 0);
            let name = format!("gemv_nf4_rows_{}", dt.suffix());
            // SAFETY: the NF4 buffers hold W [N, K] (params), x [K] T and y [N] f32 (above). Warp g
            // takes rows 4g .. 4g + 3 (+ 16·grid, …), clamped to N - 1 for its reads: codes / absmax
            // of rows < N only, x[0..K]; it writes y[n] for n < N only.
            unsafe { gpu.launch_params(s, &name, launch, &p) }
        }
        Params::Int8(p) if int8 == Int8Kernel::Rows => {
            let grid = dim_u32(n.div_ceil(INT8_ROWS_PER_BLOCK), "Int8 rows gemv grid")?;
            let launch = Launch::new((grid, 1, 1), INT8_ROWS_BLOCK, 0);
            let name = format!("gemv_int8_rows_{}", dt.suffix());
            // SAFETY: the Int8 buffers hold W [N, K] (params: codes N·K bytes, SCB N f32), x [K] T and
            // y [N] f32 (above). Warp g takes rows 4g .. 4g + 3 (+ 16·grid, …), clamped to N - 1 for
            // its reads: codes of rows < N only, x[0..K]; it reads SCB[n] and writes y[n] for n < N only.
            unsafe { gpu.launch_params(s, &name, launch, &p) }
        }
        p @ (Params::Nf4(_) | Params::Int8(_)) => {
            let launch = Launch::new((dim_u32(n.div_ceil(ROWS_PER_BLOCK), "quantized gemv grid")?, 1, 1), BLOCK, 0);
            // SAFETY: every weight buffer holds what W [N, K] needs in its format (params), x [K] T and
            // y [N] f32 (above). Warp g takes rows n = g, g + warps, ... < N: reads codes / scales of
            // row n only (NF4: bytes nK/2 .. (n+1)K/2 and their absmax blocks), x[0..K], writes y[n].
            unsafe {
                match p {
                    Params::Nf4(p) => gpu.launch_params(s, &name, launch, &p),
                    Params::Int8(p) => gpu.launch_params(s, &name, launch, &p),
                    Params::Gptq(_) => unreachable!("matched above"),
                }
            }
        }
        Params::Gptq(p) => {
            let per = if let QuantWeight::Gptq { bits, .. } = *w { 32 / bits as usize } else { 1 };
            let slots = p.rows as usize * per;
            let smem = if p.perm != DevPtr(0) { f32_bytes(slots) } else { 0 };
            if smem > SMEM_MAX {
                return Err(Error::Backend(format!(
                    "GPTQ matrix {n}x{k} with act-order needs {smem} bytes of shared memory for x (at most {SMEM_MAX})"
                )));
            }
            if smem > SMEM_DEFAULT {
                gpu.allow_smem(&name, smem as u32)?;
            }
            let launch = Launch::new((dim_u32(n.div_ceil(GPTQ_COLS), "GPTQ gemv grid")?, 1, 1), BLOCK, smem as u32);
            // SAFETY: as above (params checked qweight [rows, N], row_group [rows], perm [slots],
            // scales / zeros [G, N]); block b reads qweight columns 16b .. 16b + 16 (< N, N % 4 == 0) of
            // every row, their scales and zeros at row_group's groups (< G: built by the upload), x at
            // perm's inputs (< K, or padding) into `smem` bytes of shared memory, writes y[16b ..] < N.
            unsafe { gpu.launch_params(s, &name, launch, &p) }
        }
    }
}

/// Which kernel dequantizes a GPTQ weight for the prefill (`Tuning::gptq_dequant`,
/// QWEN_GPTQ_DEQUANT). Both give the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptqDequant {
    /// `dequant_gptq*`: grid-stride over qweight words, n fastest (stores strided by K; the default).
    Grid,
    /// `dequant_gptq*_tile`: tiles of 32 columns × 256 slots through shared memory, stores along k
    /// (not yet verified).
    Tile,
}

/// Blocks of `dequant_gptq*_tile` for W `[N, K]` in `rows` word rows of `bits` (4 or 8): one a tile
/// (32 columns × 256 slots), at most 16 per SM (the kernel walks the tiles grid-stride), at least 1.
fn gptq_tile_grid(n: usize, rows: usize, bits: u32, sms: usize) -> usize {
    let tile_rows = GPTQ_TILE_SLOTS / (32 / bits as usize);
    let tiles = n.div_ceil(GPTQ_TILE_COLS) * rows.div_ceil(tile_rows);
    tiles.min(sms * 16).max(1)
}

/// `out[n, k] = T(w[n, k])`: W `[N, K]` T in the original input order (the prefill's cuBLAS operand;
/// GPTQ by `dequant_gptq*`).
pub fn dequant(gpu: &Gpu, s: &CudaStream, dt: GpuDType, w: &QuantWeight, out: DevSlice) -> Result<()> {
    dequant_with(gpu, s, dt, w, out, GptqDequant::Grid)
}

/// `dequant` with GPTQ on the kernel `gptq` names (the other formats have one kernel each).
pub fn dequant_with(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    w: &QuantWeight,
    out: DevSlice,
    gptq: GptqDequant,
) -> Result<()> {
    let (n, k) = w.shape();
    out.need(n * k * dt.size(), "dequantized W [N, K]")?;
    let items = match *w {
        QuantWeight::Nf4 { .. } => (n * k).div_ceil(2),
        QuantWeight::Int8 { .. } => n * k,
        QuantWeight::Gptq { rows, .. } => rows * n,
    };
    if items == 0 {
        return Ok(());
    }
    if let (QuantWeight::Gptq { bits, rows, .. }, GptqDequant::Tile) = (*w, gptq) {
        let Params::Gptq(p) = params(w, DevPtr(0), out.ptr)? else { unreachable!("a GPTQ weight") };
        let grid = gptq_tile_grid(n, rows, bits, gpu.sms as usize);
        let launch = Launch::new((dim_u32(grid, "GPTQ tile dequant grid")?, 1, 1), BLOCK, 0);
        let name = format!("dequant_gptq{}_tile_{}", if bits == 8 { 8 } else { 4 }, dt.suffix());
        // SAFETY: params checked qweight [rows, N], row_group [rows], perm [rows·32/bits] (or none:
        // rows·32/bits == K), scales / zeros [G, N]; out holds [N, K] T (above). The grid-stride loop
        // takes tiles of columns n < N and word rows r < rows only: it reads qweight[r, n], row_group[r],
        // scales / zeros at [row_group[r], n] (< G: built by the upload) and perm[s] for slots s <
        // rows·32/bits, and writes out[n, k] for n < N, k < K only (k = perm[s] or s; padding slots
        // k >= K skipped); its 16-byte stores (no perm, K % 8 == 0, out 16-byte aligned) cover
        // out[n, k .. k + 8] with k + 8 <= min(K, slots). 16 KB of static shared memory, no dynamic.
        return unsafe { gpu.launch_params(s, &name, launch, &p) };
    }
    let name = entry("dequant", w, dt);
    let grid = items.div_ceil(BLOCK as usize).min(gpu.sms as usize * 16).max(1);
    let launch = Launch::new((dim_u32(grid, "dequant grid")?, 1, 1), BLOCK, 0);
    // SAFETY: the weight buffers hold W in its format (params) and out [N, K] T (above); the grid-
    // stride loop reads items < `items` (code bytes / codes / qweight words) with their scales, and
    // writes out[n, k] for n < N, k < K only (GPTQ: k = perm[slot] < K, padding slots skipped).
    unsafe {
        match params(w, DevPtr(0), out.ptr)? {
            Params::Nf4(p) => gpu.launch_params(s, &name, launch, &p),
            Params::Int8(p) => gpu.launch_params(s, &name, launch, &p),
            Params::Gptq(p) => gpu.launch_params(s, &name, launch, &p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_mirror_the_header_sizes() {
        // The layout is checked field by field against bindgen's reading of cuda/quant_params.h in
        // tests/kernel_params.rs (`QUANT_LAYOUTS`); here only that no padding crept in.
        assert_eq!(std::mem::size_of::<QuantNf4Params>(), 4 * 8 + 2 * 4);
        assert_eq!(std::mem::size_of::<QuantInt8Params>(), 4 * 8 + 2 * 4);
        assert_eq!(std::mem::size_of::<QuantGptqParams>(), 7 * 8 + 4 * 4);
    }

    #[test]
    fn bad_weights_are_refused_before_launch() {
        let buf = |bytes| DevSlice::new(DevPtr(0x1000), bytes);
        let w = QuantWeight::Nf4 { codes: buf(10), absmax: buf(4), n: 3, k: 7 };
        assert!(params(&w, DevPtr(0), DevPtr(0)).is_err(), "21 codes need 11 bytes");
        let w = QuantWeight::Nf4 { codes: buf(11), absmax: buf(4), n: 3, k: 7 };
        assert!(params(&w, DevPtr(0), DevPtr(0)).is_ok());
        let g = |n, perm: Option<DevSlice>, rows| QuantWeight::Gptq {
            bits: 4,
            qweight: buf(rows * n * 4),
            row_group: buf(rows * 4),
            perm,
            scales: buf(n * 4),
            zeros: buf(n * 2),
            n,
            k: 8,
            rows,
            groups: 1,
        };
        assert!(params(&g(4, None, 1), DevPtr(0), DevPtr(0)).is_ok());
        assert!(params(&g(6, None, 1), DevPtr(0), DevPtr(0)).is_err(), "N % 4");
        assert!(params(&g(4, None, 2), DevPtr(0), DevPtr(0)).is_err(), "16 slots for K 8 need a permutation");
        assert!(params(&g(4, Some(buf(64)), 2), DevPtr(0), DevPtr(0)).is_ok());
    }

    #[test]
    fn gptq_tile_grid_counts_tiles() {
        // 32 columns x 32 word rows (gptq4) or 64 (gptq8) a tile; ragged edges count a whole tile.
        assert_eq!(gptq_tile_grid(4, 1, 4, 132), 1);
        assert_eq!(gptq_tile_grid(36, 33, 4, 132), 2 * 2);
        assert_eq!(gptq_tile_grid(36, 33, 8, 132), 2);
        assert_eq!(gptq_tile_grid(100, 17, 8, 132), 4);
        // 7B w1 (11008 x 4096): 344 column tiles x 16 (gptq4) or 16 (gptq8: 1024 rows / 64) row tiles,
        // capped at 16 blocks per SM.
        assert_eq!(gptq_tile_grid(11008, 512, 4, 1000), 344 * 16);
        assert_eq!(gptq_tile_grid(11008, 1024, 8, 1000), 344 * 16);
        assert_eq!(gptq_tile_grid(11008, 512, 4, 132), 132 * 16);
    }
}
