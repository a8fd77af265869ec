//! `qkv_rope_append_{bf16,f16}` (cuda/rotary.cu); oracle: matmul output + bias, `cpu::rope` on q
//! and k, `model::logn_scale` on q.
use super::{dim_u32, f32_bytes};
use crate::backend::cuda::device::{Arg, DevSlice, Gpu, GpuDType, Launch};
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;

/// Threads per block (the kernel's `ROPE_BLOCK`).
pub const QKV_ROPE_BLOCK: u32 = 64;

/// Largest head dim accepted (the config's limit, `kv_channels <= 256`).
pub const QKV_ROPE_MAX_D: usize = 256;

/// Grid and block of `qkv_rope_append`: grid (T, H), block 64. Block (t, h) handles head h of the
/// token at position `*pos0 + t` (nothing when that is >= cap): thread j rotates pair j (and
/// j + 64, ... when D/2 > 64), then the block copies the D values of v.
pub fn qkv_rope_append_launch(t: usize, h: usize) -> Result<Launch> {
    if h > 65535 {
        return Err(Error::Backend(format!("internal: qkv_rope_append with H = {h} > 65535 (grid.y)")));
    }
    Ok(Launch::new((dim_u32(t, "T")?, dim_u32(h, "H")?, 1), QKV_ROPE_BLOCK, 0))
}

/// Bias add, rotate-half RoPE at position `*pos0 + t`, logN on q, then q → `q` and k / v → cache
/// rows `*pos0 + t` (tokens whose position is >= cap write nothing).
///
/// qkv `[T, 3P]` f32 (matmul output, row = q ‖ k ‖ v), bias `[3P]` T, inv_freq `[D/2]` f32,
/// pos0 `[1]` u32 (device scalar), q `[T, P]` T, k_cache / v_cache `[cap, P]` T, P = H·D,
/// D even and at most 256. `seq_length` is the config's S (threshold of logN).
#[allow(clippy::too_many_arguments)]
pub fn qkv_rope_append(
    gpu: &Gpu,
    s: &CudaStream,
    dt: GpuDType,
    qkv: DevSlice,
    bias: DevSlice,
    inv_freq: DevSlice,
    pos0: DevSlice,
    q: DevSlice,
    k_cache: DevSlice,
    v_cache: DevSlice,
    t: usize,
    h: usize,
    d: usize,
    cap: usize,
    seq_length: usize,
    use_logn: bool,
) -> Result<()> {
    let p = check_rope_operands("qkv_rope_append", dt, bias, inv_freq, pos0, q, k_cache, v_cache, t, h, d, cap)?;
    dim_u32(3 * p, "3P")?;
    let (t32, h32, d32) = (dim_u32(t, "T")?, dim_u32(h, "H")?, dim_u32(d, "D")?);
    let cap32 = dim_u32(cap, "cap")?;
    let s32 = dim_u32(seq_length, "seq_length")?;
    qkv.need(f32_bytes(t * 3 * p), "qkv_rope_append qkv [T, 3P]")?;
    if t == 0 {
        return Ok(());
    }
    let name = format!("qkv_rope_append_{}", dt.suffix());
    let cfg = qkv_rope_append_launch(t, h)?;
    let args = [
        Arg::Ptr(qkv.ptr),
        Arg::Ptr(bias.ptr),
        Arg::Ptr(inv_freq.ptr),
        Arg::Ptr(pos0.ptr),
        Arg::Ptr(q.ptr),
        Arg::Ptr(k_cache.ptr),
        Arg::Ptr(v_cache.ptr),
        Arg::U32(t32),
        Arg::U32(h32),
        Arg::U32(d32),
        Arg::U32(cap32),
        Arg::U32(s32),
        Arg::U32(use_logn as u32),
    ];
    // SAFETY: qkv holds [T, 3P] f32, bias [3P] T, inv_freq [D/2] f32, pos0 one u32, q [T, P] T and
    // both caches [cap, P] T (checked above). Block (t < T, h < H) reads head h's columns of row t
    // of qkv and of bias, inv_freq[..D/2] and pos0, and writes only when p = *pos0 + t < cap
    // (computed in 64 bits): head h's columns of row t of q and of row p of each cache.
    unsafe { gpu.launch(s, &name, cfg, &args) }
}

/// The checks `qkv_rope_append` and `gemv_qkv_rope` (`what`) share: H >= 1 and an even head dim
/// 2..=QKV_ROPE_MAX_D, then bias `[3P]` T, inv_freq `[D/2]` f32, pos0 one u32, q `[T, P]` T and both
/// caches `[cap, P]` T big enough. Returns P = H·D.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_rope_operands(
    what: &str,
    dt: GpuDType,
    bias: DevSlice,
    inv_freq: DevSlice,
    pos0: DevSlice,
    q: DevSlice,
    k_cache: DevSlice,
    v_cache: DevSlice,
    t: usize,
    h: usize,
    d: usize,
    cap: usize,
) -> Result<usize> {
    if h == 0 || d == 0 || d % 2 != 0 || d > QKV_ROPE_MAX_D {
        return Err(Error::Backend(format!(
            "internal: {what} needs H >= 1 and an even head dim 2..={QKV_ROPE_MAX_D}, got H = {h}, D = {d}"
        )));
    }
    let p = h * d;
    bias.need(3 * p * dt.size(), &format!("{what} bias [3P]"))?;
    inv_freq.need(f32_bytes(d / 2), &format!("{what} inv_freq [D/2]"))?;
    pos0.need(4, &format!("{what} pos0 [1]"))?;
    q.need(t * p * dt.size(), &format!("{what} q [T, P]"))?;
    k_cache.need(cap * p * dt.size(), &format!("{what} k_cache [cap, P]"))?;
    v_cache.need(cap * p * dt.size(), &format!("{what} v_cache [cap, P]"))?;
    Ok(p)
}
