//! Criterion benchmarks of every CUDA kernel at Qwen-7B shapes, reporting bytes (GB/s) or flops
//! (TFLOP/s) per iteration. Launches are enqueued back to back on one stream, as in the decode graph,
//! and timed with CUDA events (`gpu_time`), so a figure is the kernel's time on the GPU, not the
//! host's launch-and-wait round trip. Without a GPU the bench prints `SKIP: no CUDA device` and
//! registers nothing.
//!
//! Run: `cargo bench --bench kernels` (add `-- rmsnorm` to pick a group).
use criterion::Criterion;
use qwen_rt::backend::cuda::device::{DevBuf, Gpu};
use qwen_rt::synth::splitmix64;
use std::sync::Arc;
use std::time::Duration;

mod attention_decode;
mod attention_prefill;
mod embedding;
mod gemm;
mod gemv;
mod gemv_quant;
mod rmsnorm;
mod rotary;
mod sampling;
mod swiglu;

/// A device buffer of `bytes` bytes, every byte `byte` (0x3C: 0x3C3C is a finite non-zero value in
/// bf16, ~0.0115, and in f16, ~1.06). Only for operands whose values do not steer the kernel: a
/// table lookup's speed depends on its indices (`random_bytes`).
pub fn filled(gpu: &Gpu, bytes: usize, byte: u8) -> DevBuf {
    let b = gpu.alloc(bytes).expect("alloc");
    gpu.memset(&gpu.stream, b.ptr(), byte, bytes).expect("memset");
    b
}

/// A device buffer of `bytes` uniformly random bytes (splitmix64 of `seed`): quantized codes, whose
/// values pick codebook entries (NF4's shared-memory table: equal bytes are a broadcast, random ones
/// bank conflicts — H200 run 5 timed NF4 1.5x faster on constant codes than in the model).
pub fn random_bytes(gpu: &Gpu, bytes: usize, seed: u64) -> DevBuf {
    let key = splitmix64(seed);
    let host: Vec<u8> = (0..bytes.div_ceil(8) as u64).flat_map(|j| splitmix64(key ^ j).to_le_bytes()).collect();
    gpu.upload::<u8>(&host[..bytes]).expect("upload random bytes")
}

/// Criterion's time for `iters` launches that `launch(i)` enqueues back to back on `gpu.stream`
/// (no host sync between them), measured with CUDA events around them all.
pub fn gpu_time(gpu: &Gpu, iters: u64, mut launch: impl FnMut(usize)) -> Duration {
    let ms = gpu
        .time_ms(&gpu.stream, || {
            (0..iters as usize).for_each(&mut launch);
            Ok(())
        })
        .expect("timing on the GPU");
    Duration::from_secs_f64(ms / 1e3)
}

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
    gemv_quant::register(c, &gpu);
    gemm::register(c, &gpu);
    sampling::register(c, &gpu);
}

criterion::criterion_group!(kernels, benches);
criterion::criterion_main!(kernels);
