//! The server's Prometheus metrics, kept with the Prometheus organisation's
//! `prometheus-client` and exposed in the Prometheus text format (0.0.4).
//!
//! Counters and histograms are updated as requests are answered; what
//! other parts own (the scheduler's queue, the KV cache, plugin memory,
//! the process's memory and its limit) is read when `/metrics` is scraped
//! and set just before encoding.

use crate::scheduler::Stats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

/// Upper bounds (seconds) shared by the latency histograms.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds (tokens/s) for generation speed.
const SPEED_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0];

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusClass {
    /// `4xx` or `5xx`.
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginOutcome {
    namespace: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueClass {
    class: &'static str,
}

type Histograms = Family<RouteOnly, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// What the server reads from elsewhere at each scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// The scheduler's queue and counts.
    pub stats: Stats,
    /// Whether the model is loaded.
    pub model_loaded: bool,
    /// Key/value cache bytes held now and bytes a position takes.
    pub kv_cache: (u64, u64),
    /// Plugin linear memory held now and the budget, when plugins run.
    pub plugin_memory: Option<(usize, usize)>,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    errors: Family<StatusClass, Counter>,
    latency: Histograms,
    ttft: Histogram,
    speed: Histogram,
    plugin_calls: Family<PluginOutcome, Counter>,
    queue_depth: Family<QueueClass, Gauge>,
    in_flight: Gauge,
    generations: Counter,
    rejected: Counter,
    expired: Counter,
    abandoned: Counter,
    model_loaded: Gauge,
    model_load_attempts: Counter,
    model_loads: Counter,
    resident: Gauge,
    memory_limit: Gauge,
    kv_bytes: Gauge,
    kv_per_token: Gauge,
    plugin_memory: Gauge,
    plugin_budget: Gauge,
    /// The last few figures, for the status page.
    recent: std::sync::Mutex<Recent>,
}

/// How many of each recent figure are kept.
const RECENT_TIMINGS: usize = 50;
const RECENT_REQUESTS: usize = 100;
/// Plugin call tallies kept by (namespace, outcome); namespaces come from
/// the active set and the MCP prefixes, but a bound keeps it so.
const MAX_TALLIES: usize = 256;

/// The recent figures `/v1/status` shows, oldest first.
#[derive(Debug, Default)]
struct Recent {
    ttft_ms: std::collections::VecDeque<f64>,
    tokens_per_second: std::collections::VecDeque<f64>,
    requests: std::collections::VecDeque<RecentRequest>,
    plugin_calls: std::collections::BTreeMap<(String, &'static str), u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct RecentRequest {
    at_ms: u64,
    route: &'static str,
    status: u16,
    elapsed_ms: f64,
}

fn push_capped<T>(queue: &mut std::collections::VecDeque<T>, value: T, cap: usize) {
    if queue.len() == cap {
        queue.pop_front();
    }
    queue.push_back(value);
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ttft: latency_histogram(),
            speed: Histogram::new(SPEED_BUCKETS.iter().copied()),
            plugin_calls: Family::default(),
            queue_depth: Family::default(),
            in_flight: Gauge::default(),
            generations: Counter::default(),
            rejected: Counter::default(),
            expired: Counter::default(),
            abandoned: Counter::default(),
            model_loaded: Gauge::default(),
            model_load_attempts: Counter::default(),
            model_loads: Counter::default(),
            resident: Gauge::default(),
            memory_limit: Gauge::default(),
            kv_bytes: Gauge::default(),
            kv_per_token: Gauge::default(),
            plugin_memory: Gauge::default(),
            plugin_budget: Gauge::default(),
            recent: Default::default(),
            registry: Registry::default(),
        };
        // (prometheus-client adds `_total` to counters, and a full stop to
        // each help text.)
        let r = &mut registry;
        r.register(
            "hearth_requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        r.register(
            "hearth_error_responses",
            "Answers with a 4xx or 5xx status, by class",
            m.errors.clone(),
        );
        r.register(
            "hearth_request_duration_seconds",
            "Time to answer, by route (a streamed chat: to its headers)",
            m.latency.clone(),
        );
        r.register(
            "hearth_time_to_first_token_seconds",
            "From a streamed chat request to its first token",
            m.ttft.clone(),
        );
        r.register(
            "hearth_generation_tokens_per_second",
            "Decode speed per generation",
            m.speed.clone(),
        );
        r.register(
            "hearth_plugin_calls",
            "Plugin tool calls made for the model, by namespace and outcome",
            m.plugin_calls.clone(),
        );
        r.register(
            "hearth_queue_depth",
            "Requests waiting for the model, by class",
            m.queue_depth.clone(),
        );
        r.register(
            "hearth_in_flight_generations",
            "Generations running now",
            m.in_flight.clone(),
        );
        r.register(
            "hearth_generations",
            "Generations run to an end",
            m.generations.clone(),
        );
        r.register(
            "hearth_rejected",
            "Requests refused because the queue was full",
            m.rejected.clone(),
        );
        r.register(
            "hearth_expired",
            "Requests whose deadline passed in the queue",
            m.expired.clone(),
        );
        r.register(
            "hearth_abandoned",
            "Queued requests whose client went away",
            m.abandoned.clone(),
        );
        r.register(
            "hearth_model_loaded",
            "Whether the model is loaded",
            m.model_loaded.clone(),
        );
        r.register(
            "hearth_model_load_attempts",
            "Model loads this process began",
            m.model_load_attempts.clone(),
        );
        r.register(
            "hearth_model_loads",
            "Model loads this process completed",
            m.model_loads.clone(),
        );
        r.register(
            "hearth_resident_memory_bytes",
            "Resident memory of the process",
            m.resident.clone(),
        );
        r.register(
            "hearth_memory_limit_bytes",
            "The memory the process may use: its cgroup's limit or HEARTH_MEMORY_LIMIT, else the machine's (0 if none can be read)",
            m.memory_limit.clone(),
        );
        r.register(
            "hearth_kv_cache_bytes",
            "Key/value cache held by the sequences now",
            m.kv_bytes.clone(),
        );
        r.register(
            "hearth_kv_cache_bytes_per_token",
            "Key/value cache one position of a sequence takes",
            m.kv_per_token.clone(),
        );
        r.register(
            "hearth_plugin_memory_bytes",
            "Linear memory held by plugin calls now",
            m.plugin_memory.clone(),
        );
        r.register(
            "hearth_plugin_memory_budget_bytes",
            "What all plugin calls together may hold",
            m.plugin_budget.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// A request's whole time, for the status page's recent requests (a
    /// streamed answer's when its stream ends, not when its headers go).
    pub fn recent_request(&self, route: &'static str, status: u16, seconds: f64) {
        // The status page's own polling, the page's files and probes
        // would crowd out the requests worth seeing.
        if matches!(
            route,
            "/" | "/assets/{file}" | "/v1/status" | "/healthz" | "/readyz" | "/metrics"
        ) {
            return;
        }
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        push_capped(
            &mut recent.requests,
            RecentRequest {
                at_ms,
                route,
                status,
                elapsed_ms: seconds * 1e3,
            },
            RECENT_REQUESTS,
        );
    }

    /// One request answered, under its route's label.
    pub fn request(&self, route: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_string(),
                status,
            })
            .inc();
        if status >= 400 {
            let class = if status >= 500 { "5xx" } else { "4xx" };
            self.errors.get_or_create(&StatusClass { class }).inc();
        }
        self.latency
            .get_or_create(&RouteOnly {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Time from a chat request's arrival to its first token.
    pub fn time_to_first_token(&self, seconds: f64) {
        self.ttft.observe(seconds);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        push_capped(&mut recent.ttft_ms, seconds * 1e3, RECENT_TIMINGS);
    }

    /// Decode speed of one generation.
    pub fn tokens_per_second(&self, v: f64) {
        self.speed.observe(v);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        push_capped(&mut recent.tokens_per_second, v, RECENT_TIMINGS);
    }

    /// One plugin tool call and how it ended (`ok`, `error`, `timeout`, `trap`).
    pub fn plugin_call(&self, namespace: &str, outcome: &'static str) {
        self.plugin_calls
            .get_or_create(&PluginOutcome {
                namespace: namespace.to_string(),
                outcome,
            })
            .inc();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), outcome);
        if recent.plugin_calls.len() < MAX_TALLIES || recent.plugin_calls.contains_key(&key) {
            *recent.plugin_calls.entry(key).or_default() += 1;
        }
    }

    /// The recent figures, oldest first: time to first token (ms) and
    /// decode speed of the last generations, and the last requests (the
    /// status page's own, the page's files and probes left out).
    pub fn recent(&self) -> serde_json::Value {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "ttft_ms": recent.ttft_ms,
            "tokens_per_second": recent.tokens_per_second,
            "requests": recent.requests,
        })
    }

    /// Plugin calls since start, by namespace and outcome.
    pub fn plugin_call_tallies(&self) -> serde_json::Value {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .plugin_calls
            .iter()
            .map(|((namespace, outcome), count)| {
                serde_json::json!({"namespace": namespace, "outcome": outcome, "count": count})
            })
            .collect()
    }

    /// A model load began (pulling the file first, if need be).
    pub fn model_load_started(&self) {
        self.model_load_attempts.inc();
    }

    /// A model load completed.
    pub fn model_load_completed(&self) {
        self.model_loads.inc();
    }

    /// The exposition text, with what `scrape` read just now.
    pub fn render(&self, scrape: &Scrape) -> String {
        let s = &scrape.stats;
        for (class, n) in ["interactive", "plugin", "background"].iter().zip(s.queued) {
            self.queue_depth
                .get_or_create(&QueueClass { class })
                .set(n as i64);
        }
        self.in_flight.set(s.in_flight as i64);
        // Counted by the scheduler: set, not added to.
        for (counter, value) in [
            (&self.generations, s.completed),
            (&self.rejected, s.rejected_full),
            (&self.expired, s.expired),
            (&self.abandoned, s.abandoned),
        ] {
            counter.inner().store(value, Ordering::Relaxed);
        }
        self.model_loaded.set(i64::from(scrape.model_loaded));
        if let Some(rss) = resident_bytes() {
            self.resident.set(rss as i64);
        }
        self.memory_limit
            .set(memory_limit().map_or(0, |b| b.min(i64::MAX as u64) as i64));
        self.kv_bytes.set(scrape.kv_cache.0 as i64);
        self.kv_per_token.set(scrape.kv_cache.1 as i64);
        if let Some((used, budget)) = scrape.plugin_memory {
            self.plugin_memory.set(used as i64);
            self.plugin_budget.set(budget as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The memory the process may use: the smallest of its cgroup v2 limit
/// (`memory.max`, when not `max`), `HEARTH_MEMORY_LIMIT`, and the
/// machine's memory.
fn memory_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(str::to_string)
        })
        .and_then(|path| {
            std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim())).ok()
        })
        .and_then(|v| v.trim().parse::<u64>().ok());
    let configured = std::env::var("HEARTH_MEMORY_LIMIT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    [cgroup, configured, machine].into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_family_in_the_text_format() {
        let m = Metrics::default();
        m.request("/v1/chat/completions", 200, 0.2);
        m.request("/v1/chat/completions", 503, 0.001);
        m.request("/v1/models", 401, 0.001);
        m.plugin_call("calc", "ok");
        m.model_load_started();
        m.model_load_completed();
        let text = m.render(&Scrape {
            model_loaded: true,
            kv_cache: (1 << 20, 4096),
            plugin_memory: Some((10, 20)),
            ..Scrape::default()
        });
        for line in [
            "# TYPE hearth_requests_total counter",
            "hearth_requests_total{route=\"/v1/chat/completions\",status=\"503\"} 1",
            "hearth_error_responses_total{class=\"5xx\"} 1",
            "hearth_error_responses_total{class=\"4xx\"} 1",
            "hearth_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"0.25\"} 2",
            "hearth_request_duration_seconds_count{route=\"/v1/models\"} 1",
            "hearth_plugin_calls_total{namespace=\"calc\",outcome=\"ok\"} 1",
            "hearth_queue_depth{class=\"interactive\"} 0",
            "hearth_model_loaded 1",
            "hearth_model_load_attempts_total 1",
            "hearth_model_loads_total 1",
            "hearth_kv_cache_bytes 1048576",
            "hearth_plugin_memory_budget_bytes 20",
            "# TYPE hearth_memory_limit_bytes gauge",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(memory_limit().is_some_and(|b| b > 0));
    }

    /// The dashboard an operator imports reads only metrics hearth exposes:
    /// renaming one here fails this test until the dashboard follows.
    #[test]
    fn the_grafana_dashboard_reads_metrics_that_exist() {
        let m = Metrics::default();
        m.request("/v1/models", 500, 0.1);
        m.plugin_call("calc", "ok");
        let text = m.render(&Scrape {
            plugin_memory: Some((10, 20)),
            ..Scrape::default()
        });
        let dashboard = include_str!("../../../deploy/grafana/hearth.json");
        let mut used = 0;
        for (at, _) in dashboard.match_indices("hearth_") {
            let name: String = dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if name == "hearth_" {
                continue;
            }
            used += 1;
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&name) && l[name.len()..].starts_with(['{', ' '])),
                "the dashboard reads {name}, which /metrics does not expose"
            );
        }
        assert!(used > 15, "{used}");
    }
}
