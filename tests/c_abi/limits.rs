//! The promises of include/qwen.h that hostile callers found broken (issue 17): out-pointers cleared
//! before any argument is checked, no stale message after QWEN_OK, a malformed config.json is
//! QWEN_ERR_MODEL, messages that name the C ABI's own fields, and the LIMITS section (threads,
//! max_new_tokens, max_window_size, sessions per model, input sizes).
use super::common::*;
use qwen_rt::ffi::*;
use qwen_status::*;
use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr::{null, null_mut};

#[test]
fn out_pointers_are_cleared_before_arguments_are_checked() {
    let m = tiny_model(32);
    let s = session(m, 2, true);
    let garbage = std::ptr::dangling_mut::<c_char>();
    let dirty = qwen_finish::QWEN_FINISH_CANCELLED;
    let bad = [0xffu8, 0];
    unsafe {
        // Each generating call, failing on its first argument check.
        let (mut out, mut fin) = (garbage, dirty);
        let st = qwen_session_generate_tokens(s, null(), 0, None, null_mut(), &mut out, &mut fin);
        assert_eq!(st, QWEN_ERR_INVALID_ARG);
        assert!(out.is_null() && fin == qwen_finish::QWEN_FINISH_STOP, "{out:?} {fin:?}");
        let (mut out, mut fin) = (garbage, dirty);
        let st = qwen_session_send(s, bad.as_ptr() as *const c_char, None, null_mut(), &mut out, &mut fin);
        assert_eq!(st, QWEN_ERR_INVALID_UTF8);
        assert!(out.is_null() && fin == qwen_finish::QWEN_FINISH_STOP, "{out:?} {fin:?}");
        let (mut out, mut fin) = (garbage, dirty);
        let st = qwen_session_generate(s, null(), None, null_mut(), &mut out, &mut fin);
        assert_eq!(st, QWEN_ERR_NULL_ARG);
        assert!(out.is_null() && fin == qwen_finish::QWEN_FINISH_STOP, "{out:?} {fin:?}");
        // A NULL session: the outputs are cleared too.
        let (mut out, mut fin) = (garbage, dirty);
        let msg = c"hi";
        let st = qwen_session_send(null_mut(), msg.as_ptr(), None, null_mut(), &mut out, &mut fin);
        assert_eq!(st, QWEN_ERR_NULL_ARG);
        assert!(out.is_null() && fin == qwen_finish::QWEN_FINISH_STOP, "{out:?} {fin:?}");
        // qwen_tokenize with a NULL out_tokens still clears *out_len; qwen_detokenize with a NULL out_text
        // clears *out_len.
        let mut n = usize::MAX;
        assert_eq!(qwen_tokenize(m, c"x".as_ptr(), 0, null_mut(), &mut n), QWEN_ERR_NULL_ARG);
        assert_eq!(n, 0);
        let mut n = usize::MAX;
        assert_eq!(qwen_detokenize(m, null(), 0, null_mut(), &mut n), QWEN_ERR_NULL_ARG);
        assert_eq!(n, 0);
        ok(qwen_session_free(s));
        ok(qwen_model_free(m));
    }
}

/// A stream callback that makes a failing qwen_* call (tokenize with a NULL model) on every piece.
unsafe extern "C" fn fail_inside(_piece: *const c_char, user_data: *mut c_void) -> c_int {
    let (mut p, mut n) = (null_mut(), 0usize);
    let st = qwen_tokenize(null(), c"x".as_ptr(), 0, &mut p, &mut n);
    *(user_data as *mut bool) |= st == QWEN_ERR_NULL_ARG && !last_error().is_empty();
    1
}

#[test]
fn no_stale_message_after_qwen_ok() {
    let m = tiny_model(64);
    let s = session(m, 3, true);
    let mut nested_failed = false;
    let ids = [100u32, 101, 102];
    let mut text = null_mut();
    unsafe {
        ok(qwen_session_generate_tokens(
            s,
            ids.as_ptr(),
            ids.len(),
            Some(fail_inside),
            &mut nested_failed as *mut bool as *mut c_void,
            &mut text,
            null_mut(),
        ));
    }
    let answer = take_string(text);
    assert!(nested_failed, "the callback ran a failing call (answer {answer:?})");
    assert_eq!(last_error(), "", "QWEN_OK must leave no message of a nested call");
    unsafe {
        ok(qwen_session_free(s));
        ok(qwen_model_free(m));
    }
}

#[test]
fn a_binary_config_is_a_malformed_model_not_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), b"\xff\xfe\x00\x01binary\x80").unwrap();
    let path = CString::new(dir.path().to_str().unwrap()).unwrap();
    let mut o = qwen_model_options_default();
    o.backend = qwen_backend::QWEN_BACKEND_CPU as i32;
    let mut m = null_mut();
    expect_err(unsafe { qwen_model_load(path.as_ptr(), &o, &mut m) }, QWEN_ERR_MODEL, "config.json");
    assert!(m.is_null());
    // A missing directory stays an I/O error.
    let missing = CString::new(dir.path().join("none").to_str().unwrap()).unwrap();
    expect_err(unsafe { qwen_model_load(missing.as_ptr(), &o, &mut m) }, QWEN_ERR_IO, "none");
}

#[test]
fn messages_name_the_c_abis_fields_not_cli_flags() {
    let mut o = qwen_model_options_default();
    o.backend = qwen_backend::QWEN_BACKEND_CPU as i32;
    let mut m = null_mut();
    o.threads = 100_000;
    expect_err(unsafe { qwen_model_load(TINY.as_ptr(), &o, &mut m) }, QWEN_ERR_INVALID_ARG, "options.threads");
    o.threads = 0;
    o.max_seq_len = u32::MAX;
    expect_err(unsafe { qwen_model_load(TINY.as_ptr(), &o, &mut m) }, QWEN_ERR_INVALID_ARG, "options.max_seq_len");
    let m = tiny_model(24);
    let s = session(m, 2, true);
    let ids: Vec<u32> = (100..130).collect();
    let st =
        unsafe { qwen_session_generate_tokens(s, ids.as_ptr(), ids.len(), None, null_mut(), null_mut(), null_mut()) };
    expect_err(st, QWEN_ERR_CONTEXT_FULL, "qwen_model_options.max_seq_len");
    assert!(!last_error().contains("--"), "a CLI flag in a C-ABI message: {}", last_error());
    // The session options' rule is the library's (SessionOptions::validate), named as the C fields.
    let mut so = session_options(m, 2, true);
    so.max_window_size = 0;
    let mut s2 = null_mut();
    expect_err(unsafe { qwen_session_create(m, &so, &mut s2) }, QWEN_ERR_INVALID_ARG, "options.max_window_size");
    so = session_options(m, 1 << 20, true);
    ok(unsafe { qwen_session_create(m, &so, &mut s2) });
    so.max_new_tokens = (1 << 20) + 1;
    let mut s3 = null_mut();
    expect_err(unsafe { qwen_session_create(m, &so, &mut s3) }, QWEN_ERR_INVALID_ARG, "options.max_new_tokens");
    assert!(s3.is_null());
    unsafe {
        ok(qwen_session_free(s));
        ok(qwen_session_free(s2));
        ok(qwen_model_free(m));
    }
}

#[test]
fn sessions_per_model_are_limited() {
    let m = tiny_model(16);
    let limit = QWEN_MAX_SESSIONS_PER_MODEL as usize;
    let mut live: Vec<*mut qwen_session> = (0..limit).map(|_| session(m, 1, true)).collect();
    let mut extra = null_mut();
    expect_err(unsafe { qwen_session_create(m, null(), &mut extra) }, QWEN_ERR_BUSY, "QWEN_MAX_SESSIONS_PER_MODEL");
    assert!(extra.is_null());
    // Another model has its own count; freeing one session makes room again.
    let m2 = tiny_model(16);
    let s2 = session(m2, 1, true);
    ok(unsafe { qwen_session_free(live.pop().unwrap()) });
    live.push(session(m, 1, true));
    for s in live.into_iter().chain([s2]) {
        ok(unsafe { qwen_session_free(s) });
    }
    unsafe {
        ok(qwen_model_free(m));
        ok(qwen_model_free(m2));
    }
}

#[test]
fn input_sizes_are_limited() {
    let m = tiny_model(16);
    let big = CString::new(vec![b'a'; QWEN_MAX_INPUT_BYTES as usize + 1]).unwrap();
    let (mut p, mut n) = (null_mut(), 0usize);
    let st = unsafe { qwen_tokenize(m, big.as_ptr(), 0, &mut p, &mut n) };
    expect_err(st, QWEN_ERR_INVALID_ARG, "QWEN_MAX_INPUT_BYTES");
    assert!(p.is_null() && n == 0);
    let s = session(m, 1, true);
    let st = unsafe { qwen_session_send(s, big.as_ptr(), None, null_mut(), null_mut(), null_mut()) };
    expect_err(st, QWEN_ERR_INVALID_ARG, "`message`");
    // n_tokens beyond the limit is refused before the array is read (one id is all there is here).
    let one = [1u32];
    let mut text = null_mut();
    let too_many = QWEN_MAX_INPUT_TOKENS as usize + 1;
    let st = unsafe { qwen_detokenize(m, one.as_ptr(), too_many, &mut text, null_mut()) };
    expect_err(st, QWEN_ERR_INVALID_ARG, "QWEN_MAX_INPUT_TOKENS");
    let st =
        unsafe { qwen_session_generate_tokens(s, one.as_ptr(), too_many, None, null_mut(), &mut text, null_mut()) };
    expect_err(st, QWEN_ERR_INVALID_ARG, "QWEN_MAX_INPUT_TOKENS");
    // A system prompt (read at session creation, not tokenized there) of exactly the limit is accepted.
    let at = CString::new(vec![b'a'; QWEN_MAX_INPUT_BYTES as usize]).unwrap();
    let mut so = session_options(m, 1, true);
    so.system = at.as_ptr();
    let mut s2 = null_mut();
    ok(unsafe { qwen_session_create(m, &so, &mut s2) });
    so.system = big.as_ptr();
    let mut s3 = null_mut();
    expect_err(unsafe { qwen_session_create(m, &so, &mut s3) }, QWEN_ERR_INVALID_ARG, "options.system");
    unsafe {
        ok(qwen_session_free(s2));
        ok(qwen_session_free(s));
        ok(qwen_model_free(m));
    }
}
