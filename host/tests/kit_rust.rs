//! `hearth plugin new`, `build`, `dev` and `check --dir` with the Rust kit:
//! from an empty folder to a tool answering through the host, with the
//! world generated from plugin.toml.
//!
//! Drives the `hearth` binary, like every test in `host/tests/`;
//! library-level tests are modules of `tests/it/` (see `tests/README.md`).

use std::path::Path;
use std::process::Command;

mod common;
use common::text;

/// `hearth <args>` in `cwd`, with `HEARTH_HOME` set and the kit's cargo
/// builds sharing one target folder across runs.
fn hearth_in(cwd: &Path, home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .current_dir(cwd)
        .env("HEARTH_HOME", home)
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("kit-rust-target"),
        )
        .env_remove("HEARTH_LOG")
        .output()
        .expect("run hearth")
}

#[test]
fn a_new_rust_plugin_builds_installs_and_answers() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = hearth_in(
        work.path(),
        home.path(),
        &["plugin", "new", "greeter", "--lang", "rust"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = work.path().join("greeter");
    assert!(dir.join("plugin.toml").is_file() && dir.join("src/lib.rs").is_file());
    // A second `new` into the same place is refused, and changes nothing.
    let out = hearth_in(
        work.path(),
        home.path(),
        &["plugin", "new", "greeter", "--lang", "rust"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );

    let out = hearth_in(&dir, home.path(), &["plugin", "build"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("tools greeter.greet"),
        "{}",
        text(&out.stdout)
    );
    // The world imports only what plugin.toml grants: nothing optional.
    let world = std::fs::read_to_string(dir.join("wit/world.wit")).unwrap();
    assert!(
        world.contains("export hearth:plugin/guest@0.1.0"),
        "{world}"
    );
    assert!(!world.contains("/kv@"), "{world}");

    // A plugin folder itself can be checked, not only a folder of them.
    let out = hearth_in(&dir, home.path(), &["plugin", "check", "--dir", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    let out = hearth_in(
        work.path(),
        home.path(),
        &["plugin", "dev", "greeter", "--yes"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains("UNSIGNED") && summary.contains("installed greeter@0.1.0"),
        "{summary}"
    );

    let out = hearth_in(
        work.path(),
        home.path(),
        &[
            "plugin",
            "invoke",
            "greeter.greet",
            "--args",
            r#"{"name":"Ada"}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"greeting":"Hello, Ada!"}"#);
    // Arguments are checked against the schema the plugin declared.
    let out = hearth_in(
        work.path(),
        home.path(),
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
fn check_dir_reports_folders_that_are_not_plugins() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("plugins/not-a-plugin")).unwrap();
    let out = hearth_in(
        work.path(),
        home.path(),
        &["plugin", "check", "--dir", "plugins"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("not-a-plugin")
            && text(&out.stdout).contains("no plugin.toml here"),
        "{}",
        text(&out.stdout)
    );
    let out = hearth_in(
        work.path(),
        home.path(),
        &["plugin", "check", "--dir", "missing"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn building_a_folder_without_sources_says_what_it_looks_for() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("plugin.toml"),
        "name = \"x\"\nnamespace = \"x\"\nversion = \"0.1.0\"\ncontract = \"0.1.0\"\ndescription = \"x\"\n",
    )
    .unwrap();
    let out = hearth_in(work.path(), home.path(), &["plugin", "build"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("app.py"),
        "{}",
        text(&out.stderr)
    );
}
