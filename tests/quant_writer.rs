//! `quantize_checkpoint` / `qwen-run quantize`: a float checkpoint written as a bitsandbytes 4-bit /
//! 8-bit checkpoint in the layout transformers saves.
//!
//! - Round trip: the tiny bf16 model of tests/data/quant_model quantized to each mode, loaded as
//!   stored, gives CPU logits bit-identical to loading the float model with `--quant` of that
//!   mode (single file and sharded + index), and the files are valid for the `safetensors` crate.
//! - Bytes: a linear whose weight is a bitsandbytes fixture input (tests/data/quant, written by
//!   tools/gen_quant_fixtures.py from the real bitsandbytes 0.50.2) is stored byte for byte as
//!   bitsandbytes serializes it (packed weight, absmax, quant_map, quant_state JSON; Int8 codes, SCB).
//! - transformers + bitsandbytes (tools/check_quantize_bnb.py, committed as tests/data/quant_writer)
//!   loaded exactly the files we write into Linear4bit / Linear8bitLt layers, and their weights give
//!   our CPU logits within 1e-5 relative.
//! - Errors name the file / tensor and leave nothing behind: output exists, input already quantized,
//!   unwritable output, NaN weight, cancel; the CLI's exit codes.
use qwen_rt::backend::cpu::CpuModel;
use qwen_rt::backend::{BackendKind, LoadOptions};
use qwen_rt::checkpoint::Checkpoint;
use qwen_rt::model::Model;
use qwen_rt::quant::{quantize_checkpoint, Linear, QuantFormat, QuantizeOptions};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const MODES: [&str; 3] = ["nf4", "nf4-dq", "int8"];

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant_model/tiny-bf16-q")
}

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn format(mode: &str) -> QuantFormat {
    QuantFormat::parse_load(mode).unwrap().unwrap()
}

fn quantize(input: &Path, output: &Path, mode: &str, max_shard_bytes: u64) -> qwen_rt::Result<()> {
    let opts = QuantizeOptions { max_shard_bytes, ..QuantizeOptions::new(format(mode)) };
    quantize_checkpoint(input, output, &opts, &AtomicBool::new(false)).map(|_| ())
}

fn load(dir: &Path, quant: Option<QuantFormat>) -> Arc<CpuModel> {
    let ck = Checkpoint::open(dir).unwrap();
    let opts = LoadOptions { backend: BackendKind::Cpu, threads: 2, quant, ..Default::default() };
    Arc::new(CpuModel::load(&ck, &opts).unwrap_or_else(|e| panic!("load {}: {e}", dir.display())))
}

/// Logits of every position of one forward pass, as bits.
fn logits(m: &Arc<CpuModel>, ids: &[u32]) -> Vec<u32> {
    let mut seq = m.clone().new_sequence(ids.len() + 1).unwrap();
    seq.forward(ids, true).unwrap().iter().map(|x| x.to_bits()).collect()
}

const PROMPT: [u32; 11] = [63, 23, 183, 66, 252, 150, 100, 104, 60, 150, 227];

/// Every shard a model directory names parses with the `safetensors` crate (no holes, offsets in
/// range); the index, when there is one, lists every tensor with the right file and total size.
fn check_files(dir: &Path) -> usize {
    let index = dir.join("model.safetensors.index.json");
    let shards: Vec<String> = if index.exists() {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        let map = v["weight_map"].as_object().unwrap();
        let mut files: Vec<String> = map.values().map(|f| f.as_str().unwrap().to_string()).collect();
        files.sort();
        files.dedup();
        let mut total = 0u64;
        for f in &files {
            let bytes = std::fs::read(dir.join(f)).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{f}: {e:?}"));
            for (name, t) in st.tensors() {
                assert_eq!(map[&name].as_str(), Some(f.as_str()), "{name}");
                total += t.data().len() as u64;
            }
        }
        assert_eq!(v["metadata"]["total_size"].as_u64(), Some(total));
        files
    } else {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        SafeTensors::deserialize(&bytes).unwrap();
        vec!["model.safetensors".into()]
    };
    shards.len()
}

#[test]
fn quantized_checkpoint_loads_to_the_logits_of_quant_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let float = logits(&load(&tiny(), None), &PROMPT);
    for mode in MODES {
        let at_load = logits(&load(&tiny(), Some(format(mode))), &PROMPT);
        assert_ne!(at_load, float, "{mode}: quantizing must change the logits");
        for (shard, max) in [("single", 2_000_000_000u64), ("sharded", 40_000)] {
            let out = tmp.path().join(format!("{mode}-{shard}"));
            quantize(&tiny(), &out, mode, max).unwrap();
            let n = check_files(&out);
            assert_eq!(n > 1, shard == "sharded", "{mode} {shard}: {n} weight files");
            let m = load(&out, None);
            assert_eq!(m.weights().format, Some(format(mode)), "{mode}: loaded as stored");
            assert!(matches!(m.weights().layers[1].mlp_c_proj, Linear::Quant(_)));
            assert_eq!(logits(&m, &PROMPT), at_load, "{mode} {shard}: logits differ from --quant {mode} at load");
            // config.json says how; generation_config.json is copied.
            let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
            let q = &cfg["quantization_config"];
            assert_eq!(q["quant_method"], "bitsandbytes");
            assert_eq!(q["load_in_4bit"], mode != "int8");
            assert_eq!(q["bnb_4bit_use_double_quant"], mode == "nf4-dq");
            assert_eq!(cfg["hidden_size"], 64);
            assert_eq!(
                std::fs::read(out.join("generation_config.json")).unwrap(),
                std::fs::read(tiny().join("generation_config.json")).unwrap()
            );
            // wte, lm_head and norms stay bf16, byte for byte.
            let ck = Checkpoint::open(&out).unwrap();
            let src = Checkpoint::open(&tiny()).unwrap();
            for name in ["transformer.wte.weight", "lm_head.weight", "transformer.h.0.ln_1.weight"] {
                assert_eq!(ck.tensors[name].bytes(), src.tensors[name].bytes(), "{name}");
                assert_eq!(ck.tensors[name].dtype, src.tensors[name].dtype, "{name}");
            }
            assert!(!ck.tensors.contains_key("transformer.h.0.mlp.w1.weight"), "{mode}: w1 must be stored quantized");
        }
    }
    // Nothing but the outputs in the parent (no temporary directories left).
    let mut names: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names.len(), 6, "{names:?}");
}

// ---------------------------------------------------------------------------------------------
// Byte equality with bitsandbytes' serialization
// ---------------------------------------------------------------------------------------------

/// Tensors of a model to write: name → (dtype, shape, bytes).
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn put_f32(t: &mut Tensors, name: &str, shape: &[usize], v: f32) {
    let n: usize = shape.iter().product();
    let b = (0..n).flat_map(|i| (v + 0.001 * (i % 7) as f32).to_le_bytes()).collect();
    t.insert(name.into(), (Dtype::F32, shape.to_vec(), b));
}

/// C 128, P 8 (one head), F 64, V 16, one layer: c_attn is `[24, 128]` and w1 `[64, 128]`, the
/// shapes of the fixtures `bnb_nf4_serialized` `input` and `bnb_int8` `bf16_64x128`.
fn fixture_model(c_attn: (Dtype, Vec<u8>), w1: (Dtype, Vec<u8>), nan: bool) -> tempfile::TempDir {
    let (c, p, f, v) = (128, 8, 64, 16);
    let mut t = Tensors::new();
    put_f32(&mut t, "transformer.wte.weight", &[v, c], 0.01);
    put_f32(&mut t, "lm_head.weight", &[v, c], 0.02);
    put_f32(&mut t, "transformer.ln_f.weight", &[c], 1.0);
    put_f32(&mut t, "transformer.h.0.ln_1.weight", &[c], 1.0);
    put_f32(&mut t, "transformer.h.0.ln_2.weight", &[c], 1.0);
    put_f32(&mut t, "transformer.h.0.attn.c_attn.bias", &[3 * p], 0.0);
    t.insert("transformer.h.0.attn.c_attn.weight".into(), (c_attn.0, vec![3 * p, c], c_attn.1));
    put_f32(&mut t, "transformer.h.0.attn.c_proj.weight", &[c, p], 0.03);
    t.insert("transformer.h.0.mlp.w1.weight".into(), (w1.0, vec![f, c], w1.1));
    put_f32(&mut t, "transformer.h.0.mlp.w2.weight", &[f, c], -0.01);
    put_f32(&mut t, "transformer.h.0.mlp.c_proj.weight", &[c, f], 0.04);
    if nan {
        let (_, _, b) = t.get_mut("transformer.h.0.mlp.w2.weight").unwrap();
        b[4 * 77..4 * 78].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let cfg = json!({
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen",
        "hidden_size": c, "num_attention_heads": 1, "num_hidden_layers": 1, "kv_channels": p,
        "intermediate_size": 2 * f, "vocab_size": v, "seq_length": 32, "max_position_embeddings": 32,
        "layer_norm_epsilon": 1e-6, "no_bias": true, "tie_word_embeddings": false,
        "use_dynamic_ntk": true, "use_logn_attn": true, "rotary_emb_base": 10000, "rotary_pct": 1.0
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = t
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

fn raw(st: &SafeTensors, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    (t.dtype(), t.shape().to_vec(), t.data().to_vec())
}

fn the_fixture_model(nan: bool) -> tempfile::TempDir {
    let nf4 = fixture("bnb_nf4_serialized.safetensors");
    let nf4 = SafeTensors::deserialize(&nf4).unwrap();
    let int8 = fixture("bnb_int8.safetensors");
    let int8 = SafeTensors::deserialize(&int8).unwrap();
    let (d1, _, b1) = raw(&nf4, "input");
    let (d2, _, b2) = raw(&int8, "bf16_64x128.input");
    assert_eq!((d1, d2), (Dtype::BF16, Dtype::BF16));
    fixture_model((d1, b1), (d2, b2), nan)
}

#[test]
fn written_tensors_are_bitsandbytes_serialization_byte_for_byte() {
    let src = the_fixture_model(false);
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("bnb_nf4_serialized.safetensors");
    let fx = SafeTensors::deserialize(&fx).unwrap();
    let c_attn = "transformer.h.0.attn.c_attn.weight";
    for (mode, pre) in [("nf4", "plain."), ("nf4-dq", "dq.")] {
        let out = tmp.path().join(mode);
        quantize(src.path(), &out, mode, 2_000_000_000).unwrap();
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut ours: Vec<String> =
            st.names().into_iter().filter(|n| n.starts_with(c_attn)).map(|n| n[c_attn.len()..].to_string()).collect();
        let mut theirs: Vec<String> = fx
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix(pre))
            .map(|n| n["weight".len()..].to_string())
            .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{mode}: tensor names of one linear");
        for suffix in &ours {
            let got = raw(&st, &format!("{c_attn}{suffix}"));
            let want = raw(&fx, &format!("{pre}weight{suffix}"));
            assert_eq!(got, want, "{mode}: `weight{suffix}` differs from bitsandbytes' serialization");
        }
    }
    // Int8: codes and SCB of bitsandbytes' int8_vectorwise_quant of the same bf16 weight.
    let out = tmp.path().join("int8");
    quantize(src.path(), &out, "int8", 2_000_000_000).unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let fx = fixture("bnb_int8.safetensors");
    let fx = SafeTensors::deserialize(&fx).unwrap();
    let w1 = "transformer.h.0.mlp.w1";
    let (d, s, codes) = raw(&st, &format!("{w1}.weight"));
    assert_eq!((d, s.as_slice()), (Dtype::I8, &[64usize, 128][..]));
    assert_eq!(codes, raw(&fx, "bf16_64x128.codes").2, "Int8 codes");
    assert_eq!(raw(&st, &format!("{w1}.SCB")), raw(&fx, "bf16_64x128.scb"), "SCB");
    assert_eq!(raw(&st, &format!("{w1}.weight_format")), (Dtype::U8, vec![], vec![0]), "weight_format");
}

// ---------------------------------------------------------------------------------------------
// transformers + bitsandbytes load what we write (tools/check_quantize_bnb.py)
// ---------------------------------------------------------------------------------------------

/// FNV-1a 64 of a file, as tools/check_quantize_bnb.py computes it.
fn fnv1a64(path: &Path) -> String {
    let h = std::fs::read(path)
        .unwrap()
        .iter()
        .fold(0xCBF2_9CE4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3));
    format!("{h:016x}")
}

#[test]
fn transformers_and_bitsandbytes_load_what_we_write_to_our_logits() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant_writer");
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bnb_load.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("bnb_load.safetensors")).unwrap();
    let refs = SafeTensors::deserialize(&bytes).unwrap();
    let prompt: Vec<u32> = meta["prompt"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let tmp = tempfile::tempdir().unwrap();
    for mode in MODES {
        let m = &meta["modes"][mode];
        let out = tmp.path().join(mode);
        quantize(&tiny(), &out, mode, 2_000_000_000).unwrap();
        // These exact files are what transformers loaded...
        for f in ["model.safetensors", "config.json"] {
            assert_eq!(
                fnv1a64(&out.join(f)),
                m[format!("{f}_fnv1a64")].as_str().unwrap(),
                "{mode}: {f} is not the file tools/check_quantize_bnb.py loaded (rerun it after changing the writer)"
            );
        }
        // ...into bitsandbytes layers...
        let layer = if mode == "int8" { "Linear8bitLt" } else { "Linear4bit" };
        let kinds: Vec<&str> = m["modules_layer0"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for lin in ["attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj"] {
            assert!(kinds.contains(&format!("{lin}: {layer}").as_str()), "{mode}: {kinds:?}");
        }
        // ...whose weights give our CPU logits.
        let t = refs.tensor(&format!("{mode}.bnb_dequant")).unwrap();
        let want: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let model = load(&out, None);
        let mut seq = model.clone().new_sequence(prompt.len() + 1).unwrap();
        let got = seq.forward(&prompt, true).unwrap();
        let v = t.shape()[1];
        assert_eq!(got.len(), want.len());
        let rel = got
            .chunks_exact(v)
            .zip(want.chunks_exact(v))
            .map(|(a, b)| {
                a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
                    / b.iter().map(|y| y.abs()).fold(0f32, f32::max)
            })
            .fold(0f32, f32::max);
        assert!(rel <= 1e-5, "{mode}: our logits vs transformers + bitsandbytes: relative error {rel:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn has_all(e: &str, words: &[&str]) {
    for w in words {
        assert!(e.contains(w), "error {e:?} lacks {w:?}");
    }
}

#[test]
fn bad_inputs_and_outputs_are_named_errors_that_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // The output exists (even empty).
    let out = tmp.path().join("exists");
    std::fs::create_dir(&out).unwrap();
    let e = quantize(&tiny(), &out, "nf4", 1 << 30).unwrap_err().to_string();
    has_all(&e, &["exists", "refusing to overwrite"]);
    // Already quantized: the config names it.
    let q = tmp.path().join("q");
    quantize(&tiny(), &q, "int8", 1 << 30).unwrap();
    let e = quantize(&q, &tmp.path().join("qq"), "nf4", 1 << 30).unwrap_err().to_string();
    has_all(&e, &["config.json", "already quantized"]);
    // Unwritable: the parent is a file.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = quantize(&tiny(), &file.join("out"), "nf4", 1 << 30).unwrap_err().to_string();
    has_all(&e, &["a-file/out", "cannot write the output here"]);
    // A NaN weight: named by tensor and element, and no output.
    let nan = the_fixture_model(true);
    let e = quantize(nan.path(), &tmp.path().join("nan"), "nf4", 1 << 30).unwrap_err().to_string();
    has_all(&e, &["model.safetensors", "transformer.h.0.mlp.w2.weight", "element 77", "NaN"]);
    // Cancelled before it starts writing.
    let opts = QuantizeOptions::new(QuantFormat::Int8);
    let e = quantize_checkpoint(&tiny(), &tmp.path().join("cancel"), &opts, &AtomicBool::new(true))
        .unwrap_err()
        .to_string();
    has_all(&e, &["interrupted", "nothing was written"]);
    assert_eq!(entries(tmp.path()), ["a-file", "exists", "q"], "leftovers");
    assert!(entries(&out).is_empty());
}

#[test]
fn integer_tensors_without_quantization_config_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("q");
    quantize(&tiny(), &q, "nf4", 1 << 30).unwrap();
    let cfg_path = q.join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = quantize(&q, &tmp.path().join("out"), "int8", 1 << 30).unwrap_err().to_string();
    has_all(&e, &["model.safetensors", "stored as U8", "no quantization_config"]);
}

#[test]
fn cli_quantize_writes_and_refuses() {
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_qwen-run")).args(args).output().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (i, o) = (tiny().to_string_lossy().into_owned(), out.to_string_lossy().into_owned());
    let r = run(&["quantize", "--to", "nf4-dq", "--max-shard-size", "50KB", &i, &o]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("10 linear weights quantized"), "{err}");
    assert!(out.join("model.safetensors.index.json").exists());
    let r = run(&["quantize", "--to", "nf4", &i, &o]);
    assert_eq!(r.status.code(), Some(1));
    has_all(&String::from_utf8_lossy(&r.stderr), &["error:", "already exists"]);
    let r = run(&["quantize", "--to", "fp8", &i, &tmp.path().join("x").to_string_lossy()]);
    assert_eq!(r.status.code(), Some(1));
    has_all(&String::from_utf8_lossy(&r.stderr), &["--to fp8", "nf4, nf4-dq or int8"]);
    let r = run(&["quantize", "--to", "int8", "--max-shard-size", "0", &i, &tmp.path().join("x").to_string_lossy()]);
    assert_eq!(r.status.code(), Some(1));
    has_all(&String::from_utf8_lossy(&r.stderr), &["--max-shard-size 0"]);
    assert_eq!(entries(tmp.path()), ["out"]);
}
