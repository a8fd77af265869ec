//! The chat history and the generation loop, driven by a scripted model: a `model::Sequence` that emits
//! a given id script (as logits the sampler must pick) and records every token list it is fed, given to
//! the engine through `Engine::open_with_model`. What each turn feeds the model is compared with whole
//! conversations run through Qwen's `make_context` / `decode_tokens` (tests/data/chat_loop_cases.json,
//! tools/gen_chat_fixtures.py); stop strings, streaming hold-back, `max_new_tokens`, stop ids and finish
//! reasons against the definitions of spec §5.3 (oracles written out below, independent of the loop's
//! incremental code).
use qwen_rt::config::{QwenConfig, SamplingParams};
use qwen_rt::engine::{BackendKind, Engine, FinishReason, LoadOptions, ModelSource, Session, SessionOptions};
use qwen_rt::model::{check_capacity, check_forward, Model, Sequence};
use qwen_rt::tokenizer::{Tokenizer, ENDOFTEXT, IM_END, IM_START, NUM_REGULAR};
use qwen_rt::{Error, Result};
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

// ---------------------------------------------------------------------------------------------
// The scripted model.

/// What the scripted sequence saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Reset,
    /// The tokens of one `forward` / `forward_sample` call.
    Forward(Vec<u32>),
}

/// What one forward call answers: the id the sampler must pick, or an error (a failing backend).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Id(u32),
    Fail,
}

#[derive(Default)]
struct Script {
    steps: VecDeque<Step>,
    log: Vec<Event>,
}

/// The test's side of the scripted model: set what it emits next, read what it was fed.
#[derive(Clone, Default)]
struct Handle(Arc<Mutex<Script>>);

impl Handle {
    /// The next forward calls answer `ids`, one each (anything scripted before is dropped).
    fn emit(&self, ids: &[u32]) {
        self.emit_steps(ids.iter().map(|&id| Step::Id(id)).collect());
    }
    fn emit_steps(&self, steps: Vec<Step>) {
        self.0.lock().unwrap().steps = steps.into();
    }
    /// Everything fed since the last call.
    fn take_log(&self) -> Vec<Event> {
        std::mem::take(&mut self.0.lock().unwrap().log)
    }
}

/// Logit of the scripted id; every other id gets 0. exp(-LEAD) * 151,936 ≈ 1e-8: the scripted id is
/// the only survivor of top-p 0.8 and wins greedy, also after a repetition penalty of 1.1.
const LEAD: f32 = 30.0;

struct ScriptedModel {
    config: QwenConfig,
    handle: Handle,
}

impl Model for ScriptedModel {
    fn config(&self) -> &QwenConfig {
        &self.config
    }
    fn backend_name(&self) -> &'static str {
        "scripted"
    }
    fn new_sequence(self: Arc<Self>, max_seq_len: usize) -> Result<Box<dyn Sequence>> {
        check_capacity(&self.config, max_seq_len)?;
        Ok(Box::new(ScriptedSequence { model: self, len: 0, capacity: max_seq_len }))
    }
}

struct ScriptedSequence {
    model: Arc<ScriptedModel>,
    len: usize,
    capacity: usize,
}

impl Sequence for ScriptedSequence {
    fn config(&self) -> &QwenConfig {
        &self.model.config
    }
    fn len(&self) -> usize {
        self.len
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn reset(&mut self) {
        self.len = 0;
        self.model.handle.0.lock().unwrap().log.push(Event::Reset);
    }
    fn ntk_alpha(&self) -> f64 {
        1.0
    }
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        check_forward(&self.model.config, tokens, self.len, self.capacity)?;
        let mut s = self.model.handle.0.lock().unwrap();
        s.log.push(Event::Forward(tokens.to_vec()));
        let id = match s.steps.pop_front() {
            Some(Step::Id(id)) => id,
            Some(Step::Fail) => return Err(Error::Backend("scripted model: this step fails".into())),
            None => return Err(Error::Backend("scripted model: the script is exhausted".into())),
        };
        let v = self.model.config.vocab_size;
        let mut row = vec![0.0f32; v];
        row[id as usize] = LEAD;
        self.len += tokens.len();
        Ok(if all_logits {
            let mut all = vec![0.0f32; (tokens.len() - 1) * v];
            all.extend(row);
            all
        } else {
            row
        })
    }
}

/// KV length of the scripted sessions.
const CAPACITY: usize = 512;

/// An engine on the built-in tiny model's files (config, generation_config.json, tokenizer) whose
/// sessions run on a scripted model.
fn scripted_engine() -> (Arc<Engine>, Handle) {
    let handle = Handle::default();
    let h = handle.clone();
    let opts = LoadOptions { backend: BackendKind::Cpu, max_seq_len: Some(CAPACITY), ..Default::default() };
    let engine = Engine::open_with_model(ModelSource::BuiltinTiny, opts, &move |ck, _| {
        Ok(Arc::new(ScriptedModel { config: ck.config.clone(), handle: h.clone() }) as Arc<dyn Model>)
    })
    .expect("the scripted engine opens");
    assert_eq!(engine.backend_name(), "scripted");
    (Arc::new(engine), handle)
}

fn greedy_options(engine: &Engine, max_new_tokens: usize) -> SessionOptions {
    let mut o = SessionOptions::from_generation_config(engine.generation_config(), 0);
    o.sampling = SamplingParams::greedy();
    o.max_new_tokens = max_new_tokens;
    o
}

/// One call's streamed pieces, and the text received so far after each piece.
#[derive(Default, Debug)]
struct Stream {
    cumulative: Vec<String>,
}

impl Stream {
    fn text(&self) -> String {
        self.cumulative.last().cloned().unwrap_or_default()
    }
    fn push(&mut self, piece: &str) {
        let t = self.text() + piece;
        self.cumulative.push(t);
    }
}

/// What `generate` must have fed for a turn whose prompt is `prompt` and whose sampled ids are `ids`,
/// `fed` of them fed back (the last sampled id is fed only when generation goes on after it).
fn feeds(prompt: &[u32], ids: &[u32], fed: usize) -> Vec<Event> {
    let mut v = vec![Event::Reset, Event::Forward(prompt.to_vec())];
    v.extend(ids[..fed].iter().map(|&id| Event::Forward(vec![id])));
    v
}

// ---------------------------------------------------------------------------------------------
// (a), (b): history kept and windowed as Qwen's make_context; cancelled and failed turns left out.

#[derive(Deserialize, Debug)]
struct LoopTurn {
    query: String,
    system: String,
    reset_before: bool,
    reply_ids: Vec<u32>,
    stop_id: Option<u32>,
    outcome: String,
    fail_at: Option<usize>,
    prompt_ids: Vec<u32>,
    kept_turns: usize,
    response: Option<String>,
}

#[derive(Deserialize)]
struct Conversation {
    name: String,
    max_window_size: usize,
    turns: Vec<LoopTurn>,
}

#[derive(Deserialize)]
struct LoopFixture {
    conversations: Vec<Conversation>,
}

fn loop_fixture() -> LoopFixture {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/chat_loop_cases.json"))
        .expect("tests/data/chat_loop_cases.json (run tools/gen_chat_fixtures.py)");
    serde_json::from_str(&text).expect("chat loop fixture parses")
}

/// A query longer than the KV cache: `send` fails before the model runs.
fn too_long_query() -> String {
    "word ".repeat(CAPACITY + 10)
}

#[test]
fn each_turn_feeds_exactly_the_prompt_of_qwens_make_context() {
    let f = loop_fixture();
    assert!(f.conversations.len() >= 4);
    let outcomes: Vec<&str> = f.conversations.iter().flat_map(|c| c.turns.iter().map(|t| t.outcome.as_str())).collect();
    for o in ["done", "cancelled", "failed"] {
        assert!(outcomes.contains(&o), "the fixture has no {o} turn");
    }
    assert!(f.conversations.iter().any(|c| c.turns.iter().enumerate().any(|(i, t)| t.kept_turns < i)), "no windowing");
    let (engine, handle) = scripted_engine();
    let tok = engine.tokenizer();
    for c in &f.conversations {
        let mut o = greedy_options(&engine, 64);
        o.max_window_size = c.max_window_size;
        o.system = c.turns[0].system.clone();
        let mut s = engine.session(o).unwrap();
        // The history Qwen's model.chat would hold: the finished turns, with decode_tokens' responses.
        let mut history: Vec<(String, String)> = Vec::new();
        for (i, t) in c.turns.iter().enumerate() {
            let at = format!("{} turn {i} ({:?}, {})", c.name, t.query, t.outcome);
            if t.reset_before {
                s.reset();
                history.clear();
            }
            if s.options().system != t.system {
                s.set_system(&t.system);
            }
            handle.take_log();
            // A failed turn of another kind before every turn: a query the context cannot hold. The
            // model is never run and the history stays as it is (the next prompt proves it).
            let err = s.send(&too_long_query(), &mut |_| true).expect_err("an over-long query fails");
            assert!(matches!(err, Error::ContextFull(_)), "{at}: {err}");
            assert!(handle.take_log().iter().all(|e| *e == Event::Reset), "{at}: the model ran on a failed query");

            let mut steps: Vec<Step> = t.reply_ids.iter().map(|&id| Step::Id(id)).collect();
            steps.extend(t.stop_id.map(Step::Id));
            if let Some(k) = t.fail_at {
                steps.insert(k, Step::Fail);
            }
            handle.emit_steps(steps);
            let mut stream = Stream::default();
            let cancel = t.outcome == "cancelled";
            let r = s.send(&t.query, &mut |p| {
                stream.push(p);
                !cancel // the cancelled turn stops after its first piece
            });
            let log = handle.take_log();
            match t.outcome.as_str() {
                "done" => {
                    let g = r.unwrap_or_else(|e| panic!("{at}: {e}"));
                    assert_eq!(log, feeds(&t.prompt_ids, &t.reply_ids, t.reply_ids.len()), "{at}: fed ids");
                    assert_eq!(g.finish, FinishReason::StopToken(t.stop_id.unwrap()), "{at}");
                    assert_eq!(g.ids, t.reply_ids, "{at}");
                    assert_eq!(g.prompt_tokens, t.prompt_ids.len(), "{at}");
                    assert_eq!(g.text, tok.decode(&t.reply_ids).unwrap(), "{at}");
                    assert_eq!(stream.text(), g.text, "{at}: streamed text");
                    history.push((t.query.clone(), t.response.clone().expect("a done turn has a response")));
                }
                "cancelled" => {
                    let g = r.unwrap_or_else(|e| panic!("{at}: {e}"));
                    assert_eq!(log, feeds(&t.prompt_ids, &t.reply_ids, 0), "{at}: fed ids");
                    assert_eq!(g.finish, FinishReason::Cancelled, "{at}");
                    assert_eq!(stream.cumulative.len(), 1, "{at}: pieces after the cancel");
                }
                "failed" => {
                    let err = r.expect_err("the scripted failure fails the turn");
                    assert!(err.to_string().contains("scripted model: this step fails"), "{at}: {err}");
                    let k = t.fail_at.unwrap();
                    // Forward call k (0 = the prefill) fails: reply ids 0..k were fed before it.
                    assert_eq!(log, feeds(&t.prompt_ids, &t.reply_ids, k), "{at}: fed ids");
                }
                other => panic!("{at}: unknown outcome {other}"),
            }
            let got: Vec<(String, String)> =
                s.history().iter().map(|h| (h.query.clone(), h.response.clone())).collect();
            assert_eq!(got, history, "{at}: history");
        }
    }
}

/// The fixture's first conversation with each kind of history damage applied: the fed prompt of the
/// turn after must then differ, so the test above would catch it (a check that the fixture can fail).
#[test]
fn the_fixture_tells_a_dropped_or_kept_turn_apart() {
    let f = loop_fixture();
    let c = &f.conversations[0];
    let tok = Tokenizer::shared();
    let turns = |skip_cancelled: bool, skip_done: Option<usize>| {
        let mut h = Vec::new();
        for (i, t) in c.turns.iter().enumerate() {
            let keep = match t.outcome.as_str() {
                "done" => Some(i) != skip_done,
                _ => !skip_cancelled,
            };
            if keep {
                let response = t.response.clone().unwrap_or_else(|| tok.decode(&t.reply_ids).unwrap());
                h.push(qwen_rt::chat::Turn { query: t.query.clone(), response });
            }
        }
        h
    };
    let last = c.turns.last().unwrap();
    let prompt = |h: &[qwen_rt::chat::Turn]| {
        qwen_rt::chat::make_context(tok, &last.system, &h[..h.len() - 1], &last.query, c.max_window_size)
    };
    assert_eq!(prompt(&turns(true, None)), last.prompt_ids);
    assert_ne!(prompt(&turns(false, None)), last.prompt_ids, "cancelled/failed turns kept");
    assert_ne!(prompt(&turns(true, Some(0))), last.prompt_ids, "a finished turn dropped");
}

// ---------------------------------------------------------------------------------------------
// (c): stop strings cut on the decoded text; nothing of them ever streamed.

/// The id of the single-byte token `b` (byte-level BPE has one for every byte).
fn byte_id(tok: &Tokenizer, b: u8) -> u32 {
    (0..NUM_REGULAR).find(|&id| tok.decode_bytes(&[id]).unwrap() == [b]).expect("a single-byte token")
}

/// A piece of the script: text tokenised on its own, raw bytes as single-byte tokens, or an id.
enum Piece<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
    Id(u32),
}

fn script(tok: &Tokenizer, pieces: &[Piece]) -> Vec<u32> {
    let mut ids = Vec::new();
    for p in pieces {
        match p {
            Piece::Text(t) => ids.extend(tok.encode(t)),
            Piece::Bytes(b) => ids.extend(b.iter().map(|&b| byte_id(tok, b))),
            Piece::Id(id) => ids.push(*id),
        }
    }
    ids
}

/// The longest prefix of `bytes` that is complete UTF-8.
fn complete_utf8(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap(),
    }
}

/// Spec §5.3 + the streaming rule, written out plainly: the text a printer may show once `text` is
/// decoded — all of it except a tail that could still grow into a stop string (a proper prefix of one).
fn printable(text: &str, stops: &[&str]) -> String {
    let mut hold = 0;
    for s in stops {
        for l in 1..s.len() {
            if text.as_bytes().ends_with(&s.as_bytes()[..l]) {
                hold = hold.max(l);
            }
        }
    }
    text[..text.len() - hold].to_string()
}

/// The output text when generation ends at a stop string: the decoded text before the earliest one.
fn cut_at_stop(text: &str, stops: &[&str]) -> Option<(String, String)> {
    let mut best: Option<(usize, &str)> = None;
    for s in stops {
        if let Some(at) = text.find(s) {
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, s));
            }
        }
    }
    best.map(|(at, s)| (text[..at].to_string(), s.to_string()))
}

/// Run `ids` (a script ending in a stop id, or cut by a stop string) through `send` with extra stop
/// strings `stops`, and check the output, finish reason and every streamed piece against the oracles.
fn check_stop_strings(name: &str, pieces: &[Piece], stops: &[&str]) {
    let (engine, handle) = scripted_engine();
    let tok = engine.tokenizer();
    let ids = script(tok, pieces);
    let mut o = greedy_options(&engine, 100);
    o.stop = stops.iter().map(|s| s.to_string()).collect();
    let mut s = engine.session(o).unwrap();
    handle.emit(&ids);
    let mut stream = Stream::default();
    let g = s
        .send("q", &mut |p| {
            stream.push(p);
            true
        })
        .unwrap();
    // Where the oracle says generation ends: the first token after which the decoded text holds a stop
    // string, or the stop id.
    let mut end = None;
    for k in 0..ids.len() {
        if ids[k] == IM_END {
            end = Some((k, None));
            break;
        }
        let bytes = tok.decode_bytes(&ids[..=k]).unwrap();
        if let Some(cut) = cut_at_stop(complete_utf8(&bytes), stops) {
            end = Some((k, Some(cut)));
            break;
        }
    }
    let (k_end, cut) = end.unwrap_or_else(|| panic!("{name}: the script neither stops nor hits a stop string"));
    let expected_text = match &cut {
        Some((text, stop)) => {
            assert_eq!(g.finish, FinishReason::StopString(stop.clone()), "{name}");
            assert_eq!(g.ids, ids[..=k_end], "{name}: ids keep every sampled token");
            text.clone()
        }
        None => {
            assert_eq!(g.finish, FinishReason::StopToken(IM_END), "{name}");
            assert_eq!(g.ids, ids[..k_end], "{name}");
            tok.decode(&ids[..k_end]).unwrap()
        }
    };
    assert_eq!(g.text, expected_text, "{name}: output text");
    assert_eq!(stream.text(), expected_text, "{name}: streamed text");
    // One piece per token before the end, each showing exactly what the printer may show by then (no
    // stop-string prefix, nothing held back longer than needed), then at most one final piece.
    assert!(stream.cumulative.len() == k_end || stream.cumulative.len() == k_end + 1, "{name}: {stream:?}");
    for k in 0..k_end {
        let decoded = tok.decode_bytes(&ids[..=k]).unwrap();
        let want = printable(complete_utf8(&decoded), stops);
        assert_eq!(stream.cumulative[k], want, "{name}: streamed after token {k}");
    }
    for c in &stream.cumulative {
        assert!(expected_text.starts_with(c.as_str()), "{name}: streamed {c:?}, not a prefix of {expected_text:?}");
    }
    assert_eq!(s.history()[0].response, expected_text.trim(), "{name}: history");
    assert_eq!(handle.take_log().len(), 2 + k_end, "{name}: forward calls");
}

#[test]
fn a_stop_string_split_over_tokens_is_cut_and_never_streamed() {
    use Piece::*;
    check_stop_strings(
        "split",
        &[Text("Answer: 42"), Text("<"), Text("EN"), Text("D"), Text(">"), Text(" never shown"), Id(IM_END)],
        &["<END>"],
    );
    // The stop string ends in the middle of a token whose rest is dropped with it.
    check_stop_strings("mid-token", &[Text("one two"), Text(" STOP"), Text("PING and more"), Id(IM_END)], &["STOPP"]);
    // At the very first token: nothing is printed.
    check_stop_strings("first", &[Text("<END>"), Text("x"), Id(IM_END)], &["<END>"]);
    // Two stop strings in one token (" the"): the earlier in the text wins, not the first listed.
    check_stop_strings("earliest", &[Text("x"), Text(" the"), Id(IM_END)], &["he", " t"]);
    // A stop string that starts inside a multi-byte character split over single-byte tokens.
    check_stop_strings("utf8", &[Text("caf"), Bytes(&[0xC3]), Bytes(&[0xA9]), Text("!"), Id(IM_END)], &["é!"]);
}

#[test]
fn a_false_start_is_printed_as_soon_as_it_diverges() {
    use Piece::*;
    // "<EN" could start "<END>", so it is held; "X" rules that out and everything held is printed then.
    check_stop_strings(
        "false start",
        &[Text("a "), Text("<"), Text("EN"), Text("X"), Text(" more"), Id(IM_END)],
        &["<END>"],
    );
    // Two overlapping false starts, then the real one: "<<EN<END>" holds "<", then "<<", ...
    check_stop_strings(
        "overlapping",
        &[Text("<"), Text("<"), Text("EN"), Text("<"), Text("END>"), Id(IM_END)],
        &["<END>"],
    );
    // A held tail that is a prefix of a multi-byte stop string's first character.
    check_stop_strings(
        "utf8 false start",
        &[Text("x"), Bytes(&[0xC3]), Bytes(&[0xA9]), Text("t"), Id(IM_END)],
        &["é!"],
    );
    // A false start still held when the stop id comes: printed at the end (it is output, not a stop).
    check_stop_strings("held at the end", &[Text("tail <EN"), Id(IM_END)], &["<END>"]);
}

#[test]
fn human_colon_stops_a_raw_generation() {
    let (engine, handle) = scripted_engine();
    let tok = engine.tokenizer();
    let mut s = engine.session(greedy_options(&engine, 100)).unwrap();
    let ids = script(tok, &[Piece::Text("Hi.\n"), Piece::Text("Human"), Piece::Text(":"), Piece::Text(" more")]);
    handle.emit(&ids);
    let mut stream = Stream::default();
    let g = s
        .generate_ids(&[100, 200], &mut |p| {
            stream.push(p);
            true
        })
        .unwrap();
    assert_eq!(g.finish, FinishReason::StopString("Human:".into()));
    assert_eq!((g.text.as_str(), stream.text().as_str()), ("Hi.\n", "Hi.\n"));
    assert!(stream.cumulative.iter().all(|c| "Hi.\n".starts_with(c.as_str())), "{stream:?}");
    assert!(s.history().is_empty(), "raw generation keeps no history");
}

// ---------------------------------------------------------------------------------------------
// (d): max_new_tokens, and a full KV cache.

#[test]
fn max_new_tokens_is_honoured_exactly() {
    let (engine, handle) = scripted_engine();
    let tok = engine.tokenizer();
    let reply = tok.encode("one two three four five six seven eight nine ten");
    assert!(reply.len() >= 10);
    for max in [1, 2, 5, reply.len() - 1, reply.len()] {
        let mut s = engine.session(greedy_options(&engine, max)).unwrap();
        // The script goes on past max (and ends in a stop id the loop must not reach).
        let mut ids = reply.clone();
        ids.push(IM_END);
        handle.emit(&ids);
        let mut stream = Stream::default();
        let g = s
            .send("count", &mut |p| {
                stream.push(p);
                true
            })
            .unwrap();
        assert_eq!(g.finish, FinishReason::Length, "max {max}");
        assert_eq!(g.ids, reply[..max], "max {max}");
        assert_eq!(g.generated_tokens(), max);
        assert_eq!(g.text, tok.decode(&reply[..max]).unwrap(), "max {max}");
        assert_eq!(stream.text(), g.text, "max {max}");
        // The last sampled id is not fed back: prefill + max - 1 single-token steps.
        let prompt = qwen_rt::chat::make_context(tok, &s.options().system, &[], "count", s.options().max_window_size);
        assert_eq!(handle.take_log(), feeds(&prompt, &reply, max - 1), "max {max}");
        assert_eq!(s.history()[0].response, g.text.trim(), "max {max}: a length-cut turn joins the history");
    }
    // A stop id right after the max-th token is not reached; one more token of room and it is.
    let mut s = engine.session(greedy_options(&engine, 4)).unwrap();
    handle.emit(&[reply[0], reply[1], reply[2], reply[3], IM_END]);
    assert_eq!(s.send("q", &mut |_| true).unwrap().finish, FinishReason::Length);
    let mut s = engine.session(greedy_options(&engine, 5)).unwrap();
    handle.emit(&[reply[0], reply[1], reply[2], reply[3], IM_END]);
    assert_eq!(s.send("q", &mut |_| true).unwrap().finish, FinishReason::StopToken(IM_END));
}

#[test]
fn a_full_kv_cache_ends_generation() {
    let (engine, handle) = scripted_engine();
    let mut s = engine.session(greedy_options(&engine, 100)).unwrap();
    let prompt: Vec<u32> = (0..500).map(|i| 1000 + i).collect();
    let script: Vec<u32> = (0..100).map(|i| 3000 + i).collect();
    handle.emit(&script);
    let g = s.generate_ids(&prompt, &mut |_| true).unwrap();
    assert_eq!(g.finish, FinishReason::ContextFull);
    // The cache holds the prompt and every sampled id but the last: 500 + (n - 1) = CAPACITY.
    assert_eq!(g.ids, script[..CAPACITY - prompt.len() + 1]);
    let log = handle.take_log();
    assert_eq!(log, feeds(&prompt, &script, CAPACITY - prompt.len()));
}

// ---------------------------------------------------------------------------------------------
// (e): stop ids end the turn and are not printed.

fn run_send(s: &mut Session, handle: &Handle, ids: &[u32]) -> (qwen_rt::generate::Generation, String) {
    handle.emit(ids);
    let mut stream = Stream::default();
    let g = s
        .send("q", &mut |p| {
            stream.push(p);
            true
        })
        .unwrap();
    (g, stream.text())
}

#[test]
fn chatml_stop_ids_end_the_turn_unprinted() {
    let (engine, handle) = scripted_engine();
    let tok = engine.tokenizer();
    let reply = tok.encode("Fine, thanks.");
    for stop in [IM_END, IM_START, ENDOFTEXT] {
        let mut s = engine.session(greedy_options(&engine, 100)).unwrap();
        handle.take_log();
        let mut ids = reply.clone();
        ids.extend([stop, 5000, 5001]);
        let (g, streamed) = run_send(&mut s, &handle, &ids);
        assert_eq!(g.finish, FinishReason::StopToken(stop));
        assert_eq!(g.finish.name(), "stop");
        assert_eq!(g.ids, reply, "the stop id is not an output id");
        assert_eq!((g.text.as_str(), streamed.as_str()), ("Fine, thanks.", "Fine, thanks."));
        assert_eq!(s.history()[0].response, "Fine, thanks.");
        // The stop id is sampled, not fed: prefill + one step per reply token.
        assert_eq!(handle.take_log().len(), 2 + reply.len());
        // A stop id as the first token: an empty answer, still a finished turn.
        let (g, streamed) = run_send(&mut s, &handle, &[stop]);
        assert_eq!((g.ids.len(), g.text.as_str(), streamed.as_str()), (0, "", ""));
        assert_eq!(g.finish, FinishReason::StopToken(stop));
        assert_eq!(handle.take_log().len(), 2, "a stop id first: the prefill only");
        assert_eq!(s.history().len(), 2);
    }
}

#[test]
fn raw_generation_stops_only_at_endoftext() {
    let (engine, handle) = scripted_engine();
    let tok = engine.tokenizer();
    let mut s = engine.session(greedy_options(&engine, 100)).unwrap();
    // ChatML markers are output in the raw format (spec §5.3: its stops are "Human:" and <|endoftext|>).
    let ids =
        [tok.encode("a"), vec![IM_END], tok.encode("b"), vec![IM_START], vec![ENDOFTEXT], tok.encode("c")].concat();
    handle.emit(&ids);
    let mut streamed = String::new();
    let g = s
        .generate_ids(&[1, 2, 3], &mut |p| {
            streamed.push_str(p);
            true
        })
        .unwrap();
    assert_eq!(g.finish, FinishReason::StopToken(ENDOFTEXT));
    assert_eq!(g.text, "a<|im_end|>b<|im_start|>");
    assert_eq!(streamed, g.text);
    assert_eq!(g.ids, ids[..4]);
}

#[test]
fn the_generation_config_sampler_follows_the_script_too() {
    // Qwen-7B-Chat's defaults (do_sample, top_p 0.8, repetition_penalty 1.1), not greedy: the scripted
    // logits leave the sampler one choice, so the loop is tested on the path `qwen-run chat` takes.
    let (engine, handle) = scripted_engine();
    let g = engine.generation_config();
    assert!(g.do_sample && g.repetition_penalty > 1.0, "{g:?}");
    let tok = engine.tokenizer();
    let reply = tok.encode("the the the the"); // repeated ids: the penalty applies
    let mut s = engine.session(SessionOptions::from_generation_config(g, 7)).unwrap();
    let (out, streamed) = run_send(&mut s, &handle, &[reply.clone(), vec![IM_END]].concat());
    assert_eq!((out.ids, out.finish), (reply, FinishReason::StopToken(IM_END)));
    assert_eq!(streamed, "the the the the");
}

#[test]
fn cancelling_later_keeps_exactly_what_was_streamed() {
    let (engine, handle) = scripted_engine();
    let tok = engine.tokenizer();
    let mut o = greedy_options(&engine, 100);
    o.stop = vec!["<END>".into()];
    let mut s = engine.session(o).unwrap();
    let ids = script(tok, &[Piece::Text("one"), Piece::Text(" two"), Piece::Bytes(b"<"), Piece::Text("three")]);
    handle.emit(&ids);
    let mut stream = Stream::default();
    let g = s
        .send("q", &mut |p| {
            stream.push(p);
            stream.cumulative.len() < 3 // cancel at the third piece ("<" is held, not shown)
        })
        .unwrap();
    assert_eq!(g.finish, FinishReason::Cancelled);
    assert_eq!(g.finish.name(), "cancelled");
    assert_eq!(g.text, "one two", "the held-back text of a cancelled call is not output");
    assert_eq!(stream.text(), g.text);
    assert!(s.history().is_empty(), "a cancelled turn is not history");
}
