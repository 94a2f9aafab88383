//! hearth: a local AI assistant host whose plugins run as sandboxed
//! WebAssembly components.
//!
//! - [`plugins`]: the component runtime — one wasmtime engine, the versioned
//!   `hearth:plugin` contract, manifests, capabilities, limits, the verified
//!   compile cache and the key-value store.
//! - [`engine`]: the model: provisioning, GGUF loading, tokenizer and chat
//!   template from the file, sampling, constrained output, generation on its
//!   own thread.
//! - [`assistant`]: the conversation loop every front end uses: hooks, the
//!   model through the scheduler, tool calls into plugins, the step limit.
//! - [`server`]: the OpenAI-compatible HTTP API and health checks.
//! - [`mcp`]: the plugins' tools as an MCP server, on stdio (`hearth mcp`)
//!   and at `/mcp` on the HTTP server.
//! - [`scheduler`]: the bounded, prioritised queue in front of the engine:
//!   admission, deadlines, cancellation.
//! - [`bundled`]: the first-party plugins, built from `plugins/` at compile
//!   time and embedded in the binary.
//! - [`manager`]: the plugin set: resolver (petgraph), conflicts, activation order.
//! - [`home`]: where hearth keeps its data.
//! - [`cli`]: the `hearth` command line.

#![deny(missing_docs)]

pub mod assistant;
pub mod bundled;
pub mod cli;
pub mod engine;
pub mod home;
pub mod http_client;
pub mod kits;
pub mod manager;
pub mod mcp;
pub mod plugins;
pub mod scheduler;
pub mod server;
