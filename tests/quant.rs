//! Quantized weights against the real bitsandbytes and AutoGPTQ (fixtures written by
//! tools/gen_quant_fixtures.py and tools/gen_gptq_fixtures.py into tests/data/quant/):
//! codes, absmax and scales bit for bit; dequantization bit for bit; the quantized matmul equal to
//! an f32 matmul over the dequantized weights, and its SIMD kernels equal to the portable one.
use qwen_rt::checkpoint::TensorView;
use qwen_rt::quant::{blockwise8, int8, nf4, Bytes, Kernel, QuantData, QuantFormat, QuantMatrix};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run tools/gen_quant_fixtures.py)", p.display()))
}

/// A fixture tensor as f32 (floats converted exactly) with its shape.
fn f32s(st: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let d = t.data();
    let v = match t.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => panic!("{name}: {other:?} is not a float tensor"),
    };
    (v, t.shape().to_vec())
}

fn raw(st: &SafeTensors, name: &str) -> Vec<u8> {
    st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}")).data().to_vec()
}

fn i32s(st: &SafeTensors, name: &str) -> Vec<i32> {
    raw(st, name).chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Case names of a fixture: the prefixes of its `*.input` tensors.
fn cases(st: &SafeTensors) -> Vec<String> {
    let mut v: Vec<String> = st.names().iter().filter_map(|n| n.strip_suffix(".input").map(String::from)).collect();
    v.sort();
    assert!(!v.is_empty(), "fixture has no cases");
    v
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        let n = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).count();
        panic!("{what}: {n} values differ, first at {i}: {} vs {} (bitsandbytes)", got[i], want[i]);
    }
}

fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        let n = (0..got.len()).filter(|&i| got[i] != want[i]).count();
        panic!("{what}: {n} of {} bytes differ, first at {i}: {} vs {} (reference)", got.len(), got[i], want[i]);
    }
}

fn matrix_of(name: &str, vals: &[f32], shape: &[usize]) -> TensorView {
    TensorView::from_f32(name, shape, vals).unwrap()
}

const NOFILE: &str = "<fixture>";

// ---------------------------------------------------------------------------------------------
// NF4
// ---------------------------------------------------------------------------------------------

#[test]
fn nf4_code_table_is_bitsandbytes() {
    let b = fixture("bnb_nf4.safetensors");
    let st = SafeTensors::deserialize(&b).unwrap();
    assert_bits_eq(&nf4::NF4_CODE, &f32s(&st, "nf4_code").0, "NF4 code table");
}

#[test]
fn nf4_codes_and_absmax_bit_exact() {
    let b = fixture("bnb_nf4.safetensors");
    let st = SafeTensors::deserialize(&b).unwrap();
    for case in cases(&st) {
        let (x, shape) = f32s(&st, &format!("{case}.input"));
        let want_codes = raw(&st, &format!("{case}.codes"));
        let (want_absmax, _) = f32s(&st, &format!("{case}.absmax"));
        // The block function on the whole tensor.
        let mut codes = vec![0u8; x.len().div_ceil(2)];
        let mut absmax = vec![0f32; x.len().div_ceil(nf4::BLOCK)];
        nf4::quantize_blocks(&x, &mut codes, &mut absmax);
        assert_bytes_eq(&codes, &want_codes, &format!("{case}: codes"));
        assert_bits_eq(&absmax, &want_absmax, &format!("{case}: absmax"));
        // The streaming quantizer from a view.
        let q = QuantMatrix::quantize(&matrix_of(&case, &x, &shape), QuantFormat::Nf4 { double_quant: false }).unwrap();
        let qwen_rt::quant::QuantData::Nf4 { codes, absmax } = &q.data else { panic!("not nf4") };
        assert_bytes_eq(codes.as_slice(), &want_codes[..], &format!("{case}: streamed codes"));
        assert_bits_eq(&absmax.to_f32(), &want_absmax, &format!("{case}: streamed absmax"));
    }
}

#[test]
fn nf4_streaming_crosses_work_items() {
    // Larger than one work item (64 Ki elements), rows not a multiple of 64, a partial last block:
    // the streamed result equals the one-piece block function.
    let (n, k) = (300, 333);
    let x: Vec<f32> = (0..n * k).map(|i| ((i as f32 * 0.7311).sin() * 0.05) * (1.0 + (i % 97) as f32 / 50.0)).collect();
    let mut codes = vec![0u8; x.len().div_ceil(2)];
    let mut absmax = vec![0f32; x.len().div_ceil(nf4::BLOCK)];
    nf4::quantize_blocks(&x, &mut codes, &mut absmax);
    let q = QuantMatrix::quantize(&matrix_of("w", &x, &[n, k]), QuantFormat::Nf4 { double_quant: false }).unwrap();
    let qwen_rt::quant::QuantData::Nf4 { codes: c2, absmax: a2 } = &q.data else { panic!() };
    assert_bytes_eq(c2.as_slice(), &codes, "streamed codes");
    assert_eq!(bits(&a2.to_f32()), bits(&absmax));
}

#[test]
fn nf4_dequant_bit_exact() {
    let b = fixture("bnb_nf4.safetensors");
    let st = SafeTensors::deserialize(&b).unwrap();
    for case in cases(&st) {
        let (_, shape) = f32s(&st, &format!("{case}.input"));
        let (absmax, _) = f32s(&st, &format!("{case}.absmax"));
        let codes = raw(&st, &format!("{case}.codes"));
        let q = QuantMatrix::from_nf4(
            Path::new(NOFILE),
            &case,
            shape[0],
            shape[1],
            Bytes::Owned(codes),
            nf4::Absmax::Plain(absmax),
        )
        .unwrap();
        assert_bits_eq(&q.dequantize(), &f32s(&st, &format!("{case}.dequant")).0, &format!("{case}: dequant"));
        // decode_rows of any row range equals the whole dequantization's rows.
        let all = q.dequantize();
        let k = shape[1];
        for n0 in [0, 1, shape[0] / 2, shape[0] - 1] {
            let rows = (shape[0] - n0).min(3);
            let mut out = vec![0f32; rows * k];
            q.decode_rows(n0, &mut out);
            assert_eq!(bits(&out), bits(&all[n0 * k..(n0 + rows) * k]), "{case}: rows {n0}..");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NF4 double quantization
// ---------------------------------------------------------------------------------------------

#[test]
fn dynamic_map_is_bitsandbytes() {
    let b = fixture("bnb_nf4_dq.safetensors");
    let st = SafeTensors::deserialize(&b).unwrap();
    assert_bits_eq(blockwise8::dynamic_map(), &f32s(&st, "dynamic_map").0, "dynamic map");
}

#[test]
fn blockwise8_codes_bit_exact() {
    let b = fixture("bnb_nf4_dq.safetensors");
    let st = SafeTensors::deserialize(&b).unwrap();
    let (x, _) = f32s(&st, "blockwise8.input");
    let (codes, absmax) = blockwise8::quantize(&x);
    let want = raw(&st, "blockwise8.codes");
    let differ = codes.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "8-bit codes: {differ} of {} differ", x.len());
    assert_bits_eq(&absmax, &f32s(&st, "blockwise8.absmax").0, "8-bit absmax");
}

#[test]
fn nf4_double_quant_bit_exact() {
    let b = fixture("bnb_nf4_dq.safetensors");
    let st = SafeTensors::deserialize(&b).unwrap();
    for case in cases(&st).into_iter().filter(|c| c != "blockwise8") {
        let (x, shape) = f32s(&st, &format!("{case}.input"));
        let (want_absmax, _) = f32s(&st, &format!("{case}.absmax"));
        let offset = f32s(&st, &format!("{case}.offset")).0[0];
        // First level equals plain NF4.
        let mut codes = vec![0u8; x.len().div_ceil(2)];
        let mut absmax = vec![0f32; x.len().div_ceil(nf4::BLOCK)];
        nf4::quantize_blocks(&x, &mut codes, &mut absmax);
        assert_bytes_eq(&codes, &raw(&st, &format!("{case}.codes")), &format!("{case}: codes"));
        assert_bits_eq(&absmax, &want_absmax, &format!("{case}: absmax"));
        // Second level, given bitsandbytes' offset: codes and nested absmax bit for bit.
        let dq = nf4::double_quantize_with_offset(&absmax, offset);
        assert_bytes_eq(&dq.q, &raw(&st, &format!("{case}.qabsmax")), &format!("{case}: absmax codes"));
        assert_bits_eq(&dq.absmax2, &f32s(&st, &format!("{case}.nested_absmax")).0, &format!("{case}: nested absmax"));
        // Our own offset (f64 sum) is bitsandbytes' (torch's f32 sum) within 2 ulp.
        let own = nf4::double_quantize(&absmax);
        let ulps = (own.offset.to_bits() as i64 - offset.to_bits() as i64).abs();
        assert!(ulps <= 2, "{case}: offset {} vs bitsandbytes {offset} ({ulps} ulp)", own.offset);
        // Dequantized statistics and weights bit for bit.
        let a = nf4::Absmax::Double(dq);
        assert_bits_eq(
            &a.to_f32(),
            &f32s(&st, &format!("{case}.absmax_dequant")).0,
            &format!("{case}: absmax dequant"),
        );
        let q = QuantMatrix::from_nf4(Path::new(NOFILE), &case, shape[0], shape[1], Bytes::Owned(codes), a).unwrap();
        assert_bits_eq(&q.dequantize(), &f32s(&st, &format!("{case}.dequant")).0, &format!("{case}: dequant"));
    }
}

// ---------------------------------------------------------------------------------------------
// Int8
// ---------------------------------------------------------------------------------------------

#[test]
fn int8_codes_scales_and_dequant_bit_exact() {
    let b = fixture("bnb_int8.safetensors");
    let st = SafeTensors::deserialize(&b).unwrap();
    for case in cases(&st) {
        let (x, shape) = f32s(&st, &format!("{case}.input"));
        let want_codes = raw(&st, &format!("{case}.codes"));
        let (want_scb, _) = f32s(&st, &format!("{case}.scb"));
        let q = QuantMatrix::quantize(&matrix_of(&case, &x, &shape), QuantFormat::Int8).unwrap();
        let qwen_rt::quant::QuantData::Int8 { codes, scb } = &q.data else { panic!("not int8") };
        assert_bytes_eq(codes.as_slice(), &want_codes[..], &format!("{case}: codes"));
        assert_bits_eq(scb, &want_scb, &format!("{case}: SCB"));
        assert_bits_eq(&q.dequantize(), &f32s(&st, &format!("{case}.dequant")).0, &format!("{case}: dequant"));
    }
}

#[test]
fn int8_rounds_half_to_even() {
    let mut c = [0i8; 4];
    // absmax 254: x · 127/254 = x / 2 exactly; 1/2 → 0, 3/2 → 2, 5/2 → 2.
    let scb = int8::quantize_row(&[254.0, 1.0, 3.0, 5.0], &mut c);
    assert_eq!((scb, c), (254.0, [127, 0, 2, 2]));
}

// ---------------------------------------------------------------------------------------------
// GPTQ
// ---------------------------------------------------------------------------------------------

fn gptq_cases(st: &SafeTensors) -> Vec<(String, u32, QuantMatrix)> {
    let mut names: Vec<String> =
        st.names().iter().filter_map(|n| n.strip_suffix(".qweight").map(String::from)).collect();
    names.sort();
    assert_eq!(names.len(), 4);
    names
        .into_iter()
        .map(|case| {
            let bits = if case.starts_with("int8") { 8 } else { 4 };
            let (k, n) = {
                let s = st.tensor(&format!("{case}.q")).unwrap().shape().to_vec();
                (s[0], s[1])
            };
            let (scales, _) = f32s(st, &format!("{case}.scales"));
            let q = QuantMatrix::from_gptq(
                Path::new(NOFILE),
                &case,
                bits,
                128,
                k,
                n,
                Bytes::Owned(raw(st, &format!("{case}.qweight"))),
                &raw(st, &format!("{case}.qzeros")),
                scales,
                &i32s(st, &format!("{case}.g_idx")),
            )
            .unwrap();
            (case, bits, q)
        })
        .collect()
}

/// [K, N] → [N, K].
fn transpose(v: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for kk in 0..k {
        for nn in 0..n {
            out[nn * k + kk] = v[kk * n + nn];
        }
    }
    out
}

#[test]
fn gptq_dequant_equals_autogptq_and_numpy() {
    let b = fixture("gptq.safetensors");
    let st = SafeTensors::deserialize(&b).unwrap();
    for (case, _, q) in gptq_cases(&st) {
        let (k, n) = (q.k, q.n);
        let w = q.dequantize(); // [N, K]
        let np = transpose(&f32s(&st, &format!("{case}.dequant_numpy")).0, k, n);
        assert_bits_eq(&w, &np, &format!("{case}: vs numpy"));
        // AutoGPTQ's own unpacking computes in f16: our exact f32 values rounded to f16.
        let ag = transpose(&f32s(&st, &format!("{case}.dequant_autogptq")).0, k, n);
        let w16: Vec<f32> = w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        assert_bits_eq(&w16, &ag, &format!("{case}: vs AutoGPTQ"));
    }
}

#[test]
fn gptq_bad_parts_are_named_errors() {
    let b = fixture("gptq.safetensors");
    let st = SafeTensors::deserialize(&b).unwrap();
    let case = "int4_256x96";
    let qw = raw(&st, &format!("{case}.qweight"));
    let qz = raw(&st, &format!("{case}.qzeros"));
    let (sc, _) = f32s(&st, &format!("{case}.scales"));
    let gi = i32s(&st, &format!("{case}.g_idx"));
    let f = Path::new("dir/model.safetensors");
    let mk = |bits, group, k, qw: &[u8], qz: &[u8], sc: &[f32], gi: &[i32]| {
        QuantMatrix::from_gptq(f, "h.0.attn.c_attn", bits, group, k, 96, Bytes::Owned(qw.to_vec()), qz, sc.to_vec(), gi)
            .unwrap_err()
            .to_string()
    };
    let has = |e: String, words: &[&str]| {
        for w in words.iter().chain(&["dir/model.safetensors", "h.0.attn.c_attn"]) {
            assert!(e.contains(w), "{e:?} lacks {w:?}");
        }
    };
    has(mk(3, 128, 256, &qw, &qz, &sc, &gi), &["bits = 3"]);
    has(mk(4, 100, 256, &qw, &qz, &sc, &gi), &["group size 100 does not divide"]);
    has(mk(4, 128, 256, &qw[4..], &qz, &sc, &gi), &["qweight"]);
    has(mk(4, 128, 256, &qw, &qz[4..], &sc, &gi), &["qzeros"]);
    has(mk(4, 128, 256, &qw, &qz, &sc[1..], &gi), &["scales"]);
    has(mk(4, 128, 256, &qw, &qz, &sc, &gi[1..]), &["g_idx"]);
    let mut bad = gi.clone();
    bad[5] = 2;
    has(mk(4, 128, 256, &qw, &qz, &sc, &bad), &["g_idx[5] = 2"]);
}

// ---------------------------------------------------------------------------------------------
// Quantized matmul
// ---------------------------------------------------------------------------------------------

fn lcg(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// Every format on a few shapes (K not a multiple of 16 or 64 for the bitsandbytes ones).
fn matmul_matrices() -> Vec<QuantMatrix> {
    let mut v = Vec::new();
    for (n, k) in [(37, 100), (64, 256), (5, 33)] {
        let w = lcg((n * k) as u64, n * k, 0.05);
        let view = matrix_of("w", &w, &[n, k]);
        for f in [QuantFormat::Nf4 { double_quant: false }, QuantFormat::Nf4 { double_quant: true }, QuantFormat::Int8]
        {
            v.push(QuantMatrix::quantize(&view, f).unwrap());
        }
    }
    let b = fixture("gptq.safetensors");
    let st = SafeTensors::deserialize(&b).unwrap();
    v.extend(gptq_cases(&st).into_iter().map(|(_, _, q)| q));
    v
}

#[test]
fn quantized_matmul_equals_f32_matmul_of_the_dequantized_weights() {
    for q in matmul_matrices() {
        let (n, k) = (q.n, q.k);
        let w = q.dequantize();
        let bias = lcg(7, n, 0.1);
        for t in [1, 3, 7] {
            let x = lcg(t as u64 + 100, t * k, 1.0);
            let mut y = vec![0f32; t * n];
            q.matmul(&x, Some(&bias), &mut y).unwrap();
            // The CPU backend's f32 matmul over the dequantized weights.
            let mut yr = vec![0f32; t * n];
            qwen_rt::backend::cpu::matmul(&x, &matrix_of("dq", &w, &[n, k]), Some(&bias), &mut yr).unwrap();
            for ti in 0..t {
                for ni in 0..n {
                    let (wr, xr) = (&w[ni * k..][..k], &x[ti * k..][..k]);
                    let exact: f64 =
                        wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() + bias[ni] as f64;
                    let mag: f64 = wr.iter().zip(xr).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>() + 1e-30;
                    let (got, cpu) = (y[ti * n + ni] as f64, yr[ti * n + ni] as f64);
                    assert!(
                        (got - exact).abs() <= 1e-6 * mag + 1e-7,
                        "{}: y[{ti},{ni}] {got} vs exact {exact}",
                        q.name
                    );
                    assert!(
                        (got - cpu).abs() <= 2e-6 * mag + 1e-7,
                        "{}: y[{ti},{ni}] {got} vs cpu::matmul {cpu}",
                        q.name
                    );
                }
            }
        }
    }
}

#[test]
fn quantized_matmul_kernels_and_token_counts_agree_bit_for_bit() {
    let kernels = Kernel::available();
    if kernels.len() == 1 {
        eprintln!("SKIP (partly): this CPU has no AVX2; only the portable kernel was checked");
    }
    for q in matmul_matrices() {
        let (n, k) = (q.n, q.k);
        let t = 5;
        let x = lcg(9, t * k, 1.0);
        let mut base = vec![0f32; t * n];
        q.matmul_with(Kernel::Portable, &x, None, &mut base).unwrap();
        for &kern in &kernels {
            let mut y = vec![0f32; t * n];
            q.matmul_with(kern, &x, None, &mut y).unwrap();
            assert_eq!(bits(&y), bits(&base), "{}: {kern:?} vs portable", q.name);
            // One token at a time (decode) gives the same bits as the batch (prefill).
            for ti in 0..t {
                let mut y1 = vec![0f32; n];
                q.matmul_with(kern, &x[ti * k..][..k], None, &mut y1).unwrap();
                assert_eq!(bits(&y1), bits(&base[ti * n..][..n]), "{}: token {ti} alone", q.name);
            }
        }
    }
}

#[test]
fn quantized_matmul_rejects_bad_shapes() {
    let q = QuantMatrix::quantize(&matrix_of("w", &lcg(1, 64 * 32, 0.1), &[64, 32]), QuantFormat::Int8).unwrap();
    let mut y = vec![0f32; 64];
    assert!(q.matmul(&[0.0; 31], None, &mut y).is_err());
    assert!(q.matmul(&[0.0; 32], None, &mut y[..63]).is_err());
    assert!(q.matmul(&[0.0; 32], Some(&[0.0; 3]), &mut y).is_err());
    assert!(q.matmul(&[0.0; 32], None, &mut y).is_ok());
}

#[test]
fn gptq_sequential_path_gives_the_decoded_paths_bits() {
    // Sequential g_idx (AutoGPTQ without act-order, the official checkpoints): the matmul takes
    // gptq::gemv_sequential straight from the packed words; it must give the decoded path's bits
    // (rows decoded to f32, then Kernel::dot: what act-order uses) on every kernel and token count,
    // and stay within f32 rounding of the exact product. K % 16 ≠ 0 (72, 36) exercises the tail.
    use qwen_rt::quant::gptq;
    for (bits, group, n, k) in
        [(4u32, 128, 40, 256), (8, 128, 12, 384), (4, 8, 24, 72), (8, 4, 20, 36), (4, 32, 1000, 64)]
    {
        let per = 32 / bits as usize;
        let g = k / group;
        let word = |i: usize, salt: u64| qwen_rt::synth::splitmix64(i as u64 ^ salt << 40) as u32;
        let qweight: Vec<u8> = (0..k / per * n).flat_map(|i| word(i, 1).to_le_bytes()).collect();
        let qzeros: Vec<u8> = (0..g * n / per).flat_map(|i| word(i, 2).to_le_bytes()).collect();
        let scales: Vec<f32> = lcg(3, g * n, 0.01).iter().map(|s| s.abs() + 1e-3).collect();
        let g_idx: Vec<i32> = (0..k).map(|i| (i / group) as i32).collect();
        let q = QuantMatrix::from_gptq(
            Path::new(NOFILE),
            "t",
            bits,
            group,
            k,
            n,
            Bytes::Owned(qweight),
            &qzeros,
            scales,
            &g_idx,
        )
        .unwrap();
        let QuantData::Gptq { g_idx: gi, .. } = &q.data else { panic!("not GPTQ") };
        assert!(gptq::is_sequential(gi, group, bits));
        let mut shuffled = gi.clone();
        shuffled.swap(0, k - 1);
        assert!(group == k || !gptq::is_sequential(&shuffled, group, bits), "a moved group is not sequential");
        let w = q.dequantize();
        let bias = lcg(5, n, 0.1);
        // 1 token (decode), a partial token block, one over the block of 8, and 19 = 8 + 8 + 3.
        for t in [1usize, 3, 9, 19] {
            let x = lcg(bits as u64 + k as u64 + t as u64, t * k, 1.0);
            for kern in Kernel::available() {
                let (mut y, mut yd) = (vec![0f32; t * n], vec![0f32; t * n]);
                q.matmul_with(kern, &x, Some(&bias), &mut y).unwrap();
                q.matmul_decoded_with(kern, &x, Some(&bias), &mut yd).unwrap();
                assert_eq!(bits_of(&y), bits_of(&yd), "bits {bits} group {group} [{n}, {k}] T {t} {kern:?}");
                for ti in 0..t {
                    let xr = &x[ti * k..][..k];
                    for ni in 0..n {
                        let wr = &w[ni * k..][..k];
                        let exact: f64 =
                            wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() + bias[ni] as f64;
                        let mag: f64 = wr.iter().zip(xr).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>();
                        let got = y[ti * n + ni] as f64;
                        assert!((got - exact).abs() <= 1e-6 * mag + 1e-7, "[{ti}, {ni}] {got} vs {exact}");
                    }
                }
            }
        }
    }
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
