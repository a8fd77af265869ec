//! `qwen-run serve` over real HTTP on 127.0.0.1 (no Python): status codes and OpenAI error shapes, SSE
//! framing, greedy output equal to `qwen-run generate --chat --greedy`, API key, queue full → 429,
//! cancellation by a dropped stream, SIGTERM finishing in-flight requests. The built-in tiny model.
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qwen-run");
const TINY_ID: &str = "qwen-rt-builtin-tiny-v1";

/// A running server; killed when dropped (unless it already exited).
struct Server {
    child: Child,
    addr: String,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--backend", "cpu", "--port", "0", "--threads", "1"])
            .args(extra)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qwen-run serve");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let t = Instant::now();
        let mut seen = String::new();
        while t.elapsed() < Duration::from_secs(120) {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(120)) else { break };
            seen += &line;
            seen += "\n";
            if let Some(rest) = line.strip_prefix("listening on http://") {
                return Server { child, addr: rest.trim().to_string(), stderr: rx };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not start: {seen}");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Resp {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The OpenAI error shape with this status; returns the error object.
    fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e.clone()
    }
}

fn request_raw(addr: &str, raw: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(raw).unwrap();
    s
}

fn head(method: &str, path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Parse a whole HTTP/1.1 response (Content-Length or chunked).
fn read_response(mut s: TcpStream) -> Resp {
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let headers = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = all[split + 4..].to_vec();
    if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Resp { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

fn call(addr: &str, method: &str, path: &str, extra: &str, body: &[u8]) -> Resp {
    read_response(request_raw(addr, &head(method, path, extra, body)))
}

fn post(addr: &str, path: &str, body: &Value) -> Resp {
    call(addr, "POST", path, "", body.to_string().as_bytes())
}

/// SSE body → the `data:` payloads in order; every event must be exactly one `data: ` line.
fn sse_events(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "an SSE body ends with a blank line: {body:?}");
    body.trim_end_matches('\n')
        .split("\n\n")
        .filter(|e| !e.starts_with(':')) // keep-alive comments
        .map(|e| {
            assert!(!e.contains('\n'), "one line per event: {e:?}");
            e.strip_prefix("data: ").unwrap_or_else(|| panic!("event without `data: `: {e:?}")).to_string()
        })
        .collect()
}

fn cli_chat_greedy(system: &str, prompt: &str, max_new: usize) -> Value {
    let out = Command::new(BIN)
        .args(["generate", "--chat", "--greedy", "--backend", "cpu", "--json", "--system", system, "--prompt", prompt])
        .args(["--max-new-tokens", &max_new.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn chat_body(system: &str, user: &str, max_tokens: usize) -> Value {
    json!({"model": TINY_ID, "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
           "temperature": 0, "max_tokens": max_tokens})
}

#[test]
fn routes_and_error_statuses() {
    let srv = Server::start(&["--max-body-bytes", "2000"]);
    let a = srv.addr.as_str();
    let r = call(a, "GET", "/health", "", b"");
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let m = call(a, "GET", "/v1/models", "", b"").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], TINY_ID, "{m}");
    assert_eq!(call(a, "GET", &format!("/v1/models/{TINY_ID}"), "", b"").json()["id"], TINY_ID);
    call(a, "GET", "/v1/models/gpt-4", "", b"").error(404);
    call(a, "GET", "/no/such/route", "", b"").error(404);
    call(a, "GET", "/v1/chat/completions", "", b"").error(405);

    let user = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("malformed JSON", b"{\"messages\": [".to_vec(), 400, None),
        ("not an object", b"[1]".to_vec(), 400, None),
        ("missing messages", json!({"model": TINY_ID}).to_string().into(), 400, Some("messages")),
        (
            "unknown role",
            json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string().into(),
            400,
            Some("messages[0].role"),
        ),
        (
            "missing content",
            json!({"messages": [{"role": "user"}]}).to_string().into(),
            400,
            Some("messages[0].content"),
        ),
        ("temperature", json!({"messages": user, "temperature": 2.5}).to_string().into(), 400, Some("temperature")),
        ("top_p", json!({"messages": user, "top_p": 0}).to_string().into(), 400, Some("top_p")),
        ("max_tokens", json!({"messages": user, "max_tokens": 0}).to_string().into(), 400, Some("max_tokens")),
        ("n", json!({"messages": user, "n": 100}).to_string().into(), 400, Some("n")),
        ("stop type", json!({"messages": user, "stop": 5}).to_string().into(), 400, Some("stop")),
        ("seed type", json!({"messages": user, "seed": "x"}).to_string().into(), 400, Some("seed")),
        (
            "repetition_penalty",
            json!({"messages": user, "repetition_penalty": -1}).to_string().into(),
            400,
            Some("repetition_penalty"),
        ),
        (
            "tool without parameters",
            json!({"messages": user, "tools": [{"type": "function", "function": {"name": "f"}}]}).to_string().into(),
            400,
            Some("tools[0].function.parameters"),
        ),
        (
            "tool without type",
            json!({"messages": user, "tools": [{"function": {"name": "f", "parameters": {}}}]}).to_string().into(),
            400,
            Some("tools[0].type"),
        ),
        (
            "functions not a list",
            json!({"messages": user, "functions": {"name": "f"}}).to_string().into(),
            400,
            Some("functions"),
        ),
        (
            "tool_choice required",
            json!({"messages": user, "tools": [], "tool_choice": "required"}).to_string().into(),
            400,
            Some("tool_choice"),
        ),
        (
            "tool result without a user message",
            json!({"messages": [{"role": "tool", "content": "1", "tool_call_id": "a"}]}).to_string().into(),
            400,
            Some("messages"),
        ),
        ("history order", json!({"messages": [{"role": "assistant", "content": "x"}]}).to_string().into(), 400, None),
        ("unknown model", json!({"model": "gpt-4", "messages": user}).to_string().into(), 404, Some("model")),
        (
            "too large",
            json!({"messages": [{"role": "user", "content": "x".repeat(3000)}]}).to_string().into(),
            413,
            None,
        ),
    ];
    for (name, body, status, param) in cases {
        let e = call(a, "POST", "/v1/chat/completions", "", &body).error(status);
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{name}: {e}");
        }
    }
    let e = post(a, "/v1/completions", &json!({"prompt": [999_999_999]})).error(400);
    assert!(e["message"].as_str().unwrap().contains("out of range"), "{e}");
    post(a, "/v1/completions", &json!({"max_tokens": 3})).error(400);
    // A prompt over the context: 400 context_length_exceeded.
    let long = "hello ".repeat(40_000);
    let srv2 = Server::start(&["--max-seq-len", "64"]);
    let e = post(&srv2.addr, "/v1/completions", &json!({"prompt": long})).error(400);
    assert_eq!(e["code"], "context_length_exceeded", "{e}");

    // The server still answers after all of that; the page is there and self-contained.
    let page = call(a, "GET", "/", "", b"");
    assert_eq!(page.status, 200);
    assert!(page.headers.to_ascii_lowercase().contains("content-type: text/html"), "{}", page.headers);
    let html = page.text();
    assert!(html.contains("<script") && html.contains("/v1/chat/completions"));
    for external in ["src=\"http", "href=\"http", "@import", "url(http", "//cdn"] {
        assert!(!html.contains(external), "the page must not load external assets ({external})");
    }
    let metrics = call(a, "GET", "/metrics", "", b"").text();
    assert!(metrics.contains("qwen_requests_total{route=\"/v1/chat/completions\",status=\"400\"}"), "{metrics}");
    assert!(metrics.contains("qwen_queue_depth 0"), "{metrics}");
}

#[test]
fn greedy_chat_equals_cli_and_stream_equals_non_stream() {
    let srv = Server::start(&[]);
    let a = srv.addr.as_str();
    let (system, user, n) = ("You are terse.", "Write a poem about the sea.", 24);
    let cli = cli_chat_greedy(system, user, n);
    let r = post(a, "/v1/chat/completions", &chat_body(system, user, n));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], TINY_ID);
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(text, cli["text"].as_str().unwrap(), "server greedy text must equal the CLI's");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let cli_ids = cli["ids"].as_array().unwrap().len();
    assert_eq!(v["usage"]["completion_tokens"], cli_ids, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], cli["prompt_tokens"], "{v}");
    assert_eq!(v["usage"]["total_tokens"], cli_ids + cli["prompt_tokens"].as_u64().unwrap() as usize);
    let reason = if cli["finish_reason"] == "length" { "length" } else { "stop" };
    assert_eq!(v["choices"][0]["finish_reason"], reason);

    // The same request streamed: SSE framing, a role delta first, content deltas adding up to the same
    // text, a final chunk with the finish reason, a usage chunk, then [DONE].
    let mut body = chat_body(system, user, n);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(a, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200);
    assert!(r.headers.to_ascii_lowercase().contains("content-type: text/event-stream"), "{}", r.headers);
    let events = sse_events(&r.text());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(chunks.iter().all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"), "one id for the stream");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "{usage}");
    assert_eq!(usage["usage"], v["usage"]);
    let fin = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(fin["finish_reason"], reason);
    assert_eq!(fin["delta"], json!({}));
    let streamed: String =
        chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str().map(str::to_string)).collect();
    assert_eq!(streamed, text, "concatenated deltas must equal the non-stream text");

    // Completions: raw text with the raw stop rules, as `generate --prompt`.
    let out = Command::new(BIN)
        .args(["generate", "--greedy", "--backend", "cpu", "--json", "--prompt", "Once upon", "--max-new-tokens", "9"])
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = post(a, "/v1/completions", &json!({"prompt": "Once upon", "temperature": 0, "max_tokens": 9})).json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["text"], cli["text"], "{v}");
    let mut body = json!({"prompt": "Once upon", "temperature": 0, "max_tokens": 9, "stream": true});
    let events = sse_events(&post(a, "/v1/completions", &body).text());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, cli["text"].as_str().unwrap());
    // Seeded sampling is reproducible; n choices are n seeds.
    body = json!({"prompt": "Once upon", "temperature": 1.0, "top_k": 40, "max_tokens": 6, "seed": 11, "n": 2});
    let (x, y) = (post(a, "/v1/completions", &body).json(), post(a, "/v1/completions", &body).json());
    assert_eq!(x["choices"], y["choices"]);
    assert_eq!(x["choices"].as_array().unwrap().len(), 2);
    assert!(x["usage"]["completion_tokens"].as_u64().unwrap() <= 12);
}

#[test]
fn api_key_is_required_on_v1_when_set() {
    let srv = Server::start(&["--api-key", "s3cret"]);
    let a = srv.addr.as_str();
    let e = call(a, "GET", "/v1/models", "", b"").error(401);
    assert_eq!(e["code"], "invalid_api_key");
    call(a, "GET", "/v1/models", "Authorization: Bearer wrong\r\n", b"").error(401);
    call(a, "GET", "/v1/models", "Authorization: Bearer s3cre\r\n", b"").error(401);
    call(a, "POST", "/v1/chat/completions", "", b"{}").error(401);
    assert_eq!(call(a, "GET", "/v1/models", "Authorization: Bearer s3cret\r\n", b"").status, 200);
    assert_eq!(call(a, "GET", "/health", "", b"").status, 200, "health needs no key");
}

/// Starts a long streamed generation and returns its connection once the first chunk arrived.
fn start_long_stream(addr: &str, max_tokens: usize) -> BufReader<TcpStream> {
    let body = json!({"prompt": "a", "temperature": 1.0, "seed": 1, "max_tokens": max_tokens, "stream": true});
    let s = request_raw(addr, &head("POST", "/v1/completions", "", body.to_string().as_bytes()));
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !line.contains("data: ") {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended before its first chunk");
    }
    r
}

fn metric(addr: &str, name: &str) -> f64 {
    let text = call(addr, "GET", "/metrics", "", b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.parse().unwrap()))
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

#[test]
fn full_queue_429_and_dropped_stream_cancels() {
    let srv = Server::start(&["--max-queue", "1", "--max-seq-len", "20000"]);
    let a = srv.addr.as_str();
    let busy = start_long_stream(a, 15_000); // decoding now
                                             // One request may wait; it is sent on its own thread (its answer comes only after `busy`).
    let addr = a.to_string();
    let waiting = std::thread::spawn(move || post(&addr, "/v1/chat/completions", &chat_body("S", "hi", 3)));
    let t = Instant::now();
    while metric(a, "qwen_queue_depth") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(30), "the second request never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = post(a, "/v1/chat/completions", &chat_body("S", "hi", 3)).error(429);
    assert_eq!(e["code"], "queue_full");
    // Dropping the streaming connection cancels its generation; the waiting request then runs.
    let t = Instant::now();
    drop(busy);
    let r = waiting.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(20), "the dropped stream went on decoding ({:?})", t.elapsed());
    assert!(metric(a, "qwen_cancelled_total") >= 1.0);
    // The worker counts itself idle just after it sent the last answer.
    let t = Instant::now();
    while metric(a, "qwen_requests_running") > 0.0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the worker stayed busy");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(metric(a, "qwen_time_to_first_token_seconds_count") >= 2.0);
    assert!(metric(a, "qwen_inter_token_latency_seconds_count") >= 1.0);
}

#[test]
fn time_limit_ends_a_request_with_504() {
    let srv = Server::start(&["--timeout", "0.5", "--max-seq-len", "20000"]);
    let body = json!({"prompt": "a", "temperature": 1.0, "seed": 1, "max_tokens": 15_000});
    let t = Instant::now();
    let e = post(&srv.addr, "/v1/completions", &body).error(504);
    assert_eq!(e["code"], "timeout");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(call(&srv.addr, "GET", "/health", "", b"").status, 200);
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let mut srv = Server::start(&[]);
    let body = json!({"prompt": "a", "temperature": 1.0, "seed": 3, "max_tokens": 300, "stream": true});
    let mut r =
        BufReader::new(request_raw(&srv.addr, &head("POST", "/v1/completions", "", body.to_string().as_bytes())));
    let mut line = String::new();
    while !line.contains("data: ") {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    let st = Command::new("kill").args(["-TERM", &srv.pid().to_string()]).status().unwrap();
    assert!(st.success());
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "the in-flight stream must finish: {rest}");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let log: Vec<String> = srv.stderr.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:?}");
    assert!(TcpStream::connect(&srv.addr).is_err(), "no new connections after shutdown");
}

#[test]
fn a_client_that_hangs_up_on_a_non_streamed_request_cancels_it() {
    let srv = Server::start(&["--max-seq-len", "20000"]);
    let a = srv.addr.as_str();
    let body = json!({"prompt": "a", "temperature": 1.0, "seed": 1, "max_tokens": 15_000});
    let s = request_raw(a, &head("POST", "/v1/completions", "", body.to_string().as_bytes()));
    let t = Instant::now();
    while metric(a, "qwen_requests_running") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(30), "the request never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(s);
    let t = Instant::now();
    while metric(a, "qwen_requests_running") > 0.0 {
        // 15000 tokens take minutes on the tiny model: only a cancellation ends it this soon.
        assert!(t.elapsed() < Duration::from_secs(10), "the abandoned request went on decoding");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(metric(a, "qwen_cancelled_total"), 1.0);
    assert!(metric(a, "qwen_generation_tokens_total") < 15_000.0);
}

/// The function-call fixture (tools/gen_function_call_fixtures.py, a transcription of Qwen's openai_api.py).
fn function_call_fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/function_call_cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A fixture request as JSON text in its own key order (serde_json::Value would sort the keys of the
/// tools' `parameters`, and so change the prompt), with `extra` fields appended.
fn fixture_body(name: &str, extra: &[(&str, Value)]) -> String {
    use qwen_rt::react::Json;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/function_call_cases.json");
    let fx: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let Some(Json::Array(cases)) = fx.get("requests") else { panic!("fixture requests") };
    let case = cases.iter().find(|c| c.get("name") == Some(&Json::Str(name.into()))).unwrap();
    let mut req = case.get("request").unwrap().clone();
    if let Json::Object(entries) = &mut req {
        for (k, v) in extra {
            entries.push((k.to_string(), serde_json::from_value(v.clone()).unwrap()));
        }
    }
    req.to_python_json()
}

/// Does the server plan this fixture request with react (tool fields or tool/function messages)?
fn uses_tools(req: &Value) -> bool {
    req.get("tools").is_some()
        || req.get("functions").is_some()
        || req["messages"].as_array().unwrap().iter().any(|m| {
            matches!(m["role"].as_str(), Some("tool") | Some("function"))
                || m.get("tool_calls").is_some()
                || m.get("function_call").is_some()
        })
}

/// The server's request path (body → api::parse_chat → react plan → the prompt ids and stop rules that
/// ServedModel::prepare uses for `PromptIn::React`) gives the fixture's exact prompt ids and stops for every
/// function-calling request of the fixture, and its errors name the fixture's field. (prepare itself is
/// checked over HTTP below: usage.prompt_tokens is the fixture's length. No ServedModel here, so this test
/// does not depend on how the model is loaded.)
#[test]
fn the_request_path_builds_the_fixture_prompts() {
    use qwen_rt::server::api::parse_chat;
    use qwen_rt::server::model::{react_stops, PromptIn};
    let tok = qwen_rt::tokenizer::Tokenizer::builtin();
    let fx = function_call_fixture();
    let max_window_size = fx["max_window_size"].as_u64().unwrap() as usize;
    let (mut planned, mut errors) = (0, 0);
    for case in fx["requests"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if !uses_tools(&case["request"]) {
            continue; // plain chat: the CLI's path, checked against `generate --chat` above
        }
        let body = fixture_body(name, &[]);
        let got = parse_chat(body.as_bytes(), 32768).and_then(|r| r.to_gen_request());
        let e = &case["expect"];
        if let Some(err) = e.get("error") {
            let got = got.expect_err(name);
            assert_eq!((got.status.as_u16(), got.param.as_deref()), (400, err["path"].as_str()), "{name}: {got:?}");
            errors += 1;
            continue;
        }
        let g = got.unwrap_or_else(|err| panic!("{name}: {err:?}"));
        let t = g.tools.as_ref().expect(name);
        assert_eq!(t.plan.functions_present, e["functions_present"].as_bool().unwrap(), "{name}");
        let PromptIn::React(plan) = &g.gen.prompt else { panic!("{name}: not planned by react") };
        let want: Vec<u32> = serde_json::from_value(e["ids"].clone()).unwrap();
        assert_eq!(plan.input.prompt_ids(&tok, max_window_size), want, "{name}: prompt ids");
        let stop = react_stops(plan);
        let words: Vec<String> = serde_json::from_value(e["stop_words"].clone()).unwrap();
        assert_eq!(stop.stop_strings, words, "{name}: stop strings");
        // The original's single-id stops (<|im_end|>, and <|im_start|> for a new turn) and eos.
        let mut ids: Vec<u32> = e["generate_stop_words_ids"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w.as_array().unwrap().len() == 1 && w[0].as_u64().unwrap() >= 151643)
            .map(|w| w[0].as_u64().unwrap() as u32)
            .collect();
        ids.push(151643); // <|endoftext|>: generate's eos
        ids.sort();
        ids.dedup();
        let mut got_ids = stop.stop_ids.clone();
        got_ids.sort();
        assert_eq!(got_ids, ids, "{name}: stop ids ({})", e["path"]);
        planned += 1;
    }
    assert!(planned >= 15 && errors >= 10, "planned {planned}, errors {errors}");
}

/// Over HTTP: tools / functions requests are answered in OpenAI's shapes with the fixture's prompt
/// length in usage; streaming with tools is 400 naming `stream`. (The tiny model's words are random, so
/// which shape comes back is up to it; the call shapes themselves are checked with scripted replies in
/// src/server/routes.rs.)
#[test]
fn tools_requests_over_http() {
    let srv = Server::start(&[]);
    let a = srv.addr.as_str();
    let fx = function_call_fixture();
    let mut seen = 0;
    for case in fx["requests"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let req = &case["request"];
        if case["expect"].get("error").is_some() || !uses_tools(req) {
            continue;
        }
        let body = fixture_body(name, &[("temperature", json!(0)), ("max_tokens", json!(8)), ("n", json!(2))]);
        let r = call(a, "POST", "/v1/chat/completions", "", body.as_bytes());
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let v = r.json();
        let want = case["expect"]["ids"].as_array().unwrap().len();
        assert_eq!(v["usage"]["prompt_tokens"], want, "{name}: {v}");
        assert_eq!(v["object"], "chat.completion");
        let legacy = req.get("functions").is_some();
        for c in v["choices"].as_array().unwrap() {
            let m = &c["message"];
            assert_eq!(m["role"], "assistant", "{name}: {v}");
            match c["finish_reason"].as_str().unwrap() {
                "stop" | "length" => assert!(m["content"].is_string() && m.get("tool_calls").is_none(), "{v}"),
                "tool_calls" => {
                    assert!(!legacy, "{name}: {v}");
                    let call = &m["tool_calls"][0];
                    assert_eq!(call["type"], "function");
                    assert!(call["id"].as_str().unwrap().starts_with("call_"));
                    assert!(call["function"]["name"].is_string() && call["function"]["arguments"].is_string());
                }
                "function_call" => {
                    assert!(legacy, "{name}: {v}");
                    assert!(m["function_call"]["name"].is_string() && m["function_call"]["arguments"].is_string());
                }
                f => panic!("{name}: finish_reason {f}"),
            }
        }
        seen += 1;
    }
    assert!(seen >= 15, "{seen}");
    let body = fixture_body("tools_first_question", &[("stream", json!(true))]);
    let e = call(a, "POST", "/v1/chat/completions", "", body.as_bytes()).error(400);
    assert_eq!(e["param"], "stream", "{e}");
    assert!(e["message"].as_str().unwrap().contains("cannot be streamed"), "{e}");
    let body = fixture_body("functions_first_question_with_system", &[("stream", json!(true))]);
    assert_eq!(call(a, "POST", "/v1/chat/completions", "", body.as_bytes()).error(400)["param"], "stream");
    // The server is still healthy.
    assert_eq!(call(a, "GET", "/health", "", b"").status, 200);
}
