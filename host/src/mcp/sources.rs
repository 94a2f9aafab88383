//! MCP servers as tool sources for hearth's model: the `[[mcp]]` entries of
//! `hearth serve --config`.
//!
//! Each entry names a remote server on the streamable-HTTP transport. hearth
//! connects as an MCP client (rmcp; protocol 2026-07-28 with `server/discover`,
//! falling back to the `initialize` handshake of older servers), lists its
//! tools and offers the allowed ones to the model as `prefix.tool`, beside
//! the plugins' tools. Calls go back to the server.
//!
//! What a remote server sends is treated like what a plugin sends: at most
//! [`MAX_SOURCE_TOOLS`] tools, each name, description and schema checked by
//! the plugins' rules ([`ToolInfo::checked`]; a tool that fails is skipped
//! with a warning), responses capped at [`MAX_RESPONSE_BYTES`], results at
//! [`MAX_RESULT_BYTES`]. Arguments are checked against the tool's schema
//! here, before anything is sent. Each call waits for one of the entry's
//! `concurrency` permits and ends after its `timeout-ms`; a dropped call
//! (the client went away) is cancelled on the server too.
//!
//! The list is re-read when the server says it changed (on a 2026-07-28
//! `subscriptions/listen` stream or, from older servers, on the session),
//! and every [`REFRESH_EVERY`] whatever it says. A server that cannot be
//! reached at start is retried in the background; its tools appear once it
//! answers.
//!
//! stdio servers are not supported: they are native programs that run with
//! the user's whole authority, outside the sandbox that is hearth's promise
//! about tools. An entry with `command` is refused with that reason; run
//! such a server behind an HTTP transport of its own if you trust it.

use crate::engine::ToolSpec;
use crate::plugins::ToolInfo;
use rmcp::ClientHandler;
use rmcp::model::{
    CallToolRequestParams, ClientConfig, ContentBlock, Implementation, ProtocolVersion,
    SubscriptionFilter,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, NotificationContext, Peer, RoleClient};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Most tools taken from one server; the rest are ignored, with a warning.
pub const MAX_SOURCE_TOOLS: usize = 128;
/// Largest response (one JSON body or one SSE event) read from a server.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// Largest tool result handed to the model, as plugins' results are.
pub const MAX_RESULT_BYTES: usize = 1 << 20;
/// How often the tool list is re-read even without a change notification.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// Longest wait for a server at start before serving without its tools.
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[[mcp]]` entry of `hearth serve --config`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceConfig {
    /// The namespace of its tools for the model: `prefix.tool`.
    pub prefix: String,
    /// The server's streamable-HTTP endpoint (`http://` or `https://`).
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding a bearer token to send.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// The tools to offer (the server's names); absent: all of them.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// Longest one call may take, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most calls in flight to this server at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A stdio server's command line: accepted by the parser only to be
    /// refused with the reason (see the module docs).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// See `command`.
    #[serde(default)]
    pub trust: Option<String>,
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_concurrency() -> usize {
    4
}

/// A `[[mcp]]` entry that cannot be used: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("[[mcp]] entry `{prefix}`: {reason}")]
pub struct SourceConfigError {
    /// The entry's prefix.
    pub prefix: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a call to an MCP server's tool failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceCallError {
    /// No source offers this name.
    #[error("no MCP server offers a tool named `{0}`")]
    Unknown(String),
    /// The arguments do not fit the tool's schema.
    #[error("{0}")]
    Arguments(String),
    /// The call took longer than the entry's timeout.
    #[error("`{tool}` did not answer within {ms} ms")]
    Timeout {
        /// The qualified tool name.
        tool: String,
        /// The timeout.
        ms: u64,
    },
    /// The server answered with a tool error (`isError`).
    #[error("`{tool}` failed: {message}")]
    Tool {
        /// The qualified tool name.
        tool: String,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached or broke the protocol.
    #[error("MCP server `{prefix}` ({url}): {reason}")]
    Server {
        /// The entry's prefix.
        prefix: String,
        /// Its URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

impl SourceCallError {
    /// `timeout` or `error`, as plugin calls are counted.
    pub fn outcome(&self) -> &'static str {
        match self {
            SourceCallError::Timeout { .. } => "timeout",
            _ => "error",
        }
    }
}

/// The MCP servers of a `hearth serve`, connected. Cheap to clone.
#[derive(Clone, Default)]
pub struct McpSources {
    sources: Arc<[Arc<Source>]>,
}

impl std::fmt::Debug for McpSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.sources.iter().map(|s| &s.prefix))
            .finish()
    }
}

impl McpSources {
    /// Checks `entries` and connects to each server, waiting up to ten
    /// seconds for its first tool list; a server not answering by then is
    /// retried in the background. Errors name the entry and what is wrong
    /// (a stdio command, an unset token variable, a bad URL or prefix).
    pub async fn connect(
        entries: Vec<SourceConfig>,
        http: reqwest::Client,
    ) -> Result<McpSources, SourceConfigError> {
        let mut seen = BTreeSet::new();
        let mut sources = Vec::with_capacity(entries.len());
        for entry in entries {
            let source = Source::new(entry, http.clone())?;
            if !seen.insert(source.prefix.clone()) {
                return Err(SourceConfigError {
                    prefix: source.prefix.clone(),
                    reason: "another [[mcp]] entry has the same prefix".into(),
                });
            }
            sources.push(Arc::new(source));
        }
        // One deadline for all: the servers are asked at the same time.
        let deadline = tokio::time::Instant::now() + FIRST_LIST_TIMEOUT;
        let firsts: Vec<_> = sources
            .iter()
            .map(|source| {
                let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
                tokio::spawn(Arc::clone(source).keep_listed(ready_tx));
                (source, ready_rx)
            })
            .collect();
        for (source, ready) in firsts {
            if !matches!(tokio::time::timeout_at(deadline, ready).await, Ok(Ok(()))) {
                tracing::warn!(
                    prefix = source.prefix,
                    url = source.url,
                    "MCP server not answering yet; serving without its tools until it does"
                );
            }
        }
        Ok(McpSources {
            sources: sources.into(),
        })
    }

    /// Whether there are no sources.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Every source's offered tools, by qualified name, sorted.
    pub fn tools(&self) -> Vec<ToolSpec> {
        let mut all: Vec<ToolSpec> = self
            .sources
            .iter()
            .flat_map(|s| {
                let listed = s.listed.read().expect("tool list");
                listed
                    .iter()
                    .map(|t| ToolSpec {
                        name: format!("{}.{}", s.prefix, t.name),
                        description: t.description.clone(),
                        parameters: t.schema.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Whether `name` is in a source's namespace (listed or not).
    pub fn owns(&self, name: &str) -> bool {
        self.source_of(name).is_some()
    }

    /// Each source's prefix and URL.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.sources
            .iter()
            .map(|s| (s.prefix.clone(), s.url.clone()))
            .collect()
    }

    fn source_of<'a>(&self, name: &'a str) -> Option<(&Arc<Source>, &'a str)> {
        let (prefix, tool) = name.split_once('.')?;
        let source = self.sources.iter().find(|s| s.prefix == prefix)?;
        Some((source, tool))
    }

    /// Calls the tool `name` (`prefix.tool`) with `arguments` (a JSON
    /// object); returns the result as JSON text for the model: the
    /// server's `structuredContent` if it sent one, else its text content.
    pub async fn call(&self, name: &str, arguments: &Value) -> Result<String, SourceCallError> {
        let (source, tool) = self
            .source_of(name)
            .ok_or_else(|| SourceCallError::Unknown(name.to_string()))?;
        source.call(name, tool, arguments).await
    }
}

/// One server: its configuration, the tools it offers now, and the peer to
/// call them on.
struct Source {
    prefix: String,
    url: String,
    token: Option<String>,
    allow: Option<BTreeSet<String>>,
    timeout: Duration,
    concurrency: usize,
    permits: Semaphore,
    http: reqwest::Client,
    /// The tools offered now (unqualified names, checked).
    listed: RwLock<Vec<ToolInfo>>,
    /// The connection calls go over, while there is one.
    peer: RwLock<Option<Peer<RoleClient>>>,
    /// Woken by a change notification from an older server.
    changed: Arc<Notify>,
}

impl Source {
    fn new(entry: SourceConfig, http: reqwest::Client) -> Result<Source, SourceConfigError> {
        let prefix = entry.prefix.clone();
        let bad = |reason: String| SourceConfigError {
            prefix: prefix.clone(),
            reason,
        };
        if entry.command.is_some() || entry.trust.is_some() {
            return Err(bad(
                "stdio MCP servers are not supported: they are native programs running with all of your rights, outside the sandbox hearth keeps tools in; give the entry a `url` of a streamable-HTTP server instead".into(),
            ));
        }
        if prefix.is_empty()
            || prefix.len() > 32
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(bad(
                "`prefix` must be 1-32 lowercase ASCII letters, digits, '_' or '-'".into(),
            ));
        }
        if crate::plugins::manifest::RESERVED_NAMESPACES.contains(&prefix.as_str()) {
            return Err(bad("`prefix` names the host itself; choose another".into()));
        }
        let url = entry.url.ok_or_else(|| {
            bad("`url` is missing (the server's streamable-HTTP endpoint)".into())
        })?;
        match reqwest::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(u) => {
                return Err(bad(format!(
                    "`url` {url} is not http(s) with a host (scheme `{}`)",
                    u.scheme()
                )));
            }
            Err(e) => return Err(bad(format!("`url` {url} does not parse: {e}"))),
        }
        let token = match &entry.bearer_token_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
                _ => {
                    return Err(bad(format!(
                        "`bearer-token-env` names {var}, which is not set (or empty) in hearth's environment"
                    )));
                }
            },
        };
        if entry.timeout_ms == 0 {
            return Err(bad("`timeout-ms` must be above zero".into()));
        }
        if entry.concurrency == 0 || entry.concurrency > 1024 {
            return Err(bad("`concurrency` must be 1 to 1024".into()));
        }
        Ok(Source {
            prefix,
            url,
            token,
            allow: entry.tools.map(|t| t.into_iter().collect()),
            timeout: Duration::from_millis(entry.timeout_ms),
            concurrency: entry.concurrency,
            permits: Semaphore::new(entry.concurrency),
            http,
            listed: RwLock::new(Vec::new()),
            peer: RwLock::new(None),
            changed: Arc::new(Notify::new()),
        })
    }

    /// Connects, lists, and keeps the list current for as long as the
    /// server runs; reconnects (backing off up to a minute) when the
    /// connection fails. `ready` fires after the first listing.
    async fn keep_listed(self: Arc<Source>, ready: tokio::sync::oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.session(&mut ready).await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(reason) => {
                    // Start-up goes on without this server's tools.
                    ready.take();
                    tracing::warn!(
                        prefix = self.prefix,
                        url = self.url,
                        %reason,
                        retry_in_ms = backoff.as_millis() as u64,
                        "MCP server unavailable"
                    );
                }
            }
            *self.peer.write().expect("peer") = None;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }

    /// One connection: lists the tools, then re-lists on every change
    /// notification and every [`REFRESH_EVERY`] until a listing fails.
    async fn session(
        &self,
        ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), String> {
        let mut config = StreamableHttpClientTransportConfig::with_uri(self.url.as_str())
            .max_concurrent_requests(self.concurrency + 1)
            .max_json_response_size(MAX_RESPONSE_BYTES)
            .max_sse_event_size(MAX_RESPONSE_BYTES);
        if let Some(token) = &self.token {
            config = config.auth_header(token.clone());
        }
        let transport = StreamableHttpClientTransport::with_client(self.http.clone(), config);
        let handler = Changes {
            changed: Arc::clone(&self.changed),
        };
        let connecting = handler.serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Auto {
                preferred_versions: vec![ProtocolVersion::LATEST],
                legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
            },
        );
        let service = tokio::time::timeout(FIRST_LIST_TIMEOUT, connecting)
            .await
            .map_err(|_| "no answer to the handshake".to_string())?
            .map_err(|e| format!("handshake: {e}"))?;
        let peer = service.peer().clone();
        self.relist(&peer).await?;
        *self.peer.write().expect("peer") = Some(peer.clone());
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        // 2026-07-28 servers send list changes on a subscription; older
        // ones on the session, where `Changes` hears them.
        let mut subscription = peer
            .listen(SubscriptionFilter::builder().tools_list_changed().build())
            .await
            .ok();
        loop {
            let notified = async {
                match subscription.as_mut() {
                    Some(s) => match s.next().await {
                        Ok(Some(_)) => {}
                        // The stream ended: fall back to the timer.
                        _ => std::future::pending::<()>().await,
                    },
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = notified => {}
                () = self.changed.notified() => {}
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
            if service.is_closed() {
                return Err("the connection closed".into());
            }
            self.relist(&peer).await?;
        }
    }

    /// Reads the whole tool list and keeps the allowed, well-formed tools.
    async fn relist(&self, peer: &Peer<RoleClient>) -> Result<(), String> {
        let tools =
            tokio::time::timeout(self.timeout.max(FIRST_LIST_TIMEOUT), peer.list_all_tools())
                .await
                .map_err(|_| "tools/list did not answer".to_string())?
                .map_err(|e| format!("tools/list: {e}"))?;
        let mut kept = Vec::new();
        for tool in tools {
            if self
                .allow
                .as_ref()
                .is_some_and(|a| !a.contains(tool.name.as_ref()))
            {
                continue;
            }
            if kept.len() == MAX_SOURCE_TOOLS {
                tracing::warn!(
                    prefix = self.prefix,
                    "MCP server offers more than {MAX_SOURCE_TOOLS} tools; the rest are ignored"
                );
                break;
            }
            let schema = Value::Object((*tool.input_schema).clone()).to_string();
            let description = tool.description.as_deref().unwrap_or_default();
            match ToolInfo::checked(&tool.name, description, &schema) {
                Ok(info) => kept.push(info),
                Err(e) => tracing::warn!(
                    prefix = self.prefix,
                    error = %e,
                    "MCP server tool skipped"
                ),
            }
        }
        if let Some(allow) = &self.allow {
            for name in allow {
                if !kept.iter().any(|t| &t.name == name) {
                    tracing::warn!(
                        prefix = self.prefix,
                        tool = name,
                        "a tool in `tools` is not offered by the MCP server"
                    );
                }
            }
        }
        let names: Vec<&str> = kept.iter().map(|t| t.name.as_str()).collect();
        tracing::info!(prefix = self.prefix, tools = ?names, "MCP server tools listed");
        *self.listed.write().expect("tool list") = kept;
        Ok(())
    }

    async fn call(
        &self,
        qualified: &str,
        tool: &str,
        arguments: &Value,
    ) -> Result<String, SourceCallError> {
        let info = self
            .listed
            .read()
            .expect("tool list")
            .iter()
            .find(|t| t.name == tool)
            .cloned()
            .ok_or_else(|| SourceCallError::Unknown(qualified.to_string()))?;
        info.check_arguments(&arguments.to_string())
            .map_err(SourceCallError::Arguments)?;
        let Value::Object(arguments) = arguments.clone() else {
            return Err(SourceCallError::Arguments(format!(
                "arguments of `{qualified}` must be a JSON object"
            )));
        };
        let server = |reason: String| SourceCallError::Server {
            prefix: self.prefix.clone(),
            url: self.url.clone(),
            reason,
        };
        let peer = self
            .peer
            .read()
            .expect("peer")
            .clone()
            .ok_or_else(|| server("not connected".into()))?;
        let timeout = || SourceCallError::Timeout {
            tool: qualified.to_string(),
            ms: self.timeout.as_millis() as u64,
        };
        // The wait for a permit counts against the call's time: a server
        // held up by others' calls is as late for this one.
        let call = async {
            let _permit = self.permits.acquire().await.expect("never closed");
            peer.call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(arguments))
                .await
        };
        let result = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| timeout())?
            .map_err(|e| server(e.to_string()))?;
        let text: String = result
            .content
            .iter()
            .map(|block| match block {
                ContentBlock::Text(t) => t.text.as_str(),
                _ => "[non-text content omitted]",
            })
            .collect::<Vec<_>>()
            .join("\n");
        if result.is_error == Some(true) {
            return Err(SourceCallError::Tool {
                tool: qualified.to_string(),
                message: crate::plugins::sanitize(&text, 2048),
            });
        }
        let out = match result.structured_content {
            Some(structured) => structured.to_string(),
            None => Value::String(text).to_string(),
        };
        if out.len() > MAX_RESULT_BYTES {
            return Err(server(format!(
                "the result of `{qualified}` is {} bytes; the limit is {MAX_RESULT_BYTES}",
                out.len()
            )));
        }
        Ok(out)
    }
}

/// The client side's handler: wakes the listing loop when an older server
/// says its tools changed.
struct Changes {
    changed: Arc<Notify>,
}

impl ClientHandler for Changes {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.client_info = Implementation::new("hearth", env!("CARGO_PKG_VERSION"));
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hearth's client: reqwest here is built without a TLS provider of
    /// its own.
    fn http() -> reqwest::Client {
        crate::http_client::Client::new(crate::http_client::Options {
            connect_timeout: Duration::from_secs(5),
            total_timeout: None,
            idle_timeout: None,
            follow_redirects: false,
        })
        .unwrap()
        .reqwest()
    }

    fn entry(toml_text: &str) -> SourceConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn refused(toml_text: &str) -> String {
        match Source::new(entry(toml_text), http()) {
            Ok(_) => panic!("accepted: {toml_text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn entries_that_cannot_be_used_are_refused_with_the_reason() {
        let cases = [
            (
                r#"prefix = "fs"
command = ["npx", "server-filesystem"]"#,
                "stdio MCP servers are not supported",
            ),
            (
                r#"prefix = "fs"
trust = "native""#,
                "stdio MCP servers are not supported",
            ),
            (r#"prefix = "docs""#, "`url` is missing"),
            (
                r#"prefix = "Docs"
url = "http://x/mcp""#,
                "`prefix` must be",
            ),
            (
                r#"prefix = "a.b"
url = "http://x/mcp""#,
                "`prefix` must be",
            ),
            (
                r#"prefix = "hearth"
url = "http://x/mcp""#,
                "names the host",
            ),
            (
                r#"prefix = "docs"
url = "file:///etc/passwd""#,
                "not http(s)",
            ),
            (
                r#"prefix = "docs"
url = "not a url""#,
                "does not parse",
            ),
            (
                r#"prefix = "docs"
url = "http://x/mcp"
bearer-token-env = "HEARTH_SOURCES_TEST_SURELY_UNSET""#,
                "HEARTH_SOURCES_TEST_SURELY_UNSET",
            ),
            (
                r#"prefix = "docs"
url = "http://x/mcp"
timeout-ms = 0"#,
                "`timeout-ms`",
            ),
            (
                r#"prefix = "docs"
url = "http://x/mcp"
concurrency = 0"#,
                "`concurrency`",
            ),
        ];
        for (text, expected) in cases {
            let message = refused(text);
            assert!(message.contains(expected), "{text}: {message}");
            assert!(message.starts_with("[[mcp]] entry `"), "{message}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = toml::from_str::<SourceConfig>("prefix = \"d\"\nurl = \"http://x\"\nheaders = 1")
            .unwrap_err();
        assert!(e.to_string().contains("headers"), "{e}");
    }

    #[tokio::test]
    async fn two_entries_with_one_prefix_are_refused() {
        let one = entry("prefix = \"docs\"\nurl = \"http://127.0.0.1:9/mcp\"");
        let e = McpSources::connect(vec![one.clone(), one], http())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("same prefix"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_waited_for_briefly_and_offers_nothing() {
        // Port 9 (discard) on loopback: nothing listens, the connection is
        // refused at once, start-up goes on without its tools.
        let started = std::time::Instant::now();
        let sources = McpSources::connect(
            vec![entry("prefix = \"gone\"\nurl = \"http://127.0.0.1:9/mcp\"")],
            http(),
        )
        .await
        .unwrap();
        assert!(
            started.elapsed() < FIRST_LIST_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        assert!(sources.tools().is_empty());
        assert!(sources.owns("gone.anything"));
        assert!(!sources.owns("calc.eval"));
        let e = sources
            .call("gone.anything", &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("gone.anything"), "{e}");
    }
}
