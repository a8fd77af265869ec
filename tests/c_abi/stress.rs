//! Many threads creating, using and freeing models and sessions at once, with frees racing against
//! use of the same handles on other threads. Every call must return QWEN_OK or the documented error
//! (QWEN_ERR_INVALID_HANDLE for a handle another thread freed, QWEN_ERR_BUSY for a session in use);
//! never crash, hang or leak a live handle. Bounded: 8 threads x 12 rounds on the tiny model.
//!
//! CI also runs it under AddressSanitizer and ThreadSanitizer (TSan with an instrumented std), each after
//! a negative control the sanitizer must report: `bash tools/sanitizers/run.sh address thread` (nightly).
use super::common::*;
use qwen_rt::ffi::*;
use qwen_status::*;
use std::ptr::{null, null_mut};
use std::sync::{Arc, Mutex};

const THREADS: usize = 8;
const ROUNDS: usize = 12;

#[test]
fn threads_create_use_and_free_models_and_sessions_concurrently() {
    // Handles shared between threads as addresses; any thread may free any of them.
    let models: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new((0..2).map(|_| tiny_model(32) as usize).collect()));
    let sessions: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (models, sessions) = (models.clone(), sessions.clone());
            std::thread::spawn(move || {
                for r in 0..ROUNDS {
                    let pick = |v: &Mutex<Vec<usize>>| {
                        let v = v.lock().unwrap();
                        (!v.is_empty()).then(|| v[(t + r) % v.len()])
                    };
                    match (t + r) % 4 {
                        // Use a model handle that another thread may be freeing.
                        0 => {
                            if let Some(m) = pick(&models) {
                                let (mut p, mut n) = (null_mut(), 0usize);
                                let st = unsafe {
                                    qwen_tokenize(m as *const qwen_model, c"hi there".as_ptr(), 0, &mut p, &mut n)
                                };
                                assert!(
                                    matches!(st, QWEN_OK | QWEN_ERR_INVALID_HANDLE),
                                    "tokenize: {st:?} {}",
                                    last_error()
                                );
                                if st == QWEN_OK {
                                    ok(unsafe { qwen_free_tokens(p, n) });
                                }
                                let mut s = null_mut();
                                let st = unsafe { qwen_session_create(m as *const qwen_model, null(), &mut s) };
                                assert!(
                                    matches!(st, QWEN_OK | QWEN_ERR_INVALID_HANDLE | QWEN_ERR_BUSY),
                                    "create: {st:?} {}",
                                    last_error()
                                );
                                if st == QWEN_OK {
                                    sessions.lock().unwrap().push(s as usize);
                                }
                            }
                        }
                        // Generate on a shared session (busy or freed elsewhere is an error code).
                        1 => {
                            if let Some(s) = pick(&sessions) {
                                let ids = [100u32, 101];
                                let mut text = null_mut();
                                let st = unsafe {
                                    qwen_session_generate_tokens(
                                        s as *mut qwen_session,
                                        ids.as_ptr(),
                                        2,
                                        None,
                                        null_mut(),
                                        &mut text,
                                        null_mut(),
                                    )
                                };
                                assert!(
                                    matches!(st, QWEN_OK | QWEN_ERR_INVALID_HANDLE | QWEN_ERR_BUSY),
                                    "generate: {st:?} {}",
                                    last_error()
                                );
                                if st == QWEN_OK {
                                    let _ = take_string(text);
                                } else {
                                    assert!(text.is_null());
                                }
                            }
                        }
                        // Free a session that others may be using.
                        2 => {
                            let s = sessions.lock().unwrap().pop();
                            if let Some(s) = s {
                                let st = unsafe { qwen_session_free(s as *mut qwen_session) };
                                assert!(matches!(st, QWEN_OK | QWEN_ERR_BUSY), "session free: {st:?} {}", last_error());
                                if st == QWEN_ERR_BUSY {
                                    sessions.lock().unwrap().push(s);
                                }
                            }
                        }
                        // Free a model (its sessions keep working) and load a new one.
                        _ => {
                            let m = models.lock().unwrap().pop();
                            if let Some(m) = m {
                                ok(unsafe { qwen_model_free(m as *mut qwen_model) });
                            }
                            let fresh = tiny_model(32) as usize;
                            models.lock().unwrap().push(fresh);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a stress thread failed");
    }
    // Every handle left is still live and frees cleanly; freeing again is an error, not a crash.
    for s in sessions.lock().unwrap().drain(..) {
        ok(unsafe { qwen_session_free(s as *mut qwen_session) });
        expect_err(unsafe { qwen_session_free(s as *mut qwen_session) }, QWEN_ERR_INVALID_HANDLE, "session");
    }
    for m in models.lock().unwrap().drain(..) {
        ok(unsafe { qwen_model_free(m as *mut qwen_model) });
    }
}
