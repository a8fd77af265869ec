//! Whole-model fidelity of quantized weights on the CPU backend (spec §7): a tiny random bf16 Qwen
//! v1 model loaded with `LoadOptions.quant` = none / nf4 / nf4-dq / int8 against fp32 reference
//! logits whose five linears per layer went through bitsandbytes quantize -> dequantize
//! (tools/gen_quant_model_fixtures.py → tests/data/quant_model/tiny-bf16-q).
//!
//! Checks per mode and prompt: logits of every prompt position from one forward, then the greedy
//! continuation through the KV cache token by token (its logits and ids). Error per row = max|a-b| /
//! max|b| ≤ 1e-4. And the quantized references really differ from the float one by far more than
//! that (so a `--quant` that is silently ignored fails), and the weights are held quantized.
use qwen_rt::backend::cpu::CpuModel;
use qwen_rt::backend::{BackendKind, LoadOptions};
use qwen_rt::checkpoint::Checkpoint;
use qwen_rt::model::Model;
use qwen_rt::quant::{Linear, QuantFormat};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Max relative error per row (max|a-b| / max|b|) allowed against the reference.
const REL_TOL: f32 = 1e-4;

const MODES: [&str; 4] = ["none", "nf4", "nf4-dq", "int8"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant_model/tiny-bf16-q")
}

/// Reference tensors: name → (shape, f32 values).
type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn reference() -> (Value, Tensors) {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir().join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{n}");
            let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (n, (t.shape().to_vec(), v))
        })
        .collect();
    (meta, tensors)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().fold(0, |b, (i, &x)| if x > row[b] { i } else { b }) as u32
}

/// Max over rows of max|a-b| / max|b| (both `[rows, v]`).
fn max_rel(got: &[f32], want: &[f32], v: usize) -> f32 {
    assert_eq!(got.len(), want.len());
    got.chunks_exact(v)
        .zip(want.chunks_exact(v))
        .map(|(a, b)| {
            let abs = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            abs / b.iter().map(|y| y.abs()).fold(0f32, f32::max)
        })
        .fold(0f32, f32::max)
}

fn load(mode: &str) -> Arc<CpuModel> {
    let ck = Checkpoint::open(&dir()).unwrap();
    let quant = QuantFormat::parse_load(mode).unwrap();
    let opts = LoadOptions { backend: BackendKind::Cpu, threads: 2, quant, ..Default::default() };
    Arc::new(CpuModel::load(&ck, &opts).unwrap_or_else(|e| panic!("load --quant {mode}: {e}")))
}

#[test]
fn quantized_logits_and_greedy_match_bitsandbytes_reference() {
    let (meta, refs) = reference();
    let prompts = meta["prompts"].as_array().unwrap();
    let g = meta["greedy_tokens"].as_u64().unwrap() as usize;
    for mode in MODES {
        let model = load(mode);
        let v = model.config().vocab_size;
        // Held as asked: quantized linears (and fewer bytes) for every mode but none.
        let w = model.weights();
        let quantized = matches!(w.layers[0].w2, Linear::Quant(_));
        assert_eq!(quantized, mode != "none", "{mode}: linears quantized = {quantized}");
        assert_eq!(w.format.map(|f| f.name()), QuantFormat::parse_load(mode).unwrap().map(|f| f.name()));
        let mut worst = 0f32;
        for (i, p) in prompts.iter().enumerate() {
            let prompt = ids(p);
            let greedy = ids(&meta["modes"][mode][i]["greedy"]);
            assert_eq!(greedy.len(), g);
            let mut seq = model.clone().new_sequence(prompt.len() + g + 1).unwrap();
            let logits = seq.forward(&prompt, true).unwrap();
            let (shape, want) = &refs[&format!("{mode}.p{i}.logits")];
            assert_eq!(shape, &[prompt.len(), v]);
            let rel = max_rel(&logits, want, v);
            assert!(rel <= REL_TOL, "{mode} p{i} prefill: relative error {rel:e} > {REL_TOL:e}");
            worst = worst.max(rel);
            let mut next = argmax(&logits[(prompt.len() - 1) * v..]);
            assert_eq!(next, greedy[0], "{mode} p{i}: greedy[0]");
            let (_, steps) = &refs[&format!("{mode}.p{i}.decode_logits")];
            for (k, want) in steps.chunks_exact(v).enumerate() {
                let step = seq.forward(&[next], false).unwrap();
                let rel = max_rel(&step, want, v);
                assert!(rel <= REL_TOL, "{mode} p{i} decode step {k}: relative error {rel:e} > {REL_TOL:e}");
                worst = worst.max(rel);
                next = argmax(&step);
                assert_eq!(next, greedy[k + 1], "{mode} p{i}: greedy[{}]", k + 1);
            }
        }
        println!("--quant {mode}: max relative row error vs reference {worst:.3e}, greedy ids equal");
    }
}

#[test]
fn quantized_references_differ_from_the_float_one() {
    // The check above can only tell the modes apart if the references do.
    let (meta, refs) = reference();
    for i in 0..meta["prompts"].as_array().unwrap().len() {
        let (shape, float) = &refs[&format!("none.p{i}.logits")];
        for mode in &MODES[1..] {
            let rel = max_rel(&refs[&format!("{mode}.p{i}.logits")].1, float, shape[1]);
            assert!(rel > 100.0 * REL_TOL, "{mode} p{i}: the quantized reference is within {rel:e} of the float one");
        }
    }
}

#[test]
fn quant_on_the_cuda_backend_needs_a_usable_gpu() {
    // --quant on the CUDA backend runs the quantized-weight kernels (verified in H200 run 5; their
    // parity with the CPU is tests/kernels/gemv_quant.rs and model.rs). Without a usable GPU it is the
    // backend's own clear error; with one the model loads there.
    let ck = Checkpoint::open(&dir()).unwrap();
    let opts = LoadOptions { backend: BackendKind::Cuda, quant: Some(QuantFormat::Int8), ..Default::default() };
    match qwen_rt::backend::cuda::probe() {
        Err(why) => {
            let e = qwen_rt::backend::load_model(&ck, &opts).err().expect("no usable GPU: must fail").to_string();
            assert_eq!(e, why.to_string());
        }
        Ok(()) => assert_eq!(qwen_rt::backend::load_model(&ck, &opts).unwrap().backend_name(), "cuda"),
    }
}
