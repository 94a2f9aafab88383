//! MCP over streamable HTTP (`/mcp` on `hearth serve`): rmcp's
//! [`StreamableHttpService`] over [`McpServer`], behind the checks hearth
//! does itself (hosts, API key, body size; see `server::mcp`).

use super::{AllowedHosts, CallObserver, McpServer};
use crate::plugins::Runtime;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Full, combinators::BoxBody};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use std::convert::Infallible;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How `/mcp` runs.
#[derive(Clone)]
pub struct McpHttpOptions {
    /// The hosts it answers to.
    pub allowed_hosts: AllowedHosts,
    /// Largest request body, in bytes (the API's limit).
    pub max_body: usize,
    /// Told of each plugin call (for `/metrics`).
    pub observer: Option<CallObserver>,
}

impl std::fmt::Debug for McpHttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpHttpOptions")
            .field("allowed_hosts", &self.allowed_hosts)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// The streamable-HTTP MCP endpoint over a plugin runtime.
///
/// Clients of the 2026-07-28 revision are served request by request (that
/// revision has no sessions), and a client that disconnects cancels its
/// call. Older clients get a session (`Mcp-Session-Id`, ended by `DELETE`
/// or after a few idle minutes) with a `GET` event stream on which they are
/// told when the tools change; as those revisions specify, a disconnect
/// there is not a cancellation, `notifications/cancelled` is.
#[derive(Clone)]
pub struct McpHttp {
    service: StreamableHttpService<McpServer, LocalSessionManager>,
    /// Answers plain `tools/call` requests without rmcp's per-request
    /// service (see `fast`).
    pub(super) direct: Arc<McpServer>,
    allowed_hosts: AllowedHosts,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for McpHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpHttp")
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

impl McpHttp {
    /// The endpoint over `runtime`'s active plugins.
    pub fn new(runtime: Runtime, options: McpHttpOptions) -> McpHttp {
        let shutdown = CancellationToken::new();
        let config = StreamableHttpServerConfig::default()
            // hearth checks Host and Origin itself, before the API key, so
            // that a refusal says how to allow a name (see `AllowedHosts`).
            .disable_allowed_hosts()
            .disable_allowed_origins()
            // Bodies reach rmcp already read within this limit; rmcp's own
            // cap is set to the same as a second line.
            .with_max_request_body_bytes(options.max_body)
            // A call's answer as one JSON body when nothing precedes it,
            // rather than a one-event stream.
            .with_json_response(true)
            .with_cancellation_token(shutdown.clone());
        let observer = options.observer.clone();
        let direct = Arc::new(McpServer::new(runtime.clone()).with_observer(observer.clone()));
        let service = StreamableHttpService::new(
            move || Ok(McpServer::new(runtime.clone()).with_observer(observer.clone())),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        McpHttp {
            service,
            direct,
            allowed_hosts: options.allowed_hosts,
            shutdown,
        }
    }

    /// The hosts it answers to.
    pub fn allowed_hosts(&self) -> &AllowedHosts {
        &self.allowed_hosts
    }

    /// Answers one request whose body has been read. Dropping the future
    /// (the client went away) cancels what it started, as described on
    /// [`McpHttp`].
    pub async fn handle(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        self.service.handle(request).await
    }

    /// [`McpHttp::handle`] for a request whose body has been read into
    /// `body`: a plain 2026-07-28 `tools/call` is answered in place (see
    /// `fast`), anything else by rmcp.
    pub async fn handle_parts(
        &self,
        parts: http::request::Parts,
        body: Bytes,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        if parts.method == http::Method::POST
            && let Some(answer) = super::fast::try_answer(&self.direct, &parts.headers, &body).await
        {
            return answer;
        }
        self.handle(Request::from_parts(parts, Full::new(body)))
            .await
    }

    /// Ends every session and event stream (the server is stopping).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}
