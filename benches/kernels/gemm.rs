//! Prefill GEMM through cuBLAS at the Qwen-7B projection shapes, T = 512 and 2048 tokens.
//! Elements per iteration = 2·T·N·K flops (one multiply and one add per term), so the reported
//! rate is FLOP/s.
use crate::gpu_time;
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::{Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::Blas;
use std::sync::Arc;

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let blas = match Blas::new(gpu, &gpu.stream) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP: gemm benchmarks ({e})");
            return;
        }
    };
    let dt = GpuDType::BF16;
    let mut g = c.benchmark_group("gemm");
    for (n, k) in [(12288usize, 4096usize), (22016, 4096)] {
        let w = gpu.alloc(n * k * 2).expect("alloc w");
        gpu.memset(&gpu.stream, w.ptr(), 0x3C, n * k * 2).expect("memset w");
        for t in [512usize, 2048] {
            let x = gpu.alloc(t * k * 2).expect("alloc x");
            gpu.memset(&gpu.stream, x.ptr(), 0x3C, t * k * 2).expect("memset x");
            let y = gpu.alloc(t * n * 4).expect("alloc y");
            gpu.sync().expect("sync");
            g.throughput(Throughput::Elements((2 * t * n * k) as u64));
            g.bench_function(format!("bf16_T{t}_N{n}_K{k}"), |bch| {
                bch.iter_custom(|iters| {
                    gpu_time(gpu, iters, |_| {
                        blas.gemm(dt, w.slice(), x.slice(), y.slice(), t, n, k).unwrap();
                    })
                })
            });
        }
    }
    g.finish();
}
