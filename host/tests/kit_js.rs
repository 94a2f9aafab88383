//! The JavaScript kit through the real binary: `hearth plugin new`, `build`,
//! `dev` and `invoke` with componentize-qjs (pinned, installed once per build
//! folder with npm), the `units` example in `examples/plugins/js` calling
//! calc through the `tools` import, a missing toolchain, a component built
//! without `--sync`, and exceptions.
//!
//! Each test builds one component: componentize-qjs takes about 2 s and the
//! host's compile of the ~1.6 MB component about 1 s, which the build's load
//! check caches in `HEARTH_HOME` for `dev` and `invoke`.
//!
//! Drives the `hearth` binary, like every test in `host/tests/`;
//! library-level tests are modules of `tests/it/` (see `tests/README.md`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{Toolchain, build_and_install, hearth_at, ok, scaffold, text};

/// The componentize-qjs release the kit is written for.
const COMPONENTIZE_QJS: &str = "componentize-qjs@0.4.5";

/// The folder holding the pinned componentize-qjs program.
fn toolchain_bin() -> PathBuf {
    common::toolchain(Toolchain::Npm, COMPONENTIZE_QJS)
        .join("node_modules")
        .join(".bin")
}

/// `PATH` with the pinned componentize-qjs in front.
fn toolchain_path() -> OsString {
    common::path_with(&[toolchain_bin()])
}

/// `hearth plugin invoke <tool> --args <args>` in `work`.
fn invoke(work: &Path, home: &Path, path: &OsString, tool: &str, args: &str) -> Output {
    hearth_at(
        work,
        home,
        path,
        &["plugin", "invoke", tool, "--args", args],
    )
}

#[test]
fn a_new_js_plugin_builds_installs_and_answers() {
    let path = toolchain_path();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let dir = scaffold(work.path(), home.path(), &path, "greeter", "js");
    for file in [
        "plugin.toml",
        "app.js",
        "package.json",
        "README.md",
        ".gitignore",
    ] {
        assert!(dir.join(file).is_file(), "{file} was not written");
    }
    let ignored = std::fs::read_to_string(dir.join(".gitignore")).unwrap();
    for output in ["/wit/", "/plugin.wasm", "/node_modules/"] {
        assert!(ignored.contains(output), "{ignored}");
    }

    let built = build_and_install(work.path(), &dir, home.path(), &path);
    assert!(
        built.contains("(js,") && built.contains("tools greeter.greet"),
        "{built}"
    );
    // Nothing granted, nothing optional imported: componentize-qjs imports
    // the whole world it is given, so the world is what keeps it in bounds.
    let world = std::fs::read_to_string(dir.join("wit/world.wit")).unwrap();
    assert!(
        world.contains("export hearth:plugin/guest@0.1.0"),
        "{world}"
    );
    for optional in ["/kv@", "/llm@", "/tools@"] {
        assert!(!world.contains(optional), "{world}");
    }

    let out = ok(&invoke(
        work.path(),
        home.path(),
        &path,
        "greeter.greet",
        r#"{"name":"Ada"}"#,
    ));
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer, serde_json::json!({"greeting": "Hello, Ada!"}));

    // The schema the template declares is enforced by the host.
    let out = invoke(
        work.path(),
        home.path(),
        &path,
        "greeter.greet",
        r#"{"name":7}"#,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("do not match its schema"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_js_example_converts_units_by_calling_calc() {
    let path = toolchain_path();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/js");
    let dir = work.path().join("units");
    std::fs::create_dir(&dir).unwrap();
    // The sources only: a build in the example folder leaves outputs there.
    for file in [
        "plugin.toml",
        "package.json",
        "app.js",
        "units.js",
        "units.test.js",
        "README.md",
        ".gitignore",
    ] {
        std::fs::copy(example.join(file), dir.join(file)).unwrap();
    }

    // The logic's own tests, in Node: units.js imports nothing from hearth.
    let out = Command::new("node")
        .args(["--test", "units.test.js"])
        .current_dir(&dir)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let built = build_and_install(work.path(), &dir, home.path(), &path);
    assert!(
        built.contains("units.convert") && built.contains("units.units"),
        "{built}"
    );
    // `[dependencies] calc` grants the tools import, and only that.
    let world = std::fs::read_to_string(dir.join("wit/world.wit")).unwrap();
    assert!(
        world.contains("import hearth:plugin/tools@0.1.0"),
        "{world}"
    );
    assert!(!world.contains("/kv@"), "{world}");

    let call = |args: &str| -> serde_json::Value {
        let out = ok(&invoke(
            work.path(),
            home.path(),
            &path,
            "units.convert",
            args,
        ));
        serde_json::from_str(out.trim()).unwrap()
    };
    // The exact fraction is calc's: the plugin only writes the expression.
    let miles = call(r#"{"value":10,"from":"mi","to":"km"}"#);
    assert_eq!(miles["exact"], "50292/3125", "{miles}");
    assert_eq!(miles["value"], 16.09344, "{miles}");
    assert_eq!(miles["unit"], "km", "{miles}");
    let fever = call(r#"{"value":98.6,"from":"F","to":"C"}"#);
    assert_eq!(fever["exact"], "37", "{fever}");
    let tiny = call(r#"{"value":1.5e-7,"from":"km","to":"mm"}"#);
    assert_eq!(tiny["exact"], "3/20", "{tiny}");

    // A conversion across dimensions is the caller's mistake, said so.
    let out = invoke(
        work.path(),
        home.path(),
        &path,
        "units.convert",
        r#"{"value":1,"from":"km","to":"kg"}"#,
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid arguments: cannot convert km (length) to kg (mass)"),
        "{stderr}"
    );

    let out = ok(&invoke(
        work.path(),
        home.path(),
        &path,
        "units.units",
        "{}",
    ));
    let listed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        listed["units"]["temperature"],
        serde_json::json!(["K", "C", "F"])
    );
}

#[test]
fn building_without_componentize_qjs_names_it_and_how_to_install_it() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    // A PATH with nothing on it: the kit looks for its program before it
    // runs anything.
    let empty = tempfile::tempdir().unwrap();
    let path = OsString::from(empty.path());
    let dir = scaffold(work.path(), home.path(), &path, "lonely", "js");
    let out = hearth_at(&dir, home.path(), &path, &["plugin", "build"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("componentize-qjs is not installed")
            && stderr.contains("npm install -g componentize-qjs@0.4.5"),
        "{stderr}"
    );
    assert!(!dir.join("plugin.wasm").exists());

    // What `npm install` in the folder provides is found without it on
    // PATH (which then needs only `node`, for the program's
    // `#!/usr/bin/env node`).
    let node = Command::new("node")
        .args(["-p", "process.execPath"])
        .output()
        .expect("run node");
    let node_dir = PathBuf::from(text(&node.stdout).trim())
        .parent()
        .unwrap()
        .to_path_buf();
    let installed = toolchain_bin().parent().unwrap().to_path_buf();
    std::os::unix::fs::symlink(&installed, dir.join("node_modules")).unwrap();
    // Built from the folder above, so the program's path is relative to
    // where hearth runs, not to where the tool runs.
    let built = ok(&hearth_at(
        work.path(),
        home.path(),
        &node_dir.into_os_string(),
        &["plugin", "build", "lonely"],
    ));
    assert!(built.contains("tools lonely.greet"), "{built}");
}

#[test]
fn a_component_built_without_sync_is_refused_naming_sync() {
    let path = toolchain_path();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let dir = scaffold(work.path(), home.path(), &path, "eager", "js");
    // The kit's build writes wit/ (and a good plugin.wasm) ...
    ok(&hearth_at(&dir, home.path(), &path, &["plugin", "build"]));
    // ... which a build by hand, with componentize-qjs's default
    // (component-model async) runtime, replaces.
    let out = Command::new(toolchain_bin().join("componentize-qjs"))
        .args(["--wit", "wit", "--world", "plugin", "--js", "app.js"])
        .args(["--output", "plugin.wasm"])
        .current_dir(&dir)
        .env("PATH", &path)
        .output()
        .expect("run componentize-qjs");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let out = hearth_at(
        work.path(),
        home.path(),
        &path,
        &["plugin", "dev", dir.to_str().unwrap(), "--yes"],
    );
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--sync"), "{stderr}");
    // Nothing was installed.
    let out = invoke(
        work.path(),
        home.path(),
        &path,
        "eager.greet",
        r#"{"name":"Ada"}"#,
    );
    assert!(!out.status.success());
}

#[test]
fn a_thrown_exception_shows_its_message_and_stack_once_and_a_tool_error_reaches_the_caller() {
    let path = toolchain_path();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let dir = scaffold(work.path(), home.path(), &path, "fragile", "js");
    // The template plus a tool whose helper throws and one that fails the
    // way a tool should.
    let app = std::fs::read_to_string(dir.join("app.js")).unwrap();
    // (`console.log` is the template's, into hearth's log: were it
    // missing, the error would be that `console` is not defined.)
    let tools = "function explode(args) {\n  console.log(\"about to explode\");\n  return deeper(args);\n}\n\n\
                 function deeper(args) {\n  throw new Error(\"the count went negative\");\n}\n\n\
                 // Tool name -> ";
    let app = app.replacen("// Tool name -> ", tools, 1).replacen(
        "const TOOLS = {\n",
        "const TOOLS = {\n  explode: { description: \"Throws\", schema: { type: \"object\" }, run: explode },\n  \
         refuse: { description: \"Fails\", schema: { type: \"object\" }, run: () => { throw { tag: \"failed\", val: \"not today\" }; } },\n",
        1,
    );
    assert!(app.contains("explode: {"), "the template changed:\n{app}");
    std::fs::write(dir.join("app.js"), app).unwrap();
    build_and_install(work.path(), &dir, home.path(), &path);

    let out = invoke(work.path(), home.path(), &path, "fragile.explode", "{}");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let report = &stderr[stderr
        .find("error: fragile.explode:")
        .unwrap_or_else(|| panic!("no error report in:\n{stderr}"))..];
    assert_eq!(
        stderr.matches("the count went negative").count(),
        1,
        "{stderr}"
    );
    // The JavaScript stack names the functions and the lines of app.js.
    for frame in [
        "at deeper (/app.js:",
        "at explode (/app.js:",
        "at invoke (/app.js:",
    ] {
        assert_eq!(stderr.matches(frame).count(), 1, "{frame}:\n{stderr}");
    }
    let message = report.find("the count went negative").unwrap();
    if let Some(backtrace) = report.find("wasm backtrace") {
        assert!(message < backtrace, "{stderr}");
    }

    // A thrown tool error is not a trap: the caller gets its message.
    let out = invoke(work.path(), home.path(), &path, "fragile.refuse", "{}");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: fragile.refuse: tool failed: not today"),
        "{stderr}"
    );
    assert!(!stderr.contains("trapped"), "{stderr}");

    // A trapped call is contained: the other tools still answer.
    let out = ok(&invoke(
        work.path(),
        home.path(),
        &path,
        "fragile.greet",
        r#"{"name":"Ada"}"#,
    ));
    assert!(out.contains("Hello, Ada!"), "{out}");
}
