//! `qkv_rope_append` at Qwen-7B shape (H = 32, D = 128, P = 4096), T = 1 (decode) and 512
//! (prefill), appending at pos0 = 0 into a 1024-row cache.
//! Bytes per iteration = qkv read (4·T·3P) + bias (2·3P) + inv_freq (4·D/2) + q written (2·T·P)
//! + k and v cache rows written (2·2·T·P).
use crate::gpu_time;
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::{Gpu, GpuDType};
use qwen_rt::backend::cuda::launch;
use std::sync::Arc;

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let (h, d, cap) = (32usize, 128usize, 1024usize);
    let p = h * d;
    let dt = GpuDType::BF16;
    let bias = gpu.alloc(3 * p * 2).expect("alloc bias");
    gpu.memset(&gpu.stream, bias.ptr(), 0, 3 * p * 2).expect("memset bias");
    let inv: Vec<f32> = (0..d / 2).map(|j| 1.0 / 10000f32.powf((2 * j) as f32 / d as f32)).collect();
    let inv = gpu.upload(&inv).expect("inv_freq");
    let pos0 = gpu.upload(&[0u32]).expect("pos0");
    let kc = gpu.alloc(cap * p * 2).expect("alloc k cache");
    let vc = gpu.alloc(cap * p * 2).expect("alloc v cache");
    let mut g = c.benchmark_group("rotary");
    for t in [1usize, 512] {
        let qkv = gpu.alloc(t * 3 * p * 4).expect("alloc qkv");
        gpu.memset(&gpu.stream, qkv.ptr(), 0, t * 3 * p * 4).expect("memset qkv");
        let q = gpu.alloc(t * p * 2).expect("alloc q");
        gpu.sync().expect("sync");
        g.throughput(Throughput::Bytes((t * 3 * p * 4 + 3 * p * 2 + d / 2 * 4 + t * p * 2 * 3) as u64));
        g.bench_function(format!("qkv_rope_append_bf16_T{t}"), |b| {
            b.iter_custom(|iters| {
                gpu_time(gpu, iters, |_| {
                    let p = launch::RopeParams {
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
                    launch::qkv_rope_append(gpu, &gpu.stream, dt, &p).unwrap();
                })
            })
        });
    }
    g.finish();
}
