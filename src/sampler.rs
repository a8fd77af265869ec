//! Place in the flow: backend → **sampler** → chat → generate; the host sampling pipeline, driven by
//! `generate` (the backends get only its parameters and uniform draw).
//! Next-token selection with Hugging Face semantics (spec §5.6).
//!
//! Pipeline on the logits of the last position (`[V]`), in HF's order:
//! 0. ids >= `tokenizer::VOCAB_LEN` (embedding padding rows, only when V > 151851) → -inf;
//!    NaN → -inf (a runtime deviation: HF would propagate NaN).
//! 1. repetition penalty (if ≠ 1) over every distinct id of prompt + output: logit < 0 → ×p, else ÷p;
//! 2. greedy (`do_sample == false`): argmax, lowest index on ties. Otherwise:
//! 3. temperature (if ≠ 1); a temperature below 1e-5 (incl. 0) is treated as greedy (HF would reject 0);
//! 4. top-k (if ≠ 0): drop ids whose logit is < the k-th largest (ties with the k-th are kept, as HF);
//! 5. top-p (if < 1): sort ascending, drop ids whose ascending cumulative probability ≤ 1 − top_p,
//!    always keep the largest (HF `TopPLogitsWarper`, `min_tokens_to_keep=1`);
//! 6. softmax, multinomial draw with a seeded xoshiro256** (same seed → same ids).
//!
//! Non-finite logits never panic: NaN counts as -inf; +inf entries share all the probability mass
//! equally; if every logit is -inf (or NaN) the sampler returns id 0.
pub use crate::config::SamplingParams;
use crate::error::Result;
use crate::tokenizer::VOCAB_LEN;

pub struct Sampler {
    params: SamplingParams,
    rng: Xoshiro256,
}

impl Sampler {
    /// Errors (`Error::InvalidArgument`) name the offending parameter.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = Xoshiro256::new(params.seed);
        Ok(Sampler { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// logits: [V] of the last position, modified in place (removed ids become -inf);
    /// context: every id of prompt + output so far.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        if logits.is_empty() {
            return 0;
        }
        let u = if self.params.is_greedy() { 0.0 } else { self.next_uniform() };
        self.sample_with(logits, context, u)
    }

    /// `sample` with its uniform draw `u` in [0, 1) already taken (`next_uniform`; ignored when
    /// greedy): the host half of a step whose draw was made before the forward pass
    /// (`generate::next_token`), so a seed gives the same ids whether the device or the host samples.
    pub fn sample_with(&self, logits: &mut [f32], context: &[u32], u: f64) -> u32 {
        if logits.is_empty() {
            return 0;
        }
        self.process(logits, context);
        if self.params.is_greedy() {
            return argmax(logits) as u32;
        }
        let probs = softmax(logits);
        // Walk the cumulative distribution in id order.
        let mut acc = 0.0f64;
        let mut last_kept = None;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                acc += p as f64;
                last_kept = Some(i);
                if u < acc {
                    return i as u32;
                }
            }
        }
        // Rounding left `acc` a hair below 1 (or nothing had mass): the last kept id, else 0.
        last_kept.unwrap_or(0) as u32
    }

    /// The uniform draw in [0, 1) (53 random bits) that `sample` takes for a non-greedy step, advancing
    /// the generator the same way. The GPU path draws `u` here and walks the distribution on the device,
    /// so a seed gives the same ids on either path.
    pub fn next_uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True when `sample` reduces to argmax and draws no random number.
    pub fn is_greedy(&self) -> bool {
        self.params.is_greedy()
    }

    /// The distribution `sample` draws from: the pipeline up to the softmax ([V], zeros for removed ids).
    /// For greedy parameters a one-hot vector at the argmax.
    pub fn probabilities(&self, logits: &[f32], context: &[u32]) -> Vec<f32> {
        let mut l = logits.to_vec();
        if l.is_empty() {
            return l;
        }
        self.process(&mut l, context);
        if self.params.is_greedy() {
            let mut p = vec![0.0; l.len()];
            p[argmax(&l)] = 1.0;
            return p;
        }
        softmax(&l)
    }

    /// Steps 0–5 of the pipeline, in place. For greedy parameters only steps 0–1.
    fn process(&self, logits: &mut [f32], context: &[u32]) {
        let p = &self.params;
        // 0. NaN and padding rows.
        for x in logits.iter_mut() {
            if x.is_nan() {
                *x = f32::NEG_INFINITY;
            }
        }
        if logits.len() > VOCAB_LEN as usize {
            logits[VOCAB_LEN as usize..].fill(f32::NEG_INFINITY);
        }
        // 1. Repetition penalty, once per distinct id.
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &id in context {
                let i = id as usize;
                if i < logits.len() && !seen[i] {
                    seen[i] = true;
                    let x = logits[i];
                    logits[i] = if x < 0.0 { x * p.repetition_penalty } else { x / p.repetition_penalty };
                }
            }
        }
        if p.is_greedy() {
            return;
        }
        // 3. Temperature.
        if p.temperature != 1.0 {
            for x in logits.iter_mut() {
                *x /= p.temperature;
            }
        }
        // 4. Top-k: keep logits >= the k-th largest.
        if p.top_k != 0 && p.top_k < logits.len() {
            let mut tmp = logits.to_vec();
            let k = p.top_k;
            // Descending by value; the element at k-1 is the k-th largest.
            let (_, kth, _) = tmp.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let kth = *kth;
            for x in logits.iter_mut() {
                if *x < kth {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        // 5. Top-p.
        if p.top_p < 1.0 {
            top_p_filter(logits, p.top_p);
        }
    }
}

/// How many of the largest candidates top-p sorts when the rest can be dropped wholesale.
const TOP_P_HEAD: usize = 2048;

/// HF `TopPLogitsWarper` with `min_tokens_to_keep=1`: ascending order by (logit, id) — torch's stable
/// sort — removing every id whose ascending cumulative probability is ≤ 1 − top_p, the last one always kept.
/// Ids already at -inf have probability 0 and sort first, so they are removed anyway and skipped here.
/// Fast path: only the `TOP_P_HEAD` largest are sorted when the mass of all the others is itself ≤ 1 − top_p
/// (then every one of them is removed; the head's walk starts from that mass). The cumulative sum is
/// accumulated in f64 and compared in f32, as torch's CPU cumsum does.
fn top_p_filter(logits: &mut [f32], top_p: f32) {
    let probs = softmax(logits); // [V]
                                 // [n] order keys of the ids with probability > 0 or a finite logit.
    let mut keys: Vec<u64> = logits
        .iter()
        .enumerate()
        .filter(|(_, &x)| x > f32::NEG_INFINITY)
        .map(|(i, &x)| sort_key(x, i as u32))
        .collect();
    let n = keys.len();
    if n == 0 {
        return;
    }
    let threshold = (1.0 - top_p as f64) as f32;
    let mut cum = 0.0f64;
    let mut start = 0;
    if n > TOP_P_HEAD {
        let split = n - TOP_P_HEAD;
        keys.select_nth_unstable(split);
        let rest: f64 = keys[..split].iter().map(|&k| probs[key_id(k)] as f64).sum();
        if rest as f32 <= threshold {
            for &k in &keys[..split] {
                logits[key_id(k)] = f32::NEG_INFINITY;
            }
            cum = rest;
            start = split;
        }
    }
    let walk = &mut keys[start..];
    walk.sort_unstable();
    let last = walk.len() - 1;
    for (j, &k) in walk.iter().enumerate() {
        cum += probs[key_id(k)] as f64;
        if j == last || cum as f32 > threshold {
            break;
        }
        logits[key_id(k)] = f32::NEG_INFINITY;
    }
}

/// u64 whose ascending order is ascending (logit, id), with -0.0 == +0.0 as torch compares.
fn sort_key(x: f32, id: u32) -> u64 {
    let b = (x + 0.0).to_bits(); // -0.0 + 0.0 = +0.0
    let ord = if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 };
    ((ord as u64) << 32) | id as u64
}

fn key_id(k: u64) -> usize {
    (k & 0xffff_ffff) as usize
}

/// Softmax as torch does (subtract the max, exp, divide by the sum). All -inf → all zeros;
/// any +inf → the +inf entries share the mass equally.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; logits.len()];
    }
    if max == f32::INFINITY {
        let n = logits.iter().filter(|&&x| x == f32::INFINITY).count() as f32;
        return logits.iter().map(|&x| if x == f32::INFINITY { 1.0 / n } else { 0.0 }).collect();
    }
    let mut out: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum = out.iter().map(|&x| x as f64).sum::<f64>() as f32; // f64: V terms, no drift
    for x in out.iter_mut() {
        *x /= sum;
    }
    out
}

/// Index of the largest logit, lowest index on ties; NaN never wins; 0 for an all -inf/NaN vector.
fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        if x > best_v {
            best = i;
            best_v = x;
        }
    }
    best
}

/// xoshiro256** (Blackman & Vigna), seeded through splitmix64.
struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Xoshiro256 { s: [next(), next(), next(), next()] }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
}
