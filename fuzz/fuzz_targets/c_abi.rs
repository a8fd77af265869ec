//! The C ABI (`include/qwen.h`) with arbitrary arguments, on a small random-weight model loaded once
//! (`model_dir`: hidden size 8, one layer, the real vocabulary; CPU, max_seq_len 32). The input is a
//! list of operations (first byte of each picks it).
//!
//! Checked against the header's promises: the status of every call is what the documented argument
//! rules give (e.g. session options are accepted exactly when temperature is finite and >= 0, top_p in
//! (0, 1], repetition_penalty finite and > 0, max_new_tokens and max_window_size >= 1, system valid
//! UTF-8); a failed call leaves a message starting with its name and its out-pointers NULL; a
//! successful one leaves qwen_last_error() empty; tokenize → detokenize gives back NFC(text); every
//! buffer frees once (a second free, or a foreign pointer, is QWEN_ERR_INVALID_HANDLE).
#![no_main]
use libfuzzer_sys::fuzz_target;
use qwen_rt::ffi::*;
use qwen_rt::synth::{synth_model, SynthOptions, SynthPreset};
use qwen_rt::tokenizer::VOCAB_LEN;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;

use qwen_status::*;

/// The header promises out-pointers are NULL after any failure. qwen_session_send / _generate /
/// _generate_tokens broke it on argument errors found before the output was cleared (found by this
/// target; fixed in src/ffi.rs, regression test `out_pointers_cleared_on_argument_errors` in
/// tests/fuzz_regressions.rs).
const GENERATION_OUT_POINTERS_CLEARED: bool = true;

struct Model(*mut qwen_model);
// SAFETY: the C ABI allows a model to be used from any thread.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

/// The model the target runs: the tiny preset shrunk to hidden size 8, one layer (the real
/// vocabulary, so every id the tokenizer makes is valid). The C ABI's rules do not depend on the
/// model's size; its forward pass does: the lm_head over 151,936 ids at hidden 64 was most of the
/// target's time (FUZZING.md), at 8 it is an eighth. Written once into QWEN_FUZZ_WORKDIR (set and
/// removed by tools/fuzz_smoke.sh), else tmpfs, else the temp dir.
fn model_dir() -> std::path::PathBuf {
    let base = match std::env::var_os("QWEN_FUZZ_WORKDIR") {
        Some(d) => std::path::PathBuf::from(d),
        None if std::path::Path::new("/dev/shm").is_dir() => std::path::PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    let dir = base.join(format!("qwen-fuzz-c_abi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let p = SynthPreset {
        name: "fuzz".into(),
        hidden_size: 8,
        num_heads: 2,
        num_layers: 1,
        intermediate_size: 16,
        seq_length: 32,
        ..SynthPreset::tiny()
    };
    synth_model(&dir, &p, 0, &SynthOptions { single_file: true, ..Default::default() }).expect("synth the fuzz model");
    dir
}

fn model() -> *mut qwen_model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let opts = qwen_model_options { backend: 1, dtype: 0, max_seq_len: 32, threads: 1, quant: 0 };
        let mut m = std::ptr::null_mut();
        let dir = CString::new(model_dir().into_os_string().into_encoded_bytes()).expect("no NUL in a temp path");
        // SAFETY: valid arguments.
        let s = unsafe { qwen_model_load(dir.as_ptr(), &opts, &mut m) };
        assert_eq!(s, QWEN_OK, "{}", last_error());
        Model(m)
    })
    .0
}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated.
    unsafe { CStr::from_ptr(qwen_last_error()) }.to_string_lossy().into_owned()
}

/// The status of a call named `name`: OK ⇔ `ok`, and the last error agrees.
fn expect(name: &str, s: qwen_status, ok: bool) {
    let e = last_error();
    if ok {
        assert_eq!(s, QWEN_OK, "{name} failed where the header says it succeeds: {e}");
        assert!(e.is_empty(), "{name} succeeded but left the error {e:?}");
    } else {
        assert_ne!(s, QWEN_OK, "{name} succeeded where the header says it fails");
        assert!(e.starts_with(&format!("{name}: ")), "{name} failed with a message not naming it: {e:?}");
    }
}

/// Bytes of the input, consumed front to back.
struct Input<'a>(&'a [u8]);
impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u32(&mut self) -> u32 {
        let b = self.bytes(4);
        let mut a = [0u8; 4];
        a[..b.len()].copy_from_slice(b);
        u32::from_le_bytes(a)
    }
    fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
    /// A C string: up to `len` bytes of input, cut at the first NUL.
    fn cstring(&mut self) -> CString {
        let n = self.byte().unwrap_or(0) as usize;
        let b = self.bytes(n);
        let b = b.split(|&c| c == 0).next().unwrap_or(b);
        CString::new(b).unwrap()
    }
}

unsafe fn tokenize(m: *mut qwen_model, text: &CString, special: i32) {
    let (mut ids, mut n) = (0x1 as *mut u32, 99usize); // garbage: must be cleared
    let s = qwen_tokenize(m, text.as_ptr(), special, &mut ids, &mut n);
    let utf8 = text.to_str().ok();
    expect("qwen_tokenize", s, utf8.is_some());
    if s != QWEN_OK {
        assert!(ids.is_null() && n == 0, "out-pointers not cleared on failure");
        return;
    }
    assert_eq!(ids.is_null(), n == 0);
    let slice: &[u32] = if n == 0 { &[] } else { std::slice::from_raw_parts(ids, n) };
    let (mut out, mut len) = (std::ptr::null_mut::<c_char>(), 0usize);
    let s = qwen_detokenize(m, slice.as_ptr(), n, &mut out, &mut len);
    expect("qwen_detokenize", s, true);
    let back = std::slice::from_raw_parts(out as *const u8, len);
    let want: String = utf8.unwrap().nfc().collect();
    assert_eq!(back, want.as_bytes(), "detokenize(tokenize(text)) != NFC(text)");
    expect("qwen_free_string", qwen_free_string(out), true);
    expect("qwen_free_string", qwen_free_string(out), false);
    if n > 0 {
        expect("qwen_free_tokens", qwen_free_tokens(ids, n + 1), false); // wrong length: nothing freed
    }
    expect("qwen_free_tokens", qwen_free_tokens(ids, n), true);
    if n > 0 {
        expect("qwen_free_tokens", qwen_free_tokens(ids, n), false);
    }
}

unsafe fn detokenize(m: *mut qwen_model, inp: &mut Input) {
    let k = inp.byte().unwrap_or(0) as usize % 32;
    let ids: Vec<u32> = (0..k).map(|_| inp.u32() % (VOCAB_LEN + 64)).collect();
    let valid = ids.iter().all(|&i| i < VOCAB_LEN);
    let mut out = 0x1 as *mut c_char;
    let with_len = inp.byte().unwrap_or(0) & 1 == 0;
    let mut len = 77usize;
    let lp = if with_len { &mut len as *mut usize } else { std::ptr::null_mut() };
    let s = qwen_detokenize(m, if k == 0 { std::ptr::null() } else { ids.as_ptr() }, k, &mut out, lp);
    expect("qwen_detokenize", s, valid);
    if s != QWEN_OK {
        assert!(out.is_null() && (!with_len || len == 0));
        return;
    }
    let c = CStr::from_ptr(out).to_bytes().len();
    if with_len {
        assert!(c <= len);
    }
    expect("qwen_free_string", qwen_free_string(out), true);
}

/// Options from the input; returns them and whether the header says qwen_session_create accepts them.
fn session_options(inp: &mut Input, system: &CString) -> (qwen_session_options, bool) {
    let sampling = qwen_sampling {
        do_sample: inp.u32() as i32,
        temperature: inp.f32(),
        top_k: inp.u32(),
        top_p: inp.f32(),
        repetition_penalty: inp.f32(),
        seed: inp.u32() as u64,
    };
    let o = qwen_session_options {
        system: if inp.byte().unwrap_or(0) & 1 == 0 { std::ptr::null() } else { system.as_ptr() },
        sampling,
        max_new_tokens: inp.u32() % 4,
        max_window_size: inp.u32() % 64,
    };
    let s = &o.sampling;
    let ok = s.temperature.is_finite()
        && s.temperature >= 0.0
        && s.top_p > 0.0
        && s.top_p <= 1.0
        && s.repetition_penalty.is_finite()
        && s.repetition_penalty > 0.0
        && o.max_new_tokens >= 1
        && o.max_window_size >= 1
        && (o.system.is_null() || system.to_str().is_ok());
    (o, ok)
}

extern "C" fn count_pieces(piece: *const c_char, user: *mut c_void) -> i32 {
    // SAFETY: the library passes a NUL-terminated string; user is our counter.
    unsafe {
        assert!(!CStr::from_ptr(piece).to_bytes().is_empty(), "empty piece passed to the callback");
        *(user as *mut usize) += 1;
    }
    1
}

unsafe fn session(m: *mut qwen_model, inp: &mut Input) {
    let system = inp.cstring();
    let (o, ok) = session_options(inp, &system);
    let mut sess = 0x1 as *mut qwen_session;
    let s = qwen_session_create(m, &o, &mut sess);
    expect("qwen_session_create", s, ok);
    if s != QWEN_OK {
        assert!(sess.is_null());
        return;
    }
    let action = inp.byte().unwrap_or(0);
    match action % 4 {
        0 => expect("qwen_session_reset", qwen_session_reset(sess), true),
        1 => {
            // One short message (at most 1-3 new tokens on the tiny model): a forward pass.
            let msg = inp.cstring();
            let mut pieces = 0usize;
            let (mut ans, mut fin) = (0x1 as *mut c_char, qwen_finish::QWEN_FINISH_STOP);
            let s = qwen_session_send(
                sess,
                msg.as_ptr(),
                Some(count_pieces),
                &mut pieces as *mut usize as *mut c_void,
                &mut ans,
                &mut fin,
            );
            // Invalid UTF-8 fails; valid text may still not fit in 32 tokens (QWEN_ERR_CONTEXT_FULL).
            if msg.to_str().is_err() {
                expect("qwen_session_send", s, false);
            }
            if s == QWEN_OK {
                expect("qwen_free_string", qwen_free_string(ans), true);
            } else {
                expect("qwen_session_send", s, false);
                assert!(ans.is_null() || !GENERATION_OUT_POINTERS_CLEARED, "out_answer not cleared on failure");
            }
        }
        2 => {
            let k = inp.byte().unwrap_or(0) as usize % 4;
            let ids: Vec<u32> = (0..k).map(|_| inp.u32() % (VOCAB_LEN + 200)).collect();
            let valid = k > 0 && ids.iter().all(|&i| (i as usize) < 151936);
            let mut out = 0x1 as *mut c_char;
            let s = qwen_session_generate_tokens(
                sess,
                if k == 0 { std::ptr::null() } else { ids.as_ptr() },
                k,
                None,
                std::ptr::null_mut(),
                &mut out,
                std::ptr::null_mut(),
            );
            expect("qwen_session_generate_tokens", s, valid);
            if s == QWEN_OK {
                expect("qwen_free_string", qwen_free_string(out), true);
            } else {
                assert!(out.is_null() || !GENERATION_OUT_POINTERS_CLEARED, "out_text not cleared on failure");
            }
        }
        _ => {}
    }
    expect("qwen_session_free", qwen_session_free(sess), true);
    expect("qwen_session_free", qwen_session_free(sess), false);
}

// Build the tokenizer / load the model before fuzzing starts: under ASan that takes seconds, and inside
// the first input it would count against -timeout.
fuzz_target!(init: { model(); }, |data: &[u8]| {
    let m = model();
    let mut inp = Input(data);
    let mut ops = 0;
    while let Some(op) = inp.byte() {
        ops += 1;
        if ops > 16 {
            break;
        }
        // SAFETY: every pointer passed is valid, NULL, or a value the library must reject by its
        // registry without dereferencing it (the header's promise being tested).
        unsafe {
            match op % 6 {
                0 => {
                    let t = inp.cstring();
                    let special = inp.byte().unwrap_or(0) as i32 - 128;
                    tokenize(m, &t, special);
                }
                1 => detokenize(m, &mut inp),
                2 => session(m, &mut inp),
                3 => {
                    // Foreign pointers: never dereferenced, always QWEN_ERR_INVALID_HANDLE.
                    let p = (inp.u32() as usize) << (inp.byte().unwrap_or(0) % 24);
                    if p != 0 && p != m as usize {
                        expect("qwen_free_tokens", qwen_free_tokens(p as *mut u32, inp.u32() as usize), false);
                        expect("qwen_free_string", qwen_free_string(p as *mut c_char), false);
                        expect("qwen_session_free", qwen_session_free(p as *mut qwen_session), false);
                        expect("qwen_session_reset", qwen_session_reset(p as *mut qwen_session), false);
                        expect("qwen_model_free", qwen_model_free(p as *mut qwen_model), false);
                        let mut ids = std::ptr::null_mut();
                        let mut n = 0;
                        let s = qwen_tokenize(p as *const qwen_model, c"x".as_ptr(), 0, &mut ids, &mut n);
                        expect("qwen_tokenize", s, false);
                    }
                }
                4 => {
                    let st = inp.u32() as i32;
                    let name = CStr::from_ptr(qwen_status_name(st)).to_str().unwrap();
                    assert!(name.starts_with("QWEN_"), "{name}");
                    let mut be = std::ptr::null();
                    expect("qwen_model_backend", qwen_model_backend(m, &mut be), true);
                    assert_eq!(CStr::from_ptr(be).to_str().unwrap(), "cpu");
                }
                _ => {
                    // NULL arguments where pointers are required.
                    let mut n = 0usize;
                    let mut ids = std::ptr::null_mut();
                    expect("qwen_tokenize", qwen_tokenize(m, std::ptr::null(), 0, &mut ids, &mut n), false);
                    expect("qwen_tokenize", qwen_tokenize(m, c"a".as_ptr(), 0, std::ptr::null_mut(), &mut n), false);
                    let mut out = std::ptr::null_mut();
                    let s = qwen_detokenize(m, std::ptr::null(), 1 + inp.byte().unwrap_or(0) as usize, &mut out, &mut n);
                    expect("qwen_detokenize", s, false);
                    let mut opts = std::mem::zeroed::<qwen_session_options>();
                    expect("qwen_session_options_default", qwen_session_options_default(m, &mut opts), true);
                    assert!(opts.max_new_tokens >= 1 && opts.max_window_size >= 1);
                    expect(
                        "qwen_session_options_default",
                        qwen_session_options_default(std::ptr::null(), &mut opts),
                        false,
                    );
                }
            }
        }
    }
});
