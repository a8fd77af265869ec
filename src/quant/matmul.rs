//! The CPU quantized matmul, the oracle of the dequant kernels: `y[T, N] = x[T, K] · Wᵀ (+ b)`
//! with W the exact dequantized weight (`QuantMatrix::decode_rows`), decoded straight from the
//! packed bytes a group of rows at a time (never the whole matrix), parallel over N on the
//! current rayon pool, each output a `Kernel::dot` (same lane order as `backend::cpu::dot`).
//!
//! `Linear` is the one type the CPU executor needs to hold a linear layer without knowing whether
//! its weight is quantized; `backend::cpu::LinearMatmul` computes with it (the dense arm is the
//! backend's own matmul, so quant does not import the backend).
use super::simd::Kernel;
use super::QuantMatrix;
use crate::checkpoint::TensorView;
use crate::error::Result;
use rayon::prelude::*;
use std::sync::Arc;

/// Weight rows decoded together (a group's f32 rows stay in L2: 16 × 11008 × 4 = 704 KiB at most
/// for Qwen-7B).
const ROW_GROUP: usize = 16;

/// Rows per parallel task so that each thread gets several tasks (a multiple of `ROW_GROUP`).
fn rows_per_task(n: usize) -> usize {
    let tasks = rayon::current_num_threads().max(1) * 8;
    n.div_ceil(tasks).div_ceil(ROW_GROUP).clamp(1, 16) * ROW_GROUP
}

impl QuantMatrix {
    /// `y[T, N] = x[T, K] · Wᵀ (+ b[N])` with the fastest dot kernel of this CPU.
    pub fn matmul(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
        self.matmul_with(Kernel::detect(), x, bias, out)
    }

    /// `matmul` with a given kernel (tests compare them; every kernel gives the same bits).
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
        let t = self.check_matmul(x, bias, out)?;
        let (n, k) = (self.n, self.k);
        // Results transposed, [N, T] (for T = 1 that is already [T, N]).
        let mut transposed = if t == 1 { Vec::new() } else { vec![0f32; n * t] };
        let y_nt: &mut [f32] = if t == 1 { out } else { &mut transposed };
        let rows = rows_per_task(n);
        y_nt.par_chunks_mut(rows * t).enumerate().for_each_init(
            || vec![0f32; ROW_GROUP * k],
            |wbuf, (task, chunk)| {
                let first = task * rows;
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
        if t > 1 {
            for (ni, col) in transposed.chunks_exact(t).enumerate() {
                for (ti, &v) in col.iter().enumerate() {
                    out[ti * n + ni] = v;
                }
            }
        }
        Ok(())
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
