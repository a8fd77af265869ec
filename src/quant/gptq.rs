//! GPTQ linears as AutoGPTQ packs them (the official Qwen-7B-Chat-Int4 / -Int8 checkpoints, spec
//! §7.3). The stored weight is W `[K, N]` (x·W, the transpose of `nn.Linear`):
//! - `qweight` i32 `[K·bits/32, N]`: row k = (32/bits)·r + j is bits `bits·j ..` of word `[r, n]`
//!   (LSB first);
//! - `qzeros` i32 `[G, N·bits/32]`: column n = (32/bits)·c + j in bits `bits·j ..` of word
//!   `[g, c]`; the stored zero is the true zero minus one;
//! - `scales` f16 `[G, N]`; `g_idx` i32 `[K]`: the group of input k, in any order (act-order).
//!
//! W[k, n] = scales[g, n] · (q[k, n] − (z_stored[g, n] + 1)), g = g_idx[k], computed in f32 (exact:
//! an f16 scale times an integer below 2^9 fits the f32 mantissa).

use super::simd::{reduce, LANES};

/// Bits of field j of a word (`bits` 4 or 8).
#[inline]
pub fn field(word: u32, bits: u32, j: usize) -> u32 {
    (word >> (bits as usize * j)) & ((1u32 << bits) - 1)
}

/// Unpack `qzeros` `[G, N·bits/32]` (LE i32 words) into true zeros `z_stored + 1`, `[G, N]`.
pub fn unpack_zeros(qzeros: &[u8], groups: usize, n: usize, bits: u32) -> Vec<i32> {
    let per = 32 / bits as usize;
    let cols = n / per;
    let mut out = vec![0i32; groups * n];
    for g in 0..groups {
        for c in 0..cols {
            let w = u32::from_le_bytes(qzeros[(g * cols + c) * 4..][..4].try_into().expect("4 bytes"));
            for j in 0..per {
                out[g * n + c * per + j] = field(w, bits, j) as i32 + 1;
            }
        }
    }
    out
}

/// Whether `g_idx` is the sequential order (`k / group`, AutoGPTQ without act-order, the official
/// Qwen checkpoints) and a group covers whole words, so `gemv_sequential` applies.
pub fn is_sequential(g_idx: &[u32], group: usize, bits: u32) -> bool {
    let per = 32 / bits as usize;
    group % per == 0 && g_idx.iter().enumerate().all(|(k, &g)| g as usize == k / group)
}

/// T tokens `x` `[T, K]` through a GPTQ matrix with sequential groups, straight from the packed words
/// in their stored order (qweight row r = inputs r·per .. r·per + per of N consecutive columns),
/// columns `n0 .. n0 + m`: `y[i, t] = Σ_k W[k, n] · x[t, k]` into y `[m, T]`, n = n0 + i, with
/// W[k, n] = scales[g, n] · (q[k, n] − zeros[g, n]) the oracle's exact dequantized weight
/// (`QuantMatrix::decode_rows`), decoded once per block of 8 tokens. Each (column, token) sums
/// exactly as `Kernel::dot` over the decoded row does (16 lane sums, lane l taking k ≡ l mod 16 in
/// increasing k, separate multiply and add, `dot`'s reduction tree, then the K % 16 tail in order),
/// so this path, the decoded path (act-order) and every kernel give the same bits, whatever the
/// token count; the AVX2 build only lets the compiler vectorise across columns.
///
/// `scratch` is the task's lane sums and the current group's zeros, scales and weights as f32.
pub fn gemv_sequential(
    kernel: super::simd::Kernel,
    w: &Packed<'_>,
    x: &[f32],
    n0: usize,
    y: &mut [f32],
    scratch: &mut (Vec<f32>, Vec<f32>),
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` / `Avx512Vl` are only built by `Kernel::detect` after AVX2 and FMA were
        // detected; the body only indexes slices (bounds-checked).
        super::simd::Kernel::Avx2 | super::simd::Kernel::Avx512Vl => unsafe { gemv_avx2(w, x, n0, y, scratch) },
        _ => gemv_body(w, x, n0, y, scratch),
    }
}

/// A GPTQ matrix as `gemv_sequential` reads it: qweight `[K·bits/32, N]` LE words, true zeros and
/// scales `[G, N]`, G = K / group.
pub struct Packed<'a> {
    pub bits: u32,
    pub group: usize,
    pub n: usize,
    pub k: usize,
    pub qweight: &'a [u8],
    pub zeros: &'a [i32],
    pub scales: &'a [f32],
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2(w: &Packed<'_>, x: &[f32], n0: usize, y: &mut [f32], scratch: &mut (Vec<f32>, Vec<f32>)) {
    gemv_body(w, x, n0, y, scratch)
}

#[inline(always)]
fn gemv_body(w: &Packed<'_>, x: &[f32], n0: usize, y: &mut [f32], scratch: &mut (Vec<f32>, Vec<f32>)) {
    if w.bits == 4 {
        gemv_bits::<4>(w, x, n0, y, scratch)
    } else {
        gemv_bits::<8>(w, x, n0, y, scratch)
    }
}

#[inline(always)]
fn gemv_bits<const BITS: u32>(
    w: &Packed<'_>,
    x: &[f32],
    n0: usize,
    y: &mut [f32],
    (acc, wf): &mut (Vec<f32>, Vec<f32>),
) {
    let k = w.k;
    let t = x.len() / k;
    let m = y.len() / t;
    // Tokens in blocks of TOKEN_BLOCK: each weight is decoded once a block; the lane sums
    // [block][LANES][m] stay in L2.
    for t0 in (0..t).step_by(TOKEN_BLOCK) {
        let bt = TOKEN_BLOCK.min(t - t0);
        token_block::<BITS>(w, &x[t0 * k..][..bt * k], n0, (t0, t), m, y, acc, wf);
    }
}

/// Tokens in one pass of `gemv_bits`.
const TOKEN_BLOCK: usize = 8;

/// `gemv_bits` for the `bt` tokens of `x` `[bt, K]` (tokens t0 .. t0 + bt of t): y `[m, t]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn token_block<const BITS: u32>(
    w: &Packed<'_>,
    x: &[f32],
    n0: usize,
    (t0, t): (usize, usize),
    m: usize,
    y: &mut [f32],
    acc: &mut Vec<f32>,
    wf: &mut Vec<f32>,
) {
    let Packed { group, n, k, qweight, zeros, scales, .. } = *w;
    let per = 32 / BITS as usize; // divides LANES: a word's inputs are all in the body or all in the tail
    let mask = (1u32 << BITS) - 1;
    let bt = x.len() / k;
    let body = k - k % LANES;
    acc.clear();
    acc.resize(bt * LANES * m, 0.0); // [bt][LANES][m]: lane l of column i sums k ≡ l (mod 16), as `dot`
    wf.resize(3 * m, 0.0); // the group's zeros and scales as f32, then one input's weights
                           // The body's lane sums of each (column, token) through `dot`'s reduction tree into y; the tail's
                           // inputs are then added in order.
    let reduce_body = |y: &mut [f32], acc: &[f32]| {
        for ti in 0..bt {
            for i in 0..m {
                let lanes: [f32; LANES] = std::array::from_fn(|l| acc[(ti * LANES + l) * m + i]);
                y[i * t + t0 + ti] = reduce(&lanes);
            }
        }
    };
    for r in 0..k / per {
        let k0 = r * per;
        if k0 % group == 0 {
            let g = k0 / group;
            let (zf, rest) = wf.split_at_mut(m);
            zf.iter_mut().zip(&zeros[g * n + n0..][..m]).for_each(|(z, &zi)| *z = zi as f32);
            rest[..m].copy_from_slice(&scales[g * n + n0..][..m]);
        }
        if k0 == body {
            reduce_body(y, acc);
        }
        let row = &qweight[(r * n + n0) * 4..][..m * 4];
        let (zs, wk) = wf.split_at_mut(2 * m);
        let (zf, sf) = zs.split_at(m);
        for j in 0..per {
            let shift = BITS as usize * j;
            // The oracle's weight, s · (q − z) with q − z an exact integer in f32.
            for (((wv, wb), &z), &s) in wk.iter_mut().zip(row.chunks_exact(4)).zip(zf).zip(sf) {
                let q = (u32::from_le_bytes([wb[0], wb[1], wb[2], wb[3]]) >> shift) & mask;
                *wv = s * (q as f32 - z);
            }
            for ti in 0..bt {
                let xk = x[ti * k + k0 + j];
                if k0 < body {
                    let dst = &mut acc[(ti * LANES + (k0 + j) % LANES) * m..][..m];
                    for (a, &wv) in dst.iter_mut().zip(wk.iter()) {
                        *a += wv * xk;
                    }
                } else {
                    for (i, &wv) in wk.iter().enumerate() {
                        y[i * t + t0 + ti] += wv * xk;
                    }
                }
            }
        }
    }
    if body == k {
        reduce_body(y, acc);
    }
}
