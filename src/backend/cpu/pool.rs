//! Place in the flow: backend::cpu::**pool**, the worker threads of one CPU model.
//! A rayon thread pool whose drop waits until its workers have left and joins their threads (rayon's
//! own `ThreadPool` only signals them and returns): after a model is freed none of its threads still
//! runs, not even its thread-local destructors, so an embedder may unload the library
//! (`qwen_model_free`, then `dlclose`) and a leak checker sees no worker half torn down. (The
//! checkpoint fuzzer found both: a worker's deque while rayon's exit had only been signalled, and,
//! after 3.7M inputs, a thread-local destructor record of a worker past its exit handler.)
use crate::error::{Error, Result};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a drop waits for the workers to leave (they leave as soon as they are idle, and a
/// model's pool is idle when the model is dropped: every use is a scoped `install`).
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// Workers that have left: the count, and a condition signalled at each exit.
type Exited = Arc<(Mutex<usize>, Condvar)>;

pub(super) struct WorkerPool {
    pool: Option<rayon::ThreadPool>,
    exited: Exited,
    /// The workers' OS threads (rayon's spawn handler), joined by drop.
    handles: Arc<Mutex<Vec<JoinHandle<()>>>>,
    threads: usize,
}

impl WorkerPool {
    /// `threads` workers named `qwen-cpu-N` (0 = one per core).
    pub fn new(threads: usize) -> Result<Self> {
        let exited: Exited = Arc::new((Mutex::new(0), Condvar::new()));
        let on_exit = Arc::clone(&exited);
        let handles: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let spawned = Arc::clone(&handles);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("qwen-cpu-{i}"))
            .spawn_handler(move |thread| {
                let mut b = std::thread::Builder::new();
                if let Some(name) = thread.name() {
                    b = b.name(name.to_owned());
                }
                if let Some(size) = thread.stack_size() {
                    b = b.stack_size(size);
                }
                let h = b.spawn(|| thread.run())?;
                spawned.lock().unwrap_or_else(|e| e.into_inner()).push(h);
                Ok(())
            })
            .exit_handler(move |_| {
                let (count, cv) = &*on_exit;
                *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                cv.notify_all();
            })
            .build()
            .map_err(|e| Error::Backend(format!("cannot start {threads} CPU threads: {e}")))?;
        let threads = pool.current_num_threads();
        Ok(WorkerPool { pool: Some(pool), exited, handles, threads })
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
        let (left, timeout) =
            cv.wait_timeout_while(guard, EXIT_WAIT, |n| *n < self.threads).unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            eprintln!("note: CPU worker threads still running {} s after their model was freed", EXIT_WAIT.as_secs());
            return; // detached: joining could wait forever
        }
        drop(left);
        // Every worker has left rayon's loop: what remains of each thread is its exit (thread-local
        // destructors), so the joins return at once.
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Thread-local destructors that have run (a worker's last act, after rayon's exit handler).
    static TLS_DROPPED: AtomicUsize = AtomicUsize::new(0);
    struct Mark;
    impl Drop for Mark {
        fn drop(&mut self) {
            std::thread::sleep(Duration::from_millis(20)); // a slow thread exit
            TLS_DROPPED.fetch_add(1, Ordering::SeqCst);
        }
    }
    thread_local! { static MARK: std::cell::RefCell<Option<Mark>> = const { std::cell::RefCell::new(None) }; }

    #[test]
    fn drop_returns_after_every_worker_thread_ended() {
        let p = WorkerPool::new(3).unwrap();
        assert_eq!(p.current_num_threads(), 3);
        assert_eq!(p.install(rayon::current_num_threads), 3);
        // A thread-local with a destructor in every worker.
        p.install(|| rayon::broadcast(|_| MARK.with(|m| *m.borrow_mut() = Some(Mark))));
        let exited = Arc::clone(&p.exited);
        let before = TLS_DROPPED.load(Ordering::SeqCst);
        drop(p);
        assert_eq!(*exited.0.lock().unwrap(), 3, "drop returned before the workers left");
        assert_eq!(TLS_DROPPED.load(Ordering::SeqCst) - before, 3, "drop returned before the worker threads ended");
    }
}
