//! Load on `POST /v1/plugins/calc/eval`: C keep-alive connections, each
//! sending N calls one after another, every answer checked. Prints one
//! JSON line with latency percentiles (ms) and the rate.
//!
//! Closed loop by default: each connection sends its next call as soon as
//! the last is answered, so the server is saturated and the latency is
//! what 64 callers queueing for two cores wait (about C / rate). With RATE
//! (calls per second, all connections together) the load is open: call k
//! of connection i is due at start + (k + i / C) · C / RATE; a call that
//! is due while its connection still waits for the previous answer is
//! timed from when it was due, so a server that falls behind is charged
//! for the calls queued behind a slow one (no coordinated omission).
//!
//! Usage: plugin-load ADDR KEY CONNECTIONS CALLS_PER_CONNECTION [RATE]

use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Outcome {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

/// When connection `index`'s calls are due: `None` for a closed loop.
#[derive(Clone, Copy)]
struct Schedule {
    start: tokio::time::Instant,
    /// Time between two calls of one connection.
    period: Duration,
    /// This connection's offset within a period.
    offset: Duration,
}

async fn connection(
    addr: String,
    key: String,
    index: u64,
    calls: u64,
    schedule: Option<Schedule>,
) -> Outcome {
    let mut out = Outcome {
        latencies: Vec::with_capacity(calls as usize),
        errors: Vec::new(),
    };
    let stream = match TcpStream::connect(&addr).await {
        Ok(s) => s,
        Err(e) => {
            out.errors.push(format!("connect: {e}"));
            return out;
        }
    };
    stream.set_nodelay(true).ok();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let mut last_answer = Instant::now();
    for i in 0..calls {
        let (a, b) = (index * 7 + i % 997, i * 13 % 991 + 1);
        let body = format!(r#"{{"expression":"{a}*{b}+{index}"}}"#);
        let request = format!(
            "POST /v1/plugins/calc/eval HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let started = match schedule {
            Some(s) => {
                let due = (s.start + s.offset + s.period * i as u32).into_std();
                tokio::time::sleep_until(due.into()).await;
                // A call that had to wait for the one before it is timed
                // from when it was due; one sent late only because this
                // client's timer (1 ms resolution) woke late is timed from
                // when it was sent: that delay is not the server's.
                if last_answer > due {
                    due
                } else {
                    Instant::now()
                }
            }
            None => Instant::now(),
        };
        if let Err(e) = stream.get_mut().write_all(request.as_bytes()).await {
            out.errors.push(format!("write: {e}"));
            return out;
        }
        let mut status = 0u16;
        let mut length = 0usize;
        loop {
            line.clear();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => {
                    out.errors.push("connection closed mid-answer".into());
                    return out;
                }
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status == 0 {
                status = l
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            } else if let Some((name, value)) = l.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut answer = vec![0u8; length];
        if let Err(e) = stream.read_exact(&mut answer).await {
            out.errors.push(format!("body: {e}"));
            return out;
        }
        let elapsed = started.elapsed();
        last_answer = Instant::now();
        let value = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["value"].as_u64());
        if status != 200 || value != Some(a * b + index) {
            out.errors.push(format!(
                "{a}*{b}+{index}: HTTP {status} {}",
                String::from_utf8_lossy(&answer)
            ));
        } else {
            out.latencies.push(elapsed);
        }
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, key, conns, calls, rate) = match args.as_slice() {
        [_, addr, key, conns, calls] => (addr, key, conns, calls, None),
        [_, addr, key, conns, calls, rate] => (addr, key, conns, calls, Some(rate)),
        _ => {
            eprintln!("usage: plugin-load ADDR KEY CONNECTIONS CALLS_PER_CONNECTION [RATE]");
            std::process::exit(2);
        }
    };
    let conns: u64 = conns.parse().expect("CONNECTIONS is a number");
    let calls: u64 = calls.parse().expect("CALLS_PER_CONNECTION is a number");
    let rate: Option<f64> = rate.map(|r| r.parse().expect("RATE is calls per second"));
    let started = Instant::now();
    // Connections open during the first period, before any call is due.
    let first = tokio::time::Instant::now() + Duration::from_millis(100);
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            let schedule = rate.map(|rate| {
                let period = Duration::from_secs_f64(conns as f64 / rate);
                Schedule {
                    start: first,
                    period,
                    offset: period.mul_f64(i as f64 / conns as f64),
                }
            });
            tokio::spawn(connection(addr.clone(), key.clone(), i, calls, schedule))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let o = t.await.expect("connection task");
        latencies.extend(o.latencies);
        errors.extend(o.errors);
    }
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map(|d| (d.as_secs_f64() * 1e5).round() / 100.0)
    };
    let result = serde_json::json!({
        "bench": "hearth-plugin-load",
        "connections": conns,
        "calls_per_connection": calls,
        "offered_rate": rate,
        "calls_ok": latencies.len(),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "calls_per_s": (latencies.len() as f64 / wall).round(),
        "errors": errors.len(),
        "error_samples": errors.iter().take(5).collect::<Vec<_>>(),
    });
    println!("{result}");
}
