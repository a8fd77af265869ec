//! Criterion benches of the CPU reference ops (`backend::cpu`): matmul GB/s of weight bytes read
//! (decode is memory bound: every weight byte is read once per token) and, for T > 1 (prefill,
//! compute bound), multiply-adds per second as criterion "elements" (`Melem/s` = MMAC/s), rmsnorm, attention, the
//! whole model: prefill / decode tokens per second of the built-in tiny synth model, and the host sampler
//! on the full vocabulary with Qwen's defaults.
//! Quick to run: `cargo bench --bench cpu_ops` (about two minutes; weights are written once to a temp
//! dir as safetensors and read back through `Checkpoint::open`, like a model).
//! `QWEN_BENCH_MODEL=<model dir>` adds decode of that model (e.g. a `synth` 7B: ~15 GB of bf16).
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use qwen_rt::backend::cpu;
use qwen_rt::backend::{BackendKind, LoadOptions};
use qwen_rt::checkpoint::{Checkpoint, DType, TensorView};
use qwen_rt::model::Model;
use qwen_rt::sampler::{Sampler, SamplingParams};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// Matrices under test: (name, dtype, N, K).
const MATS: &[(&str, DType, usize, usize)] = &[
    ("bf16_4096x4096", DType::BF16, 4096, 4096),
    ("bf16_11008x4096", DType::BF16, 11008, 4096),
    ("bf16_4096x11008", DType::BF16, 4096, 11008),
    ("f16_4096x4096", DType::F16, 4096, 4096),
    ("f32_4096x4096", DType::F32, 4096, 4096),
];

/// Write the matrices into a temp model dir and open it as a checkpoint.
fn open_mats() -> (tempfile::TempDir, Checkpoint) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = r#"{"model_type": "qwen", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
        "intermediate_size": 128, "vocab_size": 64, "seq_length": 16}"#;
    std::fs::write(dir.path().join("config.json"), config).expect("config.json");
    let data: Vec<Vec<f32>> = MATS.iter().enumerate().map(|(i, m)| values(m.2 * m.3, i as u64)).collect();
    let shapes: Vec<[usize; 2]> = MATS.iter().map(|m| [m.2, m.3]).collect();
    let list: Vec<(&str, DType, &[usize], &[f32])> =
        MATS.iter().zip(&data).zip(&shapes).map(|((m, d), s)| (m.0, m.1, &s[..], &d[..])).collect();
    qwen_rt::synth::write_safetensors(&dir.path().join("model.safetensors"), &list).expect("write");
    let ck = Checkpoint::open(dir.path()).expect("open");
    (dir, ck)
}

fn matmul(c: &mut Criterion) {
    let (_dir, ck) = open_mats();
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for &(name, _, n, k) in MATS {
        let w: &TensorView = ck.tensor(name).expect("tensor");
        // T = 1 is decode (memory bound: throughput in weight bytes); T > 1 is prefill (compute
        // bound: throughput in elements = multiply-adds T·N·K, so "Melem/s" reads as MMAC/s).
        for t in [1usize, 8, 16, 64] {
            if t > 1 && name != "bf16_4096x4096" {
                continue;
            }
            let x = values(t * k, 7);
            let mut y = vec![0f32; t * n];
            g.throughput(if t == 1 {
                Throughput::Bytes(w.byte_len() as u64)
            } else {
                Throughput::Elements((t * n * k) as u64)
            });
            g.bench_function(BenchmarkId::new(name, format!("T{t}")), |b| {
                b.iter(|| cpu::matmul(black_box(&x), w, None, &mut y).expect("matmul"))
            });
        }
    }
    g.finish();
}

fn rmsnorm(c: &mut Criterion) {
    let mut g = c.benchmark_group("rmsnorm");
    g.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    let w = values(4096, 1);
    for t in [1usize, 64] {
        let x = values(t * 4096, 2);
        let mut y = vec![0f32; x.len()];
        g.throughput(Throughput::Bytes((x.len() * 8) as u64));
        g.bench_function(BenchmarkId::new("c4096", format!("T{t}")), |b| {
            b.iter(|| cpu::rmsnorm(black_box(&x), &w, 1e-6, &mut y))
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    let (h, d) = (32usize, 128usize);
    // (queries T, position of the first query): decode at 1023 / 4095, prefill of 128.
    for (t, pos0) in [(1usize, 1023usize), (1, 4095), (128, 0)] {
        let rows = pos0 + t;
        let q = values(t * h * d, 3);
        let k = values(rows * h * d, 4);
        let v = values(rows * h * d, 5);
        let mut out = vec![0f32; q.len()];
        // K and V bytes read per call (each query row reads keys/values 0..=p).
        let kv_bytes: usize = (pos0..pos0 + t).map(|p| (p + 1) * h * d * 4 * 2).sum();
        g.throughput(Throughput::Bytes(kv_bytes as u64));
        g.bench_function(BenchmarkId::new("h32_d128", format!("T{t}_pos{pos0}")), |b| {
            b.iter(|| cpu::attention(black_box(&q), &k, &v, pos0, h, d, &mut out))
        });
    }
    g.finish();
}

fn load_model(dir: &Path) -> Arc<cpu::CpuModel> {
    let ck = Checkpoint::open(dir).expect("open model");
    let opts = LoadOptions { backend: BackendKind::Cpu, ..Default::default() };
    Arc::new(cpu::CpuModel::load(&ck, &opts).expect("load model"))
}

/// Prefill of `t` tokens and decode of one token (on a sequence that restarts when full).
fn bench_model(c: &mut Criterion, group: &str, model: Arc<cpu::CpuModel>, prefill_lens: &[usize], samples: usize) {
    let v = model.config().vocab_size as u32;
    let ids: Vec<u32> = (0..512u32).map(|i| (i * 7919 + 13) % v.min(151643)).collect();
    let mut g = c.benchmark_group(group);
    g.sample_size(samples).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for &t in prefill_lens {
        g.throughput(Throughput::Elements(t as u64));
        g.bench_function(BenchmarkId::new("prefill", t), |b| {
            b.iter(|| {
                let mut seq = model.clone().new_sequence(t).expect("sequence");
                seq.forward(&ids[..t], false).expect("prefill")
            })
        });
    }
    let cap = 256;
    let mut seq = model.clone().new_sequence(cap).expect("sequence");
    seq.forward(&ids[..16], false).expect("prefill");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("decode", "from16"), |b| {
        b.iter(|| {
            if seq.len() == cap {
                seq.reset();
                seq.forward(&ids[..16], false).expect("prefill");
            }
            seq.forward(&ids[seq.len() % 512..][..1], false).expect("decode")
        })
    });
    g.finish();
}

fn model(c: &mut Criterion) {
    let tiny = qwen_rt::synth::builtin_tiny_dir().expect("built-in tiny model");
    bench_model(c, "model_tiny", load_model(&tiny), &[16, 64], 10);
    if let Some(dir) = std::env::var_os("QWEN_BENCH_MODEL") {
        bench_model(c, "model_env", load_model(Path::new(&dir)), &[], 10);
    }
}

/// The host sampler (`sampler::Sampler`, the CPU backend's) on `[151936]` logits with Qwen-7B-Chat's
/// defaults (top-p 0.8, repetition penalty 1.1 over a 2000-id context), per token:
/// "flat": 1000 evenly spread levels in [-5, 5) (top-p keeps ~24.4K ids (numpy: 24,463; f32 here: 24,449): the worst
/// case for the cut); "peaked": the same plus +12 on every 500th id (the top-p mass in ~130 ids, like an LM).
fn sampler(c: &mut Criterion) {
    let v: usize = 151_936;
    let flat: Vec<f32> = (0..v).map(|i| ((i as u64 * 2_654_435_761 % 1000) as f32) / 100.0 - 5.0).collect();
    let peaked: Vec<f32> = flat.iter().enumerate().map(|(i, &x)| if i % 500 == 0 { x + 12.0 } else { x }).collect();
    let context: Vec<u32> = (0..2000).map(|i| (i * 7919 % 151_000) as u32).collect();
    let p =
        SamplingParams { do_sample: true, temperature: 1.0, top_k: 0, top_p: 0.8, repetition_penalty: 1.1, seed: 1 };
    let mut g = c.benchmark_group("sampler");
    g.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for (name, logits) in [("flat", &flat), ("peaked", &peaked)] {
        let mut s = Sampler::new(p.clone()).expect("Qwen's default sampling parameters");
        // The inputs are what the names say: tens of thousands of ids kept, or at most the spikes.
        let kept = s.probabilities(logits, &context).iter().filter(|&&x| x > 0.0).count();
        match name {
            "flat" => assert!(kept > 10_000, "flat: top-p keeps only {kept} of {v}"),
            _ => assert!((1..=v.div_ceil(500)).contains(&kept), "peaked: top-p keeps {kept}"),
        }
        eprintln!("sampler/{name}: V={v}, top-p 0.8 keeps {kept}, penalty 1.1 over {} ids", context.len());
        g.bench_function(name, |b| {
            b.iter_batched_ref(|| logits.clone(), |l| black_box(s.sample(l, &context)), BatchSize::LargeInput)
        });
    }
    g.finish();
}

criterion_group!(benches, matmul, rmsnorm, attention, model, sampler);
criterion_main!(benches);
