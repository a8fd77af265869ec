//! Mutation fuzzing of the checkpoint path: random byte flips, length-field edits and truncations of a
//! valid `model.safetensors`, and hostile values in `config.json`. Loading (open → weights → one CPU
//! forward) must return Ok or an Err — never panic, abort or hang. Deterministic (fixed seeds).
use qwen_rt::backend::{load_model, BackendKind, LoadOptions};
use qwen_rt::checkpoint::{Checkpoint, DType};
use qwen_rt::synth::write_safetensors;
use qwen_rt::weights::Weights;
use serde_json::{json, Value};
use std::path::Path;

const C: usize = 8;
const H: usize = 2;
const F: usize = 12;
const V: usize = 16;

fn config() -> Value {
    json!({
        "model_type": "qwen", "hidden_size": C, "num_attention_heads": H, "num_hidden_layers": 1,
        "kv_channels": C / H, "intermediate_size": 2 * F, "vocab_size": V, "seq_length": 4,
        "max_position_embeddings": 32, "layer_norm_epsilon": 1e-6, "rotary_emb_base": 10000
    })
}

fn tensors() -> Vec<(String, Vec<usize>)> {
    let p = "transformer.h.0.";
    vec![
        ("transformer.wte.weight".into(), vec![V, C]),
        (format!("{p}ln_1.weight"), vec![C]),
        (format!("{p}attn.c_attn.weight"), vec![3 * C, C]),
        (format!("{p}attn.c_attn.bias"), vec![3 * C]),
        (format!("{p}attn.c_proj.weight"), vec![C, C]),
        (format!("{p}ln_2.weight"), vec![C]),
        (format!("{p}mlp.w1.weight"), vec![F, C]),
        (format!("{p}mlp.w2.weight"), vec![F, C]),
        (format!("{p}mlp.c_proj.weight"), vec![C, F]),
        ("transformer.ln_f.weight".into(), vec![C]),
        ("lm_head.weight".into(), vec![V, C]),
    ]
}

/// splitmix64
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn valid_model_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    let ts = tensors();
    let values: Vec<Vec<f32>> =
        ts.iter().map(|(_, s)| (0..s.iter().product()).map(|i| (i % 7) as f32 * 0.1).collect()).collect();
    let list: Vec<(&str, DType, &[usize], &[f32])> =
        ts.iter().zip(&values).map(|((n, s), v)| (n.as_str(), DType::BF16, s.as_slice(), v.as_slice())).collect();
    write_safetensors(&p, &list).unwrap();
    std::fs::read(&p).unwrap()
}

/// Open, validate and run one token; Ok(true) when everything loaded and ran.
fn load_and_run(dir: &Path) -> bool {
    let Ok(ck) = Checkpoint::open(dir) else { return false };
    if Weights::from_checkpoint(&ck).is_err() {
        return false;
    }
    let opts = LoadOptions { backend: BackendKind::Cpu, threads: 1, ..Default::default() };
    let Ok(model) = load_model(&ck, &opts) else { return false };
    let Ok(mut seq) = model.new_sequence(8) else { return false };
    seq.forward(&[1, 2, 3, 4, 5], false).is_ok()
}

fn check(dir: &Path, what: &str) -> bool {
    match std::panic::catch_unwind(|| load_and_run(dir)) {
        Ok(ok) => ok,
        Err(_) => panic!("loading panicked on {what}"),
    }
}

#[test]
fn mutated_safetensors_never_panic() {
    let good = valid_model_bytes();
    let hlen = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config().to_string()).unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, &good).unwrap();
    assert!(check(dir.path(), "the unmodified file"), "the valid model must load and run");
    let mut rng = Rng(0x5EED);
    let (mut loaded, mut rejected) = (0, 0);
    for case in 0..400 {
        let mut b = good.clone();
        match case % 4 {
            0 => {
                // flip 1-4 bytes inside the JSON header
                for _ in 0..1 + rng.below(4) {
                    let i = 8 + rng.below(hlen);
                    b[i] = rng.next() as u8;
                }
            }
            1 => {
                // a digit of the header replaced by another digit (offsets and shapes stay JSON)
                let digits: Vec<usize> = (8..8 + hlen).filter(|&i| b[i].is_ascii_digit()).collect();
                let i = digits[rng.below(digits.len())];
                b[i] = b'0' + rng.below(10) as u8;
            }
            2 => {
                // the header length field
                let v = match rng.below(4) {
                    0 => u64::MAX - rng.below(16) as u64,
                    1 => (hlen as u64).wrapping_add(rng.below(64) as u64).wrapping_sub(32),
                    2 => rng.next() >> rng.below(64),
                    _ => 0,
                };
                b[..8].copy_from_slice(&v.to_le_bytes());
            }
            _ => b.truncate(rng.below(b.len())),
        }
        std::fs::write(&path, &b).unwrap();
        if check(dir.path(), &format!("mutation case {case}")) {
            loaded += 1;
        } else {
            rejected += 1;
        }
    }
    eprintln!("400 mutated files: {loaded} loaded and ran, {rejected} rejected with an error, 0 panics");
    assert!(rejected > 100, "most mutations must be caught");
}

/// What loading must do with one config value.
#[derive(Debug, PartialEq)]
enum Expect {
    /// `Checkpoint::open` refuses it with a message naming config.json and the key.
    BadValue,
    /// A valid number that disagrees with the weights: refused (open or weights), never run.
    Refused,
    /// Loads and runs (the value does not change any tensor shape).
    Runs,
}

/// The expectation for `key = v`, from the rules of config.rs (spec §1.1) and the shapes of `config()`.
fn expect(key: &str, v: &Value) -> Expect {
    let original = &config()[key];
    let int_key = !matches!(key, "layer_norm_epsilon" | "rotary_emb_base");
    let shape_key = !matches!(key, "seq_length" | "max_position_embeddings" | "layer_norm_epsilon" | "rotary_emb_base");
    if v.is_null() {
        // Absent: the keys with a default take it (kv_channels' default C/H is the file's own value).
        return if shape_key && key != "kv_channels" { Expect::BadValue } else { Expect::Runs };
    }
    let valid = if int_key {
        v.as_u64().is_some_and(|n| n > 0 && n < 1 << 40)
    } else {
        match (key, v.as_f64()) {
            ("layer_norm_epsilon", Some(x)) => x > 0.0 && x < 1.0,
            (_, Some(x)) => x.is_finite() && x > 1.0,
            _ => false,
        }
    };
    match (valid, shape_key) {
        (false, _) => Expect::BadValue,
        (true, true) if v != original => Expect::Refused,
        _ => Expect::Runs,
    }
}

#[test]
fn hostile_config_values_are_refused_or_run() {
    let good = valid_model_bytes();
    let keys = [
        "hidden_size",
        "num_attention_heads",
        "num_hidden_layers",
        "kv_channels",
        "intermediate_size",
        "vocab_size",
        "seq_length",
        "max_position_embeddings",
        "layer_norm_epsilon",
        "rotary_emb_base",
    ];
    let values = [
        json!(0),
        json!(-1),
        json!(1),
        json!(3),
        json!(7),
        json!(1e300),
        json!(u64::MAX),
        json!(1u64 << 40),
        json!("8"),
        json!(null),
        json!([8]),
        json!(0.5),
        json!(true),
        json!(f64::MIN_POSITIVE),
    ];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &good).unwrap();
    let mut counts = [0usize; 3];
    for k in keys {
        for v in &values {
            let mut cfg = config();
            cfg[k] = v.clone();
            std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
            let want = expect(k, v);
            let what = format!("config {k} = {v} (expected {want:?})");
            let open = Checkpoint::open(dir.path());
            match want {
                Expect::BadValue => {
                    let e = open.err().unwrap_or_else(|| panic!("{what}: accepted")).to_string();
                    assert!(
                        e.contains("config.json") && e.contains(k),
                        "{what}: message {e:?} names neither file nor key"
                    );
                    counts[0] += 1;
                }
                Expect::Refused => {
                    assert!(!check(dir.path(), &what), "{what}: loaded and ran with weights of another shape");
                    counts[1] += 1;
                }
                Expect::Runs => {
                    assert!(open.is_ok(), "{what}: refused: {}", open.err().unwrap());
                    assert!(check(dir.path(), &what), "{what}: did not load and run");
                    counts[2] += 1;
                }
            }
        }
    }
    eprintln!(
        "{} bad values refused by name, {} shape conflicts refused, {} harmless values ran",
        counts[0], counts[1], counts[2]
    );
    assert!(counts.iter().all(|&c| c > 0), "every class is exercised: {counts:?}");
}
