//! Quantized checkpoints: bitsandbytes 4-bit / 8-bit in the layout transformers saves them (one
//! linear is the real bitsandbytes-serialized tensor set of tests/data/quant/bnb_nf4_serialized,
//! written by tools/gen_quant_fixtures.py), GPTQ in AutoGPTQ's layout, `quantization_config`
//! parsing, and one named error per bad input (file and tensor in the message, never a panic).
use qwen_rt::backend::cpu::LinearMatmul;
use qwen_rt::backend::{load_model, BackendKind, LoadOptions};
use qwen_rt::checkpoint::{Checkpoint, TensorView};
use qwen_rt::config::QuantConfig;
use qwen_rt::quant::{nf4, Linear, QuantData, QuantFormat, QuantMatrix, QuantWeights};
use qwen_rt::weights::Weights;
use safetensors::{Dtype, SafeTensors};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Model shape: C hidden, P = H·D, F mlp width, V vocab; one layer.
#[derive(Clone, Copy)]
struct Shape {
    c: usize,
    d: usize,
    f: usize,
}
const V: usize = 16;

fn config(s: Shape, quant: Option<serde_json::Value>) -> serde_json::Value {
    let mut v = json!({
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen",
        "hidden_size": s.c, "num_attention_heads": 1, "num_hidden_layers": 1, "kv_channels": s.d,
        "intermediate_size": 2 * s.f, "vocab_size": V, "seq_length": 32, "max_position_embeddings": 32,
        "layer_norm_epsilon": 1e-6, "no_bias": true, "tie_word_embeddings": false,
        "use_dynamic_ntk": true, "use_logn_attn": true, "rotary_emb_base": 10000, "rotary_pct": 1.0
    });
    if let Some(q) = quant {
        v["quantization_config"] = q;
    }
    v
}

/// The five linears of layer 0: (prefix, N, K).
fn linears(s: Shape) -> Vec<(String, usize, usize)> {
    let p = s.d;
    [
        ("attn.c_attn", 3 * p, s.c),
        ("attn.c_proj", s.c, p),
        ("mlp.w1", s.f, s.c),
        ("mlp.w2", s.f, s.c),
        ("mlp.c_proj", s.c, s.f),
    ]
    .iter()
    .map(|(n, a, b)| (format!("transformer.h.0.{n}"), *a, *b))
    .collect()
}

fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// Tensors to write: name → (dtype, shape, bytes).
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// A change to a checkpoint's tensors (a bad-input case).
type Edit<'a> = Box<dyn Fn(&mut Tensors) + 'a>;

fn put_f32(t: &mut Tensors, name: &str, shape: &[usize], v: &[f32]) {
    t.insert(name.into(), (Dtype::F32, shape.to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect()));
}

/// The float tensors every checkpoint keeps (wte, norms, c_attn bias, lm_head).
fn float_tensors(s: Shape) -> Tensors {
    let mut t = Tensors::new();
    put_f32(&mut t, "transformer.wte.weight", &[V, s.c], &values(1, V * s.c, 0.1));
    put_f32(&mut t, "lm_head.weight", &[V, s.c], &values(2, V * s.c, 0.1));
    put_f32(&mut t, "transformer.ln_f.weight", &[s.c], &vec![1.0; s.c]);
    put_f32(&mut t, "transformer.h.0.ln_1.weight", &[s.c], &vec![1.0; s.c]);
    put_f32(&mut t, "transformer.h.0.ln_2.weight", &[s.c], &vec![1.0; s.c]);
    put_f32(&mut t, "transformer.h.0.attn.c_attn.bias", &[3 * s.d], &values(3, 3 * s.d, 0.1));
    t
}

fn write_model(cfg: &serde_json::Value, tensors: &Tensors) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn quant(l: &Linear) -> &QuantMatrix {
    match l {
        Linear::Quant(q) => q,
        Linear::Dense(_) => panic!("not quantized"),
    }
}

fn layer_linears(w: &QuantWeights) -> Vec<&QuantMatrix> {
    let l = &w.layers[0];
    [&l.c_attn, &l.c_proj, &l.w1, &l.w2, &l.mlp_c_proj].into_iter().map(quant).collect()
}

fn assert_err_has(e: &str, words: &[&str]) {
    for w in words {
        assert!(e.contains(w), "error {e:?} lacks {w:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// bitsandbytes 4-bit
// ---------------------------------------------------------------------------------------------

/// NF4 shape: c_attn is the fixture's [24, 128] weight (P = 8).
const NF4_SHAPE: Shape = Shape { c: 128, d: 8, f: 64 };

fn fixture() -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant/bnb_nf4_serialized.safetensors");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn st_dtype(d: Dtype) -> Dtype {
    d
}

/// Write linear `prefix` the way bitsandbytes' Params4bit state dict holds it, from our quantizer.
fn put_nf4(t: &mut Tensors, prefix: &str, q: &QuantMatrix) {
    let QuantData::Nf4 { codes, absmax } = &q.data else { panic!() };
    let w = format!("{prefix}.weight");
    let c = codes.as_slice().to_vec();
    t.insert(w.clone(), (Dtype::U8, vec![c.len(), 1], c));
    put_f32(t, &format!("{w}.quant_map"), &[16], &nf4::NF4_CODE);
    let mut state = json!({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [q.n, q.k]});
    match absmax {
        nf4::Absmax::Plain(a) => put_f32(t, &format!("{w}.absmax"), &[a.len()], a),
        nf4::Absmax::Double(d) => {
            t.insert(format!("{w}.absmax"), (Dtype::U8, vec![d.q.len()], d.q.clone()));
            put_f32(t, &format!("{w}.nested_absmax"), &[d.absmax2.len()], &d.absmax2);
            put_f32(t, &format!("{w}.nested_quant_map"), &[256], &d.map[..]);
            state["nested_blocksize"] = json!(256);
            state["nested_dtype"] = json!("float32");
            state["nested_offset"] = json!(d.offset as f64);
        }
    }
    let s = state.to_string().into_bytes();
    t.insert(format!("{w}.quant_state.bitsandbytes__nf4"), (Dtype::U8, vec![s.len()], s));
}

/// A 4-bit checkpoint: c_attn copied from the real bitsandbytes tensors (`dq.` or `plain.`), the
/// other linears quantized here. Returns the dir and the float sources of every linear.
fn nf4_model(dq: bool) -> (tempfile::TempDir, Vec<Vec<f32>>) {
    let s = NF4_SHAPE;
    let mut t = float_tensors(s);
    let fx = fixture();
    let st = SafeTensors::deserialize(&fx).unwrap();
    let pre = if dq { "dq." } else { "plain." };
    for name in st.names() {
        if let Some(rest) = name.strip_prefix(pre) {
            let v = st.tensor(name).unwrap();
            let dst = format!("transformer.h.0.attn.c_attn.{rest}");
            t.insert(dst, (st_dtype(v.dtype()), v.shape().to_vec(), v.data().to_vec()));
        }
    }
    let input = st.tensor("input").unwrap();
    let c_attn: Vec<f32> =
        input.data().chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
    let mut sources = vec![c_attn];
    for (i, (prefix, n, k)) in linears(s).into_iter().enumerate().skip(1) {
        let w = values(10 + i as u64, n * k, 0.05);
        let view = TensorView::from_f32(&prefix, &[n, k], &w).unwrap();
        put_nf4(&mut t, &prefix, &QuantMatrix::quantize(&view, QuantFormat::Nf4 { double_quant: dq }).unwrap());
        sources.push(w);
    }
    let qc = json!({"quant_method": "bitsandbytes", "load_in_4bit": true, "load_in_8bit": false,
        "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": dq, "bnb_4bit_compute_dtype": "bfloat16"});
    (write_model(&config(s, Some(qc)), &t), sources)
}

#[test]
fn bnb_4bit_checkpoints_load_with_the_real_bitsandbytes_layout() {
    for dq in [false, true] {
        let (dir, sources) = nf4_model(dq);
        let ck = Checkpoint::open(dir.path()).unwrap();
        let w = QuantWeights::from_checkpoint(&ck).unwrap();
        assert_eq!(w.format, Some(QuantFormat::Nf4 { double_quant: dq }));
        for (m, (src, (prefix, n, k))) in layer_linears(&w).into_iter().zip(sources.iter().zip(linears(NF4_SHAPE))) {
            assert_eq!((m.n, m.k), (n, k), "{prefix}");
            let view = TensorView::from_f32(&prefix, &[n, k], src).unwrap();
            let fresh = QuantMatrix::quantize(&view, QuantFormat::Nf4 { double_quant: dq }).unwrap();
            // Loaded (c_attn: bitsandbytes' own bytes) dequantizes exactly like our quantizer's result.
            if dq && prefix.ends_with("c_attn") {
                // bitsandbytes' offset is torch's f32 mean: compare with its statistics instead.
                let QuantData::Nf4 { absmax: nf4::Absmax::Double(d), .. } = &m.data else { panic!() };
                let QuantData::Nf4 { absmax: plain, codes, .. } =
                    &QuantMatrix::quantize(&view, QuantFormat::Nf4 { double_quant: false }).unwrap().data
                else {
                    panic!()
                };
                let redone = nf4::double_quantize_with_offset(&plain.to_f32(), d.offset);
                assert_eq!(redone.q, d.q, "{prefix}: absmax codes");
                let QuantData::Nf4 { codes: loaded, .. } = &m.data else { panic!() };
                assert_eq!(loaded.as_slice(), codes.as_slice(), "{prefix}: codes");
            } else {
                assert_eq!(bits(&m.dequantize()), bits(&fresh.dequantize()), "{prefix} (dq {dq})");
            }
        }
        // The float loader refuses it by name.
        let e = Weights::from_checkpoint(&ck).unwrap_err().to_string();
        assert_err_has(&e, &["model.safetensors", "attn.c_attn.weight", "stored quantized", "U8"]);
    }
}

#[test]
fn bnb_4bit_bad_tensors_are_named_errors() {
    let s = NF4_SHAPE;
    let (dir, _) = nf4_model(false);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    let base = {
        let st_bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&st_bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
            .collect::<Tensors>()
    };
    drop(ck);
    let w1 = "transformer.h.0.mlp.w1.weight";
    let cases: Vec<(Edit<'_>, Vec<&str>)> = vec![
        (Box::new(|t: &mut Tensors| drop(t.remove(&format!("{w1}.absmax")))), vec![".absmax", "missing"]),
        (
            Box::new(|t: &mut Tensors| put_f32(t, &format!("{w1}.absmax"), &[3], &[1.0; 3])),
            vec![".absmax", "shape [3]"],
        ),
        (
            Box::new(|t: &mut Tensors| {
                let (_, _, b) = t.remove(w1).unwrap();
                t.insert(w1.into(), (Dtype::U8, vec![b.len() - 1, 1], b[1..].to_vec()));
            }),
            vec![w1, "NF4 packed weight"],
        ),
        (
            Box::new(|t: &mut Tensors| {
                let s = br#"{"quant_type": "nf4", "blocksize": 64, "shape": [3, 3]}"#.to_vec();
                t.insert(format!("{w1}.quant_state.bitsandbytes__nf4"), (Dtype::U8, vec![s.len()], s));
            }),
            vec!["quant_state", "shape"],
        ),
        (
            Box::new(|t: &mut Tensors| {
                let s = br#"{"quant_type": "nf4", "blocksize": 128, "shape": [64, 128]}"#.to_vec();
                t.insert(format!("{w1}.quant_state.bitsandbytes__nf4"), (Dtype::U8, vec![s.len()], s));
            }),
            vec!["quant_state", "blocksize"],
        ),
        (
            Box::new(|t: &mut Tensors| put_f32(t, &format!("{w1}.quant_map"), &[16], &[0.5; 16])),
            vec!["quant_map", "NF4 code table"],
        ),
        (
            Box::new(|t: &mut Tensors| drop(t.remove(&format!("{w1}.quant_state.bitsandbytes__nf4")))),
            vec!["quant_state", "missing"],
        ),
    ];
    for (edit, words) in cases {
        let mut t = base.clone();
        edit(&mut t);
        let d = write_model(&cfg, &t);
        let e = QuantWeights::from_checkpoint(&Checkpoint::open(d.path()).unwrap()).unwrap_err().to_string();
        assert_err_has(&e, &words);
        assert!(e.contains("model.safetensors") || e.contains(&d.path().display().to_string()), "{e}: no file");
    }
    let _ = s;
}

// ---------------------------------------------------------------------------------------------
// bitsandbytes 8-bit
// ---------------------------------------------------------------------------------------------

#[test]
fn bnb_8bit_checkpoint_loads_and_names_a_missing_scb() {
    let s = NF4_SHAPE;
    let mut t = float_tensors(s);
    let mut fresh = Vec::new();
    for (i, (prefix, n, k)) in linears(s).into_iter().enumerate() {
        let w = values(20 + i as u64, n * k, 0.05);
        let q = QuantMatrix::quantize(&TensorView::from_f32(&prefix, &[n, k], &w).unwrap(), QuantFormat::Int8).unwrap();
        let QuantData::Int8 { codes, scb } = &q.data else { panic!() };
        t.insert(format!("{prefix}.weight"), (Dtype::I8, vec![n, k], codes.as_slice().to_vec()));
        put_f32(&mut t, &format!("{prefix}.SCB"), &[n], scb);
        t.insert(format!("{prefix}.weight_format"), (Dtype::U8, vec![], vec![0]));
        fresh.push(q);
    }
    let cfg = config(s, Some(json!({"quant_method": "bitsandbytes", "load_in_8bit": true, "llm_int8_threshold": 6.0})));
    let dir = write_model(&cfg, &t);
    let w = QuantWeights::from_checkpoint(&Checkpoint::open(dir.path()).unwrap()).unwrap();
    assert_eq!(w.format, Some(QuantFormat::Int8));
    for (m, f) in layer_linears(&w).into_iter().zip(&fresh) {
        assert_eq!(bits(&m.dequantize()), bits(&f.dequantize()), "{}", m.name);
    }
    t.remove("transformer.h.0.mlp.c_proj.SCB");
    let dir = write_model(&cfg, &t);
    let e = QuantWeights::from_checkpoint(&Checkpoint::open(dir.path()).unwrap()).unwrap_err().to_string();
    assert_err_has(&e, &["transformer.h.0.mlp.c_proj.SCB", "missing"]);
}

// ---------------------------------------------------------------------------------------------
// GPTQ
// ---------------------------------------------------------------------------------------------

/// GPTQ shape: every K (C, P, F) a multiple of the group size 32.
const GPTQ_SHAPE: Shape = Shape { c: 64, d: 32, f: 96 };
const GROUP: usize = 32;

/// Pack linear [N, K] (codes q[k][n], true zero `zero`, scales [G][N]) in AutoGPTQ's layout.
fn put_gptq(t: &mut Tensors, prefix: &str, bits: u32, q: &[Vec<u32>], zero: u32, scales: &[f32], g_idx: &[i32]) {
    let (k, n) = (q.len(), q[0].len());
    let per = 32 / bits as usize;
    let groups = k / GROUP;
    let mut qw = vec![0u32; k / per * n];
    for kk in 0..k {
        for nn in 0..n {
            qw[(kk / per) * n + nn] |= q[kk][nn] << (bits as usize * (kk % per));
        }
    }
    let mut qz = vec![0u32; groups * n / per];
    for g in 0..groups {
        for nn in 0..n {
            qz[g * (n / per) + nn / per] |= (zero - 1) << (bits as usize * (nn % per));
        }
    }
    let le = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    t.insert(format!("{prefix}.qweight"), (Dtype::I32, vec![k / per, n], le(&qw)));
    t.insert(format!("{prefix}.qzeros"), (Dtype::I32, vec![groups, n / per], le(&qz)));
    let sc: Vec<u8> = scales.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    t.insert(format!("{prefix}.scales"), (Dtype::F16, vec![groups, n], sc));
    let gi: Vec<u8> = g_idx.iter().flat_map(|x| x.to_le_bytes()).collect();
    t.insert(format!("{prefix}.g_idx"), (Dtype::I32, vec![k], gi));
}

/// A GPTQ checkpoint; returns it with the expected W `[N, K]` of each linear (from the codes).
fn gptq_model(bits: u32, shuffled: bool) -> (tempfile::TempDir, Tensors, serde_json::Value, Vec<Vec<f32>>) {
    let s = GPTQ_SHAPE;
    let mut t = float_tensors(s);
    let maxq = (1u32 << bits) - 1;
    let zero = 1u32 << (bits - 1); // symmetric: the middle code
    let mut expected = Vec::new();
    for (i, (prefix, n, k)) in linears(s).into_iter().enumerate() {
        let r = values(30 + i as u64, k * n + (k / GROUP) * n, 1.0);
        let q: Vec<Vec<u32>> = (0..k)
            .map(|kk| (0..n).map(|nn| ((r[kk * n + nn] + 1.0) * 0.5 * maxq as f32).round() as u32).collect())
            .collect();
        let scales: Vec<f32> =
            r[k * n..].iter().map(|x| half::f16::from_f32(0.002 + 0.01 * x.abs()).to_f32()).collect();
        let g_idx: Vec<i32> =
            (0..k).map(|kk| if shuffled { ((kk * 7 + 3) % k / GROUP) as i32 } else { (kk / GROUP) as i32 }).collect();
        put_gptq(&mut t, &prefix, bits, &q, zero, &scales, &g_idx);
        let mut w = vec![0f32; n * k];
        for kk in 0..k {
            for nn in 0..n {
                let g = g_idx[kk] as usize;
                w[nn * k + kk] = scales[g * n + nn] * (q[kk][nn] as i32 - zero as i32) as f32;
            }
        }
        expected.push(w);
    }
    let cfg = config(
        s,
        Some(json!({"bits": bits, "group_size": GROUP, "damp_percent": 0.01, "desc_act": shuffled,
            "static_groups": false, "sym": true, "true_sequential": true, "quant_method": "gptq"})),
    );
    (write_model(&cfg, &t), t, cfg, expected)
}

#[test]
fn gptq_checkpoints_load_4_and_8_bit_any_g_idx_order() {
    for (bits, shuffled) in [(4, false), (8, false), (4, true)] {
        let (dir, _, _, expected) = gptq_model(bits, shuffled);
        let ck = Checkpoint::open(dir.path()).unwrap();
        let w = QuantWeights::from_checkpoint(&ck).unwrap();
        assert_eq!(w.format, Some(QuantFormat::Gptq { bits, group: GROUP }));
        for (m, e) in layer_linears(&w).into_iter().zip(&expected) {
            assert_eq!(bits_of(&m.dequantize()), bits_of(e), "{} ({bits}-bit, shuffled {shuffled})", m.name);
        }
        let e = Weights::from_checkpoint(&ck).unwrap_err().to_string();
        assert_err_has(&e, &["attn.c_attn.qweight", "stored quantized", "I32"]);
    }
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    bits(v)
}

#[test]
fn gptq_bad_checkpoints_are_named_errors() {
    let (_, base, cfg, _) = gptq_model(4, false);
    let p = "transformer.h.0.mlp.w2";
    let open = |t: &Tensors, cfg: &serde_json::Value| {
        let d = write_model(cfg, t);
        let r = Checkpoint::open(d.path()).and_then(|ck| QuantWeights::from_checkpoint(&ck).map(|_| ()));
        (d, r.unwrap_err().to_string())
    };
    // Missing scales.
    let mut t = base.clone();
    t.remove(&format!("{p}.scales"));
    assert_err_has(&open(&t, &cfg).1, &[&format!("{p}.scales"), "missing"]);
    // Wrong qweight shape.
    let mut t = base.clone();
    let (d, _, b) = t.remove(&format!("{p}.qweight")).unwrap();
    t.insert(format!("{p}.qweight"), (d, vec![4, b.len() / 16], b));
    assert_err_has(&open(&t, &cfg).1, &[&format!("{p}.qweight"), "model.safetensors", "expected I32"]);
    // A g_idx naming a group that does not exist.
    let mut t = base.clone();
    let (d, s, mut b) = t.remove(&format!("{p}.g_idx")).unwrap();
    b[..4].copy_from_slice(&99i32.to_le_bytes());
    t.insert(format!("{p}.g_idx"), (d, s, b));
    assert_err_has(&open(&t, &cfg).1, &[p, "g_idx[0] = 99"]);
    // Group size not dividing K.
    let mut c = cfg.clone();
    c["quantization_config"]["group_size"] = json!(48);
    assert_err_has(&open(&base, &c).1, &["group_size 48 does not divide", "qweight"]);
    // Unsupported bits: the config names it.
    let mut c = cfg.clone();
    c["quantization_config"]["bits"] = json!(3);
    assert_err_has(&open(&base, &c).1, &["config.json", "bits = 3"]);
    // A non-zero bias on a layer without one.
    let mut t = base.clone();
    put_f32(&mut t, &format!("{p}.bias"), &[GPTQ_SHAPE.f], &vec![0.5; GPTQ_SHAPE.f]);
    assert_err_has(&open(&t, &cfg).1, &[&format!("{p}.bias"), "non-zero bias"]);
}

#[test]
fn gptq_config_from_quantize_config_json() {
    let (dir, _, cfg, _) = gptq_model(8, false);
    let mut c = cfg.clone();
    let q = c.as_object_mut().unwrap().remove("quantization_config").unwrap();
    std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
    std::fs::write(dir.path().join("quantize_config.json"), q.to_string()).unwrap();
    assert_eq!(
        QuantConfig::load(dir.path()).unwrap(),
        Some(QuantConfig::Gptq { bits: 8, group_size: GROUP, desc_act: false })
    );
    let w = QuantWeights::from_checkpoint(&Checkpoint::open(dir.path()).unwrap()).unwrap();
    assert_eq!(w.format, Some(QuantFormat::Gptq { bits: 8, group: GROUP }));
}

// ---------------------------------------------------------------------------------------------
// Config and quantize-at-load
// ---------------------------------------------------------------------------------------------

#[test]
fn quantization_config_parsing() {
    let p = Path::new("x/config.json");
    let ok = |v: serde_json::Value| QuantConfig::from_value(&v, p).unwrap();
    let err = |v: serde_json::Value| QuantConfig::from_value(&v, p).unwrap_err().to_string();
    assert_eq!(
        ok(json!({"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4"})),
        QuantConfig::Bnb4 { double_quant: false }
    );
    assert_eq!(
        ok(json!({"load_in_4bit": true, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true})),
        QuantConfig::Bnb4 { double_quant: true }
    );
    assert_eq!(ok(json!({"quant_method": "bitsandbytes", "load_in_8bit": true})), QuantConfig::Bnb8);
    assert_err_has(&err(json!({"load_in_4bit": true, "bnb_4bit_quant_type": "fp4"})), &["x/config.json", "fp4"]);
    assert_err_has(&err(json!({"load_in_4bit": true, "load_in_8bit": true})), &["exactly one"]);
    assert_err_has(&err(json!({"quant_method": "awq", "bits": 4})), &["awq"]);
    assert_err_has(&err(json!({"quant_method": "gptq", "bits": 4, "group_size": -1})), &["group_size -1"]);
    assert_err_has(
        &err(json!({"quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "gptq_v2"})),
        &["gptq_v2"],
    );
    assert_eq!(
        ok(json!({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true})),
        QuantConfig::Gptq { bits: 4, group_size: 128, desc_act: false }
    );
    // A float checkpoint has none.
    let d = write_model(&config(NF4_SHAPE, None), &float_tensors(NF4_SHAPE));
    assert_eq!(QuantConfig::load(d.path()).unwrap(), None);
}

#[test]
fn quantize_at_load_keeps_float_tensors_and_shrinks_the_linears() {
    let s = NF4_SHAPE;
    let mut t = float_tensors(s);
    for (i, (prefix, n, k)) in linears(s).into_iter().enumerate() {
        put_f32(&mut t, &format!("{prefix}.weight"), &[n, k], &values(40 + i as u64, n * k, 0.05));
    }
    let d = write_model(&config(s, None), &t);
    let ck = Checkpoint::open(d.path()).unwrap();
    let w = Weights::from_checkpoint(&ck).unwrap();
    let dense = QuantWeights::dense(&w);
    for f in [QuantFormat::Nf4 { double_quant: false }, QuantFormat::Nf4 { double_quant: true }, QuantFormat::Int8] {
        let q = QuantWeights::quantize(&w, f).unwrap();
        assert_eq!(q.format, Some(f));
        assert!(q.byte_len() < dense.byte_len(), "{f:?}: {} >= {}", q.byte_len(), dense.byte_len());
        assert_eq!(q.wte.name, "transformer.wte.weight");
        // Each linear equals quantizing its view directly.
        for (m, src) in layer_linears(&q).into_iter().zip([
            &w.layers[0].c_attn_w,
            &w.layers[0].c_proj,
            &w.layers[0].w1,
            &w.layers[0].w2,
            &w.layers[0].mlp_c_proj,
        ]) {
            assert_eq!(bits(&m.dequantize()), bits(&QuantMatrix::quantize(src, f).unwrap().dequantize()));
        }
    }
    assert!(QuantWeights::quantize(&w, QuantFormat::Gptq { bits: 4, group: 128 }).is_err());
    // Linear::Dense computes like the CPU backend's matmul.
    let x = values(99, 2 * s.c, 1.0);
    let (mut y1, mut y2) = (vec![0f32; 2 * 3 * s.d], vec![0f32; 2 * 3 * s.d]);
    dense.layers[0].c_attn.matmul(&x, None, &mut y1).unwrap();
    qwen_rt::backend::cpu::matmul(&x, &w.layers[0].c_attn_w, None, &mut y2).unwrap();
    assert_eq!(bits(&y1), bits(&y2));
}

#[test]
fn gptq_checkpoint_runs_end_to_end_on_the_cpu_backend() {
    // The GPTQ checkpoint against a float checkpoint holding the dequantized weights computed here
    // from the codes (AutoGPTQ's formula): the CPU backend's logits agree to f32 rounding (the two
    // matmuls may sum in another order: max relative row error 1e-5).
    let (dir, _, _, expected) = gptq_model(4, true);
    let mut t = float_tensors(GPTQ_SHAPE);
    for ((prefix, n, k), w) in linears(GPTQ_SHAPE).into_iter().zip(&expected) {
        put_f32(&mut t, &format!("{prefix}.weight"), &[n, k], w);
    }
    let float_dir = write_model(&config(GPTQ_SHAPE, None), &t);
    let cpu = LoadOptions { backend: BackendKind::Cpu, threads: 2, ..Default::default() };
    let run = |d: &std::path::Path, opts: &LoadOptions| {
        let ck = Checkpoint::open(d).unwrap();
        let model = load_model(&ck, opts).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        assert_eq!(model.backend_name(), "cpu");
        model.new_sequence(8).unwrap().forward(&[1, 5, 3, 7], true).unwrap()
    };
    let got = run(dir.path(), &cpu);
    assert_eq!(got.len(), 4 * V);
    let want = run(float_dir.path(), &cpu);
    for (r, (a, b)) in got.chunks_exact(V).zip(want.chunks_exact(V)).enumerate() {
        let abs = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
        assert!(abs <= 1e-5 * scale, "row {r}: max abs error {abs:e}, scale {scale}");
    }
    // --backend auto: the GPU when usable (the CUDA kernels are verified since H200 run 5), else the
    // CPU with a note: then the same bits.
    if qwen_rt::backend::cuda::probe().is_err() {
        assert_eq!(bits(&got), bits(&run(dir.path(), &LoadOptions { backend: BackendKind::Auto, ..cpu.clone() })));
    }
    // --quant on an already quantized model: a clear error naming the cause.
    let ck = Checkpoint::open(dir.path()).unwrap();
    let e = load_model(&ck, &LoadOptions { quant: Some(QuantFormat::Int8), ..cpu.clone() }).err().unwrap().to_string();
    assert_err_has(&e, &["--quant int8", "already quantized", &dir.path().display().to_string()]);
    // The CUDA backend runs it or, without a usable GPU, says why.
    let cuda = load_model(&ck, &LoadOptions { backend: BackendKind::Cuda, ..cpu });
    match qwen_rt::backend::cuda::probe() {
        Err(why) => assert_eq!(cuda.err().unwrap().to_string(), why.to_string()),
        Ok(()) => assert_eq!(cuda.unwrap().backend_name(), "cuda"),
    }
}

#[test]
fn cli_inspects_and_runs_a_quantized_checkpoint() {
    let (dir, _, _, _) = gptq_model(4, false);
    let bin = env!("CARGO_BIN_EXE_qwen-run");
    let m = dir.path().to_str().unwrap();
    let out = std::process::Command::new(bin).args(["inspect", "--model", m]).output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "inspect: {}", String::from_utf8_lossy(&out.stderr));
    assert!(so.contains("transformer.h.0.mlp.w1.qweight") && so.contains("I32"), "{so}");
    assert!(so.contains("stored by dtype: ") && so.contains("quantization: gptq-int4"), "{so}");
    let npy = dir.path().join("logits.npy");
    let args = ["logits", "--model", m, "--backend", "cpu", "--ids", "1,2,3", "--out", npy.to_str().unwrap()];
    let out = std::process::Command::new(bin).args(args).output().unwrap();
    assert!(out.status.success(), "logits: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::metadata(&npy).unwrap().len() > 3 * V as u64 * 4);
    let out = std::process::Command::new(bin).args([&args[..], &["--quant", "nf4"]].concat()).output().unwrap();
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && se.contains("already quantized") && se.contains(m), "{se}");
}

// ---------------------------------------------------------------------------------------------
// GPTQ checkpoints from `synth --gptq` (random codes, for benchmarks)
// ---------------------------------------------------------------------------------------------

#[test]
fn synth_gptq_writes_what_the_gptq_loader_reads() {
    use qwen_rt::synth::{synth_model, SynthGptq, SynthOptions, SynthPreset};
    let p = SynthPreset::tiny(); // C 64, F 176: group 16 divides every K
    for bits in [4u32, 8] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m");
        let q = SynthGptq { bits, group: 16 };
        synth_model(&out, &p, 3, &SynthOptions { gptq: Some(q), single_file: true, ..Default::default() }).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        let qc = &cfg["quantization_config"];
        assert_eq!(
            (qc["quant_method"].as_str(), qc["bits"].as_u64(), qc["group_size"].as_u64()),
            (Some("gptq"), Some(bits as u64), Some(16))
        );
        assert_eq!((qc["desc_act"].as_bool(), qc["sym"].as_bool()), (Some(false), Some(true)));

        // The stored tensors, read with the safetensors crate and unpacked here from the format
        // description (spec §7.3): W[k, n] = scale[g, n] · (q[k, n] − (z_stored[g, n] + 1)).
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let words = |name: &str, dtype: Dtype, shape: &[usize]| -> Vec<u32> {
            let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((t.dtype(), t.shape()), (dtype, shape), "{name}");
            t.data().chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
        };
        let per = 32 / bits as usize;
        let mask = (1u32 << bits) - 1;
        let ck = Checkpoint::open(&out).unwrap();
        let w = QuantWeights::from_checkpoint(&ck).unwrap();
        assert_eq!(w.format, Some(QuantFormat::Gptq { bits, group: 16 }));
        let (c, f) = (p.hidden_size, p.intermediate_size / 2);
        let names = ["attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj"];
        let shapes = [(3 * c, c), (c, c), (f, c), (f, c), (c, f)];
        for (layer, l) in w.layers.iter().enumerate() {
            let mats = [&l.c_attn, &l.c_proj, &l.w1, &l.w2, &l.mlp_c_proj].map(quant);
            for ((name, (n, k)), m) in names.iter().zip(shapes).zip(mats) {
                let x = format!("transformer.h.{layer}.{name}");
                assert!(st.tensor(&format!("{x}.weight")).is_err(), "{x}.weight stored beside its GPTQ tensors");
                let g = k / 16;
                let qweight = words(&format!("{x}.qweight"), Dtype::I32, &[k / per, n]);
                let qzeros = words(&format!("{x}.qzeros"), Dtype::I32, &[g, n / per]);
                let g_idx = words(&format!("{x}.g_idx"), Dtype::I32, &[k]);
                let st_scales = st.tensor(&format!("{x}.scales")).unwrap();
                assert_eq!((st_scales.dtype(), st_scales.shape()), (Dtype::F16, &[g, n][..]));
                let scales: Vec<f32> =
                    st_scales.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                // Symmetric: every stored zero 2^(bits-1) - 1; g_idx sequential; scales about
                // 2·0.02·√3 / (2^bits − 1), so the weights have the float preset's scale.
                let zero_field = (1u32 << (bits - 1)) - 1;
                for word in &qzeros {
                    assert!(
                        (0..per).all(|j| (word >> (bits as usize * j)) & mask == zero_field),
                        "{x}.qzeros {word:#x}"
                    );
                }
                assert!(g_idx.iter().enumerate().all(|(i, &gi)| gi as usize == i / 16), "{x}.g_idx");
                let s0 = 2.0 * 0.02 * 3f32.sqrt() / mask as f32;
                assert!(scales.iter().all(|&s| (s - s0).abs() <= 0.051 * s0), "{x}.scales");
                // The loader's matrix ([N, K] row-major) is what the words say.
                let got = m.dequantize();
                let mut codes_seen = vec![false; 1 << bits];
                for kk in 0..k {
                    for nn in 0..n {
                        let code = (qweight[(kk / per) * n + nn] >> (bits as usize * (kk % per))) & mask;
                        codes_seen[code as usize] = true;
                        let want = scales[(kk / 16) * n + nn] * (code as f32 - (zero_field + 1) as f32);
                        assert_eq!(got[nn * k + kk].to_bits(), want.to_bits(), "{x}[{nn}, {kk}]");
                    }
                }
                assert!(codes_seen.iter().all(|&s| s), "{x}: random codes should cover every value");
                let mean = got.iter().sum::<f32>() / got.len() as f32;
                let std = (got.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / got.len() as f32).sqrt();
                assert!(mean.abs() < 0.01 && (0.014..0.03).contains(&std), "{x}: mean {mean}, std {std}");
            }
        }
        // Floats stay in the model dtype; the model runs on the CPU with finite logits.
        assert_eq!(st.tensor("lm_head.weight").unwrap().dtype(), Dtype::BF16);
        assert_eq!(st.tensor("transformer.h.0.attn.c_attn.bias").unwrap().dtype(), Dtype::BF16);
        let cpu = LoadOptions { backend: BackendKind::Cpu, threads: 2, ..Default::default() };
        let model = load_model(&ck, &cpu).unwrap();
        let logits = model.new_sequence(8).unwrap().forward(&[1, 5, 3], true).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
    }
    // Sizes the format cannot hold and bits it does not have: errors naming the cause, nothing written.
    let dir = tempfile::tempdir().unwrap();
    for (q, words) in [
        (SynthGptq { bits: 4, group: 128 }, &["group 128", "transformer.h.0.attn.c_attn.weight", "[192, 64]"][..]),
        (SynthGptq { bits: 3, group: 16 }, &["bits must be 4 or 8"][..]),
        (SynthGptq { bits: 4, group: 0 }, &["group size"][..]),
    ] {
        let out = dir.path().join("bad");
        let e = synth_model(&out, &p, 0, &SynthOptions { gptq: Some(q), ..Default::default() }).unwrap_err();
        assert_err_has(&e.to_string(), words);
        assert!(!out.exists());
    }
}
