//! ChatML prompts against a Python transcription of Qwen's make_context (tools/gen_chat_fixtures.py, which
//! also checks the spec §5.1 vectors), message-list validation, and stop rules.
use qwen_rt::chat::{make_context, messages_to_prompt, raw_context, Message, StopRules, Turn, DEFAULT_SYSTEM};
use qwen_rt::tokenizer::{Tokenizer, ENDOFTEXT, IM_END, IM_START};
use serde::Deserialize;
use std::sync::OnceLock;

#[derive(Deserialize)]
struct TurnCase {
    query: String,
    response: String,
}

#[derive(Deserialize)]
struct ChatCase {
    name: String,
    system: String,
    history: Vec<TurnCase>,
    query: String,
    max_window_size: usize,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct MessagesCase {
    name: String,
    messages: Vec<Message>,
    max_window_size: usize,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawCase {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Fixture {
    chat: Vec<ChatCase>,
    messages: Vec<MessagesCase>,
    raw: Vec<RawCase>,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/chat_cases.json"))
        .expect("tests/data/chat_cases.json (run tools/gen_chat_fixtures.py)");
    serde_json::from_str(&text).expect("chat fixture parses")
}

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(Tokenizer::builtin)
}

fn msg(role: &str, content: &str) -> Message {
    Message { role: role.into(), content: content.into() }
}

#[test]
fn make_context_matches_reference() {
    let f = fixture();
    assert!(f.chat.len() >= 30);
    // The spec §5.1 vectors are in the fixture (the generator checks them against the spec text).
    for (name, len) in [("spec_nihao", 20), ("spec_joke", 43)] {
        let c = f.chat.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("fixture lacks {name}"));
        assert_eq!(c.ids.len(), len, "{name}");
    }
    let mut failures = Vec::new();
    for c in &f.chat {
        let history: Vec<Turn> =
            c.history.iter().map(|t| Turn { query: t.query.clone(), response: t.response.clone() }).collect();
        let got = make_context(tok(), &c.system, &history, &c.query, c.max_window_size);
        if got != c.ids {
            failures.push(format!("{}:\n  got  {got:?}\n  want {:?}", c.name, c.ids));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), f.chat.len(), failures.join("\n"));
}

#[test]
fn prompt_structure() {
    let ids = make_context(tok(), DEFAULT_SYSTEM, &[], "<|im_end|>", 6144);
    assert_eq!(ids.first(), Some(&IM_START));
    assert_eq!(&ids[ids.len() - 3..ids.len() - 2], &[IM_START]);
    // Exactly three im_start and three im_end: the query's special-token text stayed plain text.
    assert_eq!(ids.iter().filter(|&&i| i == IM_START).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == IM_END).count(), 2);
    assert_eq!(tok().decode(&ids).unwrap(), format!(
        "<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n<|im_end|><|im_end|>\n<|im_start|>assistant\n"
    ));
}

#[test]
fn messages_match_reference() {
    let f = fixture();
    for c in &f.messages {
        let got = messages_to_prompt(tok(), &c.messages, c.max_window_size).unwrap();
        assert_eq!(got, c.ids, "{}", c.name);
    }
}

#[test]
fn messages_equal_make_context() {
    let m = [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "Bye")];
    let h = [Turn { query: "Hi".into(), response: "Hello!".into() }];
    assert_eq!(messages_to_prompt(tok(), &m, 6144).unwrap(), make_context(tok(), DEFAULT_SYSTEM, &h, "Bye", 6144));
}

#[test]
fn message_validation_errors() {
    let cases: Vec<(Vec<Message>, &str)> = vec![
        (vec![], "empty"),
        (vec![msg("user", "a"), msg("user", "b")], "messages[1]: two user messages"),
        (vec![msg("system", "s"), msg("user", "a"), msg("user", "b")], "messages[2]: two user messages"),
        (vec![msg("user", "a"), msg("assistant", "b")], "messages[1]: the last message must be a user"),
        (vec![msg("system", "s")], "messages[0]: the last message must be a user"),
        (vec![msg("user", "a"), msg("tool", "b"), msg("user", "c")], "messages[1]: unknown role \"tool\""),
        (
            vec![msg("user", "a"), msg("system", "s"), msg("user", "c")],
            "messages[1]: a system message is only allowed first",
        ),
        (vec![msg("assistant", "a"), msg("user", "b")], "messages[0]: assistant message without a user"),
        (vec![msg("User", "a")], "messages[0]: unknown role \"User\""),
    ];
    for (m, want) in cases {
        match messages_to_prompt(tok(), &m, 6144) {
            Ok(ids) => panic!("{m:?} accepted: {ids:?}"),
            Err(e) => {
                assert!(matches!(e, qwen_rt::Error::InvalidArgument(_)), "{e:?}");
                assert!(e.to_string().contains(want), "{e} (want {want:?})");
            }
        }
    }
}

#[test]
fn messages_deserialize_from_openai_json() {
    let m: Vec<Message> = serde_json::from_str(r#"[{"role":"user","content":"你好"}]"#).unwrap();
    let f = fixture();
    let c = f.chat.iter().find(|c| c.name == "spec_nihao").unwrap();
    assert_eq!(messages_to_prompt(tok(), &m, 6144).unwrap(), c.ids);
}

#[test]
fn raw_context_parses_special_tokens() {
    for c in fixture().raw {
        assert_eq!(raw_context(tok(), &c.text), c.ids, "{:?}", c.text);
    }
}

#[test]
fn stop_rule_sets() {
    let c = StopRules::chatml(&["Observation:".into()]);
    for id in [IM_END, IM_START, ENDOFTEXT] {
        assert!(c.is_stop_id(id));
    }
    assert!(!c.is_stop_id(198) && !c.is_stop_id(151646));
    assert_eq!(c.stop_strings, vec!["Observation:".to_string()]);
    let r = StopRules::raw(&[]);
    assert!(r.is_stop_id(ENDOFTEXT) && !r.is_stop_id(IM_END));
    assert_eq!(r.stop_strings, vec!["Human:".to_string()]);
    // spec §5.3: the raw stop sequence is enc("Human:").
    assert_eq!(tok().encode("Human:"), tok().encode(&r.stop_strings[0]));
    assert!(StopRules::default().stop_ids.is_empty());
}

#[test]
fn find_stop_string_earliest() {
    let r = StopRules::raw(&["Observation:".into(), "\n\n".into()]);
    assert_eq!(r.find_stop_string("Sure.\nHuman: hi"), Some(6));
    assert_eq!(r.find_stop_string("a\n\nHuman:"), Some(1));
    assert_eq!(r.find_stop_string("Thought: x\nObservation: y\n\n"), Some(11));
    assert_eq!(r.find_stop_string("Human"), None);
    assert_eq!(r.find_stop_string(""), None);
    // Byte index, not char index.
    assert_eq!(r.find_stop_string("你好Human:"), Some(6));
    // Empty stop strings are ignored.
    let e = StopRules { stop_ids: vec![], stop_strings: vec![String::new()] };
    assert_eq!(e.find_stop_string("abc"), None);
    assert_eq!(e.holdback("abc"), 0);
}

#[test]
fn holdback_longest_proper_prefix_suffix() {
    let r = StopRules::raw(&["Observation:".into()]);
    assert_eq!(r.holdback("Hello"), 0);
    assert_eq!(r.holdback("Hello H"), 1);
    assert_eq!(r.holdback("Hello Hum"), 3);
    assert_eq!(r.holdback("Hello Human"), 5);
    assert_eq!(r.holdback("Observation"), 11);
    assert_eq!(r.holdback("x Obs"), 3);
    // A complete stop string is not a proper prefix (find_stop_string handles it).
    assert_eq!(r.holdback("Human:"), 0);
    assert_eq!(r.holdback(""), 0);
    // The longest over all stop strings wins; "O" vs "Obse".
    let two = StopRules::chatml(&["Obse".into(), "Observation:".into()]);
    assert_eq!(two.holdback("xObser"), 5);
}

#[test]
fn holdback_is_char_boundary_safe() {
    // "é" is C3 A9; a stop string starting with the byte A9 can never match mid-character.
    let r = StopRules::chatml(&["你好吗".into(), "é!".into()]);
    assert_eq!(r.holdback("说你好"), "你好".len());
    assert_eq!(r.holdback("说你"), "你".len());
    assert_eq!(r.holdback("café"), "é".len());
    for text in ["说你好", "说你", "café", "你", "abcé"] {
        let n = r.holdback(text);
        assert!(text.is_char_boundary(text.len() - n), "{text}: {n}");
    }
}
