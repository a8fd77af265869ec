//! `embedding` at Qwen-7B shape: gather T rows of C = 4096 from V = 151936 (bytes read + written).
use crate::gpu_time;
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::{Gpu, GpuDType};
use qwen_rt::backend::cuda::launch;
use std::sync::Arc;

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let (v, cc) = (151936usize, 4096usize);
    let dt = GpuDType::BF16;
    let wte = gpu.alloc(v * cc * 2).expect("alloc wte");
    gpu.memset(&gpu.stream, wte.ptr(), 0, v * cc * 2).expect("memset");
    let mut g = c.benchmark_group("embedding");
    for t in [1usize, 512] {
        let ids: Vec<u32> = (0..t as u32).map(|i| i * 97 % v as u32).collect();
        let ids = gpu.upload(&ids).expect("ids");
        let out = gpu.alloc(t * cc * 4).expect("out");
        g.throughput(Throughput::Bytes((t * cc * (2 + 4)) as u64));
        g.bench_function(format!("bf16_T{t}"), |b| {
            b.iter_custom(|iters| {
                gpu_time(gpu, iters, |_| {
                    let params =
                        launch::EmbeddingParams { wte: wte.slice(), ids: ids.slice(), out: out.slice(), v, c: cc };
                    launch::embedding(gpu, &gpu.stream, dt, &params, t).unwrap();
                })
            })
        });
    }
    g.finish();
}
