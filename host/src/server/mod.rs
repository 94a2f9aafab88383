//! The HTTP service: the OpenAI-compatible API over the assistant, the
//! plugins' tools called directly, admin routes, health checks, metrics.
//! hyper 1.x on tokio; generation never runs on a tokio worker (the
//! scheduler and engine have their own threads, preparation runs on
//! blocking threads), so health checks answer while the model is busy.
//!
//! A request goes [`handle`] → [`routes::Route`] → its handler: chat
//! requests to [`chat`] (which hands the conversation to
//! [`crate::assistant`] and renders its events, through [`sse`] when
//! streamed), `/v1/plugins…` to [`plugins_api`], `/v1/admin/…` to
//! [`admin`], `/mcp` to [`mcp`] (the plugins' tools over MCP, see
//! [`crate::mcp`]). Errors are [`ApiError`]s, in the OpenAI shape.

mod admin;
mod auth;
mod body;
mod chat;
mod error;
mod loading;
mod mcp;
pub mod metrics;
pub mod openai;
mod plugins_api;
mod routes;
mod sse;
mod web;

pub use error::ApiError;
pub use loading::Loading;

use crate::assistant::Assistant;
use crate::scheduler::Scheduler;
use body::json_response;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use routes::Route;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Accepted API keys (`Authorization: Bearer …`); none means no auth.
    pub api_keys: Vec<String>,
    /// Keys for the admin routes (`/v1/admin/…`); none disables them.
    pub admin_keys: Vec<String>,
    /// Largest request body.
    pub max_body: usize,
    /// Time allowed to send the request headers.
    pub header_timeout: Duration,
    /// Time allowed to send the request body.
    pub body_timeout: Duration,
    /// Longest a chat request may queue and generate.
    pub request_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            api_keys: Vec::new(),
            admin_keys: Vec::new(),
            max_body: 1 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// What every request handler sees.
pub struct AppState {
    assistant: Assistant,
    /// Shared with the MCP endpoint, which counts its plugin calls here.
    metrics: Arc<metrics::Metrics>,
    model_id: String,
    created: u64,
    key_digests: Vec<[u8; 32]>,
    admin_digests: Vec<[u8; 32]>,
    /// The data directory whose installed set the admin routes change.
    home: Option<crate::home::Home>,
    /// `/mcp`, when the server has plugins and serves it.
    mcp: Option<crate::mcp::McpHttp>,
    options: ServerOptions,
    /// Set when the server is shutting down: `/readyz` answers 503.
    draining: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model", &self.model_id)
            .finish()
    }
}

impl AppState {
    /// The state for a scheduler serving model `model_id`, without plugins.
    pub fn new(scheduler: Scheduler, model_id: String, options: ServerOptions) -> AppState {
        let metrics = Arc::new(metrics::Metrics::default());
        // The scheduler's engine holds a loaded model: this process's load
        // (the only one; it happens before the server starts) completed.
        metrics.model_load_started();
        metrics.model_load_completed();
        AppState {
            assistant: Assistant::new(scheduler, None),
            metrics,
            model_id,
            created: unix_now(),
            key_digests: auth::digests(&options.api_keys),
            admin_digests: auth::digests(&options.admin_keys),
            home: None,
            mcp: None,
            options,
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Offers the active plugins' tools to the model, runs its calls to
    /// them in the sandbox, and lets their hooks observe conversations.
    pub fn with_plugins(mut self, runtime: crate::plugins::Runtime) -> AppState {
        self.assistant = Assistant::new(self.assistant.scheduler().clone(), Some(runtime));
        self
    }

    /// Offers the tools of the MCP servers `sources` to the model beside
    /// the plugins' (after [`AppState::with_plugins`]).
    pub fn with_mcp_sources(mut self, sources: crate::mcp::McpSources) -> AppState {
        self.assistant = self.assistant.with_mcp(sources);
        self
    }

    /// Serves the active plugins' tools over MCP at `/mcp` to the hosts
    /// `allowed_hosts` lets in (see [`crate::mcp::AllowedHosts`]), with the
    /// API's key and body limits. Without plugins (see
    /// [`AppState::with_plugins`], which must come first) `/mcp` is 404.
    pub fn with_mcp(mut self, allowed_hosts: crate::mcp::AllowedHosts) -> AppState {
        let Some(runtime) = self.assistant.plugins().cloned() else {
            return self;
        };
        let metrics = self.metrics.clone();
        let observer: crate::mcp::CallObserver =
            Arc::new(move |namespace: &str, outcome| metrics.plugin_call(namespace, outcome));
        self.mcp = Some(crate::mcp::McpHttp::new(
            runtime,
            crate::mcp::McpHttpOptions {
                allowed_hosts,
                max_body: self.options.max_body,
                observer: Some(observer),
            },
        ));
        self
    }

    /// Lets the admin routes change the plugin set installed in `home`.
    pub fn with_home(mut self, home: crate::home::Home) -> AppState {
        self.home = Some(home);
        self
    }
}

type Body_ = BoxBody<Bytes, Infallible>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Answers one request.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body_>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let request_id = request_id(&req);
    let route = Route::parse(&path);
    let label = Route::label(route.as_ref().ok());
    // Everything done for this request (queueing, generation, plugin
    // calls, hooks), streaming tasks included, logs inside this span.
    let span = tracing::info_span!("request", id = %request_id, %method, path);
    let answered = async {
        let route = route?;
        route.check_method(&method, &path)?;
        dispatch(&state, route, req, started, &request_id).await
    };
    let mut response = match answered.instrument(span.clone()).await {
        Ok(r) => r,
        Err(e) => e.response(),
    };
    if let Ok(value) = http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let facts = response.extensions_mut().remove::<RequestFacts>();
    let streaming = response.extensions_mut().remove::<Streaming>().is_some();
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        // The connection closes after this answer, and the client knows
        // not to send another request on it.
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    state.metrics.request(
        label,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    if !streaming {
        state.metrics.recent_request(
            label,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    // A stream logs its own line when it ends (see `chat::stream_turn`):
    // its tokens and its whole time are known only then.
    if !streaming {
        let facts = facts.unwrap_or_default();
        span.in_scope(|| {
            tracing::info!(
                route = label,
                status = response.status().as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                prompt_tokens = facts.prompt_tokens,
                completion_tokens = facts.completion_tokens,
                plugin_calls = facts.plugin_calls,
                "answered"
            )
        });
    }
    Ok(response)
}

/// What a handler tells the request log about its answer (a response
/// extension, taken off before the answer goes out).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RequestFacts {
    pub(super) prompt_tokens: u32,
    pub(super) completion_tokens: u32,
    pub(super) plugin_calls: u32,
}

/// Marks a streamed answer, whose request line is logged when the stream
/// ends.
#[derive(Debug, Clone, Copy)]
pub(super) struct Streaming;

/// The caller's `X-Request-Id` when it is a plain token (a load balancer's
/// or client's id, so logs can be joined), otherwise a new one.
fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(
            || format!("req-{:016x}", rand::random::<u64>()),
            str::to_string,
        )
}

/// Runs the handler of `route`.
async fn dispatch(
    state: &Arc<AppState>,
    route: Route,
    req: Request<Incoming>,
    started: Instant,
    request_id: &str,
) -> Result<Response<Body_>, ApiError> {
    if route == Route::Mcp {
        // Before the key: a page re-pointed here by DNS rebinding is
        // refused for what it is, whatever it sends.
        mcp::check_host(state, &req)?;
    }
    if !route.public() {
        auth::authorize(state, &req)?;
    }
    let scheduler = state.assistant.scheduler();
    match route {
        Route::Healthz => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        Route::Readyz if state.draining.load(std::sync::atomic::Ordering::Relaxed) => {
            Ok(json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "draining", "model": state.model_id, "queue": scheduler.stats()}),
            ))
        }
        Route::Readyz => Ok(json_response(
            StatusCode::OK,
            &json!({"status": "ready", "model": state.model_id, "queue": scheduler.stats()}),
        )),
        Route::Metrics => {
            let text = state.metrics.render(&metrics::Scrape {
                stats: scheduler.stats(),
                // This state exists once the model is in ([`Loading`]
                // answers before).
                model_loaded: true,
                kv_cache: scheduler.engine().kv_cache(),
                plugin_memory: state.assistant.plugins().map(|r| r.plugin_memory()),
            });
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, metrics::CONTENT_TYPE)
                .body(Full::new(Bytes::from(text)).boxed())
                .expect("valid response"))
        }
        Route::Models => Ok(json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [
                {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "hearth"}
            ]}),
        )),
        Route::Plugins => Ok(plugins_api::list(state)),
        Route::PluginCall { namespace, tool } => {
            plugins_api::invoke_plugin(state, req, &namespace, &tool).await
        }
        Route::Chat => chat::chat(state, req, started, request_id).await,
        Route::Admin { .. } => admin::admin(state, req).await,
        Route::Mcp => mcp::mcp(state, req).await,
        Route::Page => web::answer(None, req.method()),
        Route::Asset { file } => web::answer(Some(&file), req.method()),
        Route::Status => Ok(json_response(StatusCode::OK, &status(state))),
    }
}

/// `GET /v1/status`: what the page's status view shows.
fn status(state: &AppState) -> serde_json::Value {
    let scheduler = state.assistant.scheduler();
    let engine = scheduler.engine();
    json!({
        "model": state.model_id,
        "context": engine.context(),
        "parallel": engine.parallel(),
        "threads": crate::engine::threads(),
        "uptime_s": unix_now().saturating_sub(state.created),
        "queue": scheduler.stats(),
        "recent": state.metrics.recent(),
        "plugin_calls": state.metrics.plugin_call_tallies(),
    })
}

/// Serves on `listener` until `shutdown` resolves, then drains: stops
/// accepting (a load balancer's next connection goes to another replica),
/// answers `/readyz` with 503, and lets every request already received
/// (queued or generating, streams included) finish, for up to `grace`.
/// Only then is the scheduler stopped, which ends whatever is left with an
/// error its client sees.
///
/// Open connections are not cut while idle: a client (nginx's pool of
/// upstream connections) may be sending a request on one at that very
/// moment, and a request lost that way cannot be retried safely. Instead
/// every answer while draining says `Connection: close`, and idle
/// connections are left to their client's keep-alive timeout or to the
/// server's own (`header_timeout`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let closing = closing_rx.clone();
        let header_timeout = state.options.header_timeout;
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            if let Err(e) = serve_connection(stream, service, header_timeout, closing).await {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
    drop(listener);
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        grace_s = grace.as_secs_f64(),
        "draining: no new connections; requests in progress may finish"
    );
    // MCP event streams would otherwise hold their connections open
    // through the whole grace period.
    if let Some(mcp) = &state.mcp {
        mcp.shutdown();
    }
    // Every connection ends by itself: one answering a request closes
    // after its answer (which says `Connection: close`), an idle one when
    // its client closes it or the server's header timeout does. Telling
    // connections to shut down early instead cut some that were answering
    // a queued request (their clients saw a reset), so that is kept for
    // what is left when the grace period is over.
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    state.assistant.scheduler().shutdown();
    if !drained {
        tracing::warn!(
            left = connections.len(),
            "grace period over: stopping the requests still in progress"
        );
        let _ = closing_tx.send(true);
        // Their generations were just stopped: give them a moment to tell
        // their clients so.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
    }
    Ok(())
}

/// Serves one HTTP/1.1 connection with `service` until it ends or
/// `closing` changes; then it closes once the request in progress, if any,
/// is answered (an idle one at once).
async fn serve_connection<S>(
    stream: tokio::net::TcpStream,
    service: S,
    header_timeout: Duration,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    S: hyper::service::HttpService<Incoming, ResBody = Body_>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = closing.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// The model id `/v1/models` reports: the file name without `.gguf`.
pub fn model_id(path: &std::path::Path) -> String {
    path.file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
}
