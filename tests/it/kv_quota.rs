//! Class 9: the key-value quota holds when calls of one plugin run at once.
//! Each call's writes are checked against the quota when buffered, but
//! concurrent calls buffer before any of them commits, so only the check
//! made at commit, inside the database's one write transaction, can stop
//! them adding up past it.

use hearth::plugins::kv::NAMESPACE_QUOTA;
use hearth_tests::Scratch;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const MIB: u64 = 1 << 20;
/// What each concurrent call writes: six 1 MiB values (within the call
/// buffer cap, and within the hostile fixture's 32 MiB of memory).
const KEYS_PER_CALL: u64 = 6;
const CALLS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_cannot_write_past_the_quota_together() {
    // The calls hold tens of MiB in the host at once: keep them away from
    // the tests that measure resident memory.
    let _serial = crate::MEMORY.write().await;
    let s = Scratch::new();
    s.hostile(|t| t).await.unwrap();
    let usage = |s: &Scratch| s.runtime.kv_usage("hostile").unwrap();

    // Leave room for exactly one call's writes: 7 to 11 MiB, while each
    // call writes a little over 6 MiB.
    let mut n = 0;
    while NAMESPACE_QUOTA - usage(&s) >= 11 * MIB {
        s.call(
            "hostile.kv_fill",
            json!({"prefix": format!("fill{n}-"), "count": 4, "bytes": MIB}),
        )
        .await
        .unwrap();
        n += 1;
    }
    let before = usage(&s);
    let room = NAMESPACE_QUOTA - before;
    assert!(room > (KEYS_PER_CALL + 1) * MIB && room < 2 * KEYS_PER_CALL * MIB);

    // Watch the usage while the calls run.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(before));
    let watcher = {
        let (runtime, done, peak) = (s.runtime.clone(), done.clone(), peak.clone());
        tokio::task::spawn_blocking(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(runtime.kv_usage("hostile").unwrap(), Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let runtime = s.runtime.clone();
        calls.spawn(async move {
            let args = json!({"prefix": format!("call{i}-"), "count": KEYS_PER_CALL, "bytes": MIB});
            runtime
                .invoke_qualified(
                    "hostile.kv_fill",
                    &args.to_string(),
                    hearth::plugins::CallScope::new(format!("kv-quota-{i}")),
                )
                .await
        });
    }
    let outcomes = calls.join_all().await;
    done.store(true, Ordering::SeqCst);
    watcher.await.unwrap();

    let after = usage(&s);
    let peak = peak.load(Ordering::SeqCst).max(after);
    assert!(
        peak <= NAMESPACE_QUOTA,
        "the namespace reached {peak} bytes; the quota is {NAMESPACE_QUOTA}"
    );
    let saved = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(saved, 1, "room for one call's writes: {outcomes:?}");
    for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        let text = refused.to_string();
        assert!(text.contains("quota"), "refused without saying why: {text}");
    }
    assert!(
        after - before > KEYS_PER_CALL * MIB,
        "the one call was saved"
    );
    // What is stored is one call's keys, as counted.
    let mut holding = 0;
    for i in 0..CALLS {
        let value = s
            .call("hostile.kv_get", json!({"key": format!("call{i}-0")}))
            .await
            .unwrap();
        holding += usize::from(!value.is_null());
    }
    assert_eq!(holding, 1);
}
