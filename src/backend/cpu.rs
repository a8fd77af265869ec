//! The CPU reference backend: the forward pass of spec §2 in plain f32, llama2.c style.
//! It is the oracle for every CUDA kernel (`cpu::rmsnorm` <-> `rmsnorm_bf16` …).
//!
//! Weights stay in the memory map in their stored dtype (bf16 / f16 / f32); a matmul converts one
//! weight row at a time to f32 and dots it with every input row, so a 15 GB bf16 checkpoint runs
//! without ever holding an f32 copy of a matrix. Only the small tensors (norms, the c_attn bias)
//! are converted at load. Activations and the KV cache are f32.
//!
//! Dimension letters: T tokens of this call, C hidden, H heads, D head dim, P = H*D, F mlp width,
//! V vocab rows, K / N the input / output width of a matmul.
use super::LoadOptions;
use crate::checkpoint::{decode_f32, Checkpoint, DType, TensorView};
use crate::config::QwenConfig;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::{self, Model, Sequence};
use crate::weights::Weights;
use rayon::prelude::*;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Ops. Each is the oracle of the CUDA kernel with the same name; they run on the current rayon
// pool (the model's pool inside `forward`, the global one elsewhere).
// ---------------------------------------------------------------------------------------------

/// Dot product with 16 independent f32 accumulators (vectorisable: 2 AVX / 4 SSE registers of
/// independent chains), then a fixed-order tree sum. The order is the same on every CPU.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const W: usize = 16;
    let (ca, cb) = (a.chunks_exact(W), b.chunks_exact(W));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [0f32; W];
    for (x, y) in ca.zip(cb) {
        for i in 0..W {
            acc[i] += x[i] * y[i];
        }
    }
    let mut h = [0f32; 8];
    for i in 0..8 {
        h[i] = acc[i] + acc[i + 8];
    }
    let mut s = ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `out[t] = wte[tokens[t]]`: wte `[V, C]` (any dtype), out `[T, C]`.
pub fn embedding(wte: &TensorView, tokens: &[u32], out: &mut [f32]) -> Result<()> {
    let [v, c] = wte.shape[..] else {
        return Err(wte.error(format!("embedding: expected [V, C], got {:?}", wte.shape)));
    };
    if out.len() != tokens.len() * c {
        return Err(Error::invalid(format!(
            "embedding: output holds {} values, need {} x {c}",
            out.len(),
            tokens.len()
        )));
    }
    for (i, (&id, row)) in tokens.iter().zip(out.chunks_exact_mut(c)).enumerate() {
        if id as usize >= v {
            return Err(Error::invalid(format!("token id {id} at position {i} is out of range (vocab size {v})")));
        }
        wte.read_f32(id as usize * c, row);
    }
    Ok(())
}

/// RMSNorm per row with f32 statistics: `y = x * rsqrt(mean(x²) + eps) * w`.
/// x, out `[T, C]`, w `[C]`.
///
/// # Panics
/// If the lengths are not `[T, C]` / `[C]` (internal invariant: sizes come from the config).
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let c = w.len();
    assert!(c > 0 && x.len() % c == 0 && out.len() == x.len(), "rmsnorm: bad shapes");
    for (xr, yr) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        let inv = 1.0 / (dot(xr, xr) / c as f32 + eps).sqrt();
        for ((y, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
            *y = (xv * inv) * wv;
        }
    }
}

/// Weight rows per parallel task so that each thread gets several tasks.
fn rows_per_task(n: usize) -> usize {
    let tasks = rayon::current_num_threads().max(1) * 8;
    n.div_ceil(tasks).clamp(4, 256)
}

// ---------------------------------------------------------------------------------------------
// Matmul. Every output y[t, n] is accumulated exactly like `dot(w[n], x[t])`: 16 independent lane
// sums (lane i takes k ≡ i mod 16, in increasing k), then `dot`'s fixed reduction tree, then the
// K % 16 tail in order. The loops around that are blocked for the caches and registers, which
// changes no output's arithmetic:
// - registers: a kernel updates R token rows against one weight row, loading each weight vector
//   once for R tokens (R = `TOKEN_BLOCK`, fewer for the last block);
// - L1: K is cut into chunks of `K_CHUNK`; the lane sums live in memory (`acc`) between chunks
//   (an f32 store/load is exact), so a token block's x chunk (R·K_CHUNK values) stays in L1 while
//   a group of `ROW_GROUP` weight rows streams past it;
// - x is packed once per call (`pack_tokens`) so a kernel reads one sequential stream.
// So an output does not depend on T or on where its token falls in a block: prefill (T > 1) gives
// bit for bit the values of token-by-token decode (T = 1).
// ---------------------------------------------------------------------------------------------

/// Lanes of `dot`'s accumulator.
const LANES: usize = 16;

/// Token rows per kernel block (R). With AVX2 a row's 16 lanes take 2 ymm registers: R = 6 uses
/// 12 accumulators + 2 weight vectors of the 16 registers (measured faster than R = 4 or 7).
const TOKEN_BLOCK: usize = 6;
const _: () = assert!(TOKEN_BLOCK >= 1 && TOKEN_BLOCK <= 6); // `Kernel::accumulate` dispatches 1..=6

/// Values of K per cache block (a multiple of 16): a token block's x chunk is 6·1024·4 = 24 KiB.
const K_CHUNK: usize = 1024;
const _: () = assert!(K_CHUNK % LANES == 0);

/// Weight rows decoded to f32 together (for K = 4096: 32·16 KiB = 512 KiB, read from L2) when
/// T > 1. Decode (T = 1) takes one row at a time, which keeps it in L1 (measured ~15% faster).
const ROW_GROUP: usize = 32;

/// Rows per group for T tokens (see `ROW_GROUP`).
fn row_group(t: usize) -> usize {
    if t == 1 {
        1
    } else {
        ROW_GROUP
    }
}

/// Pack x `[T, K]` into consecutive blocks of `TOKEN_BLOCK` rows (the last one may be shorter).
/// A block of rb rows starting at token t0 sits at `t0·K` and is `[K/16][rb][16]` (chunk c of
/// each row, row after row; a K range [k0, k1) of the block is the slice `k0·rb .. k1·rb`), then
/// the tails `[rb][K%16]`. Same size as x; for T = 1 it is x itself.
fn pack_tokens(x: &[f32], k: usize) -> Vec<f32> {
    let body = k - k % LANES;
    let mut packed = Vec::with_capacity(x.len());
    for block in x.chunks(TOKEN_BLOCK * k) {
        for c in (0..body).step_by(LANES) {
            for row in block.chunks_exact(k) {
                packed.extend_from_slice(&row[c..c + LANES]);
            }
        }
        for row in block.chunks_exact(k) {
            packed.extend_from_slice(&row[body..]);
        }
    }
    packed
}

/// Sum `dot`'s 16 lane accumulators in its fixed tree order.
#[inline(always)]
fn reduce_lanes(acc: &[f32]) -> f32 {
    let mut h = [0f32; 8];
    for i in 0..8 {
        h[i] = acc[i] + acc[i + 8];
    }
    ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]))
}

/// Portable kernel (plain Rust, any CPU): `acc[r][i] += w[16c+i] · x[r][16c+i]` for every chunk
/// c, in order — `dot`'s lane updates, bit for bit. w `[KC]` (KC a multiple of 16), xs the packed
/// `[KC/16][R][16]` slice of a token block, acc `[R][16]`.
#[inline(always)]
fn accumulate_portable<const R: usize>(w: &[f32], xs: &[f32], acc: &mut [f32]) {
    // Work on a local copy so the sums stay in registers (2x faster than updating `acc` in place).
    let mut local = [[0f32; LANES]; R];
    for (l, a) in local.iter_mut().zip(acc.chunks_exact(LANES)) {
        l.copy_from_slice(a);
    }
    for (wv, xc) in w.chunks_exact(LANES).zip(xs.chunks_exact(R * LANES)) {
        for (a, xv) in local.iter_mut().zip(xc.chunks_exact(LANES)) {
            for i in 0..LANES {
                a[i] += wv[i] * xv[i];
            }
        }
    }
    for (l, a) in local.iter().zip(acc.chunks_exact_mut(LANES)) {
        a.copy_from_slice(l);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// AVX2 + FMA kernel, same contract as `accumulate_portable`: w `[KC]`, xs packed
    /// `[KC/16][R][16]`, acc `[R][16]`. Lanes 0..8 of a row's accumulator are `lo[r]`, 8..16
    /// `hi[r]`. It fuses multiply and add (one rounding instead of two), so its sums differ from
    /// the portable kernel's in the last bits (within 1e-5 of Σ|w·x|).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn accumulate<const R: usize>(w: &[f32], xs: &[f32], acc: &mut [f32]) {
        let kc = w.len();
        assert!(kc % LANES == 0 && xs.len() == R * kc && acc.len() == R * LANES, "accumulate: bad shapes");
        let (wp, ap) = (w.as_ptr(), acc.as_mut_ptr());
        let mut xc = xs.as_ptr();
        // SAFETY (all pointer reads/writes below): acc is R·16 long; c + 16 <= KC = w.len();
        // xc walks xs (asserted R·KC long) R·16 values per chunk.
        let mut lo = [_mm256_setzero_ps(); R]; // lanes 0..8 of each row's accumulator
        let mut hi = [_mm256_setzero_ps(); R]; // lanes 8..16
        for r in 0..R {
            lo[r] = _mm256_loadu_ps(ap.add(r * LANES));
            hi[r] = _mm256_loadu_ps(ap.add(r * LANES + 8));
        }
        let mut c = 0;
        while c < kc {
            let w0 = _mm256_loadu_ps(wp.add(c));
            let w1 = _mm256_loadu_ps(wp.add(c + 8));
            for r in 0..R {
                let xr = xc.add(r * LANES);
                lo[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), lo[r]);
                hi[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr.add(8)), hi[r]);
            }
            xc = xc.add(R * LANES);
            c += LANES;
        }
        for r in 0..R {
            _mm256_storeu_ps(ap.add(r * LANES), lo[r]);
            _mm256_storeu_ps(ap.add(r * LANES + 8), hi[r]);
        }
    }
    /// bf16 bytes → f32, exactly `decode_f32(bytes, DType::BF16, out)` (a bf16 is the high half of
    /// an f32), 8 values per step. bytes `[2·N]` little-endian, out `[N]`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn decode_bf16(bytes: &[u8], out: &mut [f32]) {
        let n = out.len().min(bytes.len() / 2);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, so bytes[2i .. 2i+16] and out[i .. i+8] are in bounds.
            let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i).cast::<__m128i>()); // 8 × u16
            let v = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)); // 8 × (u32 << 16)
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_castsi256_ps(v));
            i += 8;
        }
        for (o, c) in out[i..n].iter_mut().zip(bytes[2 * i..].chunks_exact(2)) {
            *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
        }
    }
}

/// The lane-update kernel a matmul uses, picked once per call. The same kernel serves T = 1 and
/// T > 1, so prefill and decode agree bit for bit on a given machine.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    /// Plain Rust (SSE2 on the default x86-64 target); bit-identical to `dot`.
    Portable,
    /// AVX2 + FMA, only constructed by `detect` after the CPU features were checked.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Kernel::Avx2Fma;
        }
        Kernel::Portable
    }

    #[inline(always)]
    fn accumulate_r<const R: usize>(self, w: &[f32], xs: &[f32], acc: &mut [f32]) {
        match self {
            Kernel::Portable => accumulate_portable::<R>(w, xs, acc),
            // SAFETY: `Avx2Fma` is only built by `detect` after AVX2 and FMA were detected (the
            // kernel asserts the slice lengths itself).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => unsafe { avx2::accumulate::<R>(w, xs, acc) },
        }
    }

    /// Weight bytes → f32 (`decode_f32`, with an exact AVX2 path for bf16).
    #[inline]
    fn decode(self, bytes: &[u8], dtype: DType, out: &mut [f32]) {
        match (self, dtype) {
            // SAFETY: `Avx2Fma` is only built by `detect` after AVX2 was detected.
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2Fma, DType::BF16) => unsafe { avx2::decode_bf16(bytes, out) },
            _ => decode_f32(bytes, dtype, out),
        }
    }

    /// Lane updates of one token block of rb = `acc.len() / 16` rows (1..=TOKEN_BLOCK):
    /// w `[KC]`, xs packed `[KC/16][rb][16]`, acc `[rb][16]`.
    #[inline]
    fn accumulate(self, w: &[f32], xs: &[f32], acc: &mut [f32]) {
        match acc.len() / LANES {
            1 => self.accumulate_r::<1>(w, xs, acc),
            2 => self.accumulate_r::<2>(w, xs, acc),
            3 => self.accumulate_r::<3>(w, xs, acc),
            4 => self.accumulate_r::<4>(w, xs, acc),
            5 => self.accumulate_r::<5>(w, xs, acc),
            _ => self.accumulate_r::<TOKEN_BLOCK>(w, xs, acc),
        }
    }
}

/// Per-thread scratch of `matmul_rows`.
struct Scratch {
    /// A group's weight rows in f32: `[G, K]` (G = `row_group(T)`).
    w: Vec<f32>,
    /// Lane sums of a group: `[G, T, 16]`.
    acc: Vec<f32>,
}

/// One matmul task: weight rows `wb` (`[NR, K]` stored bytes, global row index from `first`)
/// times every input row of x `[T, K]` (packed: `xp`), into `y` `[NR, T]` (transposed).
#[allow(clippy::too_many_arguments)]
fn matmul_rows(
    kernel: Kernel,
    xp: &[f32],
    k: usize,
    wb: &[u8],
    dtype: DType,
    bias: Option<&[f32]>,
    first: usize,
    y: &mut [f32],
    s: &mut Scratch,
) {
    let (t, es) = (xp.len() / k, dtype.size());
    let body = k - k % LANES;
    let e = k - body;
    let group = row_group(t);
    for (g, (yg, wg)) in y.chunks_mut(group * t).zip(wb.chunks(group * k * es)).enumerate() {
        let nr = yg.len() / t; // rows in this group
        let acc = &mut s.acc[..nr * t * LANES]; // [nr, T, 16]
        acc.fill(0.0);
        // Decode the group's rows in order (a sequential read of the weights); [nr, K] f32.
        let wg32 = &mut s.w[..nr * k];
        for (wf, wr) in wg32.chunks_exact_mut(k).zip(wg.chunks_exact(k * es)) {
            kernel.decode(wr, dtype, wf);
        }
        for k0 in (0..body).step_by(K_CHUNK) {
            let kc = K_CHUNK.min(body - k0);
            for t0 in (0..t).step_by(TOKEN_BLOCK) {
                let rb = TOKEN_BLOCK.min(t - t0);
                let xs = &xp[t0 * k + k0 * rb..][..kc * rb]; // [kc/16, rb, 16]
                for (wf, ar) in wg32.chunks_exact(k).zip(acc.chunks_exact_mut(t * LANES)) {
                    kernel.accumulate(&wf[k0..][..kc], xs, &mut ar[t0 * LANES..][..rb * LANES]);
                }
            }
        }
        // y = reduce(lanes) + tail in order + bias, like `dot(w, x) + b`.
        let rows = yg.chunks_exact_mut(t).zip(acc.chunks_exact(t * LANES)).zip(wg32.chunks_exact(k));
        for (r, ((yr, ar), wf)) in rows.enumerate() {
            let b = bias.map_or(0.0, |b| b[first + g * group + r]);
            for (ti, (yv, a)) in yr.iter_mut().zip(ar.chunks_exact(LANES)).enumerate() {
                let t0 = ti / TOKEN_BLOCK * TOKEN_BLOCK; // first token of ti's block
                let rb = TOKEN_BLOCK.min(t - t0);
                let xt = &xp[t0 * k + body * rb + (ti - t0) * e..][..e]; // this token's tail [K%16]
                let mut sum = reduce_lanes(a);
                for (wv, xv) in wf[body..].iter().zip(xt) {
                    sum += wv * xv;
                }
                *yv = sum + b; // also for b = 0 (keeps -0 + 0 = +0 as `dot(..) + b` did)
            }
        }
    }
}

/// `y[T, N] = x[T, K] · W[N, K]ᵀ (+ b[N])`, W a view of any dtype, converted to f32 one K chunk
/// of a group of rows at a time (never a whole matrix); parallel over N.
pub fn matmul(x: &[f32], w: &TensorView, bias: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
    let [n, k] = w.shape[..] else {
        return Err(w.error(format!("matmul: expected a matrix [N, K], got {:?}", w.shape)));
    };
    if k == 0 || n == 0 || x.len() % k != 0 || x.is_empty() {
        return Err(w.error(format!("matmul: input of {} values is not [T, {k}]", x.len())));
    }
    let t = x.len() / k;
    if out.len() != t * n {
        return Err(w.error(format!("matmul: output holds {} values, need [{t}, {n}]", out.len())));
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(w.error(format!("matmul: bias has {} values, need {n}", b.len())));
        }
    }
    // Result transposed: [N, T] (for T = 1 that is already [T, N]).
    let mut transposed = if t == 1 { Vec::new() } else { vec![0f32; n * t] };
    let y_nt: &mut [f32] = if t == 1 { out } else { &mut transposed };
    let rows = rows_per_task(n);
    let kernel = Kernel::detect();
    let packed = if t == 1 { Vec::new() } else { pack_tokens(x, k) }; // [T, K] in token blocks
    let xp: &[f32] = if t == 1 { x } else { &packed };
    let (bytes, dtype, es) = (w.bytes(), w.dtype, w.dtype.size());
    y_nt.par_chunks_mut(rows * t).enumerate().for_each_init(
        || Scratch { w: vec![0f32; row_group(t) * k], acc: vec![0f32; row_group(t) * t * LANES] },
        |scratch, (task, chunk)| {
            let wb = &bytes[task * rows * k * es..][..chunk.len() / t * k * es]; // this task's weight rows
            matmul_rows(kernel, xp, k, wb, dtype, bias, task * rows, chunk, scratch);
        },
    );
    if t > 1 {
        for (ni, col) in transposed.chunks_exact(t).enumerate() {
            for (ti, &v) in col.iter().enumerate() {
                out[ti * n + ni] = v;
            }
        }
    }
    Ok(())
}

/// Rotary embedding, rotate-half (GPT-NeoX) layout, in place. x `[T, H*D]`; row t is at absolute
/// position `pos0 + t`; θ_j = pos · inv_freq[j] (f32 multiply, like torch's outer product),
/// `x'[j] = x[j]·cos θ_j − x[j+D/2]·sin θ_j`, `x'[j+D/2] = x[j+D/2]·cos θ_j + x[j]·sin θ_j`.
///
/// # Panics
/// If `inv_freq.len() != D/2` or x is not `[T, H*D]` (internal invariant).
pub fn rope(x: &mut [f32], h: usize, d: usize, pos0: usize, inv_freq: &[f32]) {
    let half = d / 2;
    assert!(d % 2 == 0 && inv_freq.len() == half && h > 0 && x.len() % (h * d) == 0, "rope: bad shapes");
    let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
    for (t, row) in x.chunks_exact_mut(h * d).enumerate() {
        let pos = (pos0 + t) as f32;
        for j in 0..half {
            let theta = pos * inv_freq[j];
            (cos[j], sin[j]) = (theta.cos(), theta.sin());
        }
        for head in row.chunks_exact_mut(d) {
            let (lo, hi) = head.split_at_mut(half);
            for j in 0..half {
                let (x1, x2) = (lo[j], hi[j]);
                lo[j] = x1 * cos[j] - x2 * sin[j];
                hi[j] = x2 * cos[j] + x1 * sin[j];
            }
        }
    }
}

/// Causal attention with an offset, per head, parallel over (token, head).
/// q `[T, H*D]` (after RoPE and logN), k / v `[Tk, H*D]` with Tk >= pos0 + T (cache rows),
/// out `[T, H*D]`. The query of row t is at absolute position p = pos0 + t and attends keys 0..=p:
/// `softmax(q·kᵀ / √D)` in f32 with max subtraction, then the weighted sum of v.
///
/// # Panics
/// If the shapes disagree (internal invariant).
pub fn attention(q: &[f32], k: &[f32], v: &[f32], pos0: usize, h: usize, d: usize, out: &mut [f32]) {
    let w = h * d;
    assert!(w > 0 && q.len() % w == 0 && out.len() == q.len() && k.len() == v.len(), "attention: bad shapes");
    let t = q.len() / w;
    assert!(k.len() >= (pos0 + t) * w, "attention: {} key rows, need {}", k.len() / w, pos0 + t);
    let scale = model::attention_scale(d);
    // out as [T*H, D]: chunk i is token i / H, head i % H.
    out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (i, o)| {
        let (ti, head) = (i / h, i % h);
        let qh = &q[ti * w + head * d..][..d];
        attend_one(qh, k, v, pos0 + ti, w, head * d, scale, scores, o);
    });
}

/// One query row of one head at position p: keys/values rows 0..=p, columns `col..col+D` of the
/// `[rows, W]` cache; `scores` is scratch, `o` `[D]` receives the output.
#[allow(clippy::too_many_arguments)]
#[inline]
fn attend_one(
    qh: &[f32],
    k: &[f32],
    v: &[f32],
    p: usize,
    w: usize,
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    o: &mut [f32],
) {
    let d = qh.len();
    scores.clear();
    scores.extend((0..=p).map(|j| dot(qh, &k[j * w + col..][..d]) * scale)); // [p+1]
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    o.fill(0.0);
    for (j, &e) in scores.iter().enumerate() {
        let pj = e / sum;
        for (ov, &vv) in o.iter_mut().zip(&v[j * w + col..][..d]) {
            *ov += pj * vv;
        }
    }
}

/// SwiGLU of the Qwen MLP: `out = up * silu(gate)`, silu(g) = g / (1 + e^-g).
/// up = w1(x), gate = w2(x) (w2 is the gate). All `[T, F]`.
///
/// # Panics
/// If the lengths differ (internal invariant).
pub fn swiglu(up: &[f32], gate: &[f32], out: &mut [f32]) {
    assert!(up.len() == gate.len() && out.len() == up.len(), "swiglu: bad shapes");
    for ((o, &u), &g) in out.iter_mut().zip(up).zip(gate) {
        *o = u * (g / (1.0 + (-g).exp()));
    }
}

/// Residual add: `x += y`.
///
/// # Panics
/// If the lengths differ (internal invariant).
pub fn add(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add: bad shapes");
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

// ---------------------------------------------------------------------------------------------
// The model.
// ---------------------------------------------------------------------------------------------

/// A Qwen v1 model on the CPU: weight views into the mmap + f32 copies of the small tensors.
pub struct CpuModel {
    config: QwenConfig,
    weights: Weights,
    /// Per layer `[C]` f32.
    ln_1: Vec<Vec<f32>>,
    /// Per layer `[3P]` f32.
    c_attn_b: Vec<Vec<f32>>,
    /// Per layer `[C]` f32.
    ln_2: Vec<Vec<f32>>,
    /// `[C]` f32.
    ln_f: Vec<f32>,
    pool: rayon::ThreadPool,
}

/// A small tensor as f32, checked to hold `n` values.
fn small_f32(t: &TensorView, n: usize) -> Result<Vec<f32>> {
    if t.numel() != n {
        return Err(t.error(format!("expected {n} values, got shape {:?}", t.shape)));
    }
    Ok(t.to_f32_vec())
}

impl CpuModel {
    /// Resolve the weights of `ck` (no copy of the matrices) and start `opts.threads` workers
    /// (0 = all cores).
    pub fn load(ck: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        let weights = Weights::from_checkpoint(ck)?;
        let config = weights.config.clone();
        let (c, p) = (config.hidden_size, config.proj_size());
        if weights.layers.len() != config.num_layers {
            return Err(Error::bad_file(
                &ck.dir,
                format!("{} layers of weights for {} in the config", weights.layers.len(), config.num_layers),
            ));
        }
        let mut ln_1 = Vec::new();
        let mut c_attn_b = Vec::new();
        let mut ln_2 = Vec::new();
        for l in &weights.layers {
            ln_1.push(small_f32(&l.ln_1, c)?);
            c_attn_b.push(small_f32(&l.c_attn_b, 3 * p)?);
            ln_2.push(small_f32(&l.ln_2, c)?);
        }
        let ln_f = small_f32(&weights.ln_f, c)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .thread_name(|i| format!("qwen-cpu-{i}"))
            .build()
            .map_err(|e| Error::Backend(format!("cannot start {} CPU threads: {e}", opts.threads)))?;
        Ok(CpuModel { config, weights, ln_1, c_attn_b, ln_2, ln_f, pool })
    }

    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Worker threads of this model's pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The forward pass of spec §2.3 for `tokens` at positions `pos0..pos0+T`. The caller has
    /// validated the ids and reserved cache rows `0..pos0+T`; K/V are written at `pos0..`, the
    /// cache length is not advanced. Returns logits `[T, V]` or `[V]` (last token).
    fn forward_tokens(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        pos0: usize,
        inv_freq: &[f32],
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let w = &self.weights;
        let (t, c, h, d, f, v) =
            (tokens.len(), cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_width, cfg.vocab_size);
        let p = h * d;
        let eps = cfg.layer_norm_epsilon;
        let mut x = vec![0f32; t * c]; // [T, C] residual stream
        embedding(&w.wte, tokens, &mut x)?;
        let mut a = vec![0f32; t * c]; // [T, C] normed
        let mut qkv = vec![0f32; t * 3 * p]; // [T, 3P]
        let (mut q, mut k, mut vv) = (vec![0f32; t * p], vec![0f32; t * p], vec![0f32; t * p]); // [T, P] each
        let mut att = vec![0f32; t * p]; // [T, P]
        let mut y = vec![0f32; t * c]; // [T, C]
        let (mut up, mut gate) = (vec![0f32; t * f], vec![0f32; t * f]); // [T, F] each
        let mut g = vec![0f32; t * f]; // [T, F]
        for (l, lw) in w.layers.iter().enumerate() {
            rmsnorm(&x, &self.ln_1[l], eps, &mut a);
            matmul(&a, &lw.c_attn_w, Some(&self.c_attn_b[l]), &mut qkv)?;
            for (ti, row) in qkv.chunks_exact(3 * p).enumerate() {
                let dst = ti * p..(ti + 1) * p;
                q[dst.clone()].copy_from_slice(&row[..p]);
                k[dst.clone()].copy_from_slice(&row[p..2 * p]);
                vv[dst].copy_from_slice(&row[2 * p..]);
            }
            rope(&mut q, h, d, pos0, inv_freq);
            rope(&mut k, h, d, pos0, inv_freq);
            for (ti, row) in q.chunks_exact_mut(p).enumerate() {
                let s = model::logn_scale(cfg, pos0 + ti);
                if s != 1.0 {
                    row.iter_mut().for_each(|e| *e *= s);
                }
            }
            cache.write(l, pos0, &k, &vv);
            let (kc, vc) = cache.layer(l, pos0 + t); // [pos0+T, P] each
            attention(&q, kc, vc, pos0, h, d, &mut att);
            matmul(&att, &lw.c_proj, None, &mut y)?;
            add(&mut x, &y);
            rmsnorm(&x, &self.ln_2[l], eps, &mut a);
            matmul(&a, &lw.w1, None, &mut up)?;
            matmul(&a, &lw.w2, None, &mut gate)?;
            swiglu(&up, &gate, &mut g);
            matmul(&g, &lw.mlp_c_proj, None, &mut y)?;
            add(&mut x, &y);
        }
        let rows = if all_logits { &x[..] } else { &x[(t - 1) * c..] }; // [T', C]
        let mut hn = vec![0f32; rows.len()];
        rmsnorm(rows, &self.ln_f, eps, &mut hn);
        let mut logits = vec![0f32; rows.len() / c * v]; // [T', V]
        matmul(&hn, &w.lm_head, None, &mut logits)?;
        Ok(logits)
    }
}

impl Model for CpuModel {
    fn config(&self) -> &QwenConfig {
        &self.config
    }
    fn backend_name(&self) -> &'static str {
        "cpu"
    }
    fn new_sequence(self: Arc<Self>, max_seq_len: usize) -> Result<Box<dyn Sequence>> {
        model::check_capacity(&self.config, max_seq_len)?;
        let cache = KvCache::new(self.config.num_layers, self.config.proj_size(), max_seq_len);
        let inv_freq = model::inv_freq(&self.config, 1.0);
        Ok(Box::new(CpuSequence { model: self, cache, alpha: 1.0, inv_freq }))
    }
}

/// One sequence on a `CpuModel`: its KV cache and the NTK alpha fixed by its prefill.
pub struct CpuSequence {
    model: Arc<CpuModel>,
    cache: KvCache,
    /// Dynamic-NTK alpha in force (1 before any prefill).
    alpha: f64,
    /// `[D/2]` inverse frequencies for `alpha`.
    inv_freq: Vec<f32>,
}

impl CpuSequence {
    /// Rows of KV cache memory allocated (grows on demand up to the capacity).
    pub fn allocated_rows(&self) -> usize {
        self.cache.allocated_rows()
    }
}

impl Sequence for CpuSequence {
    fn config(&self) -> &QwenConfig {
        &self.model.config
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn capacity(&self) -> usize {
        self.cache.capacity()
    }
    fn reset(&mut self) {
        self.cache.clear();
        self.alpha = 1.0;
        self.inv_freq = model::inv_freq(&self.model.config, 1.0);
    }
    fn ntk_alpha(&self) -> f64 {
        self.alpha
    }
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let cfg = &self.model.config;
        model::check_forward(cfg, tokens, self.cache.len(), self.cache.capacity())?;
        let (pos0, t) = (self.cache.len(), tokens.len());
        // Prefill fixes alpha from the prompt length; decode reuses it (spec §3.1).
        let prefill = if pos0 == 0 {
            let alpha = model::ntk_alpha(cfg, t);
            Some((alpha, model::inv_freq(cfg, alpha)))
        } else {
            None
        };
        self.cache.reserve(pos0 + t)?;
        let inv_freq = prefill.as_ref().map_or(&self.inv_freq[..], |(_, f)| &f[..]);
        let model = &self.model;
        let cache = &mut self.cache;
        let logits = model.pool.install(|| model.forward_tokens(cache, tokens, pos0, inv_freq, all_logits))?;
        model.weights.check_mapped()?; // a weight file truncated under us: the logits are garbage
        self.cache.advance(t);
        if let Some((alpha, inv_freq)) = prefill {
            self.alpha = alpha;
            self.inv_freq = inv_freq;
        }
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-5);
    }

    /// Deterministic values in [-1, 1).
    fn vals(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1; // xorshift64
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// The matmul core without a TensorView: w `[N, K]` stored as `dtype` bytes, x `[T, K]`;
    /// returns y `[N, T]` (transposed, as `matmul_rows` writes it).
    fn run(kernel: Kernel, x: &[f32], w: &[f32], k: usize, dtype: DType, bias: Option<&[f32]>) -> Vec<f32> {
        let (t, n) = (x.len() / k, w.len() / k);
        let wb = run_bytes(w, dtype);
        let xp = if t == 1 { x.to_vec() } else { pack_tokens(x, k) };
        let mut y = vec![0f32; n * t];
        let mut s = Scratch { w: vec![0f32; row_group(t) * k], acc: vec![0f32; row_group(t) * t * LANES] };
        matmul_rows(kernel, &xp, k, &wb, dtype, bias, 0, &mut y, &mut s);
        y
    }

    /// K values covering: shorter than a chunk of 16, a tail, several K chunks plus a tail.
    const KS: [usize; 3] = [7, 37, 2 * K_CHUNK + 48 + 5];

    #[test]
    fn portable_matmul_is_dot_bit_for_bit() {
        for k in KS {
            for t in [1usize, 5, 13] {
                let (n, x) = (40, vals(t * k, 1));
                let w = vals(n * k, 2);
                let b = vals(n, 3);
                let y = run(Kernel::Portable, &x, &w, k, DType::F32, Some(&b));
                for (ni, yr) in y.chunks_exact(t).enumerate() {
                    for (ti, &v) in yr.iter().enumerate() {
                        let want = dot(&w[ni * k..][..k], &x[ti * k..][..k]) + b[ni];
                        assert_eq!(v.to_bits(), want.to_bits(), "k={k} t={t} n={ni} t={ti}");
                    }
                }
            }
        }
    }

    #[test]
    fn dispatched_matmul_prefill_equals_decode_and_is_close_to_portable() {
        let kernel = Kernel::detect();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            for k in KS {
                let (n, t) = (40, 13);
                let (x, w, b) = (vals(t * k, 4), vals(n * k, 5), vals(n, 6));
                let y = run(kernel, &x, &w, k, dtype, Some(&b)); // [N, T]
                let yp = run(Kernel::Portable, &x, &w, k, dtype, Some(&b));
                // The weights as the kernels see them (bf16 / f16 rounded), for the error bound.
                let mut wf = vec![0f32; w.len()];
                let wb = run_bytes(&w, dtype);
                decode_f32(&wb, dtype, &mut wf);
                for ti in 0..t {
                    let x1 = &x[ti * k..][..k];
                    let y1 = run(kernel, x1, &w, k, dtype, Some(&b)); // T = 1: [N]
                    for ni in 0..n {
                        let v = y[ni * t + ti];
                        assert_eq!(v.to_bits(), y1[ni].to_bits(), "{dtype:?} k={k} n={ni} t={ti}");
                        // Relative to Σ|w·x| + |b| (a plain relative error is unbounded under cancellation).
                        let wr = &wf[ni * k..][..k];
                        let mag: f32 = wr.iter().zip(x1).map(|(a, c)| (a * c).abs()).sum::<f32>() + b[ni].abs();
                        let want = yp[ni * t + ti];
                        assert!((v - want).abs() <= 1e-5 * mag, "{kernel:?} vs portable: {v} vs {want} (k={k})");
                    }
                }
            }
        }
    }

    fn run_bytes(w: &[f32], dtype: DType) -> Vec<u8> {
        match dtype {
            DType::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::BF16 => w.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
            DType::F16 => w.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        }
    }

    #[test]
    fn dispatched_decode_matches_decode_f32() {
        let w = vals(37, 7);
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let bytes = run_bytes(&w, dtype);
            let (mut a, mut b) = (vec![0f32; 37], vec![1f32; 37]);
            decode_f32(&bytes, dtype, &mut a);
            Kernel::detect().decode(&bytes, dtype, &mut b);
            let bits = |v: &[f32]| v.iter().map(|e| e.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{dtype:?}");
        }
    }

    #[test]
    fn attention_first_query_sees_only_first_key() {
        // H=1, D=2, T=2, pos0=0: query 0 must return v[0] exactly whatever the keys.
        let q = [1.0, 0.0, 0.5, 0.5];
        let k = [0.3, -1.0, 9.0, 9.0];
        let v = [2.0, 3.0, -7.0, 5.0];
        let mut out = [0f32; 4];
        attention(&q, &k, &v, 0, 1, 2, &mut out);
        assert_eq!(&out[..2], &[2.0, 3.0]);
        // Query 1 attends both keys with softmax weights.
        let s = [(0.5 * 0.3 - 0.5) / 2f32.sqrt(), 9.0 / 2f32.sqrt()];
        let m = s[1];
        let e = [(s[0] - m).exp(), 1.0];
        let p0 = e[0] / (e[0] + e[1]);
        let want = [p0 * 2.0 + (1.0 - p0) * -7.0, p0 * 3.0 + (1.0 - p0) * 5.0];
        assert!((out[2] - want[0]).abs() < 1e-5 && (out[3] - want[1]).abs() < 1e-5, "{out:?} vs {want:?}");
    }

    #[test]
    fn rope_position_zero_is_identity_and_rotation_preserves_norm() {
        let inv = [1.0f32, 0.1];
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0, 0.5, -1.0, 2.0, 0.25]; // T=2, H=1, D=4
        let orig = x.clone();
        rope(&mut x, 1, 4, 0, &inv);
        assert_eq!(&x[..4], &orig[..4]);
        let n0: f32 = orig[4..].iter().map(|e| e * e).sum();
        let n1: f32 = x[4..].iter().map(|e| e * e).sum();
        assert!((n0 - n1).abs() < 1e-5);
        // pair (j=0): (x[0], x[2]) rotated by θ = 1 · 1.0
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert!((x[4] - (0.5 * c - 2.0 * s)).abs() < 1e-6 && (x[6] - (2.0 * c + 0.5 * s)).abs() < 1e-6);
    }
}
