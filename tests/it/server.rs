//! The HTTP service on 127.0.0.1 with the real default model, spoken to
//! over raw sockets (so malformed requests can be sent too). The server runs
//! in this process (`hearth::server::serve`); `hearth serve` as a process is
//! tested in `host/tests/serve.rs`.

use hearth::engine::{Engine, EngineOptions};
use hearth::scheduler::{Scheduler, SchedulerOptions};
use hearth::server::{AppState, ServerOptions};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const KEY: &str = "test-key-123";

struct Server {
    addr: SocketAddr,
    scheduler: Scheduler,
}

fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Engine::load(&hearth_tests::default_model(), &EngineOptions::default()).unwrap()
        })
        .clone()
}

/// A server on its own runtime thread, for as long as the test runs.
fn start(queue: usize, options: ServerOptions) -> Server {
    start_with(queue, options, None)
}

fn start_with(
    queue: usize,
    options: ServerOptions,
    plugins: Option<(hearth::plugins::Runtime, hearth::home::Home)>,
) -> Server {
    let scheduler = Scheduler::new(
        engine(),
        SchedulerOptions {
            capacity: queue,
            ..Default::default()
        },
    );
    let mut state = AppState::new(scheduler.clone(), "smollm2".into(), options);
    let mut watch = None;
    if let Some((runtime, home)) = plugins {
        watch = Some((runtime.clone(), home.clone()));
        state = state.with_plugins(runtime).with_home(home);
    }
    let state = Arc::new(state);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // Another process changing the installed set shows up quickly.
            if let Some((runtime, home)) = watch {
                hearth::manager::watch_installed(runtime, home, Duration::from_millis(100));
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            hearth::server::serve(
                listener,
                state,
                std::future::pending(),
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        });
    });
    Server {
        addr: rx.recv().unwrap(),
        scheduler,
    }
}

fn options() -> ServerOptions {
    ServerOptions {
        api_keys: vec![KEY.into()],
        ..Default::default()
    }
}

/// Sends raw bytes; returns (status, headers, body).
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String, String) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(addr, req.as_bytes())
}

fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String, String) {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
}

/// The JSON of a non-chunked body, or of a chunked one.
fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| {
        let joined: String = body
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .collect();
        serde_json::from_str(&joined).unwrap_or_else(|e| panic!("{e}: {body}"))
    })
}

fn error_of(status: u16, body: &str, want: u16) -> Value {
    assert_eq!(status, want, "{body}");
    let v = json_of(body);
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    v["error"].clone()
}

#[test]
fn health_models_and_auth() {
    let _memory = crate::MEMORY.blocking_read();
    let s = start(8, options());
    let (status, _, body) = get(s.addr, "/healthz", None);
    assert_eq!(
        (status, json_of(&body)["status"].clone()),
        (200, json!("ok"))
    );
    let (status, _, _) = get(s.addr, "/readyz", None);
    assert_eq!(status, 200);
    let (status, _, body) = get(s.addr, "/v1/models", Some(KEY));
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["data"][0]["id"], "smollm2");
    let e = error_of(
        get(s.addr, "/v1/models", None).0,
        &get(s.addr, "/v1/models", None).2,
        401,
    );
    assert!(e["message"].as_str().unwrap().contains("missing API key"));
    let (status, _, body) = get(s.addr, "/v1/models", Some("wrong"));
    let e = error_of(status, &body, 401);
    assert_eq!(e["message"], "invalid API key");
    let (status, _, body) = get(s.addr, "/v2/nothing", Some(KEY));
    error_of(status, &body, 404);
    let (status, _, body) = get(s.addr, "/v1/chat/completions", Some(KEY));
    error_of(status, &body, 405);
}

#[test]
fn chat_answers_with_usage_and_streams() {
    let _memory = crate::MEMORY.blocking_read();
    let s = start(8, options());
    let (status, _, body) = post(
        s.addr,
        "/v1/chat/completions",
        &json!({"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 40}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["object"], "chat.completion");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    assert!(u["prompt_tokens"].as_u64().unwrap() > 20);

    let (status, head, body) = post(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Count to five."}], "stream": true, "max_tokens": 6, "temperature": 0, "stream_options": {"include_usage": true}}).to_string(),
    );
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!streamed.is_empty());
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    assert_eq!(finish, "length");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 6);
    let (_, _, metrics) = get(s.addr, "/metrics", None);
    assert!(
        metrics.contains("hearth_time_to_first_token_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hearth_generation_tokens_per_second_count 2"),
        "{metrics}"
    );
}

#[test]
fn client_tools_come_back_as_tool_calls() {
    let _memory = crate::MEMORY.blocking_read();
    let s = start(8, options());
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"], "additionalProperties": false}
    }}]);
    let (status, _, body) = post(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": tools,
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "temperature": 0}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
}

#[test]
fn bad_requests_get_openai_errors_naming_the_problem() {
    let _memory = crate::MEMORY.blocking_read();
    let s = start(
        8,
        ServerOptions {
            max_body: 4096,
            ..options()
        },
    );
    let chat = |body: &str| post(s.addr, "/v1/chat/completions", body);
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "not valid JSON"),
        (json!({"model": "smollm2"}).to_string(), 400, "messages"),
        (json!({"messages": user, "temperature": "hot"}).to_string(), 400, "temperature"),
        (json!({"messages": user, "temperature": -1}).to_string(), 400, "temperature"),
        (json!({"messages": user, "top_p": 0}).to_string(), 400, "top_p"),
        (json!({"messages": user, "max_tokens": 0}).to_string(), 400, "max_tokens"),
        (json!({"messages": user, "max_tokens": 1_000_000}).to_string(), 400, "max_tokens"),
        (json!({"messages": user, "model": "gpt-4"}).to_string(), 404, "gpt-4"),
        (json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string(), 400, "wizard"),
        (json!({"messages": user, "tool_choice": "required"}).to_string(), 400, "tool_choice"),
        (json!({"messages": user, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}}).to_string(), 400, "constraint"),
        (format!("{}{}", "[".repeat(1000), "]".repeat(1000)), 400, "JSON"),
        (json!({"messages": user, "bogus": 1}).to_string(), 400, "bogus"),
    ];
    for (body, want, mentions) in cases {
        let (status, _, text) = chat(&body);
        let e = error_of(status, &text, want);
        let all = e.to_string();
        assert!(all.contains(mentions), "{body:.80}: {all}");
    }
    // Too large for the body limit.
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(10_000)}]}).to_string();
    let (status, _, text) = chat(&big);
    error_of(status, &text, 413);
    // Over the context window (still under the body limit here).
    let s2 = start(8, options());
    let long = json!({"messages": [{"role": "user", "content": "word ".repeat(9000)}]}).to_string();
    let (status, _, text) = post(s2.addr, "/v1/chat/completions", &long);
    let e = error_of(status, &text, 400);
    assert_eq!(e["code"], "context_length_exceeded", "{e}");
    // Wrong content type.
    let body = json!({"messages": user}).to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, text) = raw(s.addr, req.as_bytes());
    error_of(status, &text, 415);
    // Content-Length and Transfer-Encoding together.
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    );
    let (status, _, _) = raw(s.addr, req.as_bytes());
    assert!(status == 400 || status == 0, "CL+TE answered {status}");
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_disconnects_stop_generation() {
    let _memory = crate::MEMORY.blocking_read();
    let s = start(1, options());
    let long = json!({"messages": [{"role": "user", "content": "Tell me a very long story about the sea."}], "stream": true, "max_tokens": 400, "temperature": 0}).to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}",
        long.len()
    );
    // One generating, one queued.
    let mut running = TcpStream::connect(s.addr).unwrap();
    running.write_all(req.as_bytes()).unwrap();
    let mut first = [0u8; 256];
    let _ = running.read(&mut first).unwrap();
    while s.scheduler.stats().in_flight < 1 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut queued = TcpStream::connect(s.addr).unwrap();
    queued.write_all(req.as_bytes()).unwrap();
    while s.scheduler.stats().queued.iter().sum::<usize>() < 1 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, head, text) = post(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(),
    );
    let e = error_of(status, &text, 503);
    assert_eq!(e["code"], "queue_full");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );
    // Both clients hang up: the running generation stops, the queued one never runs.
    drop(running);
    drop(queued);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = s.scheduler.stats();
        if st.in_flight == 0 && st.queued.iter().sum::<usize>() == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still busy: {st:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = s.scheduler.stats();
    assert_eq!(st.abandoned, 1, "{st:?}");
    // And the server keeps serving; its metrics say what happened.
    let (status, _, _) = get(s.addr, "/healthz", None);
    assert_eq!(status, 200);
    let (status, head, metrics) = get(s.addr, "/metrics", None);
    assert_eq!(status, 200);
    assert!(head.contains("text/plain"), "{head}");
    for line in [
        "hearth_in_flight_generations 0",
        "hearth_rejected_total 1",
        "hearth_abandoned_total 1",
        "hearth_requests_total{route=\"/v1/chat/completions\",status=\"503\"} 1",
        "hearth_queue_depth{class=\"interactive\"} 0",
        "hearth_model_loaded 1",
        "hearth_resident_memory_bytes ",
        // SmolLM2-135M: 30 layers × 3 key/value heads × 64 × (K and V) × 4 bytes.
        "hearth_kv_cache_bytes_per_token 46080",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // The generation that ran left its cache in its slot (for the next
    // prompt with the same start): whole blocks of 256 positions.
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hearth_kv_cache_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(held > 0 && held.is_multiple_of(256 * 46080), "{held}");
}

/// The bundled plugins, activated in a fresh data directory.
fn bundled_plugins() -> (
    tempfile::TempDir,
    hearth::home::Home,
    hearth::plugins::Runtime,
) {
    let dir = tempfile::tempdir().unwrap();
    let home = hearth::home::Home {
        root: dir.path().to_path_buf(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let discovery = hearth::manager::discover_installed(&home).unwrap();
            let runtime =
                hearth::plugins::Runtime::new(hearth::plugins::RuntimeOptions::in_dir(&home.root))
                    .unwrap();
            let set = hearth::manager::load_and_activate(&runtime, &home, discovery).await;
            assert!(
                set.resolution.order.iter().any(|n| n == "calc"),
                "{:?}",
                set.resolution.order
            );
            runtime
        });
    (dir, home, runtime)
}

#[test]
fn plugin_tool_calls_run_in_the_sandbox_between_generations() {
    let _memory = crate::MEMORY.blocking_read();
    let (_dir, _home, s) = start_admin();
    let (status, _, body) = post(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "What is 6 times 7?"}],
                "tool_choice": {"type": "function", "function": {"name": "calc.eval"}},
                "temperature": 0, "max_tokens": 60})
        .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    // The call went to the plugin, not back to the client, and the model
    // answered after seeing its result: two generations for one request.
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert_eq!(s.scheduler.stats().completed, 2, "{v}");
    let (_, _, metrics) = get(s.addr, "/metrics", None);
    assert!(
        metrics.contains("hearth_plugin_calls_total{namespace=\"calc\",outcome="),
        "{metrics}"
    );
    // Every plugin call has ended: its memory is back in the budget.
    assert!(
        metrics.contains("hearth_plugin_memory_bytes 0\n")
            && metrics.contains("hearth_plugin_memory_budget_bytes "),
        "{metrics}"
    );
    let u = &v["usage"];
    assert!(
        u["prompt_tokens"].as_u64().unwrap() > 100,
        "both prompts are counted: {u}"
    );
}

/// A server with the bundled plugins in a fresh home and the admin key
/// `admin-key`; the home's folder lasts as long as the returned guard.
fn start_admin() -> (tempfile::TempDir, hearth::home::Home, Server) {
    let (dir, home, runtime) = bundled_plugins();
    let s = start_with(
        8,
        ServerOptions {
            admin_keys: vec!["admin-key".into()],
            ..options()
        },
        Some((runtime, home.clone())),
    );
    (dir, home, s)
}

fn admin_request(addr: SocketAddr, method: &str, path: &str, key: &str) -> (u16, String, String) {
    raw(
        addr,
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn admin_routes_change_the_plugin_set_with_an_admin_key() {
    let _memory = crate::MEMORY.blocking_read();
    let (_dir, _home, s) = start_admin();
    let namespaces = || {
        let (_, _, body) = get(s.addr, "/v1/plugins", Some(KEY));
        json_of(&body)["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["namespace"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(namespaces().contains(&"notes".to_string()));
    // The API key is not an admin key.
    let (status, _, body) = admin_request(s.addr, "POST", "/v1/admin/plugins/notes/disable", KEY);
    error_of(status, &body, 401);
    let (status, _, body) = admin_request(
        s.addr,
        "POST",
        "/v1/admin/plugins/notes/disable",
        "admin-key",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        !json_of(&body)["active"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "notes"),
        "{body}"
    );
    assert!(!namespaces().contains(&"notes".to_string()));
    let (status, _, body) = admin_request(
        s.addr,
        "POST",
        "/v1/admin/plugins/notes/enable",
        "admin-key",
    );
    assert_eq!(status, 200, "{body}");
    assert!(namespaces().contains(&"notes".to_string()));
    let (status, _, body) = admin_request(
        s.addr,
        "POST",
        "/v1/admin/plugins/notes/explode",
        "admin-key",
    );
    error_of(status, &body, 404);
    // An unknown namespace is not found, whatever the change.
    for (method, path) in [
        ("POST", "/v1/admin/plugins/nonexistent/disable"),
        ("POST", "/v1/admin/plugins/nonexistent/enable"),
        ("DELETE", "/v1/admin/plugins/nonexistent"),
    ] {
        let (status, _, body) = admin_request(s.addr, method, path, "admin-key");
        let e = error_of(status, &body, 404);
        assert_eq!(e["code"], "plugin_not_found", "{method} {path}: {body}");
        assert!(
            e["message"].as_str().unwrap().contains("`nonexistent`"),
            "{method} {path}: {body}"
        );
    }
    // A bundled plugin can be disabled, not removed: a refused change.
    let (status, _, body) = admin_request(s.addr, "DELETE", "/v1/admin/plugins/notes", "admin-key");
    let e = error_of(status, &body, 409);
    assert_eq!(e["code"], "plugin_change_refused", "{body}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("`notes` is bundled, not installed"),
        "{body}"
    );
    assert!(namespaces().contains(&"notes".to_string()));
    // Without admin keys the admin API is off.
    let plain = start(8, options());
    let (status, _, body) =
        admin_request(plain.addr, "POST", "/v1/admin/plugins/notes/disable", KEY);
    assert_eq!(error_of(status, &body, 403)["code"], "admin_disabled");
}

#[test]
fn the_admin_listing_shows_disabled_plugins_with_their_permissions_in_words() {
    let _memory = crate::MEMORY.blocking_read();
    let (_dir, _home, s) = start_admin();
    // The listing, and `notes` in it (disabled plugins stay listed).
    let listing = || {
        let (status, _, body) = admin_request(s.addr, "GET", "/v1/admin/plugins", "admin-key");
        assert_eq!(status, 200, "{body}");
        let v = json_of(&body);
        let notes = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["namespace"] == "notes")
            .unwrap_or_else(|| panic!("notes is not listed: {v}"))
            .clone();
        (v, notes)
    };
    let (status, _, body) = admin_request(s.addr, "GET", "/v1/admin/plugins", KEY);
    error_of(status, &body, 401);
    let (v, notes) = listing();
    assert_eq!(notes["source"], "bundled", "{notes}");
    assert_eq!(notes["enabled"], true);
    assert_eq!(notes["active"], true);
    assert!(
        notes["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "its own key-value store"),
        "{notes}"
    );
    assert!(
        notes["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "notes.save"),
        "{notes}"
    );
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    let (status, _, body) = admin_request(
        s.addr,
        "POST",
        "/v1/admin/plugins/notes/disable",
        "admin-key",
    );
    assert_eq!(status, 200, "{body}");
    // Still listed, as disabled, with no tools.
    let (_, notes) = listing();
    assert_eq!(notes["enabled"], false, "{notes}");
    assert_eq!(notes["active"], false, "{notes}");
    assert_eq!(notes["tools"], json!([]), "{notes}");
}

#[test]
fn the_web_page_is_served_with_a_strict_policy_and_the_status_route_reports() {
    let _memory = crate::MEMORY.blocking_read();
    let (_dir, home, runtime) = bundled_plugins();
    let s = start_with(8, options(), Some((runtime, home)));
    // The page and its files need no key; the policy allows only this
    // origin's scripts, styles and connections.
    let (status, head, body) = get(s.addr, "/", None);
    assert_eq!(status, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self';"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        body.contains("<script type=\"module\" src=\"/assets/"),
        "{body}"
    );
    assert!(!body.contains("<script>"), "no inline script: {body}");
    let (status, head, _) = get(s.addr, "/assets/app.js", None);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("text/javascript"),
        "{head}"
    );
    for bad in [
        "/assets/../Cargo.toml",
        "/assets/nope.js",
        "/assets/app.exe",
    ] {
        let (status, _, body) = get(s.addr, bad, None);
        error_of(status, &body, 404);
    }
    // The status route is the API's: it needs the key.
    let (status, _, body) = get(s.addr, "/v1/status", None);
    error_of(status, &body, 401);
    let (status, _, body) = post(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true})
            .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    // A stream's request is counted when the stream ends, just after its
    // last event went out.
    let deadline = Instant::now() + Duration::from_secs(5);
    let v = loop {
        let (status, _, body) = get(s.addr, "/v1/status", Some(KEY));
        assert_eq!(status, 200, "{body}");
        let v = json_of(&body);
        if !v["recent"]["requests"].as_array().unwrap().is_empty() || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        v["model"].is_string() && v["context"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert!(v["parallel"].as_u64().unwrap() > 0, "{v}");
    assert!(v["queue"]["queued"].is_array(), "{v}");
    assert_eq!(v["recent"]["ttft_ms"].as_array().unwrap().len(), 1, "{v}");
    let requests = v["recent"]["requests"].as_array().unwrap();
    assert!(
        requests
            .iter()
            .any(|r| r["route"] == "/v1/chat/completions" && r["status"] == 200),
        "{v}"
    );
    // The page's own traffic is not in the list.
    assert!(
        !requests
            .iter()
            .any(|r| r["route"] == "/" || r["route"] == "/v1/status"),
        "{v}"
    );
}

#[test]
fn streams_report_host_tool_calls_as_they_happen_when_asked() {
    let _memory = crate::MEMORY.blocking_read();
    let (_dir, home, runtime) = bundled_plugins();
    let s = start_with(8, options(), Some((runtime, home)));
    let ask = |tool_events: bool| {
        let (status, _, body) = post(
            s.addr,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "What is 6 times 7?"}],
                    "tool_choice": {"type": "function", "function": {"name": "calc.eval"}},
                    "stream": true,
                    "stream_options": {"include_tool_events": tool_events},
                    "temperature": 0, "max_tokens": 20})
            .to_string(),
        );
        assert_eq!(status, 200, "{body}");
        body
    };
    let body = ask(true);
    let events: Vec<Value> = body
        .split("event: hearth.tool\n")
        .skip(1)
        .map(|rest| {
            let data = rest.lines().next().unwrap().strip_prefix("data: ").unwrap();
            serde_json::from_str(data).unwrap()
        })
        .collect();
    assert_eq!(events.len(), 2, "a call and its result: {body}");
    assert_eq!(events[0]["phase"], "call");
    assert_eq!(events[0]["name"], "calc.eval");
    assert!(
        events[0]["arguments"].as_str().unwrap().starts_with('{'),
        "{body}"
    );
    assert_eq!(events[1]["phase"], "result");
    assert_eq!(events[1]["id"], events[0]["id"]);
    assert!(events[1]["elapsed_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        events[1]["ok"] == true && events[1]["result"].is_string()
            || events[1]["ok"] == false && events[1]["error"].is_string(),
        "{body}"
    );
    // The call comes before the answer that follows it, which ends as usual.
    let call_at = body.find("event: hearth.tool").unwrap();
    let last_content = body.rfind("\"content\":").unwrap();
    assert!(call_at < last_content, "{body}");
    assert!(body.contains("data: [DONE]"), "{body}");
    // Not asked: an OpenAI stream only.
    assert!(!ask(false).contains("event:"));
}

fn admin_post(addr: SocketAddr, path: &str, key: &str, body: &Value) -> (u16, String, String) {
    let body = body.to_string();
    raw(
        addr,
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
    )
}

#[test]
fn admins_install_from_the_registry_after_granting_the_permissions_shown() {
    let _memory = crate::MEMORY.blocking_read();
    let (_dir, home, s) = start_admin();
    let install = |body: Value| admin_post(s.addr, "/v1/admin/plugins", "admin-key", &body);
    // Not an admin: refused before anything is looked at.
    let (status, _, body) = admin_post(
        s.addr,
        "/v1/admin/plugins",
        KEY,
        &json!({"plugin": "weather"}),
    );
    error_of(status, &body, 401);
    // Bad requests name the problem.
    let (status, _, body) = install(json!({"plugin": "weather", "yes": true}));
    assert!(
        error_of(status, &body, 400)["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `yes`")
    );
    let (status, _, body) = install(json!({"plugin": "weather@not-a-version"}));
    assert_eq!(error_of(status, &body, 400)["param"], "plugin");
    let (status, _, body) = install(json!({"plugin": "nonexistent"}));
    let e = error_of(status, &body, 409);
    assert_eq!(e["code"], "install_failed");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no plugin `nonexistent`"),
        "{e}"
    );
    // First ask: the permissions to grant, nothing installed.
    let (status, _, body) = install(json!({"plugin": "weather"}));
    assert_eq!(
        error_of(status, &body, 409)["code"],
        "permissions_required",
        "{body}"
    );
    let permissions = json_of(&body)["permissions"].as_str().unwrap().to_string();
    assert!(permissions.contains("http to"), "{permissions}");
    let lock = home.root.join("installed.toml");
    assert!(
        !std::fs::read_to_string(&lock)
            .unwrap_or_default()
            .contains("weather")
    );
    // Granting something else is no grant.
    let (status, _, body) = install(json!({"plugin": "weather", "grant": "everything"}));
    assert_eq!(error_of(status, &body, 409)["code"], "permissions_required");
    // Granting what was shown installs it and reloads the set.
    let (status, _, body) = install(json!({"plugin": "weather", "grant": permissions}));
    assert_eq!(status, 200, "{body}");
    let v = json_of(&body);
    assert!(
        v["installed"][0].as_str().unwrap().starts_with("weather@"),
        "{v}"
    );
    assert!(
        v["active"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "weather"),
        "{v}"
    );
    assert!(std::fs::read_to_string(&lock).unwrap().contains("weather"));
    let (status, _, body) = install(json!({"plugin": "weather", "grant": permissions}));
    assert_eq!(status, 200, "{body}");
    assert!(json_of(&body)["already_installed"].is_string(), "{body}");
    // Removing the installed copy leaves the bundled one.
    let (status, _, body) =
        admin_request(s.addr, "DELETE", "/v1/admin/plugins/weather", "admin-key");
    assert_eq!(status, 200, "{body}");
    assert!(
        !std::fs::read_to_string(&lock)
            .unwrap()
            .contains("component"),
        "nothing installed"
    );
}

#[test]
fn a_change_to_the_installed_set_on_disk_reloads_the_server() {
    let _memory = crate::MEMORY.blocking_read();
    let (_dir, home, runtime) = bundled_plugins();
    let s = start_with(8, options(), Some((runtime, home.clone())));
    let active = || {
        let (_, _, body) = get(s.addr, "/v1/plugins", Some(KEY));
        json_of(&body)["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["namespace"] == "notes")
    };
    let wait_for = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while active() != want {
            assert!(Instant::now() < deadline, "notes active should be {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(active());
    // What `hearth plugin disable notes` does from another process.
    hearth::manager::install::set_enabled(&home, "notes", false).unwrap();
    wait_for(false);
    hearth::manager::install::set_enabled(&home, "notes", true).unwrap();
    wait_for(true);
}

/// Reads until the server closes the connection or `limit` passes;
/// returns what arrived and how long it took.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn slow_clients_are_cut_off_by_the_header_and_body_timeouts() {
    let _memory = crate::MEMORY.blocking_read();
    let s = start(
        8,
        ServerOptions {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            ..options()
        },
    );
    // Slowloris: headers trickling in, one byte every 100 ms, never
    // finished. The header timeout counts from the start of the request: a
    // timeout that each byte restarted would keep the connection open for
    // the whole 20 s trickle. So the check is an ordering rather than a
    // stopwatch: the server closes the connection (a write fails) while
    // bytes are still trickling in, normally after about 1 s.
    let mut slow = TcpStream::connect(s.addr).unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in b"X-Slow: ".iter().chain(std::iter::repeat(&b'a')).take(200) {
        std::thread::sleep(Duration::from_millis(100));
        if slow.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "trickled headers held the connection for {:?}",
        started.elapsed()
    );
    // A connection that never says anything is closed too, by the same
    // 1 s timeout; 10 s (what read_until_closed waits before failing the
    // test) leaves room for a busy machine and none for no timeout at all.
    let mut idle = TcpStream::connect(s.addr).unwrap();
    let (_, took) = read_until_closed(&mut idle, Duration::from_secs(10));
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Slow body: headers complete, body stalls after a few bytes.
    let mut body = TcpStream::connect(s.addr).unwrap();
    body.write_all(
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"mess").as_bytes(),
    )
    .unwrap();
    // The 408 naming body_timeout shows which limit ended it; the bound
    // (10× the 1 s body timeout) only catches a body wait without one.
    let (answer, took) = read_until_closed(&mut body, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The server is still fine for everyone else.
    let (status, _, _) = get(s.addr, "/healthz", None);
    assert_eq!(status, 200);
}

#[test]
fn ambiguous_framing_is_refused() {
    let _memory = crate::MEMORY.blocking_read();
    let s = start(8, options());
    // Content-Length and Transfer-Encoding together (request smuggling):
    // refused with 400 or the connection closed, never both read.
    let (status, _, body) = raw(
        s.addr,
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert!(status == 400 || status == 0, "{status} {body}");
    assert!(
        !body.contains("\"object\":\"list\""),
        "the smuggled request ran: {body}"
    );
}

/// Shutting down drains: the listener closes at once (a load balancer's
/// next connection goes elsewhere), while a stream already being answered
/// and a request still queued behind it both run to their ends; then
/// `serve` returns.
#[test]
fn shutting_down_refuses_new_connections_and_lets_requests_in_progress_finish() {
    let _memory = crate::MEMORY.blocking_read();
    let scheduler = Scheduler::new(
        engine(),
        SchedulerOptions {
            capacity: 8,
            parallel: Some(1),
        },
    );
    // A short idle timeout: the streamed answer's connection, idle once
    // the stream is over, is closed by it rather than after 10 s.
    let options = ServerOptions {
        header_timeout: Duration::from_millis(500),
        ..options()
    };
    let state = Arc::new(AppState::new(scheduler.clone(), "smollm2".into(), options));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let stop = async {
                let _ = stop_rx.await;
            };
            hearth::server::serve(listener, state, stop, Duration::from_secs(120))
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv().unwrap();
    let chat = |stream: bool| {
        let body = json!({"messages": [{"role": "user", "content": "Tell me a story about the sea."}], "stream": stream, "max_tokens": 40, "temperature": 0}).to_string();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.write_all(format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ).as_bytes()).unwrap();
        s
    };
    // One streaming (its first event read), one queued behind it.
    let mut streaming = chat(true);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&head).contains("data: ") {
        let n = streaming.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        head.extend_from_slice(&buf[..n]);
    }
    let head_text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head_text.contains("x-accel-buffering: no"), "{head_text}");
    let mut queued = chat(false);
    while scheduler.stats().queued.iter().sum::<usize>() < 1 {
        std::thread::sleep(Duration::from_millis(10));
    }

    stop_tx.send(()).unwrap();
    let stopped = Instant::now();
    let refused = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < refused, "still accepting connections");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut rest = Vec::new();
    streaming.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&head);
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    let mut answer = Vec::new();
    if let Err(e) = queued.read_to_end(&mut answer) {
        panic!(
            "reading the queued request's answer, {:?} after the stop: {e}; read so far: {:?}",
            stopped.elapsed(),
            String::from_utf8_lossy(&answer)
        );
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    assert_eq!(json_of(body)["usage"]["completion_tokens"], 40, "{body}");
    server.join().unwrap();
}
