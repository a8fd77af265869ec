//! The server's only contact with the model: loading, turning a request into prompt ids + sampling +
//! stop rules (exactly as `qwen-run generate --chat` does), and running one generation on the worker.
//! The model is the library's `Engine` (opened as `qwen-run` and the C ABI open it); everything above
//! this file sees only `GenRequest` in and streamed pieces + `Output` out.
use crate::backend::LoadOptions;
use crate::chat::{messages_to_prompt, raw_context, Message, StopRules};
use crate::config::{GenerationConfig, SamplingParams};
use crate::engine::{Engine, ModelSource};
use crate::error::{Error, Result};
use crate::generate::{generate, FinishReason, GenerateOptions};
use crate::model::Sequence;
use crate::react::{ReactInput, ReactPlan};
use crate::sampler::Sampler;
use crate::tokenizer::{ENDOFTEXT, IM_END};
use std::path::PathBuf;
use std::sync::Arc;

/// How to load the model (the CLI's model flags).
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// None: the built-in tiny random-weight model (announced on stderr).
    pub dir: Option<PathBuf>,
    /// Backend, dtype, threads, KV length, quantization: as every other front end loads.
    pub load: LoadOptions,
}

/// What the prompt is made of.
#[derive(Clone, Debug)]
pub enum PromptIn {
    /// OpenAI-style messages (system/user/assistant) → ChatML, ChatML stop rules.
    Chat(Vec<Message>),
    /// Raw text (special-token text parsed, as `generate --prompt`) → raw stop rules.
    Text(String),
    /// Raw token ids → raw stop rules.
    Ids(Vec<u32>),
    /// A chat request with function calling (or tool/function messages), planned by [`crate::react`]:
    /// the plan's prompt ids; stops as openai_api.py's: a new ChatML turn (`Chat`) stops at
    /// `<|im_end|>` / `<|im_start|>` / `<|endoftext|>`, a continued assistant turn (`Continue`) at
    /// `<|im_end|>` / `<|endoftext|>`; both at the plan's stop words (the request's `stop`, their
    /// leading-newline-stripped variants, and "Observation:" when functions are present).
    /// `GenRequest::stop` is not used (the plan's stop words hold it).
    React(Box<ReactPlan>),
}

/// Sampling overrides; `None` takes the model's generation_config.json.
#[derive(Clone, Debug, Default)]
pub struct SamplingIn {
    /// 0 = greedy.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    /// None: from the clock.
    pub seed: Option<u64>,
}

/// One generation request, as the HTTP layer hands it to the model.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub prompt: PromptIn,
    pub sampling: SamplingIn,
    /// None: generation_config.json's max_new_tokens.
    pub max_tokens: Option<usize>,
    /// Extra stop strings (non-empty).
    pub stop: Vec<String>,
}

/// A request resolved against the model: ready for the worker (cheap to clone).
#[derive(Clone, Debug)]
pub struct Prepared {
    pub ids: Vec<u32>,
    pub params: SamplingParams,
    pub opts: GenerateOptions,
}

impl Prepared {
    /// The same request with its seed advanced by `k` (the k-th of `n` choices).
    pub fn choice(&self, k: usize) -> Prepared {
        let mut p = self.clone();
        p.params.seed = p.params.seed.wrapping_add(k as u64);
        p
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or stop string.
    Stop,
    /// max_tokens reached or the context is full.
    Length,
    /// The caller's callback returned false.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Output {
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// The loaded model, shared by the HTTP handlers (`prepare`) and the worker (`Worker::run`): the
/// library's `Engine` (the same load path as `qwen-run` and the C ABI).
pub struct ServedModel {
    engine: Arc<Engine>,
}

impl ServedModel {
    pub fn open(o: &ModelOptions) -> Result<ServedModel> {
        let source = match &o.dir {
            Some(d) => ModelSource::Dir(d.clone()),
            None => ModelSource::BuiltinTiny,
        };
        // Errors name the options by the `qwen-run serve` flags that set them.
        Ok(ServedModel { engine: Arc::new(Engine::open_naming(source, o.load.clone(), &crate::engine::flag_name)?) })
    }

    /// The model id of /v1/models: the directory's name.
    pub fn id(&self) -> &str {
        self.engine.model_id()
    }

    pub fn backend_name(&self) -> &'static str {
        self.engine.backend_name()
    }

    /// Tokens the context holds.
    pub fn context_len(&self) -> usize {
        self.engine.max_seq_len()
    }

    pub fn generation_config(&self) -> &GenerationConfig {
        self.engine.generation_config()
    }

    /// Prompt ids, sampling and stop rules, as `qwen-run generate` builds them. Errors
    /// (`InvalidArgument` / `ContextFull`) name the bad field; nothing is queued then.
    pub fn prepare(&self, req: &GenRequest) -> Result<Prepared> {
        let g = self.engine.generation_config();
        let tok = self.engine.tokenizer();
        let (ids, stop) = match &req.prompt {
            PromptIn::Chat(msgs) => (messages_to_prompt(tok, msgs, g.max_window_size)?, StopRules::chatml(&req.stop)),
            PromptIn::Text(t) => (raw_context(tok, t), StopRules::raw(&req.stop)),
            PromptIn::Ids(ids) => {
                let v = self.engine.config().vocab_size;
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= v) {
                    return Err(Error::invalid(format!("prompt: token id {bad} is out of range (vocab size {v})")));
                }
                (ids.clone(), StopRules::raw(&req.stop))
            }
            PromptIn::React(plan) => (plan.input.prompt_ids(tok, g.max_window_size), react_stops(plan)),
        };
        if ids.is_empty() {
            return Err(Error::invalid("prompt: empty (no tokens)"));
        }
        if ids.len() >= self.engine.max_seq_len() {
            return Err(Error::ContextFull(format!(
                "the prompt has {} tokens but the context holds {}",
                ids.len(),
                self.engine.max_seq_len()
            )));
        }
        let s = &req.sampling;
        let seed = s.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        });
        // As the CLI's `sampling`: generation_config, then each given override; temperature 0 = greedy.
        let mut params = SamplingParams::from_generation_config(g, seed);
        if let Some(t) = s.temperature {
            params.do_sample = t > 0.0;
            if t > 0.0 {
                params.temperature = t;
            }
        }
        if let Some(v) = s.top_p {
            params.top_p = v;
        }
        if let Some(v) = s.top_k {
            params.top_k = v;
        }
        if let Some(v) = s.repetition_penalty {
            params.repetition_penalty = v;
        }
        params.validate()?;
        let max_new_tokens = req.max_tokens.unwrap_or(g.max_new_tokens);
        if max_new_tokens == 0 {
            return Err(Error::invalid("max_tokens must be at least 1"));
        }
        Ok(Prepared { ids, params, opts: GenerateOptions { max_new_tokens, stop } })
    }

    /// A worker: one sequence (KV cache) on this model. Only the worker thread decodes.
    pub fn worker(self: &Arc<Self>) -> Result<Worker> {
        let seq = self.engine.model().clone().new_sequence(self.engine.max_seq_len())?;
        Ok(Worker { model: self.clone(), seq })
    }
}

/// The stop rules of a function-calling plan (see [`PromptIn::React`]).
pub fn react_stops(plan: &ReactPlan) -> StopRules {
    match plan.input {
        ReactInput::Chat { .. } => StopRules::chatml(&plan.stop_words),
        ReactInput::Continue { .. } => {
            StopRules { stop_ids: vec![IM_END, ENDOFTEXT], stop_strings: plan.stop_words.clone() }
        }
    }
}

/// The decoding side: owns the sequence. `run` streams pieces through `on_piece` (false cancels).
pub struct Worker {
    model: Arc<ServedModel>,
    seq: Box<dyn Sequence>,
}

impl Worker {
    pub fn run(&mut self, p: &Prepared, on_piece: &mut dyn FnMut(&str) -> bool) -> Result<Output> {
        let mut sampler = Sampler::new(p.params.clone())?;
        let g = generate(self.seq.as_mut(), self.model.engine.tokenizer(), &mut sampler, &p.ids, &p.opts, on_piece)?;
        let finish = match g.finish {
            FinishReason::StopToken(_) | FinishReason::StopString(_) => Finish::Stop,
            FinishReason::Length | FinishReason::ContextFull => Finish::Length,
            FinishReason::Cancelled => Finish::Cancelled,
        };
        Ok(Output { text: g.text, finish, prompt_tokens: g.prompt_tokens, completion_tokens: g.ids.len() })
    }
}
