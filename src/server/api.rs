//! OpenAI request bodies → `GenRequest`, with every field checked and every error naming its field;
//! and the response / stream-chunk JSON shapes.
//!
//! Parsed by hand from `serde_json::Value` (not derive) so a wrong type or range says which field.
//! Unknown fields are ignored (clients send many); fields that would change the answer and are not
//! implemented (logprobs, penalties ≠ 0, echo, ...) are refused with 400 rather than ignored.
use super::error::ApiError;
use super::model::{GenRequest, PromptIn, SamplingIn};
use crate::chat::Message;
use crate::react::{CallShape, ReactPlan, ToolRequest};
use serde_json::{json, Map, Value};

/// The most choices one request may ask for (`n`).
pub const MAX_N: u64 = 8;
/// The most stop strings.
pub const MAX_STOP: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
    Function,
}

/// One chat message as OpenAI sends it. Requests with `tool` / `function` roles or tool fields are
/// planned by [`crate::react`] from the body text ([`ChatRequest::tool_request`]).
#[derive(Clone, Debug)]
pub struct ChatMessage {
    pub role: Role,
    /// Text content (a list of text parts is joined); None when null or absent.
    pub content: Option<String>,
    pub name: Option<String>,
    pub tool_calls: Option<Value>,
    pub function_call: Option<Value>,
    pub tool_call_id: Option<String>,
}

/// Parameters shared by both endpoints.
#[derive(Clone, Debug)]
pub struct Common {
    pub model: Option<String>,
    pub sampling: SamplingIn,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
}

#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub common: Common,
    pub tools: Option<Value>,
    pub functions: Option<Value>,
    pub tool_choice: Option<Value>,
    pub function_call: Option<Value>,
    /// Function calling: set when the request has `tools` / `functions` or a message with a tool or
    /// function role, `tool_calls` or `function_call`; parsed from the body text by react (which keeps
    /// the key order of `parameters`, as the prompt needs it).
    pub tool_request: Option<ToolRequest>,
}

/// How to answer a function-calling request: the plan (its `reply` parses the generated text) and the
/// request's shape (`tools` → `tool_calls`, `functions` → `function_call`).
#[derive(Clone, Debug)]
pub struct ToolReply {
    pub plan: ReactPlan,
    pub shape: CallShape,
}

/// A chat request resolved: the model's request and, for function calling, how to answer.
#[derive(Clone, Debug)]
pub struct ChatGen {
    pub gen: GenRequest,
    pub tools: Option<ToolReply>,
}

#[derive(Clone, Debug)]
pub struct CompletionRequest {
    pub prompt: PromptIn,
    pub common: Common,
}

/// The body as a JSON object, or 400 saying what is wrong with it.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("the request body must be a JSON object")),
        Err(e) => Err(ApiError::invalid(format!("the request body is not valid JSON: {e}"))),
    }
}

/// Typed, range-checked access to a request object's fields.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    /// The field unless absent or null.
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    fn f32_in(&self, key: &str, lo: f64, hi: f64, lo_open: bool) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let x = v.as_f64().ok_or_else(|| ApiError::field(key, format!("must be a number, got {v}")))?;
        let ok = x.is_finite() && (if lo_open { x > lo } else { x >= lo }) && x <= hi;
        if !ok {
            let open = if lo_open { "(" } else { "[" };
            return Err(ApiError::field(key, format!("must be in {open}{lo}, {hi}], got {x}")));
        }
        Ok(Some(x as f32))
    }
    fn uint(&self, key: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let x = v.as_u64().ok_or_else(|| ApiError::field(key, format!("must be a non-negative integer, got {v}")))?;
        if x < lo || x > hi {
            return Err(ApiError::field(key, format!("must be in [{lo}, {hi}], got {x}")));
        }
        Ok(Some(x))
    }
    fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_bool().map(Some).ok_or_else(|| ApiError::field(key, format!("must be true or false, got {v}")))
    }
    fn string(&self, key: &str) -> Result<Option<String>, ApiError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| ApiError::field(key, format!("must be a string, got {v}")))
    }
    /// A parameter this server does not implement: accepted only at its neutral value.
    fn refuse_unless(&self, key: &str, neutral: impl Fn(&Value) -> bool, what: &str) -> Result<(), ApiError> {
        match self.get(key) {
            Some(v) if !neutral(v) => Err(ApiError::unsupported(key, what)),
            _ => Ok(()),
        }
    }
}

fn parse_common(f: &Fields, context_len: usize) -> Result<Common, ApiError> {
    let seed = match f.get("seed") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::field("seed", format!("must be an integer, got {v}")))?,
        ),
    };
    let sampling = SamplingIn {
        temperature: f.f32_in("temperature", 0.0, 2.0, false)?,
        top_p: f.f32_in("top_p", 0.0, 1.0, true)?,
        top_k: f.uint("top_k", 0, u32::MAX as u64)?.map(|k| k as usize),
        repetition_penalty: f.f32_in("repetition_penalty", 0.0, 100.0, true)?,
        seed,
    };
    // max_completion_tokens is the newer name of max_tokens.
    let max_tokens = match f.uint("max_tokens", 1, context_len as u64)? {
        Some(m) => Some(m),
        None => f.uint("max_completion_tokens", 1, context_len as u64)?,
    };
    let stop = match f.get("stop") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP {
                return Err(ApiError::field("stop", format!("at most {MAX_STOP} stop strings, got {}", a.len())));
            }
            a.iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::field("stop", "must be a string or a list of strings"))?
        }
        Some(v) => return Err(ApiError::field("stop", format!("must be a string or a list of strings, got {v}"))),
    };
    if stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::field("stop", "stop strings must not be empty"));
    }
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::field("stream_options", "only allowed when stream is true"));
            }
            Fields(o)
                .bool("include_usage")
                .map_err(|_| ApiError::field("stream_options.include_usage", "must be true or false"))?
                .unwrap_or(false)
        }
        Some(v) => return Err(ApiError::field("stream_options", format!("must be an object, got {v}"))),
    };
    f.refuse_unless("logprobs", |v| v == &json!(false), "logprobs")?;
    f.refuse_unless("top_logprobs", |v| v == &json!(0), "top_logprobs")?;
    f.refuse_unless("presence_penalty", |v| v.as_f64() == Some(0.0), "presence_penalty other than 0")?;
    f.refuse_unless("frequency_penalty", |v| v.as_f64() == Some(0.0), "frequency_penalty other than 0")?;
    f.refuse_unless("logit_bias", |v| v.as_object().is_some_and(|o| o.is_empty()), "logit_bias")?;
    Ok(Common {
        model: f.string("model")?,
        sampling,
        max_tokens: max_tokens.map(|m| m as usize),
        stop,
        n: f.uint("n", 1, MAX_N)?.unwrap_or(1) as usize,
        stream,
        include_usage,
    })
}

/// OpenAI content: a string, or a list of `{"type": "text", "text": ...}` parts (joined).
fn parse_content(v: Option<&Value>, at: &str) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(ApiError::field(
                            &format!("{at}.content[{j}]"),
                            "only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
                        ))
                    }
                }
            }
            Ok(Some(out))
        }
        Some(v) => {
            Err(ApiError::field(&format!("{at}.content"), format!("must be a string or a list of parts, got {v}")))
        }
    }
}

fn parse_message(i: usize, v: &Value) -> Result<ChatMessage, ApiError> {
    let at = format!("messages[{i}]");
    let o = v.as_object().ok_or_else(|| ApiError::field(&at, "must be an object with `role` and `content`"))?;
    let f = Fields(o);
    let role = match f.get("role").and_then(Value::as_str) {
        Some("system") | Some("developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool") => Role::Tool,
        Some("function") => Role::Function,
        Some(r) => {
            return Err(ApiError::field(
                &format!("{at}.role"),
                format!("unknown role {r:?} (expected system, user, assistant, tool or function)"),
            ))
        }
        None => return Err(ApiError::field(&format!("{at}.role"), "missing (a string)")),
    };
    let content = parse_content(f.get("content"), &at)?;
    let tool_calls = f.get("tool_calls").cloned();
    let function_call = f.get("function_call").cloned();
    if content.is_none() && tool_calls.is_none() && function_call.is_none() {
        return Err(ApiError::field(&format!("{at}.content"), "missing (a string)"));
    }
    Ok(ChatMessage {
        role,
        content,
        name: f.string("name").map_err(|_| ApiError::field(&format!("{at}.name"), "must be a string"))?,
        tool_calls,
        function_call,
        tool_call_id: f
            .string("tool_call_id")
            .map_err(|_| ApiError::field(&format!("{at}.tool_call_id"), "must be a string"))?,
    })
}

pub fn parse_chat(body: &[u8], context_len: usize) -> Result<ChatRequest, ApiError> {
    let m = parse_object(body)?;
    let f = Fields(&m);
    let msgs = match f.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(ApiError::field("messages", "must not be empty")),
        Some(v) => return Err(ApiError::field("messages", format!("must be a list of messages, got {v}"))),
        None => return Err(ApiError::field("messages", "missing (a list of {role, content} messages)")),
    };
    let messages = msgs.iter().enumerate().map(|(i, v)| parse_message(i, v)).collect::<Result<Vec<_>, _>>()?;
    let common = parse_common(&f, context_len)?;
    let (tools, functions) = (f.get("tools").cloned(), f.get("functions").cloned());
    let tool_messages = messages
        .iter()
        .any(|m| matches!(m.role, Role::Tool | Role::Function) || m.tool_calls.is_some() || m.function_call.is_some());
    let tool_request = if tools.is_some() || functions.is_some() || tool_messages {
        // The body was valid JSON, so it is UTF-8.
        let text = std::str::from_utf8(body).map_err(|e| ApiError::invalid(format!("the request body: {e}")))?;
        Some(ToolRequest::from_body(text).map_err(from_react)?)
    } else {
        None
    };
    Ok(ChatRequest {
        messages,
        common,
        tools,
        functions,
        tool_choice: f.get("tool_choice").cloned(),
        function_call: f.get("function_call").cloned(),
        tool_request,
    })
}

/// A react error (`InvalidArgument("messages[3].role: ...")`) as a 400 naming the field.
fn from_react(e: crate::Error) -> ApiError {
    match e {
        crate::Error::InvalidArgument(m) => match m.split_once(": ") {
            Some((path, _)) if !path.is_empty() && !path.contains(' ') => {
                let mut e = ApiError::invalid(m.clone());
                e.param = Some(path.to_string());
                e
            }
            _ => ApiError::invalid(m),
        },
        other => ApiError::from_model(other),
    }
}

impl ChatRequest {
    /// The model's request. Plain chat (no tool fields): ChatML messages, as `qwen-run generate --chat`.
    /// Function calling: react's plan (the ReAct prompt of Qwen's openai_api.py); `tool_choice` /
    /// `function_call` other than "none" / "auto" and streaming with functions are 400, as in the original.
    pub fn to_gen_request(&self) -> Result<ChatGen, ApiError> {
        if let Some(t) = &self.tool_request {
            if self.common.stream && !t.functions.is_empty() {
                let key = if t.shape == CallShape::Functions { "functions" } else { "tools" };
                return Err(ApiError::field(
                    "stream",
                    format!("function calling (`{key}`) cannot be streamed (as in Qwen's openai_api.py); send stream: false"),
                ));
            }
            let plan = t.plan().map_err(from_react)?;
            let gen = GenRequest {
                prompt: PromptIn::React(Box::new(plan.clone())),
                sampling: self.common.sampling.clone(),
                max_tokens: self.common.max_tokens,
                stop: self.common.stop.clone(),
            };
            return Ok(ChatGen { gen, tools: Some(ToolReply { plan, shape: t.shape }) });
        }
        for (key, v) in [("tool_choice", &self.tool_choice), ("function_call", &self.function_call)] {
            if v.as_ref().is_some_and(|v| !matches!(v.as_str(), Some("none") | Some("auto"))) {
                return Err(ApiError::field(
                    key,
                    "only \"auto\" and \"none\" are supported (Qwen's ReAct prompt cannot force a function call)",
                ));
            }
        }
        let mut out = Vec::with_capacity(self.messages.len());
        for m in &self.messages {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                // parse_chat makes a tool_request for these (above).
                Role::Tool | Role::Function => {
                    return Err(ApiError::internal("a tool/function message was not planned by react"))
                }
            };
            out.push(Message { role: role.into(), content: m.content.clone().unwrap_or_default() });
        }
        let gen = GenRequest {
            prompt: PromptIn::Chat(out),
            sampling: self.common.sampling.clone(),
            max_tokens: self.common.max_tokens,
            stop: self.common.stop.clone(),
        };
        Ok(ChatGen { gen, tools: None })
    }
}

pub fn parse_completion(body: &[u8], context_len: usize) -> Result<CompletionRequest, ApiError> {
    let m = parse_object(body)?;
    let f = Fields(&m);
    let ids = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter().map(|x| x.as_u64().filter(|&i| i <= u32::MAX as u64).map(|i| i as u32)).collect()
    };
    let one = "a string, a list of token ids, or a list holding one of these (one prompt per request)";
    let prompt = match f.get("prompt") {
        None => return Err(ApiError::field("prompt", format!("missing ({one})"))),
        Some(Value::String(s)) => PromptIn::Text(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => PromptIn::Text(a[0].as_str().unwrap_or("").into()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_array() => PromptIn::Ids(
            ids(a[0].as_array().map(Vec::as_slice).unwrap_or(&[]))
                .ok_or_else(|| ApiError::field("prompt", "token ids must be non-negative integers"))?,
        ),
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => {
            PromptIn::Ids(ids(a).ok_or_else(|| ApiError::field("prompt", "token ids must be non-negative integers"))?)
        }
        Some(v) => return Err(ApiError::field("prompt", format!("must be {one}, got {v}"))),
    };
    f.refuse_unless("echo", |v| v == &json!(false), "echo")?;
    f.refuse_unless("suffix", |v| v.as_str() == Some(""), "suffix")?;
    f.refuse_unless("best_of", |v| v == &json!(1), "best_of")?;
    Ok(CompletionRequest { prompt, common: parse_common(&f, context_len)? })
}

impl CompletionRequest {
    pub fn to_gen_request(&self) -> GenRequest {
        GenRequest {
            prompt: self.prompt.clone(),
            sampling: self.common.sampling.clone(),
            max_tokens: self.common.max_tokens,
            stop: self.common.stop.clone(),
        }
    }
}

/// OpenAI's `usage` object.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ChatRequest, ApiError> {
        parse_chat(body.as_bytes(), 4096)
    }

    #[test]
    fn errors_name_the_field() {
        let e = chat(r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 3}"#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("temperature")), "{e:?}");
        let e = chat(r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = chat(r#"{"messages": []}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = chat(r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = chat(r#"{"messages": [{"role": "user", "content": "hi"}], "stop": ["a", ""]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        let e = chat(r#"{"messages": [{"role": "user", "content": "hi"}], "stream_options": {}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream_options"));
        assert!(chat("{").unwrap_err().message.contains("not valid JSON"));
        assert!(chat("[]").unwrap_err().message.contains("JSON object"));
    }

    #[test]
    fn tool_requests_are_planned_by_react() {
        let tools = r#"[{"type": "function", "function": {"name": "f", "parameters": {"b": 1, "a": 2}}}]"#;
        let r = chat(&format!(r#"{{"messages": [{{"role": "user", "content": "hi"}}], "tools": {tools}}}"#)).unwrap();
        let g = r.to_gen_request().unwrap();
        let t = g.tools.expect("a tools request has a tool reply");
        assert_eq!(t.shape, CallShape::Tools);
        assert!(t.plan.functions_present && t.plan.stop_words.contains(&"Observation:".to_string()));
        match g.gen.prompt {
            // The parameters keep the request's key order (not serde_json::Value's sorted order).
            PromptIn::React(p) => match &p.input {
                crate::react::ReactInput::Chat { query, .. } => {
                    assert!(query.contains(r#"Parameters: {"b": 1, "a": 2}"#), "{query}")
                }
                i => panic!("{i:?}"),
            },
            p => panic!("{p:?}"),
        }
        // Legacy `functions`; a trailing function result continues the assistant turn.
        let r = chat(
            r#"{"messages": [{"role": "user", "content": "q"},
                {"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "function", "name": "f", "content": "42"}],
                "functions": [{"name": "f", "parameters": {}}]}"#,
        )
        .unwrap();
        let t = r.to_gen_request().unwrap().tools.unwrap();
        assert_eq!(t.shape, CallShape::Functions);
        assert!(matches!(t.plan.input, crate::react::ReactInput::Continue { .. }));
        // Streaming with functions is refused, naming `stream`.
        let r = chat(&format!(
            r#"{{"messages": [{{"role": "user", "content": "hi"}}], "tools": {tools}, "stream": true}}"#
        ))
        .unwrap();
        let e = r.to_gen_request().unwrap_err();
        assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("stream")), "{e:?}");
        assert!(e.message.contains("cannot be streamed"), "{}", e.message);
        // Bad specs name the field.
        let e = chat(r#"{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}]}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].function.parameters"), "{e:?}");
        let r = chat(r#"{"messages": [{"role": "user", "content": "hi"}], "tools": [], "tool_choice": "required"}"#);
        assert_eq!(r.unwrap_err().param.as_deref(), Some("tool_choice"));
        let r =
            chat(r#"{"messages": [{"role": "user", "content": "hi"}], "tool_choice": {"type": "function"}}"#).unwrap();
        assert_eq!(r.to_gen_request().unwrap_err().param.as_deref(), Some("tool_choice"));
    }

    #[test]
    fn stop_seed_and_content_parts() {
        let r = chat(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                "stop": "x", "seed": -1, "n": 2, "stream": true, "stream_options": {"include_usage": true}}"#,
        )
        .unwrap();
        assert_eq!(r.common.stop, ["x"]);
        assert_eq!(r.common.sampling.seed, Some(u64::MAX));
        assert_eq!((r.common.n, r.common.stream, r.common.include_usage), (2, true, true));
        match r.to_gen_request().unwrap().gen.prompt {
            PromptIn::Chat(m) => assert_eq!(m[0].content, "ab"),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn completion_prompts() {
        let p = |b: &str| parse_completion(b.as_bytes(), 4096).map(|r| r.prompt);
        assert!(matches!(p(r#"{"prompt": "hi"}"#), Ok(PromptIn::Text(t)) if t == "hi"));
        assert!(matches!(p(r#"{"prompt": ["hi"]}"#), Ok(PromptIn::Text(t)) if t == "hi"));
        assert!(matches!(p(r#"{"prompt": [1, 2]}"#), Ok(PromptIn::Ids(v)) if v == [1, 2]));
        assert!(matches!(p(r#"{"prompt": [[3]]}"#), Ok(PromptIn::Ids(v)) if v == [3]));
        assert!(p(r#"{"prompt": ["a", "b"]}"#).is_err());
        assert!(p(r#"{"prompt": [-1]}"#).is_err());
        assert!(p(r#"{}"#).is_err());
        assert!(p(r#"{"prompt": "a", "echo": true}"#).is_err());
    }
}
