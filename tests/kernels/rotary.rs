//! `qkv_rope_append_{bf16,f16}` vs the CPU forward's own steps: matmul output + bias (f32), then
//! `cpu::rope` on q and on k, then `model::logn_scale` on q; v is the biased row.
//!
//! Tolerances. The bias add, theta = (f32)p · inv_freq[j], the rotation products / sums and the
//! logN product are the same IEEE f32 operations on both sides (the kernel uses __fmul_rn /
//! __fadd_rn so nothing is fused into an FMA), and the logN factor is the same f64 formula rounded
//! to f32. The only difference is cos / sin: CUDA's full-precision cosf / sinf are within 2 ulp,
//! glibc's (Rust f32::cos / sin) within 1 ulp, over the whole range, so also at the largest theta
//! here (~32767 rad: pos · inv_freq[0] with inv_freq[0] = 1). So c and s differ by ≤ 3 ulp of their own
//! value (≤ 3·2⁻²⁴ ≈ 1.8e-7 absolute), and x' = x1·c ∓ x2·s by ≤ 1.8e-7·(|x1| + |x2|) ≈ 1e-6 for the
//! |x| ≤ 2.5 used here (1.2e-6 after a logN factor ≤ ln 32767 / ln 8192 ≈ 1.15). Rounding to T
//! can then flip the last bit, one ulp of T (≤ 2⁻⁷ relative for bf16, 2⁻¹⁰ for fp16): rtol
//! tol(dt). atol 1e-5 covers the absolute 1.2e-6 where x' cancels to ~0 (there a relative bound
//! means nothing) and fp16 subnormals.
//! v involves no transcendental: its cache rows must equal T(qkv + bias) bit for bit.
use crate::common::*;
use qwen_rt::backend::cpu;
use qwen_rt::backend::cuda::device::{Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::{self, RopeParams};
use qwen_rt::config::QwenConfig;
use qwen_rt::model;

const ATOL: f32 = 1e-5;
/// Poisoned rows after the `cap` rows of each cache: the kernel must never reach them.
const GUARD_ROWS: usize = 2;
const POISON: u16 = 0xFFFF;

/// A Qwen config with the fields this kernel reads (the rest is irrelevant here).
fn config(h: usize, d: usize, seq_length: usize, use_logn: bool) -> QwenConfig {
    QwenConfig {
        hidden_size: h * d,
        num_layers: 1,
        num_heads: h,
        head_dim: d,
        mlp_width: 8,
        vocab_size: 16,
        seq_length,
        max_position_embeddings: 32768,
        rotary_emb_base: 10000.0,
        layer_norm_epsilon: 1e-6,
        use_dynamic_ntk: true,
        use_logn_attn: use_logn,
        tie_word_embeddings: false,
        bf16: true,
        fp16: false,
        fp32: false,
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    h: usize,
    d: usize,
    t: usize,
    /// Position of token 0 (written to the device scalar; may be anything, even >= cap).
    pos0: u32,
    cap: usize,
    alpha: f64,
    seq_length: usize,
    use_logn: bool,
}

impl Case {
    fn new(h: usize, d: usize, t: usize, pos0: u32, alpha: f64) -> Case {
        // Room for every token plus 3 cache rows after them that must stay untouched.
        Case { h, d, t, pos0, cap: pos0 as usize + t + 3, alpha, seq_length: 8192, use_logn: true }
    }
}

/// The CPU's q, k, v `[T, P]` f32 for the case (every token, whatever the cap).
fn oracle(c: &Case, cfg: &QwenConfig, qkv: &[f32], bias: &[f32], inv_freq: &[f32]) -> [Vec<f32>; 3] {
    let p = c.h * c.d;
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for row in qkv.chunks_exact(3 * p) {
        let biased: Vec<f32> = row.iter().zip(bias).map(|(&x, &b)| x + b).collect();
        q.extend_from_slice(&biased[..p]);
        k.extend_from_slice(&biased[p..2 * p]);
        v.extend_from_slice(&biased[2 * p..]);
    }
    let pos0 = c.pos0 as usize;
    cpu::rope(&mut q, c.h, c.d, pos0, inv_freq);
    cpu::rope(&mut k, c.h, c.d, pos0, inv_freq);
    for (ti, row) in q.chunks_exact_mut(p).enumerate() {
        let s = model::logn_scale(cfg, pos0 + ti);
        if s != 1.0 {
            row.iter_mut().for_each(|e| *e *= s);
        }
    }
    [q, k, v]
}

/// Run one case in one dtype and check q, every cache row (written or still poisoned), the guard
/// rows after cap, and the guard row after q.
fn run(gpu: &Gpu, dt: GpuDType, c: Case) {
    let (h, d, t, cap) = (c.h, c.d, c.t, c.cap);
    let p = h * d;
    let cfg = config(h, d, c.seq_length, c.use_logn);
    let inv = model::inv_freq(&cfg, c.alpha);
    assert_eq!(inv.len(), d / 2);
    let seed = (h * 1000 + d + t * 7) as u64 + c.pos0 as u64;
    let qkv_host = rand_vec(t * 3 * p, seed, 2.0);
    let qkv = upload_f32(gpu, &qkv_host);
    let (bias, bias_host) = upload_dt(gpu, dt, &rand_vec(3 * p, seed + 1, 0.5));
    let inv_buf = upload_f32(gpu, &inv);
    let pos0 = upload_u32(gpu, &[c.pos0]);
    let q = poisoned(gpu, (t + 1) * p * 2); // one guard row
    let kc = poisoned(gpu, (cap + GUARD_ROWS) * p * 2);
    let vc = poisoned(gpu, (cap + GUARD_ROWS) * p * 2);
    let params = RopeParams {
        qkv: qkv.slice(),
        bias: bias.slice(),
        inv_freq: inv_buf.slice(),
        pos0: pos0.slice(),
        q: q.slice(),
        k_cache: kc.slice(),
        v_cache: vc.slice(),
        t,
        h,
        d,
        cap,
        s: c.seq_length,
        use_logn: c.use_logn as usize,
    };
    launch::qkv_rope_append(gpu, &gpu.stream, dt, &params).unwrap();
    let q_bits = gpu.read::<u16>(q.ptr(), (t + 1) * p).unwrap();
    let k_bits = gpu.read::<u16>(kc.ptr(), (cap + GUARD_ROWS) * p).unwrap();
    let v_bits = gpu.read::<u16>(vc.ptr(), (cap + GUARD_ROWS) * p).unwrap();
    let [want_q, want_k, want_v] = oracle(&c, &cfg, &qkv_host, &bias_host, &inv);
    let what = format!("qkv_rope_append {dt:?} {c:?}");

    // Tokens whose position is < cap: compare; the others must have written nothing.
    let pos = |ti: usize| c.pos0 as u64 + ti as u64;
    let live = (0..t).take_while(|&ti| pos(ti) < cap as u64).count();
    let rows = |bits: &[u16], r0: usize, n: usize| dt.decode(&bits[r0 * p..(r0 + n) * p]);
    if live > 0 {
        let r0 = c.pos0 as usize;
        assert_close(&format!("{what} q"), &rows(&q_bits, 0, live), &want_q[..live * p], ATOL, tol(dt));
        assert_close(&format!("{what} k cache"), &rows(&k_bits, r0, live), &want_k[..live * p], ATOL, tol(dt));
        let want_v_t = dt.decode(&dt.encode(&want_v[..live * p])); // T(v), exactly
        assert_close(&format!("{what} v cache"), &rows(&v_bits, r0, live), &want_v_t, 0.0, 0.0);
    }
    let touched_rows = |bits: &[u16], range: std::ops::Range<usize>| -> usize {
        range.filter(|&r| bits[r * p..(r + 1) * p].iter().any(|&b| b != POISON)).count()
    };
    // q rows of dropped tokens and the guard row after q.
    let bad = touched_rows(&q_bits, live..t + 1);
    assert_eq!(bad, 0, "{what}: {bad} q rows written for tokens at positions >= cap or after T");
    // Cache rows outside pos0..pos0+live, the guard rows after cap included.
    let written = if live > 0 { c.pos0 as usize..c.pos0 as usize + live } else { 0..0 };
    for (name, bits) in [("k", &k_bits), ("v", &v_bits)] {
        let bad = touched_rows(bits, 0..cap + GUARD_ROWS) - touched_rows(bits, written.clone());
        assert_eq!(bad, 0, "{what}: {bad} {name} cache rows outside {written:?} were written");
    }
}

#[test]
fn rotary_matches_cpu_tiny() {
    // Tiny test model shape H = 4, D = 16; positions from 0, across S = 8192 (logN starts at
    // p = 8192) and just below the 32K logN table end; NTK alpha 1 and 3.
    let Some(gpu) = gpu("rotary_matches_cpu_tiny") else { return };
    for t in [1usize, 7, 127] {
        for pos0 in [0u32, 8190, 32767 - t as u32] {
            for alpha in [1.0, 3.0] {
                for dt in DTYPES {
                    run(&gpu, dt, Case::new(4, 16, t, pos0, alpha));
                }
            }
        }
    }
}

#[test]
fn rotary_matches_cpu_7b() {
    // Qwen-7B shape H = 32, D = 128.
    let Some(gpu) = gpu("rotary_matches_cpu_7b") else { return };
    let cases = [
        (1usize, 0u32, 1.0),
        (7, 0, 1.0),
        (127, 0, 1.0),
        (7, 8190, 1.0),
        (127, 8100, 3.0),
        (1, 8192, 3.0),
        (7, 32760, 7.0),
    ];
    for (t, pos0, alpha) in cases {
        for dt in DTYPES {
            run(&gpu, dt, Case::new(32, 128, t, pos0, alpha));
        }
    }
}

#[test]
fn rotary_odd_head_shapes() {
    // Smallest head dim (D = 2, one pair), D/2 odd (D = 6), the largest D (256: 128 pairs, so each
    // of the 64 threads loops twice), one head, a non-power-of-two half (H = 9, D = 40).
    let Some(gpu) = gpu("rotary_odd_head_shapes") else { return };
    for (h, d) in [(5usize, 2usize), (2, 6), (1, 256), (3, 256), (9, 40)] {
        for dt in DTYPES {
            run(&gpu, dt, Case::new(h, d, 7, 9000, 1.0));
            run(&gpu, dt, Case::new(h, d, 1, 3, 1.0));
        }
    }
}

#[test]
fn rotary_logn_off_or_before_s() {
    // use_logn false: no scaling past S. A small S (16) with positions around it: logN switches on
    // at p + 1 > S inside one call.
    let Some(gpu) = gpu("rotary_logn_off_or_before_s") else { return };
    for dt in DTYPES {
        run(&gpu, dt, Case { use_logn: false, ..Case::new(4, 16, 7, 9000, 1.0) });
        run(&gpu, dt, Case { use_logn: false, ..Case::new(32, 128, 7, 9000, 1.0) });
        run(&gpu, dt, Case { seq_length: 16, ..Case::new(4, 16, 7, 12, 1.0) });
        run(&gpu, dt, Case { seq_length: 16, ..Case::new(32, 128, 7, 12, 1.0) });
    }
}

#[test]
fn rotary_stops_at_cap() {
    // pos0 + T > cap: tokens at positions >= cap write nothing (neither cache rows nor their q
    // row); the poisoned guard rows after cap stay poisoned. Also pos0 >= cap and pos0 = u32::MAX
    // (garbage in the device scalar: positions must not wrap around to row 0).
    let Some(gpu) = gpu("rotary_stops_at_cap") else { return };
    for dt in DTYPES {
        for (h, d) in [(4usize, 16usize), (32, 128)] {
            run(&gpu, dt, Case { cap: 8190 + 3, ..Case::new(h, d, 7, 8190, 1.0) });
            run(&gpu, dt, Case { cap: 3, ..Case::new(h, d, 7, 0, 1.0) });
            run(&gpu, dt, Case { cap: 5, ..Case::new(h, d, 7, 5, 1.0) });
            run(&gpu, dt, Case { cap: 5, ..Case::new(h, d, 7, 40, 1.0) });
            run(&gpu, dt, Case { cap: 4, ..Case::new(h, d, 7, u32::MAX, 1.0) });
            run(&gpu, dt, Case { cap: 4, ..Case::new(h, d, 7, u32::MAX - 2, 1.0) });
        }
    }
}

#[test]
fn rotary_rejects_bad_shapes() {
    let Some(gpu) = gpu("rotary_rejects_bad_shapes") else { return };
    let dt = DTYPES[0];
    let (t, h, d, cap) = (2usize, 2usize, 16usize, 8usize);
    let p = h * d;
    let qkv = upload_f32(&gpu, &vec![0f32; t * 3 * p]);
    let bias = poisoned(&gpu, 3 * p * 2);
    let inv = upload_f32(&gpu, &vec![1f32; d / 2]);
    let pos0 = upload_u32(&gpu, &[0]);
    let q = poisoned(&gpu, t * p * 2);
    let kc = poisoned(&gpu, cap * p * 2);
    let vc = poisoned(&gpu, cap * p * 2);
    let s = &gpu.stream;
    let go = |h: usize, d: usize, cap: usize, inv: &qwen_rt::backend::cuda::device::DevBuf| {
        let params = RopeParams {
            qkv: qkv.slice(),
            bias: bias.slice(),
            inv_freq: inv.slice(),
            pos0: pos0.slice(),
            q: q.slice(),
            k_cache: kc.slice(),
            v_cache: vc.slice(),
            t,
            h,
            d,
            cap,
            s: 8192,
            use_logn: 1,
        };
        launch::qkv_rope_append(&gpu, s, dt, &params)
    };
    assert!(go(h, d, cap, &inv).is_ok());
    assert!(go(h, d, cap + 1, &inv).is_err(), "cache smaller than cap rows");
    let short_inv = upload_f32(&gpu, &vec![1f32; d / 2 - 1]);
    assert!(go(h, d, cap, &short_inv).is_err(), "inv_freq shorter than D/2");
    assert!(go(4, 7, cap, &inv).is_err(), "odd D");
    assert!(go(1, 512, 1, &inv).is_err(), "D > 256");
    assert!(go(0, d, cap, &inv).is_err(), "H = 0");
    gpu.sync().unwrap();
}
