//! `swiglu_{bf16,f16}` vs `cpu::swiglu`.
//!
//! Tolerance: rtol `tol(dt)` + atol 1e-6. Both sides evaluate `u * (g / (1 + exp(-g)))` with the
//! same IEEE f32 add, divide and multiply; only exp differs (CUDA expf ≤ 2 ulp, glibc expf < 1
//! ulp), which moves 1 + e by a few ulp and the result by ~3e-7 relative. Rounding to T can then
//! flip by one ulp of T (≤ 2⁻⁷ relative for bf16, 2⁻¹⁰ for fp16), inside tol(dt); atol covers fp16
//! subnormal results (spacing 6e-8).
use crate::common::*;
use qwen_rt::backend::cpu;
use qwen_rt::backend::cuda::launch::{self, SwigluParams};

/// (T, F): the 7B MLP width at decode and prefill widths, ragged F (1, 7, 127: scalar path;
/// 4, 12, 4100: vector path with partly filled blocks).
const SHAPES: [(usize, usize); 10] =
    [(1, 11008), (7, 11008), (127, 11008), (3, 1), (5, 7), (2, 127), (4, 4), (3, 12), (2, 4100), (300, 8)];

/// Split `[T, 2F]` rows into up `[T, F]` and gate `[T, F]`.
fn split(upgate: &[f32], f: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut up, mut gate) = (Vec::new(), Vec::new());
    for row in upgate.chunks_exact(2 * f) {
        up.extend_from_slice(&row[..f]);
        gate.extend_from_slice(&row[f..]);
    }
    (up, gate)
}

fn check(gpu: &qwen_rt::backend::cuda::device::Gpu, t: usize, f: usize, upgate_host: &[f32], what: &str) {
    for dt in DTYPES {
        let upgate = upload_f32(gpu, upgate_host);
        let out = poisoned(gpu, (t + 1) * f * 2); // one guard row
        launch::swiglu(gpu, &gpu.stream, dt, &SwigluParams { upgate: upgate.slice(), out: out.slice(), f, t }).unwrap();
        let got = read_dt(gpu, dt, out.slice(), t * f);
        let guard = gpu.read::<u16>(out.ptr().offset(t * f * 2), f).unwrap();
        let (up, gate) = split(upgate_host, f);
        let mut want = vec![0f32; t * f];
        cpu::swiglu(&up, &gate, &mut want);
        let what = format!("{what} {dt:?} T{t} F{f}");
        assert_close(&what, &got, &want, 1e-6, tol(dt));
        let bad = guard.iter().filter(|&&b| b != 0xFFFF).count();
        assert_eq!(bad, 0, "{what}: {bad} values of the guard row after the output were written");
    }
}

#[test]
fn swiglu_matches_cpu() {
    let Some(gpu) = gpu("swiglu_matches_cpu") else { return };
    for (t, f) in SHAPES {
        // up in [-4, 4), gate in [-12, 12): silu's linear, curved and vanishing parts.
        let mut upgate = rand_vec(t * 2 * f, 41 + f as u64, 4.0);
        for row in upgate.chunks_exact_mut(2 * f) {
            row[f..].iter_mut().for_each(|g| *g *= 3.0);
        }
        check(&gpu, t, f, &upgate, "swiglu");
    }
}

#[test]
fn swiglu_extreme_gates() {
    // exp(-g) overflows to inf for g < -88.7: silu = g / inf = -0, like the CPU; large positive g
    // gives silu = g. Zeros and a gate of exactly 0 too.
    let Some(gpu) = gpu("swiglu_extreme_gates") else { return };
    let gates =
        [-1000.0f32, -100.0, -88.0, -87.5, -20.0, -1e-3, 0.0, -0.0, 1e-3, 20.0, 88.0, 100.0, 1000.0, 3.5, -3.5, 0.5];
    let f = gates.len();
    let t = 2;
    let mut upgate = Vec::new();
    for r in 0..t {
        let up = rand_vec(f, 51 + r as u64, 4.0);
        upgate.extend_from_slice(&up);
        upgate.extend_from_slice(&gates);
    }
    check(&gpu, t, f, &upgate, "swiglu extreme");
}

#[test]
fn swiglu_rejects_short_buffers() {
    let Some(gpu) = gpu("swiglu_rejects_short_buffers") else { return };
    let (t, f) = (3, 64);
    let dt = DTYPES[0];
    let upgate = upload_f32(&gpu, &vec![1f32; t * 2 * f]);
    let out = poisoned(&gpu, t * f * 2);
    let s = &gpu.stream;
    let params = |t, f| SwigluParams { upgate: upgate.slice(), out: out.slice(), f, t };
    assert!(launch::swiglu(&gpu, s, dt, &params(t, f + 1)).is_err());
    assert!(launch::swiglu(&gpu, s, dt, &params(t + 1, f)).is_err());
    assert!(launch::swiglu(&gpu, s, dt, &params(t, 0)).is_err());
}
