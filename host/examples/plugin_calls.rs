//! Cost of one plugin call without HTTP: the bundled `calc.eval`, each call
//! on a fresh instance under every limit. TASKS tasks (default 1) call one
//! after another on a runtime with as many worker threads; prints calls per
//! second and the process's CPU time per call.
//!
//! `cargo run --release -p hearth --example plugin_calls [CALLS] [TASKS]`

use hearth::bundled::BUNDLED;
use hearth::plugins::{CallScope, Manifest, Runtime, RuntimeOptions};
use std::time::Instant;

fn cpu_seconds() -> f64 {
    // utime + stime of the whole process, in clock ticks (100 per second
    // on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = after.get(11)?.parse().ok()?;
            let stime: f64 = after.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: usize = args
        .next()
        .map_or(20_000, |n| n.parse().expect("CALLS is a number"));
    let tasks: usize = args
        .next()
        .map_or(1, |n| n.parse().expect("TASKS is a number"));
    // As `hearth serve` logs (its plugin spans included) when HEARTH_LOG is
    // set, to see what that costs.
    if let Ok(filter) = std::env::var("HEARTH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(tasks)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = std::env::temp_dir().join(format!("hearth-plugin-calls-{}", std::process::id()));
        let runtime = Runtime::new(RuntimeOptions::in_dir(&dir)).unwrap();
        let calc = BUNDLED
            .iter()
            .find(|b| b.source.ends_with("calc"))
            .expect("calc is bundled");
        let manifest = Manifest::parse(calc.manifest, "plugin.toml").unwrap();
        let plugin = runtime.load(manifest, calc.component, None).await.unwrap();
        runtime.activate(plugin);
        for round in 0..3 {
            let (started, cpu) = (Instant::now(), cpu_seconds());
            let workers: Vec<_> = (0..tasks)
                .map(|t| {
                    let runtime = runtime.clone();
                    tokio::spawn(async move {
                        for i in 0..calls / tasks {
                            let args =
                                format!(r#"{{"expression":"{}*{}+{t}"}}"#, i % 997, i % 991 + 1);
                            runtime
                                .invoke_qualified("calc.eval", &args, CallScope::new("bench"))
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await.unwrap();
            }
            let wall = started.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu;
            println!(
                "round {round}: {tasks} tasks, {:.0} calls/s, {:.1} us CPU per call",
                calls as f64 / wall,
                cpu / calls as f64 * 1e6
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}
