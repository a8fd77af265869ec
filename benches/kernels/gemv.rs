//! `gemv` (decode, B = 1) at the Qwen-7B weight shapes, for each `GemvConfig` of the sweep. Bytes
//! per launch: W read once (N·K·2), plus x (K·2) and y written (N·4). The kernel is bound by
//! streaming W, so GB/s against the device's DRAM bandwidth is the figure of merit.
//!
//! Timed as the decode step runs it: launches back to back on one stream (no host sync between
//! them), measured with events, each launch on the next of several copies of W that together are
//! larger than the L2 cache (60 MB on an H200), so W comes from DRAM as it does in the model.
use crate::gpu_time;
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::{DevBuf, Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::{self, GemvConfig};
use std::sync::Arc;

/// Copies of W cycled through: at least this many bytes in all.
const ROTATE_BYTES: usize = 256 << 20;

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let dt = GpuDType::BF16;
    let b = 1usize;
    // (stages, blocks per SM): the old kernel (1, 0), double buffered with one row per warp, and
    // persistent grids of 2, 4 and 8 blocks per SM.
    let sweep = [(1, 0), (2, 0), (2, 2), (2, 4), (2, 8)].map(|(stages, blocks_per_sm)| GemvConfig { stages, blocks_per_sm });
    let mut g = c.benchmark_group("gemv");
    // attn c_proj, c_attn (q‖k‖v), fused w1‖w2, mlp c_proj, lm_head.
    for (n, k) in [(4096usize, 4096usize), (12288, 4096), (22016, 4096), (4096, 11008), (151936, 4096)] {
        let copies = ROTATE_BYTES.div_ceil(n * k * 2).max(1);
        let ws: Vec<DevBuf> = (0..copies)
            .map(|_| {
                let w = gpu.alloc(n * k * 2).expect("alloc w");
                // 0x3C3C: 1.18 in bf16 (1.05 in f16): finite values, the speed does not depend on them.
                gpu.memset(&gpu.stream, w.ptr(), 0x3C, n * k * 2).expect("memset w");
                w
            })
            .collect();
        let x = gpu.alloc(b * k * 2).expect("alloc x");
        gpu.memset(&gpu.stream, x.ptr(), 0x3C, b * k * 2).expect("memset x");
        let y = gpu.alloc(b * n * 4).expect("alloc y");
        gpu.sync().expect("sync");
        g.throughput(Throughput::Bytes((n * k * 2 + b * k * 2 + b * n * 4) as u64));
        for cfg in sweep {
            let name = format!("bf16_N{n}_K{k}_B{b}_stages{}_bps{}", cfg.stages, cfg.blocks_per_sm);
            g.bench_function(name, |bch| {
                bch.iter_custom(|iters| {
                    gpu_time(gpu, iters, |i| {
                        let w = ws[i % copies].slice();
                        launch::gemv_with(gpu, &gpu.stream, dt, w, x.slice(), y.slice(), n, k, b, cfg).unwrap();
                    })
                })
            });
        }
    }
    g.finish();
}
