//! `rmsnorm` and `add_rmsnorm` at Qwen-7B shape (C = 4096), T = 1 (decode) and 512 (prefill).
//! Bytes per iteration = DRAM traffic of one pass: rmsnorm reads x (4·T·C) and w (2·C) and writes
//! out (2·T·C); add_rmsnorm also reads y (4·T·C) and writes x back (4·T·C). The second read of each
//! row (the normalisation pass) hits L1/L2 and is not counted.
use crate::gpu_time;
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::{Gpu, GpuDType};
use qwen_rt::backend::cuda::launch;
use std::sync::Arc;

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let cc = 4096usize;
    let dt = GpuDType::BF16;
    let eps = 1e-6f32;
    let w = gpu.alloc(cc * 2).expect("alloc w");
    gpu.memset(&gpu.stream, w.ptr(), 0x3C, cc * 2).expect("memset w"); // bf16 0x3C3C ≈ 0.0115
    let mut g = c.benchmark_group("rmsnorm");
    for t in [1usize, 512] {
        let x = gpu.alloc(t * cc * 4).expect("alloc x");
        let y = gpu.alloc(t * cc * 4).expect("alloc y");
        // 0x00 bytes: x = y = 0, so repeated add_rmsnorm keeps x finite.
        gpu.memset(&gpu.stream, x.ptr(), 0, t * cc * 4).expect("memset x");
        gpu.memset(&gpu.stream, y.ptr(), 0, t * cc * 4).expect("memset y");
        let out = gpu.alloc(t * cc * 2).expect("alloc out");
        gpu.sync().expect("sync");
        g.throughput(Throughput::Bytes((t * cc * (4 + 2) + cc * 2) as u64));
        g.bench_function(format!("bf16_T{t}"), |b| {
            b.iter_custom(|iters| {
                gpu_time(gpu, iters, |_| {
                    let p = launch::RmsnormParams {
                        x: x.slice(),
                        w: w.slice(),
                        out: out.slice(),
                        c: cc,
                        eps,
                        ..Default::default()
                    };
                    launch::rmsnorm(gpu, &gpu.stream, dt, &p, t).unwrap();
                })
            })
        });
        g.throughput(Throughput::Bytes((t * cc * (4 + 4 + 4 + 2) + cc * 2) as u64));
        g.bench_function(format!("add_bf16_T{t}"), |b| {
            b.iter_custom(|iters| {
                gpu_time(gpu, iters, |_| {
                    let p = launch::RmsnormParams {
                        x: x.slice(),
                        y: y.slice(),
                        w: w.slice(),
                        out: out.slice(),
                        c: cc,
                        eps,
                    };
                    launch::add_rmsnorm(gpu, &gpu.stream, dt, &p, t).unwrap();
                })
            })
        });
    }
    g.finish();
}
