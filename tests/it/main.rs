//! hearth's library-level integration tests: one binary, one module per
//! area. Everything here uses the `hearth` library in this process (a
//! runtime, an engine, a server on a loopback port); tests that run the
//! `hearth` binary live in `host/tests/`, the only package that gets
//! `CARGO_BIN_EXE_hearth`. `tests/README.md` says how to run a part.
//!
//! Plugins:
//! - `escapes`: regressions for the hostile-plugin and hostile-registry
//!   escapes found by an outside corpus, one section per class.
//! - `sandbox`: hostile plugins are contained (time, memory, stack, output,
//!   files, network, environment, stdio, key-value rollback, imports).
//! - `loading`: what the runtime accepts and refuses at load time, and the
//!   compiled-component cache.
//! - `spares`: spare instances are as fresh as ones made on the call path.
//! - `first_party`: the bundled plugins through the real host.
//! - `contract`: what the host passes plugins matches the WIT (the
//!   `activated` event, `call-context.caller`).
//! - `golden`: exact errors for broken `plugin.toml` and `registry.toml` files.
//! - `install`: installing over HTTP from a loopback index.
//! - `registry`: `registry.toml` matches the reproducible build.
//! - `kv_quota`: the key-value quota holds under concurrent calls (class 9).
//! - `terminal`: nothing a plugin controls reaches a terminal raw (class 10).
//! - `fuzz`: bounded fuzzing of manifests, registry indexes and component
//!   bytes, everything read before a sandbox is in place.
//!
//! The model (the default one, pulled once, see [`hearth_tests::default_model`]):
//! - `engine`: tokenizer, template, sampling, batching, limits, constrained
//!   output.
//! - `architectures`: architectures beyond llama, on tiny generated files.
//! - `scheduler`: priority order, admission, deadlines, shutdown.
//! - `server`: the OpenAI-compatible HTTP service over raw sockets.

mod architectures;
mod contract;
mod engine;
mod escapes;
mod first_party;
mod fuzz;
mod golden;
mod install;
mod kv_quota;
mod loading;
mod registry;
mod sandbox;
mod scheduler;
mod server;
mod spares;
mod terminal;

/// This process's resident memory, as tests see it. Tests that measure it,
/// or that hold tens of MiB while others measure, take it exclusively
/// (`MEMORY.write().await`), one at a time; tests that load or run the
/// model (a 145 MB file) take it shared (`MEMORY.blocking_read()`), so
/// they run beside each other but never inside a measurement.
pub static MEMORY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
