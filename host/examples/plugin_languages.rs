//! What a plugin costs by language: component size, cold compile, cached
//! load, and the latency of a call on a fresh instance (p50/p99), with the
//! bundled Rust `calc` measured in the same run as the baseline.
//!
//! Each argument is `DIR TOOL ARGS`, three words: a built plugin folder
//! (`plugin.toml` and `plugin.wasm`, as `hearth plugin build` leaves it), a
//! tool of it and its JSON arguments:
//!
//! `cargo run --release -p hearth --example plugin_languages -- \
//!     examples/plugins/python add '{"key":"a","amount":1}' ...`
//!
//! `bench/plugins-languages/run.sh` builds the examples and runs this.

use hearth::bundled::BUNDLED;
use hearth::plugins::{CallScope, Manifest, Runtime, RuntimeOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// Calls timed per plugin, in each of the two runs.
const CALLS: usize = 2000;
/// The pause between calls in the spaced run: tool calls arrive between
/// model steps, not back to back, and a slow-to-instantiate plugin's spare
/// instance is made in that time.
const GAP: Duration = Duration::from_millis(3);

struct Subject {
    label: String,
    manifest: Manifest,
    bytes: Vec<u8>,
    tool: String,
    args: String,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |pages| pages * 4096.0 / (1 << 20) as f64)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let words: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        words.len().is_multiple_of(3),
        "arguments come in threes: DIR TOOL ARGS"
    );
    let calc = BUNDLED
        .iter()
        .find(|b| b.source.ends_with("calc"))
        .expect("calc is bundled");
    let mut subjects = vec![Subject {
        label: "rust (bundled calc, baseline)".into(),
        manifest: Manifest::parse(calc.manifest, "plugin.toml").unwrap(),
        bytes: calc.component.to_vec(),
        tool: "eval".into(),
        args: r#"{"expression":"6*7"}"#.into(),
    }];
    for chunk in words.chunks(3) {
        let dir = Path::new(&chunk[0]);
        let manifest = Manifest::from_file(&dir.join("plugin.toml")).unwrap();
        let lang = hearth::kits::Lang::detect(dir).unwrap();
        subjects.push(Subject {
            label: format!("{lang} ({})", manifest.namespace),
            manifest,
            bytes: std::fs::read(dir.join("plugin.wasm")).unwrap(),
            tool: chunk[1].clone(),
            args: chunk[2].clone(),
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let scratch = tempfile::tempdir().unwrap();
        println!(
            "| plugin | component | cold load (compile) | cached load | call p50 / p99, back to back | p50 vs Rust | call p50 / p99, {} ms apart |",
            GAP.as_millis()
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let mut baseline = None;
        let mut keep = Vec::new();
        for (i, s) in subjects.iter().enumerate() {
            let dir = scratch.path().join(i.to_string());
            // Cold: nothing cached for this runtime's data folder.
            let cold = Runtime::new(RuntimeOptions::in_dir(&dir)).unwrap();
            let started = Instant::now();
            cold.load(s.manifest.clone(), &s.bytes, None).await.unwrap();
            let cold_load = started.elapsed();
            drop(cold);
            // Cached: a new runtime (a new process, in effect) over the same
            // folder: the compiled artifact and the description are reused.
            let runtime = Runtime::new(RuntimeOptions::in_dir(&dir)).unwrap();
            let started = Instant::now();
            let plugin = runtime
                .load(s.manifest.clone(), &s.bytes, None)
                .await
                .unwrap();
            let cached_load = started.elapsed();
            runtime.activate(plugin.clone());
            let mut runs = Vec::new();
            for gap in [Duration::ZERO, GAP] {
                let mut times = Vec::with_capacity(CALLS);
                for _ in 0..CALLS {
                    if !gap.is_zero() {
                        tokio::time::sleep(gap).await;
                    }
                    let started = Instant::now();
                    runtime
                        .invoke(&plugin, &s.tool, &s.args, CallScope::new("bench"))
                        .await
                        .unwrap();
                    times.push(started.elapsed());
                }
                times.sort();
                runs.push((percentile(&times, 0.5), percentile(&times, 0.99)));
            }
            let ((p50, p99), (spaced50, spaced99)) = (runs[0], runs[1]);
            let base = *baseline.get_or_insert(p50);
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            println!(
                "| {} | {:.1} KB | {:.0} ms | {:.1} ms | {:.0} / {:.0} us | {:.1}x | {:.0} / {:.0} us |",
                s.label,
                s.bytes.len() as f64 / 1e3,
                cold_load.as_secs_f64() * 1e3,
                cached_load.as_secs_f64() * 1e3,
                us(p50),
                us(p99),
                p50.as_secs_f64() / base.as_secs_f64(),
                us(spaced50),
                us(spaced99),
            );
            keep.push(runtime);
        }
        println!(
            "\nresident memory with every plugin loaded: {:.0} MiB",
            rss_mib()
        );
    });
}
