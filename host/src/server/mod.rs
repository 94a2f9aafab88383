//! The HTTP service: an OpenAI-compatible API over the scheduler, health
//! checks, API keys. hyper 1.x on tokio; generation never runs on a tokio
//! worker (the scheduler and engine have their own threads), so health
//! checks answer while the model is busy.

pub mod metrics;
pub mod openai;

use crate::engine::{EngineError, Event, FinishReason, GenerateRequest, Prompt};
use crate::scheduler::{Priority, Scheduler, SchedulerError};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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
    scheduler: Scheduler,
    metrics: metrics::Metrics,
    plugins: Option<crate::plugins::Runtime>,
    model_id: String,
    created: u64,
    key_digests: Vec<[u8; 32]>,
    admin_digests: Vec<[u8; 32]>,
    /// The data directory whose installed set the admin routes change.
    home: Option<crate::home::Home>,
    options: ServerOptions,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model", &self.model_id)
            .finish()
    }
}

impl AppState {
    /// Offers the active plugins' tools to the model and runs its calls
    /// to them in the sandbox.
    pub fn with_plugins(mut self, runtime: crate::plugins::Runtime) -> AppState {
        self.plugins = Some(runtime);
        self
    }

    /// Lets the admin routes change the plugin set installed in `home`.
    pub fn with_home(mut self, home: crate::home::Home) -> AppState {
        self.home = Some(home);
        self
    }

    /// The active plugins' tools, by qualified name.
    fn plugin_tools(&self) -> Vec<crate::engine::ToolSpec> {
        let Some(runtime) = &self.plugins else {
            return Vec::new();
        };
        let mut tools: Vec<_> = runtime
            .active_plugins()
            .iter()
            .flat_map(|p| {
                p.tools.iter().map(|t| crate::engine::ToolSpec {
                    name: format!("{}.{}", p.manifest.namespace, t.name),
                    description: t.description.clone(),
                    parameters: t.schema.clone(),
                })
            })
            .collect();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        tools
    }

    /// The state for a scheduler serving model `model_id`.
    pub fn new(scheduler: Scheduler, model_id: String, options: ServerOptions) -> AppState {
        let digests = |keys: &[String]| {
            keys.iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect()
        };
        let key_digests = digests(&options.api_keys);
        let admin_digests = digests(&options.admin_keys);
        AppState {
            scheduler,
            metrics: metrics::Metrics::default(),
            plugins: None,
            model_id,
            created: unix_now(),
            key_digests,
            admin_digests,
            home: None,
            options,
        }
    }
}

type Body_ = BoxBody<Bytes, Infallible>;

/// An error in the OpenAI shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after: Option<u64>,
    /// A field beside `error` with details for the caller to act on.
    extra: Option<Box<(&'static str, Value)>>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
            extra: None,
        }
    }

    /// A 400 naming the parameter at fault.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = param.map(str::to_string);
        e
    }

    fn response(&self) -> Response<Body_> {
        let mut body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        if let Some(extra) = &self.extra {
            let (key, value) = &**extra;
            body[*key] = value.clone();
        }
        let mut r = json_response(self.status, &body);
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        r
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::ContextOverflow { .. } | EngineError::PromptTooLong { .. } => {
                let mut a = ApiError::invalid(e.to_string(), Some("messages"));
                a.code = Some("context_length_exceeded");
                a
            }
            EngineError::InvalidParameter { name, .. } => {
                ApiError::invalid(e.to_string(), Some(name))
            }
            EngineError::Constraint(_) | EngineError::Template(_) | EngineError::Tokenizer(_) => {
                ApiError::invalid(e.to_string(), None)
            }
            EngineError::QueueDeadline { .. } => {
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    e.to_string(),
                );
                a.retry_after = Some(5);
                a
            }
            EngineError::ShuttingDown | EngineError::Stopped => {
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    e.to_string(),
                );
                a.retry_after = Some(5);
                a
            }
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                e.to_string(),
            ),
        }
    }
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::Invalid(e) => e.into(),
            SchedulerError::QueueFull { retry_after, .. } => {
                // The scheduler's own message says how full and how long.
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    e.to_string(),
                );
                a.code = Some("queue_full");
                a.retry_after = Some(retry_after.as_secs().max(1));
                a
            }
            SchedulerError::ShuttingDown => EngineError::ShuttingDown.into(),
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body_> {
    json_text_response(status, body.to_string())
}

/// An answer whose body is already JSON text.
fn json_text_response(status: StatusCode, body: String) -> Response<Body_> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response")
}

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
    // Everything done for this request (queueing, generation, plugin
    // calls, hooks), streaming tasks included, logs inside this span.
    let span = tracing::info_span!("request", id = %request_id, %method, path);
    let mut response = match route(&state, req, started).instrument(span.clone()).await {
        Ok(r) => r,
        Err(e) => e.response(),
    };
    if let Ok(value) = http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    // Known routes only, so stray paths cannot grow the label set.
    let label = match path.as_str() {
        "/healthz" | "/readyz" | "/metrics" | "/v1/models" | "/v1/chat/completions" => {
            path.as_str()
        }
        _ => "other",
    };
    state.metrics.request(
        label,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "answered"
        )
    });
    Ok(response)
}

/// Spawns work that belongs to the current request (a streamed answer),
/// keeping its log span.
fn spawn_in_span(work: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(work.instrument(tracing::Span::current()));
}

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

async fn route(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    started: Instant,
) -> Result<Response<Body_>, ApiError> {
    let path = req.uri().path();
    let allowed: &[Method] = match path {
        "/healthz" | "/readyz" | "/metrics" | "/v1/models" | "/v1/plugins" => &[Method::GET],
        "/v1/chat/completions" => &[Method::POST],
        p if p.starts_with("/v1/plugins/") && p.matches('/').count() == 4 => &[Method::POST],
        "/v1/admin/plugins" => &[Method::POST],
        p if p.starts_with("/v1/admin/plugins/") => &[Method::POST, Method::DELETE],
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("no route {path}"),
            ));
        }
    };
    if !allowed.contains(req.method()) {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!(
                "{} is not allowed on {path}; use {}",
                req.method(),
                allowed[0]
            ),
        );
        e.code = Some("method_not_allowed");
        return Err(e);
    }
    match path {
        "/healthz" => return Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        "/metrics" => {
            let mut text = state.metrics.render(&state.scheduler.stats(), true);
            if let Some(runtime) = &state.plugins {
                let (used, budget) = runtime.plugin_memory();
                text.push_str(&format!(
                    "# HELP hearth_plugin_memory_bytes Linear memory held by plugin calls now.\n\
                     # TYPE hearth_plugin_memory_bytes gauge\nhearth_plugin_memory_bytes {used}\n\
                     # HELP hearth_plugin_memory_budget_bytes What all plugin calls together may hold.\n\
                     # TYPE hearth_plugin_memory_budget_bytes gauge\nhearth_plugin_memory_budget_bytes {budget}\n"
                ));
            }
            return Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(text)).boxed())
                .expect("valid response"));
        }
        "/readyz" => {
            let stats = state.scheduler.stats();
            return Ok(json_response(
                StatusCode::OK,
                &json!({"status": "ready", "model": state.model_id, "queue": stats}),
            ));
        }
        _ => {}
    }
    if path.starts_with("/v1/admin/") {
        return admin(state, req).await;
    }
    authorize(state, &req)?;
    match path {
        "/v1/models" => Ok(json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [
                {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "hearth"}
            ]}),
        )),
        "/v1/plugins" => {
            let mut list: Vec<Value> = state
                .plugins
                .iter()
                .flat_map(|r| r.active_plugins())
                .map(|p| p.summary())
                .collect();
            list.sort_by(|a, b| a["namespace"].as_str().cmp(&b["namespace"].as_str()));
            Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": list}),
            ))
        }
        "/v1/chat/completions" => chat(state, req, started).await,
        _ => invoke_plugin(state, req).await,
    }
}

fn authorize(state: &AppState, req: &Request<Incoming>) -> Result<(), ApiError> {
    if state.key_digests.is_empty() {
        return Ok(());
    }
    check_key(&state.key_digests, req)
}

/// `POST /v1/admin/plugins` (install), `POST
/// /v1/admin/plugins/{namespace}/enable|disable`, `DELETE
/// /v1/admin/plugins/{namespace}`: changes the installed set with the
/// plugin manager, then reloads the active set. Needs an admin key.
async fn admin(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body_>, ApiError> {
    if state.admin_digests.is_empty() {
        let mut e = ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "the admin API is off: start hearth serve with --admin-key",
        );
        e.code = Some("admin_disabled");
        return Err(e);
    }
    check_key(&state.admin_digests, &req)?;
    let (Some(home), Some(runtime)) = (state.home.clone(), state.plugins.clone()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "this server has no plugin set to manage",
        ));
    };
    if req.uri().path() == "/v1/admin/plugins" {
        let body = json_body(state, req).await?;
        return install(&home, &runtime, body).await;
    }
    let path = req
        .uri()
        .path()
        .trim_start_matches("/v1/admin/plugins/")
        .to_string();
    let parts: Vec<&str> = path.split('/').collect();
    let change = match (req.method(), parts.as_slice()) {
        (&Method::POST, [ns, "enable"]) => {
            crate::manager::install::set_enabled(&home, ns, true).map(|()| Vec::new())
        }
        (&Method::POST, [ns, "disable"]) => {
            crate::manager::install::set_enabled(&home, ns, false).map(|()| Vec::new())
        }
        (&Method::DELETE, [ns]) => crate::manager::install::remove(&home, ns, false),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "admin routes: POST /v1/admin/plugins/{namespace}/enable|disable, DELETE /v1/admin/plugins/{namespace}",
            ));
        }
    };
    let disabled = change.map_err(|e| {
        let mut a = ApiError::new(StatusCode::CONFLICT, "invalid_request_error", e);
        a.code = Some("plugin_change_refused");
        a
    })?;
    let mut answer = reload_set(&runtime, &home).await?;
    answer["also_disabled"] = json!(disabled);
    Ok(json_response(StatusCode::OK, &answer))
}

/// Reloads the active set after a change; the new set as JSON.
async fn reload_set(
    runtime: &crate::plugins::Runtime,
    home: &crate::home::Home,
) -> Result<Value, ApiError> {
    let set = crate::manager::reload(runtime, home).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("reloading the plugin set: {e}"),
        )
    })?;
    Ok(json!({
        "active": set.resolution.order,
        "problems": set.resolution.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    }))
}

/// The body of `POST /v1/admin/plugins`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallRequest {
    /// `name` or `name@<semver requirement>`.
    plugin: String,
    /// Registry index (path or http(s) URL); the built-in one by default.
    #[serde(default)]
    registry: Option<String>,
    /// The permission summary of an earlier answer, sent back to grant
    /// exactly those permissions.
    #[serde(default)]
    grant: Option<String>,
    #[serde(default)]
    allow_unsigned: bool,
    #[serde(default)]
    allow_downgrade: bool,
    #[serde(default)]
    allow_v1_signatures: bool,
    /// Let the plugin take over a bundled plugin's namespace.
    #[serde(default)]
    replace_bundled: bool,
}

/// Installs from a registry with the plugin manager. Permissions are
/// granted in two requests, as at a terminal: the first answers 409
/// `permissions_required` with the summary; sending that summary back as
/// `grant` installs, provided the plugin still asks for exactly that.
async fn install(
    home: &crate::home::Home,
    runtime: &crate::plugins::Runtime,
    body: Value,
) -> Result<Response<Body_>, ApiError> {
    use crate::manager::install::{self, Step};
    use crate::manager::registry::Index;
    let request: InstallRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(format!("install request: {e}"), None))?;
    let (name, requirement) =
        install::parse_spec(&request.plugin).map_err(|e| ApiError::invalid(e, Some("plugin")))?;
    let index = Index::open(request.registry.as_deref())
        .await
        .map_err(|e| ApiError::invalid(e.to_string(), Some("registry")))?;
    let options = install::Options {
        allow_unsigned: request.allow_unsigned,
        allow_downgrade: request.allow_downgrade,
        allow_v1_signatures: request.allow_v1_signatures,
        replace_bundled: request.replace_bundled,
    };
    let mut asked = String::new();
    let result = install::install(
        home,
        runtime,
        &index,
        name,
        &requirement,
        &options,
        &mut |summary| {
            asked = summary.to_string();
            request.grant.as_deref() == Some(summary)
        },
    )
    .await;
    let report = match result {
        Ok(report) => report,
        Err(e) if e.step == Step::Permissions => {
            let mut a = ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                format!(
                    "{} asks for permissions; to grant them, send this request again with `grant` set to the `permissions` text of this answer",
                    e.plugin
                ),
            );
            a.param = Some("grant".into());
            a.code = Some("permissions_required");
            a.extra = Some(Box::new(("permissions", json!(asked))));
            return Err(a);
        }
        Err(e) => {
            let mut a = ApiError::new(StatusCode::CONFLICT, "invalid_request_error", e.to_string());
            a.code = Some("install_failed");
            return Err(a);
        }
    };
    let mut answer = reload_set(runtime, home).await?;
    answer["installed"] = json!(report.installed);
    answer["already_installed"] = json!(report.already);
    Ok(json_response(StatusCode::OK, &answer))
}

fn check_key(digests: &[[u8; 32]], req: &Request<Incoming>) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing API key: send `Authorization: Bearer <key>`",
        ));
    };
    // Comparing digests makes the comparison independent of the key's
    // length; folding every byte makes it independent of where they differ.
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let mut ok = 0u8;
    for key in digests {
        let diff = key
            .iter()
            .zip(&digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        ok |= u8::from(diff == 0);
    }
    if ok == 0 {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid API key",
        ));
    }
    Ok(())
}

/// Reads a JSON body within the size and time limits.
async fn json_body(state: &AppState, req: Request<Incoming>) -> Result<Value, ApiError> {
    let bytes = body_bytes(state, req).await?;
    parse_json(&bytes)
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))
}

/// Reads an `application/json` body's bytes within the size and time
/// limits.
async fn body_bytes(state: &AppState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let content_type = req
        .headers()
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
    if req.body().size_hint().lower() > state.options.max_body as u64 {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), state.options.max_body);
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

async fn chat(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    started: Instant,
) -> Result<Response<Body_>, ApiError> {
    let body = json_body(state, req).await?;
    let request: openai::ChatRequest = serde_path_to_error::deserialize(&body).map_err(|e| {
        let path = e.path().to_string();
        ApiError::invalid(
            format!("`{path}`: {}", e.inner()),
            Some(path.split('.').next().unwrap_or(&path)),
        )
    })?;
    if let Some(model) = &request.model
        && !model.is_empty()
        && model != &state.model_id
    {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "model `{model}` does not exist; this server serves `{}`",
                state.model_id
            ),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        return Err(e);
    }
    let stream = request.stream;
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let no_tools = request.tool_choice.as_ref().and_then(Value::as_str) == Some("none");
    let plugin_tools = if no_tools {
        Vec::new()
    } else {
        state.plugin_tools()
    };
    let mapped = request.map(&plugin_tools)?;
    let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
    let created = unix_now();
    let deadline = Instant::now() + state.options.request_timeout;
    let observers = state
        .plugins
        .as_ref()
        .is_some_and(|r| !r.active_plugins().is_empty());
    if stream && !observers {
        let tools_offered = !mapped.tools.is_empty();
        let forced_call = mapped.forced_call;
        let generate = GenerateRequest {
            prompt: Prompt::Chat {
                messages: mapped.messages,
                tools: mapped.tools,
            },
            params: mapped.params,
            format: mapped.format,
            cancel: Default::default(),
        };
        let generation = state
            .scheduler
            .submit(generate, Priority::Interactive, Some(deadline))?;
        return Ok(stream_response(
            state.clone(),
            started,
            id,
            created,
            generation,
            tools_offered,
            forced_call,
            include_usage,
        ));
    }
    if stream {
        // Plugin calls happen between generations: the answer is streamed
        // once the last one is known.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
        let state = state.clone();
        let model = state.model_id.clone();
        spawn_in_span(async move {
            let sse = |v: Value| Bytes::from(format!("data: {v}\n\n"));
            let chunk = |delta: Value, finish: Option<&str>| {
                sse(
                    json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]}),
                )
            };
            let _ = tx
                .send(chunk(json!({"role": "assistant", "content": ""}), None))
                .await;
            // Answer rewriting by after-response hooks needs the whole
            // answer before anything is sent.
            let rewrites = state.plugins.as_ref().is_some_and(|r| {
                r.active_plugins()
                    .iter()
                    .any(|p| p.events.contains(&crate::plugins::EventKind::AfterResponse))
            });
            let live = (!rewrites).then_some(Live {
                tx: &tx,
                chunk: &chunk,
                started,
            });
            let outcome = tokio::select! {
                o = converse(&state, mapped, &plugin_tools, deadline, &id, live) => o,
                () = tx.closed() => return,
            };
            match outcome {
                Ok(o) => {
                    if !o.streamed && !o.content.is_empty() {
                        let _ = tx.send(chunk(json!({"content": o.content}), None)).await;
                    }
                    for call in openai::tool_calls_json(&o.calls, &id.replace("chatcmpl", "call")) {
                        let _ = tx.send(chunk(json!({"tool_calls": [call]}), None)).await;
                    }
                    let _ = tx.send(chunk(json!({}), Some(o.finish))).await;
                    if include_usage {
                        let _ = tx.send(sse(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage(&o.usage)}))).await;
                    }
                }
                Err(e) => {
                    let _ = tx.send(sse(json!({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}}))).await;
                }
            }
            let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        });
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(BodyExt::boxed(ChannelBody(rx)))
            .expect("valid response"));
    }
    let o = converse(state, mapped, &plugin_tools, deadline, &id, None).await?;
    let mut message = json!({"role": "assistant", "content": o.content});
    if !o.calls.is_empty() {
        message["tool_calls"] = Value::Array(openai::tool_calls_json(
            &o.calls,
            &id.replace("chatcmpl", "call"),
        ));
        if o.content.is_empty() {
            message["content"] = Value::Null;
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": id, "object": "chat.completion", "created": created, "model": state.model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": o.finish, "logprobs": null}],
            "usage": usage(&o.usage),
        }),
    ))
}

/// Most generations one request may run (each plugin call adds one).
const MAX_STEPS: usize = 5;

/// A finished turn: what goes back to the client.
struct Outcome {
    content: String,
    /// Calls of the client's own tools, for it to run.
    calls: Vec<crate::engine::ToolCall>,
    finish: &'static str,
    usage: crate::engine::Usage,
    /// The content already went to the client as it was generated.
    streamed: bool,
}

/// Where a streamed request's text goes while it is generated.
struct Live<'a> {
    tx: &'a tokio::sync::mpsc::Sender<Bytes>,
    chunk: &'a (dyn Fn(Value, Option<&str>) -> Bytes + Send + Sync),
    started: Instant,
}

/// Whether text could still turn out to be a tool call in one of the
/// formats [`crate::engine::parse_tool_calls`] reads: those start the answer.
fn may_be_call(text: &str) -> bool {
    let t = text.trim_start();
    ["<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "{"]
        .iter()
        .any(|m| t.starts_with(m) || m.starts_with(t))
}

/// Generates until the model answers: calls to plugin tools are run in the
/// sandbox and their results (or errors) fed back, up to [`MAX_STEPS`]
/// generations; calls to the client's tools end the turn.
async fn converse(
    state: &AppState,
    mapped: openai::Mapped,
    plugin_tools: &[crate::engine::ToolSpec],
    deadline: Instant,
    request_id: &str,
    live: Option<Live<'_>>,
) -> Result<Outcome, ApiError> {
    let openai::Mapped {
        mut messages,
        tools,
        params,
        mut format,
        mut forced_call,
    } = mapped;
    if let Some(runtime) = &state.plugins
        && let Some(last) = messages
            .iter_mut()
            .rev()
            .find(|m| m.role == crate::engine::Role::User)
    {
        // Observers see the user's message first (a JSON string), and may
        // rewrite or refuse it.
        let payload = Value::String(last.content.clone()).to_string();
        let scope = crate::plugins::CallScope::new(format!("{request_id}-before"));
        let d = runtime
            .dispatch(crate::plugins::EventKind::BeforePrompt, &payload, scope)
            .await;
        if let Some((plugin, reason)) = d.vetoed {
            let mut e = ApiError::invalid(
                format!("plugin `{plugin}` refused the request: {reason}"),
                Some("messages"),
            );
            e.code = Some("refused_by_plugin");
            return Err(e);
        }
        match serde_json::from_str::<Value>(&d.payload) {
            Ok(Value::String(text)) => last.content = text,
            _ => tracing::warn!(
                request = request_id,
                "a before-prompt hook returned no JSON string; ignored"
            ),
        }
    }
    let mut total = crate::engine::Usage::default();
    for step in 0..MAX_STEPS {
        let generate = GenerateRequest {
            prompt: Prompt::Chat {
                messages: messages.clone(),
                tools: tools.clone(),
            },
            params: params.clone(),
            format: format.take(),
            cancel: Default::default(),
        };
        let mut generation =
            state
                .scheduler
                .submit(generate, Priority::Interactive, Some(deadline))?;
        // Text goes out as it comes unless it may be a call, which is held
        // until the generation ends (forced calls are always held).
        let mut held = String::new();
        let mut streaming = false;
        let done = loop {
            match generation.next().await {
                Some(Ok(Event::Text(piece))) => {
                    let Some(live) = &live else { continue };
                    if forced_call {
                        continue;
                    }
                    if !streaming {
                        held.push_str(&piece);
                        if may_be_call(&held) {
                            continue;
                        }
                        streaming = true;
                        state
                            .metrics
                            .time_to_first_token(live.started.elapsed().as_secs_f64());
                        let first = std::mem::take(&mut held);
                        if live
                            .tx
                            .send((live.chunk)(json!({"content": first}), None))
                            .await
                            .is_err()
                        {
                            return Err(EngineError::Stopped.into());
                        }
                    } else if live
                        .tx
                        .send((live.chunk)(json!({"content": piece}), None))
                        .await
                        .is_err()
                    {
                        return Err(EngineError::Stopped.into());
                    }
                }
                Some(Ok(Event::Done(done))) => break done,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(EngineError::Stopped.into()),
            }
        };
        record_speed(state, &done);
        if streaming {
            // Plain text went out already: that was the answer.
            total.prompt_tokens += done.usage.prompt_tokens;
            total.completion_tokens += done.usage.completion_tokens;
            return Ok(Outcome {
                content: done.text,
                calls: Vec::new(),
                finish: finish_reason(done.finish_reason, false),
                usage: total,
                streamed: true,
            });
        }
        total.prompt_tokens += done.usage.prompt_tokens;
        total.completion_tokens += done.usage.completion_tokens;
        let (content, calls) = openai::answer(&done.text, !tools.is_empty(), forced_call);
        forced_call = false;
        let (plugin_calls, client_calls): (Vec<_>, Vec<_>) = calls
            .into_iter()
            .partition(|c| plugin_tools.iter().any(|t| t.name == c.name));
        if plugin_calls.is_empty() || step + 1 == MAX_STEPS {
            let finish = if step + 1 == MAX_STEPS && !plugin_calls.is_empty() {
                "length"
            } else {
                finish_reason(done.finish_reason, !client_calls.is_empty())
            };
            let mut outcome = Outcome {
                content,
                calls: client_calls,
                finish,
                usage: total,
                streamed: false,
            };
            after_response(state, request_id, &mut outcome).await;
            return Ok(outcome);
        }
        let runtime = state
            .plugins
            .as_ref()
            .expect("plugin tools come from a runtime");
        let mut assistant =
            crate::engine::ChatMessage::new(crate::engine::Role::Assistant, content);
        assistant.tool_calls = plugin_calls.clone();
        messages.push(assistant);
        for (i, call) in plugin_calls.into_iter().enumerate() {
            let scope = crate::plugins::CallScope::new(format!("{request_id}-{step}-{i}"));
            let namespace = call.name.split('.').next().unwrap_or_default();
            let result = match runtime
                .invoke_qualified(&call.name, &call.arguments.to_string(), scope)
                .await
            {
                Ok(json) => {
                    state.metrics.plugin_call(namespace, "ok");
                    json
                }
                // The model sees the failure and can answer anyway.
                Err(e) => {
                    use crate::plugins::ErrorKind;
                    let outcome = match e.kind() {
                        ErrorKind::Timeout => "timeout",
                        ErrorKind::Trap
                        | ErrorKind::MemoryLimit
                        | ErrorKind::StackOverflow
                        | ErrorKind::OutputTooLarge => "trap",
                        _ => "error",
                    };
                    state.metrics.plugin_call(namespace, outcome);
                    json!({"error": e.to_string()}).to_string()
                }
            };
            tracing::info!(tool = call.name, request = request_id, "plugin tool call");
            let mut reply = crate::engine::ChatMessage::new(crate::engine::Role::Tool, result);
            reply.tool_call_id = Some(call.id.clone());
            reply.name = Some(call.name.clone());
            messages.push(reply);
        }
    }
    unreachable!("the last step returns")
}

/// Observers see the answer and may rewrite it or withhold it (finish
/// reason `content_filter`).
async fn after_response(state: &AppState, request_id: &str, outcome: &mut Outcome) {
    let Some(runtime) = &state.plugins else {
        return;
    };
    let payload = Value::String(outcome.content.clone()).to_string();
    let scope = crate::plugins::CallScope::new(format!("{request_id}-after"));
    let d = runtime
        .dispatch(crate::plugins::EventKind::AfterResponse, &payload, scope)
        .await;
    if let Some((plugin, reason)) = d.vetoed {
        tracing::info!(
            request = request_id,
            plugin,
            reason,
            "answer withheld by a plugin"
        );
        outcome.content.clear();
        outcome.calls.clear();
        outcome.finish = "content_filter";
    } else if let Ok(Value::String(text)) = serde_json::from_str::<Value>(&d.payload) {
        outcome.content = text;
    }
}

/// `POST /v1/plugins/{namespace}/{tool}`: the body is the arguments
/// object, the answer the tool's JSON result.
async fn invoke_plugin(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body_>, ApiError> {
    use crate::plugins::ErrorKind;
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches("/v1/plugins/").splitn(2, '/');
    let (namespace, tool) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let Some(runtime) = state.plugins.clone() else {
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
            Ok(json_text_response(StatusCode::OK, result))
        }
        Err(e) => {
            let (status, outcome) = match e.kind() {
                ErrorKind::NotFound => (StatusCode::NOT_FOUND, "error"),
                ErrorKind::BadArguments => (StatusCode::BAD_REQUEST, "error"),
                ErrorKind::Tool => (StatusCode::UNPROCESSABLE_ENTITY, "error"),
                ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                ErrorKind::Host => (StatusCode::INTERNAL_SERVER_ERROR, "error"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "trap"),
            };
            if e.kind() != ErrorKind::NotFound {
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

fn record_speed(state: &AppState, done: &crate::engine::Completion) {
    let secs = done.decode_time.as_secs_f64();
    if done.usage.completion_tokens > 1 && secs > 0.0 {
        state
            .metrics
            .tokens_per_second((done.usage.completion_tokens - 1) as f64 / secs);
    }
}

fn usage(u: &crate::engine::Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.prompt_tokens + u.completion_tokens})
}

fn finish_reason(reason: FinishReason, calls: bool) -> &'static str {
    match reason {
        _ if calls => "tool_calls",
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

/// A response body fed from a channel: dropping it (the client went away)
/// closes the channel, which cancels the generation behind it.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[allow(clippy::too_many_arguments)]
fn stream_response(
    state: Arc<AppState>,
    started: Instant,
    id: String,
    created: u64,
    mut generation: crate::engine::Generation,
    tools_offered: bool,
    forced_call: bool,
    include_usage: bool,
) -> Response<Body_> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    let model = state.model_id.clone();
    spawn_in_span(async move {
        let mut first = true;
        let chunk = |delta: Value, finish: Option<&str>| {
            let v = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
            });
            Bytes::from(format!("data: {v}\n\n"))
        };
        if tx
            .send(chunk(json!({"role": "assistant", "content": ""}), None))
            .await
            .is_err()
        {
            return;
        }
        // With tools, the text may turn out to be a call: it is held until
        // the end and sent as content or as tool-call deltas.
        let hold = tools_offered || forced_call;
        let done = loop {
            // Watch for the client going away even while nothing is being
            // sent (a queued request), so its place in the queue is freed.
            let event = tokio::select! {
                event = generation.next() => event,
                () = tx.closed() => return,
            };
            match event {
                Some(Ok(Event::Text(t))) => {
                    if first {
                        state
                            .metrics
                            .time_to_first_token(started.elapsed().as_secs_f64());
                        first = false;
                    }
                    if !hold && tx.send(chunk(json!({"content": t}), None)).await.is_err() {
                        return; // dropping `generation` cancels it
                    }
                }
                Some(Ok(Event::Done(done))) => {
                    record_speed(&state, &done);
                    break done;
                }
                Some(Err(e)) => {
                    let e = ApiError::from(e);
                    let v = json!({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}});
                    let _ = tx.send(Bytes::from(format!("data: {v}\n\n"))).await;
                    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                    return;
                }
                None => return,
            }
        };
        let mut calls = Vec::new();
        if hold {
            let (content, found) = openai::answer(&done.text, tools_offered, forced_call);
            if !content.is_empty() {
                let _ = tx.send(chunk(json!({"content": content}), None)).await;
            }
            calls = found;
            let call_id = id.replace("chatcmpl", "call");
            for call in openai::tool_calls_json(&calls, &call_id) {
                let _ = tx.send(chunk(json!({"tool_calls": [call]}), None)).await;
            }
        }
        let _ = tx
            .send(chunk(
                json!({}),
                Some(finish_reason(done.finish_reason, !calls.is_empty())),
            ))
            .await;
        if include_usage {
            let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage(&done.usage)});
            let _ = tx.send(Bytes::from(format!("data: {v}\n\n"))).await;
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed(ChannelBody(rx)))
        .expect("valid response")
}

/// Reloads the active plugin set whenever the installed set changes on
/// disk (`hearth plugin install|remove|enable|disable` run beside the
/// server), checking every `every`. Calls in flight finish on the old set.
/// Does nothing for a server without a plugin set.
pub fn watch_installed(state: Arc<AppState>, every: Duration) {
    let (Some(home), Some(runtime)) = (state.home.clone(), state.plugins.clone()) else {
        return;
    };
    let lock = crate::manager::store::Store::new(&home).lock_path();
    // Written by replacing the file, so a change shows in any of these.
    let stamp = move || {
        std::fs::metadata(&lock).ok().map(|m| {
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0u64;
            (m.modified().ok(), m.len(), inode)
        })
    };
    tokio::spawn(async move {
        let mut seen = stamp();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp();
            if now == seen {
                continue;
            }
            seen = now;
            match crate::manager::reload(&runtime, &home).await {
                Ok(set) => tracing::info!(
                    active = ?set.resolution.order,
                    problems = set.resolution.problems.len(),
                    "installed plugins changed; reloaded"
                ),
                Err(e) => tracing::warn!("installed plugins changed; reloading failed: {e}"),
            }
        }
    });
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting,
/// shuts the scheduler down (queued requests get 503s, the running one is
/// stopped) and waits up to `grace` for connections to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
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
        let mut closing = closing_rx.clone();
        let header_timeout = state.options.header_timeout;
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, "connection: {e}");
                    }
                }
                _ = closing.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    state.scheduler.shutdown();
    let _ = closing_tx.send(true);
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// The model id `/v1/models` reports: the file name without `.gguf`.
pub fn model_id(path: &std::path::Path) -> String {
    path.file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
}
