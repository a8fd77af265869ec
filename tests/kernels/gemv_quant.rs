//! `gemv_{nf4,int8,gptq4,gptq8}` vs the CPU oracle `QuantMatrix::matmul`, and `dequant_*` bit-exact
//! against T(`QuantMatrix::dequantize`): NF4 / nf4-dq / Int8 quantized here from random weights, GPTQ
//! from random AutoGPTQ tensors (g_idx trivial, act-order, arbitrary), each uploaded in its device
//! layout (`upload_quant::HostQuant`, as the model upload does). Ragged shapes (rows not a multiple of
//! 8 or 64, K % 64 != 0: NF4 blocks crossing rows, an odd element count, K off the vector width) and
//! 7B layer shapes; a poisoned guard past y / out. GPTQ weights also go through
//! `dequant_gptq*_tile` (QWEN_GPTQ_DEQUANT=tile): `dequant_gptq*`'s bits, into out 16-byte aligned
//! and 2 bytes off it (its element path). Compiled + emulator-checked kernels: this is the
//! test that verifies them on a GPU (tools/gpu_check.sh runs it).
use crate::common::*;
use crate::gemv::{assert_within, Oracle, GUARD};
use qwen_rt::backend::cuda::device::{DevBuf, DevSlice, Gpu, GpuDType};
use qwen_rt::backend::cuda::launch::{self, QuantWeight};
use qwen_rt::backend::cuda::upload_quant::HostQuant;
use qwen_rt::checkpoint::TensorView;
use qwen_rt::quant::matrix::Bytes;
use qwen_rt::quant::{QuantFormat, QuantMatrix};

/// `m` in its device layout: the buffers (kept alive by the caller) and the weight.
fn upload(gpu: &Gpu, m: &QuantMatrix) -> (Vec<DevBuf>, QuantWeight) {
    let h = HostQuant::of(m);
    let bufs: Vec<DevBuf> = h.parts.iter().map(|p| gpu.upload::<u8>(p.as_ref()).expect("upload a part")).collect();
    let slices: Vec<DevSlice> = bufs.iter().map(|b| b.slice()).collect();
    (bufs, h.weight(&slices))
}

/// NF4 / nf4-dq / Int8 of a random [N, K] weight.
fn quantized(n: usize, k: usize, format: QuantFormat, seed: u64) -> QuantMatrix {
    let w = rand_vec(n * k, seed, 0.5);
    QuantMatrix::quantize(&TensorView::from_f32("w", &[n, k], &w).unwrap(), format).unwrap()
}

/// A random GPTQ matrix (stored [K, N]; N a multiple of 32/bits, as AutoGPTQ packs qzeros): g_idx
/// kind 0 k / group, 1 a permutation of it (act-order),
/// 2 arbitrary (groups of unequal sizes).
fn gptq(bits: u32, k: usize, n: usize, group: usize, kind: u32, seed: u64) -> QuantMatrix {
    let per = 32 / bits as usize;
    let groups = k / group;
    let r = rand_vec(k / per * n + groups * n / per + groups * n, seed, 1.0);
    let word = |x: f32| ((x + 1.0) * 0.5 * u32::MAX as f32) as u32;
    let qweight: Vec<u8> = r[..k / per * n].iter().flat_map(|&x| word(x).to_le_bytes()).collect();
    let qzeros: Vec<u8> = r[k / per * n..][..groups * n / per].iter().flat_map(|&x| word(x).to_le_bytes()).collect();
    let scales: Vec<f32> =
        r[r.len() - groups * n..].iter().map(|x| half::f16::from_f32(0.002 + 0.01 * x.abs()).to_f32()).collect();
    let g_idx: Vec<i32> = (0..k)
        .map(|i| match kind {
            0 => (i / group) as i32,
            1 => ((i * 7 + 3) % k / group) as i32,
            _ => ((i * i + 3 * i) % groups) as i32,
        })
        .collect();
    let path = std::path::Path::new("gemv_quant");
    QuantMatrix::from_gptq(path, "w", bits, group, k, n, Bytes::Owned(qweight), &qzeros, scales, &g_idx).unwrap()
}

/// The GEMV of `m` vs `m.matmul`, within the f32-summation bound of `gemv.rs`'s Oracle (on the exact
/// dequantized W); then `dequant` bit-exact against T(W).
fn check(gpu: &Gpu, m: &QuantMatrix, what: &str, seed: u64) {
    let (n, k) = (m.n, m.k);
    let (_bufs, w) = upload(gpu, m);
    let wf = m.dequantize();
    let oracle = Oracle::new(&wf, n, k);
    for dt in DTYPES {
        let (xb, x) = upload_dt(gpu, dt, &rand_vec(k, seed, 2.0));
        let y = poisoned(gpu, (n + GUARD) * 4);
        launch::gemv_quant(gpu, &gpu.stream, dt, &w, xb.slice(), y.slice()).unwrap();
        let got = read_f32(gpu, y.slice(), n + GUARD);
        let mut want = vec![0f32; n];
        m.matmul(&x, None, &mut want).unwrap();
        let (_, lim) = oracle.run(&x, 1);
        assert_within(&format!("gemv {what} {dt:?} {n}x{k}"), &got[..n], &want, &lim);
        assert!(got[n..].iter().all(|v| v.to_bits() == u32::MAX), "gemv {what} {dt:?}: wrote past y");
        if matches!(w, QuantWeight::Nf4 { .. }) {
            // gemv_nf4_rows (QWEN_NF4=rows): gemv_nf4's bits, and nothing past y.
            let yr = poisoned(gpu, (n + GUARD) * 4);
            let (nf4, int8) = (launch::Nf4Kernel::Rows, launch::Int8Kernel::Warp);
            launch::gemv_quant_with(gpu, &gpu.stream, dt, &w, xb.slice(), yr.slice(), nf4, int8).unwrap();
            let rows = read_f32(gpu, yr.slice(), n + GUARD);
            let differ = (0..n).filter(|&i| rows[i].to_bits() != got[i].to_bits()).count();
            assert_eq!(differ, 0, "gemv_nf4_rows {what} {dt:?} {n}x{k}: {differ} rows differ from gemv_nf4");
            assert!(rows[n..].iter().all(|v| v.to_bits() == u32::MAX), "gemv_nf4_rows {what} {dt:?}: wrote past y");
        }
        if matches!(w, QuantWeight::Int8 { .. }) {
            // gemv_int8_rows (QWEN_INT8=rows): gemv_int8's bits, within the oracle's bound, nothing past y.
            let yr = poisoned(gpu, (n + GUARD) * 4);
            let (nf4, int8) = (launch::Nf4Kernel::Warp, launch::Int8Kernel::Rows);
            launch::gemv_quant_with(gpu, &gpu.stream, dt, &w, xb.slice(), yr.slice(), nf4, int8).unwrap();
            let rows = read_f32(gpu, yr.slice(), n + GUARD);
            assert_within(&format!("gemv_int8_rows {what} {dt:?} {n}x{k}"), &rows[..n], &want, &lim);
            let differ = (0..n).filter(|&i| rows[i].to_bits() != got[i].to_bits()).count();
            assert_eq!(differ, 0, "gemv_int8_rows {what} {dt:?} {n}x{k}: {differ} rows differ from gemv_int8");
            assert!(rows[n..].iter().all(|v| v.to_bits() == u32::MAX), "gemv_int8_rows {what} {dt:?}: wrote past y");
        }
        let out = poisoned(gpu, (n * k + GUARD) * 2);
        launch::dequant(gpu, &gpu.stream, dt, &w, out.slice()).unwrap();
        let bits = gpu.read::<u16>(out.ptr(), n * k + GUARD).unwrap();
        let want = dt.encode(&wf);
        let bad = bits[..n * k].iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(bad, 0, "dequant {what} {dt:?} {n}x{k}: {bad} elements differ from T(W)");
        assert!(bits[n * k..].iter().all(|&b| b == u16::MAX), "dequant {what} {dt:?}: wrote past out");
        if matches!(w, QuantWeight::Gptq { .. }) {
            // dequant_gptq*_tile (QWEN_GPTQ_DEQUANT=tile): dequant_gptq's bits, nothing outside out;
            // at an offset of one element (2 bytes off 16-byte alignment: the element path).
            for off in [0, 1] {
                let tiled = poisoned(gpu, (off + n * k + GUARD) * 2);
                let o = tiled.slice().sub(off * 2, n * k * 2).unwrap();
                launch::dequant_with(gpu, &gpu.stream, dt, &w, o, launch::GptqDequant::Tile).unwrap();
                let t = gpu.read::<u16>(tiled.ptr(), off + n * k + GUARD).unwrap();
                let differ = t[off..off + n * k].iter().zip(&bits[..n * k]).filter(|(a, b)| a != b).count();
                let at = format!("dequant tile {what} {dt:?} {n}x{k} offset {off}");
                assert_eq!(differ, 0, "{at}: {differ} elements differ from dequant_gptq");
                let bad = t[off..off + n * k].iter().zip(&want).filter(|(a, b)| a != b).count();
                assert_eq!(bad, 0, "{at}: {bad} elements differ from T(W)");
                let outside = t[..off].iter().chain(&t[off + n * k..]).all(|&b| b == u16::MAX);
                assert!(outside, "dequant tile {what} {dt:?} offset {off}: wrote outside out");
            }
        }
    }
}

const BNB: [QuantFormat; 3] =
    [QuantFormat::Nf4 { double_quant: false }, QuantFormat::Nf4 { double_quant: true }, QuantFormat::Int8];

#[test]
fn gemv_quant_bnb_matches_cpu() {
    let Some(gpu) = gpu("gemv_quant_bnb_matches_cpu") else { return };
    // (N, K): vector paths, K % 64 != 0 (blocks cross rows), odd N·K, K off the vector width, 1 row.
    for (n, k) in [(37, 128), (7, 96), (9, 33), (13, 100), (1, 64), (3, 1), (5, 48), (11, 4096)] {
        for f in BNB {
            check(&gpu, &quantized(n, k, f, (n * 31 + k) as u64), f.name(), 7);
        }
    }
}

#[test]
fn gemv_quant_gptq_matches_cpu() {
    let Some(gpu) = gpu("gemv_quant_gptq_matches_cpu") else { return };
    // (2048, 104): tiles of dequant_gptq*_tile in both directions, the last column tile ragged.
    for bits in [4, 8] {
        for (k, n, group, kind) in [
            (128, 8, 128, 0),
            (256, 24, 64, 1),
            (384, 40, 128, 2),
            (1024, 56, 128, 1),
            (96, 8, 32, 2),
            (2048, 104, 128, 0),
        ] {
            let what = format!("gptq{bits} g_idx kind {kind}");
            check(&gpu, &gptq(bits, k, n, group, kind, (k + n) as u64), &what, 9);
        }
    }
}

#[test]
fn gemv_quant_7b_shapes_match_cpu() {
    let Some(gpu) = gpu("gemv_quant_7b_shapes_match_cpu") else { return };
    // Qwen-7B's c_attn (12288 x 4096, NF4, act-order GPTQ) and mlp.c_proj (4096 x 11008) shapes.
    check(&gpu, &quantized(12288, 4096, QuantFormat::Nf4 { double_quant: true }, 1), "nf4-dq c_attn", 3);
    check(&gpu, &quantized(4096, 11008, QuantFormat::Int8, 2), "int8 mlp.c_proj", 4);
    check(&gpu, &gptq(4, 11008, 4096, 128, 1, 3), "gptq4 act-order mlp.c_proj", 5);
}

#[test]
fn gemv_quant_refuses_bad_operands() {
    let Some(gpu) = gpu("gemv_quant_refuses_bad_operands") else { return };
    let m = quantized(8, 64, QuantFormat::Int8, 1);
    let (_bufs, w) = upload(&gpu, &m);
    let x = gpu.alloc(64 * 2).unwrap();
    let y = gpu.alloc(7 * 4).unwrap();
    let e = launch::gemv_quant(&gpu, &gpu.stream, GpuDType::BF16, &w, x.slice(), y.slice()).unwrap_err().to_string();
    assert!(e.contains("y [N]"), "{e}");
    let out = gpu.alloc(8 * 63 * 2).unwrap();
    let e = launch::dequant(&gpu, &gpu.stream, GpuDType::BF16, &w, out.slice()).unwrap_err().to_string();
    assert!(e.contains("dequantized W"), "{e}");
}
