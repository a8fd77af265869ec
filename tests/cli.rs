//! End-to-end tests of the `qwen-run` binary: the built-in tiny model, the debugging tools against the
//! committed reference fixtures, and clear errors (exit status 1, one line naming the problem) for bad input.
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn qwen_run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen-run"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qwen-run");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or(b"")).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str], stdin: Option<&[u8]>) -> (String, String) {
    let out = qwen_run(args, stdin);
    let (so, se) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "qwen-run {args:?} failed ({}):\nstdout: {so}\nstderr: {se}", out.status);
    (so, se)
}

/// The command must fail with status 1, print one `error:` line containing `needle`, and not panic.
fn fails(args: &[&str], needle: &str) -> String {
    let out = qwen_run(args, None);
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "qwen-run {args:?} should fail with status 1; stderr: {se}");
    assert!(se.contains("error: ") && se.contains(needle), "qwen-run {args:?}: expected `{needle}` in: {se}");
    assert!(!se.contains("panicked"), "qwen-run {args:?} panicked: {se}");
    se
}

/// The command must be refused as bad usage (clap: status 2) with a message containing `needle`.
fn usage_error(args: &[&str], needle: &str) -> String {
    let out = qwen_run(args, None);
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "qwen-run {args:?} should be refused with status 2; stderr: {se}");
    assert!(se.contains("error: ") && se.contains(needle), "qwen-run {args:?}: expected `{needle}` in: {se}");
    se
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids_of(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

#[test]
fn generate_on_builtin_tiny_model_says_so_and_is_deterministic() {
    let args = ["generate", "--prompt", "Hello", "--greedy", "--max-new-tokens", "6", "--json", "--backend", "cpu"];
    let (so, se) = ok(&args, None);
    assert!(se.contains("built-in tiny random-weight model"), "must say it uses the built-in model: {se}");
    let v: Value = serde_json::from_str(so.trim()).expect("--json prints one JSON object");
    let ids = ids_of(&v["ids"]);
    assert!(!ids.is_empty() && ids.len() <= 6, "{v}");
    assert!(v["text"].is_string());
    let (so2, _) = ok(&args, None);
    assert_eq!(so, so2, "greedy generation must be reproducible");
    // the text is the decode of the ids (unless a stop string cut it, which the tiny model has none of)
    let list = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let (text, _) = ok(&["detokenize", &list], None);
    assert_eq!(text, v["text"].as_str().unwrap());
}

#[test]
fn seeded_sampling_is_reproducible_and_ids_equal_prompt() {
    let base = ["generate", "--max-new-tokens", "8", "--json", "--seed", "7", "--temperature", "1.5", "--top-k", "50"];
    let (a, _) = ok(&[&base[..], &["--prompt", "Once upon a time"]].concat(), None);
    let (b, _) = ok(&[&base[..], &["--prompt", "Once upon a time"]].concat(), None);
    assert_eq!(a, b, "same seed, same output");
    let (ids, _) = ok(&["tokenize", "--allow-special", "Once upon a time"], None);
    let ids: Vec<u64> = serde_json::from_str::<Vec<u64>>(ids.trim()).unwrap();
    let list = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let (c, _) = ok(&[&base[..], &["--ids", &list]].concat(), None);
    assert_eq!(a, c, "--ids of the tokenized prompt gives the same generation as --prompt");
    // stdin prompt too
    let (d, _) = ok(&base, Some(b"Once upon a time"));
    assert_eq!(a, d, "prompt from stdin");
}

#[test]
fn tokenize_matches_python_tiktoken_fixture_via_stdin_byte_for_byte() {
    let f = fixture("tokenizer_cases.json");
    let mut checked = 0;
    for case in f["cases"].as_array().unwrap().iter().take(40) {
        let text = case["text"].as_str().unwrap();
        let (so, _) = ok(&["tokenize", "-"], Some(text.as_bytes()));
        assert_eq!(serde_json::from_str::<Vec<u64>>(so.trim()).unwrap(), ids_of(&case["ids"]), "case {}", case["name"]);
        let (so, _) = ok(&["tokenize", "--allow-special", "-"], Some(text.as_bytes()));
        assert_eq!(
            serde_json::from_str::<Vec<u64>>(so.trim()).unwrap(),
            ids_of(&case["ids_special"]),
            "case {}",
            case["name"]
        );
        checked += 1;
    }
    assert_eq!(checked, 40);
}

#[test]
fn prompt_matches_make_context_fixture() {
    let f = fixture("chat_cases.json");
    let dir = tempfile::tempdir().unwrap();
    for case in f["messages"].as_array().unwrap() {
        let p = dir.path().join("m.json");
        std::fs::write(&p, serde_json::to_string(&case["messages"]).unwrap()).unwrap();
        let w = case["max_window_size"].to_string();
        let (so, _) = ok(&["prompt", "--messages", p.to_str().unwrap(), "--max-window-size", &w], None);
        assert_eq!(serde_json::from_str::<Vec<u64>>(so.trim()).unwrap(), ids_of(&case["ids"]), "case {}", case["name"]);
    }
}

#[test]
fn logits_npy_agrees_with_greedy_generate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.npy");
    ok(&["logits", "--ids", "1,2,3", "--out", out.to_str().unwrap()], None);
    let b = std::fs::read(&out).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'shape': (3, 151936)"), "{header}");
    let data: Vec<f32> = b[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(data.len(), 3 * 151936);
    assert!(data.iter().all(|x| x.is_finite()));
    let last = &data[2 * 151936..2 * 151936 + 151851]; // padding rows are masked by the sampler
    let argmax = last.iter().enumerate().fold(0, |m, (i, &x)| if x > last[m] { i } else { m });
    let (so, _) = ok(
        &["generate", "--ids", "1,2,3", "--greedy", "--repetition-penalty", "1.0", "--max-new-tokens", "1", "--json"],
        None,
    );
    let v: Value = serde_json::from_str(so.trim()).unwrap();
    let first = ids_of(&v["ids"]).first().copied();
    // A stop id ends generation without appearing in ids; then finish_reason says stop.
    match first {
        Some(id) => assert_eq!(id as usize, argmax),
        None => assert!([151643, 151644, 151645].contains(&argmax), "{v}"),
    }
}

#[test]
fn chat_session_script() {
    let script = b"hi there\n/system Be brief.\nhello\n/reset\n/bogus\nagain\n/exit\n";
    let (so, se) = ok(&["chat", "--max-new-tokens", "4", "--seed", "1"], Some(script));
    assert!(se.contains("built-in tiny random-weight model"), "{se}");
    assert!(
        se.contains("system prompt set") && se.contains("history cleared") && se.contains("unknown command /bogus"),
        "{se}"
    );
    assert_eq!(se.matches("tok/s decode").count(), 3, "three answers: {se}");
    let _ = so;
}

#[test]
fn synth_then_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    ok(&["synth", "--preset", "tiny", "--seed", "3", "--out", m.to_str().unwrap()], None);
    let (so, _) = ok(&["inspect", "--model", m.to_str().unwrap()], None);
    assert!(so.contains("transformer.h.1.mlp.w2.weight") && so.contains("[176, 64]"), "{so}");
    assert!(so.contains("bf16 / fp16") && so.contains("NF4"), "{so}");
    fails(&["synth", "--preset", "tiny", "--out", m.to_str().unwrap()], m.to_str().unwrap());
    fails(&["synth", "--preset", "13b", "--out", dir.path().join("x").to_str().unwrap()], "13b");
}

#[test]
fn bad_arguments_are_clear_errors() {
    fails(&["generate", "--prompt", "x", "--backend", "tpu"], "--backend must be cpu, cuda or auto");
    fails(&["generate", "--prompt", "x", "--dtype", "int3"], "--dtype");
    if qwen_rt::backend::cuda::probe().is_err() {
        // Without a usable GPU the CUDA paths say why instead of running.
        fails(&["generate", "--prompt", "x", "--backend", "cuda"], "backend unavailable");
        fails(&["bench", "--backend", "cuda", "--synth", "7b"], "backend unavailable");
    }
    fails(&["bench", "--backend", "cpu", "--synth", "13b"], "13b");
    fails(&["generate", "--prompt", "x", "--backend", "cuda", "--dtype", "int3"], "--dtype");
    fails(&["generate", "--prompt", "x", "--model", "/nonexistent/qwen"], "/nonexistent/qwen");
    fails(&["generate", "--ids", "1,x"], "`x`");
    fails(&["generate", "--ids", "999999", "--max-new-tokens", "1"], "999999");
    fails(&["generate", "--prompt", "x", "--temperature=-1"], "temperature");
    fails(&["generate", "--prompt", "x", "--top-p", "1.5"], "top_p");
    fails(&["generate", "--prompt", "a b c d e f g", "--max-seq-len", "3"], "context");
    usage_error(&["generate", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens");
    fails(&["detokenize", "151851"], "151851");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[{\"role\": \"assistant\", \"content\": \"x\"}]").unwrap();
    fails(&["prompt", "--messages", bad.to_str().unwrap()], "message");
    std::fs::write(&bad, "not json").unwrap();
    fails(&["prompt", "--messages", bad.to_str().unwrap()], "bad.json");
    let out = dir.path().join("sub/none.npy");
    fails(&["logits", "--ids", "1", "--out", out.to_str().unwrap()], "none.npy");
    assert!(!out.exists());
}

#[test]
fn ctrl_c_stops_the_answer_not_the_program() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen-run"))
        .args(["chat", "--max-new-tokens", "30000", "--seed", "5", "--backend", "cpu"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let collect = |mut r: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        buf
    };
    let out = collect(Box::new(child.stdout.take().unwrap()));
    let err = collect(Box::new(child.stderr.take().unwrap()));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"tell me everything\n").unwrap();
    stdin.flush().unwrap();
    let t = Instant::now();
    while out.lock().unwrap().len() < 20 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no streamed output; stderr: {}",
            String::from_utf8_lossy(&err.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let t = Instant::now();
    while !String::from_utf8_lossy(&err.lock().unwrap()).contains("finish: cancelled") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "answer not cancelled: {}",
            String::from_utf8_lossy(&err.lock().unwrap())
        );
        assert!(child.try_wait().unwrap().is_none(), "Ctrl-C during an answer ended the program");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The program is still there: it takes the next line.
    stdin.write_all(b"/exit\n").unwrap();
    drop(stdin);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "chat did not exit after /exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}; stderr: {}", String::from_utf8_lossy(&err.lock().unwrap()));
}

#[test]
fn bench_reports_a_table_and_a_json_line() {
    // The built-in tiny model on the CPU: short runs; the report names load, prefill and decode.
    let (so, _) = ok(&["bench", "--backend", "cpu", "--prefill", "4,9", "--decode", "3", "--decode-prompt", "2"], None);
    assert!(so.contains("prefill 9 tokens") && so.contains("decode 3 tokens after 2") && so.contains("load ("), "{so}");
    let json: Value = serde_json::from_str(so.lines().last().unwrap()).unwrap();
    assert_eq!(json["backend"], "cpu");
    assert_eq!(json["prefill"].as_array().unwrap().len(), 2);
    assert!(json["decode_tok_per_s"].as_f64().unwrap() > 0.0, "{json}");
    assert!(json["load_s"].as_f64().unwrap() >= 0.0, "{json}");
    // No GPU figures from the CPU backend.
    assert!(json["gpu"].is_null() && json["floor_fraction"].is_null(), "{json}");
    fails(&["bench", "--backend", "cpu", "--prefill", "4,x"], "--prefill");
    // bf16: 2 bytes a parameter; a decode step reads all but 151,935 rows of the embedding table.
    let (c, p, f, v, l) = (64usize, 64usize, 176usize, 151936usize, 2usize); // the tiny preset
    let linears = [(3 * p, c), (c, p), (f, c), (f, c), (c, f)];
    let floats = 2 * v * c + c + l * (2 * c + 3 * p); // wte, lm_head, ln_f; per layer ln_1, ln_2, c_attn bias
    let params = floats + l * linears.iter().map(|(n, k)| n * k).sum::<usize>();
    assert_eq!(json["weight_bytes"].as_u64(), Some(2 * params as u64), "{json}");
    assert_eq!(json["bytes_per_token"].as_u64(), Some(2 * (params - (v - 1) * c) as u64), "{json}");
    // Quantized: the bytes as held, Int8 = one byte a weight + an f32 scale a row (not 2 a weight).
    let (so, _) = ok(&["bench", "--backend", "cpu", "--quant", "int8", "--prefill", "4", "--decode", "2"], None);
    let json: Value = serde_json::from_str(so.lines().last().unwrap()).unwrap();
    let held = 2 * floats + l * linears.iter().map(|(n, k)| n * k + 4 * n).sum::<usize>();
    assert_eq!(json["weight_bytes"].as_u64(), Some(held as u64), "{json}");
    assert_eq!(json["bytes_per_token"].as_u64(), Some((held - 2 * (v - 1) * c) as u64), "{json}");
}

#[test]
fn hostile_arguments_are_refused_naming_the_flag() {
    // --threads is capped as the C ABI caps options.threads (before any thread is spawned).
    let t = std::time::Instant::now();
    fails(
        &["generate", "--prompt", "x", "--backend", "cpu", "--threads", "100000"],
        "--threads 100000 is more than 1024",
    );
    assert!(t.elapsed().as_secs() < 60, "refused at once, not after spawning threads");
    // Negative and zero counts: the flag and the accepted range, not clap's "unexpected argument".
    let se = usage_error(&["generate", "--prompt", "x", "--max-new-tokens", "-1"], "from 1 to 1048576");
    assert!(se.contains("--max-new-tokens") && !se.contains("unexpected argument"), "{se}");
    usage_error(&["generate", "--prompt", "x", "--max-new-tokens", "1048577"], "from 1 to 1048576");
    usage_error(&["generate", "--prompt", "x", "--max-window-size", "0"], "--max-window-size");
    usage_error(&["chat", "--max-window-size", "-3"], "--max-window-size");
    let dir = tempfile::tempdir().unwrap();
    let msgs = dir.path().join("m.json");
    std::fs::write(&msgs, r#"[{"role": "user", "content": "hi"}]"#).unwrap();
    usage_error(&["prompt", "--messages", msgs.to_str().unwrap(), "--max-window-size", "0"], "--max-window-size");
    // bench --decode 0 would print 0 tok/s.
    fails(&["bench", "--backend", "cpu", "--prefill", "4", "--decode", "0"], "--decode 0");
    fails(&["bench", "--backend", "cpu", "--prefill", "4", "--decode-prompt", "0"], "--decode-prompt");
    // logits refuses more ids than the --max-seq-len it was given.
    let out = dir.path().join("l.npy");
    let o = out.to_str().unwrap();
    fails(
        &["logits", "--backend", "cpu", "--max-seq-len", "2", "--ids", "1,2,3,4,5", "--out", o],
        "--max-seq-len is 2",
    );
    assert!(!out.exists());
    // Errors name the flags the user gave, not the library's field names; "1 token", not "1 tokens".
    let se = fails(
        &["generate", "--backend", "cpu", "--prompt", "x", "--max-seq-len", "4000000000"],
        "--max-seq-len 4000000000",
    );
    assert!(!se.contains("max_seq_len"), "{se}");
    let se = fails(
        &["generate", "--backend", "cpu", "--ids", "1", "--max-seq-len", "1"],
        "has 1 token but the context holds 1 token",
    );
    assert!(se.contains("--max-seq-len sets the KV length"), "{se}");
}

#[test]
fn tokenize_and_detokenize_need_a_real_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    fails(&["tokenize", "--model", missing.to_str().unwrap(), "hi"], "missing");
    fails(&["detokenize", "--model", missing.to_str().unwrap(), "1,2"], "missing");
    // A directory that is not a model (no config.json), as `prompt` and `generate` say.
    let empty = dir.path().to_str().unwrap();
    fails(&["tokenize", "--model", empty, "hi"], "config.json");
    fails(&["detokenize", "--model", empty, "1,2"], "config.json");
    fails(&["prompt", "--model", empty, "--messages", "/dev/null"], "config.json");
    // A real model directory works.
    let m = dir.path().join("m");
    ok(&["synth", "--preset", "tiny", "--out", m.to_str().unwrap()], None);
    let (ids, _) = ok(&["tokenize", "--model", m.to_str().unwrap(), "Hello world"], None);
    assert_eq!(ids.trim(), "[9707,1879]");
    let (text, _) = ok(&["detokenize", "--model", m.to_str().unwrap(), "9707,1879"], None);
    assert_eq!(text, "Hello world");
}

#[test]
fn logits_never_replaces_a_symlink_fifo_or_device() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.bin");
    std::fs::write(&target, b"keep").unwrap();
    let link = dir.path().join("link.npy");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let run = |out: &Path, needle: &str| {
        fails(&["logits", "--backend", "cpu", "--ids", "1,2", "--out", out.to_str().unwrap()], needle);
    };
    run(&link, "symbolic link");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    let fifo = dir.path().join("fifo.npy");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    run(&fifo, "not a regular file");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    run(Path::new("/dev/null"), "not a regular file");
    assert!(std::fs::symlink_metadata("/dev/null").unwrap().file_type().is_char_device());
    run(dir.path(), "a directory");
    // A regular file is replaced atomically, with no temp file left.
    let regular = dir.path().join("out.npy");
    std::fs::write(&regular, b"old").unwrap();
    ok(&["logits", "--backend", "cpu", "--ids", "1,2", "--out", regular.to_str().unwrap()], None);
    assert_eq!(&std::fs::read(&regular).unwrap()[..6], b"\x93NUMPY");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 4, "target, link, fifo, out.npy and nothing else: {names:?}");
}

#[test]
fn chat_goes_on_after_bad_lines_and_ends_cleanly_at_eof() {
    // Invalid UTF-8, a bare /system, a query longer than the context, then a normal one; no /exit.
    let long = "word ".repeat(200);
    let script = [&b"\xff\xfe not text\n/system\nhello\n"[..], long.as_bytes(), b"\nhi\n"].concat();
    let args = ["chat", "--backend", "cpu", "--max-seq-len", "64", "--max-new-tokens", "2", "--seed", "1"];
    let (_, se) = ok(&args, Some(&script));
    assert!(se.contains("not valid UTF-8") && se.contains("ignored"), "{se}");
    assert!(se.contains("the system prompt is: You are a helpful assistant."), "a bare /system shows it: {se}");
    assert!(!se.contains("system prompt set"), "a bare /system must not set an empty prompt: {se}");
    assert!(se.contains("context full") && se.contains("(the chat goes on)"), "{se}");
    assert_eq!(se.matches("tok/s decode").count(), 2, "hello and hi answered: {se}");
    assert!(se.contains("(end of input)"), "{se}");
}

#[test]
fn ctrl_c_at_the_prompt_ends_the_chat_with_status_130() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen-run"))
        .args(["chat", "--backend", "cpu"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take().unwrap(); // open: the chat waits at its prompt
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 1024];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&seen).contains("\n> ") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("the chat prompt appears");
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "Ctrl-C at the prompt did not end the chat");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "{status}");
}
