//! `gemv_quant` (decode, one token) and `dequant` (prefill) for NF4, Int8, GPTQ-Int4 and GPTQ-Int8 at
//! the Qwen-7B linear shapes. Bytes per GEMV: the quantized weight and its scales read once, plus x
//! (K·2) and y written (N·4); GB/s against the device's DRAM bandwidth is the figure of merit (the
//! floor of a quantized decode step is its weight bytes at copy speed). Bytes per dequant: the
//! quantized weight read plus N·K·2 written. Like `gemv.rs`, launches back to back on one stream on
//! the next of several weight copies (together larger than the L2 cache), timed with events.
//! Codes are random bytes (NF4 looks each one up in a shared-memory table, so its speed depends on
//! them: constant codes hit one entry, H200 run 5 measured them 1.5x faster than the model's);
//! scales are filled with 0x3C (finite), GPTQ row groups 0, zeros 3, no permutation.
use crate::{filled, gpu_time, random_bytes};
use criterion::{Criterion, Throughput};
use qwen_rt::backend::cuda::device::{DevBuf, Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::{self, QuantWeight};
use std::sync::Arc;

/// Copies of W cycled through: at least this many bytes in all.
const ROTATE_BYTES: usize = 256 << 20;

/// One device copy of a quantized W `[N, K]` of `format` ("nf4", "int8", "gptq4", "gptq8"): its
/// buffers and the weight; and the weight's bytes.
fn make(gpu: &Gpu, format: &str, n: usize, k: usize, seed: u64) -> (Vec<DevBuf>, QuantWeight, usize) {
    let part = |bytes: usize, byte: u8| filled(gpu, bytes, byte);
    let codes = |bytes: usize| random_bytes(gpu, bytes, seed);
    match format {
        "nf4" => {
            let (c, a) = ((n * k).div_ceil(2), (n * k).div_ceil(64) * 4);
            let b = vec![codes(c), part(a, 0x3C)];
            let w = QuantWeight::Nf4 { codes: b[0].slice(), absmax: b[1].slice(), n, k };
            (b, w, c + a)
        }
        "int8" => {
            let b = vec![codes(n * k), part(n * 4, 0x3C)];
            let w = QuantWeight::Int8 { codes: b[0].slice(), scb: b[1].slice(), n, k };
            (b, w, n * k + n * 4)
        }
        _ => {
            let bits = if format == "gptq8" { 8 } else { 4 };
            let (rows, groups) = (k * bits as usize / 32, k / 128);
            let b =
                vec![codes(rows * n * 4), part(rows * 4, 0), part(groups * n * 4, 0x3C), part(groups * n * 2, 0x03)];
            let w = QuantWeight::Gptq {
                bits,
                qweight: b[0].slice(),
                row_group: b[1].slice(),
                perm: None,
                scales: b[2].slice(),
                zeros: b[3].slice(),
                n,
                k,
                rows,
                groups,
            };
            (b, w, rows * n * 4 + rows * 4 + groups * n * 6)
        }
    }
}

pub fn register(c: &mut Criterion, gpu: &Arc<Gpu>) {
    let dt = GpuDType::BF16;
    let mut g = c.benchmark_group("gemv_quant");
    // attn c_proj, c_attn (q‖k‖v), w1 or w2, mlp c_proj.
    let shapes = [(4096usize, 4096usize), (12288, 4096), (11008, 4096), (4096, 11008)];
    // (label, format, NF4 kernel, Int8 kernel): nf4_rows is the NF4 weights on gemv_nf4_rows
    // (QWEN_NF4=rows), int8_rows the Int8 weights on gemv_int8_rows (QWEN_INT8=rows).
    use launch::{Int8Kernel as I8, Nf4Kernel as N4};
    let kernels = [
        ("nf4", "nf4", N4::Warp, I8::Warp),
        ("nf4_rows", "nf4", N4::Rows, I8::Warp),
        ("int8", "int8", N4::Warp, I8::Warp),
        ("int8_rows", "int8", N4::Warp, I8::Rows),
        ("gptq4", "gptq4", N4::Warp, I8::Warp),
        ("gptq8", "gptq8", N4::Warp, I8::Warp),
    ];
    for (label, format, nf4, int8) in kernels {
        for (n, k) in shapes {
            let first = make(gpu, format, n, k, 1);
            let bytes = first.2;
            let copies = ROTATE_BYTES.div_ceil(bytes).max(2);
            let ws: Vec<_> =
                std::iter::once(first).chain((1..copies).map(|i| make(gpu, format, n, k, i as u64 + 1))).collect();
            let x = filled(gpu, k * 2, 0x3C);
            let y = gpu.alloc(n * 4).expect("alloc y");
            gpu.sync().expect("sync");
            g.throughput(Throughput::Bytes((bytes + k * 2 + n * 4) as u64));
            g.bench_function(format!("{label}_bf16_N{n}_K{k}"), |bch| {
                bch.iter_custom(|iters| {
                    gpu_time(gpu, iters, |i| {
                        let w = &ws[i % copies].1;
                        launch::gemv_quant_with(gpu, &gpu.stream, dt, w, x.slice(), y.slice(), nf4, int8).unwrap();
                    })
                })
            });
        }
    }
    g.finish();
    // The prefill's dequantization of the largest matrix of a layer (w1 or w2; the scratch is reused).
    // gptq*_tile: the GPTQ weights on dequant_gptq*_tile (QWEN_GPTQ_DEQUANT=tile), next to
    // dequant_gptq*'s row.
    let mut g = c.benchmark_group("dequant");
    let (n, k) = (11008usize, 4096usize);
    let out = gpu.alloc(n * k * 2).expect("alloc out");
    use launch::GptqDequant::{Grid, Tile};
    let kernels = [
        ("nf4", "nf4", Grid),
        ("int8", "int8", Grid),
        ("gptq4", "gptq4", Grid),
        ("gptq4_tile", "gptq4", Tile),
        ("gptq8", "gptq8", Grid),
        ("gptq8_tile", "gptq8", Tile),
    ];
    for (label, format, gptq) in kernels {
        let (_bufs, w, bytes) = make(gpu, format, n, k, 1);
        gpu.sync().expect("sync");
        g.throughput(Throughput::Bytes((bytes + n * k * 2) as u64));
        g.bench_function(format!("{label}_bf16_N{n}_K{k}"), |bch| {
            bch.iter_custom(|iters| {
                gpu_time(gpu, iters, |_| launch::dequant_with(gpu, &gpu.stream, dt, &w, out.slice(), gptq).unwrap())
            })
        });
    }
    g.finish();
}
