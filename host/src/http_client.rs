//! The HTTP client hearth uses for its own requests: the plugin registry's
//! index and component downloads, `hearth run/chat --url`, and the MCP
//! servers `hearth serve` takes tools from. (Plugins'
//! HTTP goes through wasmtime-wasi-http under their permissions, not here.)
//!
//! One constructor, so every use gets the same TLS, proxy and timeout
//! behaviour:
//! - TLS is rustls with the ring provider and the Mozilla roots compiled in
//!   (webpki-roots). A fresh machine or a minimal container may have no CA
//!   bundle at all, and whether a registry's certificate is accepted should
//!   not depend on what the machine happens to have installed. It is also
//!   the pair wasmtime-wasi-http already builds, so no second crypto
//!   library (aws-lc, OpenSSL) is compiled. Where a proxy inspects TLS or
//!   a registry has its own CA, `HEARTH_CA_FILE` (or the common
//!   `SSL_CERT_FILE`) names a PEM bundle that is trusted as well.
//! - `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (either case)
//!   are honoured, as reqwest does by default.
//! - Timeouts and whether redirects are followed are chosen per use
//!   ([`Options`]).
//! - Bodies are read through [`CappedBody`], which stops with
//!   [`HttpError::TooLarge`] once more than its limit has arrived.

use bytes::Bytes;
use std::time::Duration;

/// How a [`Client`] behaves; each use states its own.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Longest wait for the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest a whole request may take, body included; `None` for answers
    /// that legitimately last as long as they have something to say.
    pub total_timeout: Option<Duration>,
    /// Longest silence while reading; `None` for no such limit.
    pub idle_timeout: Option<Duration>,
    /// Whether 3xx answers are followed (at most 5 hops) or returned as
    /// they are.
    pub follow_redirects: bool,
}

/// What went wrong with a request: each variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL does not parse or is not http(s).
    #[error("bad URL {url}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The client could not be built (a TLS set-up problem).
    #[error("setting up the HTTP client: {reason}")]
    Setup {
        /// What failed.
        reason: String,
    },
    /// No connection (TCP, TLS or proxy) could be made.
    #[error("{method} {url}: connecting to {authority}: {reason}")]
    Connect {
        /// `GET`, `POST`.
        method: String,
        /// The URL.
        url: String,
        /// `host:port`.
        authority: String,
        /// What failed.
        reason: String,
    },
    /// A time limit passed.
    #[error("{method} {url}: timed out ({limits})")]
    TimedOut {
        /// `GET`, `POST`.
        method: String,
        /// The URL.
        url: String,
        /// The limits in force, e.g. `connect limit 15 s, overall limit 60 s`.
        limits: String,
    },
    /// The request failed after connecting.
    #[error("{method} {url}: {reason}")]
    Request {
        /// `GET`, `POST`.
        method: String,
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server answered with a status the caller does not accept.
    #[error(
        "{method} {url}: HTTP {status}{}",
        .location.as_ref().map(|l| format!(" (a redirect to {l}, which is not followed here; use that URL directly)")).unwrap_or_default()
    )]
    Status {
        /// `GET`, `POST`.
        method: String,
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
        /// Where a redirect pointed.
        location: Option<String>,
    },
    /// Reading the body failed.
    #[error("reading {url}: {reason}")]
    Body {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The body is longer than the caller accepts.
    #[error("{url}: the answer is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit, in bytes.
        limit: u64,
    },
}

/// A reqwest client built by [`Client::new`], with the options it was
/// built with (its errors quote the time limits).
#[derive(Debug, Clone)]
pub struct Client {
    inner: reqwest::Client,
    options: Options,
}

/// The rustls configuration every client uses: ring, webpki roots,
/// HTTP/1.1 only.
/// The variables naming a PEM file of extra trusted certificates, in the
/// order they are looked at; the first one set is used.
pub const CA_FILE_VARIABLES: [&str; 2] = ["HEARTH_CA_FILE", "SSL_CERT_FILE"];

/// Adds the certificates of the PEM file `HEARTH_CA_FILE` or
/// `SSL_CERT_FILE` names (a company's TLS-inspecting proxy, a private
/// registry's own CA) to the compiled-in roots, which stay trusted.
fn add_extra_roots(roots: &mut rustls::RootCertStore) -> Result<(), HttpError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let Some((variable, path)) = CA_FILE_VARIABLES.iter().find_map(|v| {
        std::env::var_os(v)
            .filter(|p| !p.is_empty())
            .map(|p| (v, p))
    }) else {
        return Ok(());
    };
    let setup = |reason: String| HttpError::Setup {
        reason: format!("{variable}={}: {reason}", path.to_string_lossy()),
    };
    let certs = CertificateDer::pem_file_iter(&path).map_err(|e| setup(e.to_string()))?;
    let mut added = 0;
    for cert in certs {
        let cert = cert.map_err(|e| setup(e.to_string()))?;
        // A bundle may hold certificates rustls cannot use as roots
        // (unusual extensions); they are skipped, as OpenSSL does.
        if roots.add(cert).is_ok() {
            added += 1;
        }
    }
    if added == 0 {
        return Err(setup("no usable PEM certificate in it".into()));
    }
    Ok(())
}

fn tls_config() -> Result<rustls::ClientConfig, HttpError> {
    // An explicit provider: the process-wide default would panic if some
    // other dependency ever enabled a second one.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    add_extra_roots(&mut roots)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Setup {
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // reqwest leaves ALPN to a preconfigured TLS set-up; this client is
    // built without HTTP/2, so it offers HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Client {
    /// A client with `options`, rustls (ring, webpki roots), the proxy
    /// environment variables, and a `hearth/<version>` User-Agent.
    pub fn new(options: Options) -> Result<Client, HttpError> {
        let redirects = if options.follow_redirects {
            reqwest::redirect::Policy::limited(5)
        } else {
            reqwest::redirect::Policy::none()
        };
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.connect_timeout)
            .redirect(redirects)
            .http1_only();
        if let Some(limit) = options.total_timeout {
            builder = builder.timeout(limit);
        }
        if let Some(limit) = options.idle_timeout {
            builder = builder.read_timeout(limit);
        }
        let inner = builder.build().map_err(|e| HttpError::Setup {
            reason: describe(e),
        })?;
        Ok(Client { inner, options })
    }

    /// The reqwest client itself, for a library that drives its own
    /// requests over it (rmcp's streamable-HTTP client, for `[[mcp]]`
    /// tool sources): same TLS, proxies and time limits.
    pub fn reqwest(&self) -> reqwest::Client {
        self.inner.clone()
    }

    /// A request to `url`, which must be an `http://` or `https://` URL.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, HttpError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| HttpError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(HttpError::BadUrl {
                url: url.to_string(),
                reason: "only http:// and https:// are supported".into(),
            });
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(HttpError::BadUrl {
                url: url.to_string(),
                reason: "no host".into(),
            });
        }
        Ok(self.inner.request(method, parsed))
    }

    /// Sends `request` and waits for the answer's status and headers.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, HttpError> {
        let request = request.build().map_err(|e| HttpError::BadUrl {
            url: e.url().map(|u| u.to_string()).unwrap_or_default(),
            reason: describe(e),
        })?;
        let method = request.method().to_string();
        let url = request.url().clone();
        self.inner
            .execute(request)
            .await
            .map_err(|e| self.error(&method, &url, e))
    }

    /// GETs `url` and insists on `200 OK`.
    pub async fn get_ok(&self, url: &str) -> Result<reqwest::Response, HttpError> {
        let response = self.send(self.request(reqwest::Method::GET, url)?).await?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(HttpError::Status {
                method: "GET".into(),
                url: url.to_string(),
                status: response.status(),
                location: response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
                    .filter(|_| response.status().is_redirection()),
            });
        }
        Ok(response)
    }

    /// The body of `response`, read at most `limit` bytes far.
    pub fn body(&self, method: &str, response: reqwest::Response, limit: u64) -> CappedBody {
        CappedBody {
            method: method.to_string(),
            url: response.url().to_string(),
            response,
            limit,
            read: 0,
            options: self.options,
        }
    }

    fn error(&self, method: &str, url: &reqwest::Url, e: reqwest::Error) -> HttpError {
        let url_text = url.to_string();
        if e.is_timeout() {
            return HttpError::TimedOut {
                method: method.to_string(),
                url: url_text,
                limits: limits(&self.options),
            };
        }
        if e.is_connect() {
            let authority = match (url.host_str(), url.port_or_known_default()) {
                (Some(host), Some(port)) => format!("{host}:{port}"),
                (Some(host), None) => host.to_string(),
                _ => String::new(),
            };
            return HttpError::Connect {
                method: method.to_string(),
                url: url_text,
                authority,
                reason: describe(e),
            };
        }
        HttpError::Request {
            method: method.to_string(),
            url: url_text,
            reason: describe(e),
        }
    }
}

/// A response body read chunk by chunk, failing with
/// [`HttpError::TooLarge`] once more than its limit has arrived (at once
/// when the declared `Content-Length` is already over it).
#[derive(Debug)]
pub struct CappedBody {
    method: String,
    url: String,
    response: reqwest::Response,
    limit: u64,
    read: u64,
    options: Options,
}

impl CappedBody {
    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        if self.read == 0
            && self
                .response
                .content_length()
                .is_some_and(|n| n > self.limit)
        {
            return Err(self.too_large());
        }
        let chunk = match self.response.chunk().await {
            Ok(chunk) => chunk,
            Err(e) if e.is_timeout() => {
                return Err(HttpError::TimedOut {
                    method: self.method.clone(),
                    url: self.url.clone(),
                    limits: limits(&self.options),
                });
            }
            Err(e) => {
                return Err(HttpError::Body {
                    url: self.url.clone(),
                    reason: describe(e),
                });
            }
        };
        if let Some(chunk) = &chunk {
            self.read += chunk.len() as u64;
            if self.read > self.limit {
                return Err(self.too_large());
            }
        }
        Ok(chunk)
    }

    /// The whole body.
    pub async fn bytes(mut self) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn too_large(&self) -> HttpError {
        HttpError::TooLarge {
            url: self.url.clone(),
            limit: self.limit,
        }
    }
}

/// The time limits of `options`, for timeout messages.
fn limits(options: &Options) -> String {
    let mut parts = vec![format!(
        "connect limit {} s",
        options.connect_timeout.as_secs_f64()
    )];
    if let Some(t) = options.total_timeout {
        parts.push(format!("overall limit {} s", t.as_secs_f64()));
    }
    if let Some(t) = options.idle_timeout {
        parts.push(format!("idle limit {} s", t.as_secs_f64()));
    }
    parts.join(", ")
}

/// A reqwest error with its causes (`tcp connect error: Connection refused`),
/// without the URL, which the caller's message already names.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    // reqwest's own words ("error sending request") add nothing once a
    // cause says what actually happened.
    if parts.len() > 1 {
        parts.remove(0);
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn options() -> Options {
        Options {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Some(Duration::from_secs(10)),
            idle_timeout: None,
            follow_redirects: false,
        }
    }

    /// A one-shot HTTP/1.1 server on loopback that answers `answer` to
    /// the first request; returns its address.
    fn serve_once(answer: Vec<u8>) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let _ = stream.write_all(&answer);
        });
        addr
    }

    #[tokio::test]
    async fn bodies_past_the_limit_fail_naming_it_and_the_url() {
        // No Content-Length: the limit is enforced while reading.
        let addr =
            serve_once(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0123456789abcdef".to_vec());
        let client = Client::new(options()).unwrap();
        let url = format!("http://{addr}/big");
        let response = client.get_ok(&url).await.unwrap();
        let err = client.body("GET", response, 10).bytes().await.unwrap_err();
        assert!(
            matches!(err, HttpError::TooLarge { limit: 10, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&url) && text.contains("10 bytes"), "{text}");

        // Within the limit, the whole body arrives.
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec());
        let url = format!("http://{addr}/small");
        let response = client.get_ok(&url).await.unwrap();
        assert_eq!(
            client.body("GET", response, 5).bytes().await.unwrap(),
            b"hello"
        );
    }

    #[tokio::test]
    async fn redirects_are_reported_not_followed() {
        let addr = serve_once(
            b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.invalid/x\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        );
        let client = Client::new(options()).unwrap();
        let url = format!("http://{addr}/moved");
        let err = client.get_ok(&url).await.unwrap_err().to_string();
        assert!(err.contains(&url), "{err}");
        assert!(err.contains("302"), "{err}");
        assert!(err.contains("http://elsewhere.invalid/x"), "{err}");
    }

    #[tokio::test]
    async fn connection_failures_name_the_url_and_the_address() {
        // A port nothing listens on: bind one, then free it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let client = Client::new(options()).unwrap();
        let url = format!("http://{addr}/index.toml");
        let err = client.get_ok(&url).await.unwrap_err();
        assert!(matches!(err, HttpError::Connect { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&url) && text.contains(&addr.to_string()),
            "{text}"
        );
    }

    #[test]
    fn only_http_urls_are_accepted() {
        let client = Client::new(options()).unwrap();
        for url in ["ftp://example.com/x", "not a url", "http://"] {
            let err = client.request(reqwest::Method::GET, url).unwrap_err();
            assert!(matches!(err, HttpError::BadUrl { .. }), "{url}: {err}");
        }
    }
}
