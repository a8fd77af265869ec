//! The GEMVs with a fused epilogue, `gemv_swiglu_*`, `gemv_qkv_rope_*` and `gemv_residual_rmsnorm_*`
//! (cuda/gemv.cu): bit for bit what the unfused chain stores (`gemv` into f32, then `swiglu` /
//! `qkv_rope_append` / `add_rmsnorm`, each tested against its CPU oracle in gemv.rs, swiglu.rs,
//! rotary.rs and rmsnorm.rs) — except the normalised output of `gemv_residual_rmsnorm`, whose sum
//! of squares is taken in another order: within one ulp of T of the chain's — and `gemv_swiglu` and
//! `gemv_residual_rmsnorm` also within tolerance of the CPU oracle itself. Every output buffer is
//! poisoned with a guard tail; rows the kernel must not write stay poison.
//!
//! Why bit for bit: a fused launch computes each row's f32 sum with the same passes and the same
//! shuffle tree as `gemv` with the same configuration (only which warp takes which row changes),
//! and its epilogue is the standalone kernel's math (cuda/pointwise.cuh). Any difference is a bug.
use crate::common::*;
use crate::gemv::{assert_within, Oracle};
use qwen_rt::backend::cpu;
use qwen_rt::backend::cuda::device::{DevBuf, Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::{
    self, GemvConfig, GemvFusedParams, GemvParams, RmsnormParams, RopeParams, SwigluParams,
};

const POISON: u16 = 0xFFFF;

/// Stage counts and grid caps: one item per warp (0) and 1 or 4 blocks per SM (warps stream
/// several items, the double buffering crossing item ends); and the L2-prefetch experiment.
const CONFIGS: [GemvConfig; 5] = [
    GemvConfig::new(1, 0),
    GemvConfig::new(2, 0),
    GemvConfig::new(2, 1),
    GemvConfig::new(2, 4),
    GemvConfig::stream(2, 8, 1),
];

fn bits(gpu: &Gpu, b: &DevBuf, n: usize) -> Vec<u16> {
    gpu.read::<u16>(b.ptr(), n).unwrap()
}

/// Indices where two bit patterns differ (the first few), for the assertion message.
fn first_diffs(a: &[u16], b: &[u16]) -> (usize, Vec<usize>) {
    let d: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    (d.len(), d.into_iter().take(5).collect())
}

/// One gemv_swiglu case: w [2F, K], x [B, K] (x at byte offset `x_off` to reach the scalar path).
fn swiglu_case(gpu: &Gpu, dt: GpuDType, f: usize, k: usize, b: usize, x_off: usize, cfg: GemvConfig) {
    let what = format!("gemv_swiglu {dt:?} F{f} K{k} B{b} x+{x_off} {cfg:?}");
    let (w, w_host) = upload_dt(gpu, dt, &rand_vec(2 * f * k, (f * 7 + k) as u64, 1.0));
    let x_bits = dt.encode(&rand_vec(b * k, (f + k * 3 + b) as u64, 1.0));
    let x_host = dt.decode(&x_bits);
    let xbuf = gpu.alloc(x_off + b * k * 2).unwrap();
    gpu.write(xbuf.ptr().offset(x_off), &x_bits).unwrap();
    let x = xbuf.slice().sub(x_off, b * k * 2).unwrap();

    let out = poisoned(gpu, (b + 1) * f * 2); // one guard row
    let out_s = out.slice().sub(0, b * f * 2).unwrap();
    let params = GemvFusedParams { w: w.slice(), x, k, b, f, out: out_s, ..Default::default() };
    launch::gemv_swiglu(gpu, &gpu.stream, dt, &params, cfg).unwrap();
    let got = bits(gpu, &out, (b + 1) * f);

    // The unfused chain with the same configuration.
    let upgate = poisoned(gpu, b * 2 * f * 4);
    let chain = poisoned(gpu, b * f * 2);
    let mm = GemvParams { w: w.slice(), x, y: upgate.slice(), n: 2 * f, k, b, stages: 0 };
    launch::gemv_with(gpu, &gpu.stream, dt, &mm, cfg).unwrap();
    launch::swiglu(gpu, &gpu.stream, dt, &SwigluParams { upgate: upgate.slice(), out: chain.slice(), f, t: b })
        .unwrap();
    let want_bits = bits(gpu, &chain, b * f);
    let (n, at) = first_diffs(&got[..b * f], &want_bits);
    assert_eq!(n, 0, "{what}: {n} values differ from gemv + swiglu (first at {at:?})");
    let guard = got[b * f..].iter().filter(|&&v| v != POISON).count();
    assert_eq!(guard, 0, "{what}: {guard} values of the guard row after out were written");

    // The CPU oracle: up and gate by cpu::matmul (with their f32-summation bounds), cpu::swiglu.
    let (ug, ug_lim) = Oracle::new(&w_host, 2 * f, k).run(&x_host, b);
    let (mut want, mut lim) = (vec![0f32; b * f], vec![0f32; b * f]);
    for r in 0..b {
        let (row, row_lim) = (&ug[r * 2 * f..(r + 1) * 2 * f], &ug_lim[r * 2 * f..(r + 1) * 2 * f]);
        cpu::swiglu(&row[..f], &row[f..], &mut want[r * f..(r + 1) * f]);
        for i in 0..f {
            let (u, g) = (row[i], row[f + i]);
            let silu = g / (1.0 + (-g).exp());
            // d out = silu(g) du + u silu'(g) dg with |silu'| < 1.1; then T rounding and expf ulps.
            lim[r * f + i] =
                row_lim[i] * silu.abs() + row_lim[f + i] * u.abs() * 1.1 + tol(dt) * want[r * f + i].abs() + 1e-6;
        }
    }
    assert_within(&what, &dt.decode(&got[..b * f]), &want, &lim);
}

#[test]
fn gemv_swiglu_matches_chain_and_cpu() {
    let Some(gpu) = gpu("gemv_swiglu_matches_chain_and_cpu") else { return };
    // 7B MLP at decode (F 11008, K 4096) and a short prefill (B 3); ragged F; K 7 and a misaligned
    // x: the scalar path; every B on a small shape.
    for dt in DTYPES {
        swiglu_case(&gpu, dt, 11008, 4096, 1, 0, GemvConfig::DEFAULT);
        swiglu_case(&gpu, dt, 11008, 4096, 3, 0, GemvConfig::DEFAULT);
        for b in 1..=launch::GEMV_MAX_B {
            swiglu_case(&gpu, dt, 13, 264, b, 0, GemvConfig::DEFAULT);
        }
        swiglu_case(&gpu, dt, 9, 7, 2, 0, GemvConfig::DEFAULT);
        swiglu_case(&gpu, dt, 17, 520, 1, 2, GemvConfig::DEFAULT);
        for cfg in CONFIGS {
            swiglu_case(&gpu, dt, 1003, 1032, 1, 0, cfg);
            swiglu_case(&gpu, dt, 40, 129, 2, 0, cfg);
        }
    }
}

/// One gemv_qkv_rope case (one token at `pos0`): q, and every row of both caches (pre-filled with
/// a pattern), must equal the unfused gemv + qkv_rope_append bit for bit.
#[allow(clippy::too_many_arguments)]
fn rope_case(
    gpu: &Gpu,
    dt: GpuDType,
    h: usize,
    d: usize,
    k: usize,
    pos0: u32,
    cap: usize,
    s: usize,
    alpha: f64,
    cfg: GemvConfig,
) {
    let what = format!("gemv_qkv_rope {dt:?} H{h} D{d} K{k} pos0 {pos0} cap {cap} S{s} alpha {alpha} {cfg:?}");
    let p = h * d;
    let seed = (h * 100 + d + k + pos0 as usize) as u64;
    let (w, _) = upload_dt(gpu, dt, &rand_vec(3 * p * k, seed, 1.0));
    let (x, _) = upload_dt(gpu, dt, &rand_vec(k, seed + 1, 1.0));
    let (bias, _) = upload_dt(gpu, dt, &rand_vec(3 * p, seed + 2, 0.5));
    // Inverse frequencies of base 10000 scaled by an NTK alpha (any values would do: both runs read them).
    let base = 10000f64 * alpha.powf(d as f64 / (d as f64 - 2.0));
    let inv: Vec<f32> = (0..d / 2).map(|j| (1.0 / base.powf(2.0 * j as f64 / d as f64)) as f32).collect();
    let inv_buf = upload_f32(gpu, &inv);
    let pos = upload_u32(gpu, &[pos0]);
    let pattern: Vec<u16> = (0..(cap + 1) * p).map(|i| (i % 50000) as u16 + 7).collect(); // + a guard row
    let run = |fused: bool| -> [Vec<u16>; 3] {
        let q = poisoned(gpu, 2 * p * 2); // one guard row
        let (kc, vc) = (gpu.alloc((cap + 1) * p * 2).unwrap(), gpu.alloc((cap + 1) * p * 2).unwrap());
        gpu.write(kc.ptr(), &pattern).unwrap();
        gpu.write(vc.ptr(), &pattern).unwrap();
        let (ks, vs) = (kc.slice().sub(0, cap * p * 2).unwrap(), vc.slice().sub(0, cap * p * 2).unwrap());
        let qs = q.slice().sub(0, p * 2).unwrap();
        if fused {
            let params = GemvFusedParams {
                w: w.slice(),
                x: x.slice(),
                k,
                b: 1,
                bias: bias.slice(),
                inv_freq: inv_buf.slice(),
                pos0: pos.slice(),
                q: qs,
                k_cache: ks,
                v_cache: vs,
                h,
                d,
                cap,
                s,
                use_logn: 1,
                ..Default::default()
            };
            launch::gemv_qkv_rope(gpu, &gpu.stream, dt, &params, cfg).unwrap();
        } else {
            let qkv = poisoned(gpu, 3 * p * 4);
            let mm = GemvParams { w: w.slice(), x: x.slice(), y: qkv.slice(), n: 3 * p, k, b: 1, stages: 0 };
            launch::gemv_with(gpu, &gpu.stream, dt, &mm, cfg).unwrap();
            let params = RopeParams {
                qkv: qkv.slice(),
                bias: bias.slice(),
                inv_freq: inv_buf.slice(),
                pos0: pos.slice(),
                q: qs,
                k_cache: ks,
                v_cache: vs,
                t: 1,
                h,
                d,
                cap,
                s,
                use_logn: 1,
            };
            launch::qkv_rope_append(gpu, &gpu.stream, dt, &params).unwrap();
        }
        [bits(gpu, &q, 2 * p), bits(gpu, &kc, (cap + 1) * p), bits(gpu, &vc, (cap + 1) * p)]
    };
    let (fused, chain) = (run(true), run(false));
    for (name, f, c) in
        [("q", &fused[0], &chain[0]), ("k cache", &fused[1], &chain[1]), ("v cache", &fused[2], &chain[2])]
    {
        let (n, at) = first_diffs(f, c);
        assert_eq!(n, 0, "{what}: {n} values of {name} differ from gemv + qkv_rope_append (first at {at:?})");
    }
    // The chain itself leaves the guard rows alone (rotary.rs); check the fused run wrote something
    // where it should, so "equal" cannot mean "both wrote nothing" for a live position.
    let live = (pos0 as usize) < cap;
    let q_written = fused[0][..p].iter().filter(|&&v| v != POISON).count();
    assert_eq!(q_written > 0, live, "{what}: q written = {q_written} values with the position live = {live}");
    assert!(fused[0][p..].iter().all(|&v| v == POISON), "{what}: the guard row after q was written");
    eprintln!("{what}: q, k and v caches equal the unfused chain ({} q values written)", q_written);
}

#[test]
fn gemv_qkv_rope_matches_chain() {
    let Some(gpu) = gpu("gemv_qkv_rope_matches_chain") else { return };
    for dt in DTYPES {
        // 7B: H 32, D 128, K 4096; at position 0, past S = 8192 (logN on q) with NTK alpha 3, at the
        // last cache row, and past the cache (writes nothing).
        let def = GemvConfig::DEFAULT;
        rope_case(&gpu, dt, 32, 128, 4096, 0, 16, 8192, 1.0, def);
        rope_case(&gpu, dt, 32, 128, 4096, 8200, 8202, 8192, 3.0, def);
        rope_case(&gpu, dt, 32, 128, 4096, 9, 10, 8192, 1.0, def);
        rope_case(&gpu, dt, 32, 128, 4096, 10, 10, 8192, 1.0, def);
        rope_case(&gpu, dt, 32, 128, 4096, u32::MAX, 10, 8192, 1.0, def);
        // Odd shapes: one pair (D 2), D/2 odd (D 6), D 256, ragged K (scalar path), S tiny (logN from p 4).
        for (h, d, k) in [(5, 2, 64), (2, 6, 40), (1, 256, 72), (3, 16, 33)] {
            for cfg in CONFIGS {
                rope_case(&gpu, dt, h, d, k, 6, 9, 4, 2.0, cfg);
            }
        }
    }
}

#[test]
fn gemv_fused_rejects_bad_shapes() {
    let Some(gpu) = gpu("gemv_fused_rejects_bad_shapes") else { return };
    let dt = GpuDType::BF16;
    let (w, x, o) = (poisoned(&gpu, 1 << 16), poisoned(&gpu, 1 << 12), poisoned(&gpu, 1 << 12));
    let cfg = GemvConfig::DEFAULT;
    let sw = |f: usize, k: usize, b: usize, c: GemvConfig| {
        let params = GemvFusedParams { w: w.slice(), x: x.slice(), k, b, f, out: o.slice(), ..Default::default() };
        launch::gemv_swiglu(&gpu, &gpu.stream, dt, &params, c)
    };
    assert!(sw(8, 16, 9, cfg).is_err(), "B = 9 must be refused");
    assert!(sw(8, 16, 0, cfg).is_err(), "B = 0 must be refused");
    assert!(sw(8, 16, 1, GemvConfig::new(3, 0)).is_err(), "3 stages must be refused");
    assert!(sw(2048, 16, 1, cfg).is_err(), "w [2F, K] larger than its buffer must be refused");
    assert!(sw(8, 16, 1, cfg).is_ok());
    let rope = |h: usize, d: usize, cap: usize| {
        let s = o.slice();
        let params = GemvFusedParams {
            w: w.slice(),
            x: x.slice(),
            k: 16,
            b: 1,
            bias: s,
            inv_freq: s,
            pos0: s,
            q: s,
            k_cache: s,
            v_cache: s,
            h,
            d,
            cap,
            s: 8,
            use_logn: 1,
            ..Default::default()
        };
        launch::gemv_qkv_rope(&gpu, &gpu.stream, dt, &params, cfg)
    };
    assert!(rope(2, 7, 1).is_err(), "an odd head dim must be refused");
    assert!(rope(1, 258, 1).is_err(), "a head dim over 256 must be refused");
    assert!(rope(2, 8, 1000).is_err(), "caches larger than their buffers must be refused");
    let two_rows = GemvFusedParams { w: w.slice(), x: x.slice(), k: 16, b: 2, c: 8, ..Default::default() };
    assert!(launch::gemv_residual_rmsnorm(&gpu, &gpu.stream, dt, &two_rows, cfg).is_err(), "B = 2 must be refused");
    let ws_small = o.slice().sub(0, launch::residual_norm_workspace_bytes(64) - 4).unwrap();
    let rn = |ws| {
        let params = GemvFusedParams {
            w: w.slice(),
            x: x.slice(),
            k: 16,
            b: 1,
            c: 64,
            resid: o.slice(),
            w_ln: o.slice(),
            a: o.slice(),
            partials: ws,
            eps: 1e-6,
            ..Default::default()
        };
        launch::gemv_residual_rmsnorm(&gpu, &gpu.stream, dt, &params, cfg)
    };
    assert!(rn(ws_small).is_err(), "a workspace without room for the counter must be refused");
    gpu.stream.synchronize().unwrap();
}

/// One gemv_residual_rmsnorm case: x [C] f32 += w [C, K] · h, a [C] = RMSNorm(x) · w_ln; launched
/// twice on the same workspace (its counter must be back at zero each time).
fn resnorm_case(gpu: &Gpu, dt: GpuDType, c: usize, k: usize, cfg: GemvConfig) {
    let what = format!("gemv_residual_rmsnorm {dt:?} C{c} K{k} {cfg:?}");
    let eps = 1e-6f32;
    let seed = (c * 3 + k) as u64;
    let (w, w_host) = upload_dt(gpu, dt, &rand_vec(c * k, seed, 1.0));
    let (h, h_host) = upload_dt(gpu, dt, &rand_vec(k, seed + 1, 1.0));
    let ln: Vec<f32> = rand_vec(c, seed + 2, 0.5).iter().map(|v| 1.0 + v).collect();
    let (w_ln, ln_host) = upload_dt(gpu, dt, &ln);
    let x0 = rand_vec(c, seed + 3, 3.0);
    let ws_bytes = launch::residual_norm_workspace_bytes(c);
    let ws = gpu.alloc(ws_bytes).unwrap();
    gpu.memset(&gpu.stream, ws.ptr(), 0, ws_bytes).unwrap();
    let run_fused = || -> (Vec<f32>, Vec<u16>) {
        let x = upload_f32(gpu, &x0);
        let a = poisoned(gpu, (c + 8) * 2);
        let a_s = a.slice().sub(0, c * 2).unwrap();
        let params = GemvFusedParams {
            w: w.slice(),
            x: h.slice(),
            k,
            b: 1,
            c,
            resid: x.slice(),
            w_ln: w_ln.slice(),
            a: a_s,
            partials: ws.slice(),
            eps,
            ..Default::default()
        };
        launch::gemv_residual_rmsnorm(gpu, &gpu.stream, dt, &params, cfg).unwrap();
        let counter = gpu.read::<u32>(ws.ptr().offset(ws_bytes - 4), 1).unwrap()[0];
        assert_eq!(counter, 0, "{what}: the ticket counter was left at {counter}");
        let a_bits = bits(gpu, &a, c + 8);
        assert!(a_bits[c..].iter().all(|&v| v == POISON), "{what}: the guard after a was written");
        (read_f32(gpu, x.slice(), c), a_bits[..c].to_vec())
    };
    let (x_got, a_got) = run_fused();
    let (x_again, a_again) = run_fused();
    assert!(x_again == x_got && a_again == a_got, "{what}: a second launch on the same workspace differs");

    // The chain: gemv into y, then add_rmsnorm.
    let (x2, y, a2) = (upload_f32(gpu, &x0), poisoned(gpu, c * 4), poisoned(gpu, c * 2));
    let mm = GemvParams { w: w.slice(), x: h.slice(), y: y.slice(), n: c, k, b: 1, stages: 0 };
    launch::gemv_with(gpu, &gpu.stream, dt, &mm, cfg).unwrap();
    let norm = RmsnormParams { x: x2.slice(), y: y.slice(), w: w_ln.slice(), out: a2.slice(), c, eps };
    launch::add_rmsnorm(gpu, &gpu.stream, dt, &norm, 1).unwrap();
    let x_chain = read_f32(gpu, x2.slice(), c);
    let a_chain = bits(gpu, &a2, c);
    let xd = (0..c).filter(|&i| x_got[i].to_bits() != x_chain[i].to_bits()).count();
    assert_eq!(xd, 0, "{what}: {xd} values of x differ from gemv + add_rmsnorm");
    // One ulp of T at most (the order of Σ x² can move inv by an ulp of f32).
    let key = |b: u16| if b & 0x8000 != 0 { -((b & 0x7fff) as i32) } else { b as i32 };
    let worst = (0..c).map(|i| (key(a_got[i]) - key(a_chain[i])).abs()).max().unwrap_or(0);
    assert!(worst <= 1, "{what}: a is {worst} ulps of T from gemv + add_rmsnorm");

    // The CPU oracle: cpu::matmul (with its summation bound), cpu::add, cpu::rmsnorm.
    let (y_want, y_lim) = Oracle::new(&w_host, c, k).run(&h_host, 1);
    let mut x_want = x0.clone();
    cpu::add(&mut x_want, &y_want);
    assert_within(&format!("{what} x"), &x_got, &x_want, &y_lim.iter().map(|l| l + 1e-6).collect::<Vec<_>>());
    let mut a_want = vec![0f32; c];
    cpu::rmsnorm(&x_want, &ln_host, eps, &mut a_want);
    let inv = 1.0 / (x_want.iter().map(|v| v * v).sum::<f32>() / c as f32 + eps).sqrt();
    let a_lim: Vec<f32> =
        (0..c).map(|i| y_lim[i] * inv * ln_host[i].abs() * 2.0 + tol(dt) * a_want[i].abs() + 1e-5).collect();
    assert_within(&format!("{what} a"), &dt.decode(&a_got), &a_want, &a_lim);
}

#[test]
fn gemv_residual_rmsnorm_matches_chain_and_cpu() {
    let Some(gpu) = gpu("gemv_residual_rmsnorm_matches_chain_and_cpu") else { return };
    for dt in DTYPES {
        // 7B: attn c_proj (K 4096) and mlp c_proj (K 11008); ragged C, K 7 (scalar path).
        resnorm_case(&gpu, dt, 4096, 4096, GemvConfig::DEFAULT);
        resnorm_case(&gpu, dt, 4096, 11008, GemvConfig::DEFAULT);
        resnorm_case(&gpu, dt, 300, 7, GemvConfig::DEFAULT);
        for cfg in CONFIGS {
            resnorm_case(&gpu, dt, 1003, 1032, cfg);
        }
    }
}
