//! The C kit: hearth generates the C bindings of the plugin's world
//! (`bindings/plugin.h`, `plugin.c`, `plugin_component_type.o`), compiles
//! the folder's `.c` files with them using `zig cc` for `wasm32-wasi`, and
//! makes the component itself (see [`super::native`]).

use super::native::{self, BINDINGS_DIR, DEFAULT_STACK, ZIG_PACKAGE, Zig};
use super::{Kit, KitError, Lang, run};
use crate::plugins::manifest::Manifest;
use std::path::{Path, PathBuf};

/// C plugins.
#[derive(Debug)]
pub struct C;

const PLUGIN_C: &str = include_str!("templates/c/plugin.c");
const JSON_H: &str = include_str!("templates/c/json.h");

/// What hearth generates in a C plugin folder.
const GITIGNORE: &str = "/wit/\n/bindings/\n/build/\n/plugin.wasm\n";

impl Kit for C {
    fn files(name: &str) -> Vec<(String, String)> {
        vec![
            ("plugin.toml".into(), super::manifest_toml(name, "")),
            ("plugin.c".into(), PLUGIN_C.replace("{{name}}", name)),
            ("json.h".into(), JSON_H.into()),
            (
                "README.md".into(),
                format!(
                    "# {name}\n\nA hearth plugin in C.\n\n```sh\npip install {ZIG_PACKAGE}   # or any zig on PATH\n\
                     hearth plugin build .\nhearth plugin dev . --yes\n\
                     hearth plugin invoke {name}.greet --args '{{\"name\":\"Ada\"}}'\n```\n\n\
                     `hearth plugin build` writes `wit/` from `plugin.toml`, generates the C bindings of \
                     that world into `bindings/` (`plugin.h`), compiles every `.c` file here and in `src/` \
                     with `zig cc --target=wasm32-wasi` and a {stack} KiB stack, and makes \
                     `plugin.wasm`. Grant a permission in `plugin.toml` and its functions appear in \
                     `bindings/plugin.h`. Extra compiler and linker flags come from `CFLAGS` and \
                     `LDFLAGS` (e.g. `LDFLAGS=-Wl,-z,stack-size=1048576` for a 1 MiB stack).\n",
                    stack = DEFAULT_STACK / 1024
                ),
            ),
            (".gitignore".into(), GITIGNORE.into()),
        ]
    }

    fn build(dir: &Path, manifest: &Manifest) -> Result<(), KitError> {
        let zig = Zig::find(Lang::C)?;
        let bindings = native::c_bindings(dir, Lang::C)?;
        let sources = c_sources(dir)?;
        native::create_build_dir(dir)?;
        let core = native::core_module();
        let mut command =
            zig.command(["cc", "--target=wasm32-wasi", "-mexec-model=reactor", "-Os"]);
        command
            .arg(format!("-I{BINDINGS_DIR}"))
            .arg("-o")
            .arg(&core)
            .args(&sources)
            .arg(&bindings.source)
            .arg(&bindings.object)
            .arg(format!("-Wl,-z,stack-size={DEFAULT_STACK}"))
            // The author's own flags come last, so that they win (a larger
            // `-Wl,-z,stack-size=`, `-O2`, `-D…`).
            .args(native::env_words("CFLAGS"))
            .args(native::env_words("LDFLAGS"));
        run(Lang::C, dir, &mut command)?;
        native::finish(dir, manifest, Lang::C)
    }
}

/// The author's `.c` files, relative to `dir`: those at the top of the
/// folder and in `src/`, in a stable order.
fn c_sources(dir: &Path) -> Result<Vec<PathBuf>, KitError> {
    let mut sources = Vec::new();
    for folder in ["", "src"] {
        let Ok(entries) = std::fs::read_dir(dir.join(folder)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(|source| KitError::Io {
                path: dir.join(folder),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "c") && path.is_file() {
                sources.push(Path::new(folder).join(entry.file_name()));
            }
        }
    }
    sources.sort();
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaffold_is_a_loadable_manifest_and_a_filled_in_source() {
        let files = C::files("greeter");
        let file = |name: &str| super::super::scaffolded(&files, name);
        let manifest = Manifest::parse(file("plugin.toml"), "plugin.toml").unwrap();
        assert_eq!(manifest.namespace.as_str(), "greeter");
        let source = file("plugin.c");
        assert!(source.starts_with("// greeter: "), "{source}");
        assert!(source.contains("#include \"plugin.h\""), "{source}");
        for text in [source, file("json.h"), file("README.md")] {
            assert!(!text.contains("{{"), "{text}");
        }
        assert!(file("README.md").contains("pip install ziglang==0.17.0"));
        assert!(file(".gitignore").contains("/bindings/"));
    }
}
