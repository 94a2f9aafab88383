//! Remote MCP servers as tool sources of `hearth serve`: a `[[mcp]]` entry
//! of the config file points at a streamable-HTTP server built with the
//! official MCP Python SDK (PyPI `mcp`, pinned, installed once into a
//! virtualenv in the build folder; the server is
//! `tests/python/mcp_server.py`), behind a bearer token that hearth reads
//! from the environment. The model, forced by `tool_choice`, calls its tools
//! as `remote.<tool>`: a call that answers, one outside the allow-list
//! (refused before the model runs), one that outlives the time limit, one
//! that fails; `/metrics` counts each. Entries hearth refuses at start (a
//! stdio server, a token variable that is not set) are checked without it.

mod common;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// hearth's own API key.
const KEY: &str = "sources-key";
/// What the Python server requires, and the variable hearth reads it from.
const TOKEN: &str = "remote-token-1234";
const TOKEN_VAR: &str = "HEARTH_TEST_REMOTE_MCP_TOKEN";
/// The per-call limit of the `[[mcp]]` entry, in ms.
const TIMEOUT_MS: u64 = 2000;

/// Lines of `reader` appended to `log` until it ends, on a thread of their
/// own, so the child never blocks on a full pipe.
fn drain(reader: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            log.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
}

/// Reads `stdout` line by line on a thread, appending each to `log`, and
/// returns the first line for which `pick` gives a value, within `wait`.
/// The rest of the output keeps being drained into `log`.
fn first_match(
    out: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    wait: Duration,
    pick: fn(&str) -> Option<String>,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        let mut sent = false;
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            log.lock().unwrap().push_str(&line);
            if !sent && let Some(found) = pick(&line) {
                let _ = tx.send(found);
                sent = true;
            }
            line.clear();
        }
    });
    rx.recv_timeout(wait).ok()
}

/// A child process killed when the test ends, whatever happens; what it
/// writes is kept in `log`.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// `tests/python/mcp_server.py` on a free loopback port (it picks one and
/// prints `listening on PORT` once it accepts connections), logging its
/// tool calls to `call_log` and requiring [`TOKEN`]. Returns it and its
/// port.
fn start_remote(call_log: &Path) -> (Proc, u16) {
    let mut child = Command::new(common::mcp_python())
        .arg(common::script("python/mcp_server.py"))
        .arg("0")
        .arg(call_log)
        .arg(TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mcp_server.py");
    let log = Arc::new(Mutex::new(String::new()));
    drain(child.stderr.take().unwrap(), log.clone());
    let stdout: ChildStdout = child.stdout.take().unwrap();
    let port = first_match(stdout, log.clone(), Duration::from_secs(60), |line| {
        line.trim()
            .strip_prefix("listening on ")
            .map(str::to_string)
    });
    let remote = Proc { child, log };
    let port = port
        .unwrap_or_else(|| panic!("mcp_server.py never said it listens:\n{}", remote.log()))
        .parse()
        .unwrap();
    (remote, port)
}

/// `hearth serve` on a free loopback port with the API key [`KEY`], the
/// default model, an empty home and `config`; [`TOKEN_VAR`] holds
/// [`TOKEN`]. Returns it and its address, `127.0.0.1:PORT`.
fn start_hearth(home: &Path, config: &Path) -> (Proc, String) {
    let mut child = serve_command(home, config)
        .env(TOKEN_VAR, TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    // The line `hearth: serving ... on http://ADDR/v1`; a warning about a
    // source names the source's URL, which does not end in `/v1`.
    let addr = first_match(
        child.stderr.take().unwrap(),
        log.clone(),
        Duration::from_secs(300),
        |line| {
            let line = line.trim();
            let at = line.find("http://")?;
            line[at + "http://".len()..]
                .strip_suffix("/v1")
                .map(str::to_string)
        },
    );
    let mut server = Proc { child, log };
    let addr = addr.unwrap_or_else(|| {
        let exited = server.child.try_wait().ok().flatten();
        panic!(
            "hearth serve did not print its address (exit: {exited:?}):\n{}",
            server.log()
        )
    });
    (server, addr)
}

fn serve_command(home: &Path, config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hearth"));
    command
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--api-key",
            KEY,
            "--model",
        ])
        .arg(common::default_model())
        .arg("--config")
        .arg(config)
        .env("HEARTH_HOME", home)
        .env_remove("HEARTH_LOG");
    command
}

/// One HTTP/1.1 request with `Connection: close` and the API key; returns
/// the status and the body (de-chunked if need be).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, rest) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {answer}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in: {head}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// `POST /v1/chat/completions` forcing a call to `tool`; returns the
/// status, the body and how long it took.
fn force(addr: &str, tool: &str, ask: &str) -> (u16, String, Duration) {
    let request = json!({
        "messages": [{"role": "user", "content": ask}],
        "tool_choice": {"type": "function", "function": {"name": tool}},
        "temperature": 0,
        "max_tokens": 48,
    });
    let started = Instant::now();
    let (status, body) = http(addr, "POST", "/v1/chat/completions", &request.to_string());
    (status, body, started.elapsed())
}

fn metrics(addr: &str) -> String {
    let (status, body) = http(addr, "GET", "/metrics", "");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// The value of `hearth_plugin_calls_total{namespace="remote",outcome=…}`,
/// or 0 when the series is absent.
fn remote_calls(metrics: &str, outcome: &str) -> f64 {
    let series =
        format!("hearth_plugin_calls_total{{namespace=\"remote\",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// The JSON lines of the server's call log.
fn calls(call_log: &Path) -> Vec<Value> {
    std::fs::read_to_string(call_log)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("call log line {line:?}: {e}"))
        })
        .collect()
}

fn calls_of(call_log: &Path, tool: &str) -> Vec<Value> {
    calls(call_log)
        .into_iter()
        .filter(|call| call["tool"] == tool)
        .collect()
}

#[test]
fn a_remote_mcp_server_lends_its_tools_to_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let call_log = dir.path().join("calls.jsonl");
    let (remote, port) = start_remote(&call_log);
    // No plugins are needed: an empty home.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[[mcp]]\nprefix = \"remote\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n\
             bearer-token-env = \"{TOKEN_VAR}\"\ntools = [\"lookup\", \"slow\", \"fail\"]\n\
             timeout-ms = {TIMEOUT_MS}\nconcurrency = 4\n"
        ),
    )
    .unwrap();
    let (server, addr) = start_hearth(&home, &config);
    let logs = || {
        format!(
            "\n--- hearth serve:\n{}\n--- mcp_server.py:\n{}\n--- calls:\n{}",
            server.log(),
            remote.log(),
            std::fs::read_to_string(&call_log).unwrap_or_default()
        )
    };

    // (b) A tool outside the allow-list is never offered: forcing it is
    // refused before the model runs, and the server never hears of it.
    let (status, body, _) = force(&addr, "remote.secret", "Tell me the secret.");
    assert_eq!(
        status,
        400,
        "forcing remote.secret (not allowed) must be refused: {body}{}",
        logs()
    );
    assert!(
        body.contains("remote.secret"),
        "the refusal must name remote.secret: {body}{}",
        logs()
    );
    assert!(
        calls_of(&call_log, "secret").is_empty(),
        "secret must never be called{}",
        logs()
    );

    // (a) A call that answers: the model's call reaches the server, whose
    // result goes back to the model; the answer is the model's.
    let (status, body, baseline) = force(&addr, "remote.lookup", "What is stored under `color`?");
    assert_eq!(status, 200, "forced remote.lookup: {body}{}", logs());
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("remote.lookup answer is not JSON ({e}): {body}{}", logs()));
    let choice = &v["choices"][0];
    assert!(
        choice["finish_reason"] == "stop" || choice["finish_reason"] == "length",
        "remote.lookup: the model's final answer, not a tool call: {v}{}",
        logs()
    );
    assert!(
        choice["message"]["tool_calls"].is_null(),
        "remote.lookup: the call ran in hearth, not in the client: {v}{}",
        logs()
    );
    let lookups = calls_of(&call_log, "lookup");
    assert!(
        !lookups.is_empty() && lookups.iter().all(|call| call["key"].is_string()),
        "the server must log lookup calls with a string key{}",
        logs()
    );

    // (e) Counted under the prefix.
    let m = metrics(&addr);
    assert!(
        remote_calls(&m, "ok") >= 1.0,
        "/metrics must count remote.lookup as outcome=\"ok\":\n{m}{}",
        logs()
    );

    // (c) A call that outlives timeout-ms (the server sleeps at least 30 s)
    // fails, the model hears of it, and the turn still completes, long
    // before the server would have answered.
    let (status, body, took) = force(&addr, "remote.slow", "Wait a little, please.");
    assert_eq!(
        status,
        200,
        "forced remote.slow (times out) must still answer: {body}{}",
        logs()
    );
    let slows = calls_of(&call_log, "slow").len();
    assert!(slows >= 1, "slow must reach the server{}", logs());
    // Each slow call waits out the limit; the generations around them take
    // about what the lookup turn took.
    let bound =
        Duration::from_millis(TIMEOUT_MS) * slows as u32 + baseline * 2 + Duration::from_secs(10);
    assert!(
        took < bound.min(Duration::from_secs(29)),
        "remote.slow took {took:?} ({slows} call(s), lookup turn {baseline:?}): \
         the call was not cut at {TIMEOUT_MS} ms{}",
        logs()
    );
    let m = metrics(&addr);
    assert_eq!(
        remote_calls(&m, "timeout"),
        slows as f64,
        "/metrics must count each remote.slow call as outcome=\"timeout\":\n{m}{}",
        logs()
    );

    // (d) A tool error goes back to the model; the turn completes.
    let (status, body, _) = force(&addr, "remote.fail", "Run the failing tool.");
    assert_eq!(
        status,
        200,
        "forced remote.fail (a tool error) must still answer: {body}{}",
        logs()
    );
    assert!(
        !calls_of(&call_log, "fail").is_empty(),
        "fail must reach the server{}",
        logs()
    );
    let m = metrics(&addr);
    assert!(
        remote_calls(&m, "error") >= 1.0,
        "/metrics must count remote.fail as outcome=\"error\":\n{m}{}",
        logs()
    );

    // Whatever the model did after each forced call, it never reached secret.
    assert!(
        calls_of(&call_log, "secret").is_empty(),
        "secret must never be called{}",
        logs()
    );
}

/// Runs `hearth serve` with `config` (and [`TOKEN_VAR`] unset) until it
/// exits, which it must within two minutes; returns whether it succeeded
/// and its stderr.
fn serve_until_exit(home: &Path, config: &Path) -> (bool, String) {
    let mut child = serve_command(home, config)
        .env_remove(TOKEN_VAR)
        .env_remove("HEARTH_TEST_UNSET_VAR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    drain(child.stderr.take().unwrap(), log.clone());
    let mut server = Proc { child, log };
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "hearth serve should have refused {} and exited:\n{}",
            config.display(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The pipe closes with the process; let the drain catch up.
    std::thread::sleep(Duration::from_millis(200));
    (status.success(), server.log())
}

#[test]
fn serve_refuses_stdio_sources_and_unset_token_variables() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    // (f) A stdio server (a command to run) is not a source serve takes.
    let config = dir.path().join("stdio.toml");
    std::fs::write(
        &config,
        "[[mcp]]\nprefix = \"local\"\ncommand = [\"python3\", \"x.py\"]\n",
    )
    .unwrap();
    let (ok, err) = serve_until_exit(&home, &config);
    assert!(!ok, "a stdio [[mcp]] entry must make serve fail:\n{err}");
    assert!(
        err.contains("stdio"),
        "the refusal of a stdio entry must say `stdio`:\n{err}"
    );

    // A token variable that is not set: named, before any connection.
    let config = dir.path().join("unset.toml");
    std::fs::write(
        &config,
        "[[mcp]]\nprefix = \"remote\"\nurl = \"http://127.0.0.1:9/mcp\"\n\
         bearer-token-env = \"HEARTH_TEST_UNSET_VAR\"\n",
    )
    .unwrap();
    let (ok, err) = serve_until_exit(&home, &config);
    assert!(
        !ok,
        "an unset bearer-token-env must make serve fail:\n{err}"
    );
    assert!(
        err.contains("HEARTH_TEST_UNSET_VAR"),
        "the refusal must name HEARTH_TEST_UNSET_VAR:\n{err}"
    );
}
