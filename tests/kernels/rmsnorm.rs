//! `rmsnorm_{bf16,f16}` vs `cpu::rmsnorm`; `add_rmsnorm_{bf16,f16}` vs `cpu::add` + `cpu::rmsnorm`.
//!
//! Tolerance of the T outputs: rtol `tol(dt)` + atol 1e-6. The GPU and the CPU both sum the C
//! non-negative squares in f32, in different orders (CPU: 16 lanes of C/16 sequential adds, then a
//! tree; GPU: 256 per-thread sums, then shuffle trees); each order's relative error is at most
//! ~(C/16 + 4)·2⁻²⁴ ≈ 3e-5 at C = 8192 (typically far less), inv = 1/sqrt(·) halves it, and
//! `(x · inv) · w` is the same two f32 products. So the f32 values before rounding agree to ~3e-5
//! relative; rounding them to T can then flip by one ulp of T (≤ 2⁻⁷ relative for bf16, 2⁻¹⁰ for
//! fp16), inside tol(dt). atol covers fp16 subnormal outputs (spacing 6e-8). The f32 x written back
//! by add_rmsnorm is the same single IEEE addition as `cpu::add`: compared bit for bit.
use crate::common::*;
use qwen_rt::backend::cpu;
use qwen_rt::backend::cuda::device::DevSlice;
use qwen_rt::backend::cuda::launch::{self, EmbeddingParams, RmsnormParams, SwigluParams};

/// The rmsnorm family's parameters (`y` only read by add_rmsnorm), eps = EPS.
fn norm(x: DevSlice, y: DevSlice, w: DevSlice, out: DevSlice, c: usize) -> RmsnormParams<DevSlice, usize> {
    RmsnormParams { x, y, w, out, c, eps: EPS }
}

/// (T, C): the 7B hidden size at decode and prefill widths, the largest C the kernels promise
/// (8192), C % 4 != 0 (scalar path: 1, 7, 127, 4097) and small C % 4 == 0 (vector path: 4, 12).
const SHAPES: [(usize, usize); 11] =
    [(1, 4096), (7, 4096), (127, 4096), (3, 8192), (3, 1), (5, 7), (2, 127), (2, 4097), (4, 4), (3, 12), (2, 11008)];

const EPS: f32 = 1e-6;

/// Row values with a spread of magnitudes: row r is scaled by 2^(r % 5 - 2) around `scale`.
fn rows(t: usize, c: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut v = rand_vec(t * c, seed, scale);
    for (r, row) in v.chunks_exact_mut(c).enumerate() {
        let s = (2f32).powi(r as i32 % 5 - 2);
        row.iter_mut().for_each(|e| *e *= s);
    }
    v
}

/// Bits of the row after the T output rows (the guard) are still the 0xFFFF poison.
fn assert_guard_untouched(what: &str, bits: &[u16]) {
    let bad = bits.iter().filter(|&&b| b != 0xFFFF).count();
    assert_eq!(bad, 0, "{what}: {bad} values of the guard row after the output were written");
}

#[test]
fn rmsnorm_matches_cpu() {
    let Some(gpu) = gpu("rmsnorm_matches_cpu") else { return };
    for (t, c) in SHAPES {
        for dt in DTYPES {
            let x_host = rows(t, c, 11 + c as u64, 3.0);
            let x = upload_f32(&gpu, &x_host);
            let (w, w_host) = upload_dt(&gpu, dt, &rand_vec(c, 5 + c as u64, 1.5));
            let out = poisoned(&gpu, (t + 1) * c * 2); // one guard row
            launch::rmsnorm(&gpu, &gpu.stream, dt, &norm(x.slice(), DevSlice::default(), w.slice(), out.slice(), c), t)
                .unwrap();
            let got = read_dt(&gpu, dt, out.slice(), t * c);
            let guard = gpu.read::<u16>(out.ptr().offset(t * c * 2), c).unwrap();
            let mut want = vec![0f32; t * c];
            cpu::rmsnorm(&x_host, &w_host, EPS, &mut want);
            let what = format!("rmsnorm {dt:?} T{t} C{c}");
            assert_close(&what, &got, &want, 1e-6, tol(dt));
            assert_guard_untouched(&what, &guard);
            // x is an input only.
            assert_close(&format!("{what} x unchanged"), &read_f32(&gpu, x.slice(), t * c), &x_host, 0.0, 0.0);
        }
    }
}

#[test]
fn rmsnorm_zero_row_gives_zeros() {
    // mean(x²) = 0: inv = 1/sqrt(eps), out = 0 · inv · w = 0 (no NaN).
    let Some(gpu) = gpu("rmsnorm_zero_row_gives_zeros") else { return };
    let (t, c) = (2, 4096);
    for dt in DTYPES {
        let x = upload_f32(&gpu, &vec![0f32; t * c]);
        let (w, _) = upload_dt(&gpu, dt, &rand_vec(c, 3, 1.0));
        let out = poisoned(&gpu, t * c * 2);
        launch::rmsnorm(&gpu, &gpu.stream, dt, &norm(x.slice(), DevSlice::default(), w.slice(), out.slice(), c), t)
            .unwrap();
        let got = read_dt(&gpu, dt, out.slice(), t * c);
        assert_close(&format!("rmsnorm zero rows {dt:?}"), &got, &vec![0f32; t * c], 0.0, 0.0);
    }
}

#[test]
fn rmsnorm_add_matches_cpu() {
    let Some(gpu) = gpu("rmsnorm_add_matches_cpu") else { return };
    for (t, c) in SHAPES {
        for dt in DTYPES {
            let x_host = rows(t, c, 21 + c as u64, 3.0);
            let y_host = rand_vec(t * c, 31 + c as u64, 2.0);
            let x = upload_f32(&gpu, &x_host);
            let y = upload_f32(&gpu, &y_host);
            let (w, w_host) = upload_dt(&gpu, dt, &rand_vec(c, 7 + c as u64, 1.5));
            let out = poisoned(&gpu, (t + 1) * c * 2); // one guard row
            launch::add_rmsnorm(&gpu, &gpu.stream, dt, &norm(x.slice(), y.slice(), w.slice(), out.slice(), c), t)
                .unwrap();
            let got = read_dt(&gpu, dt, out.slice(), t * c);
            let got_x = read_f32(&gpu, x.slice(), t * c);
            let guard = gpu.read::<u16>(out.ptr().offset(t * c * 2), c).unwrap();
            let mut want_x = x_host.clone();
            cpu::add(&mut want_x, &y_host);
            let mut want = vec![0f32; t * c];
            cpu::rmsnorm(&want_x, &w_host, EPS, &mut want);
            let what = format!("add_rmsnorm {dt:?} T{t} C{c}");
            assert_close(&format!("{what} x"), &got_x, &want_x, 0.0, 0.0);
            assert_close(&format!("{what} out"), &got, &want, 1e-6, tol(dt));
            assert_guard_untouched(&what, &guard);
            // y is an input only.
            assert_close(&format!("{what} y unchanged"), &read_f32(&gpu, y.slice(), t * c), &y_host, 0.0, 0.0);
        }
    }
}

#[test]
fn rmsnorm_rejects_short_buffers() {
    let Some(gpu) = gpu("rmsnorm_rejects_short_buffers") else { return };
    let (t, c) = (3, 64);
    let dt = DTYPES[0];
    let x = upload_f32(&gpu, &vec![1f32; t * c]);
    let w = poisoned(&gpu, c * 2);
    let out = poisoned(&gpu, t * c * 2);
    let short = poisoned(&gpu, t * c * 2 - 2);
    let s = &gpu.stream;
    assert!(
        launch::rmsnorm(&gpu, s, dt, &norm(x.slice(), DevSlice::default(), w.slice(), short.slice(), c), t).is_err()
    );
    assert!(launch::rmsnorm(&gpu, s, dt, &norm(x.slice(), DevSlice::default(), w.slice(), out.slice(), 0), t).is_err());
    assert!(launch::rmsnorm(&gpu, s, dt, &norm(x.slice(), DevSlice::default(), short.slice(), out.slice(), c + 1), t)
        .is_err());
    assert!(launch::add_rmsnorm(&gpu, s, dt, &norm(x.slice(), short.slice(), w.slice(), out.slice(), c), t).is_err());
}

#[test]
fn pointwise_vector_paths_refuse_misaligned_views() {
    // Issue 13 §2c: run 4's rmsnorm / add_rmsnorm / swiglu / embedding take their vector path from
    // the shape alone; a view 4 bytes off must be refused by the launcher (the scalar shapes run).
    let Some(gpu) = gpu("pointwise_vector_paths_refuse_misaligned_views") else { return };
    let (s, dt, t) = (&*gpu.stream, qwen_rt::backend::cuda::device::GpuDType::BF16, 2usize);
    let buf = gpu.alloc(1 << 20).unwrap();
    let at = |off: usize, bytes: usize| buf.slice().sub(off, bytes).unwrap();
    let (c, odd) = (64usize, 63usize);
    let (x, w, out) = (at(4, t * c * 4), at(65536, c * 2), at(131072, t * c * 2));
    let e = launch::rmsnorm(&gpu, s, dt, &norm(x, DevSlice::default(), w, out, c), t).unwrap_err().to_string();
    assert!(e.contains("rmsnorm x") && e.contains("aligned"), "{e}");
    let y = at(262144 + 4, t * c * 4);
    assert!(launch::add_rmsnorm(&gpu, s, dt, &norm(at(196608, t * c * 4), y, w, out, c), t).is_err());
    launch::rmsnorm(&gpu, s, dt, &norm(at(4, t * odd * 4), DevSlice::default(), w, out, odd), t)
        .expect("C % 4 != 0: scalar path, any 4-byte view");
    let e = launch::swiglu(&gpu, s, dt, &SwigluParams { upgate: at(4, t * 2 * c * 4), out, f: c, t })
        .unwrap_err()
        .to_string();
    assert!(e.contains("swiglu upgate"), "{e}");
    let ids = at(393216, t * 4);
    gpu.memset(s, ids.ptr, 0, t * 4).unwrap();
    let emb = EmbeddingParams { wte: at(8, 4 * c * 2), ids, out: at(458752, t * c * 4), v: 4, c };
    let e = launch::embedding(&gpu, s, dt, &emb, t).unwrap_err().to_string();
    assert!(e.contains("embedding wte"), "{e}");
    s.synchronize().unwrap();
}
