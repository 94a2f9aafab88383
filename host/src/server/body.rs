//! Request bodies (JSON only, within size and time limits) and JSON
//! responses.

use super::{ApiError, AppState, Body_};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use serde_json::Value;

/// A JSON response.
pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Body_> {
    json_text_response(status, body.to_string())
}

/// A response whose body is JSON text already.
pub(super) fn json_text_response(status: StatusCode, body: String) -> Response<Body_> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response")
}

/// Reads a JSON body within the size and time limits.
pub(super) async fn json_body(state: &AppState, req: Request<Incoming>) -> Result<Value, ApiError> {
    let bytes = body_bytes(state, req).await?;
    parse_json(&bytes)
}

pub(super) fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))
}

/// Reads an `application/json` body's bytes within the size and time
/// limits.
pub(super) async fn body_bytes(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Bytes, ApiError> {
    require_json(req.headers())?;
    read_capped(state, req.into_body()).await
}

/// Refuses a body that does not say it is JSON (415).
pub(super) fn require_json(headers: &http::HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        let mut e = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            format!("Content-Type must be application/json, got `{content_type}`"),
        );
        e.code = Some("unsupported_media_type");
        return Err(e);
    }
    Ok(())
}

/// Reads a body within the size and time limits (413 past the size, 408
/// past the time).
pub(super) async fn read_capped(state: &AppState, body: Incoming) -> Result<Bytes, ApiError> {
    let too_large = || {
        let mut e = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "the request body is larger than {} bytes",
                state.options.max_body
            ),
        );
        e.code = Some("body_too_large");
        e
    };
    if body.size_hint().lower() > state.options.max_body as u64 {
        return Err(too_large());
    }
    let limited = Limited::new(body, state.options.max_body);
    let collected = tokio::time::timeout(state.options.body_timeout, limited.collect())
        .await
        .map_err(|_| {
            let mut e = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "the request body did not arrive in time",
            );
            e.code = Some("body_timeout");
            e
        })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::invalid(
            format!("reading the request body: {e}"),
            None,
        )),
    }
}
