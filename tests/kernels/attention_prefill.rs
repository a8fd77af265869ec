//! `attention_prefill_{bf16,f16}` (mma.sync) and `attention_prefill_wmma_{bf16,f16}` (its WMMA
//! fallback) vs `cpu::attention`: every case runs on both kernels (`PrefillKernel::ALL`).
//!
//! Tolerance. The kernel rounds the probabilities P = exp(s - m) to T before P·V (FlashAttention's
//! choice) and divides by the sum of those rounded values, so its weights are w̃_j = w_j(1+δ_j)/(1+δ̄)
//! with |δ_j| <= u (unit roundoff of T: 2^-8 bf16, 2^-11 f16; `tol(dt)` = 4u) and
//! Σ_j |w̃_j - w_j| <= 2u/(1-u). The output error before the final rounding is therefore at most
//! 2u/(1-u)·max|v| (f16 subnormal P values add at most keys·2^-25·max|v|, and the f32 score/sum
//! differences ~1e-6 relative), plus the final rounding to T, at most u/2·|out|. Hence
//! atol = 0.75·tol(dt)·max|v| (= 3u·max|v|) and rtol = tol(dt).
//! q is drawn from [-6, 6) so the scores have a standard deviation of ~2 whatever D is: the
//! softmax is far from uniform and a key wrongly shown or hidden moves the output by far more
//! than the tolerance.
//! Every KV cache has its rows from pos0 + T on (up to cap, plus guard rows) poisoned with NaN, and
//! every output buffer a poisoned guard tail that must stay untouched.
use crate::common::*;
use qwen_rt::backend::cpu;
use qwen_rt::backend::cuda::device::{DevBuf, DevSlice, Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::{self, AttentionPrefillParams, PrefillKernel};
use qwen_rt::error::Error;
use qwen_rt::model::attention_scale;

/// Poisoned rows after each KV cache's `cap` rows: a kernel reading past row cap - 1 gets NaN.
const CACHE_GUARD_ROWS: usize = 4;
/// Poisoned elements after each output, checked to stay untouched (bits 0xFFFF).
const OUT_GUARD: usize = 256;
const Q_SCALE: f32 = 6.0;

/// One launch shape: `h` heads of dim `d`, `t` query rows at positions `pos0..pos0 + t`, a cache of
/// `cap` rows (rows `0..pos0 + t` hold keys/values, the rest NaN). `k_growth` scales key row j by
/// `1 + k_growth·j/64`, so later tiles hold larger scores and the running max moves.
#[derive(Debug, Clone, Copy)]
struct Case {
    h: usize,
    d: usize,
    t: usize,
    pos0: usize,
    cap: usize,
    k_growth: f32,
}

impl Case {
    fn new(h: usize, d: usize, t: usize, pos0: usize, cap: usize) -> Self {
        Case { h, d, t, pos0, cap, k_growth: 0.0 }
    }
}

/// A `[cap + CACHE_GUARD_ROWS, P]` cache: `vals` (rows 0..filled) rounded to `dt`, NaN after.
/// Returns the buffer and the rounded values.
fn upload_cache(gpu: &Gpu, dt: GpuDType, vals: &[f32], cap: usize, p: usize) -> (DevBuf, Vec<f32>) {
    assert!(vals.len() <= cap * p);
    let bits = dt.encode(vals);
    let buf = poisoned(gpu, (cap + CACHE_GUARD_ROWS) * p * 2);
    gpu.write(buf.ptr(), &bits).expect("upload cache");
    (buf, dt.decode(&bits))
}

/// Run `c` in `dt` on each kernel, on poisoned output, and compare with the oracle; checks the
/// output guard.
fn check(gpu: &Gpu, dt: GpuDType, c: Case, seed: u64) {
    for kernel in PrefillKernel::ALL {
        check_kernel(gpu, kernel, dt, c, seed);
    }
}

fn check_kernel(gpu: &Gpu, kernel: PrefillKernel, dt: GpuDType, c: Case, seed: u64) {
    let Case { h, d, t, pos0, cap, k_growth } = c;
    let p = h * d;
    let filled = pos0 + t;
    assert!(filled <= cap, "test case {c:?}: pos0 + T > cap");
    let (q, q_host) = upload_dt(gpu, dt, &rand_vec(t * p, seed, Q_SCALE));
    let mut k_vals = rand_vec(filled * p, seed + 1, 1.0);
    for (j, row) in k_vals.chunks_mut(p).enumerate() {
        let g = 1.0 + k_growth * j as f32 / 64.0;
        row.iter_mut().for_each(|x| *x *= g);
    }
    let (k, k_host) = upload_cache(gpu, dt, &k_vals, cap, p);
    let (v, v_host) = upload_cache(gpu, dt, &rand_vec(filled * p, seed + 2, 1.0), cap, p);
    let pos0_buf = upload_u32(gpu, &[pos0 as u32]);
    let out = poisoned(gpu, (t * p + OUT_GUARD) * 2);
    let cap_slice = k.slice().sub(0, cap * p * 2).unwrap(); // the launcher sees exactly cap rows
    let v_slice = v.slice().sub(0, cap * p * 2).unwrap();
    let params = AttentionPrefillParams {
        q: q.slice(),
        k_cache: cap_slice,
        v_cache: v_slice,
        out: out.slice().sub(0, t * p * 2).unwrap(),
        pos0: pos0_buf.slice(),
        t,
        h,
        d,
        cap,
        scale: attention_scale(d),
    };
    launch::attention_prefill(gpu, &gpu.stream, kernel, dt, &params).unwrap();
    let all = gpu.read::<u16>(out.ptr(), t * p + OUT_GUARD).expect("read out");
    let touched = all[t * p..].iter().filter(|&&b| b != 0xFFFF).count();
    assert_eq!(
        touched, 0,
        "attention_prefill {kernel:?} {dt:?} {c:?}: {touched} guard elements after out [T, P] were written"
    );
    let got = dt.decode(&all[..t * p]);

    let mut want = vec![0f32; t * p];
    cpu::attention(&q_host, &k_host, &v_host, pos0, h, d, &mut want);
    let max_v = v_host.iter().fold(0f32, |m, x| m.max(x.abs()));
    let atol = 0.75 * tol(dt) * max_v;
    assert_close(&format!("attention_prefill {kernel:?} {dt:?} {c:?}"), &got, &want, atol, tol(dt));
}

#[test]
fn attention_prefill_matches_cpu() {
    let Some(gpu) = gpu("attention_prefill_matches_cpu") else { return };
    // pos0 = 0; cap a little larger than T (the rows past T are NaN and must not be read).
    // (H, D): the 7B shape, 7B head dim with few heads, tiny-model dims, and D = 64.
    for (h, d) in [(32, 128), (2, 128), (2, 16), (4, 32), (3, 64)] {
        for t in [1, 7, 64, 127, 300] {
            for dt in DTYPES {
                check(&gpu, dt, Case::new(h, d, t, 0, t + 5), 11 + t as u64 + d as u64);
            }
        }
    }
}

#[test]
fn attention_prefill_offset_matches_cpu() {
    let Some(gpu) = gpu("attention_prefill_offset_matches_cpu") else { return };
    // pos0 > 0 (a chunked prompt / appended turn); several with cap exactly pos0 + T.
    let cases = [
        Case::new(2, 128, 37, 100, 256),
        Case::new(32, 128, 37, 100, 137), // cap exact, 7B shape
        Case::new(2, 128, 127, 65, 192),  // cap exact, ragged tiles on both sides
        Case::new(4, 32, 50, 150, 200),   // cap exact
        Case::new(3, 64, 64, 63, 127),    // cap exact
        Case::new(2, 16, 1, 300, 301),    // one row at the end of a full cache
        Case::new(2, 16, 300, 7, 400),
        Case::new(2, 128, 300, 1000, 1300), // cap exact, many key tiles before the queries
    ];
    for (i, c) in cases.into_iter().enumerate() {
        for dt in DTYPES {
            check(&gpu, dt, c, 500 + i as u64);
        }
    }
}

#[test]
fn attention_prefill_rescales_when_max_moves() {
    let Some(gpu) = gpu("attention_prefill_rescales_when_max_moves") else { return };
    // Key rows grow with their position, so each new key tile raises the running max of most rows
    // and the accumulated O and l must be rescaled by exp(m_old - m_new) correctly.
    let cases = [
        Case { k_growth: 1.0, ..Case::new(2, 128, 300, 0, 300) },
        Case { k_growth: 0.5, ..Case::new(4, 32, 100, 200, 300) },
    ];
    for (i, c) in cases.into_iter().enumerate() {
        for dt in DTYPES {
            check(&gpu, dt, c, 900 + i as u64);
        }
    }
}

#[test]
fn attention_prefill_rejects_bad_shapes() {
    let Some(gpu) = gpu("attention_prefill_rejects_bad_shapes") else { return };
    let (h, t, cap) = (2, 4, 8);
    let buf = poisoned(&gpu, cap * h * 256 * 2);
    let pos0 = upload_u32(&gpu, &[0]);
    let s = buf.slice();
    let params = |k_cache: DevSlice, t: usize, d: usize| AttentionPrefillParams {
        q: s,
        k_cache,
        v_cache: s,
        out: s,
        pos0: pos0.slice(),
        t,
        h,
        d,
        cap,
        scale: 1.0,
    };
    for (dt, k) in DTYPES.into_iter().flat_map(|dt| PrefillKernel::ALL.map(|k| (dt, k))) {
        // Unsupported head dims are refused, naming D.
        for d in [8, 48, 96, 256] {
            match launch::attention_prefill(&gpu, &gpu.stream, k, dt, &params(s, t, d)) {
                Err(Error::Backend(msg)) => assert!(msg.contains(&format!("D = {d}")), "message `{msg}`"),
                other => panic!("D = {d}: expected Error::Backend, got {other:?}"),
            }
        }
        // A cache smaller than cap rows, and T > cap, are refused too.
        let d = 128;
        let short = s.sub(0, (cap - 1) * h * d * 2).unwrap();
        let r = launch::attention_prefill(&gpu, &gpu.stream, k, dt, &params(short, t, d));
        assert!(matches!(r, Err(Error::Backend(_))), "short k_cache: {r:?}");
        let r = launch::attention_prefill(&gpu, &gpu.stream, k, dt, &params(s, cap + 1, d));
        assert!(matches!(r, Err(Error::Backend(_))), "T > cap: {r:?}");
    }
    gpu.sync().unwrap();
}
