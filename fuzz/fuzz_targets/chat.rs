//! The `prompt` command's path on arbitrary input: JSON text → `chat::parse_messages` →
//! `chat::messages_to_prompt` (ChatML, history windowing). Input: 2 bytes of max_window_size
//! (0xFFFF = unlimited), then the JSON text.
//!
//! Checked against an independent rebuild of Qwen's `make_context` (spec §5.1–5.2) from the messages:
//! the decoded prompt is exactly the ChatML text of the system message, the k newest history turns and
//! the query, where k is what the window rule gives from per-piece token counts; the prompt holds
//! exactly the `<|im_start|>` / `<|im_end|>` ids of that structure and no other special id (message
//! text can never inject one); a refused list names the message index.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qwen_rt::chat::{messages_to_prompt, parse_messages, Message, DEFAULT_SYSTEM};
use qwen_rt::tokenizer::{Tokenizer, IM_END, IM_START, NUM_REGULAR};
use std::path::Path;
use unicode_normalization::UnicodeNormalization;

fn nfc(s: &str) -> String {
    s.nfc().collect()
}

fn block(role: &str, content: &str) -> String {
    format!("<|im_start|>{role}\n{}<|im_end|>", nfc(content))
}

// Build the tokenizer / load the model before fuzzing starts: under ASan that takes seconds, and inside
// the first input it would count against -timeout.
fuzz_target!(init: { Tokenizer::shared(); }, |data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let w = u16::from_le_bytes([data[0], data[1]]);
    let window = if w == u16::MAX { usize::MAX } else { w as usize };
    let Ok(text) = std::str::from_utf8(&data[2..]) else { return }; // the CLI reads UTF-8 text
    let msgs = match parse_messages(text, Path::new("fuzz.json")) {
        Ok(m) => m,
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.json: expected a JSON array"), "{e}");
            return;
        }
    };
    let tok = Tokenizer::shared();
    let ids = match messages_to_prompt(tok, &msgs, window) {
        Ok(ids) => ids,
        Err(e) => {
            let m = e.to_string();
            assert!(m.starts_with("messages[") || m.starts_with("messages: the list is empty"), "{m}");
            return;
        }
    };
    // Independent structure: optional system first, then (user, assistant)* user.
    let (system, rest): (&str, &[Message]) = match msgs.first() {
        Some(m) if m.role == "system" => (&m.content, &msgs[1..]),
        _ => (DEFAULT_SYSTEM, &msgs[..]),
    };
    assert!(rest.len() % 2 == 1, "accepted a list that does not end in a user message");
    for (i, m) in rest.iter().enumerate() {
        assert_eq!(m.role, if i % 2 == 0 { "user" } else { "assistant" }, "accepted a wrong role order");
    }
    let turns: Vec<(&str, &str)> = rest[..rest.len() - 1].chunks(2).map(|p| (&p[0].content[..], &p[1].content[..])).collect();
    let query = &rest[rest.len() - 1].content;
    // Window rule of make_context, from token counts of the pieces: keep turns newest first while
    // len(system) + len(turn) + len(kept) < window.
    let n = |s: &str| tok.encode(s).len();
    let nl = n("\n");
    let msg_len = |role: &str, content: &str| 1 + n(role) + nl + n(content) + 1;
    let sys_len = msg_len("system", system);
    let mut kept = 0usize;
    let mut kept_len = 0usize;
    for (q, r) in turns.iter().rev() {
        let t = nl + msg_len("user", q) + nl + msg_len("assistant", r);
        if sys_len + t + kept_len < window {
            kept_len += t;
            kept += 1;
        } else {
            break;
        }
    }
    let mut want = block("system", system);
    for (q, r) in &turns[turns.len() - kept..] {
        want.push('\n');
        want.push_str(&block("user", q));
        want.push('\n');
        want.push_str(&block("assistant", r));
    }
    want.push('\n');
    want.push_str(&block("user", query));
    want.push_str("\n<|im_start|>assistant\n");
    assert_eq!(tok.decode(&ids).unwrap(), want, "prompt text differs from make_context (kept {kept} turns)");
    let count = |id: u32| ids.iter().filter(|&&i| i == id).count();
    assert_eq!(count(IM_START), 3 + 2 * kept, "wrong number of <|im_start|> ids: text injected a special token?");
    assert_eq!(count(IM_END), 2 + 2 * kept, "wrong number of <|im_end|> ids: text injected a special token?");
    assert!(ids.iter().all(|&i| i < NUM_REGULAR || i == IM_START || i == IM_END), "other special id in the prompt");
});
