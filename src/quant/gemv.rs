//! The fused dequant-dot kernels of the quantized matmul: the dot products of one packed weight
//! row (NF4 or Int8) with a block of R token rows, decoding each weight in registers from the
//! packed bytes (never an f32 copy of the row). Every weight is exactly the dequantized value the
//! oracle defines (`QuantMatrix::decode_rows`: NF4 `NF4_CODE[q] · absmax`, Int8
//! `(q · SCB) · INV_127`, each one f32 rounding); only the order of the sums is this file's own.
//!
//! The one summation order (every kernel computes it, so portable and AVX2 agree bit for bit, and
//! an output does not depend on R, i.e. prefill equals decode):
//! - 16 lane sums, each updated with a fused multiply-add `acc = fma(w, x, acc)` in increasing k;
//! - Int8: lane i takes k ≡ i (mod 16) of the first `K - K % 16` inputs;
//! - NF4: the body is the row's whole 64-blocks (the row may start and end inside a block of the
//!   flattened weight); in each 16-input chunk of the body, byte j holds inputs 2j (high nibble)
//!   and 2j+1 (low nibble), which go to lanes j and 8 + j (so x is packed deinterleaved: see
//!   `pack_x`); and there are two sets of 16 lane sums: the body's even chunks (0, 2, ..) go to
//!   set A, the odd ones to set B, and the lanes are combined `A + B` before the reduction (four
//!   independent FMA chains per token instead of two: a single token's decode is otherwise bound
//!   by the FMA latency, not by the loads);
//! - then `reduce` (the fixed tree of `simd`), then the inputs outside the body (NF4: the head
//!   before the first whole block, then the tail; Int8: the last K % 16) in increasing k with a
//!   separate multiply and add: `s = s + w · x`.
//!
//! The portable kernel spells this out with `f32::mul_add` (a libm call on CPUs without FMA: slow
//! but exact); the AVX2 + FMA kernel decodes 16 NF4 weights with two 8-entry table lookups
//! (`vpermps` on the code table times the block's absmax, one multiply per 64 weights) and a blend
//! on the code's top bit (`Kernel::Avx512Vl`: one two-table `vpermi2ps` instead), or 16 Int8
//! weights with sign extension, conversion and the two scale multiplies.
use super::nf4::{Absmax, BLOCK, NF4_CODE};
use super::simd::{reduce, Kernel, LANES};

/// Most token rows one kernel call serves (the AVX2 kernel keeps 2·R accumulators in registers).
pub const MAX_R: usize = 4;

/// Where a row's NF4 body lies: the row's flattened start `e0 = n·K`; returns (h, blocks): the
/// body is inputs `h .. h + 64·blocks` of the row (h < 64: the head before the first whole block).
#[inline]
pub fn nf4_body(e0: usize, k: usize) -> (usize, usize) {
    let h = (BLOCK - e0 % BLOCK) % BLOCK;
    (h, k.saturating_sub(h) / BLOCK)
}

/// Which lane order x is packed in: Int8 takes a chunk's 16 inputs in order, NF4 deinterleaved
/// (even inputs then odd ones, the order the nibbles unpack in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lanes {
    Natural,
    Deinterleaved,
}

/// Pack inputs `h .. h + body` (body a multiple of 16) of every row of x `[T, K]` for the kernels:
/// token blocks of `MAX_R` rows (the last may be shorter); a block of rb rows starting at token t0
/// sits at `t0 · body` and is `[body/16][rb][16]` in `lanes` order. out: `[T · body]`.
pub fn pack_x(x: &[f32], k: usize, h: usize, body: usize, lanes: Lanes, out: &mut Vec<f32>) {
    debug_assert!(body % LANES == 0 && (body == 0 || h + body <= k));
    out.clear();
    out.reserve(x.len() / k * body);
    for block in x.chunks(MAX_R * k) {
        for c in (h..h + body).step_by(LANES) {
            for row in block.chunks_exact(k) {
                let v = &row[c..c + LANES];
                match lanes {
                    Lanes::Natural => out.extend_from_slice(v),
                    Lanes::Deinterleaved => {
                        out.extend(v.iter().step_by(2));
                        out.extend(v.iter().skip(1).step_by(2));
                    }
                }
            }
        }
    }
}

/// The NF4 weight of flattened element e (`decode_rows`'s value).
#[inline]
fn nf4_weight(codes: &[u8], absmax: &Absmax, e: usize) -> f32 {
    let byte = codes[e / 2];
    let q = if e % 2 == 0 { byte >> 4 } else { byte & 15 };
    NF4_CODE[q as usize] * absmax.get(e / BLOCK)
}

/// Sums of one NF4 row `n` (flattened start `e0 = n·K`) with R token rows.
/// codes: the whole tensor's packed bytes; am: the absmax of the row's body blocks `[blocks]`
/// (`nf4_body`); xs: the packed body of the token block (`pack_x` with this row's h,
/// `[body/16][R][16]`); x: the token rows `[R, K]` (head and tail). Returns the R sums (no bias).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn nf4_row<const R: usize>(
    kernel: Kernel,
    codes: &[u8],
    absmax: &Absmax,
    e0: usize,
    k: usize,
    am: &[f32],
    xs: &[f32],
    x: &[f32],
) -> [f32; R] {
    let (h, blocks) = nf4_body(e0, k);
    debug_assert!(am.len() == blocks && xs.len() == R * blocks * BLOCK && x.len() == R * k);
    let mut acc = [[0f32; LANES]; R];
    if blocks > 0 {
        let body = &codes[(e0 + h) / 2..][..blocks * BLOCK / 2];
        match kernel {
            Kernel::Portable => nf4_body_portable::<R>(body, am, xs, &mut acc),
            // SAFETY: `Avx2` is only constructed by `Kernel::detect` after AVX2 and FMA were
            // detected; body holds 32 bytes per block, xs R·64 values per block (asserted there).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::nf4_body::<R, false>(body, am, xs, &mut acc) },
            // SAFETY: `Avx512Vl` is only constructed by `Kernel::detect` after AVX2, FMA, AVX-512F
            // and AVX-512VL were detected; same bounds as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vl => unsafe { avx2::nf4_body::<R, true>(body, am, xs, &mut acc) },
        }
    }
    let outside = (0..h.min(k)).chain(h + blocks * BLOCK..k);
    std::array::from_fn(|r| {
        let xr = &x[r * k..][..k];
        let mut s = reduce(&acc[r]);
        for i in outside.clone() {
            s += nf4_weight(codes, absmax, e0 + i) * xr[i];
        }
        s
    })
}

/// The NF4 body in plain Rust: the contract of `nf4_row`'s body, bit for bit the AVX2 kernel.
fn nf4_body_portable<const R: usize>(body: &[u8], am: &[f32], xs: &[f32], acc: &mut [[f32; LANES]; R]) {
    let mut sets = [[[0f32; LANES]; R]; 2]; // A: even chunks of the body, B: odd ones
    for ((blk, &a), xb) in body.chunks_exact(BLOCK / 2).zip(am).zip(xs.chunks_exact(R * BLOCK)) {
        let tab: [f32; 16] = std::array::from_fn(|c| NF4_CODE[c] * a); // the block's dequantized codes
        for (c, (chunk, xc)) in blk.chunks_exact(LANES / 2).zip(xb.chunks_exact(R * LANES)).enumerate() {
            for (a, xv) in sets[c % 2].iter_mut().zip(xc.chunks_exact(LANES)) {
                for (j, &byte) in chunk.iter().enumerate() {
                    a[j] = tab[(byte >> 4) as usize].mul_add(xv[j], a[j]);
                    a[8 + j] = tab[(byte & 15) as usize].mul_add(xv[8 + j], a[8 + j]);
                }
            }
        }
    }
    for (r, a) in acc.iter_mut().enumerate() {
        *a = std::array::from_fn(|i| sets[0][r][i] + sets[1][r][i]);
    }
}

/// Sums of one Int8 row (codes `[K]`, scale `scb`) with R token rows. xs: the packed token block
/// (`pack_x` with h = 0, body = K - K % 16, natural lanes: `[body/16][R][16]`); x: the token rows
/// `[R, K]` (the tail). Returns the R sums (no bias).
#[inline]
pub fn int8_row<const R: usize>(kernel: Kernel, codes: &[u8], scb: f32, k: usize, xs: &[f32], x: &[f32]) -> [f32; R] {
    let body = k - k % LANES;
    debug_assert!(codes.len() == k && xs.len() == R * body && x.len() == R * k);
    let mut acc = [[0f32; LANES]; R];
    match kernel {
        Kernel::Portable => int8_body_portable::<R>(&codes[..body], scb, xs, &mut acc),
        // SAFETY: `Avx2` and `Avx512Vl` are only constructed by `Kernel::detect` after (at least)
        // AVX2 and FMA were detected; the kernel asserts the slice lengths.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Avx512Vl => unsafe { avx2::int8_body::<R>(&codes[..body], scb, xs, &mut acc) },
    }
    std::array::from_fn(|r| {
        let xr = &x[r * k..][..k];
        let mut s = reduce(&acc[r]);
        for i in body..k {
            s += int8_weight(codes[i], scb) * xr[i];
        }
        s
    })
}

/// The Int8 weight of code c (`int8::dequantize_row`'s value).
#[inline(always)]
fn int8_weight(c: u8, scb: f32) -> f32 {
    (c as i8 as f32 * scb) * super::int8::INV_127
}

/// The Int8 body in plain Rust, bit for bit the AVX2 kernel.
fn int8_body_portable<const R: usize>(body: &[u8], scb: f32, xs: &[f32], acc: &mut [[f32; LANES]; R]) {
    for (chunk, xc) in body.chunks_exact(LANES).zip(xs.chunks_exact(R * LANES)) {
        let w: [f32; LANES] = std::array::from_fn(|i| int8_weight(chunk[i], scb));
        for (a, xv) in acc.iter_mut().zip(xc.chunks_exact(LANES)) {
            for i in 0..LANES {
                a[i] = w[i].mul_add(xv[i], a[i]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::int8::INV_127;
    use super::{BLOCK, LANES, NF4_CODE};
    use std::arch::x86_64::*;

    /// The 16-entry lookup `[t0 | t1][idx & 15]` by AVX-512VL's two-table permute (`vpermi2ps`:
    /// index bits 0..2 pick a lane, bit 3 the table), in inline assembly so that the crate's
    /// minimum Rust (1.85, before the AVX-512 intrinsics) builds it.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512VL.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn lookup_vl(t0: __m256, t1: __m256, idx: __m256i) -> __m256 {
        let mut v = _mm256_castsi256_ps(idx);
        // SAFETY: register-only instruction, available per the caller's contract.
        std::arch::asm!(
            "vpermi2ps {v:y}, {t0:y}, {t1:y}",
            v = inout(ymm_reg) v,
            t0 = in(ymm_reg) t0,
            t1 = in(ymm_reg) t1,
            options(pure, nomem, nostack, preserves_flags),
        );
        v
    }

    /// The same lookup in AVX2: two 8-entry `vpermps` (index bits 0..2) and a blend on `sel`'s
    /// sign bit (the code's bit 3 moved there).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn lookup_avx2(t0: __m256, t1: __m256, idx: __m256i, sel: __m256i) -> __m256 {
        _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, idx), _mm256_permutevar8x32_ps(t1, idx), _mm256_castsi256_ps(sel))
    }

    /// `nf4_body_portable` with lanes 0..8 of each token's sums in `lo[r]`, 8..16 in `hi[r]`.
    /// body `[blocks · 32]` bytes, am `[blocks]`, xs `[blocks · 4][R][16]`. `VL`: the lookups by
    /// `lookup_vl` (same values, fewer instructions).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA, and with `VL` AVX-512F and AVX-512VL.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn nf4_body<const R: usize, const VL: bool>(
        body: &[u8],
        am: &[f32],
        xs: &[f32],
        acc: &mut [[f32; LANES]; R],
    ) {
        let blocks = am.len();
        assert!(body.len() == blocks * BLOCK / 2 && xs.len() == blocks * BLOCK * R, "nf4_body: bad shapes");
        // Sets A (even chunks) and B (odd chunks): lanes 0..8 in lo, 8..16 in hi. Up to 2 tokens both
        // sets in one pass (4R accumulators); more tokens one pass per set (2R accumulators: 4R would
        // spill; measured 2026-12-04: the two passes cost 4096x4096 T=16 +23 % over the one-set
        // order of before, a single spilling pass +29 %, two passes of 2 tokens each +41 %).
        let (lo, hi) = if R <= 2 {
            nf4_pass::<R, VL, 2, 0>(body, am, xs)
        } else {
            let ([lo_a], [hi_a]) = nf4_pass::<R, VL, 1, 0>(body, am, xs);
            let ([lo_b], [hi_b]) = nf4_pass::<R, VL, 1, 1>(body, am, xs);
            ([lo_a, lo_b], [hi_a, hi_b])
        };
        for r in 0..R {
            // SAFETY: acc[r] holds 16 values.
            _mm256_storeu_ps(acc[r].as_mut_ptr(), _mm256_add_ps(lo[0][r], lo[1][r]));
            _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), _mm256_add_ps(hi[0][r], hi[1][r]));
        }
    }

    /// One pass of `nf4_body` over every block: `SETS` 2 takes all four chunks of a block (chunk c
    /// into set c % 2), `SETS` 1 only the chunks c ≡ `FIRST` (mod 2), into set 0. Returns the
    /// sets' (lo, hi) sums `[set][token]`.
    ///
    /// # Safety
    /// As `nf4_body`, whose assertion on the shapes this relies on.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn nf4_pass<const R: usize, const VL: bool, const SETS: usize, const FIRST: usize>(
        body: &[u8],
        am: &[f32],
        xs: &[f32],
    ) -> ([[__m256; R]; SETS], [[__m256; R]; SETS]) {
        // SAFETY (every pointer access below): NF4_CODE holds 16 values; block b reads body bytes
        // 32b .. 32b + 32 and xs values 64Rb .. 64R(b+1) (asserted by the caller).
        let code_lo = _mm256_loadu_ps(NF4_CODE.as_ptr()); // codes 0..8
        let code_hi = _mm256_loadu_ps(NF4_CODE.as_ptr().add(8)); // codes 8..16
        let mut lo = [[_mm256_setzero_ps(); R]; SETS];
        let mut hi = lo;
        for (b, &a) in am.iter().enumerate() {
            let a = _mm256_set1_ps(a);
            let (t0, t1) = (_mm256_mul_ps(code_lo, a), _mm256_mul_ps(code_hi, a)); // the block's weights
            for c in 0..BLOCK / LANES {
                if SETS == 1 && c % 2 != FIRST {
                    continue; // constant after unrolling
                }
                let set = if SETS == 2 { c % 2 } else { 0 };
                let chunk = b * (BLOCK / LANES) + c;
                let (bp, xp) = (body.as_ptr().add(chunk * LANES / 2), xs.as_ptr().add(chunk * R * LANES));
                // 8 bytes = 16 codes → one dword per byte.
                let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(bp.cast::<__m128i>()));
                let ih = _mm256_srli_epi32::<4>(v); // high nibbles: inputs 0, 2, .., 14
                                                    // The lookups take an index's low 4 bits, so v itself indexes the low nibbles
                                                    // (inputs 1, 3, .., 15); AVX2 blends on the code's bit 3 (byte bit 7 / bit 3).
                let (we, wo) = if VL {
                    (lookup_vl(t0, t1, ih), lookup_vl(t0, t1, v))
                } else {
                    (
                        lookup_avx2(t0, t1, ih, _mm256_slli_epi32::<24>(v)),
                        lookup_avx2(t0, t1, v, _mm256_slli_epi32::<28>(v)),
                    )
                };
                for r in 0..R {
                    let x = xp.add(r * LANES);
                    lo[set][r] = _mm256_fmadd_ps(we, _mm256_loadu_ps(x), lo[set][r]);
                    hi[set][r] = _mm256_fmadd_ps(wo, _mm256_loadu_ps(x.add(8)), hi[set][r]);
                }
            }
        }
        (lo, hi)
    }

    /// `int8_body_portable`: body `[B]` codes (B a multiple of 16), xs `[B/16][R][16]`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn int8_body<const R: usize>(body: &[u8], scb: f32, xs: &[f32], acc: &mut [[f32; LANES]; R]) {
        let n = body.len();
        assert!(n % LANES == 0 && xs.len() == n * R, "int8_body: bad shapes");
        let (s, inv) = (_mm256_set1_ps(scb), _mm256_set1_ps(INV_127));
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        let (mut bp, mut xp) = (body.as_ptr(), xs.as_ptr());
        let end = body.as_ptr().add(n);
        // SAFETY: each step reads 16 code bytes below `end` and R·16 xs values (asserted above);
        // acc holds R·16 values.
        while bp < end {
            let q0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(bp.cast::<__m128i>()));
            let q1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(bp.add(8).cast::<__m128i>()));
            let w0 = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q0), s), inv);
            let w1 = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q1), s), inv);
            for r in 0..R {
                let x = xp.add(r * LANES);
                lo[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), lo[r]);
                hi[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), hi[r]);
            }
            bp = bp.add(LANES);
            xp = xp.add(R * LANES);
        }
        for r in 0..R {
            _mm256_storeu_ps(acc[r].as_mut_ptr(), lo[r]);
            _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), hi[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{int8, nf4, Bytes, QuantData, QuantMatrix};
    use super::*;

    /// Deterministic values in [-scale, scale).
    fn vals(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1; // xorshift64
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
            })
            .collect()
    }

    /// NF4 (plain and double-quantized absmax) and Int8 matrices of a random `[N, K]` weight.
    fn matrices(n: usize, k: usize) -> Vec<QuantMatrix> {
        let w = vals(n * k, (n * 1000 + k) as u64, 0.05);
        let mut codes = vec![0u8; (n * k).div_ceil(2)];
        let mut absmax = vec![0f32; (n * k).div_ceil(BLOCK)];
        nf4::quantize_blocks(&w, &mut codes, &mut absmax);
        let dq = nf4::Absmax::Double(nf4::double_quantize(&absmax));
        let mut i8codes = vec![0u8; n * k];
        let scb = w.chunks_exact(k).zip(i8codes.chunks_exact_mut(k));
        let scb: Vec<f32> = scb.map(|(row, c)| int8::quantize_row(row, bytemuck::cast_slice_mut(c))).collect();
        let m = |name: &str, data| QuantMatrix { name: name.into(), n, k, data };
        vec![
            m("nf4", QuantData::Nf4 { codes: Bytes::Owned(codes.clone()), absmax: Absmax::Plain(absmax) }),
            m("nf4-dq", QuantData::Nf4 { codes: Bytes::Owned(codes), absmax: dq }),
            m("int8", QuantData::Int8 { codes: Bytes::Owned(i8codes), scb }),
        ]
    }

    /// The documented summation order, written from the dequantized rows (`decode_rows`, the
    /// oracle's weights) rather than from the packed bytes: y[t, n] without bias.
    fn reference(q: &QuantMatrix, x: &[f32]) -> Vec<f32> {
        let (n, k) = (q.n, q.k);
        let w = q.dequantize();
        let t = x.len() / k;
        let mut y = vec![0f32; t * n];
        for ni in 0..n {
            let wr = &w[ni * k..][..k];
            // (lane of each body input, body range); the rest is outside the body.
            let (h, body) = match q.data {
                QuantData::Nf4 { .. } => {
                    let (h, blocks) = nf4_body(ni * k, k);
                    (h, blocks * BLOCK)
                }
                _ => (0, k - k % LANES),
            };
            let lane = |i: usize| match q.data {
                QuantData::Nf4 { .. } => (i - h) % LANES / 2 + 8 * ((i - h) % 2),
                _ => (i - h) % LANES,
            };
            // NF4: two sets of lane sums, by the parity of the 16-input chunk; Int8: one.
            let set = |i: usize| match q.data {
                QuantData::Nf4 { .. } => (i - h) / LANES % 2,
                _ => 0,
            };
            for ti in 0..t {
                let xr = &x[ti * k..][..k];
                let mut sets = [[0f32; LANES]; 2];
                for i in h..h + body {
                    let a = &mut sets[set(i)][lane(i)];
                    *a = wr[i].mul_add(xr[i], *a);
                }
                let acc: [f32; LANES] = match q.data {
                    QuantData::Nf4 { .. } => std::array::from_fn(|l| sets[0][l] + sets[1][l]),
                    _ => sets[0],
                };
                let mut s = reduce(&acc);
                for i in (0..h.min(k)).chain(h + body..k) {
                    s += wr[i] * xr[i];
                }
                y[ti * n + ni] = s;
            }
        }
        y
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Shapes (N, K): K not a multiple of 16 or 64 (rows start inside NF4 blocks and bytes; the
    /// tensor ends in a partial block), K shorter than a block, K = 64, several blocks.
    const SHAPES: [(usize, usize); 7] = [(37, 100), (5, 33), (3, 64), (9, 130), (70, 7), (66, 63), (17, 320)];

    #[test]
    fn every_kernel_equals_the_documented_order_on_the_dequantized_weights() {
        let kernels = Kernel::available();
        if kernels.len() == 1 {
            eprintln!("SKIP (partly): this CPU has no AVX2 + FMA; only the portable kernel was checked");
        }
        for (n, k) in SHAPES {
            for q in matrices(n, k) {
                for t in [1usize, 2, 3, 4, 5, 9] {
                    let x = vals(t * k, t as u64 + 7, 1.0);
                    let want = reference(&q, &x);
                    for &kernel in &kernels {
                        let mut y = vec![0f32; t * n];
                        q.matmul_with(kernel, &x, None, &mut y).unwrap();
                        assert_eq!(bits(&y), bits(&want), "{} [{n}, {k}] T={t} {kernel:?}", q.name);
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_are_close_to_the_exact_product_of_the_dequantized_weights() {
        for (n, k) in SHAPES {
            for q in matrices(n, k) {
                let (w, t) = (q.dequantize(), 3);
                let x = vals(t * k, 11, 1.0);
                let bias = vals(n, 12, 0.1);
                for kernel in Kernel::available() {
                    let mut y = vec![0f32; t * n];
                    q.matmul_with(kernel, &x, Some(&bias), &mut y).unwrap();
                    for ti in 0..t {
                        for ni in 0..n {
                            let (wr, xr) = (&w[ni * k..][..k], &x[ti * k..][..k]);
                            let exact: f64 = wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
                            let mag: f64 = wr.iter().zip(xr).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                            let got = y[ti * n + ni] as f64;
                            let err = (got - exact - bias[ni] as f64).abs();
                            assert!(err <= 1e-6 * mag + 1e-7, "{} {kernel:?}: y[{ti},{ni}] {got} vs {exact}", q.name);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pack_x_layouts() {
        let (k, t) = (40, 6); // two token blocks: 4 rows, then 2
        let x: Vec<f32> = (0..t * k).map(|i| i as f32).collect();
        let mut out = Vec::new();
        pack_x(&x, k, 3, 32, Lanes::Natural, &mut out);
        assert_eq!(out.len(), t * 32);
        // Block 0, chunk 1, row 2: inputs 3 + 16 .. 3 + 32 of token 2.
        assert_eq!(out[(4 + 2) * 16], (2 * k + 19) as f32);
        // Block 1 (tokens 4, 5) starts at 4·32; its chunk 0, row 1: token 5's inputs 3.. .
        assert_eq!(out[4 * 32 + 16], (5 * k + 3) as f32);
        pack_x(&x, k, 0, 16, Lanes::Deinterleaved, &mut out);
        let first: Vec<f32> = out[..16].to_vec();
        let want: Vec<f32> = [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15].map(|v| v as f32).to_vec();
        assert_eq!(first, want);
    }

    #[test]
    fn nf4_body_bounds() {
        assert_eq!(nf4_body(0, 4096), (0, 64));
        assert_eq!(nf4_body(100, 100), (28, 1)); // row 1 of K = 100: head 28, one block, tail 8
        assert_eq!(nf4_body(33, 33), (31, 0)); // shorter than a block: all head
        assert_eq!(nf4_body(64 * 5, 130), (0, 2));
    }
}
