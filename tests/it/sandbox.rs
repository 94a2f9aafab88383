//! Each hostile behaviour gets the expected error, in bounded time and
//! memory, and leaves the plugin (in a fresh instance) and other plugins
//! working afterwards.

use hearth::plugins::{ErrorKind, InvokeError, LoadError, ToolError};
use hearth_tests::{MockServer, Scratch, rss_bytes};
use serde_json::json;
use std::time::{Duration, Instant};

/// A sandbox with the hostile fixture and `calc` active.
async fn sandbox() -> Scratch {
    sandbox_with(|t| t).await
}

async fn sandbox_with(edit: impl FnOnce(String) -> String) -> Scratch {
    let s = Scratch::new();
    s.bundled("calc").await;
    s.hostile(edit).await.unwrap();
    s
}

/// Runs a hostile tool, checks the error kind, the time it took and the
/// growth of this process's resident memory, then checks that a fresh
/// instance of the same plugin and another plugin still work.
async fn contained(
    s: &Scratch,
    tool: &str,
    args: serde_json::Value,
    kind: ErrorKind,
    within: Duration,
) -> InvokeError {
    // Memory is measured for the whole process: one at a time.
    let _serial = crate::MEMORY.write().await;
    let before = rss_bytes();
    let started = Instant::now();
    let err = s
        .call(&format!("hostile.{tool}"), args)
        .await
        .expect_err("the hostile call must fail");
    let took = started.elapsed();
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(err.kind(), kind, "{tool}: {err}");
    assert!(took < within, "{tool} took {took:?}, more than {within:?}");
    assert!(
        grown < MAX_GROWTH,
        "{tool}: resident memory grew by {grown} bytes"
    );
    still_healthy(s).await;
    err
}

/// How long a contained attack may take. Every one runs into the plugin's
/// time limit (1 s) at worst, and the error says which limit stopped it;
/// this bound, 10× that limit, only catches an attack that is never
/// stopped, with room for a busy two-core machine.
const WITHIN: Duration = Duration::from_secs(10);

/// The most a contained attack may add to the host's resident memory.
/// Plugin memory limits here are 32 MiB; without them the grow bomb alone
/// would take the pool's 1 GiB per memory.
const MAX_GROWTH: u64 = 96 << 20;

async fn still_healthy(s: &Scratch) {
    let pong = s.call("hostile.ping", json!({"n": 1})).await.unwrap();
    assert_eq!(pong["pong"], true);
    still_calc(s).await;
}

#[tokio::test]
async fn infinite_loop_is_interrupted_by_the_epoch_deadline() {
    let s = sandbox().await;
    let err = contained(&s, "spin", json!({}), ErrorKind::Timeout, WITHIN).await;
    assert!(err.to_string().contains("time limit of 1s"), "{err}");
}

#[tokio::test]
async fn sleeping_forever_in_a_host_call_hits_the_wall_clock_limit() {
    let s = sandbox().await;
    contained(&s, "sleep", json!({}), ErrorKind::Timeout, WITHIN).await;
}

#[tokio::test]
async fn deep_recursion_overflows_the_bounded_stack() {
    let s = sandbox().await;
    contained(&s, "recurse", json!({}), ErrorKind::StackOverflow, WITHIN).await;
}

#[tokio::test]
async fn memory_grow_bomb_stops_at_the_manifest_limit() {
    let s = sandbox().await;
    let err = contained(&s, "grow", json!({}), ErrorKind::MemoryLimit, WITHIN).await;
    match err {
        InvokeError::MemoryLimit { limit, wanted, .. } => {
            assert_eq!(limit, 32 << 20);
            assert!(wanted > limit);
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn huge_initial_memory_is_refused_at_instantiation() {
    // Rust components declare more than 1 MiB of initial memory (their
    // stack), so a 1 MiB limit refuses the instance before any code runs.
    let s = Scratch::new();
    let err = s
        .hostile(|t| t.replace("memory-mb = 32", "memory-mb = 1"))
        .await
        .expect_err("instantiation must fail");
    match err {
        LoadError::Call {
            export: "describe",
            error,
        } => {
            assert_eq!(error.kind(), ErrorKind::MemoryLimit, "{error}")
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn huge_output_is_refused() {
    // Enough memory to build the string, so the output cap is what stops it.
    let s = sandbox_with(|t| t.replace("memory-mb = 32", "memory-mb = 256")).await;
    let err = contained(
        &s,
        "big_output",
        json!({"bytes": 8 << 20}),
        ErrorKind::OutputTooLarge,
        WITHIN,
    )
    .await;
    assert!(err.to_string().contains("the limit is 4194304"), "{err}");
    // Just under the limit is fine.
    let ok = s
        .call("hostile.big_output", json!({"bytes": 1 << 20}))
        .await
        .unwrap();
    assert_eq!(ok.as_str().unwrap().len(), 1 << 20);
}

#[tokio::test]
async fn files_cannot_be_read_listed_or_written() {
    let s = sandbox().await;
    let report = s.call("hostile.files", json!({})).await.unwrap();
    let report = report.as_object().unwrap();
    assert_eq!(report.len(), 8, "{report:?}");
    for (path, outcome) in report {
        let outcome = outcome.as_str().unwrap();
        assert!(outcome.starts_with("error:"), "{path}: {outcome}");
    }
    assert!(!std::path::Path::new("/tmp/hearth-escape").exists());
    still_healthy(&s).await;
}

#[tokio::test]
async fn environment_and_arguments_are_empty() {
    // SAFETY: tests in this binary do not read this variable concurrently.
    unsafe { std::env::set_var("HEARTH_TEST_SECRET", "hunter2") };
    let s = sandbox().await;
    let env = s.call("hostile.env", json!({})).await.unwrap();
    assert_eq!(env["vars"], json!([]), "{env}");
    assert_eq!(env["args"], json!([]), "{env}");
    assert!(!env.to_string().contains("hunter2"));
    still_healthy(&s).await;
}

#[tokio::test]
async fn sockets_and_name_lookups_are_refused() {
    let server = MockServer::start(200, "secret").await;
    let s = sandbox().await;
    let out = s
        .call("hostile.socket", json!({"addr": server.addr.to_string()}))
        .await
        .unwrap();
    for (what, outcome) in out.as_object().unwrap() {
        assert!(
            outcome.as_str().unwrap().starts_with("error:"),
            "{what}: {outcome}"
        );
    }
    assert_eq!(server.hits(), 0);
    still_healthy(&s).await;
}

#[tokio::test]
async fn http_to_a_host_not_granted_is_denied_before_connecting() {
    let server = MockServer::start(200, "secret").await;
    let s = sandbox().await;
    for url in [
        format!("http://{}/", server.addr),
        format!("http://localhost:{}/", server.addr.port()),
        "http://allowed.invalid:8080/".to_string(),
        "https://allowed.invalid/".to_string(),
    ] {
        let err = s
            .call("hostile.http", json!({ "url": url }))
            .await
            .unwrap_err();
        assert!(
            matches!(err, InvokeError::Tool(ToolError::Denied(_))),
            "{url}: {err}"
        );
    }
    assert_eq!(server.hits(), 0, "a denied request reached the server");
    still_healthy(&s).await;
}

#[tokio::test]
async fn http_to_a_granted_host_works() {
    let server = MockServer::start(200, "hello from the granted host").await;
    let grant = format!("http://127.0.0.1:{}", server.addr.port());
    let s = sandbox_with(|t| t.replace("http://allowed.invalid", &grant)).await;
    let out = s
        .call(
            "hostile.http",
            json!({ "url": format!("{grant}/path?q=1") }),
        )
        .await
        .unwrap();
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], "hello from the granted host");
    assert_eq!(server.hits(), 1);
    assert!(
        server.last_request().starts_with("GET /path?q=1"),
        "{}",
        server.last_request()
    );
}

#[tokio::test]
async fn redirects_are_not_followed_and_credentials_headers_are_refused() {
    let target = MockServer::start(200, "internal secret").await;
    let redirector = MockServer::redirect(format!("http://{}/", target.addr)).await;
    let grant = format!("http://127.0.0.1:{}", redirector.addr.port());
    let s = sandbox_with(|t| t.replace("http://allowed.invalid", &grant)).await;
    let out = s
        .call("hostile.http", json!({ "url": format!("{grant}/go") }))
        .await
        .unwrap();
    assert_eq!(out["status"], 302, "{out}");
    assert_eq!(target.hits(), 0, "the redirect was followed");
    for header in ["authorization", "cookie", "host", "proxy-authorization"] {
        let err = s
            .call(
                "hostile.http",
                json!({ "url": format!("{grant}/h"), "headers": [[header, "x"]] }),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(header) || err.to_string().contains("Forbidden"),
            "{header}: {err}"
        );
    }
    assert_eq!(
        redirector.hits(),
        1,
        "a request with a forbidden header went out"
    );
}

#[tokio::test]
async fn stdout_flood_is_capped_and_the_call_completes() {
    let _serial = crate::MEMORY.write().await;
    let s = sandbox_with(|t| t.replace("time-limit-ms = 1000", "time-limit-ms = 20000")).await;
    let before = rss_bytes();
    let started = Instant::now();
    // 32 MiB to stdout and 32 MiB to stderr: kept whole, that would be
    // 64 MiB of host memory; capped, it is 128 KiB.
    let out = s
        .call("hostile.flood", json!({"bytes": 32 << 20}))
        .await
        .unwrap();
    assert!(out["written"].as_u64().unwrap() >= 32 << 20);
    // The plugin's 20 s time limit is what bounds the writing (past it the
    // call fails); this only catches a host that hangs once the guest has
    // returned, at twice that limit.
    assert!(started.elapsed() < Duration::from_secs(40));
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 32 << 20, "resident memory grew by {grown} bytes");
    still_healthy(&s).await;
}

#[tokio::test]
async fn log_flood_is_capped() {
    // 200,000 log calls take about 0.5 s in a debug build: too close to the
    // usual 1 s time limit on a busy machine, so the limit is 20 s here,
    // as for the stdout flood, and the bound below is what is tested.
    let s = sandbox_with(|t| t.replace("time-limit-ms = 1000", "time-limit-ms = 20000")).await;
    let started = Instant::now();
    let out = s
        .call("hostile.log_flood", json!({"count": 200_000}))
        .await
        .unwrap();
    assert_eq!(out["logged"], 200_000);
    // 20× the usual 0.5 s: room for a busy two-core machine, and still a
    // failure for a host that makes each of the 200,000 calls expensive.
    assert!(started.elapsed() < WITHIN);
}

#[tokio::test]
async fn kv_writes_of_a_trapped_call_are_rolled_back() {
    let s = sandbox().await;
    let err = contained(
        &s,
        "kv_then_trap",
        json!({"key": "k"}),
        ErrorKind::Trap,
        WITHIN,
    )
    .await;
    // The guest's panic message reaches the error through its stderr.
    assert!(
        err.to_string().contains("trapping after a kv write"),
        "{err}"
    );
    assert_eq!(
        s.call("hostile.kv_get", json!({"key": "k"})).await.unwrap(),
        json!(null)
    );
    // A call that returns normally commits.
    s.call("hostile.kv_set", json!({"key": "k", "value": "kept"}))
        .await
        .unwrap();
    assert_eq!(
        s.call("hostile.kv_get", json!({"key": "k"})).await.unwrap(),
        json!("kept")
    );
}

#[tokio::test]
async fn kv_values_over_the_limit_are_refused() {
    let s = sandbox().await;
    let err = s
        .call(
            "hostile.kv_set",
            json!({"key": "big", "value": "x", "repeat": (1 << 20) + 1}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the limit is 1048576"), "{err}");
}

#[tokio::test]
async fn random_bytes_bomb_is_refused() {
    let s = sandbox().await;
    contained(
        &s,
        "random_bomb",
        json!({"bytes": 1u64 << 30}),
        ErrorKind::Trap,
        WITHIN,
    )
    .await;
    let ok = s
        .call("hostile.random_bomb", json!({"bytes": 64}))
        .await
        .unwrap();
    assert_eq!(ok["got"], 64);
}

#[tokio::test]
async fn a_resource_handle_flood_hits_the_handle_limit() {
    let s = sandbox().await;
    let err = contained(&s, "handle_flood", json!({}), ErrorKind::Trap, WITHIN).await;
    // The store's resource table is capped at 4096 entries.
    assert!(
        err.to_string().contains("resource table has no free keys"),
        "{err}"
    );
}

#[tokio::test]
async fn no_state_leaks_between_calls() {
    let s = sandbox().await;
    for _ in 0..3 {
        assert_eq!(
            s.call("hostile.counter", json!({})).await.unwrap(),
            json!(1)
        );
    }
}

#[tokio::test]
async fn a_spinning_call_does_not_block_others() {
    // A current-thread runtime: spinning guests must yield at every epoch
    // tick or nothing else could run until they are killed.
    let s = sandbox().await;
    let spins: Vec<_> = (0..3)
        .map(|_| {
            let runtime = s.runtime.clone();
            tokio::spawn(async move {
                runtime
                    .invoke_qualified(
                        "hostile.spin",
                        "{}",
                        hearth::plugins::CallScope::new("spin"),
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    for _ in 0..10 {
        s.call("hostile.ping", json!({})).await.unwrap();
    }
    let pings = started.elapsed();
    // An ordering rather than a stopwatch: every ping was answered while
    // all three spinning calls were still running, before their 1 s time
    // limit stopped them (the ten pings normally take a few milliseconds).
    // Blocked by the spinners, the pings would have come only after.
    let spinning = spins.iter().filter(|spin| !spin.is_finished()).count();
    assert_eq!(spinning, 3, "pings took {pings:?} beside spinning plugins");
    for spin in spins {
        let err = spin.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    }
}

#[tokio::test]
async fn model_access_is_budgeted_and_reports_no_model() {
    let s = sandbox().await;
    let err = s
        .call("hostile.llm", json!({"prompt": "hi", "max_tokens": 1000}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, InvokeError::Tool(ToolError::Denied(m)) if m.contains("budget of 64")),
        "{err}"
    );
    let err = s
        .call("hostile.llm", json!({"prompt": "hi", "max_tokens": 8}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, InvokeError::Tool(ToolError::Unavailable(_))),
        "{err}"
    );
}

#[tokio::test]
async fn plugins_reach_the_model_through_the_scheduler_within_their_budget() {
    // Loading a model grows this process by far more than the sandbox
    // tests' memory bound: never while they measure.
    let _serial = crate::MEMORY.write().await;
    let engine = hearth::engine::Engine::load(
        &hearth_tests::default_model(),
        &hearth::engine::EngineOptions::default(),
    )
    .unwrap();
    let scheduler = hearth::scheduler::Scheduler::new(engine, Default::default());
    let backend: std::sync::Arc<dyn hearth::plugins::LlmBackend> =
        std::sync::Arc::new(scheduler.clone());
    let s = Scratch::with(|o| o.llm = Some(backend));
    // The plugin's wall-clock limit covers its wait for the model.
    s.hostile(|t| t.replace("time-limit-ms = 1000", "time-limit-ms = 30000"))
        .await
        .unwrap();
    let v = s
        .call(
            "hostile.llm",
            json!({"prompt": "Say hello.", "max_tokens": 8}),
        )
        .await
        .unwrap();
    assert!(!v["text"].as_str().unwrap().is_empty(), "{v}");
    assert_eq!(scheduler.stats().completed, 1);
    // Over the budget (64 tokens for prompt and answer): refused, not run.
    let err = s
        .call(
            "hostile.llm",
            json!({"prompt": "word ".repeat(80), "max_tokens": 8}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, InvokeError::Tool(ToolError::Denied(m)) if m.contains("budget")),
        "{err}"
    );
    assert_eq!(scheduler.stats().completed, 1);
}

/// POSTs a chat request to a server; returns (status, body).
async fn chat_over_http(addr: std::net::SocketAddr, content: &str) -> (u16, serde_json::Value) {
    let body = json!({"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 8});
    hearth_tests::post_json(addr, "/v1/chat/completions", &body).await
}

#[tokio::test]
async fn before_prompt_hooks_can_refuse_a_chat_request() {
    let _serial = crate::MEMORY.write().await;
    let s = Scratch::new();
    s.hostile(|t| format!("{t}\n[config]\ntag = \"A\"\n"))
        .await
        .unwrap();
    let (addr, scheduler) =
        hearth_tests::serve_with_plugins(&hearth_tests::default_model(), s.runtime.clone()).await;
    let (status, v) = chat_over_http(addr, "this is forbidden").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "refused_by_plugin", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("A refuses"),
        "{v}"
    );
    assert_eq!(
        scheduler.stats().completed,
        0,
        "a refused request never reaches the model"
    );
    let (status, v) = chat_over_http(addr, "Say hello.").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(scheduler.stats().completed, 1);
}

#[tokio::test]
async fn plugins_call_only_declared_dependencies() {
    let s = sandbox().await;
    s.bundled("notes").await;
    let v = s
        .call(
            "hostile.call_tool",
            json!({"name": "calc.eval", "args": {"expression": "6*7"}}),
        )
        .await
        .unwrap();
    assert_eq!(v["value"], 42);
    let err = s
        .call(
            "hostile.call_tool",
            json!({"name": "notes.list", "args": {}}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, InvokeError::Tool(ToolError::Denied(m)) if m.contains("[dependencies]")),
        "{err}"
    );
    // The callee's failure reaches the caller as a tool error, not a trap.
    let err = s
        .call(
            "hostile.call_tool",
            json!({"name": "calc.eval", "args": {"expression": "1/0"}}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("division by zero"), "{err}");
}

#[tokio::test]
async fn an_ungranted_import_rejects_the_plugin_at_load() {
    let s = Scratch::new();
    let err = s
        .hostile(|t| t.replace("kv = true\n", ""))
        .await
        .expect_err("kv is imported but not granted");
    match &err {
        LoadError::NotGranted { missing, .. } => {
            assert!(
                matches!(&missing[..], [(import, _)] if import.starts_with("hearth:plugin/kv@0.1")),
                "{missing:?}"
            )
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("kv = true"), "{err}");
    let err = s
        .hostile(|t| t.replace("http = [\"http://allowed.invalid\"]\n", ""))
        .await
        .expect_err("http is imported but not granted");
    assert!(err.to_string().contains("wasi:http/"), "{err}");
    // Every missing grant at once, not one per attempt.
    let err = s
        .hostile(|t| {
            t.replace("kv = true\n", "")
                .replace("http = [\"http://allowed.invalid\"]\n", "")
                .replace("llm-tokens = 64\n", "")
        })
        .await
        .expect_err("kv, http and llm are imported but not granted");
    let message = err.to_string();
    for needed in ["kv = true", "http = [", "llm-tokens", "hearth:plugin/llm"] {
        assert!(message.contains(needed), "{needed} missing from: {message}");
    }
}

#[tokio::test]
async fn replacing_the_active_set_lets_calls_in_flight_finish_on_the_old_one() {
    let s = sandbox().await;
    let runtime = s.runtime.clone();
    let in_flight = tokio::spawn(async move {
        runtime
            .invoke_qualified("hostile.spin", "{}", hearth::plugins::CallScope::new("old"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Reload without the hostile plugin.
    let calc = s.runtime.active("calc").unwrap();
    s.runtime.replace_active(vec![calc]);
    let err = s.call("hostile.ping", json!({})).await.unwrap_err();
    assert!(matches!(err, InvokeError::NoSuchPlugin(_)), "{err}");
    // The call that started before the swap ran to its own end.
    let old = in_flight.await.unwrap().unwrap_err();
    assert_eq!(old.kind(), ErrorKind::Timeout, "{old}");
    still_calc(&s).await;
}

async fn still_calc(s: &Scratch) {
    let v = s
        .call("calc.eval", json!({"expression": "2*(3+4)"}))
        .await
        .unwrap();
    assert_eq!(v["value"], 14);
}

#[tokio::test]
async fn event_hooks_run_in_priority_order_and_may_modify_or_veto() {
    let s = Scratch::new();
    s.hostile(|t| format!("{t}\n[config]\ntag = \"A\"\n"))
        .await
        .unwrap();
    s.hostile(|t| {
        t.replace("namespace = \"hostile\"", "namespace = \"second\"")
            .replace("priority = 0", "priority = 5")
            + "\n[config]\ntag = \"B\"\n"
    })
    .await
    .unwrap();
    let scope = || hearth::plugins::CallScope::new("hooks");
    let kind = hearth::plugins::EventKind::BeforePrompt;
    // `second` (priority 5) runs before `hostile` (priority 0).
    let d = s.runtime.dispatch(kind, "\"x\"", scope()).await;
    assert_eq!(d.payload, "\"xBA\"");
    assert!(d.vetoed.is_none() && d.failures.is_empty());
    // A veto stops the chain.
    let d = s.runtime.dispatch(kind, "\"forbidden\"", scope()).await;
    assert_eq!(
        d.vetoed,
        Some(("second".to_string(), "B refuses".to_string()))
    );
    assert_eq!(d.payload, "\"forbidden\"");
    // A trapping hook is skipped and reported; the others still run.
    let d = s.runtime.dispatch(kind, "\"trap\"", scope()).await;
    assert_eq!(d.failures.len(), 2, "{:?}", d.failures);
    assert_eq!(d.payload, "\"trap\"");
    // Nobody observes after-response.
    let d = s
        .runtime
        .dispatch(hearth::plugins::EventKind::AfterResponse, "\"y\"", scope())
        .await;
    assert_eq!(d.payload, "\"y\"");
}
