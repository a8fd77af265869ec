//! `swiglu` at Qwen-7B shape (F = 11008), T = 1 (decode) and 512 (prefill).
//! Bytes per iteration = upgate read (4·T·2F) + out written (2·T·F).
use crate::gpu_time;
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::{Gpu, GpuDType};
use qwen_rt::backend::cuda::launch;
use std::sync::Arc;

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let f = 11008usize;
    let dt = GpuDType::BF16;
    let mut g = c.benchmark_group("swiglu");
    for t in [1usize, 512] {
        let upgate = gpu.alloc(t * 2 * f * 4).expect("alloc upgate");
        gpu.memset(&gpu.stream, upgate.ptr(), 0, t * 2 * f * 4).expect("memset upgate");
        let out = gpu.alloc(t * f * 2).expect("alloc out");
        gpu.sync().expect("sync");
        g.throughput(Throughput::Bytes((t * 2 * f * 4 + t * f * 2) as u64));
        g.bench_function(format!("bf16_T{t}"), |b| {
            b.iter_custom(|iters| {
                gpu_time(gpu, iters, |_| {
                    let p = launch::SwigluParams { upgate: upgate.slice(), out: out.slice(), f, t };
                    launch::swiglu(gpu, &gpu.stream, dt, &p).unwrap();
                })
            })
        });
    }
    g.finish();
}
