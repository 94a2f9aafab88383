//! `GET /v1/plugins` and `POST /v1/plugins/{namespace}/{tool}`: the active
//! plugins, and their tools called directly.

use super::body::{body_bytes, json_response, json_text_response, parse_json};
use super::{ApiError, AppState, Body_};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::sync::Arc;

/// `GET /v1/plugins`: what each active plugin is and may do.
pub(super) fn list(state: &AppState) -> Response<Body_> {
    let mut list: Vec<Value> = state
        .assistant
        .plugins()
        .into_iter()
        .flat_map(|r| r.active_plugins())
        .map(|p| p.summary())
        .collect();
    list.sort_by(|a, b| a["namespace"].as_str().cmp(&b["namespace"].as_str()));
    json_response(StatusCode::OK, &json!({"object": "list", "data": list}))
}

/// `POST /v1/plugins/{namespace}/{tool}`: the body is the arguments
/// object, the answer the tool's JSON result.
pub(super) async fn invoke_plugin(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    namespace: &str,
    tool: &str,
) -> Result<Response<Body_>, ApiError> {
    use crate::plugins::ErrorKind;
    let Some(runtime) = state.assistant.plugins().cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "no plugins are active on this server",
        ));
    };
    let body = body_bytes(state, req).await?;
    if !parse_json(&body)?.is_object() {
        return Err(ApiError::invalid(
            "the body must be a JSON object of the tool's arguments",
            None,
        ));
    }
    // The plugin gets the arguments as sent (JSON that parsed is UTF-8).
    let args = std::str::from_utf8(&body)
        .map_err(|e| ApiError::invalid(format!("the body is not UTF-8: {e}"), None))?;
    let qualified = format!("{namespace}.{tool}");
    let scope = crate::plugins::CallScope::new(format!("direct-{:08x}", rand::random::<u32>()));
    match runtime.invoke_qualified(&qualified, args, scope).await {
        Ok(result) => {
            state.metrics.plugin_call(namespace, "ok");
            // The runtime has checked that the result is JSON.
            let mut response = json_text_response(StatusCode::OK, result);
            response.extensions_mut().insert(super::RequestFacts {
                plugin_calls: 1,
                ..Default::default()
            });
            Ok(response)
        }
        Err(e) => {
            let status = match e.kind() {
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::BadArguments => StatusCode::BAD_REQUEST,
                ErrorKind::Tool => StatusCode::UNPROCESSABLE_ENTITY,
                ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if e.kind() != ErrorKind::NotFound {
                let outcome = crate::assistant::failure_outcome(&e);
                state.metrics.plugin_call(namespace, outcome);
            }
            let mut a = ApiError::new(
                status,
                if status.is_server_error() {
                    "server_error"
                } else {
                    "invalid_request_error"
                },
                format!("{qualified}: {e}"),
            );
            a.code = Some(match e.kind() {
                ErrorKind::NotFound => "tool_not_found",
                ErrorKind::BadArguments => "invalid_arguments",
                ErrorKind::Tool => "tool_error",
                ErrorKind::Timeout => "plugin_timeout",
                _ => "plugin_failed",
            });
            Err(a)
        }
    }
}
