//! The common case of `/mcp` answered in place: a 2026-07-28 `tools/call`
//! of an active plugin's tool, with nothing unusual about it.
//!
//! Why: rmcp serves each request of that revision by building a service
//! for it, spawning its loop and its handler as tasks and passing the answer
//! back over channels — about 70 µs a request on the machine hearth is
//! measured on, more than the sandboxed call itself (`calc.eval` ≈ 50 µs),
//! which made a tool call over MCP cost 1.9× the same call through
//! `POST /v1/plugins/…`. Here the request is read with rmcp's own types,
//! the call runs in the request's task through the same [`McpServer`]
//! method rmcp's handler uses, and the answer is rmcp's own response type,
//! serialised as rmcp does; a test holds the two answers equal byte for
//! byte.
//!
//! Anything else goes to rmcp untouched: another method or revision, a
//! session, `Mcp-Param-*` headers, a header that disagrees with the body or
//! appears twice, request metadata beyond the protocol's own keys, an
//! unknown tool, input responses or request state. So every error, every
//! negotiation and every edge of the protocol is still rmcp's; this path
//! only ever answers with a tool result (or rmcp's internal-error shape when
//! hearth itself fails), in the status rmcp would use.

use super::McpServer;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use rmcp::model::{
    ClientJsonRpcMessage, ClientRequest, GetMeta, JsonRpcMessage, JsonRpcRequest, ProtocolVersion,
    ServerJsonRpcMessage, ServerResult,
};
use std::convert::Infallible;

/// The request-metadata keys of 2026-07-28 this path knows; any other key
/// (progress tokens, task requests, extensions) sends the request to rmcp.
const KNOWN_META: &[&str] = &[
    "io.modelcontextprotocol/protocolVersion",
    "io.modelcontextprotocol/clientCapabilities",
    "io.modelcontextprotocol/clientInfo",
];

/// Whether the headers say "a plain 2026-07-28 tools/call": checked before
/// the body is parsed, so other requests are not parsed twice.
fn plain_headers(headers: &HeaderMap) -> Option<&str> {
    let one = |name: &str| {
        let mut values = headers.get_all(name).iter();
        let first = values.next()?;
        values.next().is_none().then_some(first)?.to_str().ok()
    };
    if one("mcp-protocol-version")? != ProtocolVersion::V_2026_07_28.as_str()
        || one("mcp-method")? != "tools/call"
        || headers.contains_key("mcp-session-id")
        || headers.keys().any(|k| k.as_str().starts_with("mcp-param-"))
    {
        return None;
    }
    let accepts = |kind: &str| {
        headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|m| {
                m.split(';')
                    .next()
                    .is_some_and(|e| e.trim().eq_ignore_ascii_case(kind))
            })
    };
    if !accepts("application/json") || !accepts("text/event-stream") {
        return None;
    }
    one("mcp-name")
}

/// Answers the request of `headers` and `body` if it is the common case
/// (see the module docs); `None` leaves it to rmcp.
pub(super) async fn try_answer(
    server: &McpServer,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Response<BoxBody<Bytes, Infallible>>> {
    let name = plain_headers(headers)?;
    let message = serde_json::from_slice::<ClientJsonRpcMessage>(body).ok()?;
    let JsonRpcMessage::Request(JsonRpcRequest { id, request, .. }) = &message else {
        return None;
    };
    let ClientRequest::CallToolRequest(call) = request else {
        return None;
    };
    let params = &call.params;
    // rmcp moves a request's `_meta` into its extensions when it parses it.
    let meta = request.get_meta();
    let plain = params.name == name
        && params.meta.is_none()
        && params.input_responses.is_none()
        && params.request_state.is_none()
        && meta
            .missing_required_keys(&ProtocolVersion::V_2026_07_28)
            .is_empty()
        && meta.keys().all(|k| KNOWN_META.contains(&k.as_str()))
        && meta
            .get("io.modelcontextprotocol/protocolVersion")
            .and_then(|v| v.as_str())
            == Some(ProtocolVersion::V_2026_07_28.as_str())
        && server.offers(name);
    if !plain {
        return None;
    }
    let arguments =
        serde_json::Value::Object(params.arguments.clone().unwrap_or_default()).to_string();
    // Dropping this future (the client went away) drops the call, which
    // stops the plugin's instance: no cancellation signal is needed here,
    // only the log line rmcp's path writes.
    let mut watch = Abandoned {
        tool: name,
        done: false,
    };
    let outcome = server.call(name, &arguments, std::future::pending()).await;
    watch.done = true;
    let answer = match outcome {
        Ok(result) => {
            ServerJsonRpcMessage::response(ServerResult::CallToolResult(result), id.clone())
        }
        Err(error) => ServerJsonRpcMessage::error(error, Some(id.clone())),
    };
    let body = serde_json::to_vec(&answer).expect("a response serialises");
    Some(
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)).boxed())
            .expect("valid response"),
    )
}

/// Logs a call whose client went away before it ended.
struct Abandoned<'a> {
    tool: &'a str,
    done: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(tool = self.tool, "MCP call cancelled by the client");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::{AllowedHosts, McpHttp, McpHttpOptions};

    const META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

    fn call_body(name: &str, arguments: &str, meta: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{name}","arguments":{arguments},{meta}}}}}"#
        )
    }

    fn parts(extra: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder()
            .method("POST")
            .uri("/mcp")
            .header("host", "127.0.0.1:8080")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "calc.eval");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    async fn endpoint() -> (tempfile::TempDir, McpHttp, McpServer) {
        let (dir, runtime, calc) = super::super::test_support::with_calc().await;
        runtime.activate(calc);
        let http = McpHttp::new(
            runtime.clone(),
            McpHttpOptions {
                allowed_hosts: AllowedHosts::new("127.0.0.1:8080".parse().unwrap(), &[]).unwrap(),
                max_body: 1 << 20,
                observer: None,
            },
        );
        (dir, http, McpServer::new(runtime))
    }

    async fn read(r: Response<BoxBody<Bytes, Infallible>>) -> (StatusCode, String, Vec<u8>) {
        let status = r.status();
        let kind = r
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = r.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, kind, body)
    }

    #[tokio::test]
    async fn a_plain_call_is_answered_here_exactly_as_rmcp_answers_it() {
        let (_dir, http, _) = endpoint().await;
        for (arguments, what) in [
            (r#"{"expression":"6*7"}"#, "a result"),
            (r#"{"expression":"1/0"}"#, "a tool error"),
            (r#"{"nope":1}"#, "a schema violation"),
        ] {
            let body = Bytes::from(call_body("calc.eval", arguments, META));
            let here = read(
                super::try_answer(&http.direct, &parts(&[]).headers, &body)
                    .await
                    .unwrap_or_else(|| panic!("{what}: not answered here")),
            )
            .await;
            let request = http::Request::from_parts(parts(&[]), Full::new(body));
            let rmcp = read(http.handle(request).await).await;
            assert_eq!(here.0, rmcp.0, "{what}: status");
            assert_eq!(here.1, rmcp.1, "{what}: content type");
            assert_eq!(
                String::from_utf8_lossy(&here.2),
                String::from_utf8_lossy(&rmcp.2),
                "{what}: body"
            );
        }
    }

    #[tokio::test]
    async fn anything_unusual_is_left_to_rmcp() {
        let (_dir, http, server) = endpoint().await;
        let plain = call_body("calc.eval", r#"{"expression":"1"}"#, META);
        let cases: Vec<(&str, http::request::Parts, String)> = vec![
            (
                "an older revision",
                parts(&[]).tap(|p| {
                    p.headers
                        .insert("mcp-protocol-version", "2025-11-25".parse().unwrap());
                }),
                plain.clone(),
            ),
            (
                "a session",
                parts(&[("mcp-session-id", "s1")]),
                plain.clone(),
            ),
            (
                "a parameter header",
                parts(&[("mcp-param-expression", "1")]),
                plain.clone(),
            ),
            (
                "a second Mcp-Method",
                parts(&[("mcp-method", "tools/call")]),
                plain.clone(),
            ),
            (
                "a name header that disagrees",
                parts(&[]).tap(|p| {
                    p.headers.insert("mcp-name", "calc.other".parse().unwrap());
                }),
                plain.clone(),
            ),
            (
                "no event-stream in Accept",
                parts(&[]).tap(|p| {
                    p.headers
                        .insert("accept", "application/json".parse().unwrap());
                }),
                plain.clone(),
            ),
            (
                "a progress token",
                parts(&[]),
                call_body(
                    "calc.eval",
                    r#"{"expression":"1"}"#,
                    r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"progressToken":1}"#,
                ),
            ),
            (
                "missing request metadata",
                parts(&[]),
                call_body("calc.eval", r#"{"expression":"1"}"#, r#""x":1"#),
            ),
            (
                "an unknown tool",
                parts(&[]).tap(|p| {
                    p.headers.insert("mcp-name", "calc.nope".parse().unwrap());
                }),
                call_body("calc.nope", "{}", META),
            ),
            ("not JSON", parts(&[]), "{".into()),
            (
                "another method",
                parts(&[]).tap(|p| {
                    p.headers
                        .insert("mcp-method", "tools/list".parse().unwrap());
                }),
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{{META}}}}}"#),
            ),
        ];
        for (what, parts, body) in cases {
            assert!(
                super::try_answer(&server, &parts.headers, body.as_bytes())
                    .await
                    .is_none(),
                "{what}: answered here"
            );
        }
        // The same endpoint answers the plain case here.
        assert!(
            super::try_answer(&server, &parts(&[]).headers, plain.as_bytes())
                .await
                .is_some()
        );
        let _ = http;
    }

    trait Tap: Sized {
        fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
            f(&mut self);
            self
        }
    }
    impl Tap for http::request::Parts {}
}
