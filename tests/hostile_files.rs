//! Hostile model directories beyond malformed bytes (issue 17): files that are not regular files,
//! header fields with unclear messages, NaN / inf weights, generation configs out of range, and a
//! weight file truncated while the model is loaded. Each test fails without its fix (a hang is caught by
//! a time bound, a SIGBUS kills the test binary).
use qwen_rt::backend::{load_model, BackendKind, LoadOptions};
use qwen_rt::checkpoint::Checkpoint;
use qwen_rt::synth::{synth_model, SynthOptions, SynthPreset};
use qwen_rt::tokenizer::ModelTokenizer;
use qwen_rt::weights::{page_in, Weights};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// C 8, H 2, L 2, F 12, V 16.
fn small_preset() -> SynthPreset {
    preset_with_vocab(16)
}

/// The small shape with `v` vocabulary rows (V 4096: wte and lm_head of 64 KiB each, many pages).
fn preset_with_vocab(v: usize) -> SynthPreset {
    SynthPreset {
        name: "small".into(),
        hidden_size: 8,
        num_heads: 2,
        num_layers: 2,
        intermediate_size: 24,
        vocab_size: v,
        seq_length: 32,
        max_position_embeddings: 32,
        layer_norm_epsilon: 1e-6,
    }
}

/// A synthesized small model in `<tmp>/m`; `max_shard_bytes` 0 = one `model.safetensors`.
fn small_model(max_shard_bytes: u64) -> (tempfile::TempDir, PathBuf) {
    model_with(&small_preset(), max_shard_bytes)
}

fn model_with(preset: &SynthPreset, max_shard_bytes: u64) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("m");
    let opts = if max_shard_bytes == 0 {
        SynthOptions { single_file: true, ..Default::default() }
    } else {
        SynthOptions { max_shard_bytes, ..Default::default() }
    };
    synth_model(&dir, preset, 7, &opts).unwrap();
    (t, dir)
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should contain {p:?}");
    }
}

/// Run `f` on a thread and fail the test if it does not finish within 20 s (a hang is a failure).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("{what}: no answer within 20 s (hangs)"))
}

fn open_err(dir: &Path) -> String {
    let d = dir.to_path_buf();
    match bounded(&format!("opening {}", dir.display()), move || Checkpoint::open(&d).map(|_| ())) {
        Ok(()) => panic!("expected {} to be rejected", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", p.display());
}

/// Replace `name` in `dir` by a FIFO.
fn fifo_in_place_of(dir: &Path, name: &str) {
    let p = dir.join(name);
    std::fs::remove_file(&p).unwrap();
    mkfifo(&p);
}

// ---------------------------------------------------------------------------------------------
// Only regular files are opened.

#[test]
fn fifo_files_are_refused_not_waited_on() {
    let (_t, dir) = small_model(700);
    let shard = Checkpoint::open(&dir).unwrap().shards[1].0.file_name().unwrap().to_str().unwrap().to_string();
    for name in ["config.json", "generation_config.json", "model.safetensors.index.json", shard.as_str()] {
        let (_t, dir) = small_model(700);
        fifo_in_place_of(&dir, name);
        assert_has(&open_err(&dir), &[name, "FIFO", "expected a regular file"]);
    }
    let (_t, dir) = small_model(0);
    fifo_in_place_of(&dir, "model.safetensors");
    assert_has(&open_err(&dir), &["model.safetensors", "FIFO"]);
    fifo_in_place_of(&dir, "qwen.tiktoken");
    let e = bounded("reading qwen.tiktoken", move || ModelTokenizer::for_model_dir(&dir).err().unwrap().to_string());
    assert_has(&e, &["qwen.tiktoken", "FIFO"]);
}

#[test]
fn a_directory_or_device_as_a_shard_is_named_as_such() {
    let (_t, dir) = small_model(0);
    let shard = dir.join("model.safetensors");
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    assert_has(&open_err(&dir), &["model.safetensors", "is a directory, expected a regular file"]);
    std::fs::remove_dir(&shard).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &shard).unwrap();
    assert_has(&open_err(&dir), &["model.safetensors", "character device"]);
}

#[test]
fn symlinked_shards_still_load() {
    // The Hugging Face cache links every file to a blob.
    let (t, dir) = small_model(0);
    let blob = t.path().join("blob");
    std::fs::rename(dir.join("model.safetensors"), &blob).unwrap();
    std::os::unix::fs::symlink(&blob, dir.join("model.safetensors")).unwrap();
    Weights::from_checkpoint(&Checkpoint::open(&dir).unwrap()).unwrap();
}

#[test]
fn binary_config_is_a_bad_file_not_an_io_error() {
    let (_t, dir) = small_model(0);
    std::fs::write(dir.join("config.json"), b"{\"a\": \"\xff\xfe\"}").unwrap();
    let e = Checkpoint::open(&dir).err().unwrap();
    assert!(matches!(e, qwen_rt::Error::BadFile { .. }), "{e:?}");
    assert_has(&e.to_string(), &["config.json", "not UTF-8", "offset 7"]);
}

// ---------------------------------------------------------------------------------------------
// Header fields: the message names file, tensor and field.

fn raw_shard(header: &str, data: usize) -> (tempfile::TempDir, PathBuf) {
    let (t, dir) = small_model(0);
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(b.len() + data, 0);
    std::fs::write(dir.join("model.safetensors"), b).unwrap();
    (t, dir)
}

#[test]
fn malformed_header_fields_are_named() {
    let cases = [
        (
            r#"{"t":{"dtype":"BF16","shape":[-64],"data_offsets":[0,128]}}"#,
            &["field `shape` [-64]", "dimension 0 is -64"][..],
        ),
        (
            r#"{"t":{"dtype":"BF16","shape":[2,1.5],"data_offsets":[0,4]}}"#,
            &["field `shape` [2,1.5]", "dimension 1 is 1.5"],
        ),
        (r#"{"t":{"dtype":"BF16","shape":"64","data_offsets":[0,128]}}"#, &["field `shape` must be a list", "\"64\""]),
        (r#"{"t":{"dtype":7,"shape":[1],"data_offsets":[0,2]}}"#, &["field `dtype` must be a string, got 7"]),
        (r#"{"t":{"dtype":"Q4","shape":[1],"data_offsets":[0,2]}}"#, &["field `dtype`", "\"Q4\""]),
        (r#"{"t":{"dtype":"BF16","shape":[1],"data_offsets":[0,-2]}}"#, &["field `data_offsets` [0,-2]"]),
        (r#"{"t":{"dtype":"BF16","shape":[1]}}"#, &["no field `data_offsets`"]),
    ];
    for (hdr, parts) in cases {
        let (_t, dir) = raw_shard(hdr, 128);
        let e = open_err(&dir);
        assert_has(&e, &["model.safetensors", "tensor `t`"]);
        assert_has(&e, parts);
    }
    // A huge hostile value is cut in the message.
    let long = format!(r#"{{"t":{{"dtype":"BF16","shape":["{}"],"data_offsets":[0,2]}}}}"#, "x".repeat(100_000));
    let (_t, dir) = raw_shard(&long, 2);
    let e = open_err(&dir);
    assert!(e.len() < 400, "message of {} bytes", e.len());
}

// ---------------------------------------------------------------------------------------------
// NaN / inf weights.

/// Overwrite element `i` of tensor `name` in the single-file model with the bf16 `bits`.
fn poke_bf16(dir: &Path, name: &str, i: usize, bits: u16) {
    let p = dir.join("model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let hdr: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    assert_eq!(hdr[name]["dtype"], "BF16");
    let off = 8 + n + hdr[name]["data_offsets"][0].as_u64().unwrap() as usize + 2 * i;
    b[off..off + 2].copy_from_slice(&bits.to_le_bytes());
    std::fs::write(&p, b).unwrap();
}

#[test]
fn non_finite_weights_fail_the_page_in_naming_the_tensor() {
    for (bits, what) in [(0x7fc0u16, "NaN"), (0x7f80, "inf"), (0xff80, "-inf")] {
        let (_t, dir) = small_model(0);
        let ck = Checkpoint::open(&dir).unwrap();
        let w = Weights::from_checkpoint(&ck).unwrap();
        page_in(w.views(), |_| {}).unwrap();
        drop((w, ck));
        poke_bf16(&dir, "transformer.h.1.mlp.w2.weight", 8 * 5 + 3, bits);
        let ck = Checkpoint::open(&dir).unwrap();
        let w = Weights::from_checkpoint(&ck).unwrap();
        let mut seen = 0u64;
        let e = page_in(w.views(), |n| seen += n).err().unwrap().to_string();
        assert_has(
            &e,
            &["model.safetensors", "tensor `transformer.h.1.mlp.w2.weight`", "element 43 (row 5, column 3)"],
        );
        assert!(e.contains(&format!("is {what} ")), "{e}");
    }
}

#[test]
fn cli_refuses_a_model_with_nan_weights() {
    let (_t, dir) = small_model(0);
    poke_bf16(&dir, "transformer.ln_f.weight", 2, 0x7fc0);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen-run"))
        .args(["generate", "--backend", "cpu", "--greedy", "--max-new-tokens", "1", "--ids", "1,2", "--model"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_has(&err, &["tensor `transformer.ln_f.weight`", "element 2", "NaN"]);
}

// ---------------------------------------------------------------------------------------------
// generation_config.json: ranges and token ids.

#[test]
fn generation_config_values_name_field_value_and_file() {
    let cases = [
        (json!({"top_p": 2}), &["`top_p`", "(0, 1]", "got 2"][..]),
        (json!({"top_p": 0}), &["`top_p`", "got 0"]),
        (json!({"temperature": -1}), &["`temperature`", ">= 0", "got -1"]),
        (json!({"repetition_penalty": 0}), &["`repetition_penalty`", "got 0"]),
        (json!({"eos_token_id": 151851}), &["`eos_token_id`", "151851", "beyond the vocabulary", "151851 ids"]),
        (json!({"pad_token_id": 4000000000u64}), &["`pad_token_id`", "4000000000", "beyond the vocabulary"]),
        (
            json!({"stop_words_ids": [[151643], [5, 999999]]}),
            &["`stop_words_ids[1]`", "999999", "beyond the vocabulary"],
        ),
    ];
    for (g, parts) in cases {
        let (_t, dir) = small_model(0);
        std::fs::write(dir.join("generation_config.json"), g.to_string()).unwrap();
        let e = open_err(&dir);
        assert_has(&e, &["generation_config.json"]);
        assert_has(&e, parts);
    }
    // The largest valid ids are accepted.
    let (_t, dir) = small_model(0);
    let g = json!({"eos_token_id": 151850, "stop_words_ids": [[151850, 0]], "top_p": 1, "temperature": 0});
    std::fs::write(dir.join("generation_config.json"), g.to_string()).unwrap();
    assert_eq!(Checkpoint::open(&dir).unwrap().generation.eos_token_id, 151850);
}

// ---------------------------------------------------------------------------------------------
// A weight file truncated while mapped.

fn truncate(p: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(len).unwrap();
}

#[test]
fn shard_truncated_under_a_loaded_model_is_an_error_not_sigbus() {
    // V 4096: the biggest shard spans many pages, and reading them after the truncation faults (the
    // SIGBUS path). V 16: the whole shard is inside one page, which reads as zeros without a fault (the
    // fstat path).
    for (v, shard_bytes, how) in [(4096, 70_000, "could not be read at byte"), (16, 700, "was truncated to 8 bytes")] {
        let (_t, dir) = model_with(&preset_with_vocab(v), shard_bytes);
        let ck = Checkpoint::open(&dir).unwrap();
        let opts = LoadOptions { backend: BackendKind::Cpu, threads: 1, ..Default::default() };
        let model = load_model(&ck, &opts).unwrap();
        let mut seq = model.clone().new_sequence(16).unwrap();
        let before = seq.forward(&[1, 2, 3], false).unwrap();
        assert_eq!(before.len(), v);
        // Cut the shard of lm_head (every forward reads all of it) to its first 8 bytes.
        let big = ck.tensor("lm_head.weight").unwrap().file.as_ref().clone();
        let size = std::fs::metadata(&big).unwrap().len();
        assert!(size > 8192 || v == 16, "the shard must span pages: {size} bytes");
        let name = big.file_name().unwrap().to_str().unwrap().to_string();
        truncate(&big, 8);
        let e = seq.forward(&[4], false).expect_err("a forward pass over a truncated shard succeeded").to_string();
        assert_has(&e, &[&name, "tensor `", how, "reload the model"]);
        assert_eq!(seq.len(), 3, "the failed forward pass advanced the sequence");
        // The page-in (and the CUDA upload, which uses the same check) says the same.
        let w = Weights::from_checkpoint(&ck).unwrap();
        assert_has(&page_in(w.views(), |_| {}).err().unwrap().to_string(), &[&name, "truncated"]);
        // The process goes on: another model loads and gives the same logits as the first did.
        drop((seq, model, w, ck));
        let (_t2, dir2) = model_with(&preset_with_vocab(v), shard_bytes);
        let ck = Checkpoint::open(&dir2).unwrap();
        let mut seq = load_model(&ck, &opts).unwrap().new_sequence(16).unwrap();
        assert_eq!(seq.forward(&[1, 2, 3], false).unwrap(), before);
    }
}

/// Runs the child half of the two tests below when `QWEN_TEST_SIGBUS_CHILD` is set; a no-op otherwise.
#[test]
fn sigbus_child() {
    let Ok(mode) = std::env::var("QWEN_TEST_SIGBUS_CHILD") else { return };
    let (_t, dir) = model_with(&preset_with_vocab(4096), 0);
    let ck = Checkpoint::open(&dir).unwrap(); // installs the guard (unless QWEN_MMAP_GUARD=0)
    let shard = dir.join("model.safetensors");
    if mode == "foreign" {
        // A map the library does not own: its SIGBUS is not ours to swallow.
        let p = dir.join("other");
        std::fs::write(&p, vec![1u8; 1 << 16]).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        // SAFETY: the test truncates the file on purpose to provoke SIGBUS.
        let m = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        truncate(&p, 0);
        println!("read {}", std::hint::black_box(m[40000]));
    } else {
        let model =
            load_model(&ck, &LoadOptions { backend: BackendKind::Cpu, threads: 1, ..Default::default() }).unwrap();
        truncate(&shard, 8);
        let r = model.new_sequence(8).unwrap().forward(&[1], false);
        println!("forward returned {:?}", r.err());
    }
    std::process::exit(0);
}

fn run_child(mode: &str, guard: Option<&str>) -> std::process::Output {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "sigbus_child", "--nocapture", "--test-threads=1"]).env("QWEN_TEST_SIGBUS_CHILD", mode);
    match guard {
        Some(g) => c.env("QWEN_MMAP_GUARD", g),
        None => c.env_remove("QWEN_MMAP_GUARD"),
    };
    c.output().unwrap()
}

#[test]
fn sigbus_outside_our_maps_still_kills_and_the_guard_can_be_turned_off() {
    use std::os::unix::process::ExitStatusExt;
    // Our handler must not swallow (or loop on) a fault in someone else's map.
    let out = run_child("foreign", None);
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{out:?}");
    // With the guard: an error, the process lives.
    let out = run_child("ours", None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_has(&stdout, &["forward returned Some(", "truncated"]);
    // QWEN_MMAP_GUARD=0: the documented old behaviour, SIGBUS.
    let out = run_child("ours", Some("0"));
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{out:?}");
}
