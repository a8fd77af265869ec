//! The request queue and the worker that owns the model.
//!
//! Handlers `submit` a prepared job into a bounded FIFO (full → the caller answers 429) and read its
//! events from a channel. One worker thread pops jobs in arrival order and decodes one sequence at a
//! time; batched decoding would replace `worker_loop`'s body (pop up to B jobs, step them together),
//! nothing above it. A job's `Ticket` cancels it when dropped (client gone, stream dropped, time
//! limit): a waiting job leaves the queue at once, a running one stops at its next token.
use super::metrics::Metrics;
use super::model::{Output, Prepared, Worker};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

/// What the worker sends back for one job; `k` is the choice index (0..n).
#[derive(Debug)]
pub enum Event {
    /// Text of choice k (never empty).
    Piece(usize, String),
    /// Choice k finished.
    Done(usize, Output),
    /// The per-request time limit ran out (the job stops).
    TimedOut,
    /// The model failed (the job stops).
    Failed(String),
}

struct Job {
    id: u64,
    prepared: Prepared,
    n: usize,
    arrived: Instant,
    deadline: Instant,
    cancel: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<Event>,
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
    next_id: u64,
}

pub struct Scheduler {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
    running: AtomicUsize,
    pub metrics: Arc<Metrics>,
}

/// Submission failed: the queue holds `capacity` jobs, or the server is shutting down.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    Full(usize),
    Closed,
}

/// A submitted job: its events, and cancellation of the job when dropped.
pub struct Ticket {
    id: u64,
    cancel: Arc<AtomicBool>,
    sched: Arc<Scheduler>,
    pub events: mpsc::UnboundedReceiver<Event>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.cancel.swap(true, Ordering::SeqCst) {
            self.sched.remove(self.id);
        }
    }
}

impl Ticket {
    /// The job ended normally: dropping the ticket must not count it as cancelled.
    pub fn finish(self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

impl Scheduler {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Scheduler {
            queue: Mutex::new(Queue { jobs: VecDeque::new(), closed: false, next_id: 0 }),
            ready: Condvar::new(),
            capacity,
            running: AtomicUsize::new(0),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Jobs waiting (not yet decoding).
    pub fn queued(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Queue `n` choices of `prepared`, arriving at `arrived`, to be done by `deadline`.
    pub fn submit(
        self: &Arc<Self>,
        prepared: Prepared,
        n: usize,
        arrived: Instant,
        deadline: Instant,
    ) -> Result<Ticket, Rejected> {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let mut q = self.lock();
        if q.closed {
            return Err(Rejected::Closed);
        }
        if q.jobs.len() >= self.capacity {
            return Err(Rejected::Full(self.capacity));
        }
        let id = q.next_id;
        q.next_id += 1;
        q.jobs.push_back(Job { id, prepared, n, arrived, deadline, cancel: cancel.clone(), events: tx });
        drop(q);
        self.ready.notify_one();
        Ok(Ticket { id, cancel, sched: self.clone(), events: rx })
    }

    /// A cancelled job that has not started leaves the queue (its slot frees at once).
    fn remove(&self, id: u64) {
        let mut q = self.lock();
        if let Some(i) = q.jobs.iter().position(|j| j.id == id) {
            q.jobs.remove(i);
            self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// No new jobs; the worker ends once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    fn pop(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if let Some(j) = q.jobs.pop_front() {
                self.running.fetch_add(1, Ordering::SeqCst);
                return Some(j);
            }
            if q.closed {
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The worker thread's loop: one job at a time, in arrival order, until closed and drained.
    pub fn worker_loop(self: Arc<Self>, mut worker: Worker) {
        while let Some(job) = self.pop() {
            self.run_job(&mut worker, &job);
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn run_job(&self, worker: &mut Worker, job: &Job) {
        let m = &self.metrics;
        if job.cancel.load(Ordering::SeqCst) {
            return; // cancelled between leaving the queue and starting
        }
        if Instant::now() >= job.deadline {
            m.cancelled.fetch_add(1, Ordering::Relaxed);
            let _ = job.events.send(Event::TimedOut);
            return;
        }
        for k in 0..job.n {
            let mut last: Option<Instant> = None;
            let mut timed_out = false;
            let prepared = job.prepared.choice(k);
            // A panic in the model code fails this request, not the worker (every later request would hang).
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                worker.run(&prepared, &mut |piece: &str| {
                    // Called once per generated token (the piece may be empty while UTF-8 or a possible
                    // stop string is held back).
                    let now = Instant::now();
                    match last {
                        None if k == 0 => m.ttft.observe((now - job.arrived).as_secs_f64()),
                        None => {}
                        Some(t) => m.itl.observe((now - t).as_secs_f64()),
                    }
                    last = Some(now);
                    if job.cancel.load(Ordering::SeqCst) {
                        return false;
                    }
                    if now >= job.deadline {
                        timed_out = true;
                        return false;
                    }
                    piece.is_empty() || job.events.send(Event::Piece(k, piece.to_string())).is_ok()
                })
            }))
            .unwrap_or_else(|_| Err(crate::Error::invalid("internal error: the model code panicked")));
            match r {
                Ok(out) => {
                    m.add_tokens(out.prompt_tokens, out.completion_tokens);
                    if timed_out {
                        m.cancelled.fetch_add(1, Ordering::Relaxed);
                        let _ = job.events.send(Event::TimedOut);
                        return;
                    }
                    if out.finish == super::model::Finish::Cancelled {
                        m.cancelled.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    if k + 1 == job.n {
                        m.e2e.observe(job.arrived.elapsed().as_secs_f64());
                    }
                    if job.events.send(Event::Done(k, out)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e.to_string()));
                    return;
                }
            }
        }
    }
}
