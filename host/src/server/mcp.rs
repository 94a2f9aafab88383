//! `/mcp`: the plugins' tools over MCP's streamable HTTP ([`crate::mcp`]),
//! behind the checks every other route has. In order: the `Host` and
//! `Origin` allow-list (403, before the key, so a browser page re-pointed
//! at this server learns nothing else), the API key (401), then for a
//! `POST` the JSON body within the API's size and time limits (415, 413,
//! 408); only then does rmcp see the request.

use super::body::{read_capped, require_json};
use super::{ApiError, AppState, Body_};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use std::sync::Arc;

/// Refuses a request whose `Host` or `Origin` the endpoint does not
/// answer to (403, saying how to allow it).
pub(super) fn check_host(state: &AppState, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(mcp) = &state.mcp else {
        return Ok(());
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    mcp.allowed_hosts()
        .check(host, req.headers().get(header::ORIGIN))
        .map_err(|e| {
            tracing::warn!("refused an MCP request: {e}");
            let mut a = ApiError::new(StatusCode::FORBIDDEN, "permission_error", e.to_string());
            a.code = Some("host_not_allowed");
            a
        })
}

/// Hands the request to the MCP endpoint once its body is read. The
/// answer may be a stream (an event stream for a session or a
/// subscription); hyper drops it, and with it what it serves, when the
/// client goes away.
pub(super) async fn mcp(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body_>, ApiError> {
    let Some(mcp) = &state.mcp else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "MCP is not served here: this server has no plugin runtime",
        ));
    };
    let (parts, body) = req.into_parts();
    let bytes = if parts.method == Method::POST {
        require_json(&parts.headers)?;
        read_capped(state, body).await?
    } else {
        // GET opens an event stream and DELETE ends a session: neither
        // has a body worth reading.
        Bytes::new()
    };
    Ok(mcp.handle_parts(parts, bytes).await)
}
