//! `attention_decode` (split kernel + combine) at the Qwen-7B head shape, H 32, D 128, one query
//! (batch-1 decode) in an 8192-row bf16 cache, at 1024, 4096 and 8192 keys. Throughput counts the
//! K and V bytes streamed, n_keys · 2 (K, V) · P · 2 bytes, to compare with the ~3 TB/s of HBM; the
//! partials (n_splits · H · (D + 2) · 4 bytes written and read back) and q / out are left out
//! (< 2 % at 1024 keys).
use crate::{filled, gpu_time};
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::{Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::{self, DecodeSplit};
use std::sync::Arc;

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let (h, d, cap, t) = (32usize, 128usize, 8192usize, 1usize);
    let p = h * d;
    let dt = GpuDType::BF16;
    let split = DecodeSplit::for_capacity(cap);
    let (o_bytes, ml_bytes) = launch::decode_workspace_bytes(t, h, d, split);
    // 0x3C3C: a finite non-zero value in bf16 (~0.0115) and f16 (~1.06).
    let (k, v) = (filled(gpu, cap * p * 2, 0x3C), filled(gpu, cap * p * 2, 0x3C));
    let q = filled(gpu, t * p * 2, 0x3C);
    let (part_o, part_ml, out) = (filled(gpu, o_bytes, 0), filled(gpu, ml_bytes, 0), filled(gpu, t * p * 2, 0));
    let pos0 = filled(gpu, 4, 0);
    gpu.sync().expect("sync");
    let mut g = c.benchmark_group("attention_decode");
    let counters = filled(gpu, t * h * 4, 0);
    for n_keys in [1024usize, 4096, 8192] {
        gpu.set_u32(&gpu.stream, pos0.ptr(), (n_keys - 1) as u32).expect("pos0");
        g.throughput(Throughput::Bytes((n_keys * 2 * p * 2) as u64));
        // Separate combine kernel, then the combine fused into the split kernel (the executor's default).
        for fused in [false, true] {
            let params = launch::AttentionDecodeParams {
                q: q.slice(),
                k_cache: k.slice(),
                v_cache: v.slice(),
                part_o: part_o.slice(),
                part_ml: part_ml.slice(),
                pos0: pos0.slice(),
                h,
                d,
                cap,
                split_len: split.split_len,
                n_splits: split.n_splits,
                scale: qwen_rt::model::attention_scale(d),
                out: out.slice(),
                counters: counters.slice(),
            };
            let name = format!("bf16_H{h}_D{d}_T{t}_keys{n_keys}{}", if fused { "_fused" } else { "" });
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    gpu_time(gpu, iters, |_| {
                        launch::attention_decode(gpu, &gpu.stream, dt, &params, t, split, fused).unwrap();
                    })
                })
            });
        }
    }
    g.finish();
}
