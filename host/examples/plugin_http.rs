//! What a plugin call costs through the server: `POST
//! /v1/plugins/{ns}/{tool}` on one keep-alive connection, p50/p99 per
//! plugin with the bundled Rust `calc` as the baseline of the same run, and
//! the server's resident memory with the whole set loaded; then `calc.eval`
//! over MCP (`/mcp`) beside the direct route at 1 and 32 clients.
//!
//! `cargo run --release -p hearth --example plugin_http -- HEARTH MODEL \
//!     DIR TOOL ARGS [DIR TOOL ARGS ...]`
//!
//! HEARTH is the `hearth` binary, MODEL the GGUF file the server loads, and
//! each DIR a built plugin folder (`hearth plugin build` leaves `plugin.toml`
//! and `plugin.wasm` there). The plugins are installed with `hearth plugin
//! dev` into a scratch home, so the server compiles them at start-up, as it
//! would after an install; no request pays a compile.
//! `bench/plugins-languages/run.sh` builds the examples and runs this.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Requests timed per plugin.
const CALLS: usize = 2000;
/// Requests first sent and not timed.
const WARM_UP: usize = 50;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hearth(bin: &Path, home: &Path, args: &[&str]) {
    let out = Command::new(bin)
        .args(args)
        .env("HEARTH_HOME", home)
        .output()
        .expect("run hearth");
    assert!(
        out.status.success(),
        "hearth {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Calls per client in the MCP comparison (after as many untimed).
const CALLS_PER_CLIENT: usize = 400;

/// `clients` connections calling `calc.eval` at once, directly or over MCP;
/// the latency of every timed call.
async fn clients_calling(addr: &str, clients: usize, mcp: bool) -> Vec<Duration> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let addr = addr.to_string();
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut times = Vec::with_capacity(CALLS_PER_CLIENT);
            for i in 0..2 * CALLS_PER_CLIENT {
                let builder = hyper::Request::builder()
                    .method("POST")
                    // /mcp answers loopback names only (DNS rebinding).
                    .header("host", addr.as_str())
                    .header("content-type", "application/json");
                let (builder, body) = if mcp {
                    (
                        builder
                            .uri("/mcp")
                            .header("accept", "application/json, text/event-stream")
                            .header("mcp-protocol-version", "2026-07-28")
                            .header("mcp-method", "tools/call")
                            .header("mcp-name", "calc.eval"),
                        format!(
                            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"calc.eval","arguments":{{"expression":"6*7"}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
                        ),
                    )
                } else {
                    (
                        builder.uri("/v1/plugins/calc/eval"),
                        r#"{"expression":"6*7"}"#.to_string(),
                    )
                };
                let req = builder.body(Full::new(Bytes::from(body))).unwrap();
                let t = Instant::now();
                let response = sender.send_request(req).await.unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let took = t.elapsed();
                assert!(
                    status.is_success() && !body.windows(14).any(|w| w == b"\"isError\":true"),
                    "{status} {}",
                    String::from_utf8_lossy(&body)
                );
                if i >= CALLS_PER_CLIENT {
                    times.push(took);
                }
            }
            times
        });
    }
    let mut all = Vec::new();
    while let Some(times) = tasks.join_next().await {
        all.extend(times.unwrap());
    }
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let words: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        words.len() >= 2 && (words.len() - 2).is_multiple_of(3),
        "usage: plugin_http HEARTH MODEL [DIR TOOL ARGS]..."
    );
    let (bin, model) = (PathBuf::from(&words[0]), PathBuf::from(&words[1]));
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    // (label, namespace, tool, arguments); calc is bundled with hearth.
    let mut subjects = vec![(
        "rust (bundled calc, baseline)".to_string(),
        "calc".to_string(),
        "eval".to_string(),
        r#"{"expression":"6*7"}"#.to_string(),
    )];
    for chunk in words[2..].chunks(3) {
        let dir = Path::new(&chunk[0]);
        let manifest = hearth::plugins::Manifest::from_file(&dir.join("plugin.toml")).unwrap();
        let lang = hearth::kits::Lang::detect(dir).unwrap();
        hearth(&bin, &home, &["plugin", "dev", &chunk[0], "--yes"]);
        let ns = manifest.namespace.to_string();
        subjects.push((
            format!("{lang} ({ns})"),
            ns,
            chunk[1].clone(),
            chunk[2].clone(),
        ));
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let server = Server(
        Command::new(&bin)
            .args(["serve", "--addr", &addr, "--model"])
            .arg(&model)
            .env("HEARTH_HOME", &home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hearth serve"),
    );
    let pid = server.0.id();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut sender = loop {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "the server did not start"
            );
            if let Ok(stream) = tokio::net::TcpStream::connect(&addr).await {
                stream.set_nodelay(true).unwrap();
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                break sender;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut request = async |method: &str, path: &str, body: &str| {
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "bench")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let response = sender.send_request(req).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        };
        loop {
            let (status, _) = request("GET", "/readyz", "").await;
            if status.is_success() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "the server never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "server ready in {:.1} s (model loaded, every plugin compiled and described)\n",
            started.elapsed().as_secs_f64()
        );
        println!("| plugin | request p50 | request p99 | p50 vs Rust |");
        println!("|---|---:|---:|---:|");
        let mut baseline = None;
        for (label, ns, tool, args) in &subjects {
            let path = format!("/v1/plugins/{ns}/{tool}");
            for _ in 0..WARM_UP {
                let (status, body) = request("POST", &path, args).await;
                assert!(
                    status.is_success(),
                    "{path}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            let mut times = Vec::with_capacity(CALLS);
            for _ in 0..CALLS {
                let t = Instant::now();
                let (status, _) = request("POST", &path, args).await;
                times.push(t.elapsed());
                assert!(status.is_success());
            }
            times.sort();
            let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
            let base = *baseline.get_or_insert(p50);
            println!(
                "| {label} | {:.0} us | {:.0} us | {:.1}x |",
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6,
                p50.as_secs_f64() / base.as_secs_f64()
            );
        }
        println!(
            "\nserver resident memory with the model and every plugin loaded: {:.0} MiB",
            rss_mib(pid)
        );

        // The same call over MCP (streamable HTTP, protocol 2026-07-28: one
        // POST per call, no session) beside the direct route, at 1 and 32
        // clients, each client on a keep-alive connection of its own.
        println!("\n| `calc.eval` through | clients | p50 | p99 | p50 vs direct |");
        println!("|---|---:|---:|---:|---:|");
        for clients in [1usize, 32] {
            let mut direct = None;
            for mcp in [false, true] {
                let mut times = clients_calling(&addr, clients, mcp).await;
                times.sort();
                let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
                let base = *direct.get_or_insert(p50);
                println!(
                    "| {} | {clients} | {:.0} us | {:.0} us | {:.2}x |",
                    if mcp {
                        "MCP `tools/call` at /mcp"
                    } else {
                        "`POST /v1/plugins/calc/eval`"
                    },
                    p50.as_secs_f64() * 1e6,
                    p99.as_secs_f64() * 1e6,
                    p50.as_secs_f64() / base.as_secs_f64()
                );
            }
        }
    });
    drop(server);
}
