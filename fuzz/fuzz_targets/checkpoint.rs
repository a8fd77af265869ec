//! The model-directory loader on arbitrary files: `config.json`, `generation_config.json`,
//! `model.safetensors.index.json` and up to 4 safetensors shards, written into a tmpfs directory
//! (the real `Checkpoint::open` path: stat, open, mmap, header parse) and loaded as `qwen-run` does:
//! open → weights → page-in with the finiteness check → CPU model → one forward pass.
//!
//! Input: the files' bytes separated by `SEP`, in the order above. An empty generation config or index
//! means "no such file"; without an index the first shard is `model.safetensors`, with one the shards are
//! `s1.safetensors` … `s4.safetensors`.
//!
//! Asserted, besides "no panic, no hang" (libFuzzer -timeout): every open / weights error names a file
//! of the directory; the page-in succeeds exactly when every weight decodes to a finite number
//! (checked independently through `TensorView::to_f32_vec`); a forward pass on weights that passed
//! returns `[V]` logits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qwen_rt::backend::{load_model, BackendKind, LoadOptions};
use qwen_rt::checkpoint::Checkpoint;
use qwen_rt::weights::{page_in, Weights};
use std::path::PathBuf;
use std::sync::OnceLock;

const SEP: &[u8] = b"\n#QWENFILE#\n";

fn workdir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // QWEN_FUZZ_WORKDIR: set (and removed afterwards) by tools/fuzz_smoke.sh; else tmpfs when there is one.
        let base = match std::env::var_os("QWEN_FUZZ_WORKDIR") {
            Some(d) => PathBuf::from(d),
            None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let d = base.join(format!("qwen-fuzz-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEP.len()).position(|w| w == SEP) {
        parts.push(&rest[..i]);
        rest = &rest[i + SEP.len()..];
    }
    parts.push(rest);
    parts
}

const NAMES: [&str; 8] = [
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "model.safetensors",
    "s1.safetensors",
    "s2.safetensors",
    "s3.safetensors",
    "s4.safetensors",
];

fuzz_target!(|data: &[u8]| {
    let dir = workdir();
    for n in NAMES {
        let _ = std::fs::remove_file(dir.join(n));
    }
    let parts = split(data);
    let get = |i: usize| parts.get(i).copied();
    std::fs::write(dir.join("config.json"), get(0).unwrap_or(b"")).unwrap();
    if let Some(g) = get(1).filter(|g| !g.is_empty()) {
        std::fs::write(dir.join("generation_config.json"), g).unwrap();
    }
    let indexed = get(2).is_some_and(|g| !g.is_empty());
    if indexed {
        std::fs::write(dir.join("model.safetensors.index.json"), get(2).unwrap()).unwrap();
        for k in 0..4 {
            if let Some(s) = get(3 + k) {
                std::fs::write(dir.join(format!("s{}.safetensors", k + 1)), s).unwrap();
            }
        }
    } else if let Some(s) = get(3) {
        std::fs::write(dir.join("model.safetensors"), s).unwrap();
    }
    let dir_s = dir.display().to_string();
    let names_dir = |e: &qwen_rt::Error| assert!(e.to_string().starts_with(&dir_s), "error names no file: {e}");
    let ck = match Checkpoint::open(dir) {
        Ok(ck) => ck,
        Err(e) => return names_dir(&e),
    };
    let w = match Weights::from_checkpoint(&ck) {
        Ok(w) => w,
        Err(e) => return names_dir(&e),
    };
    let finite = w.views().all(|t| t.to_f32_vec().iter().all(|v| v.is_finite()));
    match page_in(w.views(), |_| {}) {
        Ok(()) => assert!(finite, "page_in accepted a NaN / inf weight"),
        Err(e) => {
            assert!(!finite, "page_in refused finite weights: {e}");
            assert!(e.to_string().contains("tensor `"), "finiteness error names no tensor: {e}");
            return;
        }
    }
    let opts = LoadOptions { backend: BackendKind::Cpu, threads: 1, ..Default::default() };
    let Ok(model) = load_model(&ck, &opts) else { return };
    let Ok(mut seq) = model.new_sequence(8) else { return };
    let v = ck.config.vocab_size as u32;
    let ids: Vec<u32> = (0..3).map(|i| i % v).collect();
    if let Ok(logits) = seq.forward(&ids, false) {
        assert_eq!(logits.len(), v as usize);
    }
});
