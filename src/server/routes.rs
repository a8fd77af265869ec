//! HTTP handlers: the OpenAI routes (JSON and SSE), models, health, metrics, the web page; API-key
//! check and request counting as one middleware.
use super::api::{self, Common, ToolReply};
use super::error::ApiError;
use super::model::{Finish, GenRequest, ServedModel};
use super::scheduler::{Event, Rejected, Scheduler, Ticket};
use crate::react::{CallShape, Reply};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The web chat page (HTML, CSS and JS in one file, no external assets).
const PAGE: &str = include_str!("page.html");

pub struct AppState {
    pub model: Arc<ServedModel>,
    pub sched: Arc<Scheduler>,
    /// sha256 of the API key, when one is set.
    pub api_key_hash: Option<[u8; 32]>,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Unix time the server started (the model's `created`).
    pub started: u64,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth_and_count))
        .with_state(state)
}

/// The route label of /metrics (a fixed set, so a client cannot grow the label space).
fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        p if p == "/v1/models" || p.starts_with("/v1/models/") => "/v1/models",
        _ => "other",
    }
}

/// Constant-time equality of two digests.
fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn key_hash(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// `/v1/*` needs `Authorization: Bearer KEY` when the server has a key (compared as sha256 digests in
/// constant time); every response is counted by route and status.
async fn auth_and_count(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let resp = match &s.api_key_hash {
        Some(want) if req.uri().path().starts_with("/v1/") => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|k| key_hash(k.trim()));
            match given {
                Some(g) if digest_eq(&g, want) => next.run(req).await,
                _ => ApiError::unauthorized().into_response(),
            }
        }
        _ => next.run(req).await,
    };
    s.sched.metrics.count_request(route, resp.status().as_u16());
    resp
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let text = s.sched.metrics.render(s.sched.queued(), s.sched.running());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

fn model_object(s: &AppState) -> Value {
    json!({"id": s.model.id(), "object": "model", "created": s.started, "owned_by": "qwen-rt",
           "context_length": s.model.context_len()})
}

async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&s)]}))
}

async fn model_by_id(
    State(s): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id != s.model.id() {
        return Err(ApiError::model_not_found(&id, s.model.id()));
    }
    Ok(Json(model_object(&s)))
}

/// The body, or 413 when over the limit (other read failures are 400).
fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(limit),
        _ => ApiError::invalid(format!("cannot read the request body: {}", r.body_text())),
    })
}

fn check_model(s: &AppState, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != s.model.id() => Err(ApiError::model_not_found(m, s.model.id())),
        _ => Ok(()),
    }
}

async fn chat_completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = body_bytes(body, s.max_body_bytes)?;
    let req = api::parse_chat(&body, s.model.context_len())?;
    check_model(&s, &req.common.model)?;
    let planned = req.to_gen_request()?;
    respond(s, planned.gen, req.common, Kind::Chat, planned.tools, arrived).await
}

async fn completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = body_bytes(body, s.max_body_bytes)?;
    let req = api::parse_completion(&body, s.model.context_len())?;
    check_model(&s, &req.common.model)?;
    let gen = req.to_gen_request();
    respond(s, gen, req.common, Kind::Completion, None, arrived).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// `chatcmpl-…` / `cmpl-…`: unique in this process, unpredictable enough across restarts.
fn response_id(kind: Kind) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let h = key_hash(&format!("{t}-{n}-{}", std::process::id()));
    let hex: String = h[..12].iter().map(|b| format!("{b:02x}")).collect();
    match kind {
        Kind::Chat => format!("chatcmpl-{hex}"),
        Kind::Completion => format!("cmpl-{hex}"),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn finish_name(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length | Finish::Cancelled => "length",
    }
}

/// Prepare (tokenize, resolve sampling: 400 on bad input), queue (429 when full), then answer as JSON
/// or as an SSE stream. `tools`: a function-calling request (never streamed), its replies parsed.
async fn respond(
    s: Arc<AppState>,
    gen: GenRequest,
    common: Common,
    kind: Kind,
    tools: Option<ToolReply>,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let model = s.model.clone();
    let prepared = tokio::task::spawn_blocking(move || model.prepare(&gen))
        .await
        .map_err(|e| ApiError::internal(format!("prepare failed: {e}")))?
        .map_err(ApiError::from_model)?;
    let deadline = arrived + s.request_timeout;
    let ticket = s.sched.submit(prepared, common.n, arrived, deadline).map_err(|r| match r {
        Rejected::Full(cap) => ApiError::queue_full(cap),
        Rejected::Closed => ApiError::unavailable(),
    })?;
    let meta = Meta { id: response_id(kind), created: unix_now(), model: s.model.id().to_string(), kind, tools };
    if common.stream {
        Ok(stream_response(ticket, meta, common, deadline, s.request_timeout))
    } else {
        collect_response(ticket, meta, common.n, deadline, s.request_timeout).await.map(|v| Json(v).into_response())
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    /// Function calling: how to read the generated text (non-streamed chat only).
    tools: Option<ToolReply>,
}

/// A chat choice's `message` and `finish_reason`. Function calling: the generated text parsed as Qwen's
/// openai_api.py parses it; a call becomes `tool_calls` [{id, type, function: {name, arguments}}] with
/// finish_reason "tool_calls" (the `tools` shape) or `function_call` {name, arguments} with
/// "function_call" (the legacy `functions` shape); the call's thought is the content (null when empty).
fn chat_message(tools: Option<&ToolReply>, call_id: &str, text: &str, finish: Finish) -> (Value, &'static str) {
    let Some(t) = tools else {
        return (json!({"role": "assistant", "content": text}), finish_name(finish));
    };
    match t.plan.reply(text) {
        Reply::Text(content) => (json!({"role": "assistant", "content": content}), finish_name(finish)),
        Reply::FunctionCall { name, arguments, thought } => {
            let content = if thought.is_empty() { Value::Null } else { Value::String(thought) };
            let function = json!({"name": name, "arguments": arguments});
            match t.shape {
                CallShape::Tools => (
                    json!({"role": "assistant", "content": content,
                           "tool_calls": [{"id": call_id, "type": "function", "function": function}]}),
                    "tool_calls",
                ),
                CallShape::Functions => {
                    (json!({"role": "assistant", "content": content, "function_call": function}), "function_call")
                }
            }
        }
    }
}

/// `call_…`: a tool call's id, derived from the response id and the choice index.
fn call_id(response_id: &str, k: usize) -> String {
    let h = key_hash(&format!("{response_id}-{k}"));
    let hex: String = h[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("call_{hex}")
}

/// Waits for every choice; the ticket (dropped on a client disconnect, which drops this future)
/// cancels the job.
async fn collect_response(
    mut ticket: Ticket,
    meta: Meta,
    n: usize,
    deadline: Instant,
    limit: Duration,
) -> Result<Value, ApiError> {
    let mut texts = vec![String::new(); n];
    let mut outs = vec![None; n];
    let mut done = 0;
    while done < n {
        let ev = tokio::time::timeout_at(deadline.into(), ticket.events.recv())
            .await
            .map_err(|_| ApiError::timeout(limit.as_secs_f64()))?;
        match ev {
            Some(Event::Piece(k, p)) => texts[k].push_str(&p),
            Some(Event::Done(k, out)) => {
                outs[k] = Some(out);
                done += 1;
            }
            Some(Event::TimedOut) => return Err(ApiError::timeout(limit.as_secs_f64())),
            Some(Event::Failed(e)) => return Err(ApiError::internal(e)),
            None => return Err(ApiError::internal("the worker dropped the request")),
        }
    }
    ticket.finish();
    let outs: Vec<_> = outs.into_iter().flatten().collect();
    let prompt_tokens = outs.first().map(|o| o.prompt_tokens).unwrap_or(0);
    let completion: usize = outs.iter().map(|o| o.completion_tokens).sum();
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(k, o)| {
            debug_assert_eq!(texts[k], o.text, "streamed pieces must add up to the text");
            match meta.kind {
                Kind::Chat => {
                    let (message, finish) = chat_message(meta.tools.as_ref(), &call_id(&meta.id, k), &o.text, o.finish);
                    json!({"index": k, "message": message, "logprobs": null, "finish_reason": finish})
                }
                Kind::Completion => json!({"index": k, "text": o.text, "logprobs": null,
                                           "finish_reason": finish_name(o.finish)}),
            }
        })
        .collect();
    let object = if meta.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
    Ok(json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model,
              "choices": choices, "usage": api::usage(prompt_tokens, completion)}))
}

/// One SSE chunk of choice `k`: a delta (chat) or text (completion), or the final one with its reason.
fn chunk(meta: &Meta, include_usage: bool, k: usize, text: Option<&str>, role: bool, finish: Option<Finish>) -> Value {
    let fin = finish.map(finish_name);
    let choice = match meta.kind {
        Kind::Chat => {
            let delta = match (role, text) {
                (true, _) => json!({"role": "assistant", "content": ""}),
                (false, Some(t)) => json!({"content": t}),
                (false, None) => json!({}),
            };
            json!({"index": k, "delta": delta, "logprobs": null, "finish_reason": fin})
        }
        Kind::Completion => json!({"index": k, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": fin}),
    };
    let object = if meta.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
    let mut v = json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model,
                       "choices": [choice]});
    if include_usage {
        v["usage"] = Value::Null;
    }
    v
}

struct StreamState {
    ticket: Option<Ticket>,
    meta: Meta,
    common: Common,
    deadline: Instant,
    limit: Duration,
    pending: VecDeque<String>,
    done: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
}

/// The SSE response: `data: {chunk}` events, then `data: [DONE]`. The stream owns the ticket, so a
/// client that goes away (hyper drops the body) cancels the generation at its next token.
fn stream_response(ticket: Ticket, meta: Meta, common: Common, deadline: Instant, limit: Duration) -> Response {
    let mut pending = VecDeque::new();
    if meta.kind == Kind::Chat {
        for k in 0..common.n {
            pending.push_back(chunk(&meta, common.include_usage, k, None, true, None).to_string());
        }
    }
    let st = StreamState {
        ticket: Some(ticket),
        meta,
        common,
        deadline,
        limit,
        pending,
        done: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), st));
            }
            let ticket = st.ticket.as_mut()?; // None: everything was sent
            let ev = match tokio::time::timeout_at(st.deadline.into(), ticket.events.recv()).await {
                Ok(ev) => ev,
                Err(_) => Some(Event::TimedOut),
            };
            let usage = st.common.include_usage;
            match ev {
                Some(Event::Piece(k, p)) => {
                    st.pending.push_back(chunk(&st.meta, usage, k, Some(&p), false, None).to_string())
                }
                Some(Event::Done(k, out)) => {
                    st.pending.push_back(chunk(&st.meta, usage, k, None, false, Some(out.finish)).to_string());
                    st.prompt_tokens = out.prompt_tokens;
                    st.completion_tokens += out.completion_tokens;
                    st.done += 1;
                    if st.done == st.common.n {
                        if usage {
                            let u = json!({"id": st.meta.id, "object": if st.meta.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
                                           "created": st.meta.created, "model": st.meta.model, "choices": [],
                                           "usage": api::usage(st.prompt_tokens, st.completion_tokens)});
                            st.pending.push_back(u.to_string());
                        }
                        st.pending.push_back("[DONE]".into());
                        if let Some(t) = st.ticket.take() {
                            t.finish();
                        }
                    }
                }
                Some(Event::TimedOut) => {
                    st.pending.push_back(ApiError::timeout(st.limit.as_secs_f64()).body().to_string());
                    st.ticket = None; // dropping the ticket cancels the job
                }
                Some(Event::Failed(e)) => {
                    st.pending.push_back(ApiError::internal(e).body().to_string());
                    st.ticket = None;
                }
                None => {
                    st.pending.push_back(ApiError::internal("the worker dropped the request").body().to_string());
                    st.ticket = None;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::react::ToolRequest;

    fn tool_reply(body: &str) -> ToolReply {
        let t = ToolRequest::from_body(body).unwrap();
        ToolReply { plan: t.plan().unwrap(), shape: t.shape }
    }

    const USER: &str = r#"[{"role": "user", "content": "Weather in Paris?"}]"#;
    const WEATHER: &str = r#"{"name": "get_weather", "description": "Current weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}"#;
    /// A scripted model reply: what Qwen writes for a call (generation stopped at "Observation:").
    const CALL: &str =
        "Thought: I should look up the weather.\nAction: get_weather\nAction Input: {\"city\": \"Paris\"}\n";

    #[test]
    fn a_call_becomes_tool_calls_or_function_call_by_the_request_shape() {
        let tools =
            tool_reply(&format!(r#"{{"messages": {USER}, "tools": [{{"type": "function", "function": {WEATHER}}}]}}"#));
        let (m, finish) = chat_message(Some(&tools), "call_1", CALL, Finish::Stop);
        assert_eq!(finish, "tool_calls");
        assert_eq!(m["content"], "I should look up the weather.");
        assert_eq!(m["tool_calls"].as_array().unwrap().len(), 1, "{m}");
        let c = &m["tool_calls"][0];
        assert_eq!((c["id"].as_str(), c["type"].as_str()), (Some("call_1"), Some("function")));
        assert_eq!(c["function"]["name"], "get_weather");
        let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert!(m.get("function_call").is_none());

        let functions = tool_reply(&format!(r#"{{"messages": {USER}, "functions": [{WEATHER}]}}"#));
        let (m, finish) = chat_message(Some(&functions), "call_1", CALL, Finish::Stop);
        assert_eq!(finish, "function_call");
        assert_eq!(m["function_call"], json!({"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}));
        assert!(m.get("tool_calls").is_none());
    }

    #[test]
    fn a_final_answer_or_plain_text_is_content() {
        let tools =
            tool_reply(&format!(r#"{{"messages": {USER}, "tools": [{{"type": "function", "function": {WEATHER}}}]}}"#));
        let (m, finish) = chat_message(
            Some(&tools),
            "c",
            "Thought: I now know the final answer.\nFinal Answer: Sunny.",
            Finish::Stop,
        );
        assert_eq!((m["content"].as_str(), finish), (Some("Sunny."), "stop"));
        assert!(m.get("tool_calls").is_none());
        let (m, finish) = chat_message(Some(&tools), "c", "  just text  ", Finish::Length);
        assert_eq!((m["content"].as_str(), finish), (Some("just text"), "length"));
        // tool_choice "none": the same text is never read as a call.
        let none = tool_reply(&format!(
            r#"{{"messages": {USER}, "tools": [{{"type": "function", "function": {WEATHER}}}], "tool_choice": "none"}}"#
        ));
        let (m, finish) = chat_message(Some(&none), "c", CALL, Finish::Stop);
        assert_eq!((m["content"].as_str(), finish), (Some(CALL.trim()), "stop"));
        // Plain chat: the text as generated.
        let (m, _) = chat_message(None, "c", " x ", Finish::Stop);
        assert_eq!(m, json!({"role": "assistant", "content": " x "}));
    }
}
