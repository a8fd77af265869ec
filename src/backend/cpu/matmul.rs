//! Place in the flow: backend::cpu: ops → **matmul** → the executor (mod.rs).
//! `matmul`, the one op that reads the weight matrices: blocked for caches and registers, with a
//! portable kernel and an AVX2 + FMA one, and bit for bit the same output for prefill and decode.
use crate::checkpoint::{decode_f32, DType, TensorView};
use crate::error::Result;
use crate::quant::Linear;
use rayon::prelude::*;

/// Weight rows per parallel task so that each thread gets several tasks.
fn rows_per_task(n: usize) -> usize {
    let tasks = rayon::current_num_threads().max(1) * 8;
    n.div_ceil(tasks).clamp(4, 256)
}

// ---------------------------------------------------------------------------------------------
// Every output y[t, n] is accumulated exactly like `dot(w[n], x[t])`: 16 independent lane
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

/// The matmul of a linear layer whose weight may be quantized (`quant::Linear`): a float view goes
/// through `matmul` above, a `QuantMatrix` through its own exact-dequant matmul
/// (`QuantMatrix::matmul`). Same contract as `matmul`.
pub trait LinearMatmul {
    /// `y[T, N] = x[T, K] · Wᵀ (+ b[N])`.
    fn matmul(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) -> Result<()>;
}

impl LinearMatmul for Linear {
    fn matmul(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
        match self {
            Linear::Dense(w) => matmul(x, w, bias, out),
            Linear::Quant(q) => q.matmul(x, bias, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ops::dot;
    use super::*;

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
}
