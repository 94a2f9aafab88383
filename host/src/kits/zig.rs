//! The Zig kit: Zig plugins use the C bindings of the plugin's world.
//! hearth generates them (`bindings/plugin.h`, `plugin.c`,
//! `plugin_component_type.o`), translates the header to Zig with
//! `zig translate-c` (`bindings/plugin.zig`, imported as the module
//! `plugin`), builds `src/main.zig` with the bindings' C file by one
//! `zig build-exe` for `wasm32-wasi`, and makes the component itself (see
//! [`super::native`]). No `build.zig` is needed; hearth does not run one.

use super::native::{self, BINDINGS_DIR, DEFAULT_STACK, ZIG_PACKAGE, Zig as ZigTool};
use super::{Kit, KitError, Lang, WORLD, run};
use crate::plugins::manifest::Manifest;
use std::path::Path;

/// Zig plugins.
#[derive(Debug)]
pub struct Zig;

const MAIN_ZIG: &str = include_str!("templates/zig/main.zig");

/// What hearth generates in a Zig plugin folder.
const GITIGNORE: &str = "/wit/\n/bindings/\n/build/\n/plugin.wasm\n/.zig-cache/\n/zig-out/\n";

impl Kit for Zig {
    fn files(name: &str) -> Vec<(String, String)> {
        vec![
            ("plugin.toml".into(), super::manifest_toml(name, "")),
            ("src/main.zig".into(), MAIN_ZIG.replace("{{name}}", name)),
            (
                "README.md".into(),
                format!(
                    "# {name}\n\nA hearth plugin in Zig.\n\n```sh\npip install {ZIG_PACKAGE}   # or zig 0.17 on PATH\n\
                     hearth plugin build .\nhearth plugin dev . --yes\n\
                     hearth plugin invoke {name}.greet --args '{{\"name\":\"Ada\"}}'\n```\n\n\
                     `hearth plugin build` writes `wit/` from `plugin.toml`, generates the C bindings of \
                     that world into `bindings/` and their Zig translation (`bindings/plugin.zig`, \
                     imported as `@import(\"plugin\")`), builds `src/main.zig` with them for \
                     `wasm32-wasi` (ReleaseSmall, a {stack} KiB stack) and makes `plugin.wasm`. Grant \
                     a permission in `plugin.toml` and its functions appear in the `plugin` module. \
                     Extra `zig build-exe` flags come from `ZIGFLAGS` (e.g. `ZIGFLAGS=\"--stack 1048576\"` \
                     for a 1 MiB stack, `ZIGFLAGS=\"-O ReleaseSafe\"` for safety checks).\n",
                    stack = DEFAULT_STACK / 1024
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
        let main = dir.join("src").join("main.zig");
        if !main.is_file() {
            return Err(KitError::Folder(format!(
                "{} has no src/main.zig: hearth builds a Zig plugin from src/main.zig (it does not run build.zig)",
                dir.display()
            )));
        }
        let zig = ZigTool::find(Lang::Zig)?;
        let bindings = native::c_bindings(dir, Lang::Zig)?;
        let module = dir.join(BINDINGS_DIR).join(format!("{WORLD}.zig"));
        let file = std::fs::File::create(&module).map_err(io(&module))?;
        run(
            Lang::Zig,
            dir,
            zig.command(["translate-c"])
                .arg(&bindings.header)
                .args(["-target", "wasm32-wasi", "-lc"])
                .stdout(file),
        )?;
        native::create_build_dir(dir)?;
        let core = native::core_module();
        let mut command = zig.command([
            "build-exe",
            "-target",
            "wasm32-wasi",
            "-mexec-model=reactor",
            "-fno-entry",
            "-O",
            "ReleaseSmall",
            "-lc",
            "--stack",
        ]);
        command
            .arg(DEFAULT_STACK.to_string())
            // The author's flags after hearth's, so that they win.
            .args(native::env_words("ZIGFLAGS"))
            .arg(format!("-I{BINDINGS_DIR}"))
            .arg(&bindings.source)
            .arg(&bindings.object)
            .args(["--dep", "plugin", "-Mroot=src/main.zig"])
            .arg(format!("-Mplugin={BINDINGS_DIR}/{WORLD}.zig"))
            .arg(format!("-femit-bin={}", core.display()));
        run(Lang::Zig, dir, &mut command)?;
        native::finish(dir, manifest, Lang::Zig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaffold_is_a_loadable_manifest_and_a_filled_in_source() {
        let files = Zig::files("greeter");
        let file = |name: &str| super::super::scaffolded(&files, name);
        let manifest = Manifest::parse(file("plugin.toml"), "plugin.toml").unwrap();
        assert_eq!(manifest.namespace.as_str(), "greeter");
        let source = file("src/main.zig");
        assert!(source.starts_with("//! greeter: "), "{source}");
        assert!(source.contains("@import(\"plugin\")"), "{source}");
        for text in [source, file("README.md")] {
            assert!(!text.contains("{{"), "{text}");
        }
        assert!(file("README.md").contains("pip install ziglang==0.17.0"));
        assert!(file(".gitignore").contains("/.zig-cache/"));
    }
}
