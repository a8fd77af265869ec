//! Function calling (src/react.rs) against a Python transcription of Qwen's openai_api.py
//! (tools/gen_function_call_fixtures.py → tests/data/function_call_cases.json): byte-exact prompt texts and ids,
//! stop words, the request errors' fields, and the parsed replies of fixed model outputs.
use qwen_rt::chat::Turn;
use qwen_rt::react::{
    parse_reply, plan, py_isspace, ChatMessage, FunctionSpec, Json, ReactInput, Reply, Role, ToolChoice, ToolRequest,
};
use qwen_rt::tokenizer::Tokenizer;
use serde::Deserialize;
use std::sync::OnceLock;

#[derive(Deserialize)]
struct Fixture {
    max_window_size: usize,
    python_isspace: Vec<u32>,
    json_numbers: Vec<(String, String)>,
    requests: Vec<RequestCase>,
    replies: Vec<ReplyCase>,
}

#[derive(Deserialize)]
struct RequestCase {
    name: String,
    /// Order-keeping: `parameters` must print in the request's key order.
    request: Json,
    expect: serde_json::Value,
}

#[derive(Deserialize)]
struct Expected {
    path: String,
    system: String,
    history: Vec<(String, String)>,
    query: Option<String>,
    prompt_text: Option<String>,
    ids: Vec<u32>,
    stop_words: Vec<String>,
    stop_words_ids: Vec<Vec<u32>>,
    generate_stop_words_ids: Vec<Vec<u32>>,
    functions_present: bool,
}

#[derive(Deserialize)]
struct ReplyCase {
    name: String,
    path: String,
    functions_present: bool,
    stop_words: Vec<String>,
    generated: String,
    expect: ReplyExpect,
}

#[derive(Deserialize)]
struct ReplyExpect {
    finish_reason: String,
    content: String,
    function_call: Option<FunctionCallExpect>,
}

#[derive(Deserialize)]
struct FunctionCallExpect {
    name: String,
    arguments: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/function_call_cases.json"))
            .expect("tests/data/function_call_cases.json (run tools/gen_function_call_fixtures.py)");
        serde_json::from_str(&text).expect("function call fixture parses")
    })
}

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(Tokenizer::builtin)
}

fn turns(h: &[(String, String)]) -> Vec<Turn> {
    h.iter().map(|(q, r)| Turn { query: q.clone(), response: r.clone() }).collect()
}

/// Compares one request case; returns the differences.
fn check_request(c: &RequestCase, max_window_size: usize) -> Vec<String> {
    let mut diffs = Vec::new();
    let got = ToolRequest::from_json(&c.request).and_then(|r| r.plan());
    if let Some(err) = c.expect.get("error") {
        let path = err["path"].as_str().unwrap();
        match got {
            Ok(p) => diffs.push(format!("accepted, want an error at {path}: {p:?}")),
            // The message starts with the field, then ": ".
            Err(e) if !e.to_string().starts_with(&format!("{path}: ")) => {
                diffs.push(format!("error {e:?} does not name {path}"))
            }
            Err(e) => assert!(matches!(e, qwen_rt::Error::InvalidArgument(_)), "{e:?}"),
        }
        return diffs;
    }
    let want: Expected = serde_json::from_value(c.expect.clone()).unwrap();
    let p = match got {
        Ok(p) => p,
        Err(e) => return vec![format!("rejected: {e}")],
    };
    match (&p.input, want.path.as_str()) {
        (ReactInput::Chat { system, history, query }, "chat") => {
            if system != &want.system {
                diffs.push(format!("system {system:?} want {:?}", want.system));
            }
            if history != &turns(&want.history) {
                diffs.push(format!("history\n  got  {history:?}\n  want {:?}", want.history));
            }
            if Some(query) != want.query.as_ref() {
                diffs.push(format!("query\n  got  {query:?}\n  want {:?}", want.query));
            }
        }
        (ReactInput::Continue { system, history, prompt_text }, "continue") => {
            if system != &want.system {
                diffs.push(format!("system {system:?} want {:?}", want.system));
            }
            if history != &turns(&want.history) {
                diffs.push(format!("history\n  got  {history:?}\n  want {:?}", want.history));
            }
            if Some(prompt_text) != want.prompt_text.as_ref() {
                diffs.push(format!("prompt_text\n  got  {prompt_text:?}\n  want {:?}", want.prompt_text));
            }
        }
        (input, path) => diffs.push(format!("path: got {input:?}, want {path}")),
    }
    let ids = p.input.prompt_ids(tok(), max_window_size);
    if ids != want.ids {
        diffs.push(format!("ids\n  got  {ids:?}\n  want {:?}", want.ids));
    }
    if p.stop_words != want.stop_words {
        diffs.push(format!("stop_words {:?} want {:?}", p.stop_words, want.stop_words));
    }
    if p.stop_word_ids(tok()) != want.stop_words_ids {
        diffs.push(format!("stop_word_ids {:?} want {:?}", p.stop_word_ids(tok()), want.stop_words_ids));
    }
    if p.model_stop_word_ids(tok()) != want.generate_stop_words_ids {
        diffs.push(format!(
            "model_stop_word_ids {:?} want {:?}",
            p.model_stop_word_ids(tok()),
            want.generate_stop_words_ids
        ));
    }
    if p.functions_present != want.functions_present {
        diffs.push(format!("functions_present {} want {}", p.functions_present, want.functions_present));
    }
    diffs
}

#[test]
fn requests_match_reference() {
    let f = fixture();
    let ok = f.requests.iter().filter(|c| c.expect.get("error").is_none());
    // ≥ 10 multi-turn conversations with tools (the generator asserts the same), and every path covered.
    let multi = ok
        .clone()
        .filter(|c| {
            c.expect["functions_present"] == true
                && matches!(c.request.get("messages"), Some(Json::Array(m)) if m.len() >= 3)
        })
        .count();
    assert!(multi >= 10, "{multi}");
    assert!(ok.clone().any(|c| c.expect["path"] == "chat") && ok.clone().any(|c| c.expect["path"] == "continue"));
    assert!(f.requests.iter().filter(|c| c.expect.get("error").is_some()).count() >= 15);
    let mut failures = Vec::new();
    for c in &f.requests {
        let diffs = check_request(c, f.max_window_size);
        if !diffs.is_empty() {
            failures.push(format!("{}:\n  {}", c.name, diffs.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), f.requests.len(), failures.join("\n"));
}

fn stop_plan(path: &str, stop_words: &[String], functions_present: bool) -> qwen_rt::react::ReactPlan {
    let input = if path == "chat" {
        ReactInput::Chat { system: String::new(), history: vec![], query: String::new() }
    } else {
        ReactInput::Continue { system: String::new(), history: vec![], prompt_text: String::new() }
    };
    qwen_rt::react::ReactPlan { input, stop_words: stop_words.to_vec(), functions_present }
}

#[test]
fn replies_match_reference() {
    let f = fixture();
    assert!(f.replies.len() >= 15);
    let mut failures = Vec::new();
    for c in &f.replies {
        let got = stop_plan(&c.path, &c.stop_words, c.functions_present).reply(&c.generated);
        let want = match &c.expect.function_call {
            Some(fc) => {
                assert_eq!(c.expect.finish_reason, "function_call", "{}", c.name);
                Reply::FunctionCall {
                    name: fc.name.clone(),
                    arguments: fc.arguments.clone(),
                    thought: c.expect.content.clone(),
                }
            }
            None => {
                assert_eq!(c.expect.finish_reason, "stop", "{}", c.name);
                Reply::Text(c.expect.content.clone())
            }
        };
        if got != want {
            failures.push(format!("{}:\n  got  {got:?}\n  want {want:?}", c.name));
        }
    }
    assert!(failures.is_empty(), "{} of {} replies differ:\n{}", failures.len(), f.replies.len(), failures.join("\n"));
}

#[test]
fn python_isspace_matches() {
    let want: std::collections::HashSet<u32> = fixture().python_isspace.iter().copied().collect();
    assert!(want.contains(&0x1f) && want.contains(&0x3000) && !want.contains(&0x200b));
    for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
        assert_eq!(py_isspace(c), want.contains(&(c as u32)), "U+{:04X}", c as u32);
    }
}

/// The body-text entry point parses straight into the order-keeping Json: every fixture request, printed
/// back as JSON text, gives the same plan or the same error.
#[test]
fn body_text_equals_json_entry() {
    for c in &fixture().requests {
        let from_json = ToolRequest::from_json(&c.request).and_then(|r| r.plan());
        let from_body = ToolRequest::from_body(&c.request.to_python_json()).and_then(|r| r.plan());
        match (from_json, from_body) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", c.name),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{}", c.name),
            (a, b) => panic!("{}: {a:?} vs {b:?}", c.name),
        }
    }
    // Malformed JSON and a non-object body are errors, not panics.
    assert!(ToolRequest::from_body("{\"messages\": [").is_err());
    assert!(ToolRequest::from_body("[]").is_err());
}

/// The typed API (what a server with its own request structs calls) equals the JSON entry point.
#[test]
fn typed_api_equals_json_entry() {
    let c = fixture().requests.iter().find(|c| c.name == "functions_round_trip_continues_after_observation").unwrap();
    let req = ToolRequest::from_json(&c.request).unwrap();
    let mut msgs = vec![
        ChatMessage::new(Role::User, Some("What's the weather like in Boston today?")),
        ChatMessage::new(Role::Assistant, Some("I should call the weather API.")),
        ChatMessage::new(Role::Function, Some(r#"{"temperature": 22, "unit": "celsius", "description": "Sunny"}"#)),
    ];
    msgs[1].function_call = req.messages[1].function_call.clone();
    msgs[2].name = Some("get_current_weather".into());
    assert_eq!(msgs, req.messages);
    let functions: Vec<FunctionSpec> = req.functions.clone();
    assert_eq!(plan(&msgs, &functions, ToolChoice::Auto, &[]).unwrap(), req.plan().unwrap());
    // tool_choice none: no instruction, no Observation stop word, no parsing.
    let none = plan(&msgs, &functions, ToolChoice::None, &[]).unwrap();
    assert!(none.stop_words.is_empty() && !none.functions_present);
    let ReactInput::Continue { prompt_text, .. } = &none.input else { panic!() };
    assert!(!prompt_text.contains("Answer the following questions"), "{prompt_text}");
}

#[test]
fn json_numbers_print_as_python() {
    let cases = &fixture().json_numbers;
    assert!(cases.len() >= 20);
    for (text, want) in cases {
        let v: Json = serde_json::from_str(text).unwrap();
        assert_eq!(&v.to_python_json(), want, "{text}");
    }
}

#[test]
fn parse_reply_without_functions_is_identity() {
    let t = "Thought: x\nAction: f\nAction Input: {}";
    assert_eq!(parse_reply(t, false), Reply::Text(t.into()));
    assert!(matches!(parse_reply(t, true), Reply::FunctionCall { .. }));
}
