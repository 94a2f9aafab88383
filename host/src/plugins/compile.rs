//! Compiling untrusted components without letting them take the host down.
//!
//! Two defences, in the order a component meets them:
//!
//! 1. [`precheck`] walks the bytes once with [`wasmparser::Parser::parse_all`]
//!    (iterative, constant memory) and refuses shapes that make validation
//!    or compilation blow up before anything parses them deeply: components
//!    nested thousands deep (wasmtime's validator keeps hundreds of KiB per
//!    level, so 15,000 levels in 174 KB took 5.8 GB), type declarations
//!    nested deeply enough to exhaust the parser's stack, single function
//!    bodies large enough to take Cranelift gigabytes, and more functions,
//!    types, instances or other entries than any real plugin has (a
//!    million functions fit in 10.7 MB and took 5.5 GB to compile).
//! 2. The compile itself runs in a child process, `hearth __compile-worker
//!    <in.wasm> <out.cwasm>` (see [`worker_main`]), under an address-space
//!    cap (`RLIMIT_AS`) and a CPU-time cap (`RLIMIT_CPU`). When the watchdog
//!    fires the child is killed and reaped, so a refused compile stops
//!    burning CPU at once instead of running on for minutes in a thread
//!    nobody can stop. Its artifact goes through the component cache's
//!    verified path like any other.

use super::cache::{ComponentCache, Lookup};
use super::error::LoadError;
use std::ffi::OsString;
use std::ops::Range;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use wasmparser::{
    BinaryReader, ComponentType, ComponentTypeDeclaration, InstanceTypeDeclaration, Parser, Payload,
};
use wasmtime::component::Component;
use wasmtime::{Engine, InstanceAllocationStrategy};

/// Deepest nesting of modules and components inside one another, counting
/// the outermost component as 1. Components made by wit-component, jco,
/// componentize-py and TinyGo are 2 to 4 deep (every bundled plugin and
/// test fixture of this repository: 2).
/// wasmtime's validator holds a few hundred KiB per open level, so depth is
/// what turns a tiny file into gigabytes; 16 leaves room for composed
/// components (`wac`) while keeping that cost in the megabytes.
pub const MAX_NESTING_DEPTH: u32 = 16;

/// Most modules and components in one component, at every level together.
/// A component from componentize-py (CPython with its libc, adapter and
/// extension modules as separate dynamically linked modules) has a few
/// dozen; wasmparser itself allows 1,000 per level, so without a total the
/// nesting and per-level limits would still multiply.
pub const MAX_MODULES: u64 = 1_000;

/// Most core functions defined in all modules together (counted both as
/// function-section entries and as code-section bodies). Compiling costs
/// memory and time per function: a million empty functions (10.7 MB)
/// needed 5.5 GB. CPython compiled by componentize-py (about 20 MB) is
/// estimated at a few tens of thousands; 100,000 leaves room for the
/// largest real plugins while capping compile memory near 0.5 GB.
pub const MAX_FUNCTIONS: u64 = 100_000;

/// Largest body of one core function, in bytes. Cranelift's memory and
/// time grow faster than a function's size: one function of 300 KB took
/// 0.5 GB and 10 s to compile, one of 1 MB 1 GB and 32 s, one of 6 MB
/// (wasmparser's own limit is 7.6 MB) more than 4 GB and minutes. The
/// largest functions of real programs (an interpreter loop such as
/// CPython's) are expected to stay at a few hundred KB.
pub const MAX_FUNCTION_BODY_BYTES: u64 = 1 << 20;

/// Most type definitions: core types, component types, and the
/// declarations inside component and instance types, all modules together.
/// Real components declare hundreds to a few thousand (one per distinct
/// function signature and one per WIT item); each costs the validator an
/// interned entry, and wasmparser alone allows a million per module.
pub const MAX_TYPES: u64 = 100_000;

/// Deepest nesting of component and instance types inside one another.
/// wasmparser reads such types recursively, three bytes a level, and
/// nothing bounds the depth: a 3 KB component with a type nested 1,000
/// deep overflowed the 2 MiB stack of the thread compiling it and aborted
/// the whole process (700 deep still validated). WIT-generated types are 2
/// to 4 deep.
pub const MAX_TYPE_NESTING: u32 = 32;

/// Most core and component instances, all levels together. Real components
/// instantiate a handful to a few dozen; the runtime's own pool admits 32
/// core instances per component.
pub const MAX_INSTANCES: u64 = 10_000;

/// Most entries of every other section together (imports, exports,
/// globals, tables, memories, tags, element and data segments, aliases,
/// canonical functions). Each costs the validator a little memory; a
/// dynamically linked CPython imports and exports some tens of thousands.
pub const MAX_ITEMS: u64 = 500_000;

/// The hidden subcommand the host runs its compile worker with.
pub const WORKER_COMMAND: &str = "__compile-worker";

/// How much of the worker's stderr is kept for the error message.
const MAX_WORKER_STDERR: usize = 16 * 1024;

/// Why [`precheck`] refused a component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrecheckError {
    /// The bytes do not parse as WebAssembly.
    #[error("{0}")]
    Malformed(String),
    /// A structural limit is exceeded.
    #[error("{what} is at least {found}; the limit is {limit}")]
    Limit {
        /// What was counted, in words.
        what: &'static str,
        /// The count when the walk stopped (more may follow).
        found: u64,
        /// The limit.
        limit: u64,
    },
}

impl PrecheckError {
    /// The load error this becomes: malformed bytes are
    /// [`LoadError::Invalid`], a limit [`LoadError::TooComplex`].
    pub(crate) fn into_load_error(self) -> LoadError {
        match self {
            PrecheckError::Malformed(message) => LoadError::Invalid(message),
            limit => LoadError::TooComplex(limit),
        }
    }
}

/// Running totals of a walk, each checked against its limit as it grows.
#[derive(Default)]
struct Totals {
    modules: u64,
    functions: u64,
    bodies: u64,
    types: u64,
    instances: u64,
    items: u64,
}

fn add(total: &mut u64, n: u32, limit: u64, what: &'static str) -> Result<(), PrecheckError> {
    *total += u64::from(n);
    if *total > limit {
        return Err(PrecheckError::Limit {
            what,
            found: *total,
            limit,
        });
    }
    Ok(())
}

fn malformed(e: wasmparser::BinaryReaderError) -> PrecheckError {
    PrecheckError::Malformed(e.to_string())
}

/// Checks a component's structure against the limits above without
/// validating or compiling it: one pass over the bytes, no recursion, and
/// memory that does not grow with the input (past `parse_all`'s small
/// per-level stack, itself cut off at [`MAX_NESTING_DEPTH`]). Call it before
/// anything parses the component deeply.
pub fn precheck(bytes: &[u8]) -> Result<(), PrecheckError> {
    let mut depth: u32 = 0;
    let mut t = Totals::default();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(malformed)?;
        match payload {
            // Every module and component, nested or not, starts with its
            // version and finishes with `End`.
            Payload::Version { .. } => {
                depth += 1;
                if depth > MAX_NESTING_DEPTH {
                    return Err(PrecheckError::Limit {
                        what: "nesting depth of modules and components",
                        found: depth.into(),
                        limit: MAX_NESTING_DEPTH.into(),
                    });
                }
                add(
                    &mut t.modules,
                    1,
                    MAX_MODULES,
                    "number of modules and components",
                )?;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::FunctionSection(s) => {
                add(
                    &mut t.functions,
                    s.count(),
                    MAX_FUNCTIONS,
                    "number of core functions",
                )?;
            }
            Payload::CodeSectionStart { count, .. } => {
                add(
                    &mut t.bodies,
                    count,
                    MAX_FUNCTIONS,
                    "number of core function bodies",
                )?;
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len() as u64;
                if size > MAX_FUNCTION_BODY_BYTES {
                    return Err(PrecheckError::Limit {
                        what: "size of one function body in bytes",
                        found: size,
                        limit: MAX_FUNCTION_BODY_BYTES,
                    });
                }
            }
            Payload::TypeSection(s) => add(&mut t.types, s.count(), MAX_TYPES, "number of types")?,
            Payload::CoreTypeSection(s) => {
                add(&mut t.types, s.count(), MAX_TYPES, "number of types")?;
            }
            Payload::ComponentTypeSection(s) => {
                add(&mut t.types, s.count(), MAX_TYPES, "number of types")?;
                let declarations = scan_component_types(bytes, s.range())?;
                add(&mut t.types, declarations, MAX_TYPES, "number of types")?;
            }
            Payload::InstanceSection(s) => {
                add(
                    &mut t.instances,
                    s.count(),
                    MAX_INSTANCES,
                    "number of instances",
                )?;
            }
            Payload::ComponentInstanceSection(s) => {
                add(
                    &mut t.instances,
                    s.count(),
                    MAX_INSTANCES,
                    "number of instances",
                )?;
            }
            other => {
                let count = match other {
                    Payload::ImportSection(s) => s.count(),
                    Payload::TableSection(s) => s.count(),
                    Payload::MemorySection(s) => s.count(),
                    Payload::TagSection(s) => s.count(),
                    Payload::GlobalSection(s) => s.count(),
                    Payload::ExportSection(s) => s.count(),
                    Payload::ElementSection(s) => s.count(),
                    Payload::DataSection(s) => s.count(),
                    Payload::ComponentAliasSection(s) => s.count(),
                    Payload::ComponentCanonicalSection(s) => s.count(),
                    Payload::ComponentImportSection(s) => s.count(),
                    Payload::ComponentExportSection(s) => s.count(),
                    _ => 0,
                };
                add(
                    &mut t.items,
                    count,
                    MAX_ITEMS,
                    "number of imports, exports and other entries",
                )?;
            }
        }
    }
    Ok(())
}

/// Walks a component type section without recursing, refusing component
/// and instance types nested deeper than [`MAX_TYPE_NESTING`]; returns how
/// many declarations the types hold. Everything but the nesting is read
/// with wasmparser's own readers, which do not recurse for those forms.
fn scan_component_types(bytes: &[u8], range: Range<usize>) -> Result<u32, PrecheckError> {
    let section = bytes.get(range.clone()).ok_or_else(|| {
        PrecheckError::Malformed(format!("section at {range:?} is out of bounds"))
    })?;
    let mut reader = BinaryReader::new(section, range.start);
    let mut top_level = reader.read_var_u32().map_err(malformed)?;
    // Per open component or instance type: declarations still to read, and
    // whether it is a component type (which may also hold imports).
    let mut open: Vec<(u32, bool)> = Vec::new();
    let mut declarations: u32 = 0;
    loop {
        let nested = match open.last_mut() {
            Some((0, _)) => {
                open.pop();
                continue;
            }
            Some((left, component)) => {
                *left -= 1;
                let component = *component;
                declarations = declarations.saturating_add(1);
                let mut ahead = reader.clone();
                let tag = ahead.read_u8().map_err(malformed)?;
                let form = ahead.read_u8().unwrap_or(0);
                if tag == 0x01 && matches!(form, 0x41 | 0x42) {
                    reader = ahead;
                    Some(form)
                } else {
                    if component {
                        reader
                            .read::<ComponentTypeDeclaration<'_>>()
                            .map_err(malformed)?;
                    } else {
                        reader
                            .read::<InstanceTypeDeclaration<'_>>()
                            .map_err(malformed)?;
                    }
                    None
                }
            }
            None if top_level == 0 => break,
            None => {
                top_level -= 1;
                let mut ahead = reader.clone();
                let form = ahead.read_u8().map_err(malformed)?;
                if matches!(form, 0x41 | 0x42) {
                    reader = ahead;
                    Some(form)
                } else {
                    reader.read::<ComponentType<'_>>().map_err(malformed)?;
                    None
                }
            }
        };
        if let Some(form) = nested {
            let count = reader.read_var_u32().map_err(malformed)?;
            open.push((count, form == 0x41));
            if open.len() > MAX_TYPE_NESTING as usize {
                return Err(PrecheckError::Limit {
                    what: "nesting depth of component and instance types",
                    found: open.len() as u64,
                    limit: MAX_TYPE_NESTING.into(),
                });
            }
        }
    }
    Ok(declarations)
}

/// The engine configuration of the compile worker: the host's own, so
/// that its artifacts pass wasmtime's compatibility check and land under
/// the same cache key (the allocation strategy is not part of either), but
/// with on-demand allocation: the pooling allocator reserves large virtual
/// ranges up front, which an address-space cap would refuse.
fn worker_config() -> wasmtime::Config {
    let mut config = super::runtime::engine_config();
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    config
}

/// Entry point of `hearth __compile-worker <in.wasm> <out.cwasm>` (the
/// arguments after the subcommand): compiles the component in `in.wasm`
/// for this host's engine and writes the artifact to `out.cwasm`. Returns
/// the process exit code: 0 on success, 2 when the component does not
/// compile (the reason on stderr), 64 on bad usage. Only the host starts
/// it, under the limits described in the module docs.
pub fn worker_main(args: &[OsString]) -> i32 {
    let [input, output] = args else {
        eprintln!("usage: hearth {WORKER_COMMAND} <in.wasm> <out.cwasm>");
        return 64;
    };
    let run = || -> Result<(), String> {
        let bytes = std::fs::read(input)
            .map_err(|e| format!("reading {}: {e}", Path::new(input).display()))?;
        // The host checked already; checking again costs one pass and keeps
        // the worker safe to run on its own.
        precheck(&bytes).map_err(|e| e.to_string())?;
        let engine = Engine::new(&worker_config())
            .map_err(|e| format!("configuring the WebAssembly engine: {e:#}"))?;
        let artifact = engine
            .precompile_component(&bytes)
            .map_err(|e| format!("{e:#}"))?;
        std::fs::write(output, artifact)
            .map_err(|e| format!("writing {}: {e}", Path::new(output).display()))
    };
    match run() {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("{message}");
            2
        }
    }
}

/// The load error for a compiler's error message.
pub(crate) fn compile_error(message: String) -> LoadError {
    // Checked first: the validator reports async features as a parse error.
    if message.contains("async feature") || message.contains("async` feature") {
        // What a toolchain that emits component-model async code (QuickJS
        // through componentize-qjs without `--sync`) runs into: say what
        // to do, not only what the validator saw.
        LoadError::Compile(format!(
            "{message}; the component uses the component model's async features, which hearth does not enable for plugins: \
             build it synchronously (componentize-qjs: pass --sync, as `hearth plugin build` does)"
        ))
    } else if message.contains("magic header") || message.contains("failed to parse") {
        LoadError::Invalid(message)
    } else {
        LoadError::Compile(message)
    }
}

/// Limits of one worker run.
pub(crate) struct WorkerLimits {
    /// Address space of the worker, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock watchdog.
    pub timeout: Duration,
}

/// Compiles `bytes` in a worker process started from `program` and loads
/// the artifact through the cache's verified path.
pub(crate) async fn compile_in_worker(
    program: &Path,
    engine: &Engine,
    cache: &ComponentCache,
    digest: &str,
    bytes: &[u8],
    limits: WorkerLimits,
) -> Result<Component, LoadError> {
    let io_error = |what: &str, e: std::io::Error| LoadError::Compile(format!("{what}: {e}"));
    // Both files live in the cache directory, which only the host writes,
    // and are removed when these handles drop, whatever happens below.
    let temp = |suffix: &str| {
        tempfile::Builder::new()
            .prefix(".compile-")
            .suffix(suffix)
            .tempfile_in(cache.dir())
    };
    let input = temp(".wasm").map_err(|e| io_error("creating the compile input", e))?;
    let output = temp(".cwasm").map_err(|e| io_error("creating the compile output", e))?;
    tokio::fs::write(input.path(), bytes)
        .await
        .map_err(|e| io_error("writing the compile input", e))?;

    let mut command = tokio::process::Command::new(program);
    command
        .arg(WORKER_COMMAND)
        .arg(input.path())
        .arg(output.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Nothing of the host's environment (API keys among it) is needed
        // to compile. glibc reserves 64 MiB of address space per malloc
        // arena and makes up to eight per core: a few arenas keep the cap
        // a measure of real use rather than of the core count.
        .env_clear()
        .env("MALLOC_ARENA_MAX", "2")
        // Dropping the future (a caller that gave up) kills it too.
        .kill_on_drop(true);
    let memory = limits.memory_bytes;
    // CPU seconds: the wall-clock watchdog times every core, plus slack.
    // This only matters if the host dies before its watchdog fires: the
    // worker then still stops on its own.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let cpu_seconds = (limits.timeout.as_secs() + 1).saturating_mul(cores) + 1;
    // SAFETY: the closure runs in the forked child before exec and only
    // makes `setrlimit` system calls, which are async-signal-safe; it
    // allocates nothing and touches no locks.
    unsafe {
        command.pre_exec(move || {
            set_limit(libc::RLIMIT_AS, memory)?;
            set_limit(libc::RLIMIT_CPU, cpu_seconds)?;
            // An abort under the memory cap must not write a core file of
            // gigabytes.
            set_limit(libc::RLIMIT_CORE, 0)
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        // The cap can be too small for the program to start at all.
        Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
            return Err(memory_error(
                memory,
                format!("the worker could not start: {e}"),
            ));
        }
        Err(e) => {
            return Err(io_error(
                &format!("starting the compile worker {}", program.display()),
                e,
            ));
        }
    };
    let stderr = child.stderr.take();
    let read_stderr = async move {
        use tokio::io::AsyncReadExt;
        let mut kept = Vec::new();
        let Some(mut stderr) = stderr else {
            return kept;
        };
        let mut chunk = [0u8; 4096];
        // Keeps the start and drains the rest, so the worker never blocks
        // on a full pipe.
        while let Ok(n @ 1..) = stderr.read(&mut chunk).await {
            let room = MAX_WORKER_STDERR - kept.len();
            kept.extend_from_slice(&chunk[..n.min(room)]);
        }
        kept
    };
    let finished = tokio::time::timeout(limits.timeout, async {
        tokio::join!(child.wait(), read_stderr)
    })
    .await;
    let (status, stderr) = match finished {
        Err(_) => {
            // SIGKILL, then wait: no process and no zombie is left behind.
            if let Err(e) = child.kill().await {
                tracing::warn!("stopping the compile worker: {e}");
            }
            return Err(LoadError::CompileTimeout(limits.timeout));
        }
        Ok((status, stderr)) => (
            status.map_err(|e| io_error("waiting for the compile worker", e))?,
            String::from_utf8_lossy(&stderr).into_owned(),
        ),
    };
    if !status.success() {
        return Err(worker_failure(status, &stderr, &limits));
    }
    let artifact = tokio::fs::read(output.path())
        .await
        .map_err(|e| io_error("reading the compiled component", e))?;
    cache
        .store_bytes(engine, digest, &artifact)
        .map_err(|e| io_error("storing the compiled component", e))?;
    match cache.lookup(engine, digest) {
        Lookup::Hit(component) => Ok(component),
        Lookup::Miss => Err(LoadError::Compile(
            "the compiled component vanished from the cache".into(),
        )),
        Lookup::Rejected(why) => Err(LoadError::Compile(format!(
            "the compiled component is not loadable: {why}"
        ))),
    }
}

/// The type `setrlimit` takes its resource as (glibc declares an enum).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

fn set_limit(resource: Resource, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(resource, &limit) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn memory_error(memory_bytes: u64, detail: String) -> LoadError {
    LoadError::CompileMemory {
        limit_mib: memory_bytes >> 20,
        detail,
    }
}

/// What a worker that did not succeed means.
fn worker_failure(status: ExitStatus, stderr: &str, limits: &WorkerLimits) -> LoadError {
    use std::os::unix::process::ExitStatusExt;
    // One line: Rust's hints about backtraces say nothing to the reader.
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let detail = super::sanitize(&lines.join("; "), 1024);
    // Under RLIMIT_AS an allocation fails: Rust aborts with "memory
    // allocation of N bytes failed", an mmap reports ENOMEM, and a stack
    // that cannot grow faults.
    let out_of_memory = [
        "memory allocation of",
        "out of memory",
        "Cannot allocate memory",
        "failed to allocate",
        // A thread whose stack cannot be mapped (rayon's pool, at start).
        "Resource temporarily unavailable",
        // A cap so small that the dynamic loader cannot even map the
        // worker's shared libraries.
        "failed to map segment",
    ]
    .iter()
    .any(|marker| stderr.contains(marker));
    let overflowed = stderr.contains("overflowed its stack");
    match status.signal() {
        _ if out_of_memory => memory_error(limits.memory_bytes, detail),
        Some(libc::SIGXCPU) => LoadError::CompileTimeout(limits.timeout),
        Some(libc::SIGABRT | libc::SIGKILL | libc::SIGSEGV | libc::SIGBUS) if !overflowed => {
            let signal = status.signal().unwrap_or_default();
            let detail = if detail.is_empty() {
                format!("the worker was killed by signal {signal}")
            } else {
                format!("the worker was killed by signal {signal}: {detail}")
            };
            memory_error(limits.memory_bytes, detail)
        }
        Some(signal) => LoadError::Compile(format!(
            "the compiler was killed by signal {signal}: {detail}"
        )),
        None if detail.is_empty() => {
            LoadError::Compile(format!("the compiler exited with {status}"))
        }
        None => compile_error(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPONENT_PREAMBLE: &[u8] = b"\0asm\x0d\x00\x01\x00";
    const MODULE_PREAMBLE: &[u8] = b"\0asm\x01\x00\x00\x00";

    fn leb(n: u64, out: &mut Vec<u8>) {
        wasm_encoder::Encode::encode(&n, out);
    }

    fn leb_len(n: u64) -> u64 {
        let mut v = Vec::new();
        leb(n, &mut v);
        v.len() as u64
    }

    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        wasm_encoder::Encode::encode(body, out);
    }

    /// `depth` components, each the only section of the one around it,
    /// built outside-in in one pass (no recursion, no quadratic copying).
    fn nested_components(depth: usize) -> Vec<u8> {
        // sizes[i]: byte length of the component at level i (0 = innermost).
        let mut sizes = vec![COMPONENT_PREAMBLE.len() as u64];
        for i in 1..depth {
            let inner = sizes[i - 1];
            sizes.push(COMPONENT_PREAMBLE.len() as u64 + 1 + leb_len(inner) + inner);
        }
        let mut out = Vec::with_capacity(sizes[depth - 1] as usize);
        for i in (1..depth).rev() {
            out.extend_from_slice(COMPONENT_PREAMBLE);
            out.push(4);
            leb(sizes[i - 1], &mut out);
        }
        out.extend_from_slice(COMPONENT_PREAMBLE);
        assert_eq!(out.len() as u64, sizes[depth - 1]);
        out
    }

    /// A core module defining `n` functions `() -> ()` with empty bodies.
    fn many_functions(n: u32) -> Vec<u8> {
        let mut out = MODULE_PREAMBLE.to_vec();
        section(1, &[1, 0x60, 0, 0], &mut out);
        let mut funcs = Vec::new();
        leb(n.into(), &mut funcs);
        funcs.extend(std::iter::repeat_n(0u8, n as usize));
        section(3, &funcs, &mut out);
        let mut code = Vec::new();
        leb(n.into(), &mut code);
        for _ in 0..n {
            code.extend_from_slice(&[2, 0, 0x0b]);
        }
        section(10, &code, &mut out);
        out
    }

    /// A component whose one type is `depth` component types nested.
    fn nested_types(depth: usize) -> Vec<u8> {
        let mut body = vec![1];
        // Each level: a component type with one declaration, a type.
        for _ in 0..depth {
            body.extend_from_slice(&[0x41, 1, 0x01]);
        }
        // The innermost: an empty component type.
        body.extend_from_slice(&[0x41, 0]);
        let mut out = COMPONENT_PREAMBLE.to_vec();
        section(7, &body, &mut out);
        out
    }

    fn limit_of(result: Result<(), PrecheckError>) -> (&'static str, u64, u64) {
        match result {
            Err(PrecheckError::Limit { what, found, limit }) => (what, found, limit),
            other => panic!("expected a limit, got {other:?}"),
        }
    }

    #[test]
    fn nesting_bombs_are_refused_quickly() {
        let bomb = nested_components(15_000);
        assert!(bomb.len() > 100_000, "{}", bomb.len());
        let started = std::time::Instant::now();
        let (what, found, limit) = limit_of(precheck(&bomb));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(what.contains("nesting depth"), "{what}");
        assert_eq!((found, limit), (17, 16));
        let message = precheck(&bomb).unwrap_err().to_string();
        assert!(
            message.contains("nesting depth") && message.contains("16"),
            "{message}"
        );
    }

    #[test]
    fn nesting_up_to_the_limit_passes() {
        precheck(&nested_components(MAX_NESTING_DEPTH as usize)).unwrap();
        let (_, found, _) = limit_of(precheck(&nested_components(MAX_NESTING_DEPTH as usize + 1)));
        assert_eq!(found, u64::from(MAX_NESTING_DEPTH) + 1);
    }

    #[test]
    fn wasmtime_agrees_the_nested_components_are_valid() {
        // The shape is what the audit fed wasmtime, not a malformed file
        // that any parser would refuse.
        let engine = Engine::new(&worker_config()).unwrap();
        Component::new(&engine, nested_components(4)).unwrap();
    }

    #[test]
    fn too_many_functions_are_refused() {
        let module = many_functions(MAX_FUNCTIONS as u32 + 1);
        let mut component = COMPONENT_PREAMBLE.to_vec();
        section(1, &module, &mut component);
        let (what, found, limit) = limit_of(precheck(&component));
        assert!(what.contains("core function"), "{what}");
        assert_eq!((found, limit), (MAX_FUNCTIONS + 1, MAX_FUNCTIONS));
        // Functions of all modules count together.
        let half = many_functions(MAX_FUNCTIONS as u32 / 2 + 1);
        let mut two = COMPONENT_PREAMBLE.to_vec();
        section(1, &half, &mut two);
        section(1, &half, &mut two);
        limit_of(precheck(&two));
        // Under the limit: fine.
        let mut one = COMPONENT_PREAMBLE.to_vec();
        section(1, &half, &mut one);
        precheck(&one).unwrap();
    }

    #[test]
    fn code_bodies_count_even_without_a_function_section() {
        // wasmparser's own parser refuses a code section whose count does
        // not match the function section; either way, nothing this large
        // reaches the compiler.
        let mut module = MODULE_PREAMBLE.to_vec();
        let mut code = Vec::new();
        leb(u64::from(u32::MAX), &mut code);
        section(10, &code, &mut module);
        assert!(precheck(&module).is_err());
    }

    /// A core module with one function `(i32) -> i32` of `adds` additions.
    fn one_long_function(adds: usize) -> Vec<u8> {
        let mut out = MODULE_PREAMBLE.to_vec();
        section(1, &[1, 0x60, 1, 0x7f, 1, 0x7f], &mut out);
        section(3, &[1, 0], &mut out);
        let mut body = vec![0, 0x20, 0];
        for _ in 0..adds {
            body.extend_from_slice(&[0x41, 1, 0x6a]);
        }
        body.push(0x0b);
        let mut code = vec![1];
        leb(body.len() as u64, &mut code);
        code.extend_from_slice(&body);
        section(10, &code, &mut out);
        out
    }

    #[test]
    fn huge_function_bodies_are_refused() {
        let (what, found, limit) = limit_of(precheck(&one_long_function(400_000)));
        assert!(what.contains("function body"), "{what}");
        assert_eq!(limit, MAX_FUNCTION_BODY_BYTES);
        assert!(found > limit);
        precheck(&one_long_function(300_000)).unwrap();
    }

    #[test]
    fn deeply_nested_types_are_refused_without_recursing() {
        let (what, found, limit) = limit_of(precheck(&nested_types(1_000_000)));
        assert!(what.contains("component and instance types"), "{what}");
        assert_eq!((found, limit), (33, 32));
        precheck(&nested_types(MAX_TYPE_NESTING as usize - 1)).unwrap();
        // ... and what passes is what wasmtime accepts.
        let engine = Engine::new(&worker_config()).unwrap();
        Component::new(&engine, nested_types(MAX_TYPE_NESTING as usize - 1)).unwrap();
    }

    #[test]
    fn malformed_bytes_are_malformed() {
        for bytes in [&b""[..], b"not wasm", b"\0asm\x0d\0\x01\0\x07\x05\x01\x41"] {
            assert!(
                matches!(precheck(bytes), Err(PrecheckError::Malformed(_))),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn the_bundled_components_pass_with_room_to_spare() {
        for bundled in crate::bundled::BUNDLED {
            precheck(bundled.component).unwrap();
            let mut depth = 0;
            let mut deepest = 0;
            for payload in Parser::new(0).parse_all(bundled.component) {
                match payload.unwrap() {
                    Payload::Version { .. } => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    Payload::End(_) => depth -= 1,
                    _ => {}
                }
            }
            assert!(deepest <= 4, "{}: {deepest} deep", bundled.source);
        }
    }

    #[test]
    fn worker_artifacts_load_in_the_host_engine() {
        let host = Engine::new(&super::super::runtime::engine_config()).unwrap();
        let worker = Engine::new(&worker_config()).unwrap();
        let key = |engine: &Engine| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            h.finish()
        };
        assert_eq!(key(&host), key(&worker));
        let calc = crate::bundled::BUNDLED
            .iter()
            .find(|b| b.source == "plugins/calc")
            .unwrap();
        let artifact = worker.precompile_component(calc.component).unwrap();
        // SAFETY: produced just above by this crate's own worker engine.
        unsafe { Component::deserialize(&host, &artifact) }.unwrap();
    }

    #[test]
    fn worker_failures_are_classified() {
        use std::os::unix::process::ExitStatusExt;
        let limits = WorkerLimits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(3),
        };
        let abort = ExitStatus::from_raw(libc::SIGABRT);
        let e = worker_failure(
            abort,
            "memory allocation of 8 bytes failed\nnote: run with `RUST_BACKTRACE=1` for a backtrace\n",
            &limits,
        );
        assert_eq!(
            e.to_string(),
            "compiling needed more than 64 MiB; the component is refused \
             (memory allocation of 8 bytes failed)"
        );
        let e = worker_failure(abort, "", &limits);
        assert!(matches!(e, LoadError::CompileMemory { .. }), "{e}");
        let e = worker_failure(ExitStatus::from_raw(libc::SIGXCPU), "", &limits);
        assert!(matches!(e, LoadError::CompileTimeout(_)), "{e}");
        let e = worker_failure(ExitStatus::from_raw(2 << 8), "failed to parse", &limits);
        assert!(matches!(e, LoadError::Invalid(_)), "{e}");
        let e = worker_failure(ExitStatus::from_raw(2 << 8), "unsupported thing", &limits);
        assert!(matches!(e, LoadError::Compile(_)), "{e}");
        let e = worker_failure(abort, "thread 'main' has overflowed its stack", &limits);
        assert!(matches!(e, LoadError::Compile(_)), "{e}");
    }
}
