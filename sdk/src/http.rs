//! Outgoing HTTP through the standard `wasi:http/outgoing-handler`.
//!
//! The host only lets a request through to a scheme, host and port listed in
//! the plugin's `[permissions] http`; anything else fails with
//! [`HttpError::Denied`]. Redirects are not followed.

/// A received response.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers, lower-case names.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::Protocol(format!("response is not the expected JSON: {e}")))
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL could not be parsed or uses an unsupported scheme.
    InvalidUrl(String),
    /// The host refused the request: the destination was not granted.
    Denied(String),
    /// Connecting, sending or receiving failed.
    Protocol(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::InvalidUrl(m) => write!(f, "invalid url: {m}"),
            HttpError::Denied(m) => write!(f, "request denied by the host: {m}"),
            HttpError::Protocol(m) => write!(f, "http error: {m}"),
        }
    }
}

/// The parts of a URL the request needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    pub https: bool,
    pub authority: &'a str,
    pub path_and_query: &'a str,
}

/// Splits `scheme://authority/path?query`; only http and https are accepted.
pub(crate) fn split_url(url: &str) -> Result<Target<'_>, HttpError> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(HttpError::InvalidUrl(format!(
            "`{url}` must start with http:// or https://"
        )));
    };
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    if authority.is_empty() {
        return Err(HttpError::InvalidUrl(format!("`{url}` has no host")));
    }
    let path_and_query = if path.is_empty() { "/" } else { path };
    Ok(Target {
        https,
        authority,
        path_and_query,
    })
}

/// Sends a GET request and reads the whole response.
pub fn get(url: &str) -> Result<Response, HttpError> {
    send("GET", url, &[], None)
}

/// Sends a request with optional headers and body and reads the whole response.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, HttpError> {
    let target = split_url(url)?;
    imp::send(method, &target, headers, body)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{HttpError, Response, Target};
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    use wasip2::io::streams::StreamError;

    /// Most bytes read from a response body before giving up.
    const MAX_BODY: usize = 16 << 20;

    fn error(code: ErrorCode) -> HttpError {
        match code {
            ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => {
                HttpError::Denied(format!("{code:?}"))
            }
            other => HttpError::Protocol(format!("{other:?}")),
        }
    }

    pub(super) fn send(
        method: &str,
        target: &Target<'_>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let fields = Fields::new();
        for (name, value) in headers {
            fields
                .append(name, value.as_bytes())
                .map_err(|e| HttpError::InvalidUrl(format!("header `{name}`: {e:?}")))?;
        }
        let request = OutgoingRequest::new(fields);
        let method = match method {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        };
        let bad = |what: &str| HttpError::InvalidUrl(format!("the host rejected the {what}"));
        request.set_method(&method).map_err(|()| bad("method"))?;
        request
            .set_scheme(Some(if target.https {
                &Scheme::Https
            } else {
                &Scheme::Http
            }))
            .map_err(|()| bad("scheme"))?;
        request
            .set_authority(Some(target.authority))
            .map_err(|()| bad("authority"))?;
        request
            .set_path_with_query(Some(target.path_and_query))
            .map_err(|()| bad("path"))?;
        let outgoing_body = request.body().map_err(|()| bad("body"))?;
        let pending = outgoing_handler::handle(request, None).map_err(error)?;
        {
            let stream = outgoing_body.write().map_err(|()| bad("body stream"))?;
            if let Some(bytes) = body {
                for chunk in bytes.chunks(4096) {
                    stream
                        .blocking_write_and_flush(chunk)
                        .map_err(|e| HttpError::Protocol(format!("writing the body: {e:?}")))?;
                }
            }
        }
        OutgoingBody::finish(outgoing_body, None).map_err(error)?;
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or_else(|| HttpError::Protocol("response not ready".into()))?
            .map_err(|()| HttpError::Protocol("response already taken".into()))?
            .map_err(error)?;
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response
            .consume()
            .map_err(|()| HttpError::Protocol("body already taken".into()))?;
        let mut body = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|()| HttpError::Protocol("body stream already taken".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        body.extend_from_slice(&chunk);
                        if body.len() > MAX_BODY {
                            return Err(HttpError::Protocol(format!(
                                "response body larger than {MAX_BODY} bytes"
                            )));
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(HttpError::Protocol(e.to_debug_string()));
                    }
                }
            }
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{HttpError, Target};

    /// Outside a component there is no `wasi:http` to call; native builds of
    /// a plugin exist only for its unit tests.
    pub(super) fn send(
        _method: &str,
        _target: &Target<'_>,
        _headers: &[(&str, &str)],
        _body: Option<&[u8]>,
    ) -> Result<super::Response, HttpError> {
        Err(HttpError::Protocol(
            "outgoing http is only available inside a hearth component".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("https://wttr.in/Berlin?format=j1").unwrap(),
            Target {
                https: true,
                authority: "wttr.in",
                path_and_query: "/Berlin?format=j1"
            }
        );
        assert_eq!(
            split_url("http://127.0.0.1:8080").unwrap(),
            Target {
                https: false,
                authority: "127.0.0.1:8080",
                path_and_query: "/"
            }
        );
        assert!(matches!(
            split_url("ftp://x"),
            Err(HttpError::InvalidUrl(_))
        ));
        assert!(matches!(
            split_url("http:///x"),
            Err(HttpError::InvalidUrl(_))
        ));
    }
}
