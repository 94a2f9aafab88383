//! The sandboxed plugin runtime.
//!
//! [`Runtime`] owns the one wasmtime [`Engine`](wasmtime::Engine) of the
//! process, the [`Linker`](wasmtime::component::Linker) with every host
//! capability, the compiled-component cache, the key-value store and the set
//! of active plugins. Its lifecycle follows the contract in three steps:
//!
//! 1. **link once** ([`Runtime::new`]): engine configuration (Cranelift,
//!    pooling allocator, epoch interruption, unused proposals off), WASI with
//!    nothing behind it, `wasi:http` behind [`http::HttpPolicy`], and the
//!    `hearth:plugin` imports;
//! 2. **validate per plugin** ([`Runtime::load`]): size cap, structural
//!    limits ([`compile::precheck`]), import check against the manifest's
//!    grants and the contract version from the exported `guest` interface
//!    (both read from the bytes), compile in a capped child process or
//!    verified-cache load, export check, `describe` and `validate-config`
//!    under the load-time limit (answers bounded and cached) — no side
//!    effects;
//! 3. **prepare per call** ([`Runtime::invoke`]): a fresh `Store` and
//!    instance from the pre-instantiated component, with memory, table,
//!    stack, epoch, wall-clock, host-copy, handle, output and log limits, and
//!    a key-value buffer committed only if the call returns normally.
//!
//! One file per responsibility: `runtime` (the [`Runtime`], its options,
//! the engine configuration, the epoch ticker and the linker: step 1),
//! `load` (everything [`Runtime::load`] does: step 2), `call` (running an
//! export on a fresh or spare instance, tool calls and their checks: step
//! 3), `plugin` ([`LoadedPlugin`], its tools and their schema checks),
//! `active` (the active set, the `activated` event and event dispatch) and
//! `state` (a call's store state and the host side of the imports).

mod active;
pub mod cache;
mod call;
pub mod compile;
pub mod contract;
mod error;
pub mod http;
pub mod kv;
mod kv_redis;
mod load;
pub mod manifest;
mod plugin;
mod runtime;
mod state;

pub use active::{Dispatch, MAX_HOOK_GROWTH, activated_payload, event_from_name, event_name};
pub use call::{MAX_TOOL_ERROR_BYTES, WarmInstance};
pub use contract::latest::hearth::plugin::llm::{
    Completion, Error as LlmError, Request as LlmRequest,
};
pub use contract::latest::hearth::plugin::types::{EventKind, ToolError};
pub use error::{ErrorKind, InvokeError, LoadError, describe_tool_error};
pub use load::{CacheOutcome, MAX_TOOLS};
pub use manifest::{Manifest, ManifestError};
pub use plugin::{
    LoadedPlugin, MAX_SCHEMA_BYTES, MAX_SCHEMA_COST, MAX_SCHEMA_DEPTH, MAX_SCHEMA_REF_CHAIN,
    ToolInfo,
};
pub use runtime::{LlmBackend, Runtime, RuntimeError, RuntimeOptions, default_memory_budget};
pub use state::{CallScope, sanitize};

use std::time::Duration;

/// How often the epoch advances; the granularity of time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// A plugin whose instances take at least this long to create gets a
/// spare: a fresh instance made in the background after each call, so the
/// next call skips instantiation (a componentize-py component wires ~2,000
/// imports across 14 core modules, about 1.5 ms, on every instance).
pub const SPARE_AFTER: Duration = Duration::from_micros(400);
/// Instantiations on the call path measured before deciding on spares:
/// the quickest of them counts, so one slow start on a busy machine does
/// not give a quick plugin a spare (and the memory one holds).
pub const SPARE_SAMPLES: u32 = 3;
/// Elements a table may grow to.
const MAX_TABLE_ELEMENTS: usize = 20_000;
/// Time limit of the load-time calls (`describe`, `validate-config`),
/// whatever the manifest asks for calls: loading must stay quick for every
/// command, and a slow answer only delays its own plugin.
pub const LOAD_CALL_LIMIT: Duration = Duration::from_secs(2);
