//! The C ABI (src/ffi.rs, include/qwen.h):
//! - every error path through the `extern "C"` functions called from Rust (NULL, invalid UTF-8, freed,
//!   double-freed, foreign and wrong-kind pointers, bad options, a prompt longer than the context, a busy
//!   session), streaming, cancellation, /reset, determinism, one model shared by 3 sessions on 3 threads;
//! - examples/chat.c compiled with the `cc` crate, linked against libqwen_rt.so and run on the built-in
//!   tiny model with a scripted conversation (its output must equal the same conversation run in-process);
//! - header drift: bindgen on include/qwen.h against the `extern "C"` items of src/ffi.rs, both ways.
//!
//! Everything runs on the built-in tiny random-weight model (`:tiny:`) with few new tokens.
use qwen_rt::ffi::*;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr::{null, null_mut};
use std::sync::{mpsc, OnceLock};

use qwen_status::*;

const TINY: &CStr = c":tiny:";

fn last_error() -> String {
    unsafe { CStr::from_ptr(qwen_last_error()) }.to_string_lossy().into_owned()
}

#[track_caller]
fn ok(st: qwen_status) {
    assert_eq!(st, QWEN_OK, "expected QWEN_OK: {}", last_error());
}

/// Assert `st == want` and that the thread's message mentions `needle`.
#[track_caller]
fn expect_err(st: qwen_status, want: qwen_status, needle: &str) {
    let msg = last_error();
    assert_eq!(st, want, "status (message: {msg})");
    assert!(msg.contains(needle), "message {msg:?} should mention {needle:?}");
}

/// The tiny model on the CPU with a small KV cache.
fn tiny_model(max_seq_len: u32) -> *mut qwen_model {
    let mut o = qwen_model_options_default();
    o.backend = qwen_backend::QWEN_BACKEND_CPU as i32;
    o.max_seq_len = max_seq_len;
    let mut m = null_mut();
    ok(unsafe { qwen_model_load(TINY.as_ptr(), &o, &mut m) });
    assert!(!m.is_null());
    m
}

fn session_options(m: *const qwen_model, max_new_tokens: u32, greedy: bool) -> qwen_session_options {
    let mut o: qwen_session_options = unsafe { std::mem::zeroed() };
    ok(unsafe { qwen_session_options_default(m, &mut o) });
    o.max_new_tokens = max_new_tokens;
    if greedy {
        o.sampling.do_sample = 0;
    }
    o
}

fn session(m: *const qwen_model, max_new_tokens: u32, greedy: bool) -> *mut qwen_session {
    let o = session_options(m, max_new_tokens, greedy);
    let mut s = null_mut();
    ok(unsafe { qwen_session_create(m, &o, &mut s) });
    assert!(!s.is_null());
    s
}

/// Stream callback appending each piece to the `String` behind `user_data`.
unsafe extern "C" fn collect(piece: *const c_char, user_data: *mut c_void) -> c_int {
    let out = &mut *(user_data as *mut String);
    let p = CStr::from_ptr(piece).to_str().expect("pieces are UTF-8");
    assert!(!p.is_empty(), "the callback never receives an empty piece");
    out.push_str(p);
    1
}

/// Take a library string, free it, return its content.
fn take_string(p: *mut c_char) -> String {
    assert!(!p.is_null());
    let s = unsafe { CStr::from_ptr(p) }.to_str().expect("UTF-8").to_string();
    ok(unsafe { qwen_free_string(p) });
    s
}

/// Send `msg`; returns (streamed text, returned answer, finish).
fn send(s: *mut qwen_session, msg: &str) -> (String, String, qwen_finish) {
    let msg = CString::new(msg).unwrap();
    let mut streamed = String::new();
    let mut answer = null_mut();
    let mut finish = qwen_finish::QWEN_FINISH_CANCELLED;
    ok(unsafe {
        qwen_session_send(
            s,
            msg.as_ptr(),
            Some(collect),
            &mut streamed as *mut String as *mut c_void,
            &mut answer,
            &mut finish,
        )
    });
    (streamed, take_string(answer), finish)
}

fn tokenize(m: *const qwen_model, text: &CStr, special: bool) -> Vec<u32> {
    let (mut p, mut n) = (null_mut(), usize::MAX);
    ok(unsafe { qwen_tokenize(m, text.as_ptr(), special as i32, &mut p, &mut n) });
    if n == 0 {
        assert!(p.is_null(), "no ids: NULL");
        return Vec::new();
    }
    let v = unsafe { std::slice::from_raw_parts(p, n) }.to_vec();
    ok(unsafe { qwen_free_tokens(p, n) });
    v
}

#[test]
fn version_status_names_and_last_error() {
    let v = unsafe { CStr::from_ptr(qwen_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let name = |s: i32| unsafe { CStr::from_ptr(qwen_status_name(s)) }.to_str().unwrap().to_string();
    assert_eq!(name(QWEN_OK as i32), "QWEN_OK");
    assert_eq!(name(QWEN_ERR_BUSY as i32), "QWEN_ERR_BUSY");
    assert_eq!(name(QWEN_ERR_PANIC as i32), "QWEN_ERR_PANIC");
    assert_eq!(name(-1), "QWEN_ERR_UNKNOWN");
    assert_eq!(name(11), "QWEN_ERR_UNKNOWN");
    // An error sets the message; the next successful call clears it.
    let st = unsafe { qwen_model_load(null(), null(), &mut null_mut()) };
    expect_err(st, QWEN_ERR_NULL_ARG, "qwen_model_load: argument `path` is NULL");
    ok(unsafe { qwen_free_string(null_mut()) });
    assert_eq!(last_error(), "");
    // Per thread: another thread's failure does not show here.
    let _ = unsafe { qwen_model_load(null(), null(), &mut null_mut()) };
    std::thread::spawn(|| assert_eq!(last_error(), "")).join().unwrap();
}

/// Tokenize every fixture text (from Python tiktoken, tests/data/tokenizer_cases.json) through the C ABI,
/// and detokenize every decode case.
#[test]
fn tokenize_and_detokenize_match_the_reference_fixture() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer_cases.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let m = tiny_model(64);
    let ids_of = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let mut checked = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let Ok(c) = CString::new(text) else { continue }; // texts with NUL cannot be C strings
        assert_eq!(tokenize(m, &c, false), ids_of(&case["ids"]), "{}", case["name"]);
        assert_eq!(tokenize(m, &c, true), ids_of(&case["ids_special"]), "{}", case["name"]);
        checked += 1;
    }
    assert!(checked > 200, "only {checked} cases checked");
    for case in fixture["decode"].as_array().unwrap() {
        let ids = ids_of(&case["ids"]);
        let (mut p, mut n) = (null_mut(), 0usize);
        ok(unsafe { qwen_detokenize(m, ids.as_ptr(), ids.len(), &mut p, &mut n) });
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, n + 1) }.to_vec();
        assert_eq!(bytes[n], 0, "NUL-terminated");
        assert_eq!(String::from_utf8_lossy(&bytes[..n]), case["text"].as_str().unwrap(), "ids {ids:?}");
        ok(unsafe { qwen_free_string(p) });
    }
    // Exact bytes, embedded NUL included (id 15 is "0"; the byte 0x00 token is id 188).
    let (mut p, mut n) = (null_mut(), 0usize);
    ok(unsafe { qwen_detokenize(m, [15u32, 188, 15].as_ptr(), 3, &mut p, &mut n) });
    assert_eq!(unsafe { std::slice::from_raw_parts(p as *const u8, n) }, b"0\x000");
    ok(unsafe { qwen_free_string(p) });
    // Empty text: NULL and 0; empty ids: "".
    assert_eq!(tokenize(m, c"", false), Vec::<u32>::new());
    let mut p = null_mut();
    ok(unsafe { qwen_detokenize(m, null(), 0, &mut p, null_mut()) });
    assert_eq!(take_string(p), "");
    ok(unsafe { qwen_model_free(m) });
}

#[test]
fn null_pointers_are_errors() {
    let m = tiny_model(64);
    let s = session(m, 2, true);
    let (mut ids, mut n, mut text) = (null_mut(), 0usize, null_mut());
    unsafe {
        expect_err(qwen_model_load(TINY.as_ptr(), null(), null_mut()), QWEN_ERR_NULL_ARG, "out_model");
        expect_err(qwen_tokenize(null(), c"x".as_ptr(), 0, &mut ids, &mut n), QWEN_ERR_NULL_ARG, "`model`");
        expect_err(qwen_tokenize(m, null(), 0, &mut ids, &mut n), QWEN_ERR_NULL_ARG, "`text`");
        expect_err(qwen_tokenize(m, c"x".as_ptr(), 0, null_mut(), &mut n), QWEN_ERR_NULL_ARG, "out_tokens");
        expect_err(qwen_tokenize(m, c"x".as_ptr(), 0, &mut ids, null_mut()), QWEN_ERR_NULL_ARG, "out_len");
        expect_err(qwen_detokenize(m, null(), 2, &mut text, null_mut()), QWEN_ERR_NULL_ARG, "`tokens`");
        expect_err(qwen_detokenize(m, [1u32].as_ptr(), 1, null_mut(), null_mut()), QWEN_ERR_NULL_ARG, "out_text");
        expect_err(qwen_model_backend(m, null_mut()), QWEN_ERR_NULL_ARG, "out_name");
        expect_err(qwen_session_options_default(m, null_mut()), QWEN_ERR_NULL_ARG, "out_options");
        expect_err(qwen_session_create(null(), null(), &mut null_mut()), QWEN_ERR_NULL_ARG, "`model`");
        expect_err(qwen_session_create(m, null(), null_mut()), QWEN_ERR_NULL_ARG, "out_session");
        expect_err(qwen_session_reset(null_mut()), QWEN_ERR_NULL_ARG, "`session`");
        expect_err(
            qwen_session_send(null_mut(), c"hi".as_ptr(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_NULL_ARG,
            "`session`",
        );
        expect_err(
            qwen_session_send(s, null(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_NULL_ARG,
            "`message`",
        );
        expect_err(
            qwen_session_generate(s, null(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_NULL_ARG,
            "`prompt`",
        );
        expect_err(
            qwen_session_generate_tokens(s, null(), 3, None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_NULL_ARG,
            "`tokens`",
        );
        // Free functions accept NULL.
        ok(qwen_model_free(null_mut()));
        ok(qwen_session_free(null_mut()));
        ok(qwen_free_tokens(null_mut(), 0));
        ok(qwen_free_string(null_mut()));
        // NULL options and a NULL callback / outputs are fine.
        let mut s2 = null_mut();
        ok(qwen_session_create(m, null(), &mut s2));
        ok(qwen_session_send(s, c"hi".as_ptr(), None, null_mut(), null_mut(), null_mut()));
        ok(qwen_session_free(s2));
        ok(qwen_session_free(s));
        ok(qwen_model_free(m));
    }
}

#[test]
fn invalid_utf8_is_an_error() {
    let m = tiny_model(64);
    let s = session(m, 2, true);
    let bad = c"ok \xff\xfe";
    let (mut ids, mut n) = (null_mut(), 0usize);
    unsafe {
        expect_err(
            qwen_model_load(bad.as_ptr(), null(), &mut null_mut()),
            QWEN_ERR_INVALID_UTF8,
            "`path` is not valid UTF-8 (at byte 3)",
        );
        expect_err(qwen_tokenize(m, bad.as_ptr(), 1, &mut ids, &mut n), QWEN_ERR_INVALID_UTF8, "`text`");
        assert!(ids.is_null() && n == 0);
        expect_err(
            qwen_session_send(s, bad.as_ptr(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_INVALID_UTF8,
            "`message`",
        );
        expect_err(
            qwen_session_generate(s, bad.as_ptr(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_INVALID_UTF8,
            "`prompt`",
        );
        let mut o = session_options(m, 2, true);
        o.system = bad.as_ptr();
        expect_err(qwen_session_create(m, &o, &mut null_mut()), QWEN_ERR_INVALID_UTF8, "options.system");
        ok(qwen_session_free(s));
        ok(qwen_model_free(m));
    }
}

#[test]
fn freed_foreign_and_wrong_kind_pointers_are_rejected() {
    let m = tiny_model(64);
    let s = session(m, 2, true);
    let (mut ids, mut n) = (null_mut(), 0usize);
    unsafe {
        // A foreign pointer that would crash if dereferenced, and one to foreign memory.
        let wild = 0x10 as *mut qwen_model;
        expect_err(
            qwen_tokenize(wild, c"x".as_ptr(), 0, &mut ids, &mut n),
            QWEN_ERR_INVALID_HANDLE,
            "not a live qwen_model",
        );
        expect_err(qwen_model_free(wild), QWEN_ERR_INVALID_HANDLE, "not a live qwen_model");
        let mut fake = [0u64; 8];
        let fake_session = fake.as_mut_ptr() as *mut qwen_session;
        expect_err(qwen_session_free(fake_session), QWEN_ERR_INVALID_HANDLE, "not a live qwen_session");
        expect_err(
            qwen_session_send(fake_session, c"hi".as_ptr(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_INVALID_HANDLE,
            "qwen_session",
        );
        expect_err(qwen_free_string(fake.as_mut_ptr() as *mut c_char), QWEN_ERR_INVALID_HANDLE, "not a live string");
        expect_err(
            qwen_free_tokens(fake.as_mut_ptr() as *mut u32, 8),
            QWEN_ERR_INVALID_HANDLE,
            "not a live token buffer",
        );
        assert_eq!(fake, [0u64; 8], "foreign memory untouched");
        // Wrong kind: a session where a model is expected, and the other way round.
        expect_err(
            qwen_model_free(s as *mut qwen_model),
            QWEN_ERR_INVALID_HANDLE,
            "is a qwen_session, not a qwen_model",
        );
        expect_err(
            qwen_session_reset(m as *mut qwen_session),
            QWEN_ERR_INVALID_HANDLE,
            "is a qwen_model, not a qwen_session",
        );
        // Buffers: wrong free function, wrong length, double free.
        ok(qwen_tokenize(m, c"Hello world".as_ptr(), 0, &mut ids, &mut n));
        assert_eq!(n, 2);
        expect_err(qwen_free_string(ids as *mut c_char), QWEN_ERR_INVALID_HANDLE, "is a token buffer, not a string");
        expect_err(qwen_free_tokens(ids, 3), QWEN_ERR_INVALID_ARG, "holds 2 ids");
        ok(qwen_free_tokens(ids, 2));
        expect_err(qwen_free_tokens(ids, 2), QWEN_ERR_INVALID_HANDLE, "already freed");
        let mut text = null_mut();
        ok(qwen_detokenize(m, [9707u32].as_ptr(), 1, &mut text, null_mut()));
        ok(qwen_free_string(text));
        expect_err(qwen_free_string(text), QWEN_ERR_INVALID_HANDLE, "already freed");
        // Freed session: every use and a second free are errors.
        ok(qwen_session_free(s));
        expect_err(
            qwen_session_send(s, c"hi".as_ptr(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_INVALID_HANDLE,
            "already freed",
        );
        expect_err(qwen_session_reset(s), QWEN_ERR_INVALID_HANDLE, "already freed");
        expect_err(qwen_session_free(s), QWEN_ERR_INVALID_HANDLE, "already freed");
        // Freed model, double free.
        ok(qwen_model_free(m));
        expect_err(qwen_tokenize(m, c"x".as_ptr(), 0, &mut ids, &mut n), QWEN_ERR_INVALID_HANDLE, "already freed");
        expect_err(qwen_session_create(m, null(), &mut null_mut()), QWEN_ERR_INVALID_HANDLE, "already freed");
        expect_err(qwen_model_free(m), QWEN_ERR_INVALID_HANDLE, "already freed");
    }
}

#[test]
fn invalid_arguments_and_missing_files() {
    let mut m = null_mut();
    unsafe {
        let mut o = qwen_model_options_default();
        o.backend = 7;
        expect_err(qwen_model_load(TINY.as_ptr(), &o, &mut m), QWEN_ERR_INVALID_ARG, "options.backend 7");
        let mut o = qwen_model_options_default();
        o.dtype = -1;
        expect_err(qwen_model_load(TINY.as_ptr(), &o, &mut m), QWEN_ERR_INVALID_ARG, "options.dtype -1");
        let mut o = qwen_model_options_default();
        o.backend = qwen_backend::QWEN_BACKEND_CPU as i32;
        o.dtype = qwen_dtype::QWEN_DTYPE_BF16 as i32;
        expect_err(qwen_model_load(TINY.as_ptr(), &o, &mut m), QWEN_ERR_INVALID_ARG, "dtype");
        o.dtype = 0;
        o.threads = u32::MAX;
        expect_err(qwen_model_load(TINY.as_ptr(), &o, &mut m), QWEN_ERR_INVALID_ARG, "options.threads");
        o.threads = 0;
        o.max_seq_len = u32::MAX;
        expect_err(qwen_model_load(TINY.as_ptr(), &o, &mut m), QWEN_ERR_INVALID_ARG, "max_seq_len");
        expect_err(qwen_model_load(c"".as_ptr(), null(), &mut m), QWEN_ERR_INVALID_ARG, "empty");
        expect_err(
            qwen_model_load(c"/nonexistent/qwen-model".as_ptr(), null(), &mut m),
            QWEN_ERR_IO,
            "/nonexistent/qwen-model",
        );
        assert!(m.is_null());
        // A directory that is not a model: its config.json is malformed.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
        let p = CString::new(dir.path().to_str().unwrap()).unwrap();
        let st = qwen_model_load(p.as_ptr(), null(), &mut m);
        assert_eq!(st, QWEN_ERR_MODEL, "{}", last_error());

        let m = tiny_model(64);
        let mut name = null();
        ok(qwen_model_backend(m, &mut name));
        assert_eq!(CStr::from_ptr(name).to_str().unwrap(), "cpu");
        type Edit = fn(&mut qwen_session_options);
        let bad_sampling: [(&str, Edit); 5] = [
            ("top_p", |o| o.sampling.top_p = 0.0),
            ("temperature", |o| o.sampling.temperature = f32::NAN),
            ("repetition_penalty", |o| o.sampling.repetition_penalty = -1.0),
            ("max_new_tokens", |o| o.max_new_tokens = 0),
            ("max_window_size", |o| o.max_window_size = 0),
        ];
        for (what, set) in bad_sampling {
            let mut o = session_options(m, 2, false);
            set(&mut o);
            let mut s = null_mut();
            expect_err(qwen_session_create(m, &o, &mut s), QWEN_ERR_INVALID_ARG, what);
            assert!(s.is_null());
        }
        let mut text = null_mut();
        expect_err(qwen_detokenize(m, [151851u32].as_ptr(), 1, &mut text, null_mut()), QWEN_ERR_INVALID_ARG, "151851");
        assert!(text.is_null());
        let s = session(m, 2, true);
        expect_err(
            qwen_session_generate_tokens(s, [1u32].as_ptr(), 0, None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_INVALID_ARG,
            "n_tokens",
        );
        expect_err(
            qwen_session_generate_tokens(s, [1u32, 999_999].as_ptr(), 2, None, null_mut(), &mut text, null_mut()),
            QWEN_ERR_INVALID_ARG,
            "999999",
        );
        assert!(text.is_null());
        expect_err(
            qwen_session_generate(s, c"".as_ptr(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_INVALID_ARG,
            "empty",
        );
        ok(qwen_session_free(s));
        ok(qwen_model_free(m));
    }
}

#[test]
fn prompt_longer_than_the_context_is_an_error_and_the_session_survives() {
    let m = tiny_model(40); // the ChatML prompt of a short message is ~20 tokens
    let s = session(m, 4, true);
    let long = CString::new("word ".repeat(60)).unwrap();
    let mut answer = null_mut();
    unsafe {
        expect_err(
            qwen_session_send(s, long.as_ptr(), None, null_mut(), &mut answer, null_mut()),
            QWEN_ERR_CONTEXT_FULL,
            "40",
        );
        assert!(answer.is_null());
        let ids: Vec<u32> = (0..41).collect();
        expect_err(
            qwen_session_generate_tokens(s, ids.as_ptr(), ids.len(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_CONTEXT_FULL,
            "context",
        );
        expect_err(
            qwen_session_generate(s, long.as_ptr(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_CONTEXT_FULL,
            "context",
        );
    }
    // Still usable; generation that reaches the end of the context stops with CONTEXT_FULL, not an error.
    let (streamed, answer, _) = send(s, "hi");
    assert_eq!(streamed, answer);
    let ids: Vec<u32> = (100..136).collect(); // 36 of 40 positions: at most 4 more fit
    let s2 = session_with_max_new(m, 50);
    let mut finish = qwen_finish::QWEN_FINISH_STOP;
    let mut text = null_mut();
    ok(unsafe { qwen_session_generate_tokens(s2, ids.as_ptr(), ids.len(), None, null_mut(), &mut text, &mut finish) });
    let _ = take_string(text);
    assert!(
        matches!(finish, qwen_finish::QWEN_FINISH_CONTEXT_FULL | qwen_finish::QWEN_FINISH_STOP),
        "finish {finish:?}"
    );
    unsafe {
        ok(qwen_session_free(s));
        ok(qwen_session_free(s2));
        ok(qwen_model_free(m));
    }
}

fn session_with_max_new(m: *const qwen_model, max_new_tokens: u32) -> *mut qwen_session {
    session(m, max_new_tokens, true)
}

/// Context for `reenter`: the session to call back into and what those calls returned.
struct Reentry {
    session: *mut qwen_session,
    results: Vec<(qwen_status, String)>,
}

unsafe extern "C" fn reenter(_piece: *const c_char, user_data: *mut c_void) -> c_int {
    let r = &mut *(user_data as *mut Reentry);
    let st = qwen_session_send(r.session, c"again".as_ptr(), None, null_mut(), null_mut(), null_mut());
    r.results.push((st, last_error()));
    let st = qwen_session_free(r.session);
    r.results.push((st, last_error()));
    let st = qwen_session_reset(r.session);
    r.results.push((st, last_error()));
    0 // stop after the first piece
}

/// Sends `hi` on the session behind `user_data` (a usize) from the callback thread: signals `started`,
/// waits for `go`.
struct Blocker {
    started: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
}

unsafe extern "C" fn block(_piece: *const c_char, user_data: *mut c_void) -> c_int {
    let b = &*(user_data as *const Blocker);
    let _ = b.started.send(());
    let _ = b.go.recv();
    0
}

#[test]
fn a_busy_session_is_an_error_not_a_race() {
    let m = tiny_model(64);
    let s = session(m, 8, false);
    // From its own callback.
    let mut r = Reentry { session: s, results: Vec::new() };
    let mut finish = qwen_finish::QWEN_FINISH_STOP;
    ok(unsafe {
        qwen_session_send(
            s,
            c"hello".as_ptr(),
            Some(reenter),
            &mut r as *mut Reentry as *mut c_void,
            null_mut(),
            &mut finish,
        )
    });
    assert_eq!(finish, qwen_finish::QWEN_FINISH_CANCELLED);
    assert_eq!(r.results.len(), 3, "the callback ran once");
    for (st, msg) in &r.results {
        assert_eq!(*st, QWEN_ERR_BUSY, "{msg}");
        assert!(msg.contains("in use"), "{msg}");
    }
    // From another thread while this one generates.
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let blocker = Blocker { started: started_tx, go: go_rx };
    let addr = s as usize;
    let worker = std::thread::spawn(move || {
        let st = unsafe {
            qwen_session_send(
                addr as *mut qwen_session,
                c"hello".as_ptr(),
                Some(block),
                &blocker as *const Blocker as *mut c_void,
                null_mut(),
                null_mut(),
            )
        };
        (st, last_error())
    });
    started_rx.recv().expect("the worker reached its callback");
    unsafe {
        expect_err(
            qwen_session_send(s, c"hi".as_ptr(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_BUSY,
            "in use",
        );
        expect_err(
            qwen_session_generate(s, c"hi".as_ptr(), None, null_mut(), null_mut(), null_mut()),
            QWEN_ERR_BUSY,
            "in use",
        );
        expect_err(qwen_session_free(s), QWEN_ERR_BUSY, "not freed");
        // The model is not busy: other sessions and the tokenizer work meanwhile.
        assert_eq!(tokenize(m, c"Hello world", false), vec![9707, 1879]);
    }
    go_tx.send(()).unwrap();
    let (st, msg) = worker.join().unwrap();
    assert_eq!(st, QWEN_OK, "{msg}");
    unsafe {
        ok(qwen_session_free(s));
        ok(qwen_model_free(m));
    }
}

unsafe extern "C" fn stop_after_first(piece: *const c_char, user_data: *mut c_void) -> c_int {
    collect(piece, user_data);
    0
}

#[test]
fn streaming_cancel_reset_and_determinism() {
    let m = tiny_model(256);
    // Streamed pieces concatenated are the answer; sampled output repeats with the same seed.
    let (a, b) = (session(m, 12, false), session(m, 12, false));
    let (streamed, answer, finish) = send(a, "Hello, who are you?");
    assert!(!streamed.is_empty(), "streamed text");
    assert_eq!(streamed, answer);
    assert_eq!(send(b, "Hello, who are you?"), (streamed, answer, finish));
    // Cancel after the first piece: the answer is that piece.
    let mut got = String::new();
    let mut answer = null_mut();
    let mut finish = qwen_finish::QWEN_FINISH_STOP;
    ok(unsafe {
        qwen_session_send(
            a,
            c"Tell me more.".as_ptr(),
            Some(stop_after_first),
            &mut got as *mut String as *mut c_void,
            &mut answer,
            &mut finish,
        )
    });
    assert_eq!(finish, qwen_finish::QWEN_FINISH_CANCELLED);
    assert!(!got.is_empty());
    assert_eq!(take_string(answer), got);
    // Greedy: the answer depends only on the prompt. After /reset the history is gone, so the answer to
    // "again" equals a fresh session's; with the history in front it is computed from another prompt.
    let g = session(m, 10, true);
    let first = send(g, "hello").1;
    let _with_history = send(g, "again").1;
    ok(unsafe { qwen_session_reset(g) });
    let after_reset = send(g, "again").1;
    let fresh = session(m, 10, true);
    assert_eq!(send(fresh, "again").1, after_reset);
    assert!(!first.is_empty());
    // Raw generation from text equals generation from its ids (special tokens parsed), and ignores history.
    let prompt = c"<|im_start|>The capital of France is";
    let ids = tokenize(m, prompt, true);
    assert_eq!(ids[0], 151644);
    let mut t1 = null_mut();
    let mut streamed = String::new();
    ok(unsafe {
        qwen_session_generate(
            g,
            prompt.as_ptr(),
            Some(collect),
            &mut streamed as *mut String as *mut c_void,
            &mut t1,
            null_mut(),
        )
    });
    let mut t2 = null_mut();
    ok(unsafe { qwen_session_generate_tokens(fresh, ids.as_ptr(), ids.len(), None, null_mut(), &mut t2, null_mut()) });
    let (t1, t2) = (take_string(t1), take_string(t2));
    assert_eq!(t1, t2);
    assert_eq!(t1, streamed);
    unsafe {
        for s in [a, b, g, fresh] {
            ok(qwen_session_free(s));
        }
        ok(qwen_model_free(m));
    }
}

#[test]
fn freeing_the_model_keeps_its_sessions_working() {
    let m = tiny_model(128);
    let s = session(m, 6, true);
    let before = send(s, "hi").1;
    ok(unsafe { qwen_model_free(m) });
    ok(unsafe { qwen_session_reset(s) });
    assert_eq!(send(s, "hi").1, before);
    ok(unsafe { qwen_session_free(s) });
}

#[test]
fn one_model_three_sessions_on_three_threads() {
    let m = tiny_model(256);
    let messages = ["Hello!", "What is 2+2?", "Tell me a story."];
    // The reference: each conversation run alone on this thread (greedy, so deterministic).
    let expected: Vec<Vec<String>> = messages
        .iter()
        .map(|msg| {
            let s = session(m, 8, true);
            let v = vec![send(s, msg).1, send(s, "Thanks.").1];
            ok(unsafe { qwen_session_free(s) });
            v
        })
        .collect();
    let addr = m as usize;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
    let handles: Vec<_> = messages
        .iter()
        .map(|msg| {
            let (msg, barrier) = (msg.to_string(), barrier.clone());
            std::thread::spawn(move || {
                let s = session(addr as *const qwen_model, 8, true);
                barrier.wait();
                let v = vec![send(s, &msg).1, send(s, "Thanks.").1];
                ok(unsafe { qwen_session_free(s) });
                v
            })
        })
        .collect();
    let got: Vec<Vec<String>> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    assert_eq!(got, expected);
    ok(unsafe { qwen_model_free(m) });
}

// ---------------------------------------------------------------------------------------------
// examples/chat.c, compiled and run.

/// `target/<profile>` of this test binary (`target/<profile>/deps/c_abi-HASH`), after making sure the
/// cdylib is built there: `cargo test` builds the library for the tests as an rlib only, so this runs
/// `cargo build --lib` with the same cargo, manifest, profile and target directory (a no-op when it
/// is up to date).
fn built_library_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir =
            exe.parent().and_then(Path::parent).expect("test binary in target/<profile>/deps").to_path_buf();
        let profile = profile_dir.file_name().unwrap().to_str().unwrap().to_string();
        let above = profile_dir.parent().unwrap();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--lib", "--manifest-path", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")]);
        cmd.args(["--profile", if profile == "debug" { "dev" } else { &profile }]);
        // target/<profile> or target/<triple>/<profile> (a triple has at least two dashes).
        let above_name = above.file_name().unwrap().to_str().unwrap();
        if above.join("CACHEDIR.TAG").exists() || above_name.matches('-').count() < 2 {
            cmd.arg("--target-dir").arg(above);
        } else {
            // target/<triple>/<profile>
            cmd.args(["--target", above_name]);
            cmd.arg("--target-dir").arg(above.parent().unwrap());
        }
        let status = cmd.status().expect("run cargo build --lib");
        assert!(status.success(), "{cmd:?} failed");
        let so = profile_dir.join(if cfg!(target_os = "macos") { "libqwen_rt.dylib" } else { "libqwen_rt.so" });
        assert!(so.exists(), "{} missing after cargo build --lib", so.display());
        profile_dir
    })
}

fn host_triple() -> String {
    let arch = std::env::consts::ARCH;
    match std::env::consts::OS {
        "linux" => format!("{arch}-unknown-linux-gnu"),
        "macos" => format!("{arch}-apple-darwin"),
        os => panic!("no C toolchain triple known for {arch}/{os}"),
    }
}

/// Compile examples/chat.c (strict warnings as errors) and link it against libqwen_rt.so.
fn build_chat_example(out_dir: &Path) -> PathBuf {
    let lib_dir = built_library_dir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let triple = host_triple();
    let compiler = cc::Build::new()
        .target(&triple)
        .host(&triple)
        .opt_level(1)
        .cargo_metadata(false)
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .flag("-std=c11")
        .flag("-pedantic")
        .get_compiler();
    let exe = out_dir.join("chat");
    let mut cmd = compiler.to_command();
    cmd.arg("-I").arg(root.join("include")).arg(root.join("examples/chat.c")).arg("-o").arg(&exe);
    cmd.arg(format!("-L{}", lib_dir.display())).arg("-lqwen_rt");
    cmd.arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    cmd.args(["-lpthread", "-ldl", "-lm"]);
    let out = cmd.output().expect("run the C compiler");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

#[test]
fn c_chat_example_builds_and_chats() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build_chat_example(dir.path());
    let script = "Hello there!\n\nWhat can you do?\n/reset\nWhat can you do?\n/exit\nnot read\n";
    let mut child = Command::new(&exe)
        .args([":tiny:", "6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chat");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stderr.contains(&format!("qwen-rt {}", env!("CARGO_PKG_VERSION"))), "{stderr}");

    // The same conversation in-process, with the options chat.c uses (NULL model options, the model's
    // session defaults, max_new_tokens 6): the program must print exactly these answers.
    let mut m = null_mut();
    ok(unsafe { qwen_model_load(TINY.as_ptr(), null(), &mut m) });
    let mut o = session_options(m, 6, false);
    o.system = null();
    let mut s = null_mut();
    ok(unsafe { qwen_session_create(m, &o, &mut s) });
    let a1 = send(s, "Hello there!").0;
    let a2 = send(s, "What can you do?").0;
    ok(unsafe { qwen_session_reset(s) });
    let a3 = send(s, "What can you do?").0;
    assert!(!a1.is_empty() && !a2.is_empty() && !a3.is_empty());
    let expected = format!("qwen> {a1}\nqwen> {a2}\n(conversation reset)\nqwen> {a3}\n");
    assert_eq!(stdout, expected, "stderr:\n{stderr}");
    unsafe {
        ok(qwen_session_free(s));
        ok(qwen_model_free(m));
    }
}

#[test]
fn c_chat_example_reports_a_bad_model_path() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build_chat_example(dir.path());
    let out = Command::new(&exe).arg("/nonexistent/model").stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("qwen_model_load: QWEN_ERR_IO: qwen_model_load: /nonexistent/model"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Header drift: include/qwen.h (through bindgen) against the `extern "C"` surface of src/ffi.rs.

/// A Rust token, enough to read bindgen's output and src/ffi.rs.
#[derive(Debug, Clone, PartialEq)]
enum Tk {
    Ident(String),
    Punct(String),
    /// String literal content (between the quotes, escapes as written), prefix dropped.
    Str(String),
    /// Numbers and char literals.
    Other(String),
}

fn lex(src: &str) -> Vec<Tk> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < c.len() && !(c[i] == '*' && c[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if ch == '"' {
            let start = i + 1;
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            out.push(Tk::Str(c[start..i.min(c.len())].iter().collect()));
            i += 1;
        } else if ch == '\'' {
            // A char literal ('x', '\0', '\u{..}') or a lifetime ('a, 'static).
            if c.get(i + 1) == Some(&'\\') || c.get(i + 2) == Some(&'\'') {
                let start = i;
                i += 1;
                while i < c.len() && c[i] != '\'' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push(Tk::Other(c[start..i.min(c.len())].iter().collect()));
            } else {
                let start = i;
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                out.push(Tk::Other(c[start..i].iter().collect()));
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // b"..." / c"..." / br"..": the literal follows.
            if matches!(word.as_str(), "b" | "c") && c.get(i) == Some(&'"') {
                continue;
            }
            out.push(Tk::Ident(word));
        } else if ch.is_ascii_digit() {
            let start = i;
            while i < c.len()
                && (c[i].is_alphanumeric()
                    || c[i] == '_'
                    || (c[i] == '.' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit())))
            {
                i += 1;
            }
            out.push(Tk::Other(c[start..i].iter().collect()));
        } else {
            let two: String = c[i..(i + 2).min(c.len())].iter().collect();
            if matches!(two.as_str(), "::" | "->" | "=>") {
                out.push(Tk::Punct(two));
                i += 2;
            } else {
                out.push(Tk::Punct(ch.to_string()));
                i += 1;
            }
        }
    }
    out
}

fn is_p(t: Option<&Tk>, p: &str) -> bool {
    matches!(t, Some(Tk::Punct(x)) if x == p)
}

fn is_id(t: Option<&Tk>, w: &str) -> bool {
    matches!(t, Some(Tk::Ident(x)) if x == w)
}

fn ident(t: Option<&Tk>) -> Option<&str> {
    match t {
        Some(Tk::Ident(x)) => Some(x),
        _ => None,
    }
}

/// Index just past the bracket that closes the one at `open`.
fn close(t: &[Tk], open: usize) -> usize {
    let mut depth = 0i32;
    for (j, tk) in t.iter().enumerate().skip(open) {
        if let Tk::Punct(p) = tk {
            match p.as_str() {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" | "}" => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
        }
    }
    panic!("unbalanced brackets from token {open}");
}

/// Split on commas outside (), [], {}, <>.
fn split_commas(t: &[Tk]) -> Vec<&[Tk]> {
    let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
    for (j, tk) in t.iter().enumerate() {
        if let Tk::Punct(p) = tk {
            match p.as_str() {
                "(" | "[" | "{" | "<" => depth += 1,
                ")" | "]" | "}" | ">" => depth -= 1,
                "," if depth == 0 => {
                    parts.push(&t[start..j]);
                    start = j + 1;
                }
                _ => {}
            }
        }
    }
    parts.push(&t[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// A type written as tokens → a canonical string: parameter names inside fn-pointer types dropped,
/// `std::os::raw::` / `core::ffi::` / `std::option::` paths dropped, trailing commas dropped.
fn norm_type(t: &[Tk]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut j = 0;
    while j < t.len() {
        if matches!(t[j], Tk::Ident(_)) && is_p(t.get(j + 1), ":") {
            j += 2; // `name :` of a fn-pointer parameter
            continue;
        }
        parts.push(match &t[j] {
            Tk::Ident(s) | Tk::Punct(s) | Tk::Other(s) => s.clone(),
            Tk::Str(s) => format!("\"{s}\""),
        });
        j += 1;
    }
    let mut s = format!(" {} ", parts.join(" "));
    for prefix in ["std :: os :: raw ::", "core :: ffi ::", "std :: ffi ::", "std :: option ::", "core :: option ::"] {
        s = s.replace(&format!(" :: {prefix} "), " ").replace(&format!(" {prefix} "), " ");
    }
    s.replace(" , )", " )").trim().to_string()
}

/// `name: type` items of a parameter or field list → (name, normalised type).
fn named_items(t: &[Tk]) -> Vec<(String, String)> {
    split_commas(t)
        .into_iter()
        .map(|item| {
            let item = if is_id(item.first(), "pub") { &item[1..] } else { item };
            let name = ident(item.first()).unwrap_or_else(|| panic!("expected a name in {item:?}")).to_string();
            assert!(is_p(item.get(1), ":"), "expected `name: type` in {item:?}");
            (name, norm_type(&item[2..]))
        })
        .collect()
}

#[derive(Debug, Default)]
struct Api {
    /// name → (parameter types, return type)
    fns: std::collections::BTreeMap<String, (Vec<String>, String)>,
    /// name → fields (name, type); opaque structs have none
    structs: std::collections::BTreeMap<String, Vec<(String, String)>>,
    /// structs not marked #[repr(C)]
    not_repr_c: Vec<String>,
    /// name → variants (name, value)
    enums: std::collections::BTreeMap<String, Vec<(String, String)>>,
    aliases: std::collections::BTreeMap<String, String>,
    /// QWEN_* constants → literal
    consts: std::collections::BTreeMap<String, String>,
    /// bindgen layout assertions: "Size of X" / "Alignment of X" → bytes
    layout: std::collections::BTreeMap<String, usize>,
}

/// Whether the attributes right before token `i` include `#[repr(C)]`.
fn has_repr_c(t: &[Tk], i: usize) -> bool {
    let mut j = i;
    while j > 0 && is_p(t.get(j - 1), "]") {
        let mut k = j - 1;
        while k > 0 && !is_p(t.get(k), "[") {
            k -= 1;
        }
        if is_id(t.get(k + 1), "repr") && is_id(t.get(k + 3), "C") {
            return true;
        }
        j = k.saturating_sub(1); // skip `#`
    }
    false
}

/// Read the C-facing items. `rust_side`: src/ffi.rs (exported fns are `pub [unsafe] extern "C" fn`, only
/// `qwen_*` items count); else bindgen output (fns are `pub fn` inside `extern "C" { }`).
fn read_api(src: &str, rust_side: bool) -> Api {
    let t = lex(src);
    let mut api = Api::default();
    for i in 0..t.len() {
        let name = ident(t.get(i + 1)).unwrap_or("");
        let is_qwen = name.starts_with("qwen_") || name.starts_with("QWEN_");
        if !is_id(t.get(i), "pub") && !is_id(t.get(i), "fn") {
            if let Tk::Str(s) = &t[i] {
                for what in ["Size of ", "Alignment of "] {
                    if let Some(ty) = s.strip_prefix(what) {
                        let n = t[i..].iter().find_map(|x| match x {
                            Tk::Other(v) if v.ends_with("usize") => v.trim_end_matches("usize").parse::<usize>().ok(),
                            _ => None,
                        });
                        api.layout.insert(format!("{what}{ty}"), n.expect("layout number"));
                    }
                }
            }
            continue;
        }
        if is_id(t.get(i), "fn") && name.starts_with("qwen_") {
            let exported = if rust_side {
                matches!(t.get(i.wrapping_sub(1)), Some(Tk::Str(s)) if s == "C")
                    && is_id(t.get(i.wrapping_sub(2)), "extern")
            } else {
                is_id(t.get(i.wrapping_sub(1)), "pub")
            };
            if !exported {
                continue;
            }
            assert!(is_p(t.get(i + 2), "("), "fn {name}: expected (");
            let end = close(&t, i + 2);
            let params = named_items(&t[i + 3..end - 1]).into_iter().map(|(_, ty)| ty).collect();
            let ret = if is_p(t.get(end), "->") {
                let stop = (end + 1..t.len()).find(|&j| is_p(t.get(j), ";") || is_p(t.get(j), "{")).unwrap();
                norm_type(&t[end + 1..stop])
            } else {
                "()".to_string()
            };
            assert!(api.fns.insert(name.to_string(), (params, ret)).is_none(), "fn {name} twice");
            continue;
        }
        if !is_id(t.get(i), "pub") {
            continue;
        }
        let kw = ident(t.get(i + 1)).unwrap_or("");
        let name = ident(t.get(i + 2)).unwrap_or("").to_string();
        if !(name.starts_with("qwen_") || name.starts_with("QWEN_")) {
            let _ = is_qwen;
            continue;
        }
        match kw {
            "struct" if is_p(t.get(i + 3), "{") => {
                let end = close(&t, i + 3);
                let fields = named_items(&t[i + 4..end - 1]);
                // Opaque: bindgen's `_unused: [u8; 0]`, or a Rust handle with private fields only.
                let public: Vec<_> = if rust_side {
                    let body = &t[i + 4..end - 1];
                    let items = split_commas(body);
                    fields.into_iter().zip(items).filter(|(_, it)| is_id(it.first(), "pub")).map(|(f, _)| f).collect()
                } else {
                    fields.into_iter().filter(|(n, _)| !n.starts_with('_')).collect()
                };
                if !has_repr_c(&t, i) && !public.is_empty() {
                    api.not_repr_c.push(name.clone());
                }
                api.structs.insert(name, public);
            }
            "enum" if is_p(t.get(i + 3), "{") => {
                let end = close(&t, i + 3);
                let variants = split_commas(&t[i + 4..end - 1])
                    .into_iter()
                    .map(|v| {
                        let vname = ident(v.first()).expect("variant name").to_string();
                        assert!(is_p(v.get(1), "="), "{name}::{vname} needs an explicit value");
                        (vname, norm_type(&v[2..]))
                    })
                    .collect();
                api.enums.insert(name, variants);
            }
            "type" if is_p(t.get(i + 3), "=") => {
                let stop = (i + 4..t.len()).find(|&j| is_p(t.get(j), ";")).unwrap();
                api.aliases.insert(name, norm_type(&t[i + 4..stop]));
            }
            "const" => {
                let eq = (i + 3..t.len()).find(|&j| is_p(t.get(j), "=")).unwrap();
                let value = match t.get(eq + 1) {
                    Some(Tk::Str(s)) => s.trim_end_matches("\\0").to_string(),
                    Some(Tk::Other(v)) | Some(Tk::Ident(v)) => v.clone(),
                    other => panic!("const {name}: unexpected value {other:?}"),
                };
                api.consts.insert(name, value);
            }
            _ => {}
        }
    }
    api
}

/// (size, align) of the Rust type for a C struct or enum name.
fn rust_layout(name: &str) -> Option<(usize, usize)> {
    use std::mem::{align_of, size_of};
    macro_rules! l {
        ($t:ty) => {
            Some((size_of::<$t>(), align_of::<$t>()))
        };
    }
    match name {
        "qwen_model_options" => l!(qwen_model_options),
        "qwen_sampling" => l!(qwen_sampling),
        "qwen_session_options" => l!(qwen_session_options),
        "qwen_status" => l!(qwen_status),
        "qwen_backend" => l!(qwen_backend),
        "qwen_dtype" => l!(qwen_dtype),
        "qwen_finish" => l!(qwen_finish),
        _ => None,
    }
}

const LIBCLANG_HELP: &str =
    "bindgen could not load libclang, which this test needs to parse include/qwen.h. Install it:\n  \
    python3 -m venv /tmp/qwen-ci-tools/py && /tmp/qwen-ci-tools/py/bin/pip install libclang==18.1.1\n  \
    export LIBCLANG_PATH=$(echo /tmp/qwen-ci-tools/py/lib/python3*/site-packages/clang/native)\n\
    (or apt-get install libclang-dev), then rerun.";

/// bindgen's view of include/qwen.h, as Rust source.
fn bindgen_header() -> String {
    let header = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/qwen.h");
    let mut builder = bindgen::Builder::default()
        .header(header.to_str().unwrap())
        .allowlist_item("(qwen|QWEN)_.*")
        .rustified_enum("qwen_.*")
        .formatter(bindgen::Formatter::None)
        .clang_arg("-std=c11");
    // A pip libclang has no builtin headers (stddef.h): borrow the C compiler's.
    if let Some(dir) = c_compiler_include_dir() {
        builder = builder.clang_arg(format!("-isystem{}", dir.display()));
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate())) {
        Ok(Ok(b)) => b.to_string(),
        Ok(Err(e)) => panic!("bindgen failed on {}: {e}", header.display()),
        Err(_) => panic!("{LIBCLANG_HELP}\n(LIBCLANG_PATH={:?})", std::env::var("LIBCLANG_PATH").ok()),
    }
}

/// `cc -print-file-name=include`: the compiler's own headers (stddef.h).
fn c_compiler_include_dir() -> Option<PathBuf> {
    let triple = host_triple();
    let compiler =
        cc::Build::new().target(&triple).host(&triple).opt_level(0).cargo_metadata(false).try_get_compiler().ok()?;
    let out = Command::new(compiler.path()).arg("-print-file-name=include").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.join("stddef.h").exists().then_some(dir)
}

#[test]
fn header_matches_the_rust_exports() {
    let c = read_api(&bindgen_header(), false);
    let ffi_src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi.rs")).unwrap();
    let r = read_api(&ffi_src, true);
    let mut problems = Vec::new();
    // Functions, both ways.
    for (name, (params, ret)) in &c.fns {
        match r.fns.get(name) {
            None => problems.push(format!("{name}: declared in qwen.h, not exported by src/ffi.rs")),
            Some((rp, rr)) => {
                if rp != params {
                    problems.push(format!(
                        "{name}: parameters differ:\n    qwen.h: ({})\n    ffi.rs: ({})",
                        params.join(", "),
                        rp.join(", ")
                    ));
                }
                if rr != ret {
                    problems.push(format!("{name}: return type differs: qwen.h {ret}, ffi.rs {rr}"));
                }
            }
        }
    }
    for name in r.fns.keys().filter(|n| !c.fns.contains_key(*n)) {
        problems.push(format!("{name}: exported by src/ffi.rs, not declared in qwen.h"));
    }
    // Structs: fields by name and type, in order; opaque handles stay opaque; layout as bindgen computed.
    for (name, fields) in &c.structs {
        match r.structs.get(name) {
            None => problems.push(format!("struct {name}: in qwen.h, not in src/ffi.rs")),
            Some(rf) if rf != fields => {
                problems.push(format!("struct {name}: fields differ:\n    qwen.h: {fields:?}\n    ffi.rs: {rf:?}"))
            }
            Some(_) => {}
        }
        if !fields.is_empty() {
            match rust_layout(name) {
                None => problems.push(format!("struct {name}: add it to rust_layout() in tests/c_abi.rs")),
                Some((size, align)) => {
                    let (cs, ca) =
                        (c.layout.get(&format!("Size of {name}")), c.layout.get(&format!("Alignment of {name}")));
                    if cs != Some(&size) || ca != Some(&align) {
                        problems.push(format!("struct {name}: C size/align {cs:?}/{ca:?}, Rust {size}/{align}"));
                    }
                }
            }
        }
    }
    for name in r.structs.keys().filter(|n| !c.structs.contains_key(*n)) {
        problems.push(format!("struct {name}: in src/ffi.rs, not in qwen.h"));
    }
    for name in &r.not_repr_c {
        problems.push(format!("struct {name}: not #[repr(C)] in src/ffi.rs"));
    }
    // Enums: variants and values; each as big as a C enum.
    for (name, variants) in &c.enums {
        match r.enums.get(name) {
            None => problems.push(format!("enum {name}: in qwen.h, not in src/ffi.rs")),
            Some(rv) if rv != variants => {
                problems.push(format!("enum {name}: variants differ:\n    qwen.h: {variants:?}\n    ffi.rs: {rv:?}"))
            }
            Some(_) => {}
        }
        match rust_layout(name) {
            Some((4, 4)) => {}
            other => problems
                .push(format!("enum {name}: Rust layout {other:?}, C enums are 4 bytes (add it to rust_layout())")),
        }
    }
    for name in r.enums.keys().filter(|n| !c.enums.contains_key(*n)) {
        problems.push(format!("enum {name}: in src/ffi.rs, not in qwen.h"));
    }
    if c.aliases != r.aliases {
        problems.push(format!("typedefs differ:\n    qwen.h: {:?}\n    ffi.rs: {:?}", c.aliases, r.aliases));
    }
    if c.consts != r.consts {
        problems.push(format!("macros/constants differ:\n    qwen.h: {:?}\n    ffi.rs: {:?}", c.consts, r.consts));
    }
    assert!(problems.is_empty(), "include/qwen.h and src/ffi.rs disagree:\n  {}", problems.join("\n  "));
    // The parsers must have found the surface (a parser that finds nothing would pass vacuously).
    assert!(c.fns.len() >= 10 && c.structs.len() >= 5 && c.enums.len() >= 4, "bindgen output not understood: {c:#?}");
}

/// The drift checker itself catches drift: a header with one changed parameter type, a missing
/// function, an extra field and a changed enum value is reported.
#[test]
fn header_drift_checker_detects_changes() {
    let real = bindgen_header();
    let c = read_api(&real, false);
    let ffi_src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi.rs")).unwrap();
    let tampered = ffi_src
        .replace("parse_special: i32,", "parse_special: u32,")
        .replace("pub extern \"C\" fn qwen_version()", "pub extern \"C\" fn qwen_version_renamed()")
        .replace("QWEN_ERR_BUSY = 9,", "QWEN_ERR_BUSY = 11,")
        .replace("    pub threads: u32,\n}", "    pub threads: u32,\n    pub extra: u32,\n}");
    assert_ne!(tampered, ffi_src);
    let r = read_api(&tampered, true);
    assert_ne!(c.fns["qwen_tokenize"], r.fns["qwen_tokenize"]);
    assert!(!r.fns.contains_key("qwen_version") && r.fns.contains_key("qwen_version_renamed"));
    assert_ne!(c.enums["qwen_status"], r.enums["qwen_status"]);
    assert_ne!(c.structs["qwen_model_options"], r.structs["qwen_model_options"]);
    // And the untampered source agrees on those items.
    let r = read_api(&ffi_src, true);
    assert_eq!(c.fns["qwen_tokenize"], r.fns["qwen_tokenize"]);
    assert_eq!(c.structs["qwen_model_options"], r.structs["qwen_model_options"]);
}
