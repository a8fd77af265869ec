//! `gemv` (decode, B = 1) at the Qwen-7B weight shapes. Bytes per iteration: W read once (N·K·2),
//! plus x (K·2) and y written (N·4). The kernel is bound by streaming W, so GB/s against the
//! device's DRAM bandwidth is the figure of merit.
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::{Gpu, GpuDType};
use qwen_rt::backend::cuda::launch;
use std::sync::Arc;

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let dt = GpuDType::BF16;
    let b = 1usize;
    let mut g = c.benchmark_group("gemv");
    // attn c_proj, c_attn (q‖k‖v), fused w1‖w2, mlp c_proj, lm_head.
    for (n, k) in [(4096usize, 4096usize), (12288, 4096), (22016, 4096), (4096, 11008), (151936, 4096)] {
        let w = gpu.alloc(n * k * 2).expect("alloc w");
        // 0x3C3C: 1.18 in bf16 (1.05 in f16): finite values, the speed does not depend on them.
        gpu.memset(&gpu.stream, w.ptr(), 0x3C, n * k * 2).expect("memset w");
        let x = gpu.alloc(b * k * 2).expect("alloc x");
        gpu.memset(&gpu.stream, x.ptr(), 0x3C, b * k * 2).expect("memset x");
        let y = gpu.alloc(b * n * 4).expect("alloc y");
        gpu.sync().expect("sync");
        g.throughput(Throughput::Bytes((n * k * 2 + b * k * 2 + b * n * 4) as u64));
        g.bench_function(format!("bf16_N{n}_K{k}_B{b}"), |bch| {
            bch.iter(|| {
                launch::gemv(gpu, &gpu.stream, dt, w.slice(), x.slice(), y.slice(), n, k, b).unwrap();
                gpu.sync().unwrap();
            })
        });
    }
    g.finish();
}
