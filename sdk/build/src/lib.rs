//! Builds hearth guest components from source inside a build script.
//!
//! [`build`] runs a nested `cargo build --target wasm32-wasip2 --profile guest`
//! for workspace packages, in its own target directory (so it never waits on
//! the outer build's lock) and with paths remapped so that the same sources
//! give the same bytes on any machine. Build scripts call it and embed or point
//! at the resulting [`Artifact`]s; nothing built is ever committed.

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target guests are built for.
pub const TARGET: &str = "wasm32-wasip2";
/// The cargo profile guests are built with (see the workspace `Cargo.toml`).
pub const PROFILE: &str = "guest";

/// One built component.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The cargo package name.
    pub package: String,
    /// The directory of the package (where its `plugin.toml` lives).
    pub dir: PathBuf,
    /// The built `.wasm` component.
    pub wasm: PathBuf,
}

/// Builds `packages` (paths relative to the workspace root) as components.
///
/// Call from a build script; prints `cargo:rerun-if-changed` lines for the
/// sources involved. Panics with the nested cargo's output on failure, which
/// is what a build script should do.
pub fn build(workspace_root: &Path, packages: &[&str]) -> Vec<Artifact> {
    for dir in [
        "wit",
        "sdk/src",
        "sdk/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace_root.join(dir).display()
        );
    }
    let target_dir = workspace_root.join("target").join("guests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root)
        .arg("build")
        .arg("--quiet")
        .args(["--target", TARGET, "--profile", PROFILE])
        .arg("--target-dir")
        .arg(&target_dir);
    let mut artifacts = Vec::new();
    for package in packages {
        let dir = workspace_root.join(package);
        println!("cargo:rerun-if-changed={}", dir.display());
        let name = package_name(&dir.join("Cargo.toml"));
        cmd.args(["-p", &name]);
        let wasm = target_dir
            .join(TARGET)
            .join(PROFILE)
            .join(format!("{}.wasm", name.replace('-', "_")));
        artifacts.push(Artifact {
            package: name,
            dir,
            wasm,
        });
    }
    // The outer build's flags and wrappers (clippy, coverage, sanitizers) are
    // for the host target; they must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
    ] {
        cmd.env_remove(var);
    }
    // Reproducible bytes: no absolute paths of this checkout or of the cargo
    // home end up in panic messages or debug info.
    let mut flags = vec![format!(
        "--remap-path-prefix={}=/hearth",
        workspace_root.display()
    )];
    if let Some(home) = cargo_home() {
        flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run cargo to build guests: {e}"));
    if !output.status.success() {
        panic!(
            "building guest components {packages:?} for {TARGET} failed \
             (is the target installed? `rustup target add {TARGET}`):\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for artifact in &artifacts {
        assert!(
            artifact.wasm.exists(),
            "cargo succeeded but {} is missing",
            artifact.wasm.display()
        );
    }
    artifacts
}

fn cargo_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(home));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo"))
}

/// Reads `name = "…"` from the `[package]` table without a TOML parser, so
/// that build scripts stay dependency-free.
fn package_name(manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest)
        .unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display()));
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some(rest) = line.strip_prefix("name")
            && let Some(value) = rest.trim_start().strip_prefix('=')
        {
            return value.trim().trim_matches('"').to_string();
        }
    }
    panic!("{} has no [package] name", manifest.display())
}
