//! The Python kit through the real binary: `hearth plugin new`, `build`,
//! `dev` and `invoke` with componentize-py (pinned, installed once per build
//! folder into a virtual environment), the kv example in
//! `examples/plugins/python`, a missing toolchain, and an uncaught exception.
//!
//! Each test builds one component: a build costs componentize-py's run plus
//! the host's compile of a ~18 MB component (about 9 s of CPU), which the
//! build's load check caches in `HEARTH_HOME` for `dev` and `invoke`.

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

    let out = ok(hearth_at(
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
        let out = ok(hearth_at(
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
    let out = ok(hearth_at(
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
