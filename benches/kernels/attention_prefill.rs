//! `attention_prefill` at the Qwen-7B head shape, H 32, D 128, a bf16 prompt of T = 512 and 2048
//! tokens at pos0 = 0 (cap = T). Compute-bound, so the throughput is flops: the causal pairs
//! (query t sees t + 1 keys) number T(T+1)/2 per head, each costing D MACs for Q·Kᵀ and D for P·V,
//! 2 flops per MAC: flops = 4 · D · H · T(T+1)/2. Criterion's elements/s is then FLOP/s
//! (divide by 1e12 for TFLOP/s-equivalent; the softmax exps are not counted). Both kernels, one
//! after the other in the same run: `mma` (the default) and `wmma` (the previous kernel).
use crate::{filled, gpu_time};
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::{Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::{self, PrefillKernel};
use std::sync::Arc;

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let (h, d) = (32usize, 128usize);
    let p = h * d;
    let dt = GpuDType::BF16;
    let mut g = c.benchmark_group("attention_prefill");
    for t in [512usize, 2048] {
        let cap = t;
        // 0x3C3C: a finite non-zero value in bf16 (~0.0115); every exp is computed all the same.
        let (q, k, v) = (filled(gpu, t * p * 2, 0x3C), filled(gpu, cap * p * 2, 0x3C), filled(gpu, cap * p * 2, 0x3C));
        let out = filled(gpu, t * p * 2, 0);
        let pos0 = filled(gpu, 4, 0);
        gpu.sync().expect("sync");
        let flops = 4 * d * h * (t * (t + 1) / 2);
        g.throughput(Throughput::Elements(flops as u64));
        for kernel in PrefillKernel::ALL {
            let name = format!("{}_bf16_H{h}_D{d}_T{t}", format!("{kernel:?}").to_lowercase());
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    gpu_time(gpu, iters, |_| {
                        let (q, k, v, o, p0) = (q.slice(), k.slice(), v.slice(), out.slice(), pos0.slice());
                        let scale = qwen_rt::model::attention_scale(d);
                        let params = launch::AttentionPrefillParams {
                            q,
                            k_cache: k,
                            v_cache: v,
                            out: o,
                            pos0: p0,
                            t,
                            h,
                            d,
                            cap,
                            scale,
                        };
                        launch::attention_prefill(gpu, &gpu.stream, kernel, dt, &params).unwrap();
                    })
                })
            });
        }
    }
    g.finish();
}
