//! `qkv_rope_append_{bf16,f16}` (cuda/rotary.cu); oracle: matmul output + bias, `cpu::rope` on q
//! and k, `model::logn_scale` on q.
use super::params::positional;
use super::{dim_u32, f32_bytes, RopeParams};
use crate::backend::cuda::device::{DevSlice, Gpu, GpuDType, Launch};
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
/// D even and at most 256. `s` is the config's seq_length (threshold of logN), `use_logn` 0 or 1.
pub fn qkv_rope_append(gpu: &Gpu, s: &CudaStream, dt: GpuDType, p: &RopeParams<DevSlice, usize>) -> Result<()> {
    let width = check_rope_operands("qkv_rope_append", dt, p)?;
    dim_u32(3 * width, "3P")?;
    p.qkv.need(f32_bytes(p.t * 3 * width), "qkv_rope_append qkv [T, 3P]")?;
    let args = positional::qkv_rope_append(&p.kernel()?);
    if p.t == 0 {
        return Ok(());
    }
    let name = format!("qkv_rope_append_{}", dt.suffix());
    let cfg = qkv_rope_append_launch(p.t, p.h)?;
    // SAFETY: qkv holds [T, 3P] f32, bias [3P] T, inv_freq [D/2] f32, pos0 one u32, q [T, P] T and
    // both caches [cap, P] T (checked above). Block (t < T, h < H) reads head h's columns of row t
    // of qkv and of bias, inv_freq[..D/2] and pos0, and writes only when p = *pos0 + t < cap
    // (computed in 64 bits): head h's columns of row t of q and of row p of each cache.
    unsafe { gpu.launch(s, &name, cfg, &args) }
}

/// The checks `qkv_rope_append` and `gemv_qkv_rope` (`what`) share, on `p`'s rope fields (`qkv` is
/// the caller's): H >= 1 and an even head dim 2..=QKV_ROPE_MAX_D, use_logn 0 or 1, then bias `[3P]` T,
/// inv_freq `[D/2]` f32, pos0 one u32, q `[T, P]` T and both caches `[cap, P]` T big enough. Returns
/// P = H·D.
pub(super) fn check_rope_operands(what: &str, dt: GpuDType, p: &RopeParams<DevSlice, usize>) -> Result<usize> {
    let (t, h, d, cap) = (p.t, p.h, p.d, p.cap);
    if h == 0 || d == 0 || d % 2 != 0 || d > QKV_ROPE_MAX_D {
        return Err(Error::Backend(format!(
            "internal: {what} needs H >= 1 and an even head dim 2..={QKV_ROPE_MAX_D}, got H = {h}, D = {d}"
        )));
    }
    if p.use_logn > 1 {
        return Err(Error::Backend(format!("internal: {what} use_logn = {}, not 0 or 1", p.use_logn)));
    }
    let width = h * d;
    p.bias.need(3 * width * dt.size(), &format!("{what} bias [3P]"))?;
    p.inv_freq.need(f32_bytes(d / 2), &format!("{what} inv_freq [D/2]"))?;
    p.pos0.need(4, &format!("{what} pos0 [1]"))?;
    p.q.need(t * width * dt.size(), &format!("{what} q [T, P]"))?;
    p.k_cache.need(cap * width * dt.size(), &format!("{what} k_cache [cap, P]"))?;
    p.v_cache.need(cap * width * dt.size(), &format!("{what} v_cache [cap, P]"))?;
    Ok(width)
}
