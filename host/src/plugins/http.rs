//! Outgoing HTTP policy for `wasi:http`.
//!
//! The stock `send_request` sends anywhere. [`HttpPolicy`] replaces it: a
//! request must match one of the plugin's granted origins (scheme, host and
//! port); the host name is resolved here and every address is checked, so an
//! allowed name cannot point at loopback, private or link-local addresses
//! (cloud metadata included) unless the grant itself names such an address.
//! Plain-HTTP requests are then pinned to the checked address so a second DNS
//! answer cannot swap it; HTTPS relies on certificate validation for the
//! name. Redirects are never followed (the guest sees the 3xx), timeouts are
//! capped, credentials headers are forbidden and the response body is capped.

use super::manifest::HttpGrant;
use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, HeaderName};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, Error, ForbiddenHeaderFilter, RequestOptions, WasiBody,
    WasiHttpHooks,
};

/// Longest the host waits to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the host waits for the first byte, and between bytes.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body a plugin may receive.
pub const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// The per-call HTTP hooks of one plugin.
#[derive(Clone)]
pub struct HttpPolicy {
    namespace: Arc<str>,
    grants: Arc<[HttpGrant]>,
}

impl HttpPolicy {
    /// A policy allowing exactly `grants`.
    pub fn new(namespace: &str, grants: &[HttpGrant]) -> HttpPolicy {
        HttpPolicy {
            namespace: namespace.into(),
            grants: grants.into(),
        }
    }
}

/// Whether an address is one a plugin may not reach without naming it.
pub fn is_restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
                || o[0] >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_restricted(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 can reach v4 space
        }
    }
}

fn denied(namespace: &str, why: String) -> Error {
    tracing::warn!(plugin = namespace, "outgoing http denied: {why}");
    Error::HttpRequestDenied
}

/// Checks one request against the grants and resolves its destination.
async fn authorize(
    namespace: &str,
    grants: &[HttpGrant],
    mut request: http::Request<WasiBody>,
) -> Result<http::Request<WasiBody>, Error> {
    let uri = request.uri().clone();
    let scheme = uri.scheme_str().unwrap_or("");
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let Some(grant) = grants.iter().find(|g| g.allows(scheme, &host, port)) else {
        return Err(denied(
            namespace,
            format!("{scheme}://{host}:{port} is not in [permissions] http"),
        ));
    };
    let bare = host.trim_matches(['[', ']']);
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((bare, port)))
            .await
            .map_err(|_| Error::DnsTimeout)?
            .map_err(|e| Error::DnsError {
                rcode: Some(e.to_string()),
                info_code: None,
            })?
            .collect(),
    };
    let Some(first) = addrs.first().copied() else {
        return Err(Error::DestinationNotFound);
    };
    if !grant.names_local_address()
        && let Some(bad) = addrs.iter().find(|a| is_restricted(a.ip()))
    {
        tracing::warn!(
            plugin = namespace,
            "outgoing http denied: {host} resolves to restricted address {}",
            bad.ip()
        );
        return Err(Error::DestinationIpProhibited);
    }
    if scheme == "http" {
        // Pin the connection to the address we checked.
        let pinned = http::Uri::builder()
            .scheme("http")
            .authority(first.to_string())
            .path_and_query(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        *request.uri_mut() = pinned;
    }
    Ok(request)
}

fn clamp(options: Option<RequestOptions>) -> RequestOptions {
    let o = options.unwrap_or_default();
    let cap = |v: Option<Duration>, max: Duration| Some(v.map_or(max, |v| v.min(max)));
    RequestOptions {
        connect_timeout: cap(o.connect_timeout, CONNECT_TIMEOUT),
        first_byte_timeout: cap(o.first_byte_timeout, READ_TIMEOUT),
        between_bytes_timeout: cap(o.between_bytes_timeout, READ_TIMEOUT),
    }
}

/// A response body that fails once more than `left` bytes arrive.
struct Capped<B> {
    inner: B,
    left: u64,
}

impl<B: Body<Data = Bytes, Error = Error> + Unpin> Body for Capped<B> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.left {
                return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(
                    MAX_RESPONSE_BYTES,
                )))));
            }
            self.left -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for HttpPolicy {
    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(|name: &HeaderName| {
            DEFAULT_FORBIDDEN_HEADERS.contains(name) || *name == AUTHORIZATION || *name == COOKIE
        })
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send> {
        drop(fut);
        let namespace = self.namespace.clone();
        let grants = self.grants.clone();
        Box::new(async move {
            let request = authorize(&namespace, &grants, request).await?;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(clamp(options))).await?;
            let response = response.map(|body| {
                Capped {
                    inner: body.boxed_unsync(),
                    left: MAX_RESPONSE_BYTES,
                }
                .boxed_unsync()
            });
            Ok((response, Box::new(io) as IoFuture))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "255.255.255.255",
        ] {
            assert!(is_restricted(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_restricted(ip.parse().unwrap()), "{ip}");
        }
    }

    fn request(uri: &str) -> http::Request<WasiBody> {
        let body = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Request::builder().uri(uri).body(body).unwrap()
    }

    #[tokio::test]
    async fn only_granted_origins_pass() {
        let grants = [
            HttpGrant::parse("http://127.0.0.1:9").unwrap(),
            HttpGrant::parse("http://localhost:10").unwrap(),
            HttpGrant::parse("https://public.example").unwrap(),
        ];
        let ok = authorize("t", &grants, request("http://127.0.0.1:9/x?y"))
            .await
            .unwrap();
        assert_eq!(ok.uri().to_string(), "http://127.0.0.1:9/x?y");
        let pinned = authorize("t", &grants, request("http://localhost:10/"))
            .await
            .unwrap();
        assert!(
            pinned.uri().host().unwrap().parse::<IpAddr>().is_ok(),
            "{}",
            pinned.uri()
        );
        for uri in [
            "http://127.0.0.1:10/",   // right host, wrong port
            "https://127.0.0.1:9/",   // wrong scheme
            "http://127.0.0.2:9/",    // another host
            "http://public.example/", // granted only over https
        ] {
            assert!(
                matches!(
                    authorize("t", &grants, request(uri)).await,
                    Err(Error::HttpRequestDenied)
                ),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn names_that_resolve_to_local_addresses_are_refused() {
        // `localhost` resolves to loopback; granted by name pattern only,
        // it must still be refused.
        let grants = [HttpGrant::parse("http://*.localhost:80").unwrap()];
        let r = authorize("t", &grants, request("http://evil.localhost/")).await;
        assert!(
            matches!(
                r,
                Err(Error::DestinationIpProhibited) | Err(Error::DnsError { .. })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn timeouts_are_capped() {
        let o = clamp(Some(RequestOptions {
            connect_timeout: Some(Duration::from_secs(3600)),
            first_byte_timeout: Some(Duration::from_millis(5)),
            between_bytes_timeout: None,
        }));
        assert_eq!(o.connect_timeout, Some(CONNECT_TIMEOUT));
        assert_eq!(o.first_byte_timeout, Some(Duration::from_millis(5)));
        assert_eq!(o.between_bytes_timeout, Some(READ_TIMEOUT));
    }
}
