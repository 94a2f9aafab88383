//! What the C and Zig kits share: finding `zig`, generating the C bindings
//! of the plugin's world, checking that the linked module's start-up memory
//! fits the manifest's limit, and turning the core module into a component.
//!
//! hearth does the component work itself, so an author needs nothing but
//! `zig` (which is also the C compiler): the bindings come from the
//! `wit-bindgen-c` library, the component from `wit-component` with the WASI
//! preview1 adapter of the wasmtime release hearth embeds. No `wit-bindgen`
//! or `wasm-tools` to install.

use super::{KitError, Lang, WORLD, find_program};
use crate::plugins::manifest::Manifest;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder of a plugin that receives the generated C bindings
/// (`plugin.h`, `plugin.c`, `plugin_component_type.o`).
pub const BINDINGS_DIR: &str = "bindings";

/// The folder of a plugin that receives the linked core module.
pub const BUILD_DIR: &str = "build";

/// The stack the kits link with unless the author chooses another: 64 KiB,
/// plenty for code that does not recurse deeply. (zig's own default, 16 MiB,
/// would not fit a plugin's default memory limit once data is added.)
pub const DEFAULT_STACK: u64 = 64 * 1024;

/// The pinned toolchain the docs, tests and error messages name.
pub const ZIG_PACKAGE: &str = "ziglang==0.17.0";

/// A WebAssembly page.
const PAGE: u64 = 64 * 1024;

/// How to run zig: a `zig` on `PATH`, or the binary inside the `ziglang`
/// Python package.
#[derive(Debug, Clone)]
pub struct Zig {
    /// The zig executable.
    pub program: PathBuf,
}

impl Zig {
    /// Finds zig: `zig` on `PATH` first, then the `ziglang` package of a
    /// `python3` (or `python`) on `PATH` (`pip install ziglang`), whose
    /// binary is run directly so that no Python start-up is paid per call.
    pub fn find(lang: Lang) -> Result<Zig, KitError> {
        if let Some(program) = find_program("zig") {
            return Ok(Zig { program });
        }
        // Every Python on PATH, not only the first: the one with `ziglang`
        // may sit behind another virtual environment's.
        let pythons = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .flat_map(|dir| [dir.join("python3"), dir.join("python")])
            .filter(|p| p.is_file());
        for python in pythons {
            let out = Command::new(python)
                .args([
                    "-c",
                    "import os, sys, ziglang; sys.stdout.write(os.path.dirname(ziglang.__file__))",
                ])
                .output();
            if let Ok(out) = out
                && out.status.success()
            {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).into_owned());
                let program = dir.join(if cfg!(windows) { "zig.exe" } else { "zig" });
                if program.is_file() {
                    return Ok(Zig { program });
                }
            }
        }
        Err(KitError::Missing {
            lang,
            program: "zig".into(),
            install: format!("pip install {ZIG_PACKAGE}"),
        })
    }

    /// A command running zig with `args`.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut command = Command::new(&self.program);
        command.args(args.into_iter().map(Into::into));
        command
    }
}

/// The generated C bindings of a plugin folder, as paths relative to it
/// (the toolchain runs there).
#[derive(Debug, Clone)]
pub struct Bindings {
    /// `bindings/plugin.h`: the C API of the world.
    pub header: PathBuf,
    /// `bindings/plugin.c`: the canonical ABI glue and `cabi_realloc`.
    pub source: PathBuf,
    /// `bindings/plugin_component_type.o`: the world's type as a custom
    /// section, for the linker to carry into the core module.
    pub object: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KitError + use<> {
    let path = path.to_path_buf();
    move |source| KitError::Io { path, source }
}

fn failed(lang: Lang, what: &str, error: impl std::fmt::Display) -> KitError {
    KitError::Build {
        lang,
        command: what.to_string(),
        status: "failed".into(),
        output: format!("{error:#}"),
    }
}

/// Generates the C bindings of `dir/wit` (written just before by
/// [`super::write_wit`]) into `dir/bindings/`, replacing what was there,
/// and removes the previous build's `dir/plugin.wasm`.
pub fn c_bindings(dir: &Path, lang: Lang) -> Result<Bindings, KitError> {
    use wit_bindgen_core::wit_parser::Resolve;
    // A failed build must not leave the previous `plugin.wasm` behind for
    // `hearth plugin dev` to install as if it were this one.
    let stale = dir.join("plugin.wasm");
    if stale.exists() {
        std::fs::remove_file(&stale).map_err(io(&stale))?;
    }
    let wit = dir.join("wit");
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_path(&wit)
        .map_err(|e| failed(lang, "reading wit/", e))?;
    let world = resolve
        .select_world(&[package], Some(WORLD))
        .map_err(|e| failed(lang, "reading wit/", e))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| failed(lang, "generating the C bindings", e))?;
    let out = dir.join(BINDINGS_DIR);
    // Stale files of an older world (another name) must not be compiled in.
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(io(&out))?;
    }
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    for (name, bytes) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    let rel = Path::new(BINDINGS_DIR);
    Ok(Bindings {
        header: rel.join(format!("{WORLD}.h")),
        source: rel.join(format!("{WORLD}.c")),
        object: rel.join(format!("{WORLD}_component_type.o")),
    })
}

/// Adds the world of `dir/wit` to a core module as its `component-type`
/// custom section, for toolchains that cannot link
/// `plugin_component_type.o` (Go).
pub fn embed_world(dir: &Path, core: &mut Vec<u8>, lang: Lang) -> Result<(), KitError> {
    use wit_bindgen_core::wit_parser::Resolve;
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_path(dir.join("wit"))
        .map_err(|e| failed(lang, "reading wit/", e))?;
    let world = resolve
        .select_world(&[package], Some(WORLD))
        .map_err(|e| failed(lang, "reading wit/", e))?;
    wit_component::embed_component_metadata(
        core,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .map_err(|e| failed(lang, "embedding the world", e))
}

/// Checks, componentizes and writes `dir/plugin.wasm` from core module
/// bytes (see [`finish`]).
pub fn finish_bytes(
    dir: &Path,
    bytes: &[u8],
    manifest: &Manifest,
    lang: Lang,
) -> Result<(), KitError> {
    check_memory(bytes, manifest, lang)?;
    let component = componentize(bytes, lang)?;
    let out = dir.join("plugin.wasm");
    std::fs::write(&out, component).map_err(io(&out))
}

/// The layout of a linked core module's linear memory, as read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLayout {
    /// The memory it starts with, in bytes.
    pub initial: u64,
    /// The stack it was linked with, in bytes (0 when it cannot be told).
    pub stack: u64,
}

/// Reads the initial memory and the stack size of a core module linked by
/// `wasm-ld` (which `zig` uses): the stack is what lies between the data
/// and the initial `__stack_pointer` (global 0), or below the stack pointer
/// when the stack comes first.
pub fn memory_layout(core: &[u8]) -> Result<MemoryLayout, String> {
    use wasmparser::{ConstExpr, DataKind, Operator, Parser, Payload, TypeRef};
    fn const_i32(expr: &ConstExpr<'_>) -> Option<u64> {
        match expr.get_operators_reader().read().ok()? {
            Operator::I32Const { value } => Some(value as u32 as u64),
            _ => None,
        }
    }
    let mut initial = None;
    let mut stack_pointer = None;
    let (mut data_start, mut data_end) = (u64::MAX, 0u64);
    for payload in Parser::new(0).parse_all(core) {
        match payload.map_err(|e| e.to_string())? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    if let TypeRef::Memory(m) = import.map_err(|e| e.to_string())?.ty {
                        initial.get_or_insert(m.initial * PAGE);
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(|e| e.to_string())?;
                    initial.get_or_insert(memory.initial * PAGE);
                }
            }
            Payload::GlobalSection(reader) => {
                if let Some(global) = reader.into_iter().next() {
                    let global = global.map_err(|e| e.to_string())?;
                    if global.ty.mutable {
                        stack_pointer = const_i32(&global.init_expr);
                    }
                }
            }
            Payload::DataSection(reader) => {
                for data in reader {
                    let data = data.map_err(|e| e.to_string())?;
                    if let DataKind::Active { offset_expr, .. } = data.kind
                        && let Some(offset) = const_i32(&offset_expr)
                    {
                        data_start = data_start.min(offset);
                        data_end = data_end.max(offset + data.data.len() as u64);
                    }
                }
            }
            _ => {}
        }
    }
    let initial = initial.ok_or("the module has no linear memory")?;
    let stack = match stack_pointer {
        None => 0,
        Some(sp) if data_end == 0 || sp <= data_start => sp,
        Some(sp) => sp.saturating_sub(data_end),
    };
    Ok(MemoryLayout { initial, stack })
}

/// Bytes as MiB for messages: `64`, `0.06`, `1.5`.
pub fn mib(bytes: u64) -> String {
    let text = format!("{:.2}", bytes as f64 / (1u64 << 20) as f64);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "0" {
        "under 0.01".into()
    } else {
        text.to_string()
    }
}

/// Refuses a core module whose start-up memory does not fit the manifest's
/// `memory-mb`: such a plugin would fail every call at instantiation with a
/// bare memory-limit trap, so the build says what to change instead.
pub fn check_memory(core: &[u8], manifest: &Manifest, lang: Lang) -> Result<(), KitError> {
    let layout = memory_layout(core).map_err(|e| failed(lang, "reading the linked module", e))?;
    let limit = manifest.permissions.memory_bytes as u64;
    if layout.initial <= limit {
        return Ok(());
    }
    let limit_mb = limit >> 20;
    let message = if layout.stack * 2 >= layout.initial {
        format!(
            "the stack ({} MiB) does not fit the memory limit ({limit_mb} MiB) of plugin.toml's \
             `memory-mb`: link with a smaller stack (hearth's default is {} KiB) or raise `memory-mb`",
            mib(layout.stack),
            DEFAULT_STACK / 1024
        )
    } else {
        format!(
            "the initial memory ({} MiB, of which the stack is {} MiB) does not fit the memory \
             limit ({limit_mb} MiB) of plugin.toml's `memory-mb`: raise `memory-mb` or shrink \
             the static data",
            mib(layout.initial),
            mib(layout.stack)
        )
    };
    Err(KitError::Folder(message))
}

/// Turns a core module (built for `wasm32-wasi` preview1, carrying the
/// world's `component-type` custom section) into a component, adapting its
/// WASI preview1 imports with the reactor adapter.
pub fn componentize(core: &[u8], lang: Lang) -> Result<Vec<u8>, KitError> {
    use wasi_preview1_component_adapter_provider::{
        WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    };
    let encode = || -> anyhow::Result<Vec<u8>> {
        wit_component::ComponentEncoder::default()
            .module(core)?
            .adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )?
            .validate(true)
            .encode()
    };
    encode().map_err(|e| failed(lang, "making the component", e))
}

/// Where the kits link the core module, relative to the plugin folder.
pub fn core_module() -> PathBuf {
    Path::new(BUILD_DIR).join("plugin.core.wasm")
}

/// Creates `dir/build/` for [`core_module`].
pub fn create_build_dir(dir: &Path) -> Result<(), KitError> {
    let build = dir.join(BUILD_DIR);
    std::fs::create_dir_all(&build).map_err(io(&build))
}

/// The last steps of a C or Zig build: reads the linked core module
/// ([`core_module`]), checks its memory against the manifest,
/// componentizes it and writes `dir/plugin.wasm`.
pub fn finish(dir: &Path, manifest: &Manifest, lang: Lang) -> Result<(), KitError> {
    let core = dir.join(core_module());
    let bytes = std::fs::read(&core).map_err(io(&core))?;
    finish_bytes(dir, &bytes, manifest, lang)
}

/// Words of an environment variable (`CFLAGS`, `LDFLAGS`), split on
/// whitespace as `make` would.
pub fn env_words(name: &str) -> Vec<String> {
    std::env::var(name)
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mib_reads_well() {
        assert_eq!(mib(64 << 20), "64");
        assert_eq!(mib(3 << 19), "1.5");
        assert_eq!(mib(64 << 10), "0.06");
        assert_eq!(mib(1), "under 0.01");
    }

    #[test]
    fn memory_layout_reads_stack_first_and_data_first_modules() {
        // Stack first: the stack pointer starts at the stack's size, the
        // data above it.
        let module = wat::parse_str(
            r#"(module (memory 130)
                 (global (mut i32) (i32.const 8388608))
                 (data (i32.const 8388608) "hello"))"#,
        )
        .unwrap();
        assert_eq!(
            memory_layout(&module).unwrap(),
            MemoryLayout {
                initial: 130 * PAGE,
                stack: 8 << 20
            }
        );
        // Data first: the stack lies between the data and the pointer.
        let module = wat::parse_str(
            r#"(module (memory 2)
                 (global (mut i32) (i32.const 66560))
                 (data (i32.const 1024) "hello"))"#,
        )
        .unwrap();
        assert_eq!(memory_layout(&module).unwrap().stack, 66560 - 1029);
    }
}
