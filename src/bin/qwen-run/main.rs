//! Place in the flow: engine → **qwen-run** (a front end: flags → `engine` calls, results → text).
//! `qwen-run`: chat, generate, bench and the debugging tools (tokenize, detokenize, prompt, logits,
//! inspect, synth) and `quantize` (a float checkpoint written as bitsandbytes NF4 / Int8). Every error is printed as one clear line and exits with status 1 (2 for bad usage).
use clap::{Args, Parser, Subcommand};
use qwen_rt::backend::bench::{self, GpuBench, GpuBenchSource, KernelTime};
use qwen_rt::backend::use_cuda;
use qwen_rt::chat::{messages_to_prompt, Message};
use qwen_rt::checkpoint::Checkpoint;
use qwen_rt::engine::{
    check_max_window_size, load_tokenizer, BackendKind, ComputeDType, Engine, LoadOptions, ModelSource, SessionOptions,
    MAX_NEW_TOKENS,
};
use qwen_rt::generate::Generation;
use qwen_rt::quant::{quantize_checkpoint, QuantFormat, QuantWeights, QuantizeOptions};
use qwen_rt::synth::{synth_model, SynthGptq, SynthOptions, SynthPreset};
use qwen_rt::tokenizer::{ModelTokenizer, Tokenizer};
use qwen_rt::{Error, Result};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod support;
use support::*;

#[derive(Parser)]
#[command(name = "qwen-run", version, about = "Run Qwen-7B / Qwen-7B-Chat (Qwen v1) on the CPU or a CUDA GPU")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Interactive multi-turn chat (ChatML). Commands: /reset, /system TEXT, /exit. Ctrl-C stops an answer.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
    },
    /// Generate a continuation of a prompt (--prompt, --ids or stdin), or one ChatML turn with --chat.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
        /// Prompt text (special-token text like <|im_start|> is parsed, as in Qwen's raw format)
        #[arg(long, conflicts_with = "ids")]
        prompt: Option<String>,
        /// Prompt token ids, comma separated
        #[arg(long)]
        ids: Option<String>,
        /// Wrap the prompt as one ChatML user turn (system prompt from --system)
        #[arg(long)]
        chat: bool,
        /// Print {"ids": [...], "text": "..."} instead of streaming text
        #[arg(long)]
        json: bool,
    },
    /// Measure prefill and decode speed of a model (random prompt ids).
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Benchmark a random-weight model of this preset (tiny or 7b) instead of --model: generated
        /// on the GPU with the CUDA backend (no file), written to a temporary directory for the CPU.
        /// To measure the load path on the GPU, `qwen-run synth --preset 7b --out DIR` and then `bench --model DIR`.
        #[arg(long, conflicts_with = "model")]
        synth: Option<String>,
        /// Prompt lengths for prefill, comma separated [default: 128,512,2048 on the GPU, 16,128 on the CPU]
        #[arg(long)]
        prefill: Option<String>,
        /// Tokens to decode after a --decode-prompt-token prompt [default: 256 on the GPU, 32 on the CPU]
        #[arg(long)]
        decode: Option<usize>,
        /// [default: 128 on the GPU, 16 on the CPU]
        #[arg(long)]
        decode_prompt: Option<usize>,
    },
    /// Print the token ids of TEXT (or of stdin with `-`, byte for byte) as a JSON array.
    Tokenize {
        #[arg(long)]
        model: Option<PathBuf>,
        /// Parse special-token text (<|im_start|> …) as special tokens
        #[arg(long)]
        allow_special: bool,
        text: String,
    },
    /// Print the text of comma-separated token ids (or a JSON array).
    Detokenize {
        #[arg(long)]
        model: Option<PathBuf>,
        ids: String,
    },
    /// Print the ChatML prompt ids for OpenAI-style messages (JSON file: [{"role","content"}, …]).
    Prompt {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        messages: PathBuf,
        #[arg(long, allow_negative_numbers = true, value_parser = parse_window)]
        max_window_size: Option<usize>,
    },
    /// Write float32 logits [n_ids, vocab] of every position of one forward pass as .npy.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        ids: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the config, the tensor table and the memory needed per precision.
    Inspect {
        #[arg(long)]
        model: PathBuf,
    },
    /// OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models, /health,
    /// /metrics) with a web chat page at /. Sampling defaults as `generate --chat`.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        serve: qwen_rt::server::ServeArgs,
    },
    /// Write a float checkpoint quantized (nf4, nf4-dq or int8) in the layout transformers saves
    /// bitsandbytes 4-bit / 8-bit models; OUT_DIR must not exist (written atomically).
    Quantize {
        /// nf4, nf4-dq or int8
        #[arg(long)]
        to: String,
        /// Largest weight file, in bytes or with a suffix (500MB, 2GB); more become shards + index
        #[arg(long, default_value = "2GB")]
        max_shard_size: String,
        in_dir: PathBuf,
        out_dir: PathBuf,
    },
    /// Write a random-weight model in the real Qwen v1 format.
    Synth {
        /// tiny or 7b
        #[arg(long)]
        preset: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Store the linears as a GPTQ checkpoint of this many bits (4 or 8) with random codes, in
        /// the official Qwen-7B-Chat-Int4 / -Int8 layout (for benchmarks: no real quantization)
        #[arg(long, value_name = "BITS")]
        gptq: Option<u32>,
        /// Inputs per GPTQ scale (with --gptq)
        #[arg(long, default_value_t = 128, requires = "gptq")]
        gptq_group: usize,
    },
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model directory (HF layout). Without it, a built-in tiny random-weight model is used.
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu, cuda or auto (the GPU when usable)
    #[arg(long, default_value = "auto")]
    backend: String,
    /// auto, f32, bf16 or f16
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// CPU threads (0 = all cores)
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// KV cache length in tokens (default or 0: the model's limit)
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Quantize the linear weights at load: none, nf4, nf4-dq or int8 (a quantized checkpoint is
    /// used as stored)
    #[arg(long, default_value = "none")]
    quant: String,
}

#[derive(Args, Clone)]
struct GenArgs {
    /// Greedy decoding (argmax)
    #[arg(long)]
    greedy: bool,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Random seed (default: from the clock, printed on stderr)
    #[arg(long)]
    seed: Option<u64>,
    /// Most tokens to generate, 1 to 1048576 (default from generation_config.json)
    #[arg(long, allow_negative_numbers = true, value_parser = parse_max_new_tokens)]
    max_new_tokens: Option<usize>,
    /// System prompt for ChatML
    #[arg(long)]
    system: Option<String>,
    /// Token budget for system + history in ChatML, at least 1 (default from generation_config.json)
    #[arg(long, allow_negative_numbers = true, value_parser = parse_window)]
    max_window_size: Option<usize>,
    /// Extra stop string (repeatable), e.g. --stop "Observation:"
    #[arg(long)]
    stop: Vec<String>,
}

/// clap's parser of `--max-new-tokens`: the range in the message (not clap's "unexpected argument").
fn parse_max_new_tokens(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_NEW_TOKENS).contains(&n) => Ok(n),
        _ => Err(format!("--max-new-tokens takes a whole number from 1 to {MAX_NEW_TOKENS}")),
    }
}

/// clap's parser of `--max-window-size`.
fn parse_window(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("--max-window-size takes a whole number of tokens, at least 1".into()),
    }
}

/// An error as `qwen-run` prints it: a full context says which flag makes it longer.
fn describe(e: &Error) -> String {
    match e {
        Error::ContextFull(_) => format!("{e} (--max-seq-len sets the KV length)"),
        _ => e.to_string(),
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Chat { model, gen } => cmd_chat(&model, &gen),
        Cmd::Generate { model, gen, prompt, ids, chat, json } => cmd_generate(&model, &gen, prompt, ids, chat, json),
        Cmd::Bench { model, synth, prefill, decode, decode_prompt } => {
            cmd_bench(&model, synth.as_deref(), prefill.as_deref(), decode, decode_prompt)
        }
        Cmd::Tokenize { model, allow_special, text } => cmd_tokenize(model.as_deref(), allow_special, &text),
        Cmd::Detokenize { model, ids } => cmd_detokenize(model.as_deref(), &ids),
        Cmd::Prompt { model, messages, max_window_size } => cmd_prompt(model.as_deref(), &messages, max_window_size),
        Cmd::Logits { model, ids, out } => cmd_logits(&model, &ids, &out),
        Cmd::Inspect { model } => cmd_inspect(&model),
        Cmd::Synth { preset, seed, out, gptq, gptq_group } => {
            cmd_synth(&preset, seed, &out, gptq.map(|bits| SynthGptq { bits, group: gptq_group }))
        }
        Cmd::Quantize { to, max_shard_size, in_dir, out_dir } => cmd_quantize(&to, &max_shard_size, &in_dir, &out_dir),
        Cmd::Serve { model, serve } => cmd_serve(&model, &serve),
    };
    if let Err(e) = result {
        eprintln!("error: {}", describe(&e));
        std::process::exit(1);
    }
}

fn load_options(args: &ModelArgs) -> Result<LoadOptions> {
    Ok(LoadOptions {
        backend: args.backend.parse::<BackendKind>()?,
        dtype: args.dtype.parse::<ComputeDType>()?,
        threads: args.threads,
        max_seq_len: args.max_seq_len,
        progress: true,
        quant: QuantFormat::parse_load(&args.quant)?,
    })
}

/// The engine of `--model` (the built-in tiny model without it) as the flags say.
fn load(args: &ModelArgs) -> Result<Arc<Engine>> {
    let source = ModelSource::from(args.model.clone());
    Ok(Arc::new(Engine::open_naming(source, load_options(args)?, &qwen_rt::engine::flag_name)?))
}

/// The session options of the flags on top of the model's generation_config.json.
fn session_options(gen: &GenArgs, engine: &Engine) -> Result<SessionOptions> {
    let seed = gen.seed.unwrap_or_else(|| {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        eprintln!("seed: {s}");
        s
    });
    let mut o = SessionOptions::from_generation_config(engine.generation_config(), seed);
    let p = &mut o.sampling;
    if gen.greedy {
        p.do_sample = false;
    }
    if let Some(t) = gen.temperature {
        p.temperature = t;
        p.do_sample = !gen.greedy;
    }
    if let Some(v) = gen.top_p {
        p.top_p = v;
    }
    if let Some(v) = gen.top_k {
        p.top_k = v;
    }
    if let Some(v) = gen.repetition_penalty {
        p.repetition_penalty = v;
    }
    if let Some(n) = gen.max_new_tokens {
        o.max_new_tokens = n;
    }
    o.stop = gen.stop.clone();
    if let Some(s) = &gen.system {
        o.system = s.clone();
    }
    if let Some(w) = gen.max_window_size {
        o.max_window_size = w;
    }
    o.validate(&qwen_rt::engine::flag_name)?;
    Ok(o)
}

fn cmd_chat(margs: &ModelArgs, gen: &GenArgs) -> Result<()> {
    let engine = load(margs)?;
    let format = &engine.generation_config().chat_format;
    if format != "chatml" {
        eprintln!("note: generation_config.json says chat_format \"{format}\" (a base model); chat uses ChatML anyway");
    }
    let mut session = engine.session(session_options(gen, &engine)?)?;
    let generating = Arc::new(AtomicBool::new(false));
    let cancel = session.cancel_token();
    {
        let (generating, cancel) = (generating.clone(), cancel.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                cancel.cancel();
            } else {
                eprintln!();
                std::process::exit(130);
            }
        })
        .map_err(|e| Error::invalid(format!("cannot install the Ctrl-C handler: {e}")))?;
    }
    eprintln!(
        "qwen-run chat on {} ({}). /reset, /system TEXT, /exit; Ctrl-C stops an answer.",
        engine.dir().display(),
        engine.backend_name()
    );
    let stdin = std::io::stdin();
    let mut raw = Vec::new();
    loop {
        eprint!("\n> ");
        raw.clear();
        if stdin.lock().read_until(b'\n', &mut raw).map_err(|e| Error::io("<stdin>", e))? == 0 {
            eprintln!("\n(end of input)");
            break;
        }
        let Ok(line) = std::str::from_utf8(&raw) else {
            eprintln!("error: that line is not valid UTF-8 text; it was ignored (the chat goes on)");
            continue;
        };
        let input = line.trim_end_matches(['\n', '\r']);
        match ChatCommand::parse(input) {
            ChatCommand::Exit => break,
            ChatCommand::Empty => continue,
            ChatCommand::Reset => {
                session.reset();
                eprintln!("(history cleared)");
                continue;
            }
            ChatCommand::System(s) if s.is_empty() => {
                eprintln!("the system prompt is: {}", session.options().system);
                eprintln!("(unchanged; /system TEXT sets it and clears the history)");
                continue;
            }
            ChatCommand::System(s) => {
                session.set_system(&s);
                session.reset();
                eprintln!("(system prompt set, history cleared)");
                continue;
            }
            ChatCommand::Unknown(c) => {
                eprintln!("unknown command {c}: use /reset, /system TEXT or /exit");
                continue;
            }
            ChatCommand::Query(q) => {
                cancel.reset();
                generating.store(true, Ordering::SeqCst);
                let mut stdout = std::io::stdout();
                let r = session.send(&q, &mut |piece| {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                    true
                });
                generating.store(false, Ordering::SeqCst);
                match r {
                    Ok(g) => {
                        println!();
                        report_speed(&g);
                    }
                    Err(e) => eprintln!("error: {} (the chat goes on)", describe(&e)),
                }
            }
        }
    }
    Ok(())
}

fn cmd_generate(
    margs: &ModelArgs,
    gen: &GenArgs,
    prompt: Option<String>,
    ids: Option<String>,
    chat: bool,
    json: bool,
) -> Result<()> {
    if chat && ids.is_some() {
        return Err(Error::invalid("--chat takes text (--prompt or stdin), not --ids"));
    }
    let text = match (&prompt, &ids) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(_)) => None,
        (None, None) => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map_err(|e| Error::io("<stdin>", e))?;
            Some(String::from_utf8(buf).map_err(|_| Error::invalid("stdin is not valid UTF-8"))?)
        }
    };
    let engine = load(margs)?;
    let prompt_ids = ids.as_deref().map(parse_ids).transpose()?;
    let mut session = engine.session(session_options(gen, &engine)?)?;
    let mut stdout = std::io::stdout();
    let mut on_text = |piece: &str| {
        if !json {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
        true
    };
    let g = match (&text, &prompt_ids) {
        (_, Some(ids)) => session.generate_ids(ids, &mut on_text)?,
        (Some(t), None) if chat => session.send(t, &mut on_text)?,
        (Some(t), None) => session.generate(t, &mut on_text)?,
        (None, None) => unreachable!("text or ids is always set above"),
    };
    if json {
        let v = serde_json::json!({ "ids": g.ids, "text": g.text, "finish_reason": g.finish.name(), "prompt_tokens": g.prompt_tokens });
        println!("{v}");
    } else {
        println!();
    }
    report_speed(&g);
    Ok(())
}

fn report_speed(g: &Generation) {
    eprintln!(
        "[{} prompt tokens, {:.1} tok/s prefill; {} generated, {:.2} tok/s decode; finish: {}]",
        g.prompt_tokens,
        g.prefill_tok_per_s(),
        g.generated_tokens(),
        g.decode_tok_per_s(),
        g.finish.name()
    );
}

/// The tokenizer of `--model` (which must be a model directory, as for every command), else the
/// built-in Qwen vocabulary.
fn tokenizer_of(model: Option<&Path>) -> Result<ModelTokenizer> {
    match model {
        Some(d) => {
            Checkpoint::open(d)?;
            load_tokenizer(d, true)
        }
        None => Ok(ModelTokenizer::Shared(Tokenizer::shared())),
    }
}

fn cmd_tokenize(model: Option<&Path>, allow_special: bool, text: &str) -> Result<()> {
    let tok = tokenizer_of(model)?;
    let text = if text == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(|e| Error::io("<stdin>", e))?;
        String::from_utf8(buf).map_err(|_| Error::invalid("stdin is not valid UTF-8"))?
    } else {
        text.to_string()
    };
    let ids = if allow_special { tok.encode_with_special(&text) } else { tok.encode(&text) };
    println!("{}", serde_json::to_string(&ids).map_err(|e| Error::invalid(e.to_string()))?);
    Ok(())
}

fn cmd_detokenize(model: Option<&Path>, ids: &str) -> Result<()> {
    let tok = tokenizer_of(model)?;
    let ids = parse_ids(ids)?;
    let text = tok.decode(&ids)?;
    let mut stdout = std::io::stdout();
    stdout.write_all(text.as_bytes()).map_err(|e| Error::io("<stdout>", e))?;
    Ok(())
}

fn cmd_prompt(model: Option<&Path>, messages: &Path, max_window_size: Option<usize>) -> Result<()> {
    let (tok, gen_window) = match model {
        Some(d) => {
            let ck = Checkpoint::open(d)?;
            (load_tokenizer(d, true)?, ck.generation.max_window_size)
        }
        None => {
            (ModelTokenizer::Shared(Tokenizer::shared()), qwen_rt::config::GenerationConfig::default().max_window_size)
        }
    };
    let text = std::fs::read_to_string(messages).map_err(|e| Error::io(messages, e))?;
    let msgs: Vec<Message> = serde_json::from_str(&text).map_err(|e| {
        Error::bad_file(messages, format!("expected a JSON array of {{\"role\", \"content\"}} objects: {e}"))
    })?;
    let window = max_window_size.unwrap_or(gen_window);
    check_max_window_size(window, "--max-window-size")?;
    let ids = messages_to_prompt(&tok, &msgs, window)?;
    println!("{}", serde_json::to_string(&ids).map_err(|e| Error::invalid(e.to_string()))?);
    Ok(())
}

fn cmd_logits(margs: &ModelArgs, ids: &str, out: &Path) -> Result<()> {
    let ids = parse_ids(ids)?;
    if ids.is_empty() {
        return Err(Error::invalid("--ids is empty"));
    }
    if let Some(n) = margs.max_seq_len.filter(|&n| n > 0 && ids.len() > n) {
        return Err(Error::invalid(format!(
            "--ids has {} but --max-seq-len is {n}: one forward pass holds at most --max-seq-len tokens",
            qwen_rt::error::count(ids.len(), "token")
        )));
    }
    check_output_target(out)?;
    let engine = load(margs)?;
    let logits = engine.logits(&ids)?; // [T, V]
    let v = engine.config().vocab_size;
    write_npy_f32(out, &[ids.len(), v], &logits)?;
    eprintln!("wrote {} ([{}, {v}] float32)", out.display(), ids.len());
    Ok(())
}

fn cmd_serve(m: &ModelArgs, serve: &qwen_rt::server::ServeArgs) -> Result<()> {
    let model = qwen_rt::server::ModelOptions { dir: m.model.clone(), load: load_options(m)? };
    qwen_rt::server::run(serve.options(model)?)
}

fn cmd_inspect(dir: &Path) -> Result<()> {
    let ck = Checkpoint::open(dir)?;
    let w = match qwen_rt::config::QuantConfig::load(&ck.dir)? {
        Some(_) => QuantWeights::from_checkpoint(&ck)?,
        None => QuantWeights::dense(&qwen_rt::weights::Weights::from_checkpoint(&ck)?),
    };
    print!("{}", inspect_report(&ck, &w));
    Ok(())
}

fn cmd_quantize(to: &str, max_shard_size: &str, input: &Path, output: &Path) -> Result<()> {
    let format = QuantFormat::parse_load(to)
        .map_err(|_| Error::invalid(format!("--to {to}: expected nf4, nf4-dq or int8")))?
        .ok_or_else(|| Error::invalid("--to none: nothing to do (expected nf4, nf4-dq or int8)"))?;
    let opts = QuantizeOptions {
        max_shard_bytes: parse_size(max_shard_size, "--max-shard-size")?,
        progress: true,
        ..QuantizeOptions::new(format)
    };
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst))
            .map_err(|e| Error::invalid(format!("cannot install the Ctrl-C handler: {e}")))?;
    }
    let t = std::time::Instant::now();
    let s = match quantize_checkpoint(input, output, &opts, &cancel) {
        Err(e) if cancel.load(Ordering::SeqCst) => {
            eprintln!("error: {e}");
            std::process::exit(130);
        }
        r => r?,
    };
    if !s.skipped.is_empty() {
        eprintln!("not copied (not regular files): {}", s.skipped.join(", "));
    }
    eprintln!(
        "wrote {} ({}) in {:.1} s: {} linear weights quantized, {} tensors copied; {} -> {} bytes of tensors in {}; also {}",
        output.display(),
        format.name(),
        t.elapsed().as_secs_f64(),
        s.quantized,
        s.copied,
        s.bytes_in,
        s.bytes_out,
        s.shards.join(", "),
        if s.files_copied.is_empty() { "config.json".to_string() } else { format!("config.json, {}", s.files_copied.join(", ")) }
    );
    Ok(())
}

fn cmd_synth(preset: &str, seed: u64, out: &Path, gptq: Option<SynthGptq>) -> Result<()> {
    let p = SynthPreset::from_name(preset)?;
    let t = std::time::Instant::now();
    synth_model(out, &p, seed, &SynthOptions { gptq, ..Default::default() })?;
    let what = gptq.map(|q| format!(", GPTQ {}-bit group {} with random codes", q.bits, q.group)).unwrap_or_default();
    eprintln!("wrote {} ({preset}, seed {seed}{what}) in {:.1} s", out.display(), t.elapsed().as_secs_f64());
    Ok(())
}

fn cmd_bench(
    margs: &ModelArgs,
    synth: Option<&str>,
    prefill: Option<&str>,
    decode: Option<usize>,
    decode_prompt: Option<usize>,
) -> Result<()> {
    let kind = margs.backend.parse::<BackendKind>()?;
    let use_cuda = use_cuda(kind)?;
    let (lens, dec, dec_prompt) = if use_cuda { ("128,512,2048", 256, 128) } else { ("16,128", 32, 16) };
    let lens = parse_usize_list(prefill.unwrap_or(lens), "--prefill")?;
    let (decode, decode_prompt) = (decode.unwrap_or(dec), decode_prompt.unwrap_or(dec_prompt));
    if decode == 0 {
        return Err(Error::invalid("--decode 0 measures nothing: give at least 1 token to decode"));
    }
    if decode_prompt == 0 {
        return Err(Error::invalid("--decode-prompt must be at least 1 token"));
    }
    if use_cuda {
        return bench_cuda(margs, synth, &lens, decode, decode_prompt);
    }
    let mut margs = margs.clone();
    margs.backend = "cpu".into();
    let _tmp;
    if let Some(preset) = synth {
        let p = SynthPreset::from_name(preset)?;
        let dir = tempdir_for("bench")?;
        let path = dir.join("model");
        synth_model(&path, &p, 0, &Default::default())?;
        margs.model = Some(path);
        _tmp = TempDirGuard(dir);
    }
    let t = std::time::Instant::now();
    let engine = load(&margs)?;
    let secs = t.elapsed().as_secs_f64();
    let mut report =
        bench::run(engine.model(), engine.max_seq_len(), &lens, decode, decode_prompt, 1, &mut |_| Ok(()))?;
    report.load = Some((secs, "file, paged in".into()));
    print!("{}", bench_table(&report));
    println!("{}", bench_json(&report));
    Ok(())
}

/// The GPU benchmark: weights generated on the GPU (`--synth`) or streamed from `--model`, then the
/// common run plus device copy bandwidth, % of the bandwidth floor and memory in use.
fn bench_cuda(
    margs: &ModelArgs,
    synth: Option<&str>,
    lens: &[usize],
    decode: usize,
    decode_prompt: usize,
) -> Result<()> {
    let opts = LoadOptions { backend: BackendKind::Cuda, ..load_options(margs)? };
    let profile_steps = bench::profile_steps_from_env()?;
    let (dir, _tmp);
    let source = match synth {
        // Quantized weights are made from a checkpoint: the preset is written to a temporary
        // directory first, as the CPU bench does (slow for 7b: 15 GB on disk).
        Some(preset) if opts.quant.is_some() => {
            let p = SynthPreset::from_name(preset)?;
            let tmp = tempdir_for("bench")?;
            dir = tmp.join("model");
            _tmp = TempDirGuard(tmp);
            synth_model(&dir, &p, 0, &Default::default())?;
            GpuBenchSource::Dir(&dir)
        }
        Some(preset) => GpuBenchSource::Synth(preset),
        None => {
            dir = ModelSource::from(margs.model.clone()).dir(true)?;
            GpuBenchSource::Dir(&dir)
        }
    };
    let gb = GpuBench::open(source, &opts)?;
    println!("tuning: {}", gb.tuning());
    let report = gb.report(lens, decode, decode_prompt)?;
    print!("{}", bench_table(&report));
    println!("{}", bench_json(&report));
    if decode > 0 {
        // The decode step alone on the GPU, so the table's decode splits into GPU step time and what
        // sampling + the host round trip add (a note, not a failure, when there is no graph).
        match gb.decode_step_ms(decode_prompt, 64) {
            Ok(ms) => println!(
                "decode step alone (graph replayed back to back): {:.1} us/token ({:.1} tok/s); sampling and the host round trip add {:.1} us/token",
                ms * 1e3,
                1e3 / ms,
                1e6 / report.decode_tok_s - ms * 1e3
            ),
            Err(e) => println!("decode step alone: not measured ({e})"),
        }
    }
    if let Some(steps) = profile_steps {
        print!("{}", profile_table(&gb.profile(decode_prompt, steps)?, steps, decode_prompt));
    }
    Ok(())
}

/// Per-kernel times of a profiled decode (`CudaModel::profile_decode`), per token.
fn profile_table(times: &[KernelTime], steps: usize, context: usize) -> String {
    let total: f64 = times.iter().map(|k| k.ms).sum();
    let mut s = format!(
        "decode profile, {steps} steps after {context} tokens, kernel by kernel with events (no graph; sum {:.1} us/token)\n",
        total * 1e3 / steps as f64
    );
    s += &format!("{:<34} {:>9} {:>12} {:>12} {:>7}\n", "kernel", "per token", "us/token", "us/launch", "share");
    for k in times {
        let per_tok = k.ms * 1e3 / steps as f64;
        s += &format!(
            "{:<34} {:>9.1} {:>12.1} {:>12.2} {:>6.1}%\n",
            k.name,
            k.launches as f64 / steps as f64,
            per_tok,
            k.ms * 1e3 / k.launches as f64,
            100.0 * k.ms / total.max(1e-12)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_table_is_per_token() {
        let times = [
            KernelTime { name: "gemv_bf16", launches: 8, ms: 0.4 },
            KernelTime { name: "attention_decode_bf16", launches: 4, ms: 0.1 },
        ];
        let t = profile_table(&times, 4, 128);
        // 0.5 ms over 4 steps = 125 us per token; gemv: 2 launches and 100 us per token, 50 us each, 80 %.
        assert!(t.contains("4 steps after 128 tokens") && t.contains("sum 125.0 us/token"), "{t}");
        let gemv = t.lines().find(|l| l.starts_with("gemv_bf16")).expect("a gemv row");
        let cols: Vec<&str> = gemv.split_whitespace().collect();
        assert_eq!(cols, ["gemv_bf16", "2.0", "100.0", "50.00", "80.0%"], "{t}");
    }
}
