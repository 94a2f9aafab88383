//! The bundled plugins, through the real host.

use hearth::plugins::{InvokeError, ToolError};
use hearth_tests::{MockServer, Scratch, load_bundled};
use serde_json::json;

#[tokio::test]
async fn calc_evaluates_exactly() {
    let s = Scratch::new();
    s.bundled("calc").await;
    let v = s
        .call("calc.eval", json!({"expression": "2*(3+4)"}))
        .await
        .unwrap();
    assert_eq!(v["value"], 14);
    assert_eq!(v["exact"], "14");
    let v = s
        .call("calc.eval", json!({"expression": "0.1 + 0.2"}))
        .await
        .unwrap();
    assert_eq!(v["exact"], "3/10");
    let err = s
        .call("calc.eval", json!({"expression": "1/0"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, InvokeError::Tool(ToolError::Failed(m)) if m.contains("division by zero")),
        "{err}"
    );
    // Arguments that break the tool's schema are refused by the host
    // before the plugin runs, naming each problem.
    let err = s.call("calc.eval", json!({"expr": "1"})).await.unwrap_err();
    assert!(
        matches!(&err, InvokeError::BadArguments(m)
            if m.contains("\"expression\" is a required property") && m.contains("'expr' was unexpected")),
        "{err}"
    );
    let err = s
        .call("calc.eval", json!({"expression": 12}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, InvokeError::BadArguments(m) if m.contains("at /expression")),
        "{err}"
    );
    let err = s.call("calc.nope", json!({})).await.unwrap_err();
    assert!(err.to_string().contains("no tool `nope`"), "{err}");
}

#[tokio::test]
async fn notes_persist_across_restarts() {
    let s = Scratch::new();
    s.bundled("notes").await;
    let a = s
        .call("notes.save", json!({"text": "buy milk\nand eggs"}))
        .await
        .unwrap();
    assert_eq!(a, json!({"id": 1, "title": "buy milk"}));
    let b = s
        .call(
            "notes.save",
            json!({"text": "call Ada about the garden", "title": "Ada"}),
        )
        .await
        .unwrap();
    assert_eq!(b["id"], 2);

    let s = s.restart();
    s.bundled("notes").await;
    let s = &s;
    let call = |tool: &'static str, args: serde_json::Value| async move {
        s.call(&format!("notes.{tool}"), args).await
    };
    let list = call("list", json!({})).await.unwrap();
    assert_eq!(list["notes"].as_array().unwrap().len(), 2, "{list}");
    let found = call("search", json!({"query": "GARDEN ada"}))
        .await
        .unwrap();
    assert_eq!(found["notes"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["notes"][0]["id"], 2);
    let got = call("get", json!({"id": 1})).await.unwrap();
    assert_eq!(got["text"], "buy milk\nand eggs");
    assert_eq!(
        call("delete", json!({"id": 1})).await.unwrap(),
        json!({"deleted": 1})
    );
    let err = call("get", json!({"id": 1})).await.unwrap_err();
    assert!(err.to_string().contains("no note with id 1"), "{err}");
    let err = call("save", json!({"text": "   "})).await.unwrap_err();
    assert!(err.to_string().contains("`text` is empty"), "{err}");
}

#[tokio::test]
async fn notes_respect_the_configured_maximum() {
    let s = Scratch::new();
    load_bundled(&s.runtime, "notes", Some(json!({"max-notes": 2})), |_| {})
        .await
        .unwrap();
    for i in 0..2 {
        s.call("notes.save", json!({"text": format!("note {i}")}))
            .await
            .unwrap();
    }
    let err = s
        .call("notes.save", json!({"text": "one too many"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max-notes = 2"), "{err}");
}

const WTTR: &str = r#"{
  "current_condition": [{
    "temp_C": "18", "temp_F": "64", "FeelsLikeC": "17", "FeelsLikeF": "63",
    "humidity": "55", "windspeedKmph": "9", "windspeedMiles": "6",
    "weatherDesc": [{"value": "Light rain"}]
  }],
  "nearest_area": [{"areaName": [{"value": "Lisbon"}], "country": [{"value": "Portugal"}]}]
}"#;

/// `weather` configured to ask `server`, and granted exactly that origin.
async fn weather_granted(server: &MockServer) -> Scratch {
    let endpoint = format!("http://127.0.0.1:{}", server.addr.port());
    let s = Scratch::new();
    load_bundled(
        &s.runtime,
        "weather",
        Some(json!({"endpoint": endpoint})),
        |m| *m = m.replace("https://wttr.in\"]", &format!("{endpoint}\"]")),
    )
    .await
    .unwrap();
    s
}

#[tokio::test]
async fn weather_asks_the_granted_endpoint() {
    let server = MockServer::start(200, WTTR).await;
    let s = weather_granted(&server).await;
    let v = s
        .call("weather.current", json!({"location": "Lisbon"}))
        .await
        .unwrap();
    assert_eq!(v["location"], "Lisbon");
    assert_eq!(v["condition"], "Light rain");
    assert_eq!(v["temperature"], 18.0);
    assert_eq!(v["temperature_unit"], "°C");
    assert_eq!(server.hits(), 1);
    let request = server.last_request();
    assert!(request.starts_with("GET /Lisbon?format=j1"), "{request}");
    assert!(
        request.ends_with(&format!("host=127.0.0.1:{}", server.addr.port())),
        "{request}"
    );
}

#[tokio::test]
async fn the_model_calls_weather_through_the_server_against_a_local_stub() {
    let _serial = crate::MEMORY.write().await;
    let server = MockServer::start(200, WTTR).await;
    let s = weather_granted(&server).await;
    let (addr, scheduler) =
        hearth_tests::serve_with_plugins(&hearth_tests::default_model(), s.runtime.clone()).await;
    let (status, v) = hearth_tests::post_json(
        addr,
        "/v1/chat/completions",
        &json!({
            "messages": [{"role": "user", "content": "What is the weather in Lisbon right now?"}],
            "tool_choice": {"type": "function", "function": {"name": "weather.current"}},
            "temperature": 0,
            "max_tokens": 48,
        }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // The model's call ran in the sandbox against the stub, and the model
    // answered after reading the result: two generations.
    assert_eq!(server.hits(), 1, "{v}");
    let request = server.last_request();
    assert!(request.starts_with("GET /Lisbon?format=j1"), "{request}");
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
    assert!(
        !v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{v}"
    );
    assert_eq!(scheduler.stats().completed, 2);
    let metrics = hearth_tests::get_text(addr, "/metrics").await;
    assert!(
        metrics.contains("hearth_plugin_calls_total{namespace=\"weather\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn weather_cannot_be_pointed_at_a_host_it_was_not_granted() {
    // The user config points the endpoint at a local server, but the
    // manifest only grants wttr.in: the request never leaves the sandbox.
    let server = MockServer::start(200, WTTR).await;
    let s = Scratch::new();
    load_bundled(
        &s.runtime,
        "weather",
        Some(json!({"endpoint": format!("http://127.0.0.1:{}", server.addr.port())})),
        |_| {},
    )
    .await
    .unwrap();
    let err = s
        .call("weather.current", json!({"location": "Lisbon"}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, InvokeError::Tool(ToolError::Denied(_))),
        "{err}"
    );
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn weather_reports_service_errors() {
    let server = MockServer::start(503, "busy").await;
    let s = weather_granted(&server).await;
    let err = s
        .call("weather.current", json!({"location": "Lisbon"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, InvokeError::Tool(ToolError::Unavailable(m)) if m.contains("503")),
        "{err}"
    );
}
