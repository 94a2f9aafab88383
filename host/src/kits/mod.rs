//! Plugin kits: what `hearth plugin new`, `build` and `dev` know about each
//! plugin language.
//!
//! A plugin folder holds `plugin.toml`, the sources of one language and,
//! once built, `plugin.wasm`. The language is told by the files present
//! ([`Lang::detect`]). Before every build, [`write_wit`] writes the folder's
//! `wit/`: the released contract as a dependency (and, for a plugin granted
//! outgoing HTTP, the WASI packages `wasi:http` needs) and a world generated
//! from `plugin.toml`'s permissions, which imports exactly what the plugin
//! was granted — so no language's toolchain ever builds in an import the
//! host would refuse, and no author edits WIT by hand. A kit that cannot
//! build in something granted says so at build time
//! ([`KitError::Unsupported`]). Each language module
//! scaffolds its files ([`Kit::files`]) and builds with the language's own
//! toolchain ([`Kit::build`]); a missing toolchain is named with the one
//! command that installs it.

pub mod c;
pub mod go;
pub mod js;
pub mod native;
pub mod python;
pub mod rust;
mod world;
pub mod zig;

pub use world::{
    CONTRACT_VERSION, CONTRACT_WIT, WASI_VERSION, WASI_WIT, WORLD, grants_http, world_wit,
    write_wit,
};

use crate::plugins::manifest::Manifest;
use std::path::{Path, PathBuf};

/// A plugin language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with `wit-bindgen` (cargo, target wasm32-wasip2).
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-qjs (QuickJS).
    Js,
    /// C, with the wit-bindgen C bindings and `zig cc`.
    C,
    /// Zig, on the C bindings.
    Zig,
    /// Go (experimental), with `//go:wasmexport`.
    Go,
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
            Lang::Zig => "zig",
            Lang::Go => "go",
        })
    }
}

/// A kit failed: what and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A toolchain program is not installed.
    #[error(
        "{program} is not installed (needed to build {lang} plugins); install it with: {install}"
    )]
    Missing {
        /// The language.
        lang: Lang,
        /// The program looked for.
        program: String,
        /// The one command that installs it.
        install: String,
    },
    /// The folder does not hold a plugin of a known language.
    #[error("{0}")]
    Folder(String),
    /// The toolchain ran and failed.
    #[error("building the {lang} plugin failed: `{command}` {status}{}", if output.is_empty() { String::new() } else { format!("\n{output}") })]
    Build {
        /// The language.
        lang: Lang,
        /// The command that failed.
        command: String,
        /// How it ended.
        status: String,
        /// The end of its output.
        output: String,
    },
    /// `plugin.toml` grants something this language's kit cannot build in
    /// yet.
    #[error("plugin.toml grants {grant}, which {lang} plugins cannot use yet: {why}")]
    Unsupported {
        /// The language.
        lang: Lang,
        /// The grant, as plugin.toml spells it.
        grant: String,
        /// Why, and what to do instead.
        why: String,
    },
    /// Reading or writing the folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What a language provides.
pub trait Kit {
    /// The files `hearth plugin new` writes (relative path, contents), with
    /// `plugin.toml` among them; `name` is a validated identifier.
    fn files(name: &str) -> Vec<(String, String)>;

    /// Builds `dir` (whose `wit/` was just written) into `dir/plugin.wasm`.
    fn build(dir: &Path, manifest: &Manifest) -> Result<(), KitError>;
}

impl Lang {
    /// The language of the plugin in `dir`, from the files present:
    /// `Cargo.toml` (Rust), `go.mod` (Go), `build.zig` or `src/main.zig`
    /// (Zig), `package.json` or `app.js` (JavaScript), `app.py` (Python),
    /// any `.c` file (C).
    pub fn detect(dir: &Path) -> Result<Lang, KitError> {
        let has = |f: &str| dir.join(f).exists();
        let lang = if has("Cargo.toml") {
            Lang::Rust
        } else if has("go.mod") {
            Lang::Go
        } else if has("build.zig") || has("src/main.zig") {
            Lang::Zig
        } else if has("package.json") || has("app.js") {
            Lang::Js
        } else if has("app.py") {
            Lang::Python
        } else if std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "c"))
            })
            .unwrap_or(false)
        {
            Lang::C
        } else {
            return Err(KitError::Folder(format!(
                "{} holds no plugin sources hearth knows (Cargo.toml, go.mod, build.zig, app.js, app.py or a .c file)",
                dir.display()
            )));
        };
        Ok(lang)
    }

    /// The files a new plugin of this language starts with.
    pub fn files(self, name: &str) -> Vec<(String, String)> {
        match self {
            Lang::Rust => rust::Rust::files(name),
            Lang::Python => python::Python::files(name),
            Lang::Js => js::Js::files(name),
            Lang::C => c::C::files(name),
            Lang::Zig => zig::Zig::files(name),
            Lang::Go => go::Go::files(name),
        }
    }

    /// Builds the plugin in `dir` into `dir/plugin.wasm`.
    pub fn build(self, dir: &Path, manifest: &Manifest) -> Result<(), KitError> {
        write_wit(dir, manifest)?;
        match self {
            Lang::Rust => rust::Rust::build(dir, manifest),
            Lang::Python => python::Python::build(dir, manifest),
            Lang::Js => js::Js::build(dir, manifest),
            Lang::C => c::C::build(dir, manifest),
            Lang::Zig => zig::Zig::build(dir, manifest),
            Lang::Go => go::Go::build(dir, manifest),
        }
    }
}

/// Writes a new plugin of `lang` named `name` into `dir` (which must not
/// exist yet, or be empty).
pub fn scaffold(lang: Lang, name: &str, dir: &Path) -> Result<Vec<PathBuf>, KitError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KitError::Io { path, source }
    };
    if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(KitError::Folder(format!(
            "{} already exists and is not empty",
            dir.display()
        )));
    }
    let mut written = Vec::new();
    for (rel, text) in lang.files(name) {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// The `plugin.toml` every kit starts from: one tool, no permissions.
pub fn manifest_toml(name: &str, extra_permissions: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"{name}\"\nversion = \"0.1.0\"\ncontract = \"{CONTRACT_VERSION}\"\n\
         priority = 0\ndescription = \"{name}: a hearth plugin\"\n\n[permissions]\n{extra_permissions}\
         memory-mb = 64\ntime-limit-ms = 2000\n"
    )
}

/// Finds `program` on `PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Runs a toolchain command in `dir`; a failure carries the end of its
/// output.
pub fn run(lang: Lang, dir: &Path, command: &mut std::process::Command) -> Result<(), KitError> {
    let shown = format!("{command:?}");
    let out = command
        .current_dir(dir)
        .output()
        .map_err(|source| KitError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    Err(KitError::Build {
        lang,
        command: shown,
        status: out.status.to_string(),
        output: text[start..].trim().to_string(),
    })
}

/// The text of the scaffolded file `name`, for the kits' tests.
#[cfg(test)]
pub(crate) fn scaffolded<'a>(files: &'a [(String, String)], name: &str) -> &'a str {
    files
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, text)| text.as_str())
        .unwrap_or_else(|| panic!("{name} is not scaffolded"))
}
