//! Every entry point called from Rust: error paths, streaming, cancellation, /reset, determinism,
//! threads.
use super::common::*;
use qwen_rt::ffi::*;
use qwen_status::*;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::ptr::{null, null_mut};
use std::sync::mpsc;

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
