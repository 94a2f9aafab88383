//! The Python kit through the real binary: `hearth plugin new`, `build`,
//! `dev` and `invoke` with componentize-py (pinned, installed once per build
//! folder into a virtual environment), the kv example in
//! `examples/plugins/python`, a missing toolchain, and an uncaught exception.
//!
//! Each test builds one component: a build costs componentize-py's run plus
//! the host's compile of a ~18 MB component (about 9 s of CPU), which the
//! build's load check caches in `HEARTH_HOME` for `dev` and `invoke`.
//!
//! Drives the `hearth` binary, like every test in `host/tests/`;
//! library-level tests are modules of `tests/it/` (see `tests/README.md`).

use std::ffi::OsString;
use std::path::Path;

mod common;
use common::{Toolchain, build_and_install, hearth_at, ok, scaffold, text};

/// The componentize-py release the kit is written for.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// `PATH` with the pinned componentize-py in front.
fn toolchain_path() -> OsString {
    let venv = common::toolchain(Toolchain::Pip, COMPONENTIZE_PY);
    common::path_with(&[venv.join("bin")])
}

#[test]
fn a_new_python_plugin_builds_installs_and_answers() {
    let path = toolchain_path();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let dir = scaffold(work.path(), home.path(), &path, "greeter", "python");
    for file in ["plugin.toml", "app.py", "README.md", ".gitignore"] {
        assert!(dir.join(file).is_file(), "{file} was not written");
    }
    let ignored = std::fs::read_to_string(dir.join(".gitignore")).unwrap();
    assert!(
        ignored.contains("/wit/") && ignored.contains("/plugin.wasm"),
        "{ignored}"
    );

    let built = build_and_install(work.path(), &dir, home.path(), &path);
    assert!(
        built.contains("(python,") && built.contains("tools greeter.greet"),
        "{built}"
    );
    // Nothing granted, nothing optional imported: componentize-py imports
    // the whole world it is given, so the world is what keeps it in bounds.
    let world = std::fs::read_to_string(dir.join("wit/world.wit")).unwrap();
    assert!(
        world.contains("export hearth:plugin/guest@0.1.0"),
        "{world}"
    );
    for optional in ["/kv@", "/llm@", "/tools@"] {
        assert!(!world.contains(optional), "{world}");
    }

    let out = ok(&hearth_at(
        work.path(),
        home.path(),
        &path,
        &[
            "plugin",
            "invoke",
            "greeter.greet",
            "--args",
            r#"{"name":"Ada"}"#,
        ],
    ));
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer, serde_json::json!({"greeting": "Hello, Ada!"}));

    // The schema the template declares is enforced by the host.
    let out = hearth_at(
        work.path(),
        home.path(),
        &path,
        &[
            "plugin",
            "invoke",
            "greeter.greet",
            "--args",
            r#"{"name":7}"#,
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("do not match its schema"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_python_example_keeps_counts_across_processes() {
    let path = toolchain_path();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/python");
    let dir = work.path().join("tally");
    std::fs::create_dir(&dir).unwrap();
    // The sources only: a build in the example folder leaves outputs there.
    for file in ["plugin.toml", "app.py", "README.md", ".gitignore"] {
        std::fs::copy(example.join(file), dir.join(file)).unwrap();
    }

    let built = build_and_install(work.path(), &dir, home.path(), &path);
    assert!(
        built.contains("tally.add") && built.contains("tally.total"),
        "{built}"
    );
    let world = std::fs::read_to_string(dir.join("wit/world.wit")).unwrap();
    assert!(world.contains("import hearth:plugin/kv@0.1.0"), "{world}");

    // Every `invoke` is its own process and every call a fresh instance:
    // the totals can only come from the store.
    let call = |tool: &str, args: &str| -> serde_json::Value {
        let out = ok(&hearth_at(
            work.path(),
            home.path(),
            &path,
            &["plugin", "invoke", tool, "--args", args],
        ));
        serde_json::from_str(out.trim()).unwrap()
    };
    assert_eq!(
        call("tally.total", r#"{"key":"apples"}"#),
        serde_json::json!({"key": "apples", "total": 0})
    );
    assert_eq!(
        call("tally.add", r#"{"key":"apples","amount":3}"#)["total"],
        3
    );
    assert_eq!(
        call("tally.add", r#"{"key":"apples","amount":-1}"#)["total"],
        2
    );
    assert_eq!(
        call("tally.add", r#"{"key":"pears","amount":5}"#)["total"],
        5
    );
    assert_eq!(
        call("tally.total", r#"{"key":"apples"}"#),
        serde_json::json!({"key": "apples", "total": 2})
    );
    assert_eq!(
        call("tally.counts", "{}"),
        serde_json::json!({"counts": {"apples": 2, "pears": 5}})
    );
}

#[test]
fn building_without_componentize_py_names_it_and_how_to_install_it() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    // A PATH with nothing on it: the kit looks for its program before it
    // runs anything.
    let empty = tempfile::tempdir().unwrap();
    let path = OsString::from(empty.path());
    let dir = scaffold(work.path(), home.path(), &path, "lonely", "python");
    let out = hearth_at(&dir, home.path(), &path, &["plugin", "build"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("componentize-py is not installed")
            && stderr.contains("pip install componentize-py==0.25.1"),
        "{stderr}"
    );
    assert!(!dir.join("plugin.wasm").exists());
}

#[test]
fn an_uncaught_exception_shows_its_traceback_once_before_the_wasm_backtrace() {
    let path = toolchain_path();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let dir = scaffold(work.path(), home.path(), &path, "fragile", "python");
    // The template plus a tool whose helper raises.
    let app = std::fs::read_to_string(dir.join("app.py")).unwrap();
    let raising = "def explode(args: dict) -> dict:\n    \
                   raise ValueError(\"the count went negative\")\n\n\n\
                   # Tool name -> ";
    let app = app.replacen("# Tool name -> ", raising, 1).replacen(
        "TOOLS = {\n",
        "TOOLS = {\n    \"explode\": (\"Raises\", {\"type\": \"object\"}, explode),\n",
        1,
    );
    assert!(
        app.contains("\"explode\": "),
        "the template changed:\n{app}"
    );
    std::fs::write(dir.join("app.py"), app).unwrap();
    build_and_install(work.path(), &dir, home.path(), &path);

    let out = hearth_at(
        work.path(),
        home.path(),
        &path,
        &["plugin", "invoke", "fragile.explode", "--args", "{}"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    // The whole of stderr: the report, and nothing that repeats it.
    assert!(stderr.starts_with("error: fragile.explode:"), "{stderr}");
    let report = stderr.as_str();
    assert_eq!(
        report.matches("Traceback (most recent call last)").count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        report
            .matches("ValueError: the count went negative")
            .count(),
        1,
        "{stderr}"
    );
    assert!(report.contains("in explode"), "{stderr}");
    let traceback = report.find("Traceback").unwrap();
    if let Some(backtrace) = report.find("wasm backtrace") {
        assert!(traceback < backtrace, "{stderr}");
    }
    // A trapped call is contained: the other tool still answers.
    let out = ok(&hearth_at(
        work.path(),
        home.path(),
        &path,
        &[
            "plugin",
            "invoke",
            "fragile.greet",
            "--args",
            r#"{"name":"Ada"}"#,
        ],
    ));
    assert!(out.contains("Hello, Ada!"), "{out}");
}

/// A plugin with one tool, `fetch` (`{"url"}` → `{"status", "body"}`),
/// through the `http_get` of docs/plugins/python.md.
const FETCH_PY: &str = r#""""fetcher: GETs from the origins plugin.toml grants."""

import json
from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import outgoing_handler, streams, types
from wit_world.imports import wasi_http_types as http


def http_get(url: str) -> tuple[int, bytes]:
    """GETs `url`: its status and body. Raises Err(http.ErrorCode_...) when
    the request fails: ErrorCode_HttpRequestDenied when plugin.toml does not
    grant its origin."""
    parts = urlsplit(url)
    request = http.OutgoingRequest(http.Fields())
    request.set_scheme(http.Scheme_Https() if parts.scheme == "https" else http.Scheme_Http())
    request.set_authority(parts.netloc)
    path = parts.path or "/"
    request.set_path_with_query(f"{path}?{parts.query}" if parts.query else path)
    with outgoing_handler.handle(request, None) as future:
        with future.subscribe() as ready:
            ready.block()
        result = future.get().value  # Ok(response) or Err(error code)
    if isinstance(result, Err):
        raise result
    # A stream before its body, a body before its response: `with` drops
    # them in that order.
    with result.value as response, response.consume() as body, body.stream() as stream:
        data = bytearray()
        while True:
            try:
                data += stream.blocking_read(65536)
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                raise
        return response.status(), bytes(data)


class Guest(exports.Guest):
    def describe(self) -> types.Description:
        schema = {
            "type": "object",
            "properties": {"url": {"type": "string"}},
            "required": ["url"],
        }
        tool = types.Tool(name="fetch", description="GETs a URL", parameters_schema=json.dumps(schema))
        return types.Description(tools=[tool], events=[])

    def validate_config(self, config: str) -> None:
        pass

    def invoke(self, tool: str, arguments: str, context: types.CallContext) -> str:
        url = json.loads(arguments)["url"]
        try:
            status, body = http_get(url)
        except Err as e:
            if isinstance(e.value, http.ErrorCode_HttpRequestDenied):
                raise Err(types.ToolError_Denied(f"{url}: {e.value}"))
            raise Err(types.ToolError_Failed(f"{url}: {e.value}"))
        return json.dumps({"status": status, "body": body.decode()})

    def on_event(self, event: types.Event) -> types.EventOutcome:
        return types.EventOutcome_Proceed()
"#;

#[test]
fn a_python_plugin_granted_http_fetches_from_its_origin_and_is_refused_others() {
    let path = toolchain_path();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let (port, seen) = common::serve_http("hello from the granted host");
    let dir = scaffold(work.path(), home.path(), &path, "fetcher", "python");
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
    let granted = manifest.replacen(
        "[permissions]\n",
        &format!("[permissions]\nhttp = [\"http://127.0.0.1:{port}\"]\n"),
        1,
    );
    assert_ne!(granted, manifest, "the template changed:\n{manifest}");
    std::fs::write(dir.join("plugin.toml"), granted).unwrap();
    std::fs::write(dir.join("app.py"), FETCH_PY).unwrap();

    let built = build_and_install(work.path(), &dir, home.path(), &path);
    assert!(built.contains("tools fetcher.fetch"), "{built}");
    let world = std::fs::read_to_string(dir.join("wit/world.wit")).unwrap();
    assert!(
        world.contains("import wasi:http/outgoing-handler@0.2.12;"),
        "{world}"
    );
    assert!(dir.join("wit/deps/wasi-http/http.wit").is_file());

    let fetch = |url: &str| {
        hearth_at(
            work.path(),
            home.path(),
            &path,
            &[
                "plugin",
                "invoke",
                "fetcher.fetch",
                "--args",
                &serde_json::json!({ "url": url }).to_string(),
            ],
        )
    };
    let out = ok(&fetch(&format!("http://127.0.0.1:{port}/greeting?lang=en")));
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"status": 200, "body": "hello from the granted host"})
    );
    assert_eq!(*seen.lock().unwrap(), ["GET /greeting?lang=en HTTP/1.1"]);

    // Another name for the same server, and another port of the granted
    // address: not granted, so hearth refuses them before connecting.
    for url in [
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1:{}/", port.wrapping_add(1)),
    ] {
        let out = fetch(&url);
        assert!(!out.status.success(), "{url}: {}", text(&out.stdout));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("error: fetcher.fetch: denied: ")
                && stderr.contains("ErrorCode_HttpRequestDenied"),
            "{url}: {stderr}"
        );
        assert!(
            stderr.contains("is not in [permissions] http"),
            "{url}: {stderr}"
        );
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a refused request reached the server"
    );
}
