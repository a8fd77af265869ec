//! `gemv` (decode, B = 1) at the Qwen-7B weight shapes, for each `GemvConfig` of the sweep; then the
//! fused epilogues (`gemv_swiglu`, `gemv_qkv_rope`) against the two launches they replace. Bytes
//! per launch: W read once (N·K·2), plus x (K·2) and y written (N·4). The kernel is bound by
//! streaming W, so GB/s against the device's DRAM bandwidth is the figure of merit.
//!
//! Timed as the decode step runs it: launches back to back on one stream (no host sync between
//! them), measured with events, each launch on the next of several copies of W that together are
//! larger than the L2 cache (60 MB on an H200), so W comes from DRAM as it does in the model.
use crate::{filled, gpu_time};
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::{DevBuf, Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::{self, GemvConfig};
use std::sync::Arc;

/// Copies of W cycled through: at least this many bytes in all.
const ROTATE_BYTES: usize = 256 << 20;

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let dt = GpuDType::BF16;
    let b = 1usize;
    // (stages, blocks per SM): the old kernel (1, 0), double buffered with one row per warp, and
    // persistent grids of 2, 4 and 8 blocks per SM.
    let mut sweep = [(1, 0), (2, 0), (2, 2), (2, 4), (2, 8)]
        .map(|(stages, blocks_per_sm)| GemvConfig::new(stages, blocks_per_sm))
        .to_vec();
    // The L2-prefetch experiment (GemvConfig::prefetch_mb): back to back, the next launch's first rows.
    sweep.push(GemvConfig::stream(2, 8, 24));
    let mut g = c.benchmark_group("gemv");
    // attn c_proj, c_attn (q‖k‖v), fused w1‖w2, mlp c_proj, lm_head.
    for (n, k) in [(4096usize, 4096usize), (12288, 4096), (22016, 4096), (4096, 11008), (151936, 4096)] {
        let (ws, copies) = weight_copies(gpu, n, k);
        let x = filled(gpu, b * k * 2, 0x3C);
        let y = gpu.alloc(b * n * 4).expect("alloc y");
        gpu.sync().expect("sync");
        g.throughput(Throughput::Bytes((n * k * 2 + b * k * 2 + b * n * 4) as u64));
        for &cfg in &sweep {
            let name =
                format!("bf16_N{n}_K{k}_B{b}_stages{}_bps{}_pf{}", cfg.stages, cfg.blocks_per_sm, cfg.prefetch_mb);
            g.bench_function(name, |bch| {
                bch.iter_custom(|iters| {
                    gpu_time(gpu, iters, |i| {
                        let w = ws[i % copies].slice();
                        let params = launch::GemvParams { w, x: x.slice(), y: y.slice(), n, k, b, stages: 0 };
                        launch::gemv_with(gpu, &gpu.stream, dt, &params, cfg).unwrap();
                    })
                })
            });
        }
    }
    g.finish();
    register_ramp(c, gpu);
    register_fused(c, gpu);
}

/// The default configuration at K = 4096 over N = 1024 .. 65536 rows: time = fixed + bytes / rate,
/// so a straight-line fit of time against N splits a launch's fixed cost (launch, ramp, tail) from
/// its streaming rate. (At 7B shapes the N = 4096 matrices ran ~5 µs above their bytes at copy
/// speed and lm_head ~1 µs: this says whether that is per launch or per row.)
fn register_ramp(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let (dt, cfg, k) = (GpuDType::BF16, GemvConfig::DEFAULT, 4096usize);
    let mut g = c.benchmark_group("gemv_ramp");
    for n in [1024usize, 2048, 4096, 8192, 16384, 32768, 65536] {
        let (ws, copies) = weight_copies(gpu, n, k);
        let x = filled(gpu, k * 2, 0x3C);
        let y = gpu.alloc(n * 4).expect("alloc y");
        gpu.sync().expect("sync");
        g.throughput(Throughput::Bytes((n * k * 2 + k * 2 + n * 4) as u64));
        g.bench_function(format!("bf16_N{n}_K{k}"), |bch| {
            bch.iter_custom(|iters| {
                gpu_time(gpu, iters, |i| {
                    let w = ws[i % copies].slice();
                    let params = launch::GemvParams { w, x: x.slice(), y: y.slice(), n, k, b: 1, stages: 0 };
                    launch::gemv_with(gpu, &gpu.stream, dt, &params, cfg).unwrap();
                })
            })
        });
    }
    g.finish();
}

/// Copies of a [N, K] bf16 W totalling at least ROTATE_BYTES, and their count.
fn weight_copies(gpu: &Gpu, n: usize, k: usize) -> (Vec<DevBuf>, usize) {
    let copies = ROTATE_BYTES.div_ceil(n * k * 2).max(1);
    let ws = (0..copies).map(|_| filled(gpu, n * k * 2, 0x3C)).collect();
    (ws, copies)
}

/// The decode step's GEMV fusions at 7B shapes, default GemvConfig: "fused" is one launch,
/// "unfused" the GEMV into f32 plus the pointwise kernel (what QWEN_FUSE=0 runs). Throughput is
/// the weight bytes (what both must read).
fn register_fused(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let (dt, cfg) = (GpuDType::BF16, GemvConfig::DEFAULT);
    let (h, d, k, f, cap) = (32usize, 128usize, 4096usize, 11008usize, 4096usize);
    let p = h * d;
    let mut g = c.benchmark_group("gemv_fused");
    let buf = |bytes: usize| filled(gpu, bytes, 0x3C);
    let x = buf(k * 2);
    // w1‖w2 + SwiGLU: [2F, K] -> g [F].
    let (ws, copies) = weight_copies(gpu, 2 * f, k);
    let (upgate, gact) = (buf(2 * f * 4), buf(f * 2));
    g.throughput(Throughput::Bytes((2 * f * k * 2) as u64));
    g.bench_function("swiglu_bf16_F11008_K4096_fused", |bch| {
        bch.iter_custom(|iters| {
            gpu_time(gpu, iters, |i| {
                let w = ws[i % copies].slice();
                let p =
                    launch::GemvFusedParams { w, x: x.slice(), k, b: 1, f, out: gact.slice(), ..Default::default() };
                launch::gemv_swiglu(gpu, &gpu.stream, dt, &p, cfg).unwrap();
            })
        })
    });
    g.bench_function("swiglu_bf16_F11008_K4096_unfused", |bch| {
        bch.iter_custom(|iters| {
            gpu_time(gpu, iters, |i| {
                let w = ws[i % copies].slice();
                let mm = launch::GemvParams { w, x: x.slice(), y: upgate.slice(), n: 2 * f, k, b: 1, stages: 0 };
                launch::gemv_with(gpu, &gpu.stream, dt, &mm, cfg).unwrap();
                let sw = launch::SwigluParams { upgate: upgate.slice(), out: gact.slice(), f, t: 1 };
                launch::swiglu(gpu, &gpu.stream, dt, &sw).unwrap();
            })
        })
    });
    drop(ws);
    // c_attn + bias + RoPE + KV append: [3P, K] -> q, cache row 100.
    let (ws, copies) = weight_copies(gpu, 3 * p, k);
    let (bias, inv, pos) = (buf(3 * p * 2), buf(d / 2 * 4), gpu.alloc(4).expect("alloc pos0"));
    gpu.set_u32(&gpu.stream, pos.ptr(), 100).expect("pos0");
    let (qkv, q, kc, vc) = (buf(3 * p * 4), buf(p * 2), buf(cap * p * 2), buf(cap * p * 2));
    g.throughput(Throughput::Bytes((3 * p * k * 2) as u64));
    g.bench_function("qkv_rope_bf16_H32_D128_K4096_fused", |bch| {
        bch.iter_custom(|iters| {
            gpu_time(gpu, iters, |i| {
                let w = ws[i % copies].slice();
                let p = launch::GemvFusedParams {
                    w,
                    x: x.slice(),
                    k,
                    b: 1,
                    bias: bias.slice(),
                    inv_freq: inv.slice(),
                    pos0: pos.slice(),
                    q: q.slice(),
                    k_cache: kc.slice(),
                    v_cache: vc.slice(),
                    h,
                    d,
                    cap,
                    s: 8192,
                    use_logn: 1,
                    ..Default::default()
                };
                launch::gemv_qkv_rope(gpu, &gpu.stream, dt, &p, cfg).unwrap();
            })
        })
    });
    g.bench_function("qkv_rope_bf16_H32_D128_K4096_unfused", |bch| {
        bch.iter_custom(|iters| {
            gpu_time(gpu, iters, |i| {
                let w = ws[i % copies].slice();
                let mm = launch::GemvParams { w, x: x.slice(), y: qkv.slice(), n: 3 * p, k, b: 1, stages: 0 };
                launch::gemv_with(gpu, &gpu.stream, dt, &mm, cfg).unwrap();
                let rope = launch::RopeParams {
                    qkv: qkv.slice(),
                    bias: bias.slice(),
                    inv_freq: inv.slice(),
                    pos0: pos.slice(),
                    q: q.slice(),
                    k_cache: kc.slice(),
                    v_cache: vc.slice(),
                    t: 1,
                    h,
                    d,
                    cap,
                    s: 8192,
                    use_logn: 1,
                };
                launch::qkv_rope_append(gpu, &gpu.stream, dt, &rope).unwrap();
            })
        })
    });
    drop(ws);
    // c_proj + residual add + RMSNorm: [C, K] -> x (in place), a.
    let c = 4096usize;
    let (ws, copies) = weight_copies(gpu, c, k);
    let (xr, y, ln, a) = (buf(c * 4), buf(c * 4), buf(c * 2), buf(c * 2));
    let norm_ws = filled(gpu, launch::residual_norm_workspace_bytes(c), 0);
    g.throughput(Throughput::Bytes((c * k * 2) as u64));
    g.bench_function("residual_rmsnorm_bf16_C4096_K4096_fused", |bch| {
        bch.iter_custom(|iters| {
            gpu_time(gpu, iters, |i| {
                let w = ws[i % copies].slice();
                let p = launch::GemvFusedParams {
                    w,
                    x: x.slice(),
                    k,
                    b: 1,
                    c,
                    resid: xr.slice(),
                    w_ln: ln.slice(),
                    a: a.slice(),
                    partials: norm_ws.slice(),
                    eps: 1e-6,
                    ..Default::default()
                };
                launch::gemv_residual_rmsnorm(gpu, &gpu.stream, dt, &p, cfg).unwrap();
            })
        })
    });
    g.bench_function("residual_rmsnorm_bf16_C4096_K4096_unfused", |bch| {
        bch.iter_custom(|iters| {
            gpu_time(gpu, iters, |i| {
                let w = ws[i % copies].slice();
                let mm = launch::GemvParams { w, x: x.slice(), y: y.slice(), n: c, k, b: 1, stages: 0 };
                launch::gemv_with(gpu, &gpu.stream, dt, &mm, cfg).unwrap();
                let norm =
                    launch::RmsnormParams { x: xr.slice(), y: y.slice(), w: ln.slice(), out: a.slice(), c, eps: 1e-6 };
                launch::add_rmsnorm(gpu, &gpu.stream, dt, &norm, 1).unwrap();
            })
        })
    });
    g.finish();
}
