//! Place in the flow: sampler → chat → **generate** → engine; the generation loop (prefill, sample,
//! decode, stop) on one sequence, and the one place that draws the next id (`next_token`): the
//! `Sampler` (host pipeline + RNG) lives here, the backend only gets its parameters and uniform draw.
//! `engine::Session` drives it for the CLI, the C ABI and the server.
use crate::chat::StopRules;
use crate::error::{Error, Result};
use crate::model::{Sampled, Sequence};
use crate::sampler::Sampler;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use std::time::Instant;

/// Why generation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum FinishReason {
    /// A stop id (e.g. `<|im_end|>`) was sampled; it is not part of `ids` or `text`.
    StopToken(u32),
    /// A stop string appeared in the output; `text` is cut before it (`ids` keep every sampled token).
    StopString(String),
    /// `max_new_tokens` were generated.
    Length,
    /// The KV cache is full.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
}

impl FinishReason {
    /// Short name for JSON output and the C ABI: stop, length, context_full, cancelled.
    pub fn name(&self) -> &'static str {
        match self {
            FinishReason::StopToken(_) | FinishReason::StopString(_) => "stop",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context_full",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids (the stop id excluded).
    pub ids: Vec<u32>,
    /// Decoded output, cut at a stop string; exactly what the callback received, concatenated.
    pub text: String,
    pub finish: FinishReason,
    /// Tokens of the prompt (`ids.len()` is the number generated).
    pub prompt_tokens: usize,
    /// Seconds spent in the prefill forward (prompt + first sample).
    pub prefill_secs: f64,
    /// Seconds spent generating tokens after the first.
    pub decode_secs: f64,
}

impl Generation {
    /// Tokens generated (the stop id excluded), as an API's usage counts them.
    pub fn generated_tokens(&self) -> usize {
        self.ids.len()
    }
    /// Decode speed in tokens per second (tokens after the first over decode time).
    pub fn decode_tok_per_s(&self) -> f64 {
        if self.decode_secs > 0.0 && self.ids.len() > 1 {
            (self.ids.len() - 1) as f64 / self.decode_secs
        } else {
            0.0
        }
    }
    pub fn prefill_tok_per_s(&self) -> f64 {
        if self.prefill_secs > 0.0 {
            self.prompt_tokens as f64 / self.prefill_secs
        } else {
            0.0
        }
    }
}

/// One step: `tokens` through `seq`, then the next id given `context` (every id of prompt + output
/// so far, `tokens` included). The uniform draw is taken before the pass (none when greedy); the
/// backend samples with it on its device where it can, else `sampler` samples the returned logits
/// with the same draw, so a seed gives the same ids on every backend.
pub fn next_token(seq: &mut dyn Sequence, sampler: &mut Sampler, tokens: &[u32], context: &[u32]) -> Result<u32> {
    let u = if sampler.is_greedy() { 0.0 } else { sampler.next_uniform() };
    Ok(match seq.forward_sample(tokens, sampler.params(), u, context)? {
        Sampled::Id(id) => id,
        Sampled::Logits(mut logits) => sampler.sample_with(&mut logits, context, u),
    })
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub stop: StopRules,
}

/// Run `prompt` on an emptied `seq` and sample up to `max_new_tokens` tokens.
/// `on_text` receives each new piece of output text as soon as it is complete UTF-8 and cannot be the
/// start of a stop string (it may receive ""); returning false cancels. Errors: empty prompt, prompt
/// longer than the context, invalid ids (nothing is generated then).
pub fn generate(
    seq: &mut dyn Sequence,
    tok: &Tokenizer,
    sampler: &mut Sampler,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty (no tokens)"));
    }
    if prompt.len() >= seq.capacity() {
        return Err(Error::ContextFull(format!(
            "the prompt has {} but the context holds {}: shorten the prompt or give the model a longer KV length",
            crate::error::count(prompt.len(), "token"),
            crate::error::count(seq.capacity(), "token")
        )));
    }
    seq.reset();
    let t0 = Instant::now();
    let mut context: Vec<u32> = prompt.to_vec();
    let mut id = next_token(seq, sampler, prompt, &context)?;
    let mut out = Generation {
        ids: Vec::new(),
        text: String::new(),
        finish: FinishReason::Length,
        prompt_tokens: prompt.len(),
        prefill_secs: 0.0,
        decode_secs: 0.0,
    };
    let mut decoder = StreamDecoder::new();
    let mut full = String::new(); // all decoded output so far
    let mut emitted = 0; // bytes of `full` handed to on_text
    let mut t_decode = None;
    let emit = |full: &str, upto: usize, emitted: &mut usize, on_text: &mut dyn FnMut(&str) -> bool| -> bool {
        let piece = &full[*emitted..upto];
        *emitted = upto;
        on_text(piece)
    };
    loop {
        if out.ids.is_empty() {
            out.prefill_secs = t0.elapsed().as_secs_f64();
            t_decode = Some(Instant::now());
        }
        if opts.stop.is_stop_id(id) {
            out.finish = FinishReason::StopToken(id);
            break;
        }
        out.ids.push(id);
        context.push(id);
        full.push_str(&decoder.push(tok, id)?);
        if let Some(at) = opts.stop.find_stop_string(&full) {
            let s = opts.stop.stop_strings.iter().find(|s| full[at..].starts_with(s.as_str())).cloned();
            full.truncate(at);
            out.finish = FinishReason::StopString(s.unwrap_or_default());
            break;
        }
        let safe = full.len() - opts.stop.holdback(&full);
        if !emit(&full, safe.max(emitted), &mut emitted, on_text) {
            out.finish = FinishReason::Cancelled;
            break;
        }
        if out.ids.len() >= opts.max_new_tokens {
            out.finish = FinishReason::Length;
            break;
        }
        if seq.len() >= seq.capacity() {
            out.finish = FinishReason::ContextFull;
            break;
        }
        id = next_token(seq, sampler, &[id], &context)?;
    }
    if !matches!(out.finish, FinishReason::StopString(_) | FinishReason::Cancelled) {
        full.push_str(&decoder.finish());
    }
    if out.finish != FinishReason::Cancelled && full.len() > emitted {
        emit(&full, full.len(), &mut emitted, on_text);
    }
    full.truncate(emitted);
    out.text = full;
    if let Some(t) = t_decode {
        out.decode_secs = t.elapsed().as_secs_f64();
    }
    Ok(out)
}
