//! Place in the flow: sampler → **chat** → generate; ChatML prompts and stop rules (text in, ids out).
//! ChatML prompts exactly as Qwen's `make_context` (spec §5.1–5.2), OpenAI-style message lists,
//! and stop rules (spec §5.3).
use crate::error::{Error, Result};
use crate::tokenizer::{Tokenizer, ENDOFTEXT, IM_END, IM_START};

pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// One finished exchange of the history.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    pub query: String,
    pub response: String,
}

/// `[IM_START] + enc(role) + enc("\n") + enc(content) + [IM_END]`, contents injection-safe.
fn message_tokens(tok: &Tokenizer, role: &str, content: &str, nl: &[u32]) -> Vec<u32> {
    let mut out = vec![IM_START];
    out.extend(tok.encode(role));
    out.extend_from_slice(nl);
    out.extend(tok.encode(content));
    out.push(IM_END);
    out
}

/// Qwen make_context, chat_format "chatml" (spec §5.1–5.2): piecewise tokenisation, injection-safe contents,
/// history newest-first under max_window_size (strict <), current query appended unconditionally.
pub fn make_context(tok: &Tokenizer, system: &str, history: &[Turn], query: &str, max_window_size: usize) -> Vec<u32> {
    let nl = tok.encode("\n");
    let system_tokens = message_tokens(tok, "system", system, &nl);
    // Kept history, oldest first; each turn is "\n" user-message "\n" assistant-message.
    let mut kept: Vec<Vec<u32>> = Vec::new();
    let mut kept_len = 0usize;
    for turn in history.iter().rev() {
        let mut t = nl.clone();
        t.extend(message_tokens(tok, "user", &turn.query, &nl));
        t.extend_from_slice(&nl);
        t.extend(message_tokens(tok, "assistant", &turn.response, &nl));
        if system_tokens.len() + t.len() + kept_len < max_window_size {
            kept_len += t.len();
            kept.push(t);
        } else {
            break;
        }
    }
    let mut out = system_tokens;
    for t in kept.iter().rev() {
        out.extend_from_slice(t);
    }
    out.extend_from_slice(&nl);
    out.extend(message_tokens(tok, "user", query, &nl));
    out.extend_from_slice(&nl);
    out.push(IM_START);
    out.extend(tok.encode("assistant"));
    out.extend_from_slice(&nl);
    out
}

/// "raw" format: the text encoded with special tokens parsed (default tokenizer settings).
pub fn raw_context(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode_with_special(text)
}

/// One OpenAI-style chat message.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The `prompt` command's input: a JSON array of `{"role", "content"}` objects (other keys ignored).
/// `source` names the input in the error.
pub fn parse_messages(text: &str, source: &std::path::Path) -> Result<Vec<Message>> {
    serde_json::from_str(text).map_err(|e| {
        Error::bad_file(source, format!("expected a JSON array of {{\"role\", \"content\"}} objects: {e}"))
    })
}

/// OpenAI-style messages → ChatML ids: optional leading system message (else DEFAULT_SYSTEM), then alternating
/// user/assistant pairs as history, the last message must be user. Contents are used verbatim (not stripped).
/// Errors (`Error::InvalidArgument`) name the message index and what is wrong.
pub fn messages_to_prompt(tok: &Tokenizer, messages: &[Message], max_window_size: usize) -> Result<Vec<u32>> {
    let (system, rest, offset) = match messages.first() {
        None => return Err(Error::invalid("messages: the list is empty (need at least one user message)")),
        Some(m) if m.role == "system" => (m.content.as_str(), &messages[1..], 1),
        Some(_) => (DEFAULT_SYSTEM, messages, 0),
    };
    let mut history = Vec::new();
    let mut pending_query: Option<&str> = None;
    for (j, m) in rest.iter().enumerate() {
        let i = j + offset;
        match (m.role.as_str(), pending_query) {
            ("system", _) => {
                return Err(Error::invalid(format!("messages[{i}]: a system message is only allowed first")))
            }
            ("user", None) => pending_query = Some(&m.content),
            ("user", Some(_)) => {
                return Err(Error::invalid(format!(
                    "messages[{i}]: two user messages in a row (expected an assistant message)"
                )))
            }
            ("assistant", Some(q)) => {
                history.push(Turn { query: q.to_string(), response: m.content.clone() });
                pending_query = None;
            }
            ("assistant", None) => {
                return Err(Error::invalid(format!(
                    "messages[{i}]: assistant message without a user message before it"
                )))
            }
            (role, _) => {
                return Err(Error::invalid(format!(
                    "messages[{i}]: unknown role {role:?} (expected \"system\", \"user\" or \"assistant\")"
                )))
            }
        }
    }
    match pending_query {
        Some(q) => Ok(make_context(tok, system, &history, q, max_window_size)),
        None => {
            Err(Error::invalid(format!("messages[{}]: the last message must be a user message", messages.len() - 1)))
        }
    }
}

/// Stop rules: token ids that end generation, and stop strings matched on the decoded output tail.
/// Empty stop strings are ignored.
#[derive(Clone, Debug, Default)]
pub struct StopRules {
    pub stop_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
}

impl StopRules {
    /// `<|im_end|>`, `<|im_start|>`, `<|endoftext|>` (the vLLM wrapper's set, spec §5.3) + `extra` strings.
    pub fn chatml(extra: &[String]) -> Self {
        StopRules { stop_ids: vec![IM_END, IM_START, ENDOFTEXT], stop_strings: extra.to_vec() }
    }

    /// `<|endoftext|>` and the string "Human:" (spec §5.3: enc("Human:") stop) + `extra` strings.
    pub fn raw(extra: &[String]) -> Self {
        let mut stop_strings = vec!["Human:".to_string()];
        stop_strings.extend_from_slice(extra);
        StopRules { stop_ids: vec![ENDOFTEXT], stop_strings }
    }

    pub fn is_stop_id(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// If `text` (the decoded output so far) contains a stop string, the byte index where the earliest one starts.
    pub fn find_stop_string(&self, text: &str) -> Option<usize> {
        self.stop_strings.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min()
    }

    /// Length in bytes of the longest suffix of `text` that is a proper prefix of some stop string (text a
    /// streaming printer must hold back until it knows it is not the start of a stop string). The suffix
    /// always starts on a char boundary.
    pub fn holdback(&self, text: &str) -> usize {
        let mut best = 0;
        for s in self.stop_strings.iter().filter(|s| !s.is_empty()) {
            // Proper prefix: the suffix is shorter than `s`.
            let longest = (s.len() - 1).min(text.len());
            for start in text.len() - longest..text.len() {
                if text.is_char_boundary(start) && s.as_bytes().starts_with(&text.as_bytes()[start..]) {
                    best = best.max(text.len() - start); // the first hit is the longest for `s`
                    break;
                }
            }
        }
        best
    }
}
