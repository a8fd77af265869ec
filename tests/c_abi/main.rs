//! The C ABI (src/ffi.rs, include/qwen.h), one suite per file:
//! - `calls`: every error path through the `extern "C"` functions called from Rust (NULL, invalid UTF-8,
//!   freed, double-freed, foreign and wrong-kind pointers, bad options, a prompt longer than the context, a
//!   busy session), streaming, cancellation, /reset, determinism, one model shared by 3 sessions on 3 threads;
//! - `example`: examples/chat.c compiled with the `cc` crate, linked against libqwen_rt.so and run on the
//!   built-in tiny model with a scripted conversation (its output must equal the same conversation run
//!   in-process);
//! - `limits`: include/qwen.h's promises hostile callers test (out-pointers cleared first, no stale
//!   message after QWEN_OK, a binary config.json is QWEN_ERR_MODEL, C field names in messages) and its
//!   LIMITS (threads, max_new_tokens, max_window_size, sessions per model, input sizes);
//! - `quant`: `options.quant` loads (greedy text equal to the library's `LoadOptions.quant` and to the
//!   checkpoint `quantize_checkpoint` wrote), its documented errors;
//! - `stress`: 8 threads creating, using and freeing models and sessions at once, frees racing use;
//! - `header`: header drift: bindgen on include/qwen.h against the `extern "C"` items of src/ffi.rs, both
//!   ways, each side read with `syn`.
//!
//! `common` holds the helpers they share. Everything runs on the built-in tiny random-weight model
//! (`:tiny:`) with few new tokens.
#[path = "../support/bindgen_run.rs"]
mod bindgen_run;
mod calls;
mod common;
mod example;
mod header;
mod limits;
mod quant;
mod stress;
