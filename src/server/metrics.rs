//! Counters and histograms for `GET /metrics` (Prometheus text format 0.0.4).
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A cumulative histogram with fixed upper bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<(Vec<u64>, f64, u64)>, // (count per bucket, sum, count)
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, state: Mutex::new((vec![0; bounds.len()], 0.0, 0)) }
    }

    pub fn observe(&self, x: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.bounds.iter().position(|&b| x <= b) {
            s.0[i] += 1;
        }
        s.1 += x;
        s.2 += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&s.0) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", s.2, s.1, s.2);
    }
}

const TTFT_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const ITL_BOUNDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const E2E_BOUNDS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

pub struct Metrics {
    /// (route, status) → responses.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub cancelled: AtomicU64,
    /// Arrival to the first generated token, queueing included.
    pub ttft: Histogram,
    /// Between consecutive generated tokens of one sequence.
    pub itl: Histogram,
    /// Arrival to the last token.
    pub e2e: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BOUNDS),
            itl: Histogram::new(ITL_BOUNDS),
            e2e: Histogram::new(E2E_BOUNDS),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, route: &'static str, status: u16) {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry((route, status)).or_default() += 1;
    }

    pub fn add_tokens(&self, prompt: usize, completion: usize) {
        self.prompt_tokens.fetch_add(prompt as u64, Ordering::Relaxed);
        self.completion_tokens.fetch_add(completion as u64, Ordering::Relaxed);
    }

    /// The whole exposition; `queued` / `running` are read from the scheduler at scrape time.
    pub fn render(&self, queued: usize, running: usize) -> String {
        let mut out = String::new();
        out += "# HELP qwen_requests_total HTTP requests answered, by route and status.\n# TYPE qwen_requests_total counter\n";
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "qwen_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        let counters = [
            ("qwen_prompt_tokens_total", "Prompt tokens prefilled.", &self.prompt_tokens),
            ("qwen_generation_tokens_total", "Tokens generated.", &self.completion_tokens),
            (
                "qwen_cancelled_total",
                "Generations cancelled (client gone, stream dropped, time limit).",
                &self.cancelled,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP qwen_queue_depth Requests waiting for the model.\n# TYPE qwen_queue_depth gauge\nqwen_queue_depth {queued}"
        );
        let _ = writeln!(
            out,
            "# HELP qwen_requests_running Requests decoding now.\n# TYPE qwen_requests_running gauge\nqwen_requests_running {running}"
        );
        self.ttft.render(&mut out, "qwen_time_to_first_token_seconds", "Request arrival to first generated token.");
        self.itl.render(&mut out, "qwen_inter_token_latency_seconds", "Time between consecutive generated tokens.");
        self.e2e.render(&mut out, "qwen_request_duration_seconds", "Request arrival to its last generated token.");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        for x in [0.5, 1.5, 1.7, 9.0] {
            h.observe(x);
        }
        let mut s = String::new();
        h.render(&mut s, "h", "help");
        assert!(s.contains("h_bucket{le=\"1\"} 1\n"), "{s}");
        assert!(s.contains("h_bucket{le=\"2\"} 3\n"), "{s}");
        assert!(s.contains("h_bucket{le=\"+Inf\"} 4\nh_sum 12.7\nh_count 4\n"), "{s}");
    }
}
