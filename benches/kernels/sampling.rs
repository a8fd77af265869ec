//! `sampling` (launch::sample: mark + process + draw) at V = 151936, Qwen-7B's defaults (top_p 0.8,
//! repetition penalty 1.1 over a 1000-id context) on both draw paths (the multi-block top-p kernels,
//! the default, and the one-block draw), greedy, and top-k 50 + top-p 0.8.
//!
//! Throughput::Bytes counts one read of the f32 logits plus one write of the distribution (V·8
//! bytes): the useful traffic, so GB/s here is "how far from a single streaming pass" rather than
//! DRAM bandwidth. The draw kernel re-reads its [V] scratch from L2 once per bisection round (~35
//! passes for top-p, +32 with top-k), all in one block; time per call is the number that matters
//! next to a ~5 ms decode step. The logits buffer is rewritten in place by each call (penalty on the
//! context ids compounds over iterations; harmless for timing).
use crate::gpu_time;
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::Gpu;
use qwen_rt::backend::cuda::launch::{self, SampleDraw};
use qwen_rt::sampler::SamplingParams;
use std::sync::Arc;

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let v = 151936usize;
    // Deterministic logits in [-8, 8) with a few large ones (an LLM-like head).
    let mut host: Vec<f32> =
        (0..v as u64).map(|i| ((i.wrapping_mul(2654435761) % 16001) as f32 / 1000.0) - 8.0).collect();
    for j in 0..12 {
        host[j * 9973 + 17] = 12.0 + j as f32 * 0.25;
    }
    let logits = gpu.upload(&host).expect("logits");
    let ctx: Vec<u32> = (0..1000u32).map(|i| (i * 7919) % 151851).collect();
    let ctx = gpu.upload(&ctx).expect("ctx");
    let wbytes = launch::sample_workspace_bytes(v);
    let flags = gpu.alloc(wbytes).expect("flags");
    gpu.memset(&gpu.stream, flags.ptr(), 0, wbytes).expect("zero flags");
    let probs = gpu.alloc(v * 4).expect("probs");
    let out = gpu.alloc(4).expect("out_id");
    let qwen =
        SamplingParams { do_sample: true, temperature: 1.0, top_k: 0, top_p: 0.8, repetition_penalty: 1.1, seed: 0 };
    let topk = SamplingParams { top_k: 50, ..qwen.clone() };
    let mut g = c.benchmark_group("sampling");
    g.throughput(Throughput::Bytes((v * 8) as u64));
    let runs = [
        ("qwen_defaults_run4", qwen.clone(), SampleDraw::Run4),
        ("qwen_defaults_multi_block", qwen.clone(), SampleDraw::MultiBlock),
        ("qwen_defaults_one_block", qwen, SampleDraw::OneBlock),
        ("greedy_run4", SamplingParams::greedy(), SampleDraw::Run4),
        ("greedy", SamplingParams::greedy(), SampleDraw::OneBlock),
        ("top_k50_top_p0.8_run4", topk.clone(), SampleDraw::Run4),
        ("top_k50_top_p0.8", topk, SampleDraw::OneBlock),
    ];
    for (name, p, draw) in runs {
        g.bench_function(format!("V{v}_{name}"), |b| {
            b.iter_custom(|iters| {
                gpu_time(gpu, iters, |_| {
                    let params = launch::SampleParams {
                        logits: logits.slice(),
                        v,
                        vocab_len: 151851,
                        flags: flags.slice(),
                        ctx_ids: ctx.slice(),
                        n_ctx: 1000,
                        probs: probs.slice(),
                        out_id: out.slice(),
                        ..Default::default()
                    };
                    launch::sample(gpu, &gpu.stream, draw, &params, &p, 0.37).unwrap();
                })
            })
        });
    }
    g.finish();
}
