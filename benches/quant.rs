//! Criterion benches of the CPU quantized matmul (`quant::QuantMatrix::matmul`) on the Qwen-7B
//! layer shapes, next to the bf16 matmul of the same weights (`backend::cpu::matmul`):
//! c_attn 12288×4096, attn.c_proj 4096×4096, w1 / w2 11008×4096, mlp.c_proj 4096×11008 (N×K).
//! T = 1 (decode, memory bound): throughput in bytes of the weight as held (bf16: 2 B per weight;
//! Int8: 1 B + a scale per row; NF4: 0.5 B + 4 B per 64), so GB/s compares with the machine's
//! read bandwidth. T = 16 (prefill, compute bound): "elements" = multiply-adds T·N·K (Melem/s =
//! MMAC/s). `*_rows_*`: the same matrices through the unfused path (rows decoded to f32, then
//! a dot per output: what NF4 / Int8 ran before the fused kernels, and what GPTQ runs for prefill).
//! `gptq4_*`: a GPTQ-Int4 matrix of the same shape (random codes, group 128, sequential g_idx).
//! `cargo bench --bench quant` (about three minutes: writes 315 MB of bf16 to a temp dir first);
//! `cargo bench --bench quant -- 4096x4096` for one shape.
//! `QWEN_BENCH_CPU_TIME=1`: one thread, and the time of an iteration is the process's CPU time, not
//! the wall clock: the cost per weight of each kernel on one core, readable on a machine that other
//! work keeps busy (where wall-clock GB/s only say how much of the machine was left).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwen_rt::backend::cpu;
use qwen_rt::checkpoint::{Checkpoint, DType};
use qwen_rt::quant::{Bytes, Kernel, QuantFormat, QuantMatrix};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// This process's CPU time (user + system, all threads).
fn cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec for clock_gettime to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Time `iters` calls of f: wall clock, or (`cpu`) the process's CPU time on a one-thread pool.
fn timed(pool: Option<&rayon::ThreadPool>, iters: u64, f: &mut (dyn FnMut() + Send)) -> Duration {
    match pool {
        None => {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed()
        }
        Some(p) => p.install(|| {
            let t = cpu_time();
            for _ in 0..iters {
                f();
            }
            cpu_time() - t
        }),
    }
}

/// Deterministic pseudo-random values in [-0.05, 0.05) (weights of a trained model's scale).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0) * 0.05
        })
        .collect()
}

/// (name, N, K) of the Qwen-7B linear layers the CPU executor runs.
const SHAPES: &[(&str, usize, usize)] = &[
    ("c_attn_12288x4096", 12288, 4096),
    ("c_proj_4096x4096", 4096, 4096),
    ("w1_11008x4096", 11008, 4096),
    ("mlp_c_proj_4096x11008", 4096, 11008),
];

fn quant_matmul(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = r#"{"model_type": "qwen", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
        "intermediate_size": 128, "vocab_size": 64, "seq_length": 16}"#;
    std::fs::write(dir.path().join("config.json"), config).expect("config.json");
    {
        let data: Vec<Vec<f32>> = SHAPES.iter().enumerate().map(|(i, s)| values(s.1 * s.2, i as u64 + 1)).collect();
        let shapes: Vec<[usize; 2]> = SHAPES.iter().map(|s| [s.1, s.2]).collect();
        let list: Vec<(&str, DType, &[usize], &[f32])> =
            SHAPES.iter().zip(&data).zip(&shapes).map(|((s, d), sh)| (s.0, DType::BF16, &sh[..], &d[..])).collect();
        qwen_rt::synth::write_safetensors(&dir.path().join("model.safetensors"), &list).expect("write");
    }
    let ck = Checkpoint::open(dir.path()).expect("open");
    let pool = std::env::var_os("QWEN_BENCH_CPU_TIME")
        .map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("one-thread pool"));
    let pool = pool.as_ref();
    let mut g = c.benchmark_group("quant_matmul");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for &(name, n, k) in SHAPES {
        let w = ck.tensor(name).expect("tensor");
        let quants = [
            ("int8", QuantMatrix::quantize(w, QuantFormat::Int8).expect("int8")),
            ("nf4", QuantMatrix::quantize(w, QuantFormat::Nf4 { double_quant: false }).expect("nf4")),
            ("gptq4", gptq4(n, k)),
            ("nf4-dq", QuantMatrix::quantize(w, QuantFormat::Nf4 { double_quant: true }).expect("nf4-dq")),
        ];
        for t in [1usize, 16] {
            let x = values(t * k, 99);
            let mut y = vec![0f32; t * n];
            let tp = |bytes: usize| {
                if t == 1 {
                    Throughput::Bytes(bytes as u64)
                } else {
                    Throughput::Elements((t * n * k) as u64)
                }
            };
            g.throughput(tp(w.byte_len()));
            g.bench_function(BenchmarkId::new(format!("bf16_{name}"), format!("T{t}")), |b| {
                b.iter_custom(|iters| {
                    timed(pool, iters, &mut || cpu::matmul(black_box(&x), w, None, &mut y).expect("matmul"))
                })
            });
            for (mode, q) in &quants {
                g.throughput(tp(q.byte_len()));
                g.bench_function(BenchmarkId::new(format!("{mode}_{name}"), format!("T{t}")), |b| {
                    b.iter_custom(|iters| {
                        timed(pool, iters, &mut || q.matmul(black_box(&x), None, &mut y).expect("matmul"))
                    })
                });
            }
            // The unfused path (rows decoded to f32, then a dot per output) for comparison.
            let kernel = Kernel::detect();
            for (mode, q) in &quants[..3] {
                g.throughput(tp(q.byte_len()));
                g.bench_function(BenchmarkId::new(format!("{mode}_rows_{name}"), format!("T{t}")), |b| {
                    b.iter_custom(|iters| {
                        timed(pool, iters, &mut || {
                            q.matmul_decoded_with(kernel, black_box(&x), None, &mut y).expect("matmul")
                        })
                    })
                });
            }
        }
    }
    g.finish();
}

/// A GPTQ-Int4 matrix `[N, K]` as the official checkpoints store it (group 128, sequential g_idx)
/// with random codes, zeros and scales.
fn gptq4(n: usize, k: usize) -> QuantMatrix {
    let word = |i: usize| qwen_rt::synth::splitmix64(i as u64) as u32;
    let g = k / 128;
    let qweight: Vec<u8> = (0..k / 8 * n).flat_map(|i| word(i).to_le_bytes()).collect();
    let qzeros: Vec<u8> = (0..g * n / 8).flat_map(|i| word(i + (1 << 40)).to_le_bytes()).collect();
    let scales: Vec<f32> = (0..g * n).map(|i| 1e-3 + (word(i + (2 << 40)) >> 8) as f32 * 1e-10).collect();
    let g_idx: Vec<i32> = (0..k).map(|i| (i / 128) as i32).collect();
    QuantMatrix::from_gptq(
        std::path::Path::new("<bench>"),
        "gptq4",
        4,
        128,
        k,
        n,
        Bytes::Owned(qweight),
        &qzeros,
        scales,
        &g_idx,
    )
    .expect("gptq4 matrix")
}

/// Quantizing one Int8 row (`quant::int8::quantize_row`: through float16, row absmax, codes): the
/// per-element cost of `--quant int8` at load. One row of 4096, single thread (CPU time with
/// `QWEN_BENCH_CPU_TIME=1`).
fn int8_quantize(c: &mut Criterion) {
    let row = values(4096, 7);
    let mut codes = vec![0i8; row.len()];
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    let pool = std::env::var_os("QWEN_BENCH_CPU_TIME").is_some().then_some(&one);
    c.bench_function("int8_quantize_row_4096", |b| {
        b.iter_custom(|iters| {
            timed(pool, iters, &mut || {
                black_box(qwen_rt::quant::int8::quantize_row(black_box(&row), &mut codes));
            })
        })
    });
}

criterion_group!(benches, quant_matmul, int8_quantize);
criterion_main!(benches);
