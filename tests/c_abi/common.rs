//! Helpers every C ABI suite uses: status checks, the tiny model, sessions, sending, strings.
use qwen_rt::ffi::*;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::null_mut;

use qwen_status::*;

pub const TINY: &CStr = c":tiny:";

pub fn last_error() -> String {
    unsafe { CStr::from_ptr(qwen_last_error()) }.to_string_lossy().into_owned()
}

#[track_caller]
pub fn ok(st: qwen_status) {
    assert_eq!(st, QWEN_OK, "expected QWEN_OK: {}", last_error());
}

/// Assert `st == want` and that the thread's message mentions `needle`.
#[track_caller]
pub fn expect_err(st: qwen_status, want: qwen_status, needle: &str) {
    let msg = last_error();
    assert_eq!(st, want, "status (message: {msg})");
    assert!(msg.contains(needle), "message {msg:?} should mention {needle:?}");
}

/// The tiny model on the CPU with a small KV cache.
pub fn tiny_model(max_seq_len: u32) -> *mut qwen_model {
    let mut o = qwen_model_options_default();
    o.backend = qwen_backend::QWEN_BACKEND_CPU as i32;
    o.max_seq_len = max_seq_len;
    let mut m = null_mut();
    ok(unsafe { qwen_model_load(TINY.as_ptr(), &o, &mut m) });
    assert!(!m.is_null());
    m
}

pub fn session_options(m: *const qwen_model, max_new_tokens: u32, greedy: bool) -> qwen_session_options {
    let mut o: qwen_session_options = unsafe { std::mem::zeroed() };
    ok(unsafe { qwen_session_options_default(m, &mut o) });
    o.max_new_tokens = max_new_tokens;
    if greedy {
        o.sampling.do_sample = 0;
    }
    o
}

pub fn session(m: *const qwen_model, max_new_tokens: u32, greedy: bool) -> *mut qwen_session {
    let o = session_options(m, max_new_tokens, greedy);
    let mut s = null_mut();
    ok(unsafe { qwen_session_create(m, &o, &mut s) });
    assert!(!s.is_null());
    s
}

/// Stream callback appending each piece to the `String` behind `user_data`.
pub unsafe extern "C" fn collect(piece: *const c_char, user_data: *mut c_void) -> c_int {
    let out = &mut *(user_data as *mut String);
    let p = CStr::from_ptr(piece).to_str().expect("pieces are UTF-8");
    assert!(!p.is_empty(), "the callback never receives an empty piece");
    out.push_str(p);
    1
}

/// Take a library string, free it, return its content.
pub fn take_string(p: *mut c_char) -> String {
    assert!(!p.is_null());
    let s = unsafe { CStr::from_ptr(p) }.to_str().expect("UTF-8").to_string();
    ok(unsafe { qwen_free_string(p) });
    s
}

/// Send `msg`; returns (streamed text, returned answer, finish).
pub fn send(s: *mut qwen_session, msg: &str) -> (String, String, qwen_finish) {
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

pub fn tokenize(m: *const qwen_model, text: &CStr, special: bool) -> Vec<u32> {
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

/// The host's target triple, for the `cc` crate outside a build script.
pub fn host_triple() -> String {
    let arch = std::env::consts::ARCH;
    match std::env::consts::OS {
        "linux" => format!("{arch}-unknown-linux-gnu"),
        "macos" => format!("{arch}-apple-darwin"),
        os => panic!("no C toolchain triple known for {arch}/{os}"),
    }
}
