//! `qwen-run`: chat, generate, bench and the debugging tools (tokenize, detokenize, prompt, logits,
//! inspect, synth). Every error is printed as one clear line and exits with status 1 (2 for bad usage).
use clap::{Args, Parser, Subcommand};
use qwen_rt::backend::cuda::graph::CudaModel;
use qwen_rt::backend::{load_model, use_cuda, BackendKind, ComputeDType, LoadOptions};
use qwen_rt::chat::{messages_to_prompt, raw_context, Message, StopRules, DEFAULT_SYSTEM};
use qwen_rt::checkpoint::Checkpoint;
use qwen_rt::generate::{generate, ChatSession, GenerateOptions, Generation};
use qwen_rt::model::Model;
use qwen_rt::sampler::{Sampler, SamplingParams};
use qwen_rt::synth::{builtin_tiny_dir, synth_model, SynthPreset};
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
        #[arg(long)]
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
    /// Write a random-weight model in the real Qwen v1 format.
    Synth {
        /// tiny or 7b
        #[arg(long)]
        preset: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
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
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// System prompt for ChatML
    #[arg(long)]
    system: Option<String>,
    /// Token budget for system + history in ChatML (default from generation_config.json)
    #[arg(long)]
    max_window_size: Option<usize>,
    /// Extra stop string (repeatable), e.g. --stop "Observation:"
    #[arg(long)]
    stop: Vec<String>,
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
        Cmd::Synth { preset, seed, out } => cmd_synth(&preset, seed, &out),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// A checkpoint + its model on a backend + its tokenizer.
struct Loaded {
    ck: Checkpoint,
    model: Arc<dyn Model>,
    tok: ModelTokenizer,
    max_seq_len: usize,
}

fn model_dir(arg: &Option<PathBuf>) -> Result<PathBuf> {
    match arg {
        Some(p) => Ok(p.clone()),
        None => {
            let dir = builtin_tiny_dir()?;
            eprintln!(
                "note: no --model given: using the built-in tiny random-weight model ({}); its output is random text",
                dir.display()
            );
            Ok(dir)
        }
    }
}

fn load(args: &ModelArgs) -> Result<Loaded> {
    let dir = model_dir(&args.model)?;
    let opts = LoadOptions {
        backend: args.backend.parse::<BackendKind>()?,
        dtype: args.dtype.parse::<ComputeDType>()?,
        threads: args.threads,
        progress: true,
    };
    let ck = Checkpoint::open(&dir)?;
    let tok = load_tokenizer(&ck.dir)?;
    let model = load_model(&ck, &opts)?;
    if model.backend_name() == "cpu" {
        page_in(&ck)?;
    }
    let max_seq_len = ck.config.resolve_max_seq_len(args.max_seq_len, "--max-seq-len")?;
    Ok(Loaded { ck, model, tok, max_seq_len })
}

fn load_tokenizer(dir: &Path) -> Result<ModelTokenizer> {
    if !dir.join("qwen.tiktoken").exists() {
        eprintln!("note: {} has no qwen.tiktoken; using the built-in Qwen vocabulary", dir.display());
    }
    ModelTokenizer::for_model_dir(dir)
}

fn sampling(gen: &GenArgs, ck: &Checkpoint) -> Result<SamplingParams> {
    let seed = gen.seed.unwrap_or_else(|| {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        eprintln!("seed: {s}");
        s
    });
    let mut p = SamplingParams::from_generation_config(&ck.generation, seed);
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
    p.validate()?;
    Ok(p)
}

fn gen_options(gen: &GenArgs, ck: &Checkpoint, chatml: bool) -> Result<GenerateOptions> {
    let max_new_tokens = gen.max_new_tokens.unwrap_or(ck.generation.max_new_tokens);
    if max_new_tokens == 0 {
        return Err(Error::invalid("--max-new-tokens must be at least 1"));
    }
    if gen.stop.iter().any(|s| s.is_empty()) {
        return Err(Error::invalid("--stop strings must not be empty"));
    }
    let stop = if chatml { StopRules::chatml(&gen.stop) } else { StopRules::raw(&gen.stop) };
    Ok(GenerateOptions { max_new_tokens, stop })
}

fn window(gen: &GenArgs, ck: &Checkpoint) -> usize {
    gen.max_window_size.unwrap_or(ck.generation.max_window_size)
}

fn cmd_chat(margs: &ModelArgs, gen: &GenArgs) -> Result<()> {
    let m = load(margs)?;
    if m.ck.generation.chat_format != "chatml" {
        eprintln!(
            "note: generation_config.json says chat_format \"{}\" (a base model); chat uses ChatML anyway",
            m.ck.generation.chat_format
        );
    }
    let mut session = ChatSession {
        seq: m.model.clone().new_sequence(m.max_seq_len)?,
        sampler: Sampler::new(sampling(gen, &m.ck)?)?,
        system: gen.system.clone().unwrap_or_else(|| DEFAULT_SYSTEM.to_string()),
        history: Vec::new(),
        max_window_size: window(gen, &m.ck),
        options: gen_options(gen, &m.ck, true)?,
    };
    let generating = Arc::new(AtomicBool::new(false));
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let (generating, cancel) = (generating.clone(), cancel.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
            } else {
                eprintln!();
                std::process::exit(130);
            }
        })
        .map_err(|e| Error::invalid(format!("cannot install the Ctrl-C handler: {e}")))?;
    }
    eprintln!(
        "qwen-run chat on {} ({}). /reset, /system TEXT, /exit; Ctrl-C stops an answer.",
        m.ck.dir.display(),
        m.model.backend_name()
    );
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("\n> ");
        line.clear();
        if stdin.lock().read_line(&mut line).map_err(|e| Error::io("<stdin>", e))? == 0 {
            break;
        }
        let input = line.trim_end_matches(['\n', '\r']);
        match ChatCommand::parse(input) {
            ChatCommand::Exit => break,
            ChatCommand::Empty => continue,
            ChatCommand::Reset => {
                session.reset();
                eprintln!("(history cleared)");
                continue;
            }
            ChatCommand::System(s) => {
                session.system = s;
                session.reset();
                eprintln!("(system prompt set, history cleared)");
                continue;
            }
            ChatCommand::Unknown(c) => {
                eprintln!("unknown command {c}: use /reset, /system TEXT or /exit");
                continue;
            }
            ChatCommand::Query(q) => {
                cancel.store(false, Ordering::SeqCst);
                generating.store(true, Ordering::SeqCst);
                let mut stdout = std::io::stdout();
                let r = session.send(&m.tok, &q, &mut |piece| {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                    !cancel.load(Ordering::SeqCst)
                });
                generating.store(false, Ordering::SeqCst);
                match r {
                    Ok(g) => {
                        println!();
                        report_speed(&g);
                    }
                    Err(e) => eprintln!("error: {e}"),
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
    let m = load(margs)?;
    let chatml = chat;
    let prompt_ids = match (&text, &ids) {
        (_, Some(list)) => parse_ids(list)?,
        (Some(t), None) if chat => {
            let system = gen.system.clone().unwrap_or_else(|| DEFAULT_SYSTEM.to_string());
            qwen_rt::chat::make_context(&m.tok, &system, &[], t, window(gen, &m.ck))
        }
        (Some(t), None) => raw_context(&m.tok, t),
        (None, None) => unreachable!("text or ids is always set above"),
    };
    let mut sampler = Sampler::new(sampling(gen, &m.ck)?)?;
    let opts = gen_options(gen, &m.ck, chatml)?;
    let mut seq = m.model.clone().new_sequence(m.max_seq_len)?;
    let mut stdout = std::io::stdout();
    let g = generate(seq.as_mut(), &m.tok, &mut sampler, &prompt_ids, &opts, &mut |piece| {
        if !json {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
        true
    })?;
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
        g.ids.len(),
        g.decode_tok_per_s(),
        g.finish.name()
    );
}

fn cmd_tokenize(model: Option<&Path>, allow_special: bool, text: &str) -> Result<()> {
    let tok = match model {
        Some(d) => load_tokenizer(d)?,
        None => ModelTokenizer::Shared(Tokenizer::shared()),
    };
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
    let tok = match model {
        Some(d) => load_tokenizer(d)?,
        None => ModelTokenizer::Shared(Tokenizer::shared()),
    };
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
            (load_tokenizer(d)?, ck.generation.max_window_size)
        }
        None => {
            (ModelTokenizer::Shared(Tokenizer::shared()), qwen_rt::config::GenerationConfig::default().max_window_size)
        }
    };
    let text = std::fs::read_to_string(messages).map_err(|e| Error::io(messages, e))?;
    let msgs: Vec<Message> = serde_json::from_str(&text).map_err(|e| {
        Error::bad_file(messages, format!("expected a JSON array of {{\"role\", \"content\"}} objects: {e}"))
    })?;
    let ids = messages_to_prompt(&tok, &msgs, max_window_size.unwrap_or(gen_window))?;
    println!("{}", serde_json::to_string(&ids).map_err(|e| Error::invalid(e.to_string()))?);
    Ok(())
}

fn cmd_logits(margs: &ModelArgs, ids: &str, out: &Path) -> Result<()> {
    let ids = parse_ids(ids)?;
    if ids.is_empty() {
        return Err(Error::invalid("--ids is empty"));
    }
    let m = load(margs)?;
    let mut seq = m.model.clone().new_sequence(m.max_seq_len.max(ids.len()))?;
    let logits = seq.forward(&ids, true)?; // [T, V]
    write_npy_f32(out, &[ids.len(), m.ck.config.vocab_size], &logits)?;
    eprintln!("wrote {} ([{}, {}] float32)", out.display(), ids.len(), m.ck.config.vocab_size);
    Ok(())
}

fn cmd_inspect(dir: &Path) -> Result<()> {
    let ck = Checkpoint::open(dir)?;
    let w = qwen_rt::weights::Weights::from_checkpoint(&ck)?;
    print!("{}", inspect_report(&ck, &w));
    Ok(())
}

fn cmd_synth(preset: &str, seed: u64, out: &Path) -> Result<()> {
    let p = SynthPreset::from_name(preset)?;
    let t = std::time::Instant::now();
    synth_model(out, &p, seed, &Default::default())?;
    eprintln!("wrote {} ({preset}, seed {seed}) in {:.1} s", out.display(), t.elapsed().as_secs_f64());
    Ok(())
}

fn cmd_bench(
    margs: &ModelArgs,
    synth: Option<&str>,
    prefill: Option<&str>,
    decode: Option<usize>,
    decode_prompt: Option<usize>,
) -> Result<()> {
    let use_cuda = use_cuda(margs.backend.parse::<BackendKind>()?)?;
    let (lens, dec, dec_prompt) = if use_cuda { ("128,512,2048", 256, 128) } else { ("16,128", 32, 16) };
    let lens = parse_usize_list(prefill.unwrap_or(lens), "--prefill")?;
    let (decode, decode_prompt) = (decode.unwrap_or(dec), decode_prompt.unwrap_or(dec_prompt));
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
    let m = load(&margs)?;
    let secs = t.elapsed().as_secs_f64();
    let mut report = run_bench(&m.model, m.max_seq_len, &lens, decode, decode_prompt, 1, &mut |_| Ok(()))?;
    report.load = Some((secs, "file, paged in".into()));
    print!("{}", report.table());
    println!("{}", report.json());
    Ok(())
}

/// Timed prefill passes per length on the GPU (median reported, after an untimed pass of that length).
const GPU_PREFILL_REPS: usize = 3;

/// The GPU benchmark: weights generated on the GPU (`--synth`) or streamed from `--model`, then the
/// common run plus device copy bandwidth, % of the bandwidth floor and memory in use.
fn bench_cuda(
    margs: &ModelArgs,
    synth: Option<&str>,
    lens: &[usize],
    decode: usize,
    decode_prompt: usize,
) -> Result<()> {
    let dtype = margs.dtype.parse::<ComputeDType>()?;
    // QWEN_PROFILE=STEPS: checked before the run, so a bad value costs no benchmark.
    let profile_steps = match std::env::var("QWEN_PROFILE") {
        Err(_) => None,
        Ok(v) => Some(v.trim().parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
            Error::invalid(format!("QWEN_PROFILE={v:?}: expected the number of decode steps to profile"))
        })?),
    };
    let t = std::time::Instant::now();
    let (cm, how) = match synth {
        Some(preset) => {
            let p = SynthPreset::from_name(preset)?;
            (CudaModel::synthetic(&p, 0, dtype)?, "generated on the GPU")
        }
        None => {
            let ck = Checkpoint::open(&model_dir(&margs.model)?)?;
            let opts = LoadOptions { backend: BackendKind::Cuda, dtype, threads: margs.threads, progress: true };
            (CudaModel::load(&ck, &opts)?, "file, streamed to the GPU")
        }
    };
    let secs = t.elapsed().as_secs_f64();
    let cm = Arc::new(cm);
    println!("tuning: {}", cm.tuning().describe());
    let max_seq_len = cm.config().resolve_max_seq_len(margs.max_seq_len, "--max-seq-len")?;
    let gpu = cm.gpu().clone();
    let copy = gpu.copy_bandwidth()?;
    let profiled = cm.clone();
    let model: Arc<dyn Model> = cm;
    let mut report = run_bench(&model, max_seq_len, lens, decode, decode_prompt, GPU_PREFILL_REPS, &mut |r| {
        let (free, total) = gpu.mem_info()?;
        r.device = Some(DeviceStats { name: gpu.name.clone(), copy_bytes_per_s: copy, mem_used_bytes: total - free });
        Ok(())
    })?;
    report.load = Some((secs, how.into()));
    print!("{}", report.table());
    println!("{}", report.json());
    if decode > 0 {
        // The decode step alone on the GPU, so the table's decode splits into GPU step time and what
        // sampling + the host round trip add (a note, not a failure, when there is no graph).
        match profiled.time_decode_graph(decode_prompt, 64) {
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
        print!("{}", profile_table(&profiled.profile_decode(decode_prompt, steps)?, steps, decode_prompt));
    }
    Ok(())
}

/// Per-kernel times of a profiled decode (`CudaModel::profile_decode`), per token.
fn profile_table(times: &[qwen_rt::backend::cuda::device::KernelTime], steps: usize, context: usize) -> String {
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
    use qwen_rt::backend::cuda::device::KernelTime;

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
