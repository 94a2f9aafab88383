//! The `hearth` binary as a user runs it.
//!
//! Drives the `hearth` binary, like every test in `host/tests/`;
//! library-level tests are modules of `tests/it/` (see `tests/README.md`).

mod common;
use common::{hearth, invoke, text};

#[test]
fn invoke_prints_the_json_result() {
    let home = tempfile::tempdir().unwrap();
    let out = invoke(home.path(), "calc.eval", r#"{"expression":"2*(3+4)"}"#);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["value"], 14);
}

#[test]
fn invoke_errors_go_to_stderr_with_a_failing_status() {
    let home = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "plugin",
                "invoke",
                "calc.eval",
                "--args",
                r#"{"expression":"1/0"}"#,
            ],
            "division by zero",
        ),
        (
            &["plugin", "invoke", "calc.eval", "--args", "{not json"],
            "--args is not valid JSON",
        ),
        (
            &["plugin", "invoke", "nope.eval"],
            "no plugin provides namespace `nope`",
        ),
        (&["plugin", "invoke", "calc.nope"], "no tool `nope`"),
        (&["plugin", "invoke", "calc"], "not a qualified tool name"),
    ];
    for (args, expected) in cases {
        let out = hearth(home.path(), args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed {}",
            text(&out.stdout)
        );
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn list_shows_tools_and_permissions() {
    let home = tempfile::tempdir().unwrap();
    let out = hearth(home.path(), &["plugin", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for expected in [
        "tool calc.eval",
        "tool notes.save",
        "tool weather.current",
        "http to https://wttr.in:443",
        "key-value store",
    ] {
        assert!(stdout.contains(expected), "missing {expected}: {stdout}");
    }
    let out = hearth(home.path(), &["plugin", "list", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["calc", "notes", "weather"]);
}

#[test]
fn notes_persist_between_invocations_and_user_config_applies() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(home.path().join("config/notes.toml"), "max-notes = 1\n").unwrap();
    let out = invoke(home.path(), "notes.save", r#"{"text":"remember the milk"}"#);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = invoke(home.path(), "notes.search", r#"{"query":"milk"}"#);
    assert!(
        text(&out.stdout).contains("remember the milk"),
        "{}",
        text(&out.stderr)
    );
    let out = invoke(home.path(), "notes.save", r#"{"text":"second"}"#);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("max-notes = 1"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_broken_plugin_folder_is_named_and_the_rest_still_checks() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("candidates/broken");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        "name = \"broken\"\nnamespace = \"Broken\"\n",
    )
    .unwrap();
    let out = hearth(
        home.path(),
        &[
            "plugin",
            "check",
            "--dir",
            home.path().join("candidates").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("invalid plugin") && stdout.contains("candidates/broken/plugin.toml"),
        "{stdout}"
    );
    assert!(stdout.contains("missing field `version`"), "{stdout}");
    assert!(
        stdout.contains("would activate: calc, notes, weather"),
        "{stdout}"
    );
}

/// Writes a plugin folder whose component is the bundled `calc` (any valid
/// component will do: `check` is about how the manifests fit together).
fn plugin_dir(root: &std::path::Path, folder: &str, namespace: &str, version: &str, deps: &str) {
    let dir = root.join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        format!(
            "name = \"{namespace}\"\nnamespace = \"{namespace}\"\nversion = \"{version}\"\ncontract = \"0.1.0\"\n\
             priority = {}\ndescription = \"test\"\n[dependencies]\n{deps}",
            // Distinct priorities: the shared `eval` tool is not the point here.
            folder.bytes().map(u32::from).sum::<u32>()
        ),
    )
    .unwrap();
    let calc = hearth::bundled::BUNDLED
        .iter()
        .find(|b| b.source == "plugins/calc")
        .unwrap();
    std::fs::write(dir.join("plugin.wasm"), calc.component).unwrap();
}

#[test]
fn check_names_a_cycle_a_missing_dependency_and_a_namespace_clash() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("candidates");
    plugin_dir(&dir, "a", "alpha", "1.0.0", "beta = \"*\"\n");
    plugin_dir(&dir, "b", "beta", "1.0.0", "alpha = \"^1\"\n");
    plugin_dir(&dir, "c", "gamma", "1.0.0", "gone = \"^2\"\n");
    plugin_dir(&dir, "d1", "dup", "1.0.0", "");
    plugin_dir(&dir, "d2", "dup", "2.0.0", "");
    plugin_dir(&dir, "e", "fine", "1.0.0", "");
    let dir_arg = dir.to_str().unwrap();
    let out = hearth(home.path(), &["plugin", "check", "--dir", dir_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for expected in [
        "dependency cycle: alpha -> beta -> alpha",
        "missing dependency: `gamma` needs `gone` ^2",
        "namespace clash: `dup` is claimed by",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("would activate: calc, fine, notes, weather"),
        "{stdout}"
    );

    let out = hearth(
        home.path(),
        &["plugin", "check", "--dir", dir_arg, "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["consistent"], false);
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    for kind in ["cycle", "missing-dependency", "namespace-clash"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }

    let out = hearth(home.path(), &["plugin", "graph", "--dir", dir_arg]);
    let dot = text(&out.stdout);
    assert!(
        dot.starts_with("digraph {") && dot.contains("gone (missing)"),
        "{dot}"
    );
}

#[test]
fn check_passes_a_consistent_set_and_fails_on_unreadable_input() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("ok");
    plugin_dir(&dir, "a", "alpha", "1.2.0", "");
    plugin_dir(&dir, "b", "beta", "1.0.0", "alpha = \"^1.1\"\n");
    let out = hearth(
        home.path(),
        &["plugin", "check", "--dir", dir.to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("activation order: alpha, beta, calc, notes, weather"),
        "{}",
        text(&out.stdout)
    );

    let file = home.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = hearth(
        home.path(),
        &["plugin", "check", "--dir", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = hearth(home.path(), &["plugin", "check", "--format", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
}
