//! Prometheus text-format metrics, kept in memory by the server.

use crate::scheduler::Stats;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (seconds) shared by the latency histograms.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds (tokens/s) for generation speed.
const SPEED_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (c, b) in self.counts.iter_mut().zip(bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in bounds.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    ttft: Histogram,
    speed: Histogram,
    plugin_calls: BTreeMap<(String, &'static str), u64>,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// One request answered.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let mut m = self.inner.lock().expect("metrics");
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        m.latency
            .entry(route.to_string())
            .or_default()
            .observe(LATENCY_BUCKETS, seconds);
    }

    /// Time from a chat request's arrival to its first token.
    pub fn time_to_first_token(&self, seconds: f64) {
        self.inner
            .lock()
            .expect("metrics")
            .ttft
            .observe(LATENCY_BUCKETS, seconds);
    }

    /// Decode speed of one generation.
    pub fn tokens_per_second(&self, v: f64) {
        self.inner
            .lock()
            .expect("metrics")
            .speed
            .observe(SPEED_BUCKETS, v);
    }

    /// One plugin tool call and how it ended (`ok`, `error`, `timeout`, `trap`).
    pub fn plugin_call(&self, namespace: &str, outcome: &'static str) {
        *self
            .inner
            .lock()
            .expect("metrics")
            .plugin_calls
            .entry((namespace.to_string(), outcome))
            .or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self, stats: &Stats, model_loaded: bool) -> String {
        let m = self.inner.lock().expect("metrics");
        let mut out = String::new();
        out.push_str("# HELP hearth_requests_total HTTP requests by route and status.\n# TYPE hearth_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "hearth_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP hearth_request_duration_seconds Time to answer, by route.\n# TYPE hearth_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            h.render(
                &mut out,
                "hearth_request_duration_seconds",
                &format!("route=\"{route}\""),
                LATENCY_BUCKETS,
            );
        }
        out.push_str("# HELP hearth_time_to_first_token_seconds From a streamed chat request to its first token.\n# TYPE hearth_time_to_first_token_seconds histogram\n");
        m.ttft.render(
            &mut out,
            "hearth_time_to_first_token_seconds",
            "",
            LATENCY_BUCKETS,
        );
        out.push_str("# HELP hearth_generation_tokens_per_second Decode speed per generation.\n# TYPE hearth_generation_tokens_per_second histogram\n");
        m.speed.render(
            &mut out,
            "hearth_generation_tokens_per_second",
            "",
            SPEED_BUCKETS,
        );
        out.push_str("# HELP hearth_queue_depth Requests waiting for the model, by class.\n# TYPE hearth_queue_depth gauge\n");
        for (class, n) in ["interactive", "plugin", "background"]
            .iter()
            .zip(stats.queued)
        {
            let _ = writeln!(out, "hearth_queue_depth{{class=\"{class}\"}} {n}");
        }
        let _ = write!(
            out,
            "# HELP hearth_in_flight_generations Generations running now.\n# TYPE hearth_in_flight_generations gauge\nhearth_in_flight_generations {}\n\
             # HELP hearth_generations_total Generations run to an end.\n# TYPE hearth_generations_total counter\nhearth_generations_total {}\n\
             # HELP hearth_rejected_total Requests refused because the queue was full.\n# TYPE hearth_rejected_total counter\nhearth_rejected_total {}\n\
             # HELP hearth_expired_total Requests whose deadline passed in the queue.\n# TYPE hearth_expired_total counter\nhearth_expired_total {}\n\
             # HELP hearth_abandoned_total Queued requests whose client went away.\n# TYPE hearth_abandoned_total counter\nhearth_abandoned_total {}\n\
             # HELP hearth_model_loaded Whether the model is loaded.\n# TYPE hearth_model_loaded gauge\nhearth_model_loaded {}\n",
            stats.in_flight,
            stats.completed,
            stats.rejected_full,
            stats.expired,
            stats.abandoned,
            u8::from(model_loaded)
        );
        out.push_str("# HELP hearth_plugin_calls_total Plugin tool calls made for the model, by namespace and outcome.\n# TYPE hearth_plugin_calls_total counter\n");
        for ((ns, outcome), n) in &m.plugin_calls {
            let _ = writeln!(
                out,
                "hearth_plugin_calls_total{{namespace=\"{ns}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        if let Some(rss) = resident_bytes() {
            let _ = writeln!(
                out,
                "# HELP hearth_resident_memory_bytes Resident memory of the process.\n# TYPE hearth_resident_memory_bytes gauge\nhearth_resident_memory_bytes {rss}"
            );
        }
        out
    }
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
