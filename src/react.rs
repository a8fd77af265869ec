//! Function calling the way Qwen-7B-Chat was trained: the ReAct prompt and reply format of the model's own
//! OpenAI-style server, `openai_api.py` (QwenLM/Qwen; spec §6). Sits after [`crate::chat`] in the data flow:
//! a request's messages and functions become either one ChatML turn for [`chat::make_context`] or a raw
//! continuation of the unfinished assistant turn, plus the stop words; the generated text is parsed back into
//! plain text or a function call. `tools/gen_function_call_fixtures.py` transcribes the original in Python and
//! tests/function_call.rs checks this module against it byte for byte.
//!
//! # Use (what a server does)
//!
//! ```text
//! let req  = ToolRequest::from_body(body_text)?;            // or ToolRequest::from_json(&json) / by hand
//! let plan = req.plan()?;                                     // = react::plan(&msgs, &fns, choice, &stop)
//! let ids  = plan.input.prompt_ids(tok, max_window_size);     // what the model is fed
//! // generate with the chatml stop ids + plan.stop_words as stop strings (plan.model_stop_word_ids(tok) is
//! // the original's exact id list), then, with `generated` = the decoded new tokens:
//! match plan.reply(&generated) {
//!     Reply::Text(content) => ...,                             // finish_reason "stop"
//!     Reply::FunctionCall { name, arguments, thought } => ..., // "tool_calls" / "function_call"; thought
//! }                                                            // is the message content
//! ```
//!
//! * [`plan`] → [`ReactPlan`] { `input`: [`ReactInput::Chat`] { system, history, query } (model.chat) or
//!   [`ReactInput::Continue`] { system, history, prompt_text } (openai_api's text completion, taken when the
//!   conversation ends with an assistant or function/tool message), `stop_words`, `functions_present` }.
//! * [`parse_reply`] (openai_api's `parse_response`), [`trim_stop_words`], [`ReactPlan::reply`] (the
//!   original's post-processing of the generated text: strip or trim, cut at stop words, parse).
//! * Request pieces: [`ChatMessage`] (roles system/user/assistant/tool/function, `content` may be null,
//!   `function_call`, `tool_calls`, `name`, `tool_call_id`), [`FunctionSpec`] (name / description /
//!   parameters and the name_for_model / name_for_human / description_for_model aliases), [`ToolChoice`],
//!   and [`Json`], an order-keeping JSON value: `parameters` are printed as Python's `json.dumps` prints
//!   them, in the request's key order. Deserialize the body straight into `Json` / [`ToolRequest`], not
//!   through `serde_json::Value` (which sorts keys). Errors name the request field (`messages[3].role`).
//!
//! # The `tools` shape (ours; openai_api.py implements `functions`)
//!
//! `tools[i] = {"type": "function", "function": F}` is `functions[i] = F`. An assistant message with
//! `tool_calls` [c1..ck] reads as k consecutive assistant messages with `function_call` c1..ck (its content
//! goes with c1), and the `tool` messages right after it as `function` messages placed after the call they
//! answer (by `tool_call_id`, else in order); the original merges consecutive assistant/function messages into
//! one assistant turn. Any other `tool` message is a `function` message. `tool_choice` (or the legacy
//! `function_call` field) "none" runs the request as one without functions; "auto" is the default; forcing a
//! call is rejected. The reply is shape-independent: answer `tool_calls` with finish_reason "tool_calls" where
//! openai_api.py answers `function_call` with "function_call".
//!
//! # Where we differ from the original (deliberately)
//!
//! * The continuation prompt's ids: the original encodes the whole prompt text with special tokens allowed,
//!   so `<|im_end|>` inside a message or tool result becomes a control token. [`ReactInput::prompt_ids`]
//!   encodes the text between the structural markers with special-token text as plain text: the same ids for
//!   every prompt whose contents hold no special-token text (the fixture checks it), injection-safe otherwise.
//! * Bad requests that crash the original (KeyError → HTTP 500) or that pydantic would reject are errors
//!   naming the field. JSON integers beyond 64 bits reach us as floats (serde_json), so `json.dumps` of such a
//!   number in `parameters` differs from Python's.
use crate::chat::{self, Turn, DEFAULT_SYSTEM};
use crate::error::{Error, Result};
use crate::tokenizer::{Tokenizer, IM_END, IM_START};
use std::fmt::Write as _;

// ------------------------------------------------------------------------------------------------------------
// Python string semantics the original relies on.

/// Python's `str.isspace()`: what `strip()` / `rstrip()` remove. Unicode White_Space plus U+001C..U+001F.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Python `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_isspace)
}

/// `s.lstrip('\n').rstrip()`, the original's clean-up of every message content.
fn clean(s: &str) -> &str {
    py_rstrip(s.trim_start_matches('\n'))
}

// ------------------------------------------------------------------------------------------------------------
// Json: an order-keeping JSON value printed like Python's json.dumps(ensure_ascii=False).

/// A JSON value that keeps object keys in document order (a later duplicate key replaces the value in the
/// first one's place, as Python's `json.loads` does). Build it with serde (`serde_json::from_str::<Json>`).
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// Integers that fit i64 / u64 (serde_json gives larger ones as floats).
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The value of `key` in an object (None for a missing key or a non-object).
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// `get(key)`, with JSON null read as absent.
    fn get_some(&self, key: &str) -> Option<&Json> {
        self.get(key).filter(|v| **v != Json::Null)
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Python's `json.dumps(value, ensure_ascii=False)`: separators ", " and ": ", keys in order, floats as
    /// Python's `repr`, only `"`, `\` and U+0000..U+001F escaped.
    pub fn to_python_json(&self) -> String {
        let mut out = String::new();
        self.write_python(&mut out);
        out
    }

    fn write_python(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::UInt(u) => {
                let _ = write!(out, "{u}");
            }
            Json::Float(f) => out.push_str(&py_float_repr(*f)),
            Json::Str(s) => py_json_string(s, out),
            Json::Array(items) => {
                out.push('[');
                for (n, v) in items.iter().enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    v.write_python(out);
                }
                out.push(']');
            }
            Json::Object(entries) => {
                out.push('{');
                for (n, (k, v)) in entries.iter().enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    py_json_string(k, out);
                    out.push_str(": ");
                    v.write_python(out);
                }
                out.push('}');
            }
        }
    }
}

/// A JSON string literal as Python's json module writes it with ensure_ascii=False.
fn py_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` (as json.dumps prints floats): the shortest round-trip digits, fixed notation for
/// decimal exponents -4..=15 (always with a fractional part), else `d.ddde±XX`.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // Rust's `{:e}` prints the shortest round-trip digits: "-1.2345e-7", "0e0", "1e16".
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs());
    }
    out
}

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Json, E> {
                Ok(Json::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Json, E> {
                Ok(Json::UInt(v))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Json, E> {
                Ok(Json::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Json, E> {
                Ok(Json::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Json, E> {
                Ok(Json::Str(v))
            }
            fn visit_unit<E>(self) -> std::result::Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> std::result::Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Json, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Json, A::Error> {
                let mut entries: Vec<(String, Json)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    match entries.iter_mut().find(|(old, _)| *old == k) {
                        Some(slot) => slot.1 = v,
                        None => entries.push((k, v)),
                    }
                }
                Ok(Json::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

// ------------------------------------------------------------------------------------------------------------
// Request pieces.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// OpenAI's tool result (answers one of the previous assistant message's `tool_calls`).
    Tool,
    /// The legacy function result (`openai_api.py`'s role "function").
    Function,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => Role::Function,
            _ => return None,
        })
    }
}

/// A function call: the name and the arguments as the JSON text the model wrote (not validated, as in
/// OpenAI's API).
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// One entry of an assistant message's `tool_calls` (type "function").
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: Option<String>,
    pub function: FunctionCall,
}

/// One request message. `function_call` / `tool_calls` are read on assistant messages only, `tool_call_id`
/// on tool messages only (as the original ignores `function_call` elsewhere); `name` is kept but, as in the
/// original, not part of the prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: Option<String>,
    pub name: Option<String>,
    pub function_call: Option<FunctionCall>,
    pub tool_calls: Vec<ToolCall>,
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with just a role and content.
    pub fn new(role: Role, content: Option<&str>) -> Self {
        ChatMessage {
            role,
            content: content.map(str::to_owned),
            name: None,
            function_call: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// `messages[index]` of a request. Errors name the field: `messages[3].role`.
    pub fn from_json(index: usize, v: &Json) -> Result<Self> {
        let at = format!("messages[{index}]");
        if !matches!(v, Json::Object(_)) {
            return Err(field_err(&at, "must be an object"));
        }
        let role = match v.get("role") {
            Some(Json::Str(s)) => Role::parse(s).ok_or_else(|| {
                field_err(
                    &format!("{at}.role"),
                    &format!("unknown role {s:?} (expected system, user, assistant, tool or function)"),
                )
            })?,
            _ => return Err(field_err(&format!("{at}.role"), "missing or not a string")),
        };
        let content = match v.get_some("content") {
            None => None,
            Some(Json::Str(s)) => Some(s.clone()),
            Some(_) => return Err(field_err(&format!("{at}.content"), "must be a string or null")),
        };
        let name = v.get_some("name").and_then(Json::as_str).map(str::to_owned);
        let mut m =
            ChatMessage { role, content, name, function_call: None, tool_calls: Vec::new(), tool_call_id: None };
        match role {
            Role::Assistant => {
                let calls = match v.get_some("tool_calls") {
                    None => &[][..],
                    Some(Json::Array(calls)) => calls,
                    Some(_) => return Err(field_err(&format!("{at}.tool_calls"), "must be an array")),
                };
                let fc = v.get_some("function_call");
                if !calls.is_empty() && fc.is_some() {
                    return Err(field_err(&format!("{at}.tool_calls"), "give tool_calls or function_call, not both"));
                }
                if let Some(fc) = fc {
                    m.function_call = Some(function_call_from_json(&format!("{at}.function_call"), fc)?);
                }
                for (k, c) in calls.iter().enumerate() {
                    let cat = format!("{at}.tool_calls[{k}]");
                    if !matches!(c, Json::Object(_)) {
                        return Err(field_err(&cat, "must be an object"));
                    }
                    if let Some(t) = c.get("type") {
                        if t.as_str() != Some("function") {
                            return Err(field_err(&format!("{cat}.type"), "must be \"function\""));
                        }
                    }
                    let id = match c.get_some("id") {
                        None => None,
                        Some(Json::Str(s)) => Some(s.clone()),
                        Some(_) => return Err(field_err(&format!("{cat}.id"), "must be a string")),
                    };
                    let f = c.get("function").unwrap_or(&Json::Null);
                    let function = function_call_from_json(&format!("{cat}.function"), f)?;
                    m.tool_calls.push(ToolCall { id, function });
                }
            }
            Role::Tool => {
                m.tool_call_id = match v.get_some("tool_call_id") {
                    None => None,
                    Some(Json::Str(s)) => Some(s.clone()),
                    Some(_) => return Err(field_err(&format!("{at}.tool_call_id"), "must be a string")),
                };
            }
            _ => {}
        }
        Ok(m)
    }
}

fn function_call_from_json(at: &str, v: &Json) -> Result<FunctionCall> {
    if !matches!(v, Json::Object(_)) {
        return Err(field_err(at, "must be an object with name and arguments"));
    }
    let s = |key: &str| match v.get(key) {
        Some(Json::Str(s)) => Ok(s.clone()),
        _ => Err(field_err(&format!("{at}.{key}"), "must be a string")),
    };
    Ok(FunctionCall { name: s("name")?, arguments: s("arguments")? })
}

/// One function the model may call: OpenAI's {name, description, parameters} or the plugin form
/// {name_for_model, name_for_human, description_for_model, parameters} (openai_api.py reads both; the
/// `_for_` fields win). `parameters` is any JSON (a JSON schema, or react_demo's list of parameters) and is
/// printed as Python's json.dumps prints it.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionSpec {
    pub name: Option<String>,
    pub name_for_model: Option<String>,
    pub name_for_human: Option<String>,
    pub description: Option<String>,
    pub description_for_model: Option<String>,
    pub parameters: Json,
}

impl FunctionSpec {
    /// `functions[i]` (or `tools[i].function`, named by `at`).
    pub fn from_json(at: &str, v: &Json) -> Result<Self> {
        if !matches!(v, Json::Object(_)) {
            return Err(field_err(at, "must be an object"));
        }
        let s = |key: &str| -> Result<Option<String>> {
            match v.get(key) {
                None => Ok(None),
                Some(Json::Str(s)) => Ok(Some(s.clone())),
                Some(_) => Err(field_err(&format!("{at}.{key}"), "must be a string")),
            }
        };
        let spec = FunctionSpec {
            name: s("name")?,
            name_for_model: s("name_for_model")?,
            name_for_human: s("name_for_human")?,
            description: s("description")?,
            description_for_model: s("description_for_model")?,
            parameters: v.get("parameters").cloned().unwrap_or(Json::Null),
        };
        if spec.name.is_none() && spec.name_for_model.is_none() {
            return Err(field_err(&format!("{at}.name"), "missing"));
        }
        if v.get("parameters").is_none() {
            return Err(field_err(&format!("{at}.parameters"), "missing (a JSON schema; {} for none)"));
        }
        Ok(spec)
    }

    /// The name the model uses in `Action:` (name_for_model, else name).
    pub fn model_name(&self) -> &str {
        self.name_for_model.as_deref().or(self.name.as_deref()).unwrap_or("")
    }

    /// `TOOL_DESC` filled in, as openai_api.parse_messages does.
    fn tool_desc(&self) -> String {
        let name = self.name.as_deref().unwrap_or("");
        let name_m = self.name_for_model.as_deref().unwrap_or(name);
        let name_h = self.name_for_human.as_deref().unwrap_or(name);
        let desc = self.description.as_deref().unwrap_or("");
        let desc_m = self.description_for_model.as_deref().unwrap_or(desc);
        format!(
            "{name_m}: Call this tool to interact with the {name_h} API. What is the {name_h} API useful for? \
             {desc_m} Parameters: {}",
            self.parameters.to_python_json()
        )
    }
}

/// `tool_choice` (or the legacy `function_call` request field). Only the choices the ReAct prompt can honour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (the default).
    #[default]
    Auto,
    /// Run as a request without functions.
    None,
}

impl ToolChoice {
    /// `field` is "tool_choice" or "function_call" (for the error). JSON null is Auto.
    pub fn from_json(field: &str, v: &Json) -> Result<Self> {
        match v {
            Json::Null => Ok(ToolChoice::Auto),
            Json::Str(s) if s == "auto" => Ok(ToolChoice::Auto),
            Json::Str(s) if s == "none" => Ok(ToolChoice::None),
            _ => Err(field_err(
                field,
                "only \"auto\" and \"none\" are supported (Qwen's ReAct prompt cannot force a function call)",
            )),
        }
    }
}

/// Which request field carried the functions, so the reply can use the same shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CallShape {
    /// `tools` → answer `tool_calls`, finish_reason "tool_calls".
    #[default]
    Tools,
    /// `functions` → answer `function_call`, finish_reason "function_call".
    Functions,
}

/// The fields of an OpenAI chat request that this module reads.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolRequest {
    pub messages: Vec<ChatMessage>,
    pub functions: Vec<FunctionSpec>,
    pub shape: CallShape,
    pub tool_choice: ToolChoice,
    /// The request's `stop` (a string is a one-element list).
    pub stop: Vec<String>,
}

impl ToolRequest {
    /// From the request body text (other fields are ignored).
    pub fn from_body(body: &str) -> Result<Self> {
        let v: Json = serde_json::from_str(body).map_err(|e| Error::invalid(format!("request body: {e}")))?;
        Self::from_json(&v)
    }

    /// From the parsed body: `messages`, `functions` or `tools`, `tool_choice` / `function_call`, `stop`.
    pub fn from_json(body: &Json) -> Result<Self> {
        if !matches!(body, Json::Object(_)) {
            return Err(Error::invalid("request body: must be a JSON object"));
        }
        let (functions, tools) = (body.get_some("functions"), body.get_some("tools"));
        let (shape, functions) = match (functions, tools) {
            (Some(_), Some(_)) => return Err(field_err("tools", "give `tools` or `functions`, not both")),
            (None, Some(Json::Array(ts))) => {
                let mut out = Vec::new();
                for (i, t) in ts.iter().enumerate() {
                    if !matches!(t, Json::Object(_)) {
                        return Err(field_err(&format!("tools[{i}]"), "must be an object"));
                    }
                    if t.get("type").and_then(Json::as_str) != Some("function") {
                        return Err(field_err(&format!("tools[{i}].type"), "must be \"function\""));
                    }
                    out.push(FunctionSpec::from_json(
                        &format!("tools[{i}].function"),
                        t.get("function").unwrap_or(&Json::Null),
                    )?);
                }
                (CallShape::Tools, out)
            }
            (None, Some(_)) => return Err(field_err("tools", "must be an array")),
            (Some(Json::Array(fs)), None) => {
                let out: Result<Vec<_>> = fs
                    .iter()
                    .enumerate()
                    .map(|(i, f)| FunctionSpec::from_json(&format!("functions[{i}]"), f))
                    .collect();
                (CallShape::Functions, out?)
            }
            (Some(_), None) => return Err(field_err("functions", "must be an array")),
            (None, None) => (CallShape::Tools, Vec::new()),
        };
        let mut tool_choice = ToolChoice::Auto;
        for field in ["tool_choice", "function_call"] {
            if ToolChoice::from_json(field, body.get(field).unwrap_or(&Json::Null))? == ToolChoice::None {
                tool_choice = ToolChoice::None;
            }
        }
        let messages = match body.get("messages") {
            Some(Json::Array(ms)) if !ms.is_empty() => {
                ms.iter().enumerate().map(|(i, m)| ChatMessage::from_json(i, m)).collect::<Result<Vec<_>>>()?
            }
            _ => return Err(field_err("messages", "must be a non-empty array")),
        };
        let stop = match body.get_some("stop") {
            None => Vec::new(),
            Some(Json::Str(s)) => vec![s.clone()],
            Some(Json::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.as_str().map(str::to_owned).ok_or_else(|| field_err(&format!("stop[{i}]"), "must be a string"))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(field_err("stop", "must be a string or an array of strings")),
        };
        Ok(ToolRequest { messages, functions, shape, tool_choice, stop })
    }

    /// [`plan`] of this request.
    pub fn plan(&self) -> Result<ReactPlan> {
        plan(&self.messages, &self.functions, self.tool_choice, &self.stop)
    }
}

fn field_err(path: &str, msg: &str) -> Error {
    Error::invalid(format!("{path}: {msg}"))
}

// ------------------------------------------------------------------------------------------------------------
// Prompt building: openai_api.create_chat_completion / parse_messages / text_complete_last_message.

/// What the model is fed.
#[derive(Clone, Debug, PartialEq)]
pub enum ReactInput {
    /// `model.chat(query, history, system)`: the ChatML prompt of [`chat::make_context`].
    Chat { system: String, history: Vec<Turn>, query: String },
    /// Text completion of the unfinished last assistant turn (openai_api's `text_complete_last_message`):
    /// `prompt_text` = system and history in ChatML, ending inside the last assistant message (no
    /// `<|im_end|>`), e.g. after `\nObservation: {result}\nThought:`.
    Continue { system: String, history: Vec<Turn>, prompt_text: String },
}

impl ReactInput {
    /// The prompt ids. Chat: `chat::make_context` (history packed under `max_window_size`). Continue: the
    /// prompt text with `<|im_start|>` / `<|im_end|>` markers as ids and everything between them encoded with
    /// special-token text as plain text (whole, untruncated; `max_window_size` is not used, as in the
    /// original).
    pub fn prompt_ids(&self, tok: &Tokenizer, max_window_size: usize) -> Vec<u32> {
        match self {
            ReactInput::Chat { system, history, query } => {
                chat::make_context(tok, system, history, query, max_window_size)
            }
            ReactInput::Continue { system, history, .. } => {
                let nl = tok.encode("\n");
                let mut ids = vec![IM_START];
                ids.extend(tok.encode(&format!("system\n{system}")));
                ids.push(IM_END);
                for t in history {
                    ids.extend_from_slice(&nl);
                    ids.push(IM_START);
                    ids.extend(tok.encode(&format!("user\n{}", clean(&t.query))));
                    ids.push(IM_END);
                    ids.extend_from_slice(&nl);
                    ids.push(IM_START);
                    ids.extend(tok.encode(&format!("assistant\n{}", clean(&t.response))));
                    ids.push(IM_END);
                }
                ids.pop(); // prompt[:-len(im_end)]: the last assistant turn stays open
                ids
            }
        }
    }
}

/// The model input, the stop words and whether the reply is parsed for function calls.
#[derive(Clone, Debug, PartialEq)]
pub struct ReactPlan {
    pub input: ReactInput,
    /// The request's stop strings plus their leading-"\n"-stripped variants (add_extra_stop_words), plus
    /// "Observation:" when functions are present; the generated text is cut at the first of them.
    pub stop_words: Vec<String>,
    pub functions_present: bool,
}

impl ReactPlan {
    /// `tokenizer.encode(s)` of each stop word (special-token text becomes the special id), as the original
    /// passes them to generate().
    pub fn stop_word_ids(&self, tok: &Tokenizer) -> Vec<Vec<u32>> {
        self.stop_words.iter().map(|s| tok.encode_with_special(s)).collect()
    }

    /// The original's full stop list for generate(): model.chat adds `<|im_end|>`, `<|im_start|>`;
    /// text_complete_last_message adds `<|im_end|>` only (`<|endoftext|>` ends generation as eos in both).
    pub fn model_stop_word_ids(&self, tok: &Tokenizer) -> Vec<Vec<u32>> {
        let mut out = match self.input {
            ReactInput::Chat { .. } => vec![vec![IM_END], vec![IM_START]],
            ReactInput::Continue { .. } => vec![vec![IM_END]],
        };
        out.extend(self.stop_word_ids(tok));
        out
    }

    /// The original's post-processing of the generated text (`generated` = the decoded new tokens, without
    /// the special token that ended generation; a trailing stop word may be there or not): model.chat's
    /// strip() (decode_tokens) or text completion's cut at `<|endoftext|>` / `<|im_end|>`, then
    /// trim_stop_words, then parse_response when functions are present.
    pub fn reply(&self, generated: &str) -> Reply {
        let response = match self.input {
            ReactInput::Chat { .. } => py_strip(generated),
            ReactInput::Continue { .. } => trim_stop_words(generated, &["<|endoftext|>", "<|im_end|>"]),
        };
        parse_reply(trim_stop_words(response, &self.stop_words), self.functions_present)
    }
}

/// A legacy message (after the tools mapping): role system/user/assistant/function; `src` = index in the
/// request's messages.
struct Legacy<'a> {
    role: Role,
    content: Option<&'a str>,
    function_call: Option<&'a FunctionCall>,
    src: usize,
}

/// Our `tools` → `functions` mapping of the messages (see the module docs).
fn to_legacy(messages: &[ChatMessage]) -> Result<Vec<Legacy<'_>>> {
    let mut out = Vec::with_capacity(messages.len());
    let mut i = 0;
    while i < messages.len() {
        let m = &messages[i];
        if m.role != Role::Assistant || m.tool_calls.is_empty() {
            let (role, function_call) = match m.role {
                Role::Tool => (Role::Function, None),
                Role::Assistant => (Role::Assistant, m.function_call.as_ref()),
                r => (r, None),
            };
            out.push(Legacy { role, content: m.content.as_deref(), function_call, src: i });
            i += 1;
            continue;
        }
        let calls = &m.tool_calls;
        let mut results: Vec<Option<usize>> = vec![None; calls.len()];
        let mut j = i + 1;
        while j < messages.len() && messages[j].role == Role::Tool {
            let k = match &messages[j].tool_call_id {
                Some(tid) => {
                    let k = calls.iter().position(|c| c.id.as_deref() == Some(tid.as_str())).ok_or_else(|| {
                        field_err(
                            &format!("messages[{j}].tool_call_id"),
                            &format!("{tid:?} answers no call of the assistant message before it"),
                        )
                    })?;
                    if results[k].is_some() {
                        return Err(field_err(
                            &format!("messages[{j}].tool_call_id"),
                            &format!("{tid:?} answers a call that already has a result"),
                        ));
                    }
                    k
                }
                None => results
                    .iter()
                    .position(Option::is_none)
                    .ok_or_else(|| field_err(&format!("messages[{j}]"), "more tool results than calls"))?,
            };
            results[k] = Some(j);
            j += 1;
        }
        for (k, c) in calls.iter().enumerate() {
            let content = if k == 0 { m.content.as_deref() } else { None };
            out.push(Legacy { role: Role::Assistant, content, function_call: Some(&c.function), src: i });
            if let Some(r) = results[k] {
                out.push(Legacy {
                    role: Role::Function,
                    content: messages[r].content.as_deref(),
                    function_call: None,
                    src: r,
                });
            }
        }
        i = j;
    }
    Ok(out)
}

/// openai_api.REACT_INSTRUCTION with the tools filled in (`.lstrip('\n').rstrip()` as the original).
fn react_instruction(functions: &[FunctionSpec]) -> String {
    let tools_text: Vec<String> = functions.iter().map(FunctionSpec::tool_desc).collect();
    let names: Vec<&str> = functions.iter().map(FunctionSpec::model_name).collect();
    let text = format!(
        "Answer the following questions as best you can. You have access to the following APIs:\n\n{}\n\n\
         Use the following format:\n\n\
         Question: the input question you must answer\n\
         Thought: you should always think about what to do\n\
         Action: the action to take, should be one of [{}]\n\
         Action Input: the input to the action\n\
         Observation: the result of the action\n\
         ... (this Thought/Action/Action Input/Observation can be repeated zero or more times)\n\
         Thought: I now know the final answer\n\
         Final Answer: the final answer to the original input question\n\n\
         Begin!",
        tools_text.join("\n\n"),
        names.join(", ")
    );
    clean(&text).to_owned()
}

/// A message of openai_api.parse_messages' rebuilt list.
struct Rebuilt {
    role: Role,
    content: String,
    src: usize,
}

/// The error the original raises as a bare 400 ("Invalid request" / "Expecting exactly one user (or function)
/// role before every assistant role"): only two user messages in a row lead there; name the second.
fn double_user_error(rebuilt: &[Rebuilt]) -> Error {
    match rebuilt.windows(2).find(|w| w[0].role == Role::User && w[1].role == Role::User) {
        Some(w) => field_err(
            &format!("messages[{}].role", w[1].src),
            "a user message right after another user message (expected one user message before every assistant \
             message)",
        ),
        None => field_err("messages", "expected one user message before every assistant message"),
    }
}

/// openai_api.parse_messages: → (query, or None for text completion; history; system).
fn parse_messages(messages: &[Legacy<'_>], functions: &[FunctionSpec]) -> Result<(Option<String>, Vec<Turn>, String)> {
    if messages.iter().all(|m| m.role != Role::User) {
        return Err(field_err("messages", "expecting at least one user message"));
    }
    let (system, messages) = match messages.first() {
        Some(m) if m.role == Role::System => {
            let content = m.content.ok_or_else(|| {
                field_err(&format!("messages[{}].content", m.src), "a system message needs a string content")
            })?;
            (clean(content).to_owned(), &messages[1..])
        }
        _ => (DEFAULT_SYSTEM.to_owned(), messages),
    };
    let mut instruction = if functions.is_empty() { String::new() } else { react_instruction(functions) };

    let mut rebuilt: Vec<Rebuilt> = Vec::new();
    for (m_idx, m) in messages.iter().enumerate() {
        let content = clean(m.content.unwrap_or(""));
        match m.role {
            Role::Function => {
                let last = match rebuilt.last_mut() {
                    Some(last) if last.role == Role::Assistant => last,
                    _ => {
                        return Err(field_err(
                            &format!("messages[{}].role", m.src),
                            "a function/tool result must follow an assistant message",
                        ))
                    }
                };
                last.content.push_str("\nObservation: ");
                last.content.push_str(content);
                if m_idx == messages.len() - 1 {
                    last.content.push_str("\nThought:"); // the prefix for text completion
                }
            }
            Role::Assistant => {
                let Some(last) = rebuilt.last_mut() else {
                    return Err(field_err(
                        &format!("messages[{}].role", m.src),
                        "an assistant message needs a user message before it",
                    ));
                };
                let content = match m.function_call {
                    None if !functions.is_empty() => {
                        format!("Thought: I now know the final answer.\nFinal Answer: {content}")
                    }
                    None => content.to_owned(),
                    Some(fc) => {
                        let thought = if content.starts_with("Thought:") {
                            content.to_owned()
                        } else {
                            format!("Thought: {content}")
                        };
                        format!("{thought}\nAction: {}\nAction Input: {}", fc.name, fc.arguments)
                    }
                };
                if last.role == Role::User {
                    rebuilt.push(Rebuilt { role: Role::Assistant, content: clean(&content).to_owned(), src: m.src });
                } else {
                    last.content.push('\n');
                    last.content.push_str(&content);
                }
            }
            Role::User => rebuilt.push(Rebuilt { role: Role::User, content: content.to_owned(), src: m.src }),
            Role::System | Role::Tool => {
                return Err(field_err(&format!("messages[{}].role", m.src), "a system message is only allowed first"))
            }
        }
    }

    let (query, pairs) = match rebuilt.last() {
        Some(last) if last.role == Role::User => (Some(last.content.clone()), &rebuilt[..rebuilt.len() - 1]),
        _ => (None, &rebuilt[..]),
    };
    if pairs.len() % 2 != 0 {
        return Err(double_user_error(&rebuilt));
    }
    let mut history = Vec::with_capacity(pairs.len() / 2);
    for (n, pair) in pairs.chunks(2).enumerate() {
        if pair[0].role != Role::User || pair[1].role != Role::Assistant {
            return Err(double_user_error(&rebuilt));
        }
        let mut query = clean(&pair[0].content).to_owned();
        let response = clean(&pair[1].content).to_owned();
        if !instruction.is_empty() && 2 * n == pairs.len() - 2 {
            query = format!("{instruction}\n\nQuestion: {query}");
            instruction.clear();
        }
        history.push(Turn { query, response });
    }
    let query = match (query, instruction.is_empty()) {
        (q, true) => q,
        (Some(q), false) => Some(format!("{instruction}\n\nQuestion: {q}")),
        // The original asserts this cannot happen: without history the last message is the user's.
        (None, false) => return Err(field_err("messages", "no user message to put the tool instruction in")),
    };
    Ok((query, history, system))
}

/// openai_api.add_extra_stop_words: each stop word, then the leading-"\n"-stripped variants not yet present.
pub fn add_extra_stop_words(stop_words: &[String]) -> Vec<String> {
    let mut out = stop_words.to_vec();
    for x in stop_words {
        let s = x.trim_start_matches('\n');
        if !s.is_empty() && !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    out
}

/// openai_api.text_complete_last_message's prompt: the system and history in ChatML, the last assistant
/// message left open.
fn continuation_text(system: &str, history: &[Turn]) -> String {
    let mut prompt = format!("<|im_start|>system\n{system}<|im_end|>");
    for t in history {
        let _ = write!(prompt, "\n<|im_start|>user\n{}<|im_end|>", clean(&t.query));
        let _ = write!(prompt, "\n<|im_start|>assistant\n{}<|im_end|>", clean(&t.response));
    }
    prompt.truncate(prompt.len() - "<|im_end|>".len());
    prompt
}

/// The model input and stop words for a chat request with (possibly no) functions — openai_api's
/// create_chat_completion up to the model call. `functions` empty or `tool_choice` None: no instruction, no
/// "Observation:" stop word, no reply parsing (assistant function calls in the history are still written as
/// Thought/Action/Action Input, as the original does). Errors name the request field (`messages[3].role`).
pub fn plan(
    messages: &[ChatMessage],
    functions: &[FunctionSpec],
    tool_choice: ToolChoice,
    stop: &[String],
) -> Result<ReactPlan> {
    let functions = if tool_choice == ToolChoice::None { &[][..] } else { functions };
    let mut stop_words = add_extra_stop_words(stop);
    if !functions.is_empty() && !stop_words.iter().any(|s| s == "Observation:") {
        stop_words.push("Observation:".to_owned());
    }
    let legacy = to_legacy(messages)?;
    let (query, history, system) = parse_messages(&legacy, functions)?;
    let input = match query {
        Some(query) => ReactInput::Chat { system, history, query },
        None => {
            let prompt_text = continuation_text(&system, &history);
            ReactInput::Continue { system, history, prompt_text }
        }
    };
    Ok(ReactPlan { input, stop_words, functions_present: !functions.is_empty() })
}

// ------------------------------------------------------------------------------------------------------------
// Reply parsing: openai_api.trim_stop_words / parse_response.

/// The model's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A plain answer (the text after the last "\nFinal Answer: " when there is one).
    Text(String),
    /// A call: `name` and `arguments` (the Action Input text, not validated) and `thought` (the text after
    /// "Thought: ", the message content).
    FunctionCall { name: String, arguments: String, thought: String },
}

/// openai_api.trim_stop_words: cut at each stop word in turn (so at the earliest; an empty stop word cuts
/// everything, as in the original).
pub fn trim_stop_words<'a, S: AsRef<str>>(response: &'a str, stop_words: &[S]) -> &'a str {
    let mut response = response;
    for stop in stop_words {
        if let Some(idx) = response.find(stop.as_ref()) {
            response = &response[..idx];
        }
    }
    response
}

/// openai_api.parse_response when functions are present; the text unchanged otherwise.
pub fn parse_reply(text: &str, functions_present: bool) -> Reply {
    if !functions_present {
        return Reply::Text(text.to_owned());
    }
    const ACTION: &str = "\nAction:";
    const ACTION_INPUT: &str = "\nAction Input:";
    const OBSERVATION: &str = "\nObservation:";
    let mut response = text.to_owned();
    let (mut name, mut arguments) = (String::new(), String::new());
    let i = response.find(ACTION);
    let j = response.find(ACTION_INPUT);
    if let (Some(i), Some(j)) = (i, j) {
        if i < j {
            // Action and Action Input, but no Observation after them: the stop word ate it; add it back.
            if response.find(OBSERVATION).is_none_or(|k| k < j) {
                response = format!("{}{OBSERVATION}", py_rstrip(&response));
            }
            let k = response.find(OBSERVATION).unwrap_or(response.len());
            // Python slices: an end before the start is empty.
            name = py_strip(response.get(i + ACTION.len()..j).unwrap_or("")).to_owned();
            arguments = py_strip(response.get(j + ACTION_INPUT.len()..k).unwrap_or("")).to_owned();
        }
    }
    if let (false, Some(i)) = (name.is_empty(), i) {
        let mut thought = &response[..i];
        if let Some(t) = thought.find("Thought: ") {
            thought = &thought[t + "Thought: ".len()..];
        }
        return Reply::FunctionCall { name, arguments, thought: py_strip(thought).to_owned() };
    }
    const FINAL: &str = "\nFinal Answer: ";
    match response.rfind(FINAL) {
        Some(z) => Reply::Text(response[z + FINAL.len()..].to_owned()),
        None => Reply::Text(response),
    }
}
