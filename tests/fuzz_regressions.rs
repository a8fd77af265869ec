//! Inputs found by the cargo-fuzz targets in fuzz/ (FUZZING.md), replayed as plain tests.
use qwen_rt::ffi::*;
use std::ffi::c_char;

/// fuzz target `c_abi` (2026-12-04): `qwen_session_generate_tokens` with `n_tokens` 0 returned
/// QWEN_ERR_INVALID_ARG but left `*out_text` as the caller had it, against the header's "Out-pointers
/// are set to NULL / 0 at entry". The same holds for qwen_session_send / qwen_session_generate with an
/// invalid `message` / `prompt` and for `*out_finish`. Fixed: every out-pointer is cleared before any
/// argument is checked (src/ffi.rs).
#[test]
fn out_pointers_cleared_on_argument_errors() {
    unsafe {
        let opts = qwen_model_options { backend: 1, dtype: 0, max_seq_len: 32, threads: 1, quant: 0 };
        let mut m = std::ptr::null_mut();
        assert_eq!(qwen_model_load(c":tiny:".as_ptr(), &opts, &mut m), qwen_status::QWEN_OK);
        let mut s = std::ptr::null_mut();
        assert_eq!(qwen_session_create(m, std::ptr::null(), &mut s), qwen_status::QWEN_OK);
        let garbage = std::ptr::dangling_mut::<c_char>();
        let (mut out, mut fin) = (garbage, qwen_finish::QWEN_FINISH_CANCELLED);
        let st = qwen_session_generate_tokens(s, std::ptr::null(), 0, None, std::ptr::null_mut(), &mut out, &mut fin);
        assert_eq!(st, qwen_status::QWEN_ERR_INVALID_ARG);
        assert!(out.is_null(), "*out_text left as {out:?}");
        let bad = [0xffu8, 0];
        out = garbage;
        let st = qwen_session_send(s, bad.as_ptr() as *const c_char, None, std::ptr::null_mut(), &mut out, &mut fin);
        assert_eq!(st, qwen_status::QWEN_ERR_INVALID_UTF8);
        assert!(out.is_null(), "*out_answer left as {out:?}");
        out = garbage;
        let st = qwen_session_generate(s, std::ptr::null(), None, std::ptr::null_mut(), &mut out, &mut fin);
        assert_eq!(st, qwen_status::QWEN_ERR_NULL_ARG);
        assert!(out.is_null(), "*out_text left as {out:?}");
        qwen_session_free(s);
        qwen_model_free(m);
    }
}
