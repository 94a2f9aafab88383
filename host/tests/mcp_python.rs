//! hearth as an MCP server, against peers we did not write: the official
//! MCP Python SDK (PyPI `mcp`, pinned, installed once into a virtualenv in
//! the build folder) over stdio (`hearth mcp` as its subprocess) and over
//! streamable HTTP (`/mcp` on `hearth serve`), each at protocol 2026-07-28
//! and with the older initialize handshake; the official TypeScript SDK
//! over HTTP; a call dropped when its client goes away; and `/mcp`'s own
//! guards (Host, Origin, API key, body size) with raw requests. The client script is `tests/python/mcp_client.py`.

mod common;
use common::Toolchain;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

const MCP_TYPESCRIPT: &str = "@modelcontextprotocol/sdk@1.32.2";
const KEY: &str = "mcp-key";

/// `hearth serve` with the API key [`KEY`] (see [`common::Serve`]).
fn start_server(home: &Path, extra: &[&str]) -> common::Serve {
    let mut args = vec!["--api-key", KEY];
    args.extend_from_slice(extra);
    common::Serve::start(home, &args)
}

/// Runs the Python client with `args`; asserts it passed and returns what
/// it printed.
fn run_python(home: &Path, args: &[&str]) -> String {
    let out = Command::new(common::mcp_python())
        .arg(common::script("python/mcp_client.py"))
        .args(args)
        .env("HEARTH_BIN", env!("CARGO_BIN_EXE_hearth"))
        .env("HEARTH_HOME", home)
        .env_remove("HEARTH_LOG")
        .output()
        .unwrap();
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "mcp_client.py {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        common::text(&out.stderr)
    );
    stdout
}

fn expect_all_checks(out: &str) {
    for check in [
        "tools/list",
        "calc.eval 6*7 = 42",
        "a tool error is isError",
        "a schema violation is isError",
        "an unknown tool is JSON-RPC error -32602",
        "notes.* gone",
        "notes.* back",
    ] {
        assert!(out.contains(check), "missing `{check}` in:\n{out}");
    }
}

#[test]
fn the_python_sdk_over_stdio_lists_calls_and_follows_changes() {
    for mode in ["auto", "legacy"] {
        // A home of its own: the script disables and enables notes in it.
        let home = tempfile::tempdir().unwrap();
        let out = run_python(home.path(), &["stdio", mode]);
        expect_all_checks(&out);
        let protocol = if mode == "auto" {
            "protocol 2026-07-28"
        } else {
            "protocol 2025-11-25"
        };
        assert!(out.contains(protocol), "{mode}: {out}");
        assert!(out.contains("listen stream") || mode == "legacy", "{out}");
    }
}

#[test]
fn the_python_sdk_over_http_lists_calls_and_follows_changes() {
    let home = tempfile::tempdir().unwrap();
    let server = start_server(home.path(), &[]);
    let url = format!("{}/mcp", server.base);
    for mode in ["auto", "legacy"] {
        let out = Command::new(common::mcp_python())
            .arg(common::script("python/mcp_client.py"))
            .args(["http", &url, KEY, mode])
            .env("HEARTH_BIN", env!("CARGO_BIN_EXE_hearth"))
            .env("HEARTH_HOME", home.path())
            .output()
            .unwrap();
        let stdout = common::text(&out.stdout);
        assert!(
            out.status.success(),
            "mcp_client.py http {mode} failed\nstdout:\n{stdout}\nstderr:\n{}\nserver:\n{}",
            common::text(&out.stderr),
            server.log()
        );
        expect_all_checks(&stdout);
        if mode == "auto" {
            assert!(stdout.contains("abandoned after 0.3 s"), "{stdout}");
            assert!(stdout.contains("hits the limit"), "{stdout}");
        }
    }
    // The calls were counted like the API's.
    let metrics = raw(
        server.port(),
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert!(
        metrics.contains(r#"hearth_plugin_calls_total{namespace="calc",outcome="ok"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"route="/mcp""#), "{metrics}");
    // Of the two slow calls (2026-07-28), the one whose request went away
    // after 0.3 s was dropped then, and never ran into the time limit; the
    // other did.
    assert!(
        metrics.contains(r#"hearth_plugin_calls_total{namespace="calc",outcome="timeout"} 1"#),
        "{metrics}"
    );
    assert!(
        server.log().contains("MCP call cancelled by the client"),
        "{}",
        server.log()
    );
}

/// Sends `request` as is and returns the whole answer (the server closes
/// the connection: every request here says `Connection: close`).
fn raw(port: u16, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn post(port: u16, host: &str, extra_headers: &str, body: &str) -> String {
    raw(
        port,
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\n{extra_headers}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn mcp_over_http_refuses_foreign_hosts_origins_and_missing_keys() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("serve.toml");
    std::fs::write(&config, "mcp-allowed-hosts = [\"hearth.lan\"]\n").unwrap();
    let server = start_server(home.path(), &["--config", config.to_str().unwrap()]);
    let port = server.port();
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

    // DNS rebinding: a page of evil.example re-pointed at 127.0.0.1.
    let answer = post(port, "evil.example", &auth, initialize);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("evil.example"), "{answer}");
    assert!(answer.contains("mcp-allowed-hosts"), "{answer}");
    let answer = post(
        port,
        &format!("127.0.0.1:{port}"),
        &format!("{auth}Origin: http://evil.example\r\n"),
        initialize,
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("Origin"), "{answer}");

    // No key, or a wrong one.
    let answer = post(port, &format!("localhost:{port}"), "", initialize);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let answer = post(
        port,
        &format!("localhost:{port}"),
        "Authorization: Bearer nope\r\n",
        initialize,
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // The API's body limit (1 MiB) holds here too.
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let answer = post(port, &format!("127.0.0.1:{port}"), &auth, &huge);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        &answer[..200.min(answer.len())]
    );

    // A name added in the config file, with the key, and a same-site
    // Origin: answered by the MCP server.
    for (host, origin) in [
        ("hearth.lan:8080".to_string(), String::new()),
        (
            format!("localhost:{port}"),
            format!("Origin: http://localhost:{port}\r\n"),
        ),
    ] {
        let answer = post(port, &host, &format!("{auth}{origin}"), initialize);
        assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
        assert!(
            answer.contains(r#""protocolVersion":"2025-06-18""#),
            "{answer}"
        );
        assert!(answer.contains(r#""name":"hearth""#), "{answer}");
    }

    // Methods the transport does not use.
    let answer = raw(
        port,
        &format!(
            "PUT /mcp HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
}

#[test]
fn the_typescript_sdk_lists_and_calls_over_http() {
    let home = tempfile::tempdir().unwrap();
    let server = start_server(home.path(), &[]);
    let sdk = common::toolchain(Toolchain::Npm, MCP_TYPESCRIPT);
    let out = Command::new("node")
        .arg(common::script("js/mcp_client.mjs"))
        .arg(format!("{}/mcp", server.base))
        .arg(KEY)
        .env("NODE_PATH", sdk.join("node_modules"))
        .env(
            "HEARTH_MCP_SDK",
            sdk.join("node_modules/@modelcontextprotocol/sdk"),
        )
        .output()
        .unwrap();
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "mcp_client.mjs failed\nstdout:\n{stdout}\nstderr:\n{}\nserver:\n{}",
        common::text(&out.stderr),
        server.log()
    );
    assert!(stdout.contains("ok: calc.eval 6*7 = 42"), "{stdout}");
}
