//! The CPU quantized matmul, the oracle of the dequant kernels: `y[T, N] = x[T, K] · Wᵀ (+ b)`
//! with W the exact dequantized weight (`QuantMatrix::decode_rows`: code × scale in f32), parallel
//! over N on the current rayon pool.
//! - NF4 and Int8: the fused kernels of `gemv` decode each weight in registers straight from the
//!   packed bytes and multiply it with up to `gemv::MAX_R` token rows at once (x packed once per
//!   call in the kernels' lane order); decode (T = 1) and prefill give the same bits.
//! - GPTQ with sequential groups (the official checkpoints): `gptq::gemv_sequential` straight from
//!   the packed words in their stored order, vectorised across columns, each weight decoded once per
//!   8 tokens. Act-order g_idx: rows decoded to f32 a group at a time (never the whole matrix), each
//!   output a `Kernel::dot`. Both sum as `backend::cpu::dot` does: the same bits.
//!
//! `Linear` is the one type the CPU executor needs to hold a linear layer without knowing whether
//! its weight is quantized; `backend::cpu::LinearMatmul` computes with it (the dense arm is the
//! backend's own matmul, so quant does not import the backend).
use super::gemv::{self, Lanes, MAX_R};
use super::nf4::BLOCK;
use super::simd::{Kernel, LANES};
use super::{gptq, QuantData, QuantMatrix};
use crate::checkpoint::TensorView;
use crate::error::Result;
use rayon::prelude::*;
use std::sync::Arc;

/// GPTQ: weight rows decoded together (a group's f32 rows stay in L2: 16 × 11008 × 4 = 704 KiB at
/// most for Qwen-7B).
const ROW_GROUP: usize = 16;

/// Rows per parallel task so that each thread gets several tasks (a multiple of `group`).
fn rows_per_task(n: usize, group: usize) -> usize {
    let tasks = rayon::current_num_threads().max(1) * 8;
    n.div_ceil(tasks).div_ceil(group).clamp(1, 256 / group) * group
}

/// Run `f(scratch, first_row, y)` over tasks of consecutive weight rows in parallel, y the task's
/// outputs `[rows, T]` (transposed), then write them to out `[T, N]`.
fn par_rows<S: Send>(
    n: usize,
    t: usize,
    group: usize,
    out: &mut [f32],
    init: impl Fn() -> S + Send + Sync,
    f: impl Fn(&mut S, usize, &mut [f32]) + Send + Sync,
) {
    // Results transposed, [N, T] (for T = 1 that is already [T, N]).
    let mut transposed = if t == 1 { Vec::new() } else { vec![0f32; n * t] };
    let y_nt: &mut [f32] = if t == 1 { out } else { &mut transposed };
    let rows = rows_per_task(n, group);
    y_nt.par_chunks_mut(rows * t).enumerate().for_each_init(init, |s, (task, chunk)| f(s, task * rows, chunk));
    if t > 1 {
        for (ni, col) in transposed.chunks_exact(t).enumerate() {
            for (ti, &v) in col.iter().enumerate() {
                out[ti * n + ni] = v;
            }
        }
    }
}

/// Evaluate `$body` with the const `$r` bound to the token count `$rb` (1..=MAX_R).
macro_rules! with_r {
    ($rb:expr, $r:ident => $body:expr) => {
        match $rb {
            1 => {
                const $r: usize = 1;
                $body
            }
            2 => {
                const $r: usize = 2;
                $body
            }
            3 => {
                const $r: usize = 3;
                $body
            }
            _ => {
                const $r: usize = MAX_R;
                $body
            }
        }
    };
}
const _: () = assert!(MAX_R == 4); // `with_r` covers 1..=4

/// y[t0 .. t0 + R] of one weight row = sums + bias.
#[inline]
fn store<const R: usize>(y: &mut [f32], sums: [f32; R], b: f32) {
    for (yv, s) in y.iter_mut().zip(sums) {
        *yv = s + b; // also for b = 0 (keeps -0 + 0 = +0 as `dot(..) + b` does)
    }
}

/// Per-task scratch of the fused path.
#[derive(Default)]
struct Fused {
    /// x packed for an NF4 body offset h other than 0 (rows that start inside a block), and that h.
    xp: Vec<f32>,
    h: Option<usize>,
    /// The absmax of a row's body blocks. `[blocks]`
    am: Vec<f32>,
}

impl QuantMatrix {
    /// `y[T, N] = x[T, K] · Wᵀ (+ b[N])` with the fastest kernel of this CPU.
    pub fn matmul(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
        self.matmul_with(Kernel::detect(), x, bias, out)
    }

    /// `matmul` with a given kernel (tests compare them; every kernel gives the same bits).
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
        let t = self.check_matmul(x, bias, out)?;
        match &self.data {
            QuantData::Gptq { bits, group, g_idx, .. } if gptq::is_sequential(g_idx, *group, *bits) => {
                self.gemv_gptq(kernel, x, t, bias, out)
            }
            QuantData::Gptq { .. } => self.matmul_decoded(kernel, x, t, bias, out),
            _ => self.matmul_fused(kernel, x, t, bias, out),
        }
        Ok(())
    }

    /// GPTQ with sequential groups: `gptq::gemv_sequential` over column ranges in parallel.
    fn gemv_gptq(&self, kernel: Kernel, x: &[f32], t: usize, bias: Option<&[f32]>, out: &mut [f32]) {
        let QuantData::Gptq { bits, group, qweight, zeros, scales, .. } = &self.data else {
            unreachable!("gemv_gptq is only called on GPTQ matrices")
        };
        let (n, k) = (self.n, self.k);
        par_rows(
            n,
            t,
            8,
            out,
            || (Vec::new(), Vec::new()),
            |scratch, n0, y| {
                let w = gptq::Packed { bits: *bits, group: *group, n, k, qweight: qweight.as_slice(), zeros, scales };
                gptq::gemv_sequential(kernel, &w, x, n0, y, scratch);
                if let Some(b) = bias {
                    for (yr, &bv) in y.chunks_exact_mut(t).zip(&b[n0..]) {
                        yr.iter_mut().for_each(|v| *v += bv);
                    }
                }
            },
        );
    }

    /// `matmul` through rows decoded to f32 and `Kernel::dot` (GPTQ's path), for any format: for
    /// NF4 / Int8 the unfused way, which `benches/quant.rs` measures next to the fused kernels.
    pub fn matmul_decoded_with(&self, kernel: Kernel, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
        let t = self.check_matmul(x, bias, out)?;
        self.matmul_decoded(kernel, x, t, bias, out);
        Ok(())
    }

    /// NF4 / Int8 through the fused kernels of `gemv`.
    fn matmul_fused(&self, kernel: Kernel, x: &[f32], t: usize, bias: Option<&[f32]>, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        let (lanes, body0) = match &self.data {
            QuantData::Int8 { .. } => (Lanes::Natural, k - k % LANES),
            _ => (Lanes::Deinterleaved, gemv::nf4_body(0, k).1 * BLOCK),
        };
        // x packed for body offset 0: every Int8 row, and every NF4 row when K % 64 == 0.
        let mut xp0 = Vec::new();
        gemv::pack_x(x, k, 0, body0, lanes, &mut xp0);
        let xp0 = &xp0[..];
        par_rows(n, t, 1, out, Fused::default, |s, first, y| {
            for (r, yr) in y.chunks_exact_mut(t).enumerate() {
                let row = first + r;
                let b = bias.map_or(0.0, |b| b[row]);
                match &self.data {
                    QuantData::Int8 { codes, scb } => {
                        let c = &codes.as_slice()[row * k..][..k];
                        for t0 in (0..t).step_by(MAX_R) {
                            let rb = MAX_R.min(t - t0);
                            let (xs, xr) = (&xp0[t0 * body0..][..rb * body0], &x[t0 * k..][..rb * k]);
                            let y = &mut yr[t0..t0 + rb];
                            with_r!(rb, R => store(y, gemv::int8_row::<R>(kernel, c, scb[row], k, xs, xr), b));
                        }
                    }
                    QuantData::Nf4 { codes, absmax } => {
                        let e0 = row * k;
                        let (h, blocks) = gemv::nf4_body(e0, k);
                        let body = blocks * BLOCK;
                        let xp = if h == 0 {
                            xp0
                        } else {
                            if s.h != Some(h) {
                                gemv::pack_x(x, k, h, body, Lanes::Deinterleaved, &mut s.xp);
                                s.h = Some(h);
                            }
                            &s.xp[..]
                        };
                        let b0 = (e0 + h) / BLOCK; // first body block
                        s.am.clear();
                        s.am.extend((b0..b0 + blocks).map(|bi| absmax.get(bi)));
                        let (codes, am) = (codes.as_slice(), &s.am[..]);
                        for t0 in (0..t).step_by(MAX_R) {
                            let rb = MAX_R.min(t - t0);
                            let (xs, xr) = (&xp[t0 * body..][..rb * body], &x[t0 * k..][..rb * k]);
                            let y = &mut yr[t0..t0 + rb];
                            with_r!(rb, R => store(y, gemv::nf4_row::<R>(kernel, codes, absmax, e0, k, am, xs, xr), b));
                        }
                    }
                    QuantData::Gptq { .. } => unreachable!("GPTQ takes matmul_decoded"),
                }
            }
        });
    }

    /// GPTQ: decode `ROW_GROUP` rows to f32 (`decode_rows`), then `Kernel::dot` per output.
    fn matmul_decoded(&self, kernel: Kernel, x: &[f32], t: usize, bias: Option<&[f32]>, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        par_rows(
            n,
            t,
            ROW_GROUP,
            out,
            || vec![0f32; ROW_GROUP * k],
            |wbuf, first, chunk| {
                for (g, yg) in chunk.chunks_mut(ROW_GROUP * t).enumerate() {
                    let n0 = first + g * ROW_GROUP;
                    let nr = yg.len() / t;
                    let w = &mut wbuf[..nr * k]; // [nr, K] exact dequantized rows
                    self.decode_rows(n0, w);
                    for (r, (yr, wr)) in yg.chunks_exact_mut(t).zip(w.chunks_exact(k)).enumerate() {
                        let b = bias.map_or(0.0, |b| b[n0 + r]);
                        for (yv, xr) in yr.iter_mut().zip(x.chunks_exact(k)) {
                            *yv = kernel.dot(wr, xr) + b;
                        }
                    }
                }
            },
        );
    }
}

/// A linear layer's weight `[N, K]` as the CPU executor uses it: the checkpoint's float view, or
/// a quantized matrix. `backend::cpu::LinearMatmul::matmul` computes `x · Wᵀ (+ b)` with it.
#[derive(Clone, Debug)]
pub enum Linear {
    Dense(TensorView),
    Quant(Arc<QuantMatrix>),
}

impl Linear {
    /// (N, K).
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Linear::Dense(w) => (w.shape[0], w.shape.get(1).copied().unwrap_or(0)),
            Linear::Quant(q) => (q.n, q.k),
        }
    }
    /// Bytes the weight takes as held.
    pub fn byte_len(&self) -> usize {
        match self {
            Linear::Dense(w) => w.byte_len(),
            Linear::Quant(q) => q.byte_len(),
        }
    }
}
