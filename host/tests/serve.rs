//! `hearth serve` as a process: settings from a config file, structured
//! logs with one span per request that holds its plugin calls, request ids.
//!
//! Drives the `hearth` binary, like every test in `host/tests/`;
//! library-level tests are modules of `tests/it/` (see `tests/README.md`).

mod common;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

/// Kills the server if the test fails before stopping it.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the raw response.
fn http(addr: &str, head: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{head}\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn config_file_json_logs_and_request_spans_with_plugin_calls() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "addr = \"127.0.0.1:0\"\nmodel = {:?}\napi-keys = [\"cfg-key\"]\nparallel = 2\nqueue = 4\nshutdown-grace = 5\n",
            common::default_model()
        ),
    )
    .unwrap();
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args([
                "serve",
                "--log-format",
                "json",
                "--log-to",
                "stdout",
                "--config",
            ])
            .arg(&config)
            .env("HEARTH_HOME", home.path())
            .env("HEARTH_LOG", "hearth=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let server = &mut server.0;
    // Read the output as it comes, so a full pipe never stalls the server:
    // the JSON log on stdout (--log-to stdout, as in a container), the
    // start-up lines on stderr.
    let stdout = BufReader::new(server.stdout.take().unwrap());
    let log = std::thread::spawn(move || {
        stdout
            .lines()
            .map(|l| l.unwrap() + "\n")
            .collect::<String>()
    });
    let stderr = BufReader::new(server.stderr.take().unwrap());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(at) = line.find("http://") {
                let url = line[at + 7..].trim();
                let _ = addr_tx.send(url.trim_end_matches("/v1").to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = addr_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("hearth serve printed its address");
    let auth = "Authorization: Bearer cfg-key";
    // A streamed chat: its request line in the log comes when it ends,
    // with its tokens.
    let streamed = http(
        &addr,
        &format!("POST /v1/chat/completions HTTP/1.1\r\n{auth}\r\nX-Request-Id: stream-me"),
        r#"{"messages":[{"role":"user","content":"Hi"}],"stream":true,"max_tokens":5}"#,
    );
    assert!(streamed.contains("data: [DONE]"), "{streamed}");
    let ok = http(
        &addr,
        &format!("POST /v1/plugins/calc/eval HTTP/1.1\r\n{auth}\r\nX-Request-Id: trace-me-1"),
        r#"{"expression":"6*7"}"#,
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.to_ascii_lowercase().contains("x-request-id: trace-me-1"),
        "{ok}"
    );
    // Arguments that break the schema never reach the plugin.
    let bad = http(
        &addr,
        &format!("POST /v1/plugins/calc/eval HTTP/1.1\r\n{auth}\r\nX-Request-Id: trace-me-2"),
        r#"{"expr":"6*7"}"#,
    );
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(
        bad.contains("\\\"expression\\\" is a required property"),
        "{bad}"
    );
    // The key from the file is the only one.
    let denied = http(
        &addr,
        "GET /v1/models HTTP/1.1\r\nAuthorization: Bearer other",
        "",
    );
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    // A request id that is not a plain token is replaced.
    let fresh = http(
        &addr,
        &format!("GET /v1/models HTTP/1.1\r\n{auth}\r\nX-Request-Id: not/a token"),
        "",
    );
    assert!(
        fresh.to_ascii_lowercase().contains("x-request-id: req-"),
        "{fresh}"
    );

    // `hearth health` (a container's health check) says ready.
    let health = || {
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["health", "--addr", &addr])
            .env("HEARTH_HOME", home.path())
            .output()
            .unwrap()
    };
    let ready = health();
    assert!(ready.status.success(), "{ready:?}");

    let ok = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(server.wait().unwrap().success());
    let gone = health();
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
    let said = String::from_utf8_lossy(&gone.stderr);
    assert!(said.contains(&addr), "{said}");
    let _ = reader.join().unwrap();
    let rest = log.join().unwrap();
    let logs: Vec<Value> = rest
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let in_request = |id: &str, message: &str| {
        logs.iter().find(|l| {
            l["fields"]["message"] == message
                && l["spans"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["name"] == "request" && s["id"] == id))
        })
    };
    let call = in_request("trace-me-1", "plugin call")
        .unwrap_or_else(|| panic!("no plugin call logged in request trace-me-1:\n{rest}"));
    let spans = call["spans"].as_array().unwrap();
    assert_eq!(spans.last().unwrap()["name"], "plugin");
    assert_eq!(spans.last().unwrap()["namespace"], "calc");
    assert_eq!(spans.last().unwrap()["tool"], "eval");
    let answered = in_request("trace-me-1", "answered").expect("request logged");
    assert_eq!(answered["fields"]["status"], 200);
    assert_eq!(
        answered["fields"]["route"],
        "/v1/plugins/{namespace}/{tool}"
    );
    assert_eq!(answered["fields"]["plugin_calls"], 1);
    assert!(answered["fields"]["elapsed_ms"].is_u64());
    let stream = in_request("stream-me", "answered").expect("stream logged");
    assert_eq!(stream["fields"]["route"], "/v1/chat/completions");
    assert_eq!(stream["fields"]["stream"], "complete");
    assert!(
        stream["fields"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{stream}"
    );
    assert!(
        stream["fields"]["completion_tokens"].as_u64().unwrap() > 0,
        "{stream}"
    );
    let lines = logs.iter().filter(|l| {
        l["fields"]["message"] == "answered"
            && l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["id"] == "stream-me"))
    });
    assert_eq!(lines.count(), 1, "one line per request");
    let failed = in_request("trace-me-2", "plugin call failed").expect("failure logged");
    assert!(
        failed["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("do not match its schema")
    );
}

#[test]
fn a_bad_config_file_is_named() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("serve.toml");
    std::fs::write(&config, "adr = \"127.0.0.1:0\"\n").unwrap();
    let out = common::hearth(
        home.path(),
        &["serve", "--config", config.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = common::text(&out.stderr);
    assert!(
        err.contains("serve.toml") && err.contains("unknown field `adr`"),
        "{err}"
    );
    let out = common::hearth(
        home.path(),
        &["serve", "--config", "/nonexistent/hearth.toml"],
    );
    assert!(common::text(&out.stderr).contains("/nonexistent/hearth.toml"));
}
