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
pub mod zig;

use crate::plugins::manifest::Manifest;
use std::path::{Path, PathBuf};

/// The released contract's WIT files, written into every plugin folder's
/// `wit/deps/hearth-plugin/`.
pub const CONTRACT_WIT: &[(&str, &str)] = &[
    ("config.wit", include_str!("../../../wit/v0.1.0/config.wit")),
    ("guest.wit", include_str!("../../../wit/v0.1.0/guest.wit")),
    ("kv.wit", include_str!("../../../wit/v0.1.0/kv.wit")),
    ("llm.wit", include_str!("../../../wit/v0.1.0/llm.wit")),
    (
        "logging.wit",
        include_str!("../../../wit/v0.1.0/logging.wit"),
    ),
    ("tools.wit", include_str!("../../../wit/v0.1.0/tools.wit")),
    ("types.wit", include_str!("../../../wit/v0.1.0/types.wit")),
    ("world.wit", include_str!("../../../wit/v0.1.0/world.wit")),
];

/// The contract version kits build against.
pub const CONTRACT_VERSION: &str = crate::plugins::contract::LATEST_VERSION;

/// The version of the WASI 0.2 interfaces in [`WASI_WIT`]: the one
/// `wasmtime-wasi-http` 48.0.8, which the host links, is generated from.
/// (A component importing an older 0.2 release links too: wasmtime matches
/// 0.2.x imports by semver.)
pub const WASI_VERSION: &str = "0.2.12";

/// The WASI WIT packages a world importing `wasi:http/outgoing-handler`
/// needs, as (folder under `wit/deps/`, file, text): `wasi:http`, the
/// `wasi:io` and `wasi:clocks` it uses, and `wasi:cli`, `wasi:random`,
/// `wasi:filesystem` and `wasi:sockets`, which the worlds of those packages
/// refer to (a WIT package is resolved whole, worlds included).
pub const WASI_WIT: &[(&str, &str, &str)] = &[
    (
        "wasi-cli",
        "cli.wit",
        include_str!("../../../wit/wasi/0.2.12/cli.wit"),
    ),
    (
        "wasi-clocks",
        "clocks.wit",
        include_str!("../../../wit/wasi/0.2.12/clocks.wit"),
    ),
    (
        "wasi-filesystem",
        "filesystem.wit",
        include_str!("../../../wit/wasi/0.2.12/filesystem.wit"),
    ),
    (
        "wasi-http",
        "http.wit",
        include_str!("../../../wit/wasi/0.2.12/http.wit"),
    ),
    (
        "wasi-io",
        "io.wit",
        include_str!("../../../wit/wasi/0.2.12/io.wit"),
    ),
    (
        "wasi-random",
        "random.wit",
        include_str!("../../../wit/wasi/0.2.12/random.wit"),
    ),
    (
        "wasi-sockets",
        "sockets.wit",
        include_str!("../../../wit/wasi/0.2.12/sockets.wit"),
    ),
];

/// The name of the generated world.
pub const WORLD: &str = "plugin";

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

/// The world a plugin with `manifest`'s permissions builds against: the
/// guest export, logging and config always, and `kv`, `llm`, `tools` and
/// `wasi:http/outgoing-handler` (outgoing HTTP, `http = [...]`) only when
/// granted.
pub fn world_wit(manifest: &Manifest) -> String {
    let p = &manifest.permissions;
    let v = CONTRACT_VERSION;
    let mut imports = vec!["logging", "config"];
    if p.kv {
        imports.push("kv");
    }
    if p.llm_tokens > 0 {
        imports.push("llm");
    }
    if !manifest.dependencies.is_empty() {
        imports.push("tools");
    }
    let mut out = format!(
        "// Generated by hearth from plugin.toml before every build: it imports\n\
         // exactly what the manifest grants. Do not edit; change plugin.toml.\n\
         package local:{}@0.0.0;\n\nworld {WORLD} {{\n",
        manifest.namespace
    );
    for i in imports {
        out.push_str(&format!("    import hearth:plugin/{i}@{v};\n"));
    }
    if grants_http(manifest) {
        out.push_str(&format!(
            "    import wasi:http/outgoing-handler@{WASI_VERSION};\n"
        ));
    }
    out.push_str(&format!("\n    export hearth:plugin/guest@{v};\n}}\n"));
    out
}

/// Whether `manifest` grants outgoing HTTP (`http = [...]` in
/// `[permissions]`), so that its world imports `wasi:http`.
pub fn grants_http(manifest: &Manifest) -> bool {
    !manifest.permissions.http.is_empty()
}

/// Writes `dir/wit/world.wit` (generated from the manifest), the contract
/// into `dir/wit/deps/hearth-plugin/` and, when the manifest grants HTTP,
/// the WASI packages `wasi:http` needs into `dir/wit/deps/wasi-*/` (removed
/// otherwise, so that a folder no longer granted HTTP carries none from an
/// earlier build).
pub fn write_wit(dir: &Path, manifest: &Manifest) -> Result<(), KitError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KitError::Io { path, source }
    };
    let deps = dir.join("wit").join("deps");
    let contract = deps.join("hearth-plugin");
    std::fs::create_dir_all(&contract).map_err(io(&contract))?;
    for (file, text) in CONTRACT_WIT {
        let path = contract.join(file);
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    let http = grants_http(manifest);
    for (folder, file, text) in WASI_WIT {
        let package = deps.join(folder);
        if http {
            std::fs::create_dir_all(&package).map_err(io(&package))?;
            let path = package.join(file);
            std::fs::write(&path, text).map_err(io(&path))?;
        } else if package.exists() {
            std::fs::remove_dir_all(&package).map_err(io(&package))?;
        }
    }
    let world = dir.join("wit").join("world.wit");
    std::fs::write(&world, world_wit(manifest)).map_err(io(&world))
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

#[cfg(test)]
mod tests {
    use super::*;
    use wit_bindgen_core::wit_parser::{Resolve, WorldId};

    /// A manifest granting every import a generated world can have.
    fn granting_everything() -> Manifest {
        let text = manifest_toml(
            "everything",
            "kv = true\nllm-tokens = 100\nhttp = [\"https://api.example.com\"]\n",
        ) + "\n[dependencies]\ncalc = \"^0.1\"\n";
        Manifest::parse(&text, "plugin.toml").unwrap()
    }

    /// Writes `dir/wit` for `manifest`, as a build does, and resolves the
    /// generated world from it.
    fn resolve_written(dir: &Path, manifest: &Manifest) -> (Resolve, WorldId) {
        write_wit(dir, manifest).unwrap();
        let mut resolve = Resolve::default();
        let (package, _) = resolve
            .push_path(dir.join("wit"))
            .unwrap_or_else(|e| panic!("the written wit/ does not resolve: {e:#}"));
        let world = resolve.select_world(&[package], Some(WORLD)).unwrap();
        (resolve, world)
    }

    /// The interfaces a world imports (its own and those they use), by
    /// their full names.
    fn imports(resolve: &Resolve, world: WorldId) -> Vec<String> {
        resolve.worlds[world]
            .imports
            .keys()
            .map(|key| resolve.name_world_key(key))
            .collect()
    }

    #[test]
    fn the_world_granting_everything_resolves_with_the_written_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        let (mut resolve, world) = resolve_written(dir.path(), &granting_everything());
        let names = imports(&resolve, world);
        for import in [
            "hearth:plugin/logging@0.1.0",
            "hearth:plugin/config@0.1.0",
            "hearth:plugin/kv@0.1.0",
            "hearth:plugin/llm@0.1.0",
            "hearth:plugin/tools@0.1.0",
            "wasi:http/outgoing-handler@0.2.12",
            "wasi:http/types@0.2.12",
            "wasi:io/streams@0.2.12",
            "wasi:io/poll@0.2.12",
            "wasi:clocks/monotonic-clock@0.2.12",
        ] {
            assert!(names.iter().any(|n| n == import), "{import}: {names:?}");
        }
        // Every WASI package written is the one version the host links.
        for (_, package) in resolve.packages.iter() {
            if package.name.namespace == "wasi" {
                assert_eq!(
                    package.name.version.as_ref().map(|v| v.to_string()),
                    Some(WASI_VERSION.to_string()),
                    "{}",
                    package.name
                );
            }
        }
        // The C and Zig kits generate their bindings from this world.
        let mut files = wit_bindgen_core::Files::default();
        wit_bindgen_c::Opts::default()
            .build()
            .generate(&mut resolve, world, &mut files)
            .unwrap();
        let header = files
            .iter()
            .find(|(name, _)| *name == format!("{WORLD}.h"))
            .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
            .unwrap();
        assert!(
            header.contains("wasi_http_outgoing_handler_handle("),
            "the C bindings have no wasi:http"
        );
    }

    #[test]
    fn the_wasi_packages_are_written_only_while_http_is_granted() {
        let dir = tempfile::tempdir().unwrap();
        let deps = dir.path().join("wit/deps");
        let everything = granting_everything();
        write_wit(dir.path(), &everything).unwrap();
        let world = std::fs::read_to_string(dir.path().join("wit/world.wit")).unwrap();
        assert!(
            world.contains("    import wasi:http/outgoing-handler@0.2.12;\n"),
            "{world}"
        );
        for (folder, file, _) in WASI_WIT {
            assert!(deps.join(folder).join(file).is_file(), "{folder}/{file}");
        }

        // The same folder without the grant: no wasi:http, and nothing left
        // of it in wit/deps.
        let mut plain = everything.clone();
        plain.permissions.http.clear();
        let (resolve, world) = resolve_written(dir.path(), &plain);
        let names = imports(&resolve, world);
        assert!(!names.iter().any(|n| n.starts_with("wasi:")), "{names:?}");
        let mut left: Vec<String> = std::fs::read_dir(&deps)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["hearth-plugin"]);
    }

    /// Just enough of a host to link WASI and `wasi:http` the way the
    /// plugin runtime does.
    struct Host {
        table: wasmtime::component::ResourceTable,
        wasi: wasmtime_wasi::WasiCtx,
        http: wasmtime_wasi_http::WasiHttpCtx,
        policy: crate::plugins::http::HttpPolicy,
    }

    impl wasmtime_wasi::WasiView for Host {
        fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
            wasmtime_wasi::WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl wasmtime_wasi_http::WasiHttpView for Host {
        fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
            wasmtime_wasi_http::WasiHttpCtxView {
                ctx: &mut self.http,
                table: &mut self.table,
                hooks: &mut self.policy,
            }
        }
    }

    /// A linker with what the plugin runtime links for WASI and HTTP.
    fn host_linker(engine: &wasmtime::Engine) -> wasmtime::component::Linker<Host> {
        let mut linker = wasmtime::component::Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
        linker
    }

    /// A component of the world `check` in `world` over the WASI packages
    /// `wasi` (file, text), made from a core module that imports every
    /// function of every interface the world imports, and does nothing:
    /// by the C and Zig kits' componentization (with the preview1 adapter,
    /// whose WASI imports are merged with the world's) when `as_the_kits`,
    /// else by plain wit-component, which keeps the world's versions.
    fn component_of(wasi: &[(String, String)], world: &str, as_the_kits: bool) -> Vec<u8> {
        use wit_bindgen_core::wit_parser::WorldItem;
        use wit_bindgen_core::wit_parser::abi::{AbiVariant, WasmType};
        let dir = tempfile::tempdir().unwrap();
        let deps = dir.path().join("deps");
        for (file, text) in wasi {
            let folder = deps.join(file.trim_end_matches(".wit"));
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join(file), text).unwrap();
        }
        std::fs::write(dir.path().join("world.wit"), world).unwrap();
        let mut resolve = Resolve::default();
        let (package, _) = resolve.push_path(dir.path()).unwrap();
        let world = resolve.select_world(&[package], Some("check")).unwrap();
        let wat_type = |t: &WasmType| match t {
            WasmType::I64 | WasmType::PointerOrI64 => "i64",
            WasmType::F32 => "f32",
            WasmType::F64 => "f64",
            WasmType::I32 | WasmType::Pointer | WasmType::Length => "i32",
        };
        let mut wat = String::from("(module\n");
        for (key, item) in &resolve.worlds[world].imports {
            let WorldItem::Interface { id, .. } = item else {
                continue;
            };
            let module = resolve.name_world_key(key);
            for (name, function) in &resolve.interfaces[*id].functions {
                let sig = resolve.wasm_signature(AbiVariant::GuestImport, function);
                let params: Vec<&str> = sig.params.iter().map(wat_type).collect();
                let results: Vec<&str> = sig.results.iter().map(wat_type).collect();
                wat.push_str(&format!(
                    "  (import \"{module}\" \"{name}\" (func (param {}) (result {})))\n",
                    params.join(" "),
                    results.join(" ")
                ));
            }
        }
        wat.push_str(
            "  (memory (export \"memory\") 1)\n  (func (export \"cabi_realloc\") \
             (param i32 i32 i32 i32) (result i32) unreachable))\n",
        );
        let mut core = wat::parse_str(&wat).unwrap();
        wit_component::embed_component_metadata(
            &mut core,
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
            false,
        )
        .unwrap();
        if as_the_kits {
            return native::componentize(&core, Lang::C).unwrap();
        }
        wit_component::ComponentEncoder::default()
            .module(&core)
            .unwrap()
            .validate(true)
            .encode()
            .unwrap()
    }

    #[test]
    fn the_wasi_wit_is_the_version_the_host_links() {
        let engine = wasmtime::Engine::default();
        let linker = host_linker(&engine);
        let ours: Vec<(String, String)> = WASI_WIT
            .iter()
            .map(|(_, file, text)| (file.to_string(), text.to_string()))
            .collect();

        // Each WASI interface a world granting HTTP imports is one the
        // host defines under exactly that name: defining it again is
        // refused. (A later wasmtime with another 0.2 release would still
        // link it by semver, which is why the names are compared.)
        let dir = tempfile::tempdir().unwrap();
        let (resolve, world) = resolve_written(dir.path(), &granting_everything());
        let wasi: Vec<String> = imports(&resolve, world)
            .into_iter()
            .filter(|n| n.starts_with("wasi:"))
            .collect();
        assert!(!wasi.is_empty());
        for name in &wasi {
            let mut probe = linker.clone();
            let defined_again = probe.root().func_wrap(
                name,
                |_: wasmtime::StoreContextMut<'_, Host>, (): ()| -> wasmtime::Result<()> { Ok(()) },
            );
            assert!(
                defined_again.is_err(),
                "the host does not link `{name}`: wit/wasi/{WASI_VERSION} and the wasmtime-wasi-http \
                 the host links have drifted apart"
            );
        }

        // And the types agree: a component importing the outgoing handler
        // through hearth's WIT links against the host.
        let world = format!(
            "package local:check;\nworld check {{\n    import wasi:http/outgoing-handler@{WASI_VERSION};\n}}\n"
        );
        let component = component_of(&ours, &world, true);
        let component = wasmtime::component::Component::new(&engine, &component).unwrap();
        linker
            .instantiate_pre(&component)
            .unwrap_or_else(|e| panic!("hearth's wasi:http WIT does not link: {e:#}"));

        // A component built against an older 0.2 release links as well:
        // wasmtime matches 0.2.x imports by semver.
        let older: Vec<(String, String)> = ours
            .iter()
            .map(|(file, text)| (file.clone(), text.replace(WASI_VERSION, "0.2.3")))
            .collect();
        let bytes = component_of(&older, &world.replace(WASI_VERSION, "0.2.3"), false);
        let surface = crate::plugins::contract::surface(&bytes).unwrap();
        assert!(
            surface.imports.len() > 2 && surface.imports.iter().all(|n| n.ends_with("@0.2.3")),
            "{:?}",
            surface.imports
        );
        let component = wasmtime::component::Component::new(&engine, &bytes).unwrap();
        linker
            .instantiate_pre(&component)
            .unwrap_or_else(|e| panic!("a wasi:http@0.2.3 import does not link: {e:#}"));
    }
}
