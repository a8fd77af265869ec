//! `gemv_{bf16,f16}` vs `cpu::matmul`: ragged and real 7B shapes, B in {1, 3, 8}, the scalar path
//! (K % 8 != 0, misaligned operands), a poisoned guard tail past y, and the launcher's refusals.
use crate::common::*;
use qwen_rt::backend::cpu;
use qwen_rt::backend::cuda::device::{DevBuf, DevSlice, Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::{self, GemvParams};
use qwen_rt::checkpoint::TensorView;

/// f32 values of poison after y that must still be poison (0xFFFFFFFF) after the call.
pub const GUARD: usize = 64;

/// The CPU oracle for `y[t, n] = Σ_k x[t, k] w[n, k]` over one weight matrix (the rounded values the
/// GPU sees), with the per-output error bound.
///
/// Tolerance: the inputs are exact in T and each product w·x of two T values is exact in f32
/// (8 + 8 or 11 + 11 significant bits <= 24), so the only differences are the fp32 summation
/// orders (per-lane strided partial sums + a shuffle tree on the GPU, cuBLAS's blocking/split-K for
/// the GEMM, SIMD lanes on the CPU). Each side's error is at most ~K·u·Σ|w x| (u = 2^-24) and
/// typically ~sqrt(K)·u·Σ|w x|; we allow 1e-5·sqrt(K)·Σ_k |w[n,k] x[t,k]|, which exceeds the
/// worst case K·u·Σ|w x| for every K < (1e-5 / 6e-8)² ≈ 27800 (all tested K), plus 1e-30 so an
/// all-zero sum compares exactly. Σ|w x| is computed on the host per output, as the product of
/// |x| and |W|ᵀ (cpu::matmul again; its own f32 rounding, relative <= K·u, is immaterial here).
pub struct Oracle {
    w: TensorView,
    w_abs: TensorView,
    n: usize,
    k: usize,
}

impl Oracle {
    pub fn new(w: &[f32], n: usize, k: usize) -> Oracle {
        let abs: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        Oracle {
            w: TensorView::from_f32("w", &[n, k], w).unwrap(),
            w_abs: TensorView::from_f32("|w|", &[n, k], &abs).unwrap(),
            n,
            k,
        }
    }

    /// (expected y [t, N], allowed |error| [t, N]) for x [t, K].
    pub fn run(&self, x: &[f32], t: usize) -> (Vec<f32>, Vec<f32>) {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), t * k);
        let mut want = vec![0f32; t * n];
        cpu::matmul(x, &self.w, None, &mut want).unwrap();
        let x_abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let mut lim = vec![0f32; t * n];
        cpu::matmul(&x_abs, &self.w_abs, None, &mut lim).unwrap();
        let scale = (1e-5 * (k as f64).sqrt()) as f32;
        for l in &mut lim {
            *l = *l * scale + 1e-30;
        }
        (want, lim)
    }
}

/// Assert |got - want| <= lim elementwise (NaN fails); prints the worst element either way.
pub fn assert_within(what: &str, got: &[f32], want: &[f32], lim: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    let (mut worst, mut ratio_max, mut bad) = (0usize, 0f32, 0usize);
    for (i, ((&g, &w), &l)) in got.iter().zip(want).zip(lim).enumerate() {
        let r = if g.is_nan() || w.is_nan() { f32::INFINITY } else { (g - w).abs() / l };
        if r.is_nan() || r > 1.0 {
            bad += 1;
        }
        if r.is_nan() || r > ratio_max {
            (worst, ratio_max) = (i, r);
        }
    }
    let i = worst;
    eprintln!(
        "{what}: {} values, worst at [{i}]: got {} want {} (|err| {:.3e}, bound {:.3e}, {:.3} of it), {bad} over",
        got.len(),
        got[i],
        want[i],
        (got[i] - want[i]).abs(),
        lim[i],
        ratio_max
    );
    assert!(bad == 0, "{what}: {bad} of {} values outside the fp32-summation bound", got.len());
}

/// A poisoned f32 output of `vals` values followed by GUARD poisoned values; returns the buffer
/// and the slice of exactly `vals` values handed to the launcher.
pub fn poisoned_out(gpu: &Gpu, vals: usize) -> (DevBuf, DevSlice) {
    let buf = poisoned(gpu, (vals + GUARD) * 4);
    let s = buf.slice().sub(0, vals * 4).unwrap();
    (buf, s)
}

/// The whole output buffer read back: the first `vals` values, after checking the guard tail.
pub fn read_checked(gpu: &Gpu, buf: &DevBuf, vals: usize, what: &str) -> Vec<f32> {
    let all = read_u32(gpu, buf.slice(), vals + GUARD);
    let touched = all[vals..].iter().filter(|&&b| b != u32::MAX).count();
    assert!(touched == 0, "{what}: {touched} of the {GUARD} guard values after y were written");
    all[..vals].iter().map(|&b| f32::from_bits(b)).collect()
}

/// One GEMV: x [b, k] uploaded in `dt` at byte offset `x_off` into its buffer (to exercise
/// misaligned operands) times `w` (the oracle's W, already on the GPU), compared with the oracle.
#[allow(clippy::too_many_arguments)]
fn check(gpu: &Gpu, dt: GpuDType, w: DevSlice, oracle: &Oracle, n: usize, k: usize, b: usize, x_off: usize) {
    check_with(gpu, dt, w, oracle, n, k, b, x_off, launch::GemvConfig::DEFAULT);
}

#[allow(clippy::too_many_arguments)]
fn check_with(
    gpu: &Gpu,
    dt: GpuDType,
    w: DevSlice,
    oracle: &Oracle,
    n: usize,
    k: usize,
    b: usize,
    x_off: usize,
    cfg: launch::GemvConfig,
) {
    let xv = rand_vec(b * k, 1000 + (n * 31 + k * 7 + b) as u64, 1.0);
    let bits = dt.encode(&xv);
    let x_host = dt.decode(&bits);
    let xbuf = gpu.alloc(x_off + b * k * 2).expect("alloc x");
    gpu.write(xbuf.ptr().offset(x_off), &bits).expect("upload x");
    let xs = xbuf.slice().sub(x_off, b * k * 2).unwrap();
    let (ybuf, ys) = poisoned_out(gpu, b * n);
    let what = format!("gemv {dt:?} N{n} K{k} B{b} x+{x_off} w+{} {cfg:?}", w.ptr.0 % 16);
    launch::gemv_with(gpu, &gpu.stream, dt, &GemvParams { w, x: xs, y: ys, n, k, b, stages: 0 }, cfg).unwrap();
    let got = read_checked(gpu, &ybuf, b * n, &what);
    let (want, lim) = oracle.run(&x_host, b);
    assert_within(&what, &got, &want, &lim);
}

#[test]
fn gemv_matches_cpu() {
    let Some(gpu) = gpu("gemv_matches_cpu") else { return };
    // K = 7, 127: scalar path; K = 64, 4096, 11008: 16-byte path (K = 64 with only 8 active
    // lanes; 11008 = 43 uint4 per lane, a partial last pass). N = 11008·2 is the fused w1‖w2 of
    // the MLP, 151936 the vocabulary (lm_head), 4096 the hidden size.
    for (n, k) in [(1, 7), (7, 127), (127, 64), (4096, 4096), (11008 * 2, 4096), (4096, 11008), (151936, 64)] {
        let w_f32 = rand_vec(n * k, 7 + (n * 13 + k) as u64, 1.0);
        for dt in DTYPES {
            let (w, w_host) = upload_dt(&gpu, dt, &w_f32);
            let oracle = Oracle::new(&w_host, n, k);
            for b in [1, 3, 8] {
                check(&gpu, dt, w.slice(), &oracle, n, k, b, 0);
            }
        }
    }
}

#[test]
fn gemv_all_batch_sizes() {
    let Some(gpu) = gpu("gemv_all_batch_sizes") else { return };
    // Every B in 1..=8 (each is its own template instance), vector (K 1032 = 129 uint4: a lane
    // with 5 loads, the rest 4) and scalar (K 129) paths, N not a multiple of the 8 rows a block.
    for (n, k) in [(1003, 1032), (1003, 129)] {
        let w_f32 = rand_vec(n * k, 99 + k as u64, 1.0);
        for dt in DTYPES {
            let (w, w_host) = upload_dt(&gpu, dt, &w_f32);
            let oracle = Oracle::new(&w_host, n, k);
            for b in 1..=launch::GEMV_MAX_B {
                check(&gpu, dt, w.slice(), &oracle, n, k, b, 0);
            }
        }
    }
}

#[test]
fn gemv_every_config() {
    let Some(gpu) = gpu("gemv_every_config") else { return };
    // Both stage counts, one row per warp (0) and grids capped at 1 or 4 blocks per SM (each warp
    // then streams several rows, its passes crossing row ends); vector and scalar paths.
    // Each on run 4's kernel (gemv_*) and on the post-run-4 stream (gemv_plain_*); also the stream's
    // L2-prefetch experiment (only hints: the results must not change).
    let shapes = [(1, 0), (2, 0), (1, 1), (2, 1), (2, 4)];
    let mut configs = shapes.map(|(stages, blocks_per_sm)| launch::GemvConfig::new(stages, blocks_per_sm)).to_vec();
    configs.extend(shapes.map(|(stages, blocks_per_sm)| launch::GemvConfig::stream(stages, blocks_per_sm, 0)));
    configs.push(launch::GemvConfig::stream(2, 8, 4));
    for (n, k, bs) in [
        (22016, 4096, &[1usize, 2][..]),
        (4096, 11008, &[1][..]),
        (1003, 1032, &[1, 3, 4, 5, 8][..]),
        (1003, 129, &[3][..]),
    ] {
        let w_f32 = rand_vec(n * k, 17 + (n + k) as u64, 1.0);
        for dt in DTYPES {
            let (w, w_host) = upload_dt(&gpu, dt, &w_f32);
            let oracle = Oracle::new(&w_host, n, k);
            for &cfg in &configs {
                for &b in bs {
                    check_with(&gpu, dt, w.slice(), &oracle, n, k, b, 0, cfg);
                }
            }
        }
    }
}

#[test]
fn gemv_misaligned_operands() {
    let Some(gpu) = gpu("gemv_misaligned_operands") else { return };
    // K % 8 == 0 but x or W starts 2 or 8 bytes past a 16-byte boundary: the kernel must take the
    // scalar path (and still be right).
    let (n, k) = (300, 256);
    let w_f32 = rand_vec(n * k, 5, 1.0);
    for dt in DTYPES {
        let bits = dt.encode(&w_f32);
        let oracle = Oracle::new(&dt.decode(&bits), n, k);
        for w_off in [0usize, 2, 8] {
            let wbuf = gpu.alloc(w_off + n * k * 2).expect("alloc w");
            gpu.write(wbuf.ptr().offset(w_off), &bits).expect("upload w");
            let ws = wbuf.slice().sub(w_off, n * k * 2).unwrap();
            for (b, x_off) in [(1, 2), (3, 8), (8, 0)] {
                if w_off == 0 && x_off == 0 {
                    continue; // the aligned case is covered above
                }
                check(&gpu, dt, ws, &oracle, n, k, b, x_off);
            }
        }
    }
}

#[test]
fn gemv_rejects_bad_shapes() {
    let Some(gpu) = gpu("gemv_rejects_bad_shapes") else { return };
    let (n, k) = (16, 16);
    let w = gpu.alloc(n * k * 2).unwrap();
    let x = gpu.alloc(9 * k * 2).unwrap();
    let y = gpu.alloc(9 * n * 4).unwrap();
    let dt = GpuDType::BF16;
    let params = |w, y, b| GemvParams { w, x: x.slice(), y, n, k, b, stages: 0 };
    for b in [0, launch::GEMV_MAX_B + 1] {
        let r = launch::gemv(&gpu, &gpu.stream, dt, &params(w.slice(), y.slice(), b));
        assert!(r.is_err(), "gemv with B = {b} must be refused");
    }
    for stages in [0, 3] {
        let cfg = launch::GemvConfig::new(stages, 0);
        let r = launch::gemv_with(&gpu, &gpu.stream, dt, &params(w.slice(), y.slice(), 1), cfg);
        assert!(r.is_err(), "gemv with {stages} stages must be refused");
    }
    // Run 4's kernel has no L2 prefetch: asking it for one is refused, not ignored.
    let run4_prefetch = launch::GemvConfig { prefetch_mb: 4, ..launch::GemvConfig::DEFAULT };
    let r = launch::gemv_with(&gpu, &gpu.stream, dt, &params(w.slice(), y.slice(), 1), run4_prefetch);
    assert!(r.is_err(), "a prefetch on run 4's gemv must be refused");
    // y one value too small, w one row too small.
    let y_small = y.slice().sub(0, 2 * n * 4 - 4).unwrap();
    assert!(launch::gemv(&gpu, &gpu.stream, dt, &params(w.slice(), y_small, 2)).is_err());
    let w_small = w.slice().sub(0, (n - 1) * k * 2).unwrap();
    assert!(launch::gemv(&gpu, &gpu.stream, dt, &params(w_small, y.slice(), 2)).is_err());
    gpu.sync().unwrap();
}

#[test]
fn gemv_zero_depth_writes_zeros() {
    let Some(gpu) = gpu("gemv_zero_depth_writes_zeros") else { return };
    // K = 0: an empty sum, every y[b, n] = 0 (and nothing past y).
    let (n, b) = (37, 3);
    let (w, x) = (gpu.alloc(16).unwrap(), gpu.alloc(16).unwrap());
    for dt in DTYPES {
        let (ybuf, ys) = poisoned_out(&gpu, b * n);
        launch::gemv(&gpu, &gpu.stream, dt, &GemvParams { w: w.slice(), x: x.slice(), y: ys, n, k: 0, b, stages: 0 })
            .unwrap();
        let got = read_checked(&gpu, &ybuf, b * n, "gemv K0");
        assert!(got.iter().all(|&v| v == 0.0), "gemv {dt:?} K = 0 must write zeros: {got:?}");
    }
}
