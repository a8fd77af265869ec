//! Place in the flow: generate → **engine** → CLI / C ABI / server; the one front door of the library.
//!
//! An [`Engine`] is one loaded model: checkpoint, tokenizer, backend, KV length and the model's
//! `generation_config.json`. It is `Send + Sync`; share it as `Arc<Engine>`. A [`Session`] is one
//! conversation (or one request) on it: its own KV cache and sampler, used by one thread at a time;
//! many sessions of one engine run concurrently on different threads. `qwen-run`, the C ABI
//! (`ffi.rs`) and the HTTP server all sit on these two types.
//!
//! ```no_run
//! use qwen_rt::engine::{Engine, LoadOptions, ModelSource, SessionOptions};
//! use std::sync::Arc;
//!
//! // The built-in tiny random-weight model (or `ModelSource::Dir("/path/to/Qwen-7B-Chat".into())`).
//! let engine = Arc::new(Engine::open(ModelSource::BuiltinTiny, LoadOptions::default())?);
//! // Every default from generation_config.json, seed 42; change any field before opening the session.
//! let options = SessionOptions::from_generation_config(engine.generation_config(), 42);
//! let mut chat = engine.session(options)?;
//! // Stream the answer piece by piece; returning false (or `chat.cancel_token().cancel()` from
//! // another thread) stops it with `FinishReason::Cancelled`.
//! let g = chat.send("Hello!", &mut |piece| {
//!     print!("{piece}");
//!     true
//! })?;
//! println!("\n[{} prompt + {} generated tokens; {}]", g.prompt_tokens, g.generated_tokens(), g.finish.name());
//! chat.send("And again?", &mut |_| true)?; // the first turn is in the prompt (history)
//! chat.reset(); // forget it
//! # Ok::<(), qwen_rt::Error>(())
//! ```
use crate::chat::{make_context, messages_to_prompt, raw_context, Message, StopRules, Turn, DEFAULT_SYSTEM};
use crate::checkpoint::Checkpoint;
use crate::config::{GenerationConfig, QwenConfig, SamplingParams};
use crate::error::{Error, Result};
use crate::generate::{generate, GenerateOptions, Generation};
use crate::model::{Model, Sequence};
use crate::react::py_strip;
use crate::sampler::Sampler;
use crate::tokenizer::{ModelTokenizer, Tokenizer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use crate::backend::{BackendKind, ComputeDType, LoadOptions};
pub use crate::generate::FinishReason;

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The built-in tiny random-weight model (`synth::builtin_tiny_dir`; generated once per machine).
    /// Announced on stderr when `LoadOptions::progress` is set: its output is random text.
    BuiltinTiny,
    /// A Hugging Face model directory (config.json, safetensors, generation_config.json, qwen.tiktoken).
    Dir(PathBuf),
}

/// The argument that names the built-in tiny model where a path is expected (the C ABI's
/// `QWEN_TINY_MODEL`).
pub const TINY_MODEL_ARG: &str = ":tiny:";

impl ModelSource {
    /// `":tiny:"` → `BuiltinTiny`, anything else a directory.
    pub fn parse(arg: &str) -> ModelSource {
        if arg == TINY_MODEL_ARG {
            ModelSource::BuiltinTiny
        } else {
            ModelSource::Dir(PathBuf::from(arg))
        }
    }

    /// The model directory: the built-in tiny model's is made on first use (and announced when `say`).
    pub fn dir(&self, say: bool) -> Result<PathBuf> {
        match self {
            ModelSource::Dir(d) => Ok(d.clone()),
            ModelSource::BuiltinTiny => {
                let dir = crate::synth::builtin_tiny_dir()?;
                if say {
                    eprintln!(
                        "note: no --model given: using the built-in tiny random-weight model ({}); its output is random text",
                        dir.display()
                    );
                }
                Ok(dir)
            }
        }
    }
}

impl From<Option<PathBuf>> for ModelSource {
    /// None (no `--model`) → the built-in tiny model.
    fn from(dir: Option<PathBuf>) -> Self {
        dir.map_or(ModelSource::BuiltinTiny, ModelSource::Dir)
    }
}

/// The tokenizer of model directory `dir`: its `qwen.tiktoken`, else the built-in Qwen vocabulary
/// (said on stderr when `say`).
pub fn load_tokenizer(dir: &Path, say: bool) -> Result<ModelTokenizer> {
    if say && !dir.join("qwen.tiktoken").exists() {
        eprintln!("note: {} has no qwen.tiktoken; using the built-in Qwen vocabulary", dir.display());
    }
    ModelTokenizer::for_model_dir(dir)
}

/// What makes an engine's model from the opened checkpoint (`Engine::open_with_model`).
pub type LoadModel = dyn Fn(&Checkpoint, &LoadOptions) -> Result<Arc<dyn Model>>;

/// Most CPU threads a model may be opened with (`LoadOptions::threads`; `qwen-run --threads`, the C
/// ABI's `options.threads`): a typo such as 100000 must not spend minutes spawning threads.
pub const MAX_THREADS: usize = 1024;

/// What a command line (`qwen-run`, including `qwen-run serve`) calls a library option: its flag
/// ("max_seq_len" → "--max-seq-len"), for `Engine::open_naming` and `SessionOptions::validate`.
pub fn flag_name(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

/// Most tokens one call may generate (`SessionOptions::max_new_tokens`); generation also ends when
/// the KV cache is full, whatever this says.
pub const MAX_NEW_TOKENS: usize = 1 << 20;

/// Most bytes of one text input (a prompt, a chat message, a system prompt, text to tokenize): 16 MiB,
/// far beyond any context the model has, small enough that tokenizing it is quick.
pub const MAX_INPUT_BYTES: usize = 16 << 20;

/// One loaded model. See the module documentation.
pub struct Engine {
    model: Arc<dyn Model>,
    tok: ModelTokenizer,
    /// The open checkpoint: its memory maps back the CPU backend's weights; `generation` is
    /// generation_config.json.
    ck: Checkpoint,
    max_seq_len: usize,
    model_id: String,
    /// Sessions of this engine not yet dropped (`Engine::live_sessions`).
    live: Arc<AtomicUsize>,
}

impl Engine {
    /// Open the checkpoint and tokenizer of `source`, pick the backend (`opts.backend`: auto takes
    /// the GPU when usable, else says why on stderr and takes the CPU), load the weights (on the
    /// CPU: read once, so the first token does not pay the page faults), and resolve the KV length
    /// (`opts.max_seq_len`). Errors name the file, tensor or option at fault.
    pub fn open(source: ModelSource, opts: LoadOptions) -> Result<Engine> {
        Self::open_naming(source, opts, &|field| field.to_string())
    }

    /// `open` for a front end whose arguments have their own names: `name("threads")`,
    /// `name("max_seq_len")` is what its errors call those options (`--max-seq-len` in `qwen-run`,
    /// `options.max_seq_len` in the C ABI).
    pub fn open_naming(source: ModelSource, opts: LoadOptions, name: &dyn Fn(&str) -> String) -> Result<Engine> {
        Self::open_inner(source, opts, name, &|ck, opts| crate::backend::load_model(ck, opts))
    }

    /// `open` with a model of the caller's own instead of a built-in backend: `load` gets the opened
    /// checkpoint (config, generation_config.json, tensor views) and returns the model every session
    /// of the engine runs on. The tokenizer, generation defaults, KV length and the whole chat /
    /// generation loop are the engine's, as with `open`. For a backend that lives outside this crate,
    /// and for tests that script what the model emits and record what it is fed
    /// (`tests/chat_loop.rs`). The weights are paged in only when the model says it is the "cpu"
    /// backend (which computes from the checkpoint's memory maps).
    pub fn open_with_model(source: ModelSource, opts: LoadOptions, load: &LoadModel) -> Result<Engine> {
        Self::open_inner(source, opts, &|field| field.to_string(), load)
    }

    fn open_inner(
        source: ModelSource,
        opts: LoadOptions,
        name: &dyn Fn(&str) -> String,
        load: &LoadModel,
    ) -> Result<Engine> {
        if opts.threads > MAX_THREADS {
            return Err(Error::invalid(format!(
                "{} {} is more than {MAX_THREADS} (0 = all cores)",
                name("threads"),
                opts.threads
            )));
        }
        let dir = source.dir(opts.progress)?;
        let ck = Checkpoint::open(&dir)?;
        let tok = load_tokenizer(&ck.dir, opts.progress)?;
        let max_seq_len = ck.config.resolve_max_seq_len(opts.max_seq_len, &name("max_seq_len"))?;
        let model = load(&ck, &opts)?;
        if model.backend_name() == "cpu" {
            page_in(&ck, opts.progress)?;
        }
        let model_id = ck.dir.file_name().map_or_else(|| ck.dir.display().to_string(), |n| n.to_string_lossy().into());
        Ok(Engine { model, tok, ck, max_seq_len, model_id, live: Arc::default() })
    }

    /// A new session (its own KV cache of `max_seq_len()` tokens and sampler). Errors: options that
    /// `SessionOptions::validate` refuses, or a backend that cannot hold another sequence.
    pub fn session(self: &Arc<Self>, options: SessionOptions) -> Result<Session> {
        self.session_within(options, usize::MAX)
    }

    /// `session`, refused when the engine already has `limit` live sessions (the C ABI's
    /// `QWEN_MAX_SESSIONS_PER_MODEL`; each session holds a whole KV cache).
    pub fn session_within(self: &Arc<Self>, options: SessionOptions, limit: usize) -> Result<Session> {
        options.validate(&|field| field.to_string())?;
        let sampler = Sampler::new(options.sampling.clone())?;
        let live = LiveSession::enter(&self.live, limit)?;
        let seq = self.model.clone().new_sequence(self.max_seq_len)?;
        Ok(Session {
            engine: self.clone(),
            seq,
            sampler,
            options,
            history: Vec::new(),
            cancel: CancelToken::new(),
            _live: live,
        })
    }

    /// Sessions of this engine that exist now.
    pub fn live_sessions(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// The logits `[T, V]` of every position of `ids` in one forward pass on a fresh sequence of
    /// max(max_seq_len, T) tokens (`qwen-run logits`).
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut seq = self.model.clone().new_sequence(self.max_seq_len.max(ids.len()))?;
        seq.forward(ids, true)
    }

    pub fn config(&self) -> &QwenConfig {
        &self.ck.config
    }
    /// The model's generation_config.json (Hugging Face defaults for missing fields).
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.ck.generation
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }
    /// "cpu" or "cuda".
    pub fn backend_name(&self) -> &'static str {
        self.model.backend_name()
    }
    /// The model directory's name (e.g. "Qwen-7B-Chat").
    pub fn model_id(&self) -> &str {
        &self.model_id
    }
    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.ck.dir
    }
    /// KV cache length of every session, in tokens (prompt + output).
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }
    /// The model on its backend, for measuring it (`backend::bench`) or running raw sequences.
    pub fn model(&self) -> &Arc<dyn Model> {
        &self.model
    }
}

// An Engine is shared between threads: `Arc<Engine>` must be Send + Sync.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Engine>();
    const fn sendable<T: Send>() {}
    sendable::<Session>();
};

/// Read every weight byte once (pages the memory map in), so the first token is not slowed by page
/// faults; with `progress` a progress bar and, past 256 MiB, the GB/s on stderr.
fn page_in(ck: &Checkpoint, progress: bool) -> Result<()> {
    let total: u64 = ck.tensors.values().map(|t| t.byte_len() as u64).sum();
    let bar = if progress { indicatif::ProgressBar::new(total) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let t = Instant::now();
    crate::weights::page_in(ck.tensors.values(), |n| bar.inc(n))?;
    let secs = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if progress && total > (256 << 20) {
        eprintln!(
            "loaded {:.2} GB in {:.1} s ({:.2} GB/s)",
            total as f64 / 1e9,
            secs,
            total as f64 / 1e9 / secs.max(1e-9)
        );
    }
    Ok(())
}

/// The rule for a ChatML token budget (`SessionOptions::max_window_size`, `qwen-run prompt
/// --max-window-size`): at least 1. `arg` is the caller's name for it.
pub fn check_max_window_size(w: usize, arg: &str) -> Result<()> {
    if w == 0 {
        return Err(Error::invalid(format!("{arg} must be at least 1 (got 0)")));
    }
    Ok(())
}

/// Refuse a text input longer than MAX_INPUT_BYTES (before tokenizing it).
pub fn check_input(what: &str, text: &str) -> Result<()> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(Error::invalid(format!(
            "{what} is {} bytes, more than the limit of {MAX_INPUT_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// One live session, counted in its engine's `live` while it exists.
struct LiveSession(Arc<AtomicUsize>);

impl LiveSession {
    fn enter(live: &Arc<AtomicUsize>, limit: usize) -> Result<LiveSession> {
        let before = live.fetch_add(1, Ordering::SeqCst);
        let guard = LiveSession(live.clone());
        if before >= limit {
            return Err(Error::invalid(format!(
                "the model already has {before} live sessions, the limit; free one first"
            )));
        }
        Ok(guard)
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a session does: sampling, lengths, the ChatML system prompt, extra stop strings.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionOptions {
    pub sampling: SamplingParams,
    /// Most tokens generated per call (>= 1).
    pub max_new_tokens: usize,
    /// Token budget of system + history in a ChatML prompt (spec §5.2; >= 1).
    pub max_window_size: usize,
    /// The ChatML system prompt of `Session::send`.
    pub system: String,
    /// Stop strings on top of the format's own (spec §5.3); none may be empty.
    pub stop: Vec<String>,
}

impl SessionOptions {
    /// Every default from `generation_config.json`, as `qwen-run` and the C ABI take them: its
    /// sampling parameters with `seed`, `max_new_tokens` and `max_window_size`; the default system
    /// prompt ("You are a helpful assistant."); no extra stop strings.
    pub fn from_generation_config(g: &GenerationConfig, seed: u64) -> SessionOptions {
        SessionOptions {
            sampling: SamplingParams::from_generation_config(g, seed),
            max_new_tokens: g.max_new_tokens,
            max_window_size: g.max_window_size,
            system: DEFAULT_SYSTEM.to_string(),
            stop: Vec::new(),
        }
    }

    /// The one rule for session options, used by `Engine::session`, `qwen-run` and the C ABI. `name`
    /// turns a field name ("max_new_tokens") into what the caller's front end calls it
    /// ("--max-new-tokens", "options.max_new_tokens"). Sampling parameters: `SamplingParams::validate`;
    /// `max_new_tokens` in 1..=MAX_NEW_TOKENS; `max_window_size` at least 1; the system prompt and
    /// each stop string at most MAX_INPUT_BYTES; no empty stop string.
    pub fn validate(&self, name: &dyn Fn(&str) -> String) -> Result<()> {
        self.sampling.validate()?;
        if !(1..=MAX_NEW_TOKENS).contains(&self.max_new_tokens) {
            return Err(Error::invalid(format!(
                "{} {} is outside 1..={MAX_NEW_TOKENS}",
                name("max_new_tokens"),
                self.max_new_tokens
            )));
        }
        check_max_window_size(self.max_window_size, &name("max_window_size"))?;
        if self.system.len() > MAX_INPUT_BYTES {
            return Err(Error::invalid(format!(
                "{} is {} bytes, more than {MAX_INPUT_BYTES}",
                name("system"),
                self.system.len()
            )));
        }
        if self.stop.iter().any(|s| s.is_empty() || s.len() > MAX_INPUT_BYTES) {
            return Err(Error::invalid(format!(
                "{} strings must be 1 to {MAX_INPUT_BYTES} bytes long (an empty one would stop at once)",
                name("stop")
            )));
        }
        Ok(())
    }
}

/// Stops a session's generation from another thread (a server whose client went away, Ctrl-C): the
/// running call ends at its next token with `FinishReason::Cancelled`. It stays set (every later
/// call of the session is cancelled at its first token) until `reset`.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// One conversation (or request) on an engine: its KV cache, sampler (seeded once, at creation:
/// calls continue its random stream), options and ChatML history. Streaming: `on_text` receives
/// each new piece of text as soon as it is complete UTF-8 and cannot be the start of a stop string
/// (it may receive ""); returning false cancels. Every call re-prefills its whole prompt.
pub struct Session {
    engine: Arc<Engine>,
    seq: Box<dyn Sequence>,
    sampler: Sampler,
    options: SessionOptions,
    history: Vec<Turn>,
    cancel: CancelToken,
    _live: LiveSession,
}

impl Session {
    /// One ChatML turn, as Qwen's `model.chat` (spec §5.1–5.3): system + history (packed under
    /// `max_window_size`, newest first) + `query`, ChatML stops. The turn joins the history unless
    /// it was cancelled or failed; the stored response is stripped as `decode_tokens` does (Python's
    /// `str.strip()`, whose whitespace includes U+001C..U+001F).
    pub fn send(&mut self, query: &str, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        check_input("the query", query)?;
        let o = &self.options;
        let prompt = make_context(&self.engine.tok, &o.system, &self.history, query, o.max_window_size);
        let g = self.run(&prompt, StopRules::chatml(&self.options.stop), on_text)?;
        if g.finish != FinishReason::Cancelled {
            self.history.push(Turn { query: query.to_string(), response: py_strip(&g.text).to_string() });
        }
        Ok(g)
    }

    /// An OpenAI-style message list (`chat::messages_to_prompt`: its own system message, else the
    /// default one), ChatML stops. Neither reads nor changes the history.
    pub fn chat(&mut self, messages: &[Message], on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        for m in messages {
            check_input("a message", &m.content)?;
        }
        let prompt = messages_to_prompt(&self.engine.tok, messages, self.options.max_window_size)?;
        self.run(&prompt, StopRules::chatml(&self.options.stop), on_text)
    }

    /// A raw continuation of `text` (special-token text such as `<|im_start|>` parsed, as Qwen's raw
    /// format), raw stops (`<|endoftext|>`, "Human:"). Ignores the history.
    pub fn generate(&mut self, text: &str, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        check_input("the prompt", text)?;
        let prompt = raw_context(&self.engine.tok, text);
        self.generate_ids(&prompt, on_text)
    }

    /// `generate` from token ids.
    pub fn generate_ids(&mut self, ids: &[u32], on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        self.run(ids, StopRules::raw(&self.options.stop), on_text)
    }

    /// Forget the history.
    pub fn reset(&mut self) {
        self.history.clear();
        self.seq.reset();
    }

    /// Set the ChatML system prompt of later turns (the history stays; `reset` clears it).
    pub fn set_system(&mut self, system: &str) {
        self.options.system = system.to_string();
    }

    /// The finished ChatML turns, oldest first.
    pub fn history(&self) -> &[Turn] {
        &self.history
    }

    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// The token that cancels this session's generation from any thread.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn run(&mut self, prompt: &[u32], stop: StopRules, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        let opts = GenerateOptions { max_new_tokens: self.options.max_new_tokens, stop };
        let cancel = &self.cancel;
        let mut piece = |p: &str| on_text(p) && !cancel.is_cancelled();
        generate(self.seq.as_mut(), &self.engine.tok, &mut self.sampler, prompt, &opts, &mut piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    #[test]
    fn tiny_model_argument_is_the_c_abis() {
        assert_eq!(TINY_MODEL_ARG, crate::ffi::QWEN_TINY_MODEL);
        assert_eq!(ModelSource::parse(":tiny:"), ModelSource::BuiltinTiny);
        assert_eq!(ModelSource::parse("/m"), ModelSource::Dir("/m".into()));
        assert_eq!(ModelSource::from(None), ModelSource::BuiltinTiny);
    }

    /// The built-in tiny model on the CPU, 256 tokens of KV, shared by the tests.
    fn tiny() -> Arc<Engine> {
        static E: OnceLock<Arc<Engine>> = OnceLock::new();
        E.get_or_init(|| {
            let opts = LoadOptions { backend: BackendKind::Cpu, max_seq_len: Some(256), ..Default::default() };
            Arc::new(Engine::open(ModelSource::BuiltinTiny, opts).expect("the tiny model opens"))
        })
        .clone()
    }

    fn greedy(e: &Engine, max_new_tokens: usize) -> SessionOptions {
        let mut o = SessionOptions::from_generation_config(e.generation_config(), 0);
        o.sampling = SamplingParams::greedy();
        o.max_new_tokens = max_new_tokens;
        o
    }

    #[test]
    fn accessors_and_bad_options() {
        let e = tiny();
        assert_eq!((e.backend_name(), e.max_seq_len()), ("cpu", 256));
        assert_eq!(e.model_id(), e.dir().file_name().unwrap().to_str().unwrap());
        assert_eq!(e.tokenizer().encode("Hello world"), vec![9707, 1879]);
        let d = SessionOptions::from_generation_config(e.generation_config(), 5);
        assert_eq!((d.sampling.seed, d.system.as_str()), (5, DEFAULT_SYSTEM));
        let bad = |f: fn(&mut SessionOptions), what: &str| {
            let mut o = d.clone();
            f(&mut o);
            let err = e.session(o).err().expect("rejected").to_string();
            assert!(err.contains(what), "{err}");
        };
        bad(|o| o.max_new_tokens = 0, "max_new_tokens");
        bad(|o| o.max_window_size = 0, "max_window_size");
        bad(|o| o.stop = vec![String::new()], "stop");
        bad(|o| o.sampling.top_p = 0.0, "top_p");
        let opts = LoadOptions { backend: BackendKind::Cpu, max_seq_len: Some(usize::MAX), ..Default::default() };
        assert!(Engine::open(ModelSource::BuiltinTiny, opts).err().unwrap().to_string().contains("max_seq_len"));
    }

    #[test]
    fn one_rule_for_session_options_named_by_each_front_end() {
        let e = tiny();
        let d = SessionOptions::from_generation_config(e.generation_config(), 0);
        let flag = |f: &str| format!("--{}", f.replace('_', "-"));
        let err = |f: fn(&mut SessionOptions)| {
            let mut o = d.clone();
            f(&mut o);
            o.validate(&flag).unwrap_err().to_string()
        };
        assert!(err(|o| o.max_window_size = 0).contains("--max-window-size must be at least 1"));
        assert!(err(|o| o.max_new_tokens = MAX_NEW_TOKENS + 1).contains("--max-new-tokens"));
        assert!(err(|o| o.stop = vec![String::new()]).contains("--stop"));
        assert!(err(|o| o.system = "x".repeat(MAX_INPUT_BYTES + 1)).contains("--system"));
        let mut o = d.clone();
        o.max_new_tokens = MAX_NEW_TOKENS;
        assert!(o.validate(&flag).is_ok());
        let opts = LoadOptions { backend: BackendKind::Cpu, threads: MAX_THREADS + 1, ..Default::default() };
        let e2 = Engine::open_naming(ModelSource::BuiltinTiny, opts, &flag).err().unwrap().to_string();
        assert!(e2.contains("--threads 1025 is more than 1024"), "{e2}");
    }

    #[test]
    fn live_sessions_are_counted_and_limited() {
        let opts = LoadOptions { backend: BackendKind::Cpu, max_seq_len: Some(16), ..Default::default() };
        let e = Arc::new(Engine::open(ModelSource::BuiltinTiny, opts).unwrap());
        let o = greedy(&e, 1);
        let a = e.session_within(o.clone(), 2).unwrap();
        let b = e.session_within(o.clone(), 2).unwrap();
        assert_eq!(e.live_sessions(), 2);
        let err = e.session_within(o.clone(), 2).err().expect("over the limit").to_string();
        assert!(err.contains("2 live sessions"), "{err}");
        assert_eq!(e.live_sessions(), 2, "a refused session is not counted");
        drop(a);
        let c = e.session_within(o, 2).unwrap();
        drop((b, c));
        assert_eq!(e.live_sessions(), 0);
    }

    #[test]
    fn send_chat_and_generate_agree_and_count_tokens() {
        let e = tiny();
        let mut s = e.session(greedy(&e, 6)).unwrap();
        let mut streamed = String::new();
        let g = s
            .send("hi", &mut |p| {
                streamed.push_str(p);
                true
            })
            .unwrap();
        assert_eq!(streamed, g.text);
        let prompt = make_context(e.tokenizer(), DEFAULT_SYSTEM, &[], "hi", e.generation_config().max_window_size);
        assert_eq!(g.prompt_tokens, prompt.len());
        assert!(g.generated_tokens() >= 1 && g.generated_tokens() <= 6, "{g:?}");
        assert_eq!(s.history().len(), 1);
        // The same turn as OpenAI-style messages, and as raw ids with ChatML stops, on fresh sessions.
        let mut c = e.session(greedy(&e, 6)).unwrap();
        let msgs = [Message { role: "user".into(), content: "hi".into() }];
        let gc = c.chat(&msgs, &mut |_| true).unwrap();
        assert_eq!((gc.ids, gc.text), (g.ids.clone(), g.text.clone()));
        assert!(c.history().is_empty(), "chat() keeps no history");
        // A second turn sees the first; after reset it is a first turn again.
        let second = s.send("hi", &mut |_| true).unwrap();
        assert!(second.prompt_tokens > g.prompt_tokens);
        s.reset();
        assert_eq!(s.send("hi", &mut |_| true).unwrap().ids, g.ids);
        // Raw text and its ids give the same generation.
        let text = "<|im_start|>The capital of France is";
        let a = s.generate(text, &mut |_| true).unwrap();
        let b = s.generate_ids(&e.tokenizer().encode_with_special(text), &mut |_| true).unwrap();
        assert_eq!((a.ids, a.prompt_tokens), (b.ids, b.prompt_tokens));
    }

    #[test]
    fn sessions_run_concurrently_on_threads() {
        let e = tiny();
        let queries = ["Hello!", "What is 2+2?", "Tell me a story."];
        let alone: Vec<Vec<u32>> =
            queries.iter().map(|q| e.session(greedy(&e, 8)).unwrap().send(q, &mut |_| true).unwrap().ids).collect();
        let barrier = Arc::new(std::sync::Barrier::new(queries.len()));
        let threads: Vec<_> = queries
            .iter()
            .map(|q| {
                let (e, q, barrier) = (e.clone(), q.to_string(), barrier.clone());
                std::thread::spawn(move || {
                    let mut s = e.session(greedy(&e, 8)).unwrap();
                    barrier.wait();
                    s.send(&q, &mut |_| true).unwrap().ids
                })
            })
            .collect();
        let together: Vec<Vec<u32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(together, alone);
    }

    #[test]
    fn a_cancel_token_stops_generation_from_another_thread() {
        let e = tiny();
        let mut o = greedy(&e, 200);
        o.sampling = SamplingParams { do_sample: true, seed: 3, ..SamplingParams::greedy() }; // no early stop id
        let mut s = e.session(o).unwrap();
        let (token, watch) = (s.cancel_token(), s.cancel_token());
        let (tx, rx) = std::sync::mpsc::channel();
        let canceller = std::thread::spawn(move || {
            rx.recv().unwrap();
            token.cancel();
        });
        let mut pieces = 0;
        let g = s
            .generate_ids(&[1, 2, 3], &mut |_| {
                pieces += 1;
                if pieces == 1 {
                    tx.send(()).unwrap();
                    // Wait until the other thread has cancelled; the loop checks the token after this piece.
                    let t = Instant::now();
                    while !watch.is_cancelled() {
                        assert!(t.elapsed().as_secs() < 120, "the other thread never cancelled");
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                true
            })
            .unwrap();
        canceller.join().unwrap();
        assert_eq!(g.finish, FinishReason::Cancelled);
        assert!(g.generated_tokens() < 200, "{g:?}");
        // It stays cancelled until reset.
        assert_eq!(s.generate_ids(&[1, 2, 3], &mut |_| true).unwrap().finish, FinishReason::Cancelled);
        s.cancel_token().reset();
        assert_ne!(s.generate_ids(&[1, 2, 3], &mut |_| true).unwrap().finish, FinishReason::Cancelled);
    }
}
