//! Checkpoint reading (config dialects, single file, index + shards, dtypes), weight validation,
//! synthesized models, and one test per hostile input: each must be an `Err` whose message names
//! the file (and the tensor where there is one), never a panic.
use qwen_rt::checkpoint::{Checkpoint, DType};
use qwen_rt::synth::{builtin_tiny_dir, synth_model, write_safetensors, SynthOptions, SynthPreset};
use qwen_rt::weights::Weights;
use serde_json::json;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// helpers

/// A very small model shape for hand-built directories: C 8, H 2 (D 4), L 2, F 12, V 16.
const C: usize = 8;
const H: usize = 2;
const L: usize = 2;
const F: usize = 12;
const V: usize = 16;

fn small_config() -> serde_json::Value {
    json!({
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen",
        "hidden_size": C, "num_attention_heads": H, "num_hidden_layers": L, "kv_channels": C / H,
        "intermediate_size": 2 * F, "vocab_size": V, "seq_length": 32, "max_position_embeddings": 32,
        "layer_norm_epsilon": 1e-6, "no_bias": true, "tie_word_embeddings": false,
        "use_dynamic_ntk": true, "use_logn_attn": true, "rotary_emb_base": 10000, "rotary_pct": 1.0
    })
}

/// A small preset for synthesized directories (fast: tiny vocabulary).
fn small_preset() -> SynthPreset {
    SynthPreset {
        name: "small".into(),
        hidden_size: C,
        num_heads: H,
        num_layers: L,
        intermediate_size: 2 * F,
        vocab_size: V,
        seq_length: 32,
        max_position_embeddings: 32,
        layer_norm_epsilon: 1e-6,
    }
}

/// Every tensor of spec §2.2 for the small shape, with its expected shape.
fn spec_tensors(layers: usize) -> Vec<(String, Vec<usize>)> {
    let p = C; // H * D
    let mut v = vec![("transformer.wte.weight".to_string(), vec![V, C])];
    for i in 0..layers {
        let n = |s: &str| format!("transformer.h.{i}.{s}");
        v.push((n("ln_1.weight"), vec![C]));
        v.push((n("attn.c_attn.weight"), vec![3 * p, C]));
        v.push((n("attn.c_attn.bias"), vec![3 * p]));
        v.push((n("attn.c_proj.weight"), vec![C, p]));
        v.push((n("ln_2.weight"), vec![C]));
        v.push((n("mlp.w1.weight"), vec![F, C]));
        v.push((n("mlp.w2.weight"), vec![F, C]));
        v.push((n("mlp.c_proj.weight"), vec![C, F]));
    }
    v.push(("transformer.ln_f.weight".to_string(), vec![C]));
    v.push(("lm_head.weight".to_string(), vec![V, C]));
    v
}

fn write_config(dir: &Path, cfg: &serde_json::Value) {
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(cfg).unwrap()).unwrap();
}

/// Write `model.safetensors` with the given (name, shape) list, all zeros in `dtype`.
fn write_zeros(path: &Path, tensors: &[(String, Vec<usize>)], dtype: DType) {
    let values: Vec<Vec<f32>> = tensors.iter().map(|(_, s)| vec![0.0; s.iter().product()]).collect();
    let list: Vec<(&str, DType, &[usize], &[f32])> =
        tensors.iter().zip(&values).map(|((n, s), v)| (n.as_str(), dtype, s.as_slice(), v.as_slice())).collect();
    write_safetensors(path, &list).unwrap();
}

/// A temp dir holding the small config and a single-file model built from `tensors`.
fn small_model(tensors: &[(String, Vec<usize>)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    write_config(t.path(), &small_config());
    write_zeros(&t.path().join("model.safetensors"), tensors, DType::BF16);
    t
}

/// A temp dir holding the small config and a `model.safetensors` with exactly these bytes.
fn raw_model(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    write_config(t.path(), &small_config());
    let p = t.path().join("model.safetensors");
    std::fs::write(&p, bytes).unwrap();
    (t, p)
}

/// A safetensors file from a header text and data bytes (header length written as given).
fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn open_err(dir: &Path) -> String {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("expected {} to be rejected", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn weights_err(dir: &Path) -> String {
    let ck = Checkpoint::open(dir).unwrap();
    match Weights::from_checkpoint(&ck) {
        Ok(_) => panic!("expected the weights of {} to be rejected", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should contain {p:?}");
    }
}

fn tensor_bytes(ck: &Checkpoint, name: &str) -> Vec<u8> {
    ck.tensor(name).unwrap().bytes().to_vec()
}

// ---------------------------------------------------------------------------------------------
// good inputs

#[test]
fn synth_tiny_opens_and_matches_config() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("tiny");
    synth_model(&dir, &SynthPreset::tiny(), 0, &SynthOptions::default()).unwrap();
    for f in ["config.json", "generation_config.json", "qwen.tiktoken", "model.safetensors.index.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let ck = Checkpoint::open(&dir).unwrap();
    let c = &ck.config;
    assert_eq!((c.hidden_size, c.num_heads, c.head_dim, c.num_layers), (64, 4, 16, 2));
    assert_eq!((c.mlp_width, c.vocab_size, c.seq_length), (176, 151936, 64));
    assert!(c.use_dynamic_ntk && c.use_logn_attn && !c.tie_word_embeddings);
    assert_eq!(ck.generation.chat_format, "chatml");
    assert_eq!(ck.generation.max_window_size, 6144);
    assert!((ck.generation.repetition_penalty - 1.1).abs() < 1e-6);
    assert_eq!(ck.generation.stop_words_ids, vec![vec![151643]]);
    assert_eq!(ck.shards.len(), 1);
    assert_eq!(ck.shards[0].1, std::fs::metadata(&ck.shards[0].0).unwrap().len());
    let vocab = std::fs::read(ck.tokenizer_path()).unwrap();
    assert_eq!(vocab, std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/qwen.tiktoken")).unwrap());

    let w = Weights::from_checkpoint(&ck).unwrap();
    assert_eq!(w.layers.len(), 2);
    // The tensor table is exactly spec §2.2 for this config.
    assert_eq!(ck.tensors.len(), 3 + 8 * c.num_layers);
    let (cc, p, f, v) = (c.hidden_size, c.proj_size(), c.mlp_width, c.vocab_size);
    assert_eq!(w.wte.shape, vec![v, cc]);
    assert_eq!(w.lm_head.shape, vec![v, cc]);
    assert_eq!(w.ln_f.shape, vec![cc]);
    for l in &w.layers {
        assert_eq!(l.c_attn_w.shape, vec![3 * p, cc]);
        assert_eq!(l.c_attn_b.shape, vec![3 * p]);
        assert_eq!(l.c_proj.shape, vec![cc, p]);
        assert_eq!((l.w1.shape.clone(), l.w2.shape.clone()), (vec![f, cc], vec![f, cc]));
        assert_eq!(l.mlp_c_proj.shape, vec![cc, f]);
        assert_eq!((l.ln_1.shape.clone(), l.ln_2.shape.clone()), (vec![cc], vec![cc]));
        assert_eq!(l.c_attn_w.dtype, DType::BF16);
    }
    assert_eq!(w.byte_len(), c.num_params() * 2);
    // Values: norms near 1, matrices with std near 0.02, not all equal.
    let ln = w.layers[0].ln_1.to_f32_vec();
    assert!(ln.iter().all(|x| (0.85..=1.15).contains(x)), "{ln:?}");
    let m = w.layers[1].w1.to_f32_vec();
    let mean = m.iter().sum::<f32>() / m.len() as f32;
    let std = (m.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / m.len() as f32).sqrt();
    assert!(mean.abs() < 0.002 && (0.017..0.023).contains(&std), "mean {mean} std {std}");
}

#[test]
fn synth_is_deterministic_and_sharding_does_not_change_values() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, c, d) = (t.path().join("a"), t.path().join("b"), t.path().join("c"), t.path().join("d"));
    synth_model(&a, &small_preset(), 7, &SynthOptions { single_file: true, ..Default::default() }).unwrap();
    synth_model(&b, &small_preset(), 7, &SynthOptions { max_shard_bytes: 700, ..Default::default() }).unwrap();
    synth_model(&c, &small_preset(), 7, &SynthOptions { single_file: true, ..Default::default() }).unwrap();
    synth_model(&d, &small_preset(), 8, &SynthOptions { single_file: true, ..Default::default() }).unwrap();
    assert!(a.join("model.safetensors").is_file() && !a.join("model.safetensors.index.json").exists());
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(c.join("model.safetensors")).unwrap()
    );
    let (ca, cb, cd) = (Checkpoint::open(&a).unwrap(), Checkpoint::open(&b).unwrap(), Checkpoint::open(&d).unwrap());
    Weights::from_checkpoint(&ca).unwrap();
    Weights::from_checkpoint(&cb).unwrap();
    assert_eq!(ca.shards.len(), 1);
    assert!(cb.shards.len() >= 4, "{:?}", cb.shards);
    // Layers straddle shards, as in the real 7B (layer 1 lives in more than one file).
    let files: std::collections::BTreeSet<_> =
        cb.tensors.iter().filter(|(n, _)| n.starts_with("transformer.h.1.")).map(|(_, t)| t.file.clone()).collect();
    assert!(files.len() > 1, "layer 1 in {files:?}");
    assert_eq!(ca.tensors.keys().collect::<Vec<_>>(), cb.tensors.keys().collect::<Vec<_>>());
    for name in ca.tensors.keys() {
        assert_eq!(tensor_bytes(&ca, name), tensor_bytes(&cb, name), "{name}");
        assert_ne!(tensor_bytes(&ca, name), tensor_bytes(&cd, name), "{name} same for seeds 7 and 8");
    }
}

#[test]
fn index_and_shards_load() {
    let t = tempfile::tempdir().unwrap();
    write_config(t.path(), &small_config());
    let all = spec_tensors(L);
    let (first, second) = all.split_at(7);
    write_zeros(&t.path().join("model-00001-of-00002.safetensors"), first, DType::F32);
    write_zeros(&t.path().join("model-00002-of-00002.safetensors"), second, DType::F16);
    let mut wm = serde_json::Map::new();
    for (n, _) in first {
        wm.insert(n.clone(), json!("model-00001-of-00002.safetensors"));
    }
    for (n, _) in second {
        wm.insert(n.clone(), json!("model-00002-of-00002.safetensors"));
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": wm});
    std::fs::write(t.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let ck = Checkpoint::open(t.path()).unwrap();
    assert_eq!(ck.shards.len(), 2);
    assert_eq!(ck.generation, qwen_rt::config::GenerationConfig::default());
    let w = Weights::from_checkpoint(&ck).unwrap();
    // Mixed dtypes across tensors are fine; each view carries its own.
    assert_eq!(w.wte.dtype, DType::F32);
    assert_eq!(w.lm_head.dtype, DType::F16);
    assert!(w.wte.file.ends_with("model-00001-of-00002.safetensors"));
}

#[test]
fn aug_2023_dialect_config_loads() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("m");
    synth_model(&dir, &small_preset(), 1, &SynthOptions::default()).unwrap();
    // The real Qwen-7B-Chat Aug-2023 config.json (tests/data/qwen/, old-style keys), only its shape
    // keys made small: every other field is the released file's.
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen/Qwen-7B-Chat-2023-08/config.json");
    let mut aug: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(real).unwrap()).unwrap();
    let shape = [("n_embd", C), ("n_head", H), ("n_layer", L), ("kv_channels", C / H), ("ffn_hidden_size", 2 * F)];
    for (k, v) in shape.into_iter().chain([("padded_vocab_size", V), ("vocab_size", V)]) {
        assert!(aug.get(k).is_some(), "{k} not in the Aug-2023 config");
        aug[k] = json!(v);
    }
    assert!(aug.get("hidden_size").is_none() && aug.get("num_hidden_layers").is_none(), "not the old dialect");
    std::fs::write(dir.join("config.json"), aug.to_string()).unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    let c = &ck.config;
    assert_eq!((c.hidden_size, c.num_heads, c.num_layers, c.mlp_width, c.vocab_size), (C, H, L, F, V));
    assert_eq!((c.seq_length, c.max_position_embeddings), (2048, 6144));
    assert_eq!(c.layer_norm_epsilon, 1e-6);
    assert!(c.use_dynamic_ntk && c.use_logn_attn && !c.bf16 && !c.fp16 && !c.fp32);
    Weights::from_checkpoint(&ck).unwrap();
}

#[test]
fn dtypes_read_back_exactly() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("x.safetensors");
    // Exactly representable in bf16, f16 and f32, so what was written is what must come back.
    let vals = [0.0f32, 1.0, -2.5, 0.0078125, 96.0, -1024.0, 0.5, 3.0];
    let f32_only = [1.0e-30f32, 123456.79, -0.1, 7.0];
    write_safetensors(
        &p,
        &[
            ("a_bf16", DType::BF16, &[2, 4], &vals),
            ("b_f16", DType::F16, &[8], &vals),
            ("c_f32", DType::F32, &[4], &f32_only),
            ("d_f16_odd", DType::F16, &[3], &vals[..3]),
        ],
    )
    .unwrap();
    std::fs::write(t.path().join("config.json"), small_config().to_string()).unwrap();
    std::fs::rename(&p, t.path().join("model.safetensors")).unwrap();
    let ck = Checkpoint::open(t.path()).unwrap();
    for name in ["a_bf16", "b_f16"] {
        assert_eq!(ck.tensor(name).unwrap().to_f32_vec(), vals, "{name}");
    }
    assert_eq!(ck.tensor("c_f32").unwrap().to_f32_vec(), f32_only);
    assert_eq!(ck.tensor("d_f16_odd").unwrap().to_f32_vec(), vals[..3]);
    // Offset reads.
    let mut part = [0.0f32; 3];
    ck.tensor("a_bf16").unwrap().read_f32(4, &mut part);
    assert_eq!(part, vals[4..7]);
    // The on-disk encodings themselves: bf16 1.0 = 0x3F80, f16 1.0 = 0x3C00, f32 bits little endian.
    assert_eq!(ck.tensor("a_bf16").unwrap().bytes()[2..4], [0x80, 0x3F]);
    assert_eq!(ck.tensor("b_f16").unwrap().bytes()[2..4], [0x00, 0x3C]);
    assert_eq!(ck.tensor("c_f32").unwrap().bytes()[4..8], 123456.79f32.to_le_bytes());
    assert_eq!(ck.tensor("a_bf16").unwrap().shape, vec![2, 4]);
    // Every tensor starts aligned to its element size (f32 first, as the safetensors crate orders).
    let raw = std::fs::read(t.path().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + n) % 8, 0);
    let hdr: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    assert_eq!(hdr["c_f32"]["data_offsets"][0], 0);
    assert_eq!(hdr["__metadata__"]["format"], "pt");
}

#[test]
fn tied_embeddings_without_lm_head_use_wte() {
    let mut ts = spec_tensors(L);
    ts.retain(|(n, _)| n != "lm_head.weight");
    let t = small_model(&ts);
    let mut cfg = small_config();
    cfg["tie_word_embeddings"] = json!(true);
    write_config(t.path(), &cfg);
    let ck = Checkpoint::open(t.path()).unwrap();
    let w = Weights::from_checkpoint(&ck).unwrap();
    assert_eq!(w.lm_head.name, "transformer.wte.weight");
    // Untied, the same directory is missing lm_head.
    write_config(t.path(), &small_config());
    assert_has(&weights_err(t.path()), &["lm_head.weight", "missing"]);
}

#[test]
fn unknown_extra_tensors_are_ignored() {
    let mut ts = spec_tensors(L);
    ts.push(("transformer.rotary_emb.inv_freq".into(), vec![C / H / 2]));
    let t = small_model(&ts);
    Weights::from_checkpoint(&Checkpoint::open(t.path()).unwrap()).unwrap();
}

#[test]
fn builtin_tiny_is_cached_and_usable() {
    let a = builtin_tiny_dir().unwrap();
    let b = builtin_tiny_dir().unwrap();
    assert_eq!(a, b);
    let ck = Checkpoint::open(&a).unwrap();
    assert_eq!(ck.config.hidden_size, 64);
    Weights::from_checkpoint(&ck).unwrap();
}

#[test]
fn synth_refuses_to_overwrite_and_unknown_presets() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("keep.txt"), "x").unwrap();
    let e = synth_model(t.path(), &small_preset(), 0, &SynthOptions::default()).unwrap_err().to_string();
    assert_has(&e, &["refusing to overwrite"]);
    assert_eq!(std::fs::read_to_string(t.path().join("keep.txt")).unwrap(), "x");
    // An existing empty directory is fine.
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    synth_model(&empty, &small_preset(), 0, &SynthOptions::default()).unwrap();
    Checkpoint::open(&empty).unwrap();
    // No temporary siblings left behind.
    let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(SynthPreset::from_name("7b").unwrap(), SynthPreset::seven_b());
    assert_eq!(SynthPreset::from_name("tiny").unwrap(), SynthPreset::tiny());
    assert_has(&SynthPreset::from_name("13b").unwrap_err().to_string(), &["13b"]);
}

// ---------------------------------------------------------------------------------------------
// bad inputs

#[test]
fn missing_or_non_directory() {
    let t = tempfile::tempdir().unwrap();
    let gone = t.path().join("nope");
    assert_has(&open_err(&gone), &["nope"]);
    let file = t.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert_has(&open_err(&file), &["file", "not a directory"]);
}

#[test]
fn truncated_shard() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("m");
    synth_model(&dir, &small_preset(), 0, &SynthOptions { max_shard_bytes: 700, ..Default::default() }).unwrap();
    let shard = Checkpoint::open(&dir).unwrap().shards[1].0.clone();
    let shard_name = shard.file_name().unwrap().to_str().unwrap().to_string();
    assert!(shard_name.starts_with("model-00002-of-0000"), "{shard_name}");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&shard).unwrap();
    f.set_len(len - 10).unwrap();
    drop(f);
    let e = open_err(&dir);
    assert_has(&e, &[&shard_name, "tensor `transformer.h.", "past the end"]);
}

#[test]
fn missing_shard_file() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("m");
    synth_model(&dir, &small_preset(), 0, &SynthOptions { max_shard_bytes: 700, ..Default::default() }).unwrap();
    let shard = Checkpoint::open(&dir).unwrap().shards[2].0.clone();
    let shard_name = shard.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(&shard).unwrap();
    let err = Checkpoint::open(&dir).err().unwrap();
    assert!(matches!(err, qwen_rt::Error::Io { .. }), "{err:?}");
    assert_has(&err.to_string(), &[&shard_name]);
}

#[test]
fn index_lists_tensor_absent_from_its_shard_and_duplicates() {
    let t = tempfile::tempdir().unwrap();
    write_config(t.path(), &small_config());
    let all = spec_tensors(L);
    write_zeros(&t.path().join("s1.safetensors"), &all[..5], DType::BF16);
    write_zeros(&t.path().join("s2.safetensors"), &all[5..], DType::BF16);
    let mut wm = serde_json::Map::new();
    for (n, _) in &all {
        wm.insert(n.clone(), json!("s2.safetensors"));
    }
    let idx = t.path().join("model.safetensors.index.json");
    std::fs::write(&idx, json!({"weight_map": wm}).to_string()).unwrap();
    let e = open_err(t.path());
    assert_has(&e, &["s2.safetensors", "model.safetensors.index.json", "absent"]);
    assert!(all[..5].iter().any(|(n, _)| e.contains(&format!("tensor `{n}`"))), "{e}");

    // The same tensor stored in two shards.
    write_zeros(&t.path().join("s2.safetensors"), &all[4..], DType::BF16);
    let mut wm = serde_json::Map::new();
    for (i, (n, _)) in all.iter().enumerate() {
        wm.insert(n.clone(), json!(if i < 5 { "s1.safetensors" } else { "s2.safetensors" }));
    }
    std::fs::write(&idx, json!({"weight_map": wm}).to_string()).unwrap();
    let e = open_err(t.path());
    assert_has(&e, &[&all[4].0, "duplicated", "s1.safetensors", "s2.safetensors"]);
}

#[test]
fn index_pointing_outside_the_directory() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    write_config(&dir, &small_config());
    write_zeros(&t.path().join("x.safetensors"), &spec_tensors(L), DType::BF16);
    for bad in ["../x.safetensors", "/etc/passwd", "sub/x.safetensors", "..", ""] {
        let idx = json!({"weight_map": {"transformer.wte.weight": bad}});
        std::fs::write(dir.join("model.safetensors.index.json"), idx.to_string()).unwrap();
        let e = open_err(&dir);
        assert_has(&e, &["model.safetensors.index.json", "not a plain file name"]);
    }
    for bad in [json!({"weight_map": {}}), json!({"weight_map": {"a": 3}}), json!([1]), json!({"metadata": {}})] {
        std::fs::write(dir.join("model.safetensors.index.json"), bad.to_string()).unwrap();
        assert_has(&open_err(&dir), &["model.safetensors.index.json"]);
    }
    std::fs::write(dir.join("model.safetensors.index.json"), "{not json").unwrap();
    assert_has(&open_err(&dir), &["model.safetensors.index.json", "invalid JSON"]);
}

#[test]
fn missing_tensor() {
    let mut ts = spec_tensors(L);
    ts.retain(|(n, _)| n != "transformer.h.1.mlp.w2.weight");
    let t = small_model(&ts);
    assert_has(&weights_err(t.path()), &["transformer.h.1.mlp.w2.weight", "missing", "[12, 8]"]);
}

#[test]
fn wrong_shape() {
    let mut ts = spec_tensors(L);
    for (n, s) in ts.iter_mut() {
        if n == "transformer.h.0.attn.c_attn.weight" {
            *s = vec![3 * C, C + 1];
        }
    }
    let t = small_model(&ts);
    let e = weights_err(t.path());
    assert_has(&e, &["model.safetensors", "transformer.h.0.attn.c_attn.weight", "[24, 9]", "expected [24, 8]"]);
}

#[test]
fn tensors_of_a_layer_beyond_num_layers() {
    let t = small_model(&spec_tensors(L + 1));
    let e = weights_err(t.path());
    assert_has(&e, &["model.safetensors", "transformer.h.2.", "layer 2", "num_hidden_layers = 2"]);
}

#[test]
fn unknown_dtype() {
    for dt in ["I8", "F64", "F8_E4M3", "weird"] {
        let hdr = format!(r#"{{"t":{{"dtype":"{dt}","shape":[2],"data_offsets":[0,16]}}}}"#);
        let (t, _) = raw_model(&st_bytes(&hdr, &[0u8; 16]));
        assert_has(&open_err(t.path()), &["model.safetensors", "tensor `t`", dt]);
    }
}

#[test]
fn header_length_past_eof_and_absurd() {
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    let (t, _) = raw_model(&b);
    assert_has(&open_err(t.path()), &["model.safetensors", "header length 1000", "past the end"]);

    let mut b = (1u64 << 40).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    let (t, _) = raw_model(&b);
    assert_has(&open_err(t.path()), &["model.safetensors", "absurd"]);

    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    let (t, _) = raw_model(&b);
    assert_has(&open_err(t.path()), &["model.safetensors", "absurd"]);

    for short in [&b""[..], &b"\x02\0\0"[..]] {
        let (t, _) = raw_model(short);
        assert_has(&open_err(t.path()), &["model.safetensors", "shorter than the 8-byte"]);
    }
}

#[test]
fn garbage_header() {
    let (t, _) = raw_model(&st_bytes("{\"t\": [1, 2", &[]));
    assert_has(&open_err(t.path()), &["model.safetensors", "not valid JSON"]);
    let (t, _) = raw_model(&st_bytes("[1, 2, 3]", &[]));
    assert_has(&open_err(t.path()), &["model.safetensors", "not a JSON object"]);
    let mut b = 4u64.to_le_bytes().to_vec();
    b.extend_from_slice(&[0xff, 0xfe, 0x7b, 0x7d]);
    let (t, _) = raw_model(&b);
    assert_has(&open_err(t.path()), &["model.safetensors", "UTF-8"]);
    for entry in [
        r#"{"t": 5}"#,
        r#"{"t": {"shape": [1], "data_offsets": [0, 2]}}"#,
        r#"{"t": {"dtype": "BF16", "data_offsets": [0, 2]}}"#,
        r#"{"t": {"dtype": "BF16", "shape": [-1], "data_offsets": [0, 2]}}"#,
        r#"{"t": {"dtype": "BF16", "shape": [1]}}"#,
        r#"{"t": {"dtype": "BF16", "shape": [1], "data_offsets": [0]}}"#,
        r#"{"t": {"dtype": "BF16", "shape": [1], "data_offsets": ["0", 2]}}"#,
    ] {
        let (t, _) = raw_model(&st_bytes(entry, &[0u8; 2]));
        assert_has(&open_err(t.path()), &["model.safetensors", "tensor `t`"]);
    }
    // __metadata__ is allowed.
    let (t, _) = raw_model(&st_bytes(
        r#"{"__metadata__":{"format":"pt"},"t":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}"#,
        &[0, 0],
    ));
    assert_eq!(Checkpoint::open(t.path()).unwrap().tensors.len(), 1);
}

#[test]
fn offsets_out_of_range_or_inconsistent() {
    let cases = [
        (r#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8usize, "past the end"),
        (r#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#, 16, "past the end"),
        (r#"{"t":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#, 32, "needs 24"),
        (r#"{"t":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}}"#, 16, "needs 8"),
        (r#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#, 16, "begin > end"),
        (r#"{"t":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#, 16, "overflows"),
        (r#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}"#, 16, "past the end"),
    ];
    for (hdr, data, what) in cases {
        let (t, _) = raw_model(&st_bytes(hdr, &vec![0u8; data]));
        assert_has(&open_err(t.path()), &["model.safetensors", "tensor `t`", what]);
    }
    // Two tensors sharing bytes.
    let hdr = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let (t, _) = raw_model(&st_bytes(hdr, &[0u8; 16]));
    assert_has(&open_err(t.path()), &["model.safetensors", "tensor `b`", "overlap", "`a`"]);
}

#[test]
fn bad_config() {
    let t = small_model(&spec_tensors(L));
    std::fs::write(t.path().join("config.json"), "{\"hidden_size\": 8,").unwrap();
    assert_has(&open_err(t.path()), &["config.json", "invalid JSON"]);

    let mut cfg = small_config();
    cfg.as_object_mut().unwrap().remove("hidden_size");
    write_config(t.path(), &cfg);
    assert_has(&open_err(t.path()), &["config.json", "hidden_size"]);

    std::fs::remove_file(t.path().join("config.json")).unwrap();
    assert_has(&open_err(t.path()), &["config.json"]);

    write_config(t.path(), &small_config());
    std::fs::write(t.path().join("generation_config.json"), "[]").unwrap();
    assert_has(&open_err(t.path()), &["generation_config.json"]);
}

#[test]
fn pytorch_bin_only_says_how_to_convert() {
    let t = tempfile::tempdir().unwrap();
    write_config(t.path(), &small_config());
    std::fs::write(t.path().join("pytorch_model.bin"), b"PK\x03\x04").unwrap();
    let e = open_err(t.path());
    assert_has(&e, &["pytorch_model.bin", "safetensors", "save_pretrained", "safe_serialization=True"]);

    let t = tempfile::tempdir().unwrap();
    write_config(t.path(), &small_config());
    std::fs::write(t.path().join("pytorch_model-00001-of-00002.bin"), b"x").unwrap();
    assert_has(&open_err(t.path()), &["pytorch_model-00001-of-00002.bin", "save_file"]);

    let t = tempfile::tempdir().unwrap();
    write_config(t.path(), &small_config());
    assert_has(&open_err(t.path()), &["no weights found"]);
}

/// Write speed of the 7B shape with 2 layers (≈3.3 GB; QWEN_SYNTH_LAYERS=32 for the full 15.4 GB): run by hand with
/// `cargo test --test checkpoint synth_7b_speed -- --ignored --nocapture` (QWEN_SYNTH_DIR picks the disk;
/// QWEN_SYNTH_KEEP=1 keeps the model, e.g. for tools/check_synth_safetensors.py).
#[test]
#[ignore]
fn synth_7b_speed() {
    let base = std::env::var_os("QWEN_SYNTH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let t = tempfile::tempdir_in(base).unwrap();
    let dir = t.path().join("7b");
    let layers = std::env::var("QWEN_SYNTH_LAYERS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let p = SynthPreset { num_layers: layers, ..SynthPreset::seven_b() };
    let start = std::time::Instant::now();
    synth_model(&dir, &p, 0, &SynthOptions::default()).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let open = std::time::Instant::now();
    let ck = Checkpoint::open(&dir).unwrap();
    let bytes: u64 = ck.shards.iter().map(|s| s.1).sum();
    Weights::from_checkpoint(&ck).unwrap();
    println!("open + validate: {:.1} ms", open.elapsed().as_secs_f64() * 1e3);
    println!(
        "7b-shape {layers} layers: {:.2} GB in {secs:.1} s = {:.0} MB/s ({} shards)",
        bytes as f64 / 1e9,
        bytes as f64 / 1e6 / secs,
        ck.shards.len()
    );
    if std::env::var_os("QWEN_SYNTH_KEEP").is_some() {
        println!("kept {}", t.keep().join("7b").display());
    }
}
