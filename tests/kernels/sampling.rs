//! `sample_{mark,process,draw,greedy}_f32` and the multi-block top-p path (`sample_{prep,exp,cut,walk}_f32`)
//! through `launch::sample` vs `sampler::Sampler`: the distribution the GPU writes against
//! `Sampler::probabilities`, the id against the CPU's walk (the loop of `Sampler::sample`) over the CPU
//! distribution with the same u. Logits are f32 end to end (no dtype rounding), so both sides see
//! identical inputs. `check_case` runs every case on both draw paths when top_k is 0 (the multi-block
//! one sums Z and the search masses as fixed-point integers, ~1e-9 relative, and each block's mass of
//! 1024 p in f64: within the bounds below).
//!
//! Tolerances (`check_probs`): p = expf(x - max) / Z. The GPU's expf is within 2 ulp, the f32 division
//! 0.5 ulp, and Z is summed in a different order (per-thread f32 partials of ≤ 149 terms combined in
//! f64: relative error ~1e-7 worst case) → relative error ≲ 4e-7; rtol 1e-5 leaves a 25x margin.
//! atol 1e-30 only covers denormal probabilities. The kept set may differ only at the cut: either a
//! tie straddling it (HF splits ties by id, the GPU keeps or drops them together) or a cumulative
//! mass within ~1e-7 of 1 - top_p (different summation order). Such an id must be the smallest kept
//! value on the side that kept it; its mass m renormalises every other probability by ≤ m, so rtol
//! grows by 2m for that case.
//!
//! Draws: ids are compared where u is at least DRAW_MARGIN + 2m from every cumulative boundary of the
//! CPU distribution. The GPU's cumulative at an id differs from the CPU's by the p differences
//! (≲ 4e-7 relative, ≲ 4e-7 absolute summed) plus the f32 segment sums (≤ 256 terms each, combined in
//! f64: ~1e-8 typical, ~1e-6 worst case), so 2e-6 is safe; the looser 1e-5 would leave too few draws
//! to compare at V = 151936, where neighbouring boundaries are ~1e-5 apart.
use crate::common::*;
use qwen_rt::backend::cuda::device::Gpu;
use qwen_rt::backend::cuda::launch::{self, SampleDraw, SampleParams};
use qwen_rt::sampler::{Sampler, SamplingParams};
use qwen_rt::tokenizer::VOCAB_LEN;

/// The real vocabulary rows (with 85 padding rows past VOCAB_LEN = 151851).
const V_FULL: usize = 151936;
/// Uniform draws tried on each case: both ends, the middle, and near 1 (the rounding fallback).
/// See the module doc.
const DRAW_MARGIN: f64 = 2e-6;
const US: [f64; 8] = [0.0, 0.03, 0.25, 0.5, 0.61, 0.9, 0.995, 0.999_999_9];

struct GpuOut {
    probs: Vec<f32>,
    id: u32,
}

/// One `launch::sample` on the default (run 4's) path on fresh buffers: see `run_on`.
fn run(gpu: &Gpu, logits: &[f32], ctx: &[u32], p: &SamplingParams, u: f64) -> GpuOut {
    run_on(gpu, SampleDraw::for_params(launch::SamplerPath::Run4, p, logits.len()), logits, ctx, p, u)
}

/// One `launch::sample` on fresh buffers: logits uploaded as they are, the flag workspace zeroed
/// (as the executor does once), probs and out_id poisoned (NaN / 0xFFFFFFFF). Asserts the flags and
/// the ticket counter are zero again afterwards (the launcher's contract).
fn run_on(gpu: &Gpu, draw: SampleDraw, logits: &[f32], ctx: &[u32], p: &SamplingParams, u: f64) -> GpuOut {
    let v = logits.len();
    let l = upload_f32(gpu, logits);
    let ctx_buf = upload_u32(gpu, ctx);
    let wbytes = launch::sample_workspace_bytes(v);
    let flags = gpu.alloc(wbytes).expect("alloc flags");
    gpu.memset(&gpu.stream, flags.ptr(), 0, wbytes).expect("zero flags");
    let probs = poisoned(gpu, v * 4);
    let out = poisoned(gpu, 4);
    let params = SampleParams {
        logits: l.slice(),
        v,
        vocab_len: VOCAB_LEN as usize,
        flags: flags.slice(),
        ctx_ids: ctx_buf.slice(),
        n_ctx: ctx.len(),
        probs: probs.slice(),
        out_id: out.slice(),
        ..Default::default()
    };
    launch::sample(gpu, &gpu.stream, draw, &params, p, u).expect("launch::sample");
    let probs = read_f32(gpu, probs.slice(), v);
    let id = read_u32(gpu, out.slice(), 1)[0];
    let fl = gpu.read::<u8>(flags.ptr(), wbytes).expect("read flags");
    assert!(fl[..v].iter().all(|&b| b == 0), "the penalty flags are not clean after the call");
    let c = launch::sample_counter_offset(v);
    assert!(fl[c..c + 4].iter().all(|&b| b == 0), "the greedy ticket counter is not zero after the call");
    GpuOut { probs, id }
}

fn cpu_probs(logits: &[f32], ctx: &[u32], p: &SamplingParams) -> Vec<f32> {
    Sampler::new(p.clone()).expect("valid params").probabilities(logits, ctx)
}

/// The walk of `Sampler::sample` over `probs` with `u`: (id, distance from u to the nearest
/// cumulative boundary, 0 included).
fn cpu_walk(probs: &[f32], u: f64) -> (u32, f64) {
    let mut acc = 0.0f64;
    let mut margin = u.abs();
    let mut last_kept = None;
    let mut found = None;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p as f64;
            margin = margin.min((u - acc).abs());
            last_kept = Some(i);
            if found.is_none() && u < acc {
                found = Some(i);
            }
        }
    }
    (found.or(last_kept).unwrap_or(0) as u32, margin)
}

/// Compare the GPU distribution with the CPU one (see the module doc); returns the mass of the ids
/// kept on one side only and those ids.
fn check_probs(what: &str, got: &[f32], want: &[f32]) -> (f64, Vec<usize>) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|x| !x.is_finite() || *x < 0.0) {
        panic!("{what}: probs[{i}] = {} (unwritten or invalid)", got[i]);
    }
    let min_pos = |x: &[f32]| x.iter().copied().filter(|&p| p > 0.0).fold(f32::INFINITY, f32::min);
    let (gmin, wmin) = (min_pos(got), min_pos(want));
    let mut diff = Vec::new();
    let mut mass = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if (g > 0.0) != (w > 0.0) {
            let (val, side_min) = if g > 0.0 { (g, gmin) } else { (w, wmin) };
            assert!(
                val <= 1e-30 || val <= side_min * 1.001,
                "{what}: id {i} kept on one side only (gpu {g}, cpu {w}) and it is not at the cut \
                 (smallest kept: gpu {gmin}, cpu {wmin})"
            );
            diff.push(i);
            mass += val as f64;
        }
    }
    assert!(diff.len() <= 16, "{what}: {} ids kept on one side only: {:?}", diff.len(), &diff[..16]);
    if !diff.is_empty() {
        eprintln!("{what}: ids kept on one side only (at the cut): {diff:?}, mass {mass:.3e}");
    }
    let keep =
        |x: &[f32]| -> Vec<f32> { x.iter().enumerate().filter(|(i, _)| !diff.contains(i)).map(|(_, &p)| p).collect() };
    assert_close(what, &keep(got), &keep(want), 1e-30, 1e-5 + 2.0 * mass as f32);
    let total: f64 = got.iter().map(|&p| p as f64).sum();
    let want_total: f64 = want.iter().map(|&p| p as f64).sum();
    assert!((total - want_total).abs() <= 1e-5, "{what}: GPU mass {total}, CPU mass {want_total}");
    (mass, diff)
}

/// Run `logits` through the GPU with each u of `us`, on every draw path that can take `p` (the
/// multi-block top-p kernels and the one-block draw when top_k is 0): the distribution against the
/// CPU every time, the id against the CPU walk where u is clear of a boundary. Returns how many
/// draws were compared.
fn check_case(gpu: &Gpu, what: &str, logits: &[f32], ctx: &[u32], p: &SamplingParams, us: &[f64]) -> usize {
    let want = cpu_probs(logits, ctx, p);
    let mut compared = 0;
    for (draw, &u) in SampleDraw::all_for(p, logits.len()).into_iter().flat_map(|d| us.iter().map(move |u| (d, u))) {
        let out = run_on(gpu, draw, logits, ctx, p, u);
        let w = format!("{what} {draw:?} u={u}");
        let (mass, diff) = check_probs(&w, &out.probs, &want);
        assert!((out.id as usize) < logits.len(), "{w}: id {} out of range", out.id);
        let (cpu_id, margin) = cpu_walk(&want, u);
        // The id must carry mass on the CPU side too (or sit at a disputed cut), whatever u is.
        let some_mass = want.iter().any(|&x| x > 0.0);
        if some_mass {
            assert!(
                want[out.id as usize] > 0.0 || diff.contains(&(out.id as usize)),
                "{w}: GPU id {} has CPU probability 0",
                out.id
            );
        }
        if margin < DRAW_MARGIN + 2.0 * mass {
            eprintln!("{w}: u is {margin:.2e} from a cumulative boundary; id not compared");
            continue;
        }
        assert_eq!(out.id, cpu_id, "{w}: GPU id {} CPU walk id {cpu_id} (margin {margin:.2e})", out.id);
        compared += 1;
    }
    compared
}

fn sampling(temperature: f32, top_k: usize, top_p: f32, repetition_penalty: f32) -> SamplingParams {
    SamplingParams { do_sample: true, temperature, top_k, top_p, repetition_penalty, seed: 7 }
}

/// Qwen-7B(-Chat)'s generation_config.json: top_p 0.8, top_k 0, repetition_penalty 1.1, temperature 1.
fn qwen_defaults() -> SamplingParams {
    sampling(1.0, 0, 0.8, 1.1)
}

/// Random logits in [-scale, scale) plus a few large ones (an LLM-like head), in the real rows.
fn peaked(v: usize, seed: u64) -> Vec<f32> {
    let mut l = rand_vec(v, seed, 3.0);
    let n = v.min(VOCAB_LEN as usize);
    for (j, b) in rand_vec(12, seed + 100, 1.0).iter().enumerate() {
        l[(j * 7919 + seed as usize * 31) % n] = 9.0 + 3.0 * b;
    }
    l
}

/// Context of prompt + output: ids repeated (penalised once), and some ids >= V (ignored).
fn context(v: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut c: Vec<u32> = (0..n as u64).map(|i| ((i * 7919 + seed * 104729) % v as u64) as u32).collect();
    let dup: Vec<u32> = c.iter().step_by(3).copied().collect();
    c.extend(dup.iter().chain(dup.iter()));
    c.push(v as u32 + 5);
    c.push(u32::MAX);
    c
}

#[test]
fn sampling_greedy_matches_cpu() {
    let Some(gpu) = gpu("sampling_greedy_matches_cpu") else { return };
    let greedy = SamplingParams::greedy();
    let mut cold = sampling(0.0, 0, 1.0, 1.0); // temperature < 1e-5 is greedy too
    cold.do_sample = true;
    let pen = SamplingParams { repetition_penalty: 1.3, ..SamplingParams::greedy() };
    for (v, scale) in [(1usize, 1.0f32), (7, 1.0), (127, 2.0), (512, 4.0), (V_FULL, 8.0)] {
        let mut logits = rand_vec(v, v as u64, scale);
        if v > 100 {
            // A tie at the top: the lower id must win.
            logits[v / 2] = 50.0;
            logits[v / 3] = 50.0;
        }
        let ctx = context(v, 40, 3);
        for (name, p) in [("greedy", &greedy), ("t=0", &cold), ("penalty 1.3", &pen)] {
            let want = cpu_probs(&logits, &ctx, p);
            let out = run(&gpu, &logits, &ctx, p, 0.5);
            let what = format!("sampling greedy {name} V{v}");
            // Exact (a one-hot); atol > 0 only because assert_close divides by the tolerance.
            assert_close(&what, &out.probs, &want, 1e-30, 0.0);
            let cpu_id = want.iter().position(|&x| x == 1.0).unwrap() as u32;
            assert_eq!(out.id, cpu_id, "{what}: GPU id vs CPU argmax");
            if v > 100 && p.repetition_penalty == 1.0 {
                assert_eq!(out.id, (v / 3) as u32, "{what}: ties go to the lowest id");
            }
        }
    }
}

#[test]
fn sampling_qwen_defaults_match_cpu() {
    let Some(gpu) = gpu("sampling_qwen_defaults_match_cpu") else { return };
    let p = qwen_defaults();
    let mut compared = 0;
    for v in [512usize, V_FULL] {
        let ctx = context(v, 300, 5);
        compared += check_case(&gpu, &format!("qwen defaults peaked V{v}"), &peaked(v, 11), &ctx, &p, &US);
        compared += check_case(&gpu, &format!("qwen defaults flat V{v}"), &rand_vec(v, 12, 8.0), &ctx, &p, &US);
    }
    assert!(compared >= 16, "only {compared} of 32 draws were clear of a boundary");
}

#[test]
fn sampling_top_k_matches_cpu() {
    let Some(gpu) = gpu("sampling_top_k_matches_cpu") else { return };
    for v in [7usize, 512, V_FULL] {
        let logits = rand_vec(v, 21 + v as u64, 6.0);
        for k in [1usize, 5, 50, 600] {
            let p = sampling(1.0, k, 1.0, 1.0);
            let what = format!("top_k {k} V{v}");
            check_case(&gpu, &what, &logits, &[], &p, &US);
            // Top-k alone involves no sums: the kept set must be exactly the CPU's.
            let got = run(&gpu, &logits, &[], &p, 0.5).probs;
            let want = cpu_probs(&logits, &[], &p);
            let kept = |x: &[f32]| -> Vec<usize> { (0..x.len()).filter(|&i| x[i] > 0.0).collect() };
            assert_eq!(kept(&got), kept(&want), "{what}: kept set");
            assert!(kept(&want).len() >= k.min(v), "{what}: fewer than k kept");
        }
    }
}

#[test]
fn sampling_top_k_ties_with_kth_are_kept() {
    let Some(gpu) = gpu("sampling_top_k_ties_with_kth_are_kept") else { return };
    let mut logits = rand_vec(512, 31, 1.0);
    for i in [3usize, 100, 200, 300, 400] {
        logits[i] = 5.0; // five-way tie at the top
    }
    for k in [1usize, 3, 5, 6] {
        let p = sampling(1.0, k, 1.0, 1.0);
        let what = format!("top_k {k} with a 5-way tie");
        check_case(&gpu, &what, &logits, &[], &p, &US);
        let kept = run(&gpu, &logits, &[], &p, 0.5).probs.iter().filter(|&&x| x > 0.0).count();
        assert_eq!(kept, k.max(5), "{what}: ties with the k-th are kept");
    }
}

#[test]
fn sampling_top_p_matches_cpu() {
    let Some(gpu) = gpu("sampling_top_p_matches_cpu") else { return };
    for v in [7usize, 512, V_FULL] {
        for (name, logits) in [("peaked", peaked(v, 41)), ("flat", rand_vec(v, 42, 6.0))] {
            for top_p in [0.5f32, 0.95, 1.0, 0.01] {
                let p = sampling(1.0, 0, top_p, 1.0);
                check_case(&gpu, &format!("top_p {top_p} {name} V{v}"), &logits, &[], &p, &US);
            }
        }
    }
}

#[test]
fn sampling_temperature_matches_cpu() {
    let Some(gpu) = gpu("sampling_temperature_matches_cpu") else { return };
    for v in [512usize, V_FULL] {
        let logits = peaked(v, 51);
        for t in [0.7f32, 1.3, 1e-3] {
            for (top_k, top_p) in [(0usize, 1.0f32), (0, 0.9), (40, 0.8)] {
                let p = sampling(t, top_k, top_p, 1.0);
                check_case(&gpu, &format!("temperature {t} top_k {top_k} top_p {top_p} V{v}"), &logits, &[], &p, &US);
            }
        }
    }
}

#[test]
fn sampling_combined_matches_cpu() {
    let Some(gpu) = gpu("sampling_combined_matches_cpu") else { return };
    // HF's all_combined-like case and a penalty < 1 (a reward), at both vocab sizes.
    for v in [512usize, V_FULL] {
        let ctx = context(v, 500, 61);
        let logits = peaked(v, 62);
        for p in [sampling(0.8, 40, 0.9, 1.3), sampling(1.2, 100, 0.95, 0.7), sampling(0.5, 0, 0.7, 1.2)] {
            let what = format!("combined t{} k{} p{} r{} V{v}", p.temperature, p.top_k, p.top_p, p.repetition_penalty);
            check_case(&gpu, &what, &logits, &ctx, &p, &US);
        }
    }
}

#[test]
fn sampling_repetition_penalty_applies_once_per_id() {
    let Some(gpu) = gpu("sampling_repetition_penalty_applies_once_per_id") else { return };
    let v = 512;
    // Every context id appears 5 times; logits of both signs among them.
    let logits = rand_vec(v, 71, 4.0);
    let base: Vec<u32> = (0..60u32).map(|i| i * 8 + 1).collect();
    let ctx: Vec<u32> = (0..5).flat_map(|_| base.iter().copied()).collect();
    for pen in [1.5f32, 0.6] {
        for p in [sampling(1.0, 0, 1.0, pen), SamplingParams { repetition_penalty: pen, ..SamplingParams::greedy() }] {
            let what = format!("penalty {pen} do_sample {} (5x duplicated context)", p.do_sample);
            check_case(&gpu, &what, &logits, &ctx, &p, &US[..3]);
        }
        // Against the same context without duplicates: the same distribution (penalised once).
        let p = sampling(1.0, 0, 1.0, pen);
        let once = cpu_probs(&logits, &base, &p);
        let got = run(&gpu, &logits, &ctx, &p, 0.5).probs;
        check_probs(&format!("penalty {pen}: duplicated context vs distinct ids"), &got, &once);
    }
}

#[test]
fn sampling_padding_rows_masked() {
    let Some(gpu) = gpu("sampling_padding_rows_masked") else { return };
    let mut logits = rand_vec(V_FULL, 81, 4.0);
    for (j, x) in logits[VOCAB_LEN as usize..].iter_mut().enumerate() {
        *x = if j % 3 == 0 { f32::NAN } else { 100.0 }; // would win everything if not masked
    }
    let ctx = vec![VOCAB_LEN + 2, VOCAB_LEN + 2, 17];
    for p in [SamplingParams::greedy(), qwen_defaults(), sampling(0.7, 50, 1.0, 1.0)] {
        let what = format!("padding masked do_sample {} top_k {}", p.do_sample, p.top_k);
        check_case(&gpu, &what, &logits, &ctx, &p, &US[..4]);
        let out = run(&gpu, &logits, &ctx, &p, 0.999_999);
        assert!(out.id < VOCAB_LEN, "{what}: id {} is a padding row", out.id);
        assert!(out.probs[VOCAB_LEN as usize..].iter().all(|&x| x == 0.0), "{what}: padding rows carry mass");
    }
}

#[test]
fn sampling_non_finite_logits() {
    let Some(gpu) = gpu("sampling_non_finite_logits") else { return };
    let v = 512;
    let params = [
        ("greedy", SamplingParams::greedy()),
        ("qwen", qwen_defaults()),
        ("plain", sampling(1.0, 0, 1.0, 1.0)),
        ("top_k 3 t0.7", sampling(0.7, 3, 1.0, 1.0)),
    ];
    let base = rand_vec(v, 91, 5.0);
    // NaN scattered: they count as -inf.
    let mut nan = base.clone();
    for i in (0..v).step_by(17) {
        nan[i] = f32::NAN;
    }
    // One +inf: it takes all the mass.
    let mut one_inf = base.clone();
    one_inf[200] = f32::INFINITY;
    // Two +inf (and a NaN, a -inf): half each (top_p 0.8 keeps both: 0.5 > 1 - 0.8).
    let mut two_inf = base.clone();
    two_inf[10] = f32::INFINITY;
    two_inf[300] = f32::INFINITY;
    two_inf[5] = f32::NAN;
    two_inf[6] = f32::NEG_INFINITY;
    // -inf almost everywhere: only the finite ones remain.
    let mut sparse = vec![f32::NEG_INFINITY; v];
    sparse[3] = 1.0;
    sparse[400] = 2.0;
    sparse[401] = f32::NAN;
    let all_neg_inf = vec![f32::NEG_INFINITY; v];
    let all_nan = vec![f32::NAN; v];
    let mut huge = base.clone(); // x / 1e-3 overflows to +inf on both sides
    huge[77] = 3.0e38;
    for (lname, logits) in [
        ("NaN", &nan),
        ("one +inf", &one_inf),
        ("two +inf", &two_inf),
        ("sparse", &sparse),
        ("all -inf", &all_neg_inf),
        ("all NaN", &all_nan),
        ("huge", &huge),
    ] {
        for (pname, p) in &params {
            check_case(&gpu, &format!("{lname} {pname}"), logits, &[1, 2, 3], p, &US);
        }
        check_case(&gpu, &format!("{lname} t=1e-3"), logits, &[], &sampling(1e-3, 0, 0.9, 1.0), &US);
    }
    // Explicit expectations, not only agreement with the CPU.
    let qwen = qwen_defaults();
    let out = run(&gpu, &one_inf, &[], &qwen, 0.3);
    assert_eq!((out.id, out.probs[200]), (200, 1.0), "one +inf");
    let out = run(&gpu, &two_inf, &[], &qwen, 0.7);
    assert_eq!((out.id, out.probs[10], out.probs[300]), (300, 0.5, 0.5), "two +inf");
    for p in [&qwen, &SamplingParams::greedy()] {
        let out = run(&gpu, &all_neg_inf, &[], p, 0.3);
        assert_eq!(out.id, 0, "all -inf → id 0");
        let out = run(&gpu, &all_nan, &[], p, 0.3);
        assert_eq!(out.id, 0, "all NaN → id 0");
    }
    let out = run(&gpu, &all_neg_inf, &[], &qwen, 0.3);
    assert!(out.probs.iter().all(|&x| x == 0.0), "all -inf sampling → zero distribution");
}

#[test]
fn sampling_draw_follows_seeded_sampler() {
    let Some(gpu) = gpu("sampling_draw_follows_seeded_sampler") else { return };
    // The GPU path with u = next_uniform() picks what Sampler::sample picks with the same seed.
    for v in [512usize, V_FULL] {
        let logits = peaked(v, 101);
        let ctx = context(v, 100, 102);
        let p = SamplingParams { seed: 1234, ..qwen_defaults() };
        let mut cpu = Sampler::new(p.clone()).unwrap();
        let mut gpu_side = Sampler::new(p.clone()).unwrap();
        let want = cpu_probs(&logits, &ctx, &p);
        let mut compared = 0;
        for step in 0..12 {
            let cpu_id = cpu.sample(&mut logits.clone(), &ctx);
            let u = gpu_side.next_uniform();
            let out = run(&gpu, &logits, &ctx, &p, u);
            let (mass, _) = check_probs(&format!("seeded V{v} step {step}"), &out.probs, &want);
            let (walk_id, margin) = cpu_walk(&want, u);
            assert_eq!(walk_id, cpu_id, "next_uniform does not give Sampler::sample's u");
            if margin >= DRAW_MARGIN + 2.0 * mass {
                assert_eq!(out.id, cpu_id, "seeded V{v} step {step}: u = {u}");
                compared += 1;
            }
        }
        assert!(compared >= 8, "V{v}: only {compared} of 12 draws clear of a boundary");
    }
}

#[test]
fn sampling_hf_fixture_cases_match_cpu() {
    let Some(gpu) = gpu("sampling_hf_fixture_cases_match_cpu") else { return };
    // tests/data/sampler_cases.json: the cases the CPU sampler is checked against HF with.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sampler_cases.json"))
        .expect("tests/data/sampler_cases.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("fixture parses");
    let cases = json["cases"].as_array().expect("cases");
    assert!(cases.len() >= 12);
    for c in cases {
        let f32s = |k: &str| -> Vec<f32> {
            c[k].as_array().unwrap().iter().map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32)).collect()
        };
        let name = c["name"].as_str().unwrap();
        let logits = f32s("logits");
        let ctx: Vec<u32> = c["context"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let p = SamplingParams {
            do_sample: true,
            temperature: c["temperature"].as_f64().unwrap() as f32,
            top_k: c["top_k"].as_u64().unwrap() as usize,
            top_p: c["top_p"].as_f64().unwrap() as f32,
            repetition_penalty: c["repetition_penalty"].as_f64().unwrap() as f32,
            seed: 0,
        };
        check_case(&gpu, &format!("fixture {name}"), &logits, &ctx, &p, &US);
        let g = SamplingParams { do_sample: false, ..p };
        check_case(&gpu, &format!("fixture {name} greedy"), &logits, &ctx, &g, &US[..1]);
    }
}

#[test]
fn sampling_launcher_rejects_bad_arguments() {
    let Some(gpu) = gpu("sampling_launcher_rejects_bad_arguments") else { return };
    let v = 64;
    let l = upload_f32(&gpu, &rand_vec(v, 1, 1.0));
    // The whole workspace (flags, block results, counter, search state): the positive controls
    // below must pass on their own (H200 run 5: a [V]-byte buffer made the first one fail).
    let ws = launch::sample_workspace_bytes(v);
    let flags = gpu.alloc(ws).unwrap();
    gpu.memset(&gpu.stream, flags.ptr(), 0, ws).unwrap();
    let probs = gpu.alloc(v * 4).unwrap();
    let out = gpu.alloc(4).unwrap();
    let ctx = upload_u32(&gpu, &[1, 2]);
    let q = qwen_defaults();
    // `call_ws` with the workspace cut to `ws_bytes`; `call` with the whole of it.
    let call_ws = |ws_bytes: usize, v: usize, probs_bytes: usize, n_ctx: usize, p: &SamplingParams, u: f64| {
        let pr = probs.slice().sub(0, probs_bytes).unwrap();
        let draw = launch::SampleDraw::for_params(launch::SamplerPath::Run4, p, v);
        let params = SampleParams {
            logits: l.slice(),
            v,
            vocab_len: v,
            flags: flags.slice().sub(0, ws_bytes).unwrap(),
            ctx_ids: ctx.slice(),
            n_ctx,
            probs: pr,
            out_id: out.slice(),
            ..Default::default()
        };
        launch::sample(&gpu, &gpu.stream, draw, &params, p, u)
    };
    let call = |v: usize, probs_bytes: usize, n_ctx: usize, p: &SamplingParams, u: f64| {
        call_ws(ws, v, probs_bytes, n_ctx, p, u)
    };
    assert!(call(v, v * 4, 2, &q, 0.5).is_ok());
    assert!(call(0, v * 4, 2, &q, 0.5).is_err(), "V = 0");
    assert!(call(v, v * 4 - 4, 2, &q, 0.5).is_err(), "probs too small");
    assert!(call(v, v * 4, 3, &q, 0.5).is_err(), "ctx_ids too small");
    assert!(call(v, v * 4, 2, &q, 1.0).is_err(), "u = 1");
    assert!(call(v, v * 4, 2, &sampling(1.0, 0, 0.0, 1.0), 0.5).is_err(), "top_p = 0");
    assert!(call(v, v * 4, 2, &SamplingParams::greedy(), 1.0).is_ok(), "u is ignored when greedy");
    assert!(call_ws(ws - 1, v, v * 4, 2, &q, 0.5).is_err(), "workspace too small");
    gpu.sync().unwrap();
}
