//! Place in the flow: engine → **ffi** (a front end: the C ABI of `include/qwen.h` over `engine`).
//! Opaque model (`Engine`) and session (`Session`) handles, tokenizer calls, streaming chat and
//! raw generation. The header is the documentation; `tests/c_abi.rs` checks it against this file.
//!
//! Safety net of every entry point:
//! - `guard` runs the body under `catch_unwind` (no panic crosses the boundary: `QWEN_ERR_PANIC`) and
//!   turns errors into a status code plus a thread-local message (`qwen_last_error`).
//! - Handles and returned buffers are registered by address in `REGISTRY` with their kind; a pointer is
//!   only dereferenced after the registry (under its lock) says it is live and of the right kind, and
//!   then its magic number is checked too. Freeing removes the entry under the lock first, so a double
//!   free or a foreign pointer is an error code, never a dereference.
//! - A handle owns an `Arc` of its state; calls clone the `Arc` under the registry lock, so freeing a
//!   handle on one thread while another uses it is safe. A session's state sits in a `Mutex` taken with
//!   `try_lock`: concurrent use is `QWEN_ERR_BUSY`, not a race.
#![allow(non_camel_case_types)]

use crate::chat::DEFAULT_SYSTEM;
use crate::config::SamplingParams;
use crate::engine::{
    BackendKind, ComputeDType, Engine, FinishReason, LoadOptions, ModelSource, Session, SessionOptions,
    MAX_INPUT_BYTES, MAX_THREADS,
};
use crate::error::Error;
use crate::generate::Generation;
use crate::quant::QuantFormat;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

/// Model path that selects the built-in tiny random-weight model (`synth::builtin_tiny_dir`).
pub const QWEN_TINY_MODEL: &str = ":tiny:";

/// Most live sessions one model may have (each holds a whole KV cache); one more is QWEN_ERR_BUSY.
pub const QWEN_MAX_SESSIONS_PER_MODEL: u32 = 64;
/// Most bytes of one string argument (text, message, prompt, system prompt), NUL excluded.
pub const QWEN_MAX_INPUT_BYTES: u32 = 16777216;
/// Most token ids one call takes (`n_tokens`).
pub const QWEN_MAX_INPUT_TOKENS: u32 = 4194304;

const _: () = assert!(QWEN_MAX_INPUT_BYTES as usize == MAX_INPUT_BYTES);

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qwen_status {
    QWEN_OK = 0,
    QWEN_ERR_NULL_ARG = 1,
    QWEN_ERR_INVALID_UTF8 = 2,
    QWEN_ERR_INVALID_HANDLE = 3,
    QWEN_ERR_INVALID_ARG = 4,
    QWEN_ERR_CONTEXT_FULL = 5,
    QWEN_ERR_IO = 6,
    QWEN_ERR_MODEL = 7,
    QWEN_ERR_BACKEND = 8,
    QWEN_ERR_BUSY = 9,
    QWEN_ERR_PANIC = 10,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qwen_backend {
    QWEN_BACKEND_AUTO = 0,
    QWEN_BACKEND_CPU = 1,
    QWEN_BACKEND_CUDA = 2,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qwen_dtype {
    QWEN_DTYPE_AUTO = 0,
    QWEN_DTYPE_F32 = 1,
    QWEN_DTYPE_BF16 = 2,
    QWEN_DTYPE_F16 = 3,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qwen_quant {
    QWEN_QUANT_NONE = 0,
    QWEN_QUANT_NF4 = 1,
    QWEN_QUANT_NF4_DQ = 2,
    QWEN_QUANT_INT8 = 3,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum qwen_finish {
    QWEN_FINISH_STOP = 0,
    QWEN_FINISH_LENGTH = 1,
    QWEN_FINISH_CONTEXT_FULL = 2,
    QWEN_FINISH_CANCELLED = 3,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct qwen_model_options {
    pub backend: i32,
    pub dtype: i32,
    pub max_seq_len: u32,
    pub threads: u32,
    pub quant: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct qwen_sampling {
    pub do_sample: i32,
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub seed: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct qwen_session_options {
    pub system: *const c_char,
    pub sampling: qwen_sampling,
    pub max_new_tokens: u32,
    pub max_window_size: u32,
}

pub type qwen_stream_cb = Option<unsafe extern "C" fn(piece: *const c_char, user_data: *mut c_void) -> c_int>;

/// Opaque model handle (C sees only a pointer).
pub struct qwen_model {
    magic: u64,
    inner: Arc<Engine>,
}

/// Opaque session handle.
pub struct qwen_session {
    magic: u64,
    inner: Arc<SessionState>,
}

const MODEL_MAGIC: u64 = 0x5157_454E_4D4F_444C; // "QWENMODL"
const SESSION_MAGIC: u64 = 0x5157_454E_5345_5353; // "QWENSESS"

struct SessionState {
    /// The session keeps its engine alive (`Session::engine`), so the model handle may be freed first.
    chat: Mutex<Session>,
}

// ---------------------------------------------------------------------------------------------
// Errors and the guard around every entry point.

/// A failed call: its status and message.
struct Fail(qwen_status, String);

type FfiResult<T> = std::result::Result<T, Fail>;

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Io { .. } => qwen_status::QWEN_ERR_IO,
            Error::BadFile { .. } | Error::Tensor { .. } => qwen_status::QWEN_ERR_MODEL,
            Error::InvalidArgument(_) => qwen_status::QWEN_ERR_INVALID_ARG,
            Error::ContextFull(m) => {
                let hint = "qwen_model_options.max_seq_len sets the KV length";
                return Fail(qwen_status::QWEN_ERR_CONTEXT_FULL, format!("context full: {m} ({hint})"));
            }
            Error::Backend(_) => qwen_status::QWEN_ERR_BACKEND,
            #[allow(unreachable_patterns)]
            _ => qwen_status::QWEN_ERR_MODEL,
        };
        Fail(code, e.to_string())
    }
}

fn invalid(msg: impl Into<String>) -> Fail {
    Fail(qwen_status::QWEN_ERR_INVALID_ARG, msg.into())
}

fn null_arg(name: &str) -> Fail {
    Fail(qwen_status::QWEN_ERR_NULL_ARG, format!("argument `{name}` is NULL"))
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Run `body` for the entry point `name`: clear the thread's last error, catch panics, map failures.
/// On success the last error is cleared again: a qwen_* call made inside `body` (from a stream
/// callback) may have set it.
fn guard(name: &str, body: impl FnOnce() -> FfiResult<()>) -> qwen_status {
    set_last_error("");
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            qwen_status::QWEN_OK
        }
        Ok(Err(Fail(code, msg))) => {
            set_last_error(&format!("{name}: {msg}"));
            code
        }
        Err(payload) => {
            let msg = panic_message(payload.as_ref());
            // Dropping a payload can itself panic (pathological); never let that escape either.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            set_last_error(&format!("{name}: internal error (panic): {msg}"));
            qwen_status::QWEN_ERR_PANIC
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The registry of live handles and buffers.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    Model,
    Session,
    /// A `Box<[u32]>` of this many ids.
    Tokens(usize),
    /// A `Box<[u8]>` of this many bytes (text + NUL).
    Text(usize),
}

impl Live {
    fn what(self) -> &'static str {
        match self {
            Live::Model => "a qwen_model",
            Live::Session => "a qwen_session",
            Live::Tokens(_) => "a token buffer",
            Live::Text(_) => "a string",
        }
    }
}

fn registry() -> MutexGuard<'static, HashMap<usize, Live>> {
    static REGISTRY: OnceLock<Mutex<HashMap<usize, Live>>> = OnceLock::new();
    // The map is never left half-updated by a panic, so a poisoned lock is still consistent.
    REGISTRY.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Check under the held registry lock that `addr` is live and of kind `want` (by discriminant).
fn check_live(reg: &HashMap<usize, Live>, addr: usize, name: &str, want: Live) -> FfiResult<Live> {
    match reg.get(&addr) {
        Some(&k) if std::mem::discriminant(&k) == std::mem::discriminant(&want) => Ok(k),
        Some(&k) => Err(Fail(
            qwen_status::QWEN_ERR_INVALID_HANDLE,
            format!("argument `{name}` is {}, not {}", k.what(), want.what()),
        )),
        None => Err(Fail(
            qwen_status::QWEN_ERR_INVALID_HANDLE,
            format!(
                "argument `{name}` ({addr:#x}) is not a live {} (already freed, or not returned by this library)",
                want.what().trim_start_matches("a ")
            ),
        )),
    }
}

fn bad_magic(name: &str) -> Fail {
    Fail(qwen_status::QWEN_ERR_INVALID_HANDLE, format!("argument `{name}` has a corrupt handle (bad magic number)"))
}

fn model_state(p: *const qwen_model, name: &str) -> FfiResult<Arc<Engine>> {
    if p.is_null() {
        return Err(null_arg(name));
    }
    let reg = registry();
    check_live(&reg, p as usize, name, Live::Model)?;
    // SAFETY: the registry lists it as a live Box<qwen_model>; it cannot be freed while we hold the lock.
    let h = unsafe { &*p };
    if h.magic != MODEL_MAGIC {
        return Err(bad_magic(name));
    }
    Ok(h.inner.clone())
}

fn session_state(p: *const qwen_session, name: &str) -> FfiResult<Arc<SessionState>> {
    if p.is_null() {
        return Err(null_arg(name));
    }
    let reg = registry();
    check_live(&reg, p as usize, name, Live::Session)?;
    // SAFETY: as in `model_state`.
    let h = unsafe { &*p };
    if h.magic != SESSION_MAGIC {
        return Err(bad_magic(name));
    }
    Ok(h.inner.clone())
}

fn lock_chat(s: &SessionState) -> FfiResult<MutexGuard<'_, Session>> {
    match s.chat.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(Fail(
            qwen_status::QWEN_ERR_BUSY,
            "the session is in use by another call (one thread at a time; not from its own stream callback)".into(),
        )),
        Err(TryLockError::Poisoned(_)) => {
            Err(Fail(qwen_status::QWEN_ERR_PANIC, "the session is unusable after an internal error; free it".into()))
        }
    }
}

fn register(addr: usize, kind: Live) {
    registry().insert(addr, kind);
}

/// Hand `ids` to C: NULL for none, else a registered `Box<[u32]>`.
fn export_tokens(ids: Vec<u32>) -> (*mut u32, usize) {
    if ids.is_empty() {
        return (std::ptr::null_mut(), 0);
    }
    let n = ids.len();
    let p = Box::into_raw(ids.into_boxed_slice()) as *mut u32;
    register(p as usize, Live::Tokens(n));
    (p, n)
}

/// Hand `bytes` + NUL to C as a registered `Box<[u8]>`.
fn export_bytes(mut bytes: Vec<u8>) -> *mut c_char {
    bytes.push(0);
    let n = bytes.len();
    let p = Box::into_raw(bytes.into_boxed_slice()) as *mut u8;
    register(p as usize, Live::Text(n));
    p as *mut c_char
}

/// Text for C: U+0000 would end a C string early, so it becomes U+FFFD.
fn c_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}").into()
    } else {
        s.into()
    }
}

// ---------------------------------------------------------------------------------------------
// Argument helpers.

/// A NUL-terminated UTF-8 argument of at most QWEN_MAX_INPUT_BYTES bytes (the scan for its NUL stops
/// there).
///
/// SAFETY: `p` is NULL or points to a NUL-terminated string that outlives the call.
unsafe fn arg_str<'a>(p: *const c_char, name: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(null_arg(name));
    }
    let mut len = 0usize;
    // SAFETY: the string is NUL-terminated, and the scan stops at its NUL.
    while *p.add(len) != 0 {
        if len == MAX_INPUT_BYTES {
            return Err(invalid(format!("argument `{name}` is longer than QWEN_MAX_INPUT_BYTES ({MAX_INPUT_BYTES})")));
        }
        len += 1;
    }
    // SAFETY: `len` readable bytes before the NUL, as just scanned.
    let bytes = std::slice::from_raw_parts(p as *const u8, len);
    std::str::from_utf8(bytes).map_err(|e| {
        Fail(
            qwen_status::QWEN_ERR_INVALID_UTF8,
            format!("argument `{name}` is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })
}

/// A `(pointer, length)` array argument; NULL is allowed when the length is 0.
///
/// SAFETY: `p` is NULL or points to `n` readable values that outlive the call.
unsafe fn arg_slice<'a, T>(p: *const T, n: usize, name: &str) -> FfiResult<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(null_arg(name));
    }
    if n > QWEN_MAX_INPUT_TOKENS as usize {
        return Err(invalid(format!(
            "argument `{name}`: length {n} is more than QWEN_MAX_INPUT_TOKENS ({QWEN_MAX_INPUT_TOKENS})"
        )));
    }
    Ok(std::slice::from_raw_parts(p, n))
}

/// Check an out-pointer and clear what it points to.
///
/// SAFETY: `p` is NULL or points to a writable `*mut T`.
unsafe fn out_ptr<'a, T>(p: *mut *mut T, name: &str) -> FfiResult<&'a mut *mut T> {
    if p.is_null() {
        return Err(null_arg(name));
    }
    *p = std::ptr::null_mut();
    Ok(&mut *p)
}

// ---------------------------------------------------------------------------------------------
// Library.

#[no_mangle]
pub extern "C" fn qwen_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

#[no_mangle]
pub extern "C" fn qwen_last_error() -> *const c_char {
    static EMPTY: &CStr = c"";
    LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(EMPTY.as_ptr())
}

#[no_mangle]
pub extern "C" fn qwen_status_name(status: i32) -> *const c_char {
    let name: &'static CStr = match status {
        0 => c"QWEN_OK",
        1 => c"QWEN_ERR_NULL_ARG",
        2 => c"QWEN_ERR_INVALID_UTF8",
        3 => c"QWEN_ERR_INVALID_HANDLE",
        4 => c"QWEN_ERR_INVALID_ARG",
        5 => c"QWEN_ERR_CONTEXT_FULL",
        6 => c"QWEN_ERR_IO",
        7 => c"QWEN_ERR_MODEL",
        8 => c"QWEN_ERR_BACKEND",
        9 => c"QWEN_ERR_BUSY",
        10 => c"QWEN_ERR_PANIC",
        _ => c"QWEN_ERR_UNKNOWN",
    };
    name.as_ptr()
}

// ---------------------------------------------------------------------------------------------
// Model.

#[no_mangle]
pub extern "C" fn qwen_model_options_default() -> qwen_model_options {
    qwen_model_options {
        backend: qwen_backend::QWEN_BACKEND_AUTO as i32,
        dtype: qwen_dtype::QWEN_DTYPE_AUTO as i32,
        max_seq_len: 0,
        threads: 0,
        quant: qwen_quant::QWEN_QUANT_NONE as i32,
    }
}

/// The tokenizer of a model directory, as `qwen-run` picks it.
fn load_options(o: &qwen_model_options) -> FfiResult<LoadOptions> {
    let backend = match o.backend {
        0 => BackendKind::Auto,
        1 => BackendKind::Cpu,
        2 => BackendKind::Cuda,
        b => return Err(invalid(format!("options.backend {b} is not a qwen_backend (0 auto, 1 cpu, 2 cuda)"))),
    };
    let dtype = match o.dtype {
        0 => ComputeDType::Auto,
        1 => ComputeDType::F32,
        2 => ComputeDType::BF16,
        3 => ComputeDType::F16,
        d => return Err(invalid(format!("options.dtype {d} is not a qwen_dtype (0 auto, 1 f32, 2 bf16, 3 f16)"))),
    };
    if o.threads as usize > MAX_THREADS {
        return Err(invalid(format!("options.threads {} is more than {MAX_THREADS}", o.threads)));
    }
    let quant = match o.quant {
        0 => None,
        1 => Some(QuantFormat::Nf4 { double_quant: false }),
        2 => Some(QuantFormat::Nf4 { double_quant: true }),
        3 => Some(QuantFormat::Int8),
        q => return Err(invalid(format!("options.quant {q} is not a qwen_quant (0 none, 1 nf4, 2 nf4-dq, 3 int8)"))),
    };
    if quant.is_some() && backend == BackendKind::Cuda {
        return Err(invalid(
            "options.quant: quantized weights are not yet supported on the CUDA backend: use QWEN_BACKEND_CPU",
        ));
    }
    let max_seq_len = Some(o.max_seq_len as usize);
    Ok(LoadOptions { backend, dtype, threads: o.threads as usize, max_seq_len, progress: false, quant })
}

/// options.quant on a model directory that is already quantized: refused with the C names (the
/// backend's own message names the `qwen-run` flag).
fn check_quant_dir(dir: &std::path::Path, load: &LoadOptions) -> FfiResult<()> {
    if let Some(f) = load.quant {
        if crate::config::QuantConfig::load(dir)?.is_some() {
            return Err(invalid(format!(
                "options.quant {} on an already quantized model ({}): use QWEN_QUANT_NONE (it is used as stored)",
                f.name(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// # Safety
/// See `qwen_model_load` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_model_load(
    path: *const c_char,
    options: *const qwen_model_options,
    out_model: *mut *mut qwen_model,
) -> qwen_status {
    guard("qwen_model_load", || {
        let out = out_ptr(out_model, "out_model")?;
        let path = arg_str(path, "path")?;
        let opts = if options.is_null() { qwen_model_options_default() } else { *options };
        let load = load_options(&opts)?;
        if path.is_empty() {
            return Err(invalid(format!("argument `path` is empty (a model directory, or \"{QWEN_TINY_MODEL}\")")));
        }
        let source = if path == QWEN_TINY_MODEL { ModelSource::BuiltinTiny } else { ModelSource::Dir(path.into()) };
        if let ModelSource::Dir(d) = &source {
            if d.is_dir() {
                check_quant_dir(d, &load)?;
            }
        }
        let engine = Arc::new(Engine::open_naming(source, load, &|f| format!("options.{f}"))?);
        let p = Box::into_raw(Box::new(qwen_model { magic: MODEL_MAGIC, inner: engine }));
        register(p as usize, Live::Model);
        *out = p;
        Ok(())
    })
}

/// # Safety
/// See `qwen_model_free` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_model_free(model: *mut qwen_model) -> qwen_status {
    guard("qwen_model_free", || {
        if model.is_null() {
            return Ok(());
        }
        {
            let mut reg = registry();
            check_live(&reg, model as usize, "model", Live::Model)?;
            if (*model).magic != MODEL_MAGIC {
                return Err(bad_magic("model"));
            }
            reg.remove(&(model as usize));
        }
        // SAFETY: it was live and is now unregistered: no other call can reach it.
        (*model).magic = 0;
        drop(Box::from_raw(model));
        Ok(())
    })
}

/// # Safety
/// See `qwen_model_backend` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_model_backend(model: *const qwen_model, out_name: *mut *const c_char) -> qwen_status {
    guard("qwen_model_backend", || {
        if out_name.is_null() {
            return Err(null_arg("out_name"));
        }
        *out_name = std::ptr::null();
        let m = model_state(model, "model")?;
        let name: &'static CStr = match m.backend_name() {
            "cpu" => c"cpu",
            "cuda" => c"cuda",
            _ => c"unknown",
        };
        *out_name = name.as_ptr();
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Tokenizer.

/// # Safety
/// See `qwen_tokenize` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_tokenize(
    model: *const qwen_model,
    text: *const c_char,
    parse_special: i32,
    out_tokens: *mut *mut u32,
    out_len: *mut usize,
) -> qwen_status {
    guard("qwen_tokenize", || {
        if !out_len.is_null() {
            *out_len = 0;
        }
        let out = out_ptr(out_tokens, "out_tokens")?;
        if out_len.is_null() {
            return Err(null_arg("out_len"));
        }
        let m = model_state(model, "model")?;
        let text = arg_str(text, "text")?;
        let tok = m.tokenizer();
        let ids = if parse_special != 0 { tok.try_encode_with_special(text)? } else { tok.try_encode(text)? };
        let (p, n) = export_tokens(ids);
        *out = p;
        *out_len = n;
        Ok(())
    })
}

/// # Safety
/// See `qwen_detokenize` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_detokenize(
    model: *const qwen_model,
    tokens: *const u32,
    n_tokens: usize,
    out_text: *mut *mut c_char,
    out_len: *mut usize,
) -> qwen_status {
    guard("qwen_detokenize", || {
        if !out_len.is_null() {
            *out_len = 0;
        }
        let out = out_ptr(out_text, "out_text")?;
        let m = model_state(model, "model")?;
        let ids = arg_slice(tokens, n_tokens, "tokens")?;
        let bytes = m.tokenizer().decode_bytes(ids)?;
        let n = bytes.len();
        *out = export_bytes(bytes);
        if !out_len.is_null() {
            *out_len = n;
        }
        Ok(())
    })
}

/// # Safety
/// See `qwen_free_tokens` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_free_tokens(tokens: *mut u32, n_tokens: usize) -> qwen_status {
    guard("qwen_free_tokens", || {
        if tokens.is_null() {
            return Ok(());
        }
        {
            let mut reg = registry();
            let Live::Tokens(n) = check_live(&reg, tokens as usize, "tokens", Live::Tokens(0))? else {
                return Err(Fail(
                    qwen_status::QWEN_ERR_INVALID_HANDLE,
                    "argument `tokens` is not a token buffer".into(),
                ));
            };
            if n != n_tokens {
                return Err(invalid(format!(
                    "argument `n_tokens` is {n_tokens} but the buffer holds {n} ids (nothing freed)"
                )));
            }
            reg.remove(&(tokens as usize));
        }
        // SAFETY: a Box<[u32]> of n_tokens ids made by `export_tokens`, now unregistered.
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(tokens, n_tokens)));
        Ok(())
    })
}

/// # Safety
/// See `qwen_free_string` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_free_string(text: *mut c_char) -> qwen_status {
    guard("qwen_free_string", || {
        if text.is_null() {
            return Ok(());
        }
        let n = {
            let mut reg = registry();
            let Live::Text(n) = check_live(&reg, text as usize, "text", Live::Text(0))? else {
                return Err(Fail(qwen_status::QWEN_ERR_INVALID_HANDLE, "argument `text` is not a string".into()));
            };
            reg.remove(&(text as usize));
            n
        };
        // SAFETY: a Box<[u8]> of n bytes made by `export_bytes`, now unregistered.
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(text as *mut u8, n)));
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Sessions.

fn default_session_options(m: &Engine) -> qwen_session_options {
    let d = SessionOptions::from_generation_config(m.generation_config(), 0);
    let p = &d.sampling;
    qwen_session_options {
        system: std::ptr::null(),
        sampling: qwen_sampling {
            do_sample: p.do_sample as i32,
            temperature: p.temperature,
            top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
            top_p: p.top_p,
            repetition_penalty: p.repetition_penalty,
            seed: p.seed,
        },
        max_new_tokens: u32::try_from(d.max_new_tokens).unwrap_or(u32::MAX),
        max_window_size: u32::try_from(d.max_window_size).unwrap_or(u32::MAX),
    }
}

/// # Safety
/// See `qwen_session_options_default` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_session_options_default(
    model: *const qwen_model,
    out_options: *mut qwen_session_options,
) -> qwen_status {
    guard("qwen_session_options_default", || {
        if out_options.is_null() {
            return Err(null_arg("out_options"));
        }
        let m = model_state(model, "model")?;
        *out_options = default_session_options(&m);
        Ok(())
    })
}

/// # Safety
/// See `qwen_session_create` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_session_create(
    model: *const qwen_model,
    options: *const qwen_session_options,
    out_session: *mut *mut qwen_session,
) -> qwen_status {
    guard("qwen_session_create", || {
        let out = out_ptr(out_session, "out_session")?;
        let m = model_state(model, "model")?;
        let o = if options.is_null() { default_session_options(&m) } else { *options };
        let system = if o.system.is_null() {
            DEFAULT_SYSTEM.to_string()
        } else {
            arg_str(o.system, "options.system")?.to_string()
        };
        let s = &o.sampling;
        let params = SamplingParams {
            do_sample: s.do_sample != 0,
            temperature: s.temperature,
            top_k: s.top_k as usize,
            top_p: s.top_p,
            repetition_penalty: s.repetition_penalty,
            seed: s.seed,
        };
        params.validate().map_err(|e| invalid(format!("options.sampling: {e}")))?;
        let options = SessionOptions {
            sampling: params,
            max_new_tokens: o.max_new_tokens as usize,
            max_window_size: o.max_window_size as usize,
            system,
            stop: Vec::new(),
        };
        options.validate(&|f| format!("options.{f}"))?;
        let chat = m.session_within(options, QWEN_MAX_SESSIONS_PER_MODEL as usize).map_err(|e| match e {
            Error::InvalidArgument(msg) if msg.contains("live sessions") => {
                Fail(qwen_status::QWEN_ERR_BUSY, format!("{msg} (QWEN_MAX_SESSIONS_PER_MODEL)"))
            }
            e => e.into(),
        })?;
        let state = Arc::new(SessionState { chat: Mutex::new(chat) });
        let p = Box::into_raw(Box::new(qwen_session { magic: SESSION_MAGIC, inner: state }));
        register(p as usize, Live::Session);
        *out = p;
        Ok(())
    })
}

/// # Safety
/// See `qwen_session_free` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_session_free(session: *mut qwen_session) -> qwen_status {
    guard("qwen_session_free", || {
        if session.is_null() {
            return Ok(());
        }
        {
            let mut reg = registry();
            check_live(&reg, session as usize, "session", Live::Session)?;
            let h = &*session;
            if h.magic != SESSION_MAGIC {
                return Err(bad_magic("session"));
            }
            // In use (another thread, or its own callback): refuse. A poisoned lock may be freed.
            if let Err(TryLockError::WouldBlock) = h.inner.chat.try_lock() {
                return Err(Fail(
                    qwen_status::QWEN_ERR_BUSY,
                    "the session is in use by another call; it was not freed".into(),
                ));
            }
            reg.remove(&(session as usize));
        }
        // SAFETY: it was live and is now unregistered: no other call can reach it.
        (*session).magic = 0;
        drop(Box::from_raw(session));
        Ok(())
    })
}

/// # Safety
/// See `qwen_session_reset` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_session_reset(session: *mut qwen_session) -> qwen_status {
    guard("qwen_session_reset", || {
        let s = session_state(session, "session")?;
        lock_chat(&s)?.reset();
        Ok(())
    })
}

fn finish_code(f: &FinishReason) -> qwen_finish {
    match f {
        FinishReason::StopToken(_) | FinishReason::StopString(_) => qwen_finish::QWEN_FINISH_STOP,
        FinishReason::Length => qwen_finish::QWEN_FINISH_LENGTH,
        FinishReason::ContextFull => qwen_finish::QWEN_FINISH_CONTEXT_FULL,
        FinishReason::Cancelled => qwen_finish::QWEN_FINISH_CANCELLED,
    }
}

/// Clear a generating call's out-pointers (NULL text, finish 0) before it looks at any argument.
///
/// SAFETY: each pointer is NULL or writable.
unsafe fn clear_generation_outs(out_text: *mut *mut c_char, out_finish: *mut qwen_finish) {
    if !out_text.is_null() {
        *out_text = std::ptr::null_mut();
    }
    if !out_finish.is_null() {
        *out_finish = qwen_finish::QWEN_FINISH_STOP;
    }
}

/// Shared body of the three generating calls: clear the outputs, lock the session, run `run` with a
/// streaming closure that forwards non-empty pieces to `cb`, and hand out the text and finish reason.
///
/// SAFETY: the pointers are as documented in include/qwen.h.
unsafe fn run_generation(
    session: *mut qwen_session,
    cb: qwen_stream_cb,
    user_data: *mut c_void,
    out_text: *mut *mut c_char,
    out_finish: *mut qwen_finish,
    run: impl FnOnce(&mut Session, &mut dyn FnMut(&str) -> bool) -> FfiResult<Generation>,
) -> FfiResult<()> {
    clear_generation_outs(out_text, out_finish);
    let s = session_state(session, "session")?;
    let mut chat = lock_chat(&s)?;
    let mut on_text = |piece: &str| -> bool {
        match cb {
            Some(f) if !piece.is_empty() => {
                // c_text removed every NUL, so CString::new cannot fail; an empty piece is skipped anyway.
                let c = CString::new(c_text(piece).into_owned()).unwrap_or_default();
                // SAFETY: the caller's callback, with a string valid for the duration of the call.
                unsafe { f(c.as_ptr(), user_data) != 0 }
            }
            _ => true,
        }
    };
    let g = run(&mut chat, &mut on_text)?;
    drop(chat);
    if !out_finish.is_null() {
        *out_finish = finish_code(&g.finish);
    }
    if !out_text.is_null() {
        *out_text = export_bytes(c_text(&g.text).into_owned().into_bytes());
    }
    Ok(())
}

/// # Safety
/// See `qwen_session_send` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_session_send(
    session: *mut qwen_session,
    message: *const c_char,
    on_piece: qwen_stream_cb,
    user_data: *mut c_void,
    out_answer: *mut *mut c_char,
    out_finish: *mut qwen_finish,
) -> qwen_status {
    guard("qwen_session_send", || {
        clear_generation_outs(out_answer, out_finish);
        let message = arg_str(message, "message")?;
        run_generation(session, on_piece, user_data, out_answer, out_finish, |chat, on_text| {
            Ok(chat.send(message, on_text)?)
        })
    })
}

/// # Safety
/// See `qwen_session_generate` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_session_generate(
    session: *mut qwen_session,
    prompt: *const c_char,
    on_piece: qwen_stream_cb,
    user_data: *mut c_void,
    out_text: *mut *mut c_char,
    out_finish: *mut qwen_finish,
) -> qwen_status {
    guard("qwen_session_generate", || {
        clear_generation_outs(out_text, out_finish);
        let prompt = arg_str(prompt, "prompt")?;
        run_generation(session, on_piece, user_data, out_text, out_finish, |chat, on_text| {
            Ok(chat.generate(prompt, on_text)?)
        })
    })
}

/// # Safety
/// See `qwen_session_generate_tokens` in include/qwen.h.
#[no_mangle]
pub unsafe extern "C" fn qwen_session_generate_tokens(
    session: *mut qwen_session,
    tokens: *const u32,
    n_tokens: usize,
    on_piece: qwen_stream_cb,
    user_data: *mut c_void,
    out_text: *mut *mut c_char,
    out_finish: *mut qwen_finish,
) -> qwen_status {
    guard("qwen_session_generate_tokens", || {
        clear_generation_outs(out_text, out_finish);
        let ids = arg_slice(tokens, n_tokens, "tokens")?;
        if ids.is_empty() {
            return Err(invalid("argument `n_tokens` is 0 (the prompt needs at least one token)"));
        }
        run_generation(session, on_piece, user_data, out_text, out_finish, |chat, on_text| {
            let vocab = chat.engine().config().vocab_size;
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(invalid(format!("token id {bad} is outside the model's vocabulary (0..{vocab})")));
            }
            Ok(chat.generate_ids(ids, on_text)?)
        })
    })
}
