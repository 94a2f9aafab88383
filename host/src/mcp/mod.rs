//! hearth as an MCP (Model Context Protocol) server, with the official Rust
//! SDK, rmcp: `hearth mcp` on stdio, and `/mcp` on `hearth serve` over
//! streamable HTTP. And the other way round: remote MCP servers as tool
//! sources for hearth's model ([`sources`], the `[[mcp]]` entries of
//! `hearth serve --config`).
//!
//! What is exposed: the tools of the active plugins, nothing else (no
//! resources, prompts or model). A client sees what `GET /v1/plugins`
//! lists, and its calls run exactly as the model's and the API's do.
//!
//! - **Names.** A tool is `namespace.tool` (`calc.eval`), as everywhere in
//!   hearth: the 2026-07-28 tool-name rules allow ASCII letters, digits,
//!   `_`, `-` and `.` up to 128 characters, which every plugin tool name
//!   fits (see [`mcp_name`]).
//! - **`tools/list`**: each tool with its description and its JSON Schema
//!   as `inputSchema`, in a fixed order (namespace, then the plugin's own).
//! - **`tools/call`** goes through [`Runtime::invoke_qualified`]: the
//!   arguments are checked against the schema, then the call runs in the
//!   sandbox under the plugin's permissions and limits, and a plugin's
//!   `llm` calls reach the model through the runtime's backend (the
//!   scheduler) like any other. The result is `structuredContent` plus the
//!   same JSON as text.
//! - **Errors** (see [`tools::outcome`]): a tool error, refused arguments
//!   (schema violations included) and a sandbox limit hit by the call
//!   (time, memory, stack, output size, trap) are tool results with
//!   `isError: true` and the message, which the model can act on; an
//!   unknown tool is the JSON-RPC error `-32602` and a failure of the host
//!   itself `-32603`.
//! - **Changes.** The list follows install, update, enable, disable and
//!   remove (a running server reloads when `installed.toml` changes). When
//!   the list a client would get is different, 2026-07-28 clients with a
//!   `subscriptions/listen` stream asking for `toolsListChanged` get
//!   `notifications/tools/list_changed` on it, and older clients (whose
//!   handshake ends with `notifications/initialized`) get it on their
//!   session; the runtime's [`Runtime::watch_active`] says when to look.
//! - **Revisions.** Every revision rmcp knows is accepted: 2026-07-28
//!   (`server/discover`, no handshake, no sessions) and the older ones with
//!   their `initialize` handshake.
//!
//! - **Speed.** A plain 2026-07-28 `tools/call` over HTTP is answered in
//!   the request's own task with rmcp's types (`fast`), skipping the
//!   service rmcp builds per request; anything else is rmcp's. A test holds
//!   the two answers byte-equal.
//!
//! Modules: `tools` (names, definitions, the error rule), `handler` (the
//! [`McpServer`] handler), `changes` (when the list changed), `stdio`
//! ([`serve_stdio`]), `http` ([`McpHttp`]), `fast` (the common call
//! answered in place), `hosts` ([`AllowedHosts`], the DNS-rebinding guard
//! of `/mcp`), `error` ([`McpError`]), `sources` ([`McpSources`], remote
//! servers' tools for the model).
//!
//! [`Runtime::invoke_qualified`]: crate::plugins::Runtime::invoke_qualified
//! [`Runtime::watch_active`]: crate::plugins::Runtime::watch_active

mod changes;
mod error;
mod fast;
mod handler;
mod hosts;
mod http;
pub mod sources;
mod stdio;
pub mod tools;

pub use error::McpError;
pub use handler::{CallObserver, McpServer};
pub use hosts::{AllowedHosts, HostRejected};
pub use http::{McpHttp, McpHttpOptions};
pub use sources::{McpSources, SourceCallError, SourceConfig, SourceConfigError};
pub use stdio::serve_stdio;
pub use tools::mcp_name;

#[cfg(test)]
mod test_support {
    use crate::plugins::{LoadedPlugin, Manifest, Runtime, RuntimeOptions};
    use std::sync::Arc;

    /// A runtime with the bundled `calc` loaded (not activated).
    pub(super) async fn with_calc() -> (tempfile::TempDir, Runtime, Arc<LoadedPlugin>) {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(RuntimeOptions::in_dir(dir.path())).unwrap();
        let calc = crate::bundled::BUNDLED
            .iter()
            .find(|b| b.source == "plugins/calc")
            .unwrap();
        let manifest = Manifest::parse(calc.manifest, "calc/plugin.toml").unwrap();
        let plugin = runtime.load(manifest, calc.component, None).await.unwrap();
        (dir, runtime, plugin)
    }
}
