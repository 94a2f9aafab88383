//! The `hearth` binary as a user runs it.

use std::process::Command;

fn hearth(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env("HEARTH_HOME", home)
        .env_remove("HEARTH_LOG")
        .output()
        .expect("run hearth")
}

/// `hearth plugin invoke <tool> --args <args>`.
fn invoke(home: &std::path::Path, tool: &str, args: &str) -> std::process::Output {
    hearth(home, &["plugin", "invoke", tool, "--args", args])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

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
        "http: https://wttr.in:443",
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
fn a_broken_installed_manifest_is_named() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("plugins/broken");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        "name = \"broken\"\nnamespace = \"Broken\"\n",
    )
    .unwrap();
    let out = hearth(home.path(), &["plugin", "list"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("plugins/broken/plugin.toml"), "{stderr}");
}
