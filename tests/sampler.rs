//! Sampler against Hugging Face's own logits processors (fixture from tools/gen_sampler_fixtures.py),
//! plus seeded reproducibility, empirical frequencies, ties, padding-row masking and validation.
use qwen_rt::sampler::{Sampler, SamplingParams};
use qwen_rt::tokenizer::VOCAB_LEN;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    logits: Vec<f32>,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repetition_penalty: f32,
    context: Vec<u32>,
    probs: Vec<f32>,
    kept: Vec<usize>,
    greedy: u32,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sampler_cases.json"))
        .expect("tests/data/sampler_cases.json (run tools/gen_sampler_fixtures.py)");
    let f: Fixture = serde_json::from_str(&text).expect("sampler fixture parses");
    assert!(f.cases.len() >= 12, "fixture has too few cases");
    f.cases
}

fn params(c: &Case, do_sample: bool, seed: u64) -> SamplingParams {
    SamplingParams {
        do_sample,
        temperature: c.temperature,
        top_k: c.top_k,
        top_p: c.top_p,
        repetition_penalty: c.repetition_penalty,
        seed,
    }
}

fn sampling(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
    SamplingParams { do_sample: true, temperature, top_k, top_p, repetition_penalty: 1.0, seed }
}

#[test]
fn probabilities_match_hf() {
    for c in cases() {
        let s = Sampler::new(params(&c, true, 0)).unwrap();
        let p = s.probabilities(&c.logits, &c.context);
        assert_eq!(p.len(), c.probs.len(), "{}", c.name);
        let kept: Vec<usize> = (0..p.len()).filter(|&i| p[i] > 0.0).collect();
        assert_eq!(kept, c.kept, "{}: support differs from HF", c.name);
        for (i, (a, b)) in p.iter().zip(&c.probs).enumerate() {
            assert!((a - b).abs() <= 1e-6, "{}: p[{i}] = {a}, HF {b}", c.name);
        }
        let total: f32 = p.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "{}: sum {total}", c.name);
    }
}

#[test]
fn greedy_matches_hf_argmax() {
    for c in cases() {
        let mut s = Sampler::new(params(&c, false, 0)).unwrap();
        let mut l = c.logits.clone();
        assert_eq!(s.sample(&mut l, &c.context), c.greedy, "{}", c.name);
        // The probabilities of a greedy sampler are one-hot at the same id.
        let p = s.probabilities(&c.logits, &c.context);
        assert_eq!(p[c.greedy as usize], 1.0, "{}", c.name);
        assert_eq!(p.iter().filter(|&&x| x != 0.0).count(), 1, "{}", c.name);
    }
}

#[test]
fn draws_stay_in_support_and_match_frequencies() {
    for c in cases().iter().filter(|c| c.kept.len() > 1) {
        let mut s = Sampler::new(params(c, true, 42)).unwrap();
        let n = 20_000;
        let mut counts = vec![0usize; c.logits.len()];
        for _ in 0..n {
            let mut l = c.logits.clone();
            let id = s.sample(&mut l, &c.context) as usize;
            assert!(c.kept.contains(&id), "{}: drew removed id {id}", c.name);
            counts[id] += 1;
        }
        let max_diff =
            counts.iter().zip(&c.probs).map(|(&k, &p)| (k as f64 / n as f64 - p as f64).abs()).fold(0.0, f64::max);
        assert!(max_diff < 0.02, "{}: max |freq - p| = {max_diff}", c.name);
    }
}

#[test]
fn frequencies_detect_a_wrong_distribution() {
    // The frequency check can fail: draws from a uniform [0.5, 0.5] are far from [0.9, 0.1].
    let mut s = Sampler::new(sampling(1.0, 0, 1.0, 1)).unwrap();
    let logits = [0.0f32, 0.0];
    let n = 20_000;
    let ones = (0..n).filter(|_| s.sample(&mut logits.clone(), &[]) == 1).count();
    let f = ones as f64 / n as f64;
    assert!((f - 0.5).abs() < 0.02, "uniform pair gave {f}");
    assert!((f - 0.1).abs() > 0.02);
}

#[test]
fn same_seed_same_ids_different_seed_different_ids() {
    let logits: Vec<f32> = (0..500).map(|i| ((i * 37 % 101) as f32) / 20.0).collect();
    let run = |seed: u64| -> Vec<u32> {
        let mut s = Sampler::new(sampling(1.0, 0, 0.95, seed)).unwrap();
        (0..200).map(|_| s.sample(&mut logits.clone(), &[])).collect()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn greedy_ties_lowest_index() {
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(s.sample(&mut [1.0, 5.0, 2.0, 5.0, 5.0], &[]), 1);
    assert_eq!(s.sample(&mut [7.0, 7.0], &[]), 0);
    // A vanishing temperature is greedy even with do_sample.
    let mut t0 = Sampler::new(sampling(0.0, 0, 1.0, 3)).unwrap();
    for _ in 0..50 {
        assert_eq!(t0.sample(&mut [0.0, 3.0, 1.0, 3.0, 2.9], &[]), 1);
    }
}

#[test]
fn repetition_penalty_applies_once_per_id_in_place() {
    let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() }).unwrap();
    let mut l = [4.0f32, -1.0, 3.0, 0.0];
    // id 0 appears three times: still divided only once; id 1 negative: multiplied.
    let id = s.sample(&mut l, &[0, 0, 0, 1, 9_999_999]);
    assert_eq!(l, [2.0, -2.0, 3.0, 0.0]);
    assert_eq!(id, 2);
}

#[test]
fn padding_rows_are_masked() {
    let v = 151_936; // Qwen-7B embedding rows
    let mut logits = vec![0.0f32; v];
    logits[151_900] = 100.0; // padding row: must never be chosen
    logits[151_000] = 50.0;
    logits[VOCAB_LEN as usize - 1] = 10.0;
    let mut g = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(g.sample(&mut logits.clone(), &[]), 151_000);
    let mut s = Sampler::new(sampling(100.0, 0, 1.0, 5)).unwrap();
    for _ in 0..200 {
        assert!(s.sample(&mut logits.clone(), &[]) < VOCAB_LEN);
    }
    let p = s.probabilities(&logits, &[]);
    assert!(p[VOCAB_LEN as usize..].iter().all(|&x| x == 0.0));
    // An exactly-VOCAB_LEN vector is not touched.
    let mut small = vec![0.0f32; VOCAB_LEN as usize];
    small[VOCAB_LEN as usize - 1] = 1.0;
    assert_eq!(g.sample(&mut small, &[]), VOCAB_LEN - 1);
}

#[test]
fn non_finite_logits_do_not_panic() {
    let mut g = Sampler::new(SamplingParams::greedy()).unwrap();
    let mut s = Sampler::new(sampling(0.8, 3, 0.9, 11)).unwrap();
    // NaN counts as -inf.
    assert_eq!(g.sample(&mut [f32::NAN, 1.0, f32::NAN], &[]), 1);
    assert_eq!(s.sample(&mut [f32::NAN, 1.0, f32::NAN], &[]), 1);
    // All -inf / NaN → id 0.
    let all_bad = [f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY];
    assert_eq!(g.sample(&mut all_bad.clone(), &[]), 0);
    assert_eq!(s.sample(&mut all_bad.clone(), &[]), 0);
    // +inf wins (and shares the mass with other +inf entries).
    assert_eq!(g.sample(&mut [0.0, f32::INFINITY, 3.0], &[]), 1);
    for _ in 0..20 {
        let id = s.sample(&mut [0.0, f32::INFINITY, 3.0, f32::INFINITY], &[]);
        assert!(id == 1 || id == 3);
    }
    // Empty logits.
    assert_eq!(s.sample(&mut [], &[]), 0);
}

#[test]
fn from_generation_config_and_validation() {
    let g = qwen_rt::config::GenerationConfig {
        do_sample: true,
        top_p: 0.8,
        top_k: 0,
        repetition_penalty: 1.1,
        ..Default::default()
    };
    let p = SamplingParams::from_generation_config(&g, 9);
    assert_eq!(
        p,
        SamplingParams { do_sample: true, temperature: 1.0, top_k: 0, top_p: 0.8, repetition_penalty: 1.1, seed: 9 }
    );
    assert!(Sampler::new(p).is_ok());
    assert_eq!(Sampler::new(SamplingParams::greedy()).unwrap().params(), &SamplingParams::greedy());

    let bad = [
        (SamplingParams { temperature: -0.1, ..SamplingParams::greedy() }, "temperature"),
        (SamplingParams { temperature: f32::NAN, ..SamplingParams::greedy() }, "temperature"),
        (SamplingParams { top_p: 0.0, ..SamplingParams::greedy() }, "top_p"),
        (SamplingParams { top_p: 1.5, ..SamplingParams::greedy() }, "top_p"),
        (SamplingParams { top_p: f32::NAN, ..SamplingParams::greedy() }, "top_p"),
        (SamplingParams { repetition_penalty: 0.0, ..SamplingParams::greedy() }, "repetition_penalty"),
        (SamplingParams { repetition_penalty: -1.0, ..SamplingParams::greedy() }, "repetition_penalty"),
        (SamplingParams { repetition_penalty: f32::NAN, ..SamplingParams::greedy() }, "repetition_penalty"),
    ];
    for (p, name) in bad {
        let e = match Sampler::new(p.clone()) {
            Ok(_) => panic!("{p:?} accepted"),
            Err(e) => e,
        };
        assert!(matches!(e, qwen_rt::Error::InvalidArgument(_)), "{e:?}");
        assert!(e.to_string().contains(name), "{e} does not name {name}");
    }
}
