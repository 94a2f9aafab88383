//! Spare instances: a plugin slow to instantiate gets a fresh instance made
//! in the background after each call. A spare must be exactly as fresh as
//! an instance made on the call path: no state from earlier calls, every
//! key-value write committed before the call, and never a spare of a plugin
//! that has since been replaced or removed.

use hearth_tests::{Scratch, shared_cache};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A runtime where every plugin keeps a spare, however fast it starts.
fn with_spares() -> Scratch {
    Scratch::with(|o| {
        o.cache_dir = shared_cache();
        o.spare_after = Duration::ZERO;
    })
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Calls `tool` until the runtime has measured enough instantiations to
/// decide on spares.
async fn warm_up(s: &Scratch, tool: &str, args: serde_json::Value) {
    for _ in 0..hearth::plugins::SPARE_SAMPLES {
        s.call(tool, args.clone()).await.unwrap();
    }
}

async fn spare_of(s: &Scratch, plugin: &Arc<hearth::plugins::LoadedPlugin>) {
    wait_until("a spare instance", || s.runtime.spare_ready(plugin)).await;
}

#[tokio::test]
async fn every_call_on_a_spare_starts_from_a_fresh_instance() {
    let s = with_spares();
    let hostile = s.hostile(|t| t).await.unwrap();
    warm_up(&s, "hostile.counter", json!({})).await;
    for _ in 0..4 {
        spare_of(&s, &hostile).await;
        assert_eq!(
            s.call("hostile.counter", json!({})).await.unwrap(),
            json!(1)
        );
    }
}

#[tokio::test]
async fn a_spare_sees_the_key_value_writes_of_earlier_calls() {
    let s = with_spares();
    let notes = s.bundled("notes").await;
    warm_up(&s, "notes.list", json!({})).await;
    assert_eq!(
        s.call("notes.list", json!({})).await.unwrap()["notes"],
        json!([])
    );
    for n in 1..=3 {
        // The spare that serves this save was made before the previous
        // save was committed, or just after: either way it must see it.
        spare_of(&s, &notes).await;
        s.call("notes.save", json!({"text": format!("note {n}")}))
            .await
            .unwrap();
        spare_of(&s, &notes).await;
        let listed = s.call("notes.list", json!({})).await.unwrap();
        assert_eq!(listed["notes"].as_array().unwrap().len(), n, "{listed}");
    }
}

#[tokio::test]
async fn a_replaced_or_removed_plugin_leaves_no_spare_behind() {
    let s = with_spares();
    let old = s.hostile(|t| t).await.unwrap();
    warm_up(&s, "hostile.ping", json!({"n": 1})).await;
    spare_of(&s, &old).await;
    assert!(
        s.runtime.plugin_memory().0 > 0,
        "a waiting spare holds memory"
    );

    // An upgrade: the old plugin's spare must never serve the new one.
    let new = s
        .hostile(|t| t.replace("version = \"0.1.0\"", "version = \"0.1.1\""))
        .await
        .unwrap();
    assert_eq!(new.manifest.version.to_string(), "0.1.1");
    assert!(!s.runtime.spare_ready(&old));
    warm_up(&s, "hostile.ping", json!({"n": 2})).await;
    spare_of(&s, &new).await;

    // Removed: its spare goes, and with it the memory it held.
    s.runtime.deactivate("hostile");
    assert!(!s.runtime.spare_ready(&new));
    wait_until("the spare's memory to be released", || {
        s.runtime.plugin_memory().0 == 0
    })
    .await;
}
