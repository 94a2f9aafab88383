//! Class 10: nothing a plugin controls reaches the user's terminal raw.
//! Tool errors, tool results, descriptions and problem messages pass
//! through the CLI's renderers, which escape control sequences (screen
//! clear, window title, OSC 52 clipboard writes, the one-byte CSI U+009B)
//! and the bidirectional and invisible characters that disguise text.

use hearth::cli::{Format, json_for_terminal, render_check, render_invoke_error, render_list};
use hearth::manager::{Origin, Problem, Resolution};
use hearth::plugins::{CallScope, LoadedPlugin, Manifest};
use hearth_tests::{Scratch, fixtures};
use serde_json::json;
use std::sync::Arc;

/// What the hostile fixture's `ansi_error` and these tests use: clear the
/// screen, set the window title, write the clipboard (OSC 52), a C1 CSI,
/// a right-to-left override and a zero-width space.
const ESCAPES: &str =
    "\u{1b}[2J\u{1b}]0;pwned\u{7}\u{1b}]52;c;aGVsbG8=\u{7}\u{9b}31m\u{202e}gnp.exe\u{200b}";

/// Panics if `text` holds anything that drives a terminal or disguises text.
fn assert_inert(what: &str, text: &str) {
    for c in [
        '\u{1b}', '\u{7}', '\u{7f}', '\u{9b}', '\u{202e}', '\u{200b}',
    ] {
        assert!(!text.contains(c), "{what} holds {c:?} raw: {text:?}");
    }
    if let Some(c) = text
        .chars()
        .find(|&c| hearth::plugins::manifest::is_disguising(c))
    {
        panic!("{what} holds {c:?} raw: {text:?}");
    }
}

fn hostile_manifest() -> Manifest {
    let text = std::fs::read_to_string(format!("{}/plugin.toml", fixtures::HOSTILE_DIR)).unwrap();
    Manifest::parse(&text, "hostile/plugin.toml").unwrap()
}

#[tokio::test]
async fn a_tool_error_with_escapes_is_printed_inert() {
    let s = Scratch::new();
    s.hostile(|t| t).await.unwrap();
    let err = s
        .call("hostile.ansi_error", json!({}))
        .await
        .expect_err("ansi_error fails");
    let printed = render_invoke_error("hostile.ansi_error", &err);
    assert_inert("the invoke error", &printed);
    assert!(
        printed.starts_with("error: hostile.ansi_error: "),
        "{printed}"
    );
    // Still readable: the escapes are shown, not dropped.
    assert!(
        printed.contains(r"\u{1b}]52;c;aGVsbG8=") && printed.contains("boom"),
        "{printed}"
    );
}

#[tokio::test]
async fn a_tool_result_with_escapes_is_printed_as_equivalent_inert_json() {
    let s = Scratch::new();
    s.hostile(|t| t).await.unwrap();
    // JSON strings may carry C1 controls and format characters raw, and
    // the plugin's JSON text is what `invoke` prints.
    let out = s
        .runtime
        .invoke_qualified(
            "hostile.ping",
            &json!({"text": "\u{9b}31m\u{202e}x\u{7f}\u{feff}"}).to_string(),
            CallScope::new("terminal"),
        )
        .await
        .unwrap();
    let printed = json_for_terminal(&out);
    assert_inert("the invoke result", &printed);
    let before: serde_json::Value = serde_json::from_str(&out).unwrap();
    let after: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(before, after, "the same JSON");
    assert_eq!(after["echo"]["text"], "\u{9b}31m\u{202e}x\u{7f}\u{feff}");
    assert!(
        printed.contains(r"\u009b31m\u202ex\u007f\ufeff"),
        "{printed}"
    );
}

#[tokio::test]
async fn descriptions_with_escapes_are_refused_at_load_or_listed_inert() {
    let s = Scratch::new();
    let config = json!({ "description": ESCAPES });
    let plugin = match s
        .runtime
        .load(
            hostile_manifest(),
            &std::fs::read(fixtures::HOSTILE_WASM).unwrap(),
            Some(&config),
        )
        .await
    {
        // The refusal quotes the plugin's description: it must be inert too.
        Err(e) => {
            assert_inert("the load error", &e.to_string());
            s.hostile(|t| t).await.unwrap()
        }
        Ok(p) => p,
    };
    // Whatever the load-time check lets through, the renderers stand on
    // their own: list a copy whose descriptions carry the escapes.
    let mut hostile = LoadedPlugin::clone(&plugin);
    hostile.manifest.description = format!("plugin {ESCAPES}\n  tool fake.line: injected");
    hostile.tools[0].description = format!("tool {ESCAPES}");
    let loaded = vec![(Arc::new(hostile), Origin::Dir("/plugins/hostile".into()))];

    let text = render_list(&s.runtime, &loaded, Format::Text).unwrap();
    assert_inert("the text list", &text);
    assert!(text.contains(r"tool \u{1b}[2J"), "{text}");
    // A newline in a description does not start a line of its own.
    assert!(
        !text.lines().any(|l| l.starts_with("  tool fake.line")),
        "{text}"
    );

    let printed = render_list(&s.runtime, &loaded, Format::Json).unwrap();
    assert_inert("the JSON list", &printed);
    let list: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(
        list[0]["tools"][0]["description"],
        format!("tool {ESCAPES}")
    );
}

#[test]
fn problem_messages_are_printed_inert() {
    let resolution = Resolution {
        order: vec![],
        problems: vec![Problem::InvalidPlugin {
            plugin: Some("hostile".into()),
            origin: "/plugins/hostile".into(),
            error: format!("config rejected: {ESCAPES}"),
        }],
    };
    for format in [Format::Text, Format::Json] {
        let printed = render_check(&resolution, format).unwrap();
        assert_inert("the check output", &printed);
    }
}
