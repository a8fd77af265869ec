//! `qwen-run serve`: an OpenAI-compatible HTTP server (tokio + axum, SSE streaming) and a web chat page.
//!
//! Data flow: `routes` (HTTP, auth, SSE) → `api` (request JSON → `GenRequest`, response shapes) →
//! `model::ServedModel::prepare` (prompt ids, sampling, stops: 400 on bad input) → `scheduler`
//! (bounded FIFO, 429 when full) → the worker thread (`model::Worker`, the only code that decodes) →
//! events back to the handler. `model.rs` is the one file that touches the model API.
pub mod api;
pub mod error;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod scheduler;

pub use model::ModelOptions;

use crate::error::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// The `qwen-run serve` flags besides the model's.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/*
    #[arg(long)]
    pub api_key: Option<String>,
    /// Requests that may wait for the model before new ones get 429
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Per-request time limit in seconds (queueing included)
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// Largest request body in bytes (413 above)
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
}

impl ServeArgs {
    pub fn options(&self, model: ModelOptions) -> Result<ServeOptions> {
        if !(self.timeout > 0.0 && self.timeout.is_finite()) {
            return Err(Error::invalid(format!(
                "--timeout must be a positive number of seconds, got {}",
                self.timeout
            )));
        }
        Ok(ServeOptions {
            model,
            host: self.host.clone(),
            port: self.port,
            api_key: self.api_key.clone(),
            max_queue: self.max_queue,
            request_timeout: Duration::from_secs_f64(self.timeout),
            max_body_bytes: self.max_body_bytes,
        })
    }
}

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model: ModelOptions,
    pub host: String,
    /// 0: a free port (the chosen one is printed).
    pub port: u16,
    /// When set, `/v1/*` requires `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests that may wait for the model; one more gets 429.
    pub max_queue: usize,
    /// Per-request limit from arrival (queueing included) to the last token.
    pub request_timeout: Duration,
    /// Request bodies over this many bytes get 413.
    pub max_body_bytes: usize,
}

/// Load the model, serve until SIGTERM / SIGINT, then stop accepting, finish the requests in
/// flight and return. `listening on http://HOST:PORT` goes to stderr once connections are accepted.
pub fn run(o: ServeOptions) -> Result<()> {
    if o.api_key.as_deref() == Some("") {
        return Err(Error::invalid("--api-key must not be empty"));
    }
    let model = Arc::new(model::ServedModel::open(&o.model)?);
    let metrics = Arc::new(metrics::Metrics::default());
    let sched = scheduler::Scheduler::new(o.max_queue, metrics);
    let worker = model.worker()?;
    let worker_thread = {
        let sched = sched.clone();
        std::thread::Builder::new()
            .name("qwen-worker".into())
            .spawn(move || sched.worker_loop(worker))
            .map_err(|e| Error::invalid(format!("cannot start the worker thread: {e}")))?
    };
    let state = Arc::new(routes::AppState {
        model: model.clone(),
        sched: sched.clone(),
        api_key_hash: o.api_key.as_deref().map(routes::key_hash),
        request_timeout: o.request_timeout,
        max_body_bytes: o.max_body_bytes,
        started: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("qwen-http")
        .build()
        .map_err(|e| Error::invalid(format!("cannot start the async runtime: {e}")))?;
    let served = rt.block_on(async {
        let addr = format!("{}:{}", o.host, o.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::invalid(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| Error::invalid(format!("{addr}: {e}")))?;
        eprintln!(
            "serving {} ({}) with a {}-token context; queue {}, time limit {} s{}",
            model.id(),
            model.backend_name(),
            model.context_len(),
            o.max_queue,
            o.request_timeout.as_secs_f64(),
            if o.api_key.is_some() { ", API key required on /v1" } else { "" }
        );
        eprintln!("listening on http://{local}");
        let sched = sched.clone();
        axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                eprintln!(
                    "shutting down: no new connections; finishing {} running and {} queued requests",
                    sched.running(),
                    sched.queued()
                );
            })
            .await
            .map_err(|e| Error::invalid(format!("server error: {e}")))
    });
    // Every connection has closed: no handler waits on the worker any more.
    sched.close();
    let _ = worker_thread.join();
    drop(rt);
    served?;
    eprintln!("server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
