//! [`McpServer`]: the rmcp [`ServerHandler`] over a plugin runtime, shared
//! by stdio and streamable HTTP. One instance serves one connection (stdio),
//! one session (HTTP, revisions before 2026-07-28) or one request (HTTP,
//! 2026-07-28, which has no sessions).

use super::changes::ToolListChanges;
use super::tools;
use crate::plugins::{CallScope, ErrorKind, Runtime};
use rmcp::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorData, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, SubscriptionFilter, Tool,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer, SubscriptionContext};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

/// Told of every plugin call an MCP client made, with the plugin's
/// namespace and how it ended (`ok`, `error`, `timeout`, `trap`, as the
/// server's `/metrics` counts them). Calls to unknown tools are not told.
pub type CallObserver = Arc<dyn Fn(&str, &'static str) + Send + Sync>;

/// What MCP clients are told hearth is, whatever the transport.
const INSTRUCTIONS: &str = "The tools of the plugins installed in hearth, named namespace.tool. \
Each call runs in hearth's WebAssembly sandbox with the plugin's own permissions and limits; \
arguments are checked against the tool's JSON Schema first. A tool error or a refused argument \
comes back as a result with isError set, so the call can be corrected and made again.";

/// The MCP server over a plugin [`Runtime`]: `tools/list` is every tool of
/// the active plugins, `tools/call` goes through
/// [`Runtime::invoke_qualified`], and the client is told when the list
/// changes (see the [module docs](super)).
pub struct McpServer {
    runtime: Runtime,
    observer: Option<CallObserver>,
    /// Held for as long as this handler serves; its receivers (the task
    /// that notifies a session of changes) see it dropped when the
    /// connection or session ends.
    alive: watch::Sender<()>,
    /// Whether this connection's change notifications are already being
    /// sent.
    notifying: AtomicBool,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer").finish_non_exhaustive()
    }
}

impl McpServer {
    /// A handler for one connection over `runtime`'s active plugins.
    pub fn new(runtime: Runtime) -> McpServer {
        McpServer {
            runtime,
            observer: None,
            alive: watch::Sender::new(()),
            notifying: AtomicBool::new(false),
        }
    }

    /// Whether an active plugin offers the tool `name` (`namespace.tool`).
    pub(super) fn offers(&self, name: &str) -> bool {
        // Without building the definitions `tools::find` makes: this is on
        // every call's path.
        let Some((namespace, tool)) = name.split_once('.') else {
            return false;
        };
        self.runtime
            .active(namespace)
            .is_some_and(|p| p.tools.iter().any(|t| t.name == tool))
    }

    /// Tells `observer` of every plugin call (for metrics).
    pub fn with_observer(mut self, observer: Option<CallObserver>) -> McpServer {
        self.observer = observer;
        self
    }

    /// Runs `name` with `arguments` (a JSON object) unless `cancelled`
    /// resolves first, in which case the call is dropped: the plugin's
    /// instance stops at once and its key-value writes are not committed.
    pub(super) async fn call(
        &self,
        name: &str,
        arguments: &str,
        cancelled: impl std::future::Future<Output = ()>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        let Some((namespace, _)) = name.split_once('.') else {
            return Err(tools::unknown_tool(name, None));
        };
        let scope = CallScope::new(format!("mcp-{:08x}", rand::random::<u32>()));
        let result = tokio::select! {
            result = self.runtime.invoke_qualified(name, arguments, scope) => result,
            () = cancelled => {
                tracing::info!(tool = name, "MCP call cancelled by the client");
                return Err(ErrorData::internal_error(
                    format!("{name}: the call was cancelled"),
                    None,
                ));
            }
        };
        if let Some(observer) = &self.observer {
            match &result {
                Ok(_) => observer(namespace, "ok"),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => observer(namespace, crate::assistant::failure_outcome(e)),
            }
        }
        if let Err(e) = &result {
            // info, as for the API's calls: the plugin's failure, reported
            // for its author; the server is fine.
            tracing::info!(tool = name, "MCP tool call failed: {e}");
        }
        tools::outcome(name, result)
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(
            Implementation::new("hearth", env!("CARGO_PKG_VERSION"))
                .with_title("hearth")
                .with_description("Sandboxed WebAssembly plugin tools of a local AI assistant"),
        )
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        // One page: at most 64 tools a plugin, and the list is built from
        // memory. The cache hints are left to rmcp's defaults for
        // 2026-07-28 clients (fresh for 0 ms, private): the list follows
        // installs and a client should not keep a stale one.
        Ok(ListToolsResult::with_all_items(tools::list(&self.runtime)))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::find(&self.runtime, name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // No arguments is an empty object, which the tool's schema judges.
        let arguments =
            serde_json::Value::Object(request.arguments.unwrap_or_default()).to_string();
        // rmcp runs a handler to its end whatever happens to the request;
        // its token is cancelled by `notifications/cancelled` and, on
        // streamable HTTP at 2026-07-28, by the client disconnecting.
        let cancelled = context.ct.clone();
        self.call(&request.name, &arguments, cancelled.cancelled())
            .await
            .map(Into::into)
    }

    fn accepted_subscription_filter(
        &self,
        _requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // Tools are all there is to follow; rmcp intersects this with what
        // the client asked for and what `get_info` advertises.
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    /// `subscriptions/listen` (2026-07-28): notifies the stream whenever
    /// the tool list changes, until the client cancels it or goes away.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        if context.accepted().tools_list_changed != Some(true) {
            context.cancelled().await;
            return Ok(());
        }
        let mut changes = ToolListChanges::new(self.runtime.clone());
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                () = changes.changed() => {
                    if let Err(e) = context.sink().notify_tool_list_changed().await {
                        tracing::debug!("MCP subscription ended: {e}");
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Revisions before 2026-07-28 end their handshake with
    /// `notifications/initialized`; from then on the session is told of
    /// changes with `notifications/tools/list_changed` until it ends.
    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        if self.notifying.swap(true, Ordering::AcqRel) {
            return;
        }
        let peer = context.peer;
        let mut alive = self.alive.subscribe();
        let mut changes = ToolListChanges::new(self.runtime.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // Never sent to: this resolves (with an error) when the
                    // handler, and so the session, is gone.
                    _ = alive.changed() => return,
                    () = changes.changed() => {
                        if let Err(e) = peer.notify_tool_list_changed().await {
                            tracing::debug!("MCP session closed: {e}");
                            return;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> (tempfile::TempDir, Runtime) {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(crate::plugins::RuntimeOptions::in_dir(dir.path())).unwrap();
        (dir, runtime)
    }

    #[tokio::test]
    async fn a_name_without_a_namespace_is_an_unknown_tool() {
        let (_dir, runtime) = runtime();
        let server = McpServer::new(runtime);
        let e = server
            .call("eval", "{}", std::future::pending())
            .await
            .unwrap_err();
        assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS);
        let e = server
            .call("nope.eval", "{}", std::future::pending())
            .await
            .unwrap_err();
        assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS);
        assert!(
            e.message.contains("no active plugin `nope`"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn a_cancelled_call_is_dropped_at_once() {
        let (_dir, runtime, calc) = super::super::test_support::with_calc().await;
        runtime.activate(calc);
        let server = McpServer::new(runtime);
        // Runs for the whole of calc's 1 s time limit when left alone.
        let slow = r#"{"expression":"((2/3)^4096+(5/7)^4096)^4096"}"#;
        let started = std::time::Instant::now();
        let e = server
            .call(
                "calc.eval",
                slow,
                tokio::time::sleep(std::time::Duration::from_millis(100)),
            )
            .await
            .unwrap_err();
        assert!(e.message.contains("cancelled"), "{}", e.message);
        assert!(
            started.elapsed() < std::time::Duration::from_millis(800),
            "{:?}",
            started.elapsed()
        );
        let limited = server
            .call("calc.eval", slow, std::future::pending())
            .await
            .unwrap();
        assert_eq!(limited.is_error, Some(true));
    }

    #[test]
    fn it_advertises_tools_that_change() {
        let (_dir, runtime) = runtime();
        let info = McpServer::new(runtime).get_info();
        let tools = info.capabilities.tools.expect("tools capability");
        assert_eq!(tools.list_changed, Some(true));
        assert_eq!(info.server_info.name, "hearth");
    }
}
