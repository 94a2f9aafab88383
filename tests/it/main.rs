//! hearth's integration tests: one binary, one module per area.
//!
//! - `escapes`: regressions for the hostile-plugin and hostile-registry
//!   escapes found by an outside corpus, one section per class.
//! - `sandbox`: hostile plugins are contained (time, memory, stack, output,
//!   files, network, environment, stdio, key-value rollback, imports).
//! - `loading`: what the runtime accepts and refuses at load time, and the
//!   compiled-component cache.
//! - `first_party`: the bundled plugins through the real host.
//! - `contract`: what the host passes plugins matches the WIT (the
//!   `activated` event, `call-context.caller`).
//! - `golden`: exact errors for broken `plugin.toml` and `registry.toml` files.
//! - `install`: installing over HTTP from a loopback index.
//! - `registry`: `registry.toml` matches the reproducible build.
//! - `kv_quota`: the key-value quota holds under concurrent calls (class 9).
//! - `terminal`: nothing a plugin controls reaches a terminal raw (class 10).

mod contract;
mod escapes;
mod first_party;
mod golden;
mod install;
mod kv_quota;
mod loading;
mod registry;
mod sandbox;
mod spares;
mod terminal;

/// Tests that measure this process's resident memory run one at a time.
pub static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The default model, pulled once into the build folder through pip.
pub fn default_model() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hearth-model-home");
    hearth::engine::provision::ensure_default(&hearth::home::Home { root })
        .expect("pull the default model")
}
