//! What the host hands plugins matches the WIT contract (`wit/v0.1.0`):
//! the `activated` event after every (re)activation, and
//! `call-context.caller` as the calling tool's qualified name.

use hearth::plugins::{LoadedPlugin, Manifest, Runtime};
use hearth_tests::{Scratch, fixtures};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Loads (without activating) the hostile fixture as `namespace`, with
/// `priority`, extra `[dependencies]` lines and configuration overrides.
async fn hostile_as(
    runtime: &Runtime,
    namespace: &str,
    priority: u32,
    dependencies: &str,
    config: Value,
) -> Arc<LoadedPlugin> {
    let text = std::fs::read_to_string(format!("{}/plugin.toml", fixtures::HOSTILE_DIR)).unwrap();
    let text = text
        .replace(
            "namespace = \"hostile\"",
            &format!("namespace = \"{namespace}\""),
        )
        .replace("priority = 0", &format!("priority = {priority}"))
        .replace(
            "calc = \"^0.1\"",
            &format!("calc = \"^0.1\"\n{dependencies}"),
        );
    let manifest = Manifest::parse(&text, "hostile/plugin.toml").unwrap();
    let bytes = std::fs::read(fixtures::HOSTILE_WASM).unwrap();
    runtime.load(manifest, &bytes, Some(&config)).await.unwrap()
}

/// What `namespace`'s `activated` hook recorded in its store so far.
async fn recorded(s: &Scratch, namespace: &str) -> Vec<Value> {
    let stored = s
        .call(&format!("{namespace}.kv_get"), json!({"key": "activated"}))
        .await
        .unwrap();
    match stored.as_str() {
        Some(text) => serde_json::from_str(text).unwrap(),
        None => Vec::new(),
    }
}

/// Waits until `namespace` has recorded `count` `activated` events; the
/// event is sent in the background, so it may come a little after
/// activation returned.
async fn activations(s: &Scratch, namespace: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = recorded(s, namespace).await;
        if seen.len() >= count {
            assert_eq!(seen.len(), count, "sent more than once: {seen:?}");
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{namespace} saw {} `activated` events, not {count}: {seen:?}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn activated_reaches_every_observer_after_the_set_is_in_place() {
    let s = Scratch::new();
    let calc = s.bundled("calc").await;
    let calc_version = calc.manifest.version.to_string();
    // Records what it saw, and what calling its dependency from the hook
    // gave: that call succeeds only if the new set is already in place.
    let recorder = hostile_as(
        &s.runtime,
        "hostile",
        0,
        "",
        json!({
            "events": ["activated"],
            "activated_call": {"name": "calc.eval", "args": {"expression": "6*7"}},
        }),
    )
    .await;
    // Observers that run first (higher priority) and trap, or take most of
    // their time limit and then veto: neither may hold up the activation
    // or keep the recorder from being told.
    let trapper = hostile_as(
        &s.runtime,
        "trapper",
        5,
        "",
        json!({"events": ["activated"], "on_activated": "trap"}),
    )
    .await;
    let sleeper = hostile_as(
        &s.runtime,
        "sleeper",
        3,
        "",
        json!({"events": ["activated"], "on_activated": "sleep", "activated_sleep_ms": 800}),
    )
    .await;
    // Observes only before-prompt: never sent `activated`.
    let quiet = hostile_as(&s.runtime, "quiet", 1, "", json!({})).await;

    let recorded_before = s.runtime.kv_usage("hostile").unwrap();
    let started = Instant::now();
    s.runtime.replace_active(vec![
        calc.clone(),
        recorder.clone(),
        trapper.clone(),
        sleeper.clone(),
        quiet.clone(),
    ]);
    let took = started.elapsed();
    // An ordering rather than a stopwatch: when replace_active returned, the
    // recorder had not written its record yet (it does below), so the
    // event reached it after the activation, which did not wait on its
    // observers (the sleeper's alone takes 800 ms). This test's runtime has
    // one thread and nothing has been awaited since, so the hooks cannot
    // have run behind its back.
    assert_eq!(
        s.runtime.kv_usage("hostile").unwrap(),
        recorded_before,
        "replace_active waited {took:?} on its observers"
    );
    // Every plugin serves calls at once, the failing observer included.
    for ns in ["trapper", "sleeper", "hostile"] {
        let pong = s.call(&format!("{ns}.ping"), json!({})).await.unwrap();
        assert_eq!(pong["pong"], true, "{ns}: {pong}");
    }

    let seen = activations(&s, "hostile", 1).await;
    assert_eq!(
        seen[0]["payload"],
        json!({"namespace": "hostile", "version": "0.1.0", "dependencies": {"calc": calc_version}}),
        "the payload names the plugin and its dependencies, nothing else"
    );
    assert_eq!(seen[0]["call"]["ok"]["value"], 42, "{}", seen[0]);
    // The trapping hook's writes (none) and the sleeper's veto changed
    // nothing; the plugin observing something else was not called.
    assert!(recorded(&s, "trapper").await.is_empty());
    assert!(recorded(&s, "quiet").await.is_empty());
    assert_eq!(s.runtime.active_plugins().len(), 5);

    // `activate` announces the changed set too.
    s.runtime.activate(recorder.clone());
    let seen = activations(&s, "hostile", 2).await;
    assert_eq!(seen[1]["payload"], seen[0]["payload"]);

    // A reload without the dependency: the payload says it is gone, and
    // the hook's call to it fails for that reason.
    s.runtime.replace_active(vec![recorder.clone()]);
    let seen = activations(&s, "hostile", 3).await;
    assert_eq!(seen[2]["payload"]["dependencies"], json!({"calc": null}));
    let err = seen[2]["call"]["err"].as_str().unwrap_or_default();
    assert!(err.contains("not active"), "{}", seen[2]);
}

#[tokio::test]
async fn the_callee_sees_the_calling_tool_as_its_qualified_name() {
    let s = Scratch::new();
    s.bundled("calc").await;
    let echo = hostile_as(
        &s.runtime,
        "echo",
        1,
        "hostile = \"^0.1\"",
        json!({"events": []}),
    )
    .await;
    s.runtime.activate(echo);
    let caller = hostile_as(
        &s.runtime,
        "hostile",
        0,
        "echo = \"^0.1\"",
        json!({
            "events": ["activated"],
            "activated_call": {"name": "echo.ctx", "args": {}},
        }),
    )
    .await;
    s.runtime.activate(caller);

    // A direct call has no caller.
    assert_eq!(
        s.call("echo.ctx", json!({})).await.unwrap(),
        json!({"request_id": "test", "caller": null, "depth": 0})
    );
    // One hop: `namespace.tool` of the tool that made the call.
    assert_eq!(
        s.call("hostile.call_tool", json!({"name": "echo.ctx", "args": {}}))
            .await
            .unwrap(),
        json!({"request_id": "test", "caller": "hostile.call_tool", "depth": 1})
    );
    // Two hops: each callee sees its immediate caller.
    assert_eq!(
        s.call(
            "hostile.call_tool",
            json!({"name": "echo.call_tool", "args": {"name": "hostile.ctx", "args": {}}}),
        )
        .await
        .unwrap(),
        json!({"request_id": "test", "caller": "echo.call_tool", "depth": 2})
    );
    // From an event hook no tool is running: the namespace alone.
    let seen = activations(&s, "hostile", 1).await;
    assert_eq!(
        seen[0]["call"]["ok"],
        json!({"request_id": "hearth:activated", "caller": "hostile", "depth": 1}),
        "{}",
        seen[0]
    );
}
