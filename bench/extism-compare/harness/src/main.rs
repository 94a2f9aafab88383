//! Side-by-side benchmark of hearth's plugin invoke path against Extism.
//!
//! Usage: `extism-compare <guest-hearth.wasm> <guest-extism.wasm>`
//! (or set `HEARTH_WASM` and `EXTISM_WASM`). Both guests implement `upper`:
//! `{"text": "..."}` in, `{"text": "<UPPERCASED>"}` out, with the same
//! serde_json steps inside.
//!
//! Two paths, three payload sizes (text of 10 B, 10 KB, 1 MB):
//!
//! - **fresh**: hearth `Runtime::invoke` (fresh `Store` + instance from the
//!   pre-instantiated component, every limit, JSON checks, drop) against
//!   Extism `Plugin::new_from_compiled` + `call` + drop, from a
//!   `CompiledPlugin` built once;
//! - **warm**: one hearth `WarmInstance` and one Extism `Plugin`, called
//!   repeatedly.
//!
//! Both sides get the same limits: 64 MiB of linear memory and a 10 s time
//! limit (hearth from `plugin.toml`, Extism from its manifest; set
//! `EXTISM_LIMITS=0` to run Extism without them).
//!
//! Method: outputs of both are checked against the expected JSON first (the
//! process exits 1 on a mismatch). Then, per size and path, each side is
//! warmed up and a batch size N is picked so one batch takes about
//! `BENCH_BATCH_MS` (default 100 ms); then `BENCH_ROUNDS` (default 11)
//! interleaved rounds each time one batch of hearth and one of Extism
//! (alternating which goes first). The table gives the median per-call time
//! over the rounds and the ratio hearth / Extism.

use hearth::plugins::{CallScope, LoadedPlugin, Manifest, Runtime, RuntimeOptions, WarmInstance};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MANIFEST: &str = include_str!("../../guest-hearth/plugin.toml");
/// The same limits as `guest-hearth/plugin.toml`.
const MEMORY_PAGES: u32 = 64 * 1024 * 1024 / 65536;
const TIME_LIMIT: Duration = Duration::from_millis(10_000);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn fail(message: impl std::fmt::Display) -> BoxError {
    message.to_string().into()
}

/// `len` bytes of lowercase ASCII text with spaces and digits.
fn payload(len: usize) -> String {
    const WORDS: &[u8] = b"the quick brown fox jumps over the lazy dog 0123456789 ";
    WORDS
        .iter()
        .copied()
        .cycle()
        .take(len)
        .map(char::from)
        .collect()
}

struct Hearth {
    runtime: Runtime,
    plugin: Arc<LoadedPlugin>,
}

impl Hearth {
    async fn fresh(&self, args: &str) -> Result<String, BoxError> {
        self.runtime
            .invoke(&self.plugin, "upper", args, CallScope::new("bench"))
            .await
            .map_err(|e| fail(format!("hearth invoke: {e}")))
    }

    async fn warm(&self) -> Result<WarmInstance, BoxError> {
        self.runtime
            .instantiate(&self.plugin)
            .await
            .map_err(|e| fail(format!("hearth instantiate: {e}")))
    }
}

struct Extism {
    compiled: extism::CompiledPlugin,
}

impl Extism {
    fn instance(&self) -> Result<extism::Plugin, BoxError> {
        extism::Plugin::new_from_compiled(&self.compiled)
            .map_err(|e| fail(format!("extism new_from_compiled: {e:#}")))
    }

    /// One call on a fresh plugin; returns the output length.
    fn fresh(&self, args: &str) -> Result<usize, BoxError> {
        let mut plugin = self.instance()?;
        let out = plugin
            .call::<&str, &str>("upper", args)
            .map_err(|e| fail(format!("extism call: {e:#}")))?;
        Ok(out.len())
    }

    /// Like [`Extism::fresh`] but returns the output, for checking.
    fn fresh_output(&self, args: &str) -> Result<String, BoxError> {
        let mut plugin = self.instance()?;
        let out = plugin
            .call::<&str, &str>("upper", args)
            .map_err(|e| fail(format!("extism call: {e:#}")))?;
        Ok(out.to_string())
    }
}

fn warm_extism_call(plugin: &mut extism::Plugin, args: &str) -> Result<usize, BoxError> {
    let out = plugin
        .call::<&str, &str>("upper", args)
        .map_err(|e| fail(format!("extism call: {e:#}")))?;
    Ok(out.len())
}

/// The state one side of one path needs across batches.
enum Side<'a> {
    HearthFresh(&'a Hearth),
    HearthWarm(WarmInstance),
    ExtismFresh(&'a Extism),
    ExtismWarm(extism::Plugin),
}

impl Side<'_> {
    /// Runs `n` calls; returns the elapsed time.
    async fn batch(&mut self, args: &str, n: usize) -> Result<Duration, BoxError> {
        let start = Instant::now();
        match self {
            Side::HearthFresh(h) => {
                for _ in 0..n {
                    black_box(h.fresh(args).await?.len());
                }
            }
            Side::HearthWarm(inst) => {
                for _ in 0..n {
                    let out = inst
                        .invoke("upper", args)
                        .await
                        .map_err(|e| fail(format!("hearth warm invoke: {e}")))?;
                    black_box(out.len());
                }
            }
            Side::ExtismFresh(x) => {
                for _ in 0..n {
                    black_box(x.fresh(args)?);
                }
            }
            Side::ExtismWarm(plugin) => {
                for _ in 0..n {
                    black_box(warm_extism_call(plugin, args)?);
                }
            }
        }
        Ok(start.elapsed())
    }

    /// Warms up for about `target`, then picks N so a batch takes about
    /// `target`.
    async fn calibrate(&mut self, args: &str, target: Duration) -> Result<usize, BoxError> {
        let mut n = 1usize;
        loop {
            let took = self.batch(args, n).await?;
            if took >= target / 4 || n >= 1 << 24 {
                let per_call = took.as_secs_f64() / n as f64;
                return Ok(((target.as_secs_f64() / per_call).round() as usize).max(1));
            }
            n *= 2;
        }
    }
}

struct Row {
    size: &'static str,
    path: &'static str,
    hearth: Stats,
    extism: Stats,
}

/// Per-call times of the rounds, in microseconds.
struct Stats {
    n: usize,
    per_call_us: Vec<f64>,
}

impl Stats {
    fn median(&self) -> f64 {
        let mut v = self.per_call_us.clone();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    }
    fn min(&self) -> f64 {
        self.per_call_us
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.per_call_us.iter().copied().fold(0.0, f64::max)
    }
}

async fn measure(
    hearth: &mut Side<'_>,
    extism: &mut Side<'_>,
    args: &str,
    rounds: usize,
    target: Duration,
) -> Result<(Stats, Stats), BoxError> {
    let nh = hearth.calibrate(args, target).await?;
    let nx = extism.calibrate(args, target).await?;
    let mut h = Stats {
        n: nh,
        per_call_us: Vec::new(),
    };
    let mut x = Stats {
        n: nx,
        per_call_us: Vec::new(),
    };
    for round in 0..rounds {
        let per_call = |d: Duration, n: usize| d.as_secs_f64() * 1e6 / n as f64;
        if round % 2 == 0 {
            h.per_call_us
                .push(per_call(hearth.batch(args, nh).await?, nh));
            x.per_call_us
                .push(per_call(extism.batch(args, nx).await?, nx));
        } else {
            x.per_call_us
                .push(per_call(extism.batch(args, nx).await?, nx));
            h.per_call_us
                .push(per_call(hearth.batch(args, nh).await?, nh));
        }
    }
    Ok((h, x))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BoxError> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| fail(format!("{name}={v} is not a valid value"))),
        Err(_) => Ok(default),
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0}")
    } else if us >= 10.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.2}")
    }
}

async fn run() -> Result<(), BoxError> {
    let mut argv = std::env::args().skip(1);
    let hearth_path = argv
        .next()
        .or_else(|| std::env::var("HEARTH_WASM").ok())
        .ok_or_else(|| fail("usage: extism-compare <guest-hearth.wasm> <guest-extism.wasm> (or HEARTH_WASM / EXTISM_WASM)"))?;
    let extism_path = argv
        .next()
        .or_else(|| std::env::var("EXTISM_WASM").ok())
        .ok_or_else(|| fail("usage: extism-compare <guest-hearth.wasm> <guest-extism.wasm> (or HEARTH_WASM / EXTISM_WASM)"))?;
    let rounds: usize = env_or("BENCH_ROUNDS", 11)?;
    let target = Duration::from_millis(env_or("BENCH_BATCH_MS", 100)?);
    if rounds == 0 {
        return Err(fail("BENCH_ROUNDS must be at least 1"));
    }

    let hearth_bytes =
        std::fs::read(&hearth_path).map_err(|e| fail(format!("reading {hearth_path}: {e}")))?;
    let extism_bytes =
        std::fs::read(&extism_path).map_err(|e| fail(format!("reading {extism_path}: {e}")))?;

    // hearth: engine, linker, cache and kv store under a throwaway directory.
    let dir = tempfile::tempdir().map_err(|e| fail(format!("tempdir: {e}")))?;
    let runtime = Runtime::new(RuntimeOptions::in_dir(dir.path()))
        .map_err(|e| fail(format!("hearth runtime: {e}")))?;
    let manifest =
        Manifest::parse(MANIFEST, "plugin.toml").map_err(|e| fail(format!("plugin.toml: {e}")))?;
    let plugin = runtime
        .load(manifest, &hearth_bytes, None)
        .await
        .map_err(|e| fail(format!("hearth load: {e}")))?;
    let hearth = Hearth { runtime, plugin };

    // Extism: compiled once, same memory and time limits, no WASI, no cache.
    // EXTISM_LIMITS=0 leaves Extism's limits off, to see what they cost.
    let extism_limits = env_or("EXTISM_LIMITS", 1u8)? != 0;
    let mut xmanifest = extism::Manifest::new([extism::Wasm::data(extism_bytes)]);
    if extism_limits {
        xmanifest = xmanifest
            .with_memory_max(MEMORY_PAGES)
            .with_timeout(TIME_LIMIT);
    }
    let compiled = extism::PluginBuilder::new(xmanifest)
        .with_wasi(false)
        .with_cache_disabled()
        .compile()
        .map_err(|e| fail(format!("extism compile: {e:#}")))?;
    let extism = Extism { compiled };

    let sizes: [(&'static str, usize); 3] = [("10 B", 10), ("10 KB", 10_000), ("1 MB", 1_000_000)];

    // Correctness first: both sides, both paths, every size.
    for (label, len) in sizes {
        let text = payload(len);
        let args = serde_json::json!({ "text": text }).to_string();
        let expected = serde_json::json!({ "text": text.to_uppercase() }).to_string();
        let mut warm_h = hearth.warm().await?;
        let mut warm_x = extism.instance()?;
        let outputs = [
            ("hearth fresh", hearth.fresh(&args).await?),
            (
                "hearth warm",
                warm_h
                    .invoke("upper", &args)
                    .await
                    .map_err(|e| fail(format!("hearth warm invoke: {e}")))?,
            ),
            ("extism fresh", extism.fresh_output(&args)?),
            (
                "extism warm",
                warm_x
                    .call::<&str, &str>("upper", &args)
                    .map_err(|e| fail(format!("extism call: {e:#}")))?
                    .to_string(),
            ),
        ];
        for (who, out) in &outputs {
            if *out != expected {
                let show = |s: &str| s.chars().take(80).collect::<String>();
                return Err(fail(format!(
                    "{label}: {who} returned a wrong result ({} bytes, starts {:?}); expected {} bytes, starting {:?}",
                    out.len(),
                    show(out),
                    expected.len(),
                    show(&expected)
                )));
            }
        }
        println!(
            "check {label:>6}: all four outputs identical ({} bytes of correct uppercase JSON)",
            expected.len()
        );
    }

    println!(
        "\nmeasuring: {rounds} interleaved rounds per row, batches of ~{} ms; Extism limits {}",
        target.as_millis(),
        if extism_limits {
            "on (64 MiB, 10 s, like hearth's plugin.toml)"
        } else {
            "OFF (EXTISM_LIMITS=0)"
        }
    );
    let mut rows = Vec::new();
    for (label, len) in sizes {
        let text = payload(len);
        let args = serde_json::json!({ "text": text }).to_string();

        let (h, x) = measure(
            &mut Side::HearthFresh(&hearth),
            &mut Side::ExtismFresh(&extism),
            &args,
            rounds,
            target,
        )
        .await?;
        rows.push(Row {
            size: label,
            path: "fresh",
            hearth: h,
            extism: x,
        });

        let mut wh = Side::HearthWarm(hearth.warm().await?);
        let mut wx = Side::ExtismWarm(extism.instance()?);
        let (h, x) = measure(&mut wh, &mut wx, &args, rounds, target).await?;
        rows.push(Row {
            size: label,
            path: "warm",
            hearth: h,
            extism: x,
        });
        eprintln!("  done: {label}");
    }

    println!("\nmedian per-call time, microseconds (lower is better)\n");
    println!("| payload | path  | hearth µs | Extism µs | hearth / Extism |");
    println!("|---------|-------|----------:|----------:|----------------:|");
    for r in &rows {
        let (h, x) = (r.hearth.median(), r.extism.median());
        println!(
            "| {:<7} | {:<5} | {:>9} | {:>9} | {:>14.2}x |",
            r.size,
            r.path,
            fmt_us(h),
            fmt_us(x),
            h / x
        );
    }
    println!("\nspread over rounds (min..max µs per call) and batch size N\n");
    println!("| payload | path  | hearth min..max (N) | Extism min..max (N) |");
    println!("|---------|-------|---------------------|---------------------|");
    for r in &rows {
        println!(
            "| {:<7} | {:<5} | {}..{} ({}) | {}..{} ({}) |",
            r.size,
            r.path,
            fmt_us(r.hearth.min()),
            fmt_us(r.hearth.max()),
            r.hearth.n,
            fmt_us(r.extism.min()),
            fmt_us(r.extism.max()),
            r.extism.n
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("extism-compare: {e}");
        std::process::exit(1);
    }
}
