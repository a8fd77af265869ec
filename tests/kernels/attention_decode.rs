//! `attention_decode_{bf16,f16}` + `attention_decode_combine_{bf16,f16}` vs `cpu::attention`, and
//! the split partials against their definition; the fused combine (tickets in a counter buffer, the
//! last split block merges) against the same oracle, launched twice on the same counters (which must
//! be back at zero after each launch) with identical results.
//!
//! Tolerance of the attention output: it is a convex combination of V rows (|out| <= max|v|),
//! computed in f32 and rounded once to T. The rounding is at most half an ulp of T, inside
//! rtol = tol(dt). The f32 part differs from the CPU only in summation order (dot products,
//! softmax sums over up to 8192 keys) and expf (<= 2 ulp): a score error |Δs| ~ 1e-6 moves each
//! weight by a relative ~1e-6, and a rounding-error sum over n keys grows like √n·eps, so the f32
//! difference is ~1e-6·max|v| (a numpy f32 model of this split computation at 8192 keys: 3e-8).
//! Hence atol = 2e-4·max|v| for both dtypes: a wide margin that still sees a missing or doubled
//! split (the partials test checks each split's keys exactly). An atol of tol(dt)·max|v| would
//! be blind: with 8192 keys the outputs are only ~0.03–0.1.
//! q is drawn from [-6, 6) so the scores have a standard deviation of ~2 whatever D is and the
//! softmax is far from uniform.
use crate::common::*;
use qwen_rt::backend::cpu;
use qwen_rt::backend::cuda::device::{DevBuf, DevSlice, Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::{self, AttentionDecodeParams, DecodeSplit};
use qwen_rt::model::attention_scale;

/// Poisoned rows after each KV cache: a kernel reading past row cap - 1 gets NaN.
const CACHE_GUARD_ROWS: usize = 4;
/// Poisoned elements after each output / partial buffer, checked to stay untouched.
const OUT_GUARD: usize = 64;
const Q_SCALE: f32 = 6.0;
/// atol of the attention output per unit of max|v| (see the module comment).
const ATOL_V: f32 = 2e-4;

/// A `[cap, P]` cache of `vals` in `dt` followed by CACHE_GUARD_ROWS poisoned rows; returns the
/// buffer and the rounded values.
fn upload_cache(gpu: &Gpu, dt: GpuDType, vals: &[f32], p: usize) -> (DevBuf, Vec<f32>) {
    let bits = dt.encode(vals);
    let bytes = (vals.len() + CACHE_GUARD_ROWS * p) * 2;
    let buf = poisoned(gpu, bytes);
    gpu.write(buf.ptr(), &bits).expect("upload cache");
    (buf, dt.decode(&bits))
}

/// What one launch produced: out `[T, P]` (as f32), part_o, part_ml.
struct Run {
    out: Vec<f32>,
    part_o: Vec<f32>,
    part_ml: Vec<f32>,
}

/// Launch on poisoned out / partial buffers (each with a poisoned guard tail, checked afterwards).
#[allow(clippy::too_many_arguments)]
fn run(
    gpu: &Gpu,
    dt: GpuDType,
    q: DevSlice,
    k: DevSlice,
    v: DevSlice,
    pos0: u32,
    t: usize,
    h: usize,
    d: usize,
    cap: usize,
    split: DecodeSplit,
    fused: bool,
) -> Run {
    let p = h * d;
    let (o_bytes, ml_bytes) = launch::decode_workspace_bytes(t, h, d, split);
    let part_o = poisoned(gpu, o_bytes + OUT_GUARD * 4);
    let part_ml = poisoned(gpu, ml_bytes + OUT_GUARD * 4);
    let out = poisoned(gpu, (t * p + OUT_GUARD) * 2);
    let pos0_buf = upload_u32(gpu, &[pos0]);
    // Fused: [T, H] u32 counters, zero, then a poisoned guard tail.
    let counters = poisoned(gpu, (t * h + OUT_GUARD) * 4);
    gpu.memset(&gpu.stream, counters.ptr(), 0, t * h * 4).expect("zero counters");
    let launch_once = || {
        let params = AttentionDecodeParams {
            q,
            k_cache: k,
            v_cache: v,
            part_o: part_o.slice(),
            part_ml: part_ml.slice(),
            pos0: pos0_buf.slice(),
            h,
            d,
            cap,
            split_len: split.split_len,
            n_splits: split.n_splits,
            scale: attention_scale(d),
            out: out.slice(),
            counters: if fused { counters.slice().sub(0, t * h * 4).unwrap() } else { DevSlice::default() },
        };
        launch::attention_decode(gpu, &gpu.stream, dt, &params, t, split, fused).expect("launch attention_decode");
        let c = read_u32(gpu, counters.slice(), t * h + OUT_GUARD);
        assert!(c[..t * h].iter().all(|&x| x == 0), "the combine counters were not left at zero: {:?}", &c[..t * h]);
        assert!(c[t * h..].iter().all(|&b| b == u32::MAX), "counters guard tail was written");
        gpu.read::<u16>(out.ptr(), t * p + OUT_GUARD).expect("read out")
    };
    let out_bits = launch_once();
    if fused {
        // Again on the counters the first launch left: the same result.
        assert!(launch_once() == out_bits, "a second fused launch gave a different output");
    }
    assert!(out_bits[t * p..].iter().all(|&b| b == 0xFFFF), "out guard tail was written");
    let po = read_u32(gpu, part_o.slice(), o_bytes / 4 + OUT_GUARD);
    let pml = read_u32(gpu, part_ml.slice(), ml_bytes / 4 + OUT_GUARD);
    assert!(po[o_bytes / 4..].iter().all(|&b| b == u32::MAX), "part_o guard tail was written");
    assert!(pml[ml_bytes / 4..].iter().all(|&b| b == u32::MAX), "part_ml guard tail was written");
    Run {
        out: dt.decode(&out_bits[..t * p]),
        part_o: po[..o_bytes / 4].iter().map(|&b| f32::from_bits(b)).collect(),
        part_ml: pml[..ml_bytes / 4].iter().map(|&b| f32::from_bits(b)).collect(),
    }
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// The oracle for queries at pos0 + i where every query may be past the cache: each row attends
/// keys 0..min(pos0 + i + 1, cap), i.e. cpu::attention at position min(pos0 + i, cap - 1).
fn oracle(q: &[f32], k: &[f32], v: &[f32], pos0: u64, h: usize, d: usize, cap: usize) -> Vec<f32> {
    let p = h * d;
    let mut want = vec![0f32; q.len()];
    for (i, (qr, wr)) in q.chunks(p).zip(want.chunks_mut(p)).enumerate() {
        let pos = (pos0 + i as u64).min(cap as u64 - 1) as usize;
        cpu::attention(qr, &k[..cap * p], &v[..cap * p], pos, h, d, wr);
    }
    want
}

/// Upload q `[T, P]` rounded to dt, optionally one element past a 16-byte boundary (`shift`),
/// which forces the kernel's scalar path.
fn upload_q(gpu: &Gpu, dt: GpuDType, q: &[f32], shift: bool) -> (DevBuf, DevSlice, Vec<f32>) {
    let bits = dt.encode(q);
    let rounded = dt.decode(&bits);
    let mut padded = Vec::with_capacity(bits.len() + 1);
    if shift {
        padded.push(0u16);
    }
    padded.extend_from_slice(&bits);
    let buf = gpu.upload(&padded).expect("upload q");
    let slice = if shift { buf.slice().sub(2, bits.len() * 2).expect("shifted q") } else { buf.slice() };
    (buf, slice, rounded)
}

#[test]
fn attention_decode_matches_cpu() {
    let Some(gpu) = gpu("attention_decode_matches_cpu") else { return };
    // The 7B head shape and a tiny-model one, in an 8192-row cache (n_splits fixed by cap); n_keys
    // crosses the split boundaries (split_len 128) and 64; pos0 = 8191 fills the cache exactly.
    let cap = 8192;
    let split = DecodeSplit::for_capacity(cap);
    for (h, d) in [(32usize, 128usize), (4, 16)] {
        let p = h * d;
        let k_vals = rand_vec(cap * p, 11 + d as u64, 1.0);
        let v_vals = rand_vec(cap * p, 12 + d as u64, 1.0);
        for dt in DTYPES {
            let (k, k_host) = upload_cache(&gpu, dt, &k_vals, p);
            let (v, v_host) = upload_cache(&gpu, dt, &v_vals, p);
            let atol = ATOL_V * max_abs(&v_host);
            let cases =
                [0u32, 1, 63, 64, 127, 128, 255, 256, 1000, 8191].map(|p0| (1usize, p0)).into_iter().chain([(7, 100)]);
            for (t, pos0) in cases {
                let (_qb, q, q_host) = upload_q(&gpu, dt, &rand_vec(t * p, 13 + pos0 as u64, Q_SCALE), false);
                let want = oracle(&q_host, &k_host, &v_host, pos0 as u64, h, d, cap);
                for fused in [false, true] {
                    let got = run(&gpu, dt, q, k.slice(), v.slice(), pos0, t, h, d, cap, split, fused);
                    let what = format!("attention_decode {dt:?} H{h} D{d} T{t} pos0 {pos0} fused {fused}");
                    assert_close(&what, &got.out, &want, atol, tol(dt));
                }
            }
        }
    }
}

#[test]
fn attention_decode_ragged_shapes_match_cpu() {
    let Some(gpu) = gpu("attention_decode_ragged_shapes_match_cpu") else { return };
    // (H, D, cap, split, shift q): D % 8 != 0 (scalar path, D = 7 odd, D = 6, 18, 100), 8 | D with
    // idle lanes (D = 24, 48), D = 256 (a whole warp per key), a misaligned q (scalar path with
    // D = 16), split lengths that are not multiples of 64 and more splits than the cache needs.
    let shapes = [
        (3usize, 6usize, 200usize, DecodeSplit::for_capacity(200), false),
        (2, 18, 130, DecodeSplit { split_len: 37, n_splits: 4 }, false),
        (5, 100, 300, DecodeSplit { split_len: 100, n_splits: 5 }, false),
        (1, 7, 70, DecodeSplit::for_capacity(70), false),
        (3, 24, 200, DecodeSplit::for_capacity(200), false),
        (4, 48, 256, DecodeSplit { split_len: 64, n_splits: 4 }, false),
        (2, 256, 300, DecodeSplit::for_capacity(300), false),
        (4, 16, 200, DecodeSplit::for_capacity(200), true),
        (32, 128, 2000, DecodeSplit::for_capacity(2000), false),
    ];
    for (h, d, cap, split, shift) in shapes {
        let p = h * d;
        let k_vals = rand_vec(cap * p, 21 + d as u64, 1.0);
        let v_vals = rand_vec(cap * p, 22 + d as u64, 1.0);
        for dt in DTYPES {
            let (k, k_host) = upload_cache(&gpu, dt, &k_vals, p);
            let (v, v_host) = upload_cache(&gpu, dt, &v_vals, p);
            let atol = ATOL_V * max_abs(&v_host);
            // T = 5 at the start, the middle and the end (pos0 + T = cap), and a whole prefill
            // from position 0 (the fallback for D the flash kernel does not support).
            for (t, pos0) in [(5usize, 0usize), (5, cap / 2), (5, cap - 5), (cap.min(129), 0)] {
                let (_qb, q, q_host) = upload_q(&gpu, dt, &rand_vec(t * p, 23 + pos0 as u64, Q_SCALE), shift);
                let want = oracle(&q_host, &k_host, &v_host, pos0 as u64, h, d, cap);
                for fused in [false, true] {
                    let got = run(&gpu, dt, q, k.slice(), v.slice(), pos0 as u32, t, h, d, cap, split, fused);
                    let what = format!(
                        "attention_decode {dt:?} H{h} D{d} cap {cap} split {split:?} shift {shift} T{t} pos0 {pos0} fused {fused}"
                    );
                    assert_close(&what, &got.out, &want, atol, tol(dt));
                }
            }
        }
    }
}

#[test]
fn attention_decode_pos0_past_cap_reads_only_cap_rows() {
    let Some(gpu) = gpu("attention_decode_pos0_past_cap_reads_only_cap_rows") else { return };
    // The rows after the cache are NaN: any read past row cap - 1 would make the output NaN.
    // Documented behaviour: a query past the cache attends all cap rows.
    for (h, d, cap) in [(4usize, 16usize, 200usize), (32, 128, 300)] {
        let p = h * d;
        let split = DecodeSplit::for_capacity(cap);
        let k_vals = rand_vec(cap * p, 31 + d as u64, 1.0);
        let v_vals = rand_vec(cap * p, 32 + d as u64, 1.0);
        for dt in DTYPES {
            let (k, k_host) = upload_cache(&gpu, dt, &k_vals, p);
            let (v, v_host) = upload_cache(&gpu, dt, &v_vals, p);
            let atol = ATOL_V * max_abs(&v_host);
            for pos0 in [cap as u32 - 1, cap as u32, cap as u32 + 5, u32::MAX - 1] {
                let t = 3;
                let (_qb, q, q_host) = upload_q(&gpu, dt, &rand_vec(t * p, 33 + pos0 as u64, Q_SCALE), false);
                let want = oracle(&q_host, &k_host, &v_host, pos0 as u64, h, d, cap);
                for fused in [false, true] {
                    let got = run(&gpu, dt, q, k.slice(), v.slice(), pos0, t, h, d, cap, split, fused);
                    let what =
                        format!("attention_decode past cap {dt:?} H{h} D{d} cap {cap} pos0 {pos0} fused {fused}");
                    assert_close(&what, &got.out, &want, atol, tol(dt));
                }
            }
        }
    }
}

#[test]
fn attention_decode_partials_follow_the_contract() {
    let Some(gpu) = gpu("attention_decode_partials_follow_the_contract") else { return };
    // Splits of 64 keys, 5 of them for a 300-row cache; queries at 130..=132 leave splits 0 and 1
    // full, split 2 with 3..=5 keys and splits 3, 4 empty (which must hold m = -inf, l = 0, o = 0
    // exactly). Expected partials in f64 from the definition:
    //   m = max s_j, l = Σ exp(s_j - m), o = Σ exp(s_j - m) v_j over the split's keys.
    // Tolerances from f32 arithmetic: |Δs| <= D·eps·Σ|q_i k_i|·scale ~ 2e-5 here (|q| < 6,
    // |k| < 1, D <= 16), so m to 1e-4; l and o are sums of <= 64 terms each off by a relative
    // |Δs| + a few eps: 2e-4 relative to l and to Σ exp(s_j - m)|v_j| respectively.
    let (cap, t, pos0) = (300usize, 3usize, 130usize);
    let split = DecodeSplit { split_len: 64, n_splits: 5 };
    for (h, d) in [(4usize, 16usize), (3, 6)] {
        let p = h * d;
        let scale = 1.0 / (d as f64).sqrt();
        let k_vals = rand_vec(cap * p, 41 + d as u64, 1.0);
        let v_vals = rand_vec(cap * p, 42 + d as u64, 1.0);
        for dt in DTYPES {
            let (k, k_host) = upload_cache(&gpu, dt, &k_vals, p);
            let (v, v_host) = upload_cache(&gpu, dt, &v_vals, p);
            let (_qb, q, q_host) = upload_q(&gpu, dt, &rand_vec(t * p, 43, Q_SCALE), false);
            let got = run(&gpu, dt, q, k.slice(), v.slice(), pos0 as u32, t, h, d, cap, split, false);
            let mut worst = 0f64;
            for ti in 0..t {
                let n_keys = pos0 + ti + 1;
                for hi in 0..h {
                    let qh = &q_host[ti * p + hi * d..][..d];
                    for i in 0..split.n_splits {
                        let idx = (ti * h + hi) * split.n_splits + i;
                        let (gm, gl) = (got.part_ml[idx * 2], got.part_ml[idx * 2 + 1]);
                        let go = &got.part_o[idx * d..][..d];
                        let what = format!("{dt:?} H{h} D{d} t {ti} head {hi} split {i}");
                        let (b, e) = (i * split.split_len, ((i + 1) * split.split_len).min(n_keys));
                        if b >= e {
                            assert!(gm == f32::NEG_INFINITY && gl == 0.0, "{what}: empty split wrote m {gm} l {gl}");
                            assert!(go.iter().all(|&x| x == 0.0), "{what}: empty split wrote o {go:?}");
                            continue;
                        }
                        let s: Vec<f64> = (b..e)
                            .map(|j| {
                                let kr = &k_host[j * p + hi * d..][..d];
                                qh.iter().zip(kr).map(|(&a, &c)| a as f64 * c as f64).sum::<f64>() * scale
                            })
                            .collect();
                        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let l: f64 = s.iter().map(|&x| (x - m).exp()).sum();
                        let err_m = (gm as f64 - m).abs() / 1e-4;
                        let err_l = (gl as f64 - l).abs() / (2e-4 * l);
                        assert!(err_m <= 1.0 && err_l <= 1.0, "{what}: m {gm} l {gl}, want {m} {l}");
                        worst = worst.max(err_m).max(err_l);
                        for c in 0..d {
                            let (mut o, mut mag) = (0f64, 0f64);
                            for (jj, &sj) in s.iter().enumerate() {
                                let vv = v_host[(b + jj) * p + hi * d + c] as f64;
                                o += (sj - m).exp() * vv;
                                mag += (sj - m).exp() * vv.abs();
                            }
                            let err = (go[c] as f64 - o).abs() / (2e-4 * mag + 1e-6);
                            assert!(err <= 1.0, "{what}: o[{c}] = {}, want {o}", go[c]);
                            worst = worst.max(err);
                        }
                    }
                }
            }
            eprintln!("attention_decode partials {dt:?} H{h} D{d}: worst {worst:.3} of the tolerance");
            // The combined output still matches the oracle.
            let want = oracle(&q_host, &k_host, &v_host, pos0 as u64, h, d, cap);
            assert_close(
                &format!("attention_decode partials {dt:?} H{h} D{d} out"),
                &got.out,
                &want,
                ATOL_V * max_abs(&v_host),
                tol(dt),
            );
        }
    }
}

#[test]
fn attention_decode_rejects_bad_shapes() {
    let Some(gpu) = gpu("attention_decode_rejects_bad_shapes") else { return };
    let dt = GpuDType::BF16;
    let (h, d, cap, t) = (2usize, 16usize, 64usize, 1usize);
    let p = h * d;
    let split = DecodeSplit::for_capacity(cap);
    let buf = gpu.alloc(1 << 20).expect("alloc");
    let s = buf.slice();
    // T = 0 checks every shape and buffer but launches nothing (the buffer holds no real data).
    let params = |d: usize, cap: usize, split: DecodeSplit, q: DevSlice| AttentionDecodeParams {
        q,
        k_cache: s,
        v_cache: s,
        part_o: s,
        part_ml: s,
        pos0: s,
        h,
        d,
        cap,
        split_len: split.split_len,
        n_splits: split.n_splits,
        scale: 1.0,
        out: s,
        counters: s,
    };
    let call = |t: usize, d: usize, cap: usize, split: DecodeSplit, q: DevSlice| {
        launch::attention_decode(&gpu, &gpu.stream, dt, &params(d, cap, split, q), t, split, false)
    };
    assert!(call(0, d, cap, split, s).is_ok());
    assert!(call(0, 258, cap, split, s).is_err(), "D > 256");
    assert!(call(0, 0, cap, split, s).is_err(), "D = 0");
    assert!(call(0, d, 0, split, s).is_err(), "cap = 0");
    assert!(call(0, d, cap, DecodeSplit { split_len: 16, n_splits: 3 }, s).is_err(), "splits not covering cap");
    assert!(call(0, d, cap, DecodeSplit { split_len: 0, n_splits: 3 }, s).is_err(), "split_len 0");
    let small_q = s.sub(0, t * p * 2 - 2).unwrap();
    assert!(call(t, d, cap, split, small_q).is_err(), "q too small");
    let small_counters = s.sub(0, t * h * 4 - 4).unwrap();
    let small = AttentionDecodeParams { counters: small_counters, ..params(d, cap, split, s) };
    let r = launch::attention_decode(&gpu, &gpu.stream, dt, &small, t, split, true);
    assert!(r.is_err(), "counters [T, H] too small");
    let wrong_len = AttentionDecodeParams { split_len: split.split_len * 2, ..params(d, cap, split, s) };
    assert!(
        launch::attention_decode(&gpu, &gpu.stream, dt, &wrong_len, 0, split, false).is_err(),
        "split_len not the plan's"
    );
    gpu.sync().expect("sync");
}

#[test]
fn attention_decode_split_covers_the_cache() {
    // Host-only: the split plan every sequence uses.
    for cap in [1usize, 7, 63, 64, 65, 1024, 1025, 2048, 8192, 16384, 16385, 32768] {
        let s = DecodeSplit::for_capacity(cap);
        assert!(s.split_len % 64 == 0 && s.split_len > 0, "cap {cap}: {s:?}");
        assert!(s.n_splits * s.split_len >= cap && (s.n_splits - 1) * s.split_len < cap.max(1), "cap {cap}: {s:?}");
    }
    assert_eq!(DecodeSplit::for_capacity(8192), DecodeSplit { split_len: 128, n_splits: 64 });
    let (o, ml) = launch::decode_workspace_bytes(2, 32, 128, DecodeSplit { split_len: 128, n_splits: 64 });
    assert_eq!((o, ml), (2 * 32 * 64 * 128 * 4, 2 * 32 * 64 * 2 * 4));
}
