//! Criterion benchmarks of every CUDA kernel at Qwen-7B shapes, reporting bytes (GB/s) or flops
//! (TFLOP/s) per iteration. The stream is synchronised inside the timed region. Without a GPU the
//! bench prints `SKIP: no CUDA device` and registers nothing.
//!
//! Run: `cargo bench --bench kernels` (add `-- rmsnorm` to pick a group).
use criterion::Criterion;
use qwen_rt::backend::cuda::device::Gpu;
use std::sync::Arc;

mod attention_decode;
mod attention_prefill;
mod embedding;
mod gemm;
mod gemv;
mod rmsnorm;
mod rotary;
mod sampling;
mod swiglu;

/// Every family's `register(c, gpu)` adds its groups.
fn benches(c: &mut Criterion) {
    let gpu: Arc<Gpu> = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("SKIP: no CUDA device ({e}); no kernel benchmarks run");
            return;
        }
    };
    eprintln!("GPU: {} (sm_{}{})", gpu.name, gpu.cc.0, gpu.cc.1);
    embedding::register(c, &gpu);
    rmsnorm::register(c, &gpu);
    swiglu::register(c, &gpu);
    rotary::register(c, &gpu);
    attention_prefill::register(c, &gpu);
    attention_decode::register(c, &gpu);
    gemv::register(c, &gpu);
    gemm::register(c, &gpu);
    sampling::register(c, &gpu);
}

criterion::criterion_group!(kernels, benches);
criterion::criterion_main!(kernels);
