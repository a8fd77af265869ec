//! Place in the flow: backend::cpu::**pool**, the worker threads of one CPU model.
//! A rayon thread pool whose drop waits until its workers have left (rayon's own `ThreadPool`
//! only signals them and returns): after a model is freed none of its threads still runs, so an
//! embedder may unload the library (`qwen_model_free`, then `dlclose`) and a leak checker sees no
//! worker half torn down.
use crate::error::{Error, Result};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a drop waits for the workers to leave (they leave as soon as they are idle, and a
/// model's pool is idle when the model is dropped: every use is a scoped `install`).
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// Workers that have left: the count, and a condition signalled at each exit.
type Exited = Arc<(Mutex<usize>, Condvar)>;

pub(super) struct WorkerPool {
    pool: Option<rayon::ThreadPool>,
    exited: Exited,
    threads: usize,
}

impl WorkerPool {
    /// `threads` workers named `qwen-cpu-N` (0 = one per core).
    pub fn new(threads: usize) -> Result<Self> {
        let exited: Exited = Arc::new((Mutex::new(0), Condvar::new()));
        let on_exit = Arc::clone(&exited);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("qwen-cpu-{i}"))
            .exit_handler(move |_| {
                let (count, cv) = &*on_exit;
                *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                cv.notify_all();
            })
            .build()
            .map_err(|e| Error::Backend(format!("cannot start {threads} CPU threads: {e}")))?;
        let threads = pool.current_num_threads();
        Ok(WorkerPool { pool: Some(pool), exited, threads })
    }

    fn pool(&self) -> &rayon::ThreadPool {
        self.pool.as_ref().expect("the pool lives until drop")
    }

    /// Run `f` on the pool (its parallel iterators use these workers).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool().install(f)
    }

    /// Worker threads.
    pub fn current_num_threads(&self) -> usize {
        self.threads
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else { return };
        // A worker of this very pool cannot wait for itself to leave.
        let inside = pool.current_thread_index().is_some();
        drop(pool); // tells the workers to leave once idle
        if inside {
            return;
        }
        let (count, cv) = &*self.exited;
        let guard = count.lock().unwrap_or_else(|e| e.into_inner());
        let (_left, timeout) =
            cv.wait_timeout_while(guard, EXIT_WAIT, |n| *n < self.threads).unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            eprintln!("note: CPU worker threads still running {} s after their model was freed", EXIT_WAIT.as_secs());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_returns_after_every_worker_left() {
        let p = WorkerPool::new(3).unwrap();
        assert_eq!(p.current_num_threads(), 3);
        assert_eq!(p.install(rayon::current_num_threads), 3);
        let exited = Arc::clone(&p.exited);
        drop(p);
        assert_eq!(*exited.0.lock().unwrap(), 3, "drop returned before the workers left");
    }
}
