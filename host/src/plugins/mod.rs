//! The sandboxed plugin runtime.
//!
//! [`Runtime`] owns the one wasmtime [`Engine`] of the process, the
//! [`Linker`] with every host capability, the compiled-component cache, the
//! key-value store and the set of active plugins. Its lifecycle follows the
//! contract in three steps:
//!
//! 1. **link once** ([`Runtime::new`]): engine configuration (Cranelift,
//!    pooling allocator, epoch interruption, unused proposals off), WASI with
//!    nothing behind it, `wasi:http` behind [`http::HttpPolicy`], and the
//!    `hearth:plugin` imports;
//! 2. **validate per plugin** ([`Runtime::load`]): size cap, structural
//!    limits ([`compile::precheck`]), import check against the manifest's
//!    grants and the contract version from the exported `guest` interface
//!    (both read from the bytes), compile in a capped child process or
//!    verified-cache load, export check, `describe` and `validate-config`
//!    under the load-time limit (answers bounded and cached) — no side
//!    effects;
//! 3. **prepare per call** ([`Runtime::invoke`]): a fresh `Store` and
//!    instance from the pre-instantiated component, with memory, table,
//!    stack, epoch, wall-clock, host-copy, handle, output and log limits, and
//!    a key-value buffer committed only if the call returns normally.

pub mod cache;
pub mod compile;
pub mod contract;
mod error;
pub mod http;
pub mod kv;
pub mod manifest;
mod state;

pub use contract::latest::hearth::plugin::llm::{
    Completion, Error as LlmError, Request as LlmRequest,
};
pub use contract::latest::hearth::plugin::types::{EventKind, ToolError};
pub use error::{ErrorKind, InvokeError, LoadError, describe_tool_error};
pub use manifest::{Manifest, ManifestError};
pub use state::{CallScope, sanitize};

use cache::{ComponentCache, Lookup};
use contract::latest::{Plugin as PluginBindings, PluginPre};
use contract::{ImportClass, classify_import};
use kv::KvStore;
use state::{CappedOutput, HostState, Limiter};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::Instrument;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

/// How often the epoch advances; the granularity of time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Slack on top of a plugin's time limit for the wall-clock backstop.
const WALL_CLOCK_GRACE: Duration = Duration::from_millis(200);
/// Bytes of each pooled memory kept resident between instances.
const KEEP_RESIDENT: usize = 8 << 20;
/// A plugin whose instances take at least this long to create gets a
/// spare: a fresh instance made in the background after each call, so the
/// next call skips instantiation (a componentize-py component wires ~2,000
/// imports across 14 core modules, about 1.5 ms, on every instance).
pub const SPARE_AFTER: Duration = Duration::from_micros(400);
/// Instantiations on the call path measured before deciding on spares:
/// the quickest of them counts, so one slow start on a busy machine does
/// not give a quick plugin a spare (and the memory one holds).
pub const SPARE_SAMPLES: u32 = 3;
/// Elements a table may grow to.
const MAX_TABLE_ELEMENTS: usize = 20_000;
/// Live resource handles one store may hold.
const MAX_HANDLES: usize = 4_096;
/// Largest `wasi:random` request served in one call.
const MAX_RANDOM_BYTES: u64 = 1 << 20;
/// Largest header section a plugin may build.
const MAX_HTTP_FIELDS: usize = 64 * 1024;
/// Time limit of the load-time calls (`describe`, `validate-config`),
/// whatever the manifest asks for calls: loading must stay quick for every
/// command, and a slow answer only delays its own plugin.
pub const LOAD_CALL_LIMIT: Duration = Duration::from_secs(2);
/// Most tools one plugin may describe.
pub const MAX_TOOLS: usize = 64;
/// Largest JSON Schema of one tool's arguments, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 16 * 1024;
/// Deepest nesting of a tool's JSON Schema.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// Longest chain of `$ref`s followed within a schema.
pub const MAX_SCHEMA_REF_CHAIN: usize = 16;
/// Most schema nodes a check may visit once every `$ref` is expanded: this
/// bounds the work of checking any argument at one place of the input.
pub const MAX_SCHEMA_COST: u64 = 10_000;
/// Longest tool error message kept; the rest is cut (the message reaches
/// clients, logs, terminals and the model's context).
pub const MAX_TOOL_ERROR_BYTES: usize = 4096;
/// Arguments up to this size are checked against their schema in place;
/// larger ones on a blocking thread.
const INLINE_CHECK_BYTES: usize = 16 * 1024;
/// How much an observer hook may grow a payload, in bytes.
pub const MAX_HOOK_GROWTH: usize = 64 * 1024;

/// A model the `llm` import can reach. Wired to the engine by the server;
/// without one, `complete` answers `unavailable`.
pub trait LlmBackend: Send + Sync {
    /// Completes `request` for plugin `namespace` within `budget` tokens.
    fn complete<'a>(
        &'a self,
        namespace: &'a str,
        request: LlmRequest,
        budget: u32,
    ) -> Pin<Box<dyn Future<Output = Result<Completion, LlmError>> + Send + 'a>>;
}

/// Where the runtime keeps its state and how far it lets plugins go.
#[derive(Clone)]
pub struct RuntimeOptions {
    /// Compiled-component cache directory.
    pub cache_dir: PathBuf,
    /// The key-value database file.
    pub kv_path: PathBuf,
    /// Largest component accepted, in bytes.
    pub max_component_bytes: usize,
    /// Largest arguments accepted, in bytes.
    pub max_input_bytes: usize,
    /// Largest result accepted, in bytes.
    pub max_output_bytes: usize,
    /// Longest a compilation may take.
    pub compile_timeout: Duration,
    /// Bytes a guest may copy into the host per call (wasmtime's hostcall fuel).
    pub hostcall_fuel: usize,
    /// The model behind the `llm` import.
    pub llm: Option<Arc<dyn LlmBackend>>,
    /// Linear memory all concurrent calls together may hold, in bytes: a
    /// growth past it is refused like a plugin's own limit.
    pub memory_budget: usize,
    /// The program to compile components with, run as `<program>
    /// __compile-worker <in.wasm> <out.cwasm>` (the `hearth` binary itself,
    /// see [`compile::worker_main`]): a child process under
    /// `compile_memory_bytes` that the watchdog really stops. `None`
    /// compiles on a blocking thread of this process, which the watchdog
    /// can only stop waiting for.
    pub compile_worker: Option<PathBuf>,
    /// Address space the compile worker may use, in bytes (`RLIMIT_AS`);
    /// only applies with `compile_worker`.
    pub compile_memory_bytes: u64,
    /// Most compilations running at once, in either mode: each may use
    /// every core and gigabytes of memory.
    pub max_concurrent_compiles: usize,
    /// Plugins whose instantiation takes at least this long keep one spare
    /// instance ready (see [`SPARE_AFTER`]); `Duration::MAX` turns spares
    /// off.
    pub spare_after: Duration,
}

/// Half of the machine's memory (4 GiB where it cannot be read): the
/// default host-wide budget for plugin memory.
pub fn default_memory_budget() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map(|kib| kib * 1024);
    total.map_or(4 << 30, |t| t / 2)
}

impl RuntimeOptions {
    /// Defaults with all state under `dir`.
    pub fn in_dir(dir: &Path) -> RuntimeOptions {
        RuntimeOptions {
            cache_dir: dir.join("cache").join("components"),
            kv_path: dir.join("kv.redb"),
            max_component_bytes: 64 << 20,
            max_input_bytes: 4 << 20,
            max_output_bytes: 4 << 20,
            compile_timeout: Duration::from_secs(120),
            hostcall_fuel: 16 << 20,
            llm: None,
            memory_budget: default_memory_budget(),
            compile_worker: None,
            compile_memory_bytes: 4 << 30,
            max_concurrent_compiles: 2,
            spare_after: SPARE_AFTER,
        }
    }
}

/// Failure to start the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the configuration.
    #[error("configuring the WebAssembly engine failed: {0}")]
    Engine(String),
    /// The cache directory could not be created.
    #[error("creating the component cache {path}: {source}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A tool as a plugin described it.
#[derive(Clone)]
pub struct ToolInfo {
    /// Unqualified name.
    pub name: String,
    /// Description for the model.
    pub description: String,
    /// JSON Schema of the arguments.
    pub schema: serde_json::Value,
    /// `schema`, compiled once at load; every call's arguments are checked
    /// against it before the plugin runs.
    validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for ToolInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolInfo")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl ToolInfo {
    /// Checks arguments against the tool's schema; the error names every
    /// problem with where it is (at most a few).
    pub fn check_arguments(&self, arguments: &str) -> Result<(), String> {
        let value: serde_json::Value = serde_json::from_str(arguments)
            .map_err(|e| format!("arguments of `{}` are not JSON: {e}", self.name))?;
        let problems: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(5)
            .map(|e| {
                let at = e.instance_path.to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("at {at}: {e}")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "arguments of `{}` do not match its schema: {}",
                self.name,
                problems.join("; ")
            ))
        }
    }
}

/// Whether loading used the compiled cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a verified artifact.
    Hit,
    /// Compiled; nothing was cached.
    Compiled,
    /// Compiled because the cached artifact failed verification.
    Recompiled(String),
}

/// A validated, compiled, pre-instantiated plugin. Clones share the
/// compiled code.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// Its manifest.
    pub manifest: Manifest,
    /// SHA-256 of the component bytes.
    pub digest: String,
    /// The contract version it exports its `guest` interface at.
    pub contract: semver::Version,
    /// Its tools.
    pub tools: Vec<ToolInfo>,
    /// The events it observes.
    pub events: Vec<EventKind>,
    /// Its effective configuration.
    pub config: serde_json::Value,
    /// The component's imports.
    pub imports: Vec<String>,
    /// How the compiled code was obtained.
    pub cache: CacheOutcome,
    pre: PluginPre<HostState>,
    http_policy: http::HttpPolicy,
    /// The namespace, shared by every store's share of the memory budget.
    budget_key: Arc<str>,
    /// Whether it is worth keeping a spare instance of.
    spares: SparePolicy,
}

/// What decides whether a plugin gets spare instances (see [`SPARE_AFTER`]).
struct SparePolicy {
    /// Instantiations on the call path measured so far.
    samples: AtomicU32,
    /// The quickest of them, in microseconds.
    quickest_micros: AtomicU64,
    /// Set when making a spare failed: the plugin is instantiated on the
    /// call path from then on, where failures are reported to a caller.
    disabled: AtomicBool,
}

impl Default for SparePolicy {
    fn default() -> Self {
        SparePolicy {
            samples: AtomicU32::new(0),
            quickest_micros: AtomicU64::new(u64::MAX),
            disabled: AtomicBool::new(false),
        }
    }
}

impl Clone for SparePolicy {
    fn clone(&self) -> Self {
        SparePolicy {
            samples: self.samples.load(Ordering::Relaxed).into(),
            quickest_micros: self.quickest_micros.load(Ordering::Relaxed).into(),
            disabled: self.disabled.load(Ordering::Relaxed).into(),
        }
    }
}

impl SparePolicy {
    fn measured(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.quickest_micros.fetch_min(micros, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    fn worth_it(&self, threshold: Duration) -> bool {
        !self.disabled.load(Ordering::Relaxed)
            && self.samples.load(Ordering::Relaxed) >= SPARE_SAMPLES
            && Duration::from_micros(self.quickest_micros.load(Ordering::Relaxed)) >= threshold
    }
}

impl LoadedPlugin {
    /// What the plugin is and may do, as JSON (for `plugin list` and
    /// `GET /v1/plugins`): tools by qualified name with their schemas,
    /// permissions, dependencies.
    pub fn summary(&self) -> serde_json::Value {
        let m = &self.manifest;
        serde_json::json!({
            "namespace": m.namespace.as_str(),
            "name": m.name.as_str(),
            "version": m.version.to_string(),
            "contract": self.contract.to_string(),
            "description": m.description,
            "digest": self.digest,
            "tools": self.tools.iter().map(|t| serde_json::json!({
                "name": format!("{}.{}", m.namespace, t.name),
                "description": t.description,
                "parameters": t.schema,
            })).collect::<Vec<_>>(),
            "permissions": {
                "http": m.permissions.http.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
                "kv": m.permissions.kv,
                "llm_tokens": m.permissions.llm_tokens,
                "memory_bytes": m.permissions.memory_bytes,
                "time_limit_ms": m.permissions.time_limit.as_millis() as u64,
                "conversation": m.permissions.conversation.as_manifest(),
            },
            "dependencies": m.dependencies.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
        })
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("namespace", &self.manifest.namespace)
            .field("version", &self.manifest.version)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Whether it offers `tool`.
    pub fn has_tool(&self, tool: &str) -> bool {
        self.tools.iter().any(|t| t.name == tool)
    }
}

pub(crate) struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    cache: ComponentCache,
    kv: KvStore,
    options: RuntimeOptions,
    pub(crate) llm: Option<Arc<dyn LlmBackend>>,
    active: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    ticker_stop: Arc<AtomicBool>,
    budget: Arc<state::MemoryBudget>,
    /// One permit per compilation allowed at once.
    compile_permits: Arc<tokio::sync::Semaphore>,
    /// Spare instances by namespace (see [`SPARE_AFTER`]).
    spares: std::sync::Mutex<BTreeMap<String, SpareSlot>>,
    /// Counts changes of the active set by `activate` and
    /// `replace_active`, bumped under the `active` write lock: an
    /// `activated` event still waiting to go out when a newer set replaced
    /// its own is dropped, since the newer set's announcement supersedes it.
    activations: AtomicU64,
}

/// A fresh instance made ahead of a call: never called, used once.
struct Spare {
    store: Store<HostState>,
    bindings: PluginBindings,
}

/// What a namespace's spare slot holds.
enum SpareSlot {
    /// A spare is being made.
    Filling,
    /// A spare of this plugin (compared by pointer at take time).
    Ready(Box<Spare>),
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The plugin runtime. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// The engine configuration untrusted code runs under (see SECURITY notes in
/// the module docs): Cranelift only, epoch interruption, bounded stacks,
/// every proposal we do not use switched off, and a pooling allocator.
fn engine_config() -> Config {
    let mut config = Config::new();
    config
        .strategy(wasmtime::Strategy::Cranelift)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .epoch_interruption(true)
        .wasm_component_model(true)
        .wasm_memory64(false)
        .concurrency_support(false)
        .max_wasm_stack(512 * 1024)
        .async_stack_size(2 * 1024 * 1024);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(256)
        .total_core_instances(2048)
        .total_memories(512)
        .total_tables(1024)
        .total_stacks(256)
        .max_core_instances_per_component(32)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_memory_size(manifest::MAX_MEMORY_MB as usize * 1024 * 1024)
        .table_elements(MAX_TABLE_ELEMENTS)
        // A fresh instance of a plugin that moves megabytes would otherwise
        // fault every page of its memory back in on every call. Keeping the
        // low 8 MiB of a slot resident, and resetting only the pages a call
        // dirtied (found with Linux's PAGEMAP_SCAN where available), makes
        // reuse a memset of what was touched instead.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        // Likewise for tables and the async stack: released and faulted
        // back in on every call, each fault's TLB flush interrupted every
        // other core (a third of a busy server's time under many small
        // plugin calls).
        .table_keep_resident(64 * 1024)
        .async_stack_keep_resident(128 * 1024)
        .pagemap_scan(wasmtime::Enabled::Auto)
        .max_unused_warm_slots(32);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

impl Runtime {
    /// Starts the engine, the epoch ticker, the cache and the store.
    pub fn new(options: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        let engine =
            Engine::new(&engine_config()).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        let link = |r: wasmtime::Result<()>| r.map_err(|e| RuntimeError::Engine(format!("{e:#}")));
        link(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
        link(wasmtime_wasi_http::p2::add_only_http_to_linker_async(
            &mut linker,
        ))?;
        link(PluginBindings::add_to_linker::<_, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        ))?;
        let cache =
            ComponentCache::new(&options.cache_dir).map_err(|source| RuntimeError::Cache {
                path: options.cache_dir.clone(),
                source,
            })?;
        let kv = KvStore::open(&options.kv_path);
        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("hearth-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Engine(format!("starting the epoch thread: {e}")))?;
        }
        let budget = Arc::new(state::MemoryBudget::new(options.memory_budget));
        let compile_permits = Arc::new(tokio::sync::Semaphore::new(
            options.max_concurrent_compiles.max(1),
        ));
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                kv,
                llm: options.llm.clone(),
                options,
                active: RwLock::new(BTreeMap::new()),
                ticker_stop,
                budget,
                compile_permits,
                spares: Default::default(),
                activations: AtomicU64::new(0),
            }),
        })
    }

    /// The process's wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Linear memory held by plugin calls now, and the host-wide budget
    /// for it, in bytes.
    pub fn plugin_memory(&self) -> (usize, usize) {
        (self.inner.budget.used(), self.inner.budget.limit())
    }

    /// Bytes a namespace's key-value entries are counted as, against
    /// [`kv::NAMESPACE_QUOTA`]. Blocking: one read of the database.
    pub fn kv_usage(&self, namespace: &str) -> Result<u64, kv::KvError> {
        self.inner.kv.usage(namespace)
    }

    /// The compiled-component cache.
    pub fn cache(&self) -> &ComponentCache {
        &self.inner.cache
    }

    /// Validates, compiles (or loads from the verified cache) and prepares a
    /// plugin. `config` overrides the manifest's defaults key by key. Nothing
    /// is activated; see [`Runtime::activate`].
    pub async fn load(
        &self,
        manifest: Manifest,
        bytes: &[u8],
        config: Option<&serde_json::Value>,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let inner = &self.inner;
        if bytes.len() > inner.options.max_component_bytes {
            return Err(LoadError::TooLarge {
                size: bytes.len(),
                limit: inner.options.max_component_bytes,
            });
        }
        compile::precheck(bytes).map_err(compile::PrecheckError::into_load_error)?;
        // Imports and the contract version are read from the bytes, so a
        // component that could never be activated is refused before it is
        // compiled.
        let surface = contract::surface(bytes).map_err(LoadError::Invalid)?;
        check_imports(&manifest, &surface.imports)?;
        let contract = contract::declared_contract(bytes, &surface).map_err(|e| match e {
            contract::ContractError::Unsupported(m) => LoadError::UnsupportedContract(m),
            contract::ContractError::NotAPlugin(m) => LoadError::NotAPlugin(m),
        })?;
        if (contract.major, contract.minor) != (manifest.contract.major, manifest.contract.minor) {
            return Err(LoadError::ContractMismatch {
                manifest: manifest.contract.clone(),
                component: contract,
            });
        }
        let digest = cache::sha256_hex(bytes);
        let (component, cache_outcome) = self.compile(&digest, bytes).await?;

        let imports: Vec<String> = component
            .component_type()
            .imports(&inner.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        // The compiled type is the authority; it names the same imports.
        check_imports(&manifest, &imports)?;
        let pre = inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::BadExports(format!("{e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| LoadError::BadExports(format!("{e:#}")))?;

        let mut effective = manifest.config.clone();
        if let (Some(base), Some(serde_json::Value::Object(overrides))) =
            (effective.as_object_mut(), config)
        {
            for (key, value) in overrides {
                base.insert(key.clone(), value.clone());
            }
        }
        let http_policy =
            http::HttpPolicy::new(manifest.namespace.as_str(), &manifest.permissions.http);
        let budget_key: Arc<str> = manifest.namespace.as_str().into();
        let mut plugin = LoadedPlugin {
            manifest,
            digest,
            contract,
            tools: Vec::new(),
            events: Vec::new(),
            config: effective,
            imports,
            cache: cache_outcome,
            pre,
            http_policy,
            budget_key,
            spares: SparePolicy::default(),
        };

        // Describe and validate in throwaway instances, under the same limits
        // as any call. The plugin is not active yet, so these cannot reach
        // other plugins or the model in any way that matters.
        //
        // Both answers depend only on the component, its configuration and
        // the limits it runs under, so they are cached under those: a plugin
        // is asked once, and a slow answer does not slow every later command.
        let config_json = plugin.config.to_string();
        let described_key = cache::sha256_hex(
            format!(
                "{}\n{}\n{:?}\n{config_json}",
                env!("CARGO_PKG_VERSION"),
                plugin.digest,
                plugin.manifest.permissions,
            )
            .as_bytes(),
        );
        if let Some(described) = inner.cache.described(&described_key) {
            match Described::from_cache(&described) {
                Ok(d) => {
                    (plugin.tools, plugin.events) = d.check(&plugin.manifest)?;
                    return Ok(Arc::new(plugin));
                }
                Err(why) => tracing::warn!("discarding a cached description: {why}"),
            }
        }
        let probe = Arc::new(plugin.clone());
        let load_error = |export: &'static str| {
            move |e: InvokeError| LoadError::Call {
                export,
                error: Box::new(e),
            }
        };
        let OpResult::Describe(description) = inner
            .run(&probe, CallScope::internal("describe"), Op::Describe)
            .await
            .map_err(load_error("describe"))?
        else {
            unreachable!("describe returns a description")
        };
        let described = Described::from_wit(description)?;
        (plugin.tools, plugin.events) = described.check(&plugin.manifest)?;
        let OpResult::Validated(verdict) = inner
            .run(
                &probe,
                CallScope::internal("validate-config"),
                Op::ValidateConfig(&config_json),
            )
            .await
            .map_err(load_error("validate-config"))?
        else {
            unreachable!("validate-config returns a verdict")
        };
        if let Err(message) = verdict {
            return Err(LoadError::Config {
                plugin: plugin.manifest.namespace.to_string(),
                message: sanitize(&message, 1024),
            });
        }
        if let Err(e) = inner
            .cache
            .store_described(&described_key, &described.to_cache())
        {
            tracing::warn!("could not cache the description of {}: {e}", plugin.digest);
        }
        Ok(Arc::new(plugin))
    }

    async fn compile(
        &self,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome), LoadError> {
        let inner = &self.inner;
        let rejected = match inner.cache.lookup(&inner.engine, digest) {
            Lookup::Hit(component) => return Ok((component, CacheOutcome::Hit)),
            Lookup::Miss => None,
            Lookup::Rejected(why) => {
                tracing::warn!("discarding cached component: {why}");
                Some(why)
            }
        };
        // Each compilation may use every core and gigabytes: only so many
        // run at once, whichever way they run.
        let permit = inner
            .compile_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        let component = match &inner.options.compile_worker {
            Some(program) => {
                let limits = compile::WorkerLimits {
                    memory_bytes: inner.options.compile_memory_bytes,
                    timeout: inner.options.compile_timeout,
                };
                let compiled = compile::compile_in_worker(
                    program,
                    &inner.engine,
                    &inner.cache,
                    digest,
                    bytes,
                    limits,
                )
                .await;
                // The worker is gone (finished, or killed and reaped).
                drop(permit);
                compiled?
            }
            None => {
                let engine = inner.engine.clone();
                let owned = bytes.to_vec();
                // Compilation is CPU-bound and unbounded in principle: run it
                // off the async workers and stop waiting after the watchdog
                // fires. The thread cannot be stopped, so it keeps its permit
                // until it really ends.
                let task = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    Component::new(&engine, &owned)
                });
                let component =
                    match tokio::time::timeout(inner.options.compile_timeout, task).await {
                        Err(_) => {
                            return Err(LoadError::CompileTimeout(inner.options.compile_timeout));
                        }
                        Ok(Err(join)) => return Err(LoadError::Compile(join.to_string())),
                        Ok(Ok(Err(e))) => return Err(compile::compile_error(format!("{e:#}"))),
                        Ok(Ok(Ok(c))) => c,
                    };
                if let Err(e) = inner.cache.store(&inner.engine, digest, &component) {
                    tracing::warn!("could not cache compiled component {digest}: {e}");
                }
                component
            }
        };
        Ok((
            component,
            match rejected {
                Some(why) => CacheOutcome::Recompiled(why),
                None => CacheOutcome::Compiled,
            },
        ))
    }

    /// Makes `plugin` the active plugin of its namespace; returns the one it
    /// replaced. Calls in flight finish on the plugin they started with.
    ///
    /// Once the set is in place, every active plugin observing `activated`
    /// is sent it in the background (see [`Runtime::replace_active`]).
    pub fn activate(&self, plugin: Arc<LoadedPlugin>) -> Option<Arc<LoadedPlugin>> {
        self.inner
            .drop_spares(|ns| ns == plugin.manifest.namespace.as_str());
        let (replaced, announcement) = {
            let mut active = self.inner.active.write().unwrap_or_else(|p| p.into_inner());
            let replaced = active.insert(plugin.manifest.namespace.to_string(), plugin);
            (replaced, self.inner.activation_changed(&active))
        };
        self.inner.announce_activation(announcement);
        replaced
    }

    /// Replaces the whole active set at once. Calls already running keep the
    /// plugins they started with; calls that start afterwards see only the
    /// new set. This is how a running host reloads after install, update,
    /// enable or disable.
    ///
    /// Once the set is in place, every active plugin observing `activated`
    /// gets an `on-event` call with it, each in a task of its own on the
    /// current tokio runtime, so a slow or failing observer never delays or
    /// fails the activation (a failure is logged at info). The payload is
    /// described by [`activated_payload`]; an observer's `modify` or `veto`
    /// is ignored (there is nothing to change or refuse). An event still
    /// waiting when a newer set replaces this one is dropped in favour of
    /// the newer set's.
    pub fn replace_active(&self, plugins: Vec<Arc<LoadedPlugin>>) {
        let next: BTreeMap<String, Arc<LoadedPlugin>> = plugins
            .into_iter()
            .map(|p| (p.manifest.namespace.to_string(), p))
            .collect();
        self.inner.drop_spares(|_| true);
        let announcement = {
            let mut active = self.inner.active.write().unwrap_or_else(|p| p.into_inner());
            *active = next;
            self.inner.activation_changed(&active)
        };
        self.inner.announce_activation(announcement);
    }

    /// Removes a namespace from the active set.
    pub fn deactivate(&self, namespace: &str) -> Option<Arc<LoadedPlugin>> {
        self.inner.drop_spares(|ns| ns == namespace);
        let mut active = self.inner.active.write().unwrap_or_else(|p| p.into_inner());
        active.remove(namespace)
    }

    /// The active plugin of a namespace.
    pub fn active(&self, namespace: &str) -> Option<Arc<LoadedPlugin>> {
        self.inner.active(namespace)
    }

    /// Whether a spare instance of `plugin` is ready for its next call.
    pub fn spare_ready(&self, plugin: &Arc<LoadedPlugin>) -> bool {
        let spares = self.inner.spares.lock().unwrap_or_else(|p| p.into_inner());
        matches!(
            spares.get(plugin.manifest.namespace.as_str()),
            Some(SpareSlot::Ready(spare)) if Arc::ptr_eq(&spare.store.data().plugin, plugin)
        )
    }

    /// Every active plugin, by namespace.
    pub fn active_plugins(&self) -> Vec<Arc<LoadedPlugin>> {
        let active = self.inner.active.read().unwrap_or_else(|p| p.into_inner());
        active.values().cloned().collect()
    }

    /// Invokes `tool` of `plugin` in a fresh instance; returns its JSON result.
    pub async fn invoke(
        &self,
        plugin: &Arc<LoadedPlugin>,
        tool: &str,
        arguments: &str,
        scope: CallScope,
    ) -> Result<String, InvokeError> {
        self.inner.invoke(plugin, tool, arguments, scope).await
    }

    /// Invokes `namespace.tool` on the active set.
    pub async fn invoke_qualified(
        &self,
        qualified: &str,
        arguments: &str,
        scope: CallScope,
    ) -> Result<String, InvokeError> {
        let (namespace, tool) = qualified.split_once('.').ok_or_else(|| {
            InvokeError::BadArguments(format!(
                "`{qualified}` is not a qualified tool name; use namespace.tool"
            ))
        })?;
        let plugin = self
            .active(namespace)
            .ok_or_else(|| InvokeError::NoSuchPlugin(namespace.to_string()))?;
        self.invoke(&plugin, tool, arguments, scope).await
    }

    /// Runs the `on-event` hook of every active plugin that observes `kind`,
    /// highest priority first (the resolver refuses equal priorities). Each
    /// sees the payload as the ones before left it; a veto stops the chain.
    /// A hook that fails is skipped and reported, never fatal.
    ///
    /// This is for the conversation events. `activated` is sent by the
    /// runtime itself whenever the active set changes
    /// ([`Runtime::replace_active`]), to each observer on its own, so no
    /// observer can change what another one sees or keep it from being told.
    pub async fn dispatch(&self, kind: EventKind, payload: &str, scope: CallScope) -> Dispatch {
        let mut observers: Vec<Arc<LoadedPlugin>> = self
            .active_plugins()
            .into_iter()
            .filter(|p| p.events.contains(&kind))
            .collect();
        observers.sort_by(|a, b| {
            b.manifest
                .priority
                .cmp(&a.manifest.priority)
                .then_with(|| a.manifest.namespace.cmp(&b.manifest.namespace))
        });
        let mut dispatch = Dispatch {
            payload: payload.to_string(),
            vetoed: None,
            failures: Vec::new(),
        };
        use contract::latest::hearth::plugin::types::{Event, EventOutcome};
        let conversational = matches!(kind, EventKind::BeforePrompt | EventKind::AfterResponse);
        let max_payload = payload.len().saturating_add(MAX_HOOK_GROWTH);
        for plugin in observers {
            let namespace = plugin.manifest.namespace.to_string();
            let access = plugin.manifest.permissions.conversation;
            // Activation checks this too; the check here keeps a plugin that
            // was loaded some other way from ever seeing a conversation.
            if conversational && access == manifest::ConversationAccess::None {
                continue;
            }
            let read_only = conversational && access == manifest::ConversationAccess::Read;
            let event = Event {
                kind,
                payload: dispatch.payload.clone(),
            };
            match self
                .inner
                .run(&plugin, scope.clone(), Op::OnEvent(event))
                .await
            {
                Ok(OpResult::Event(EventOutcome::Proceed)) => {}
                Ok(OpResult::Event(EventOutcome::Modify(_) | EventOutcome::Veto(_)))
                    if read_only =>
                {
                    dispatch.failures.push((
                        namespace.clone(),
                        InvokeError::Denied {
                            plugin: namespace,
                            message: "may only read conversations (conversation = \"read\"); its change was ignored".into(),
                        },
                    ));
                }
                Ok(OpResult::Event(EventOutcome::Modify(next))) if next.len() > max_payload => {
                    dispatch.failures.push((
                        namespace.clone(),
                        InvokeError::OutputTooLarge {
                            plugin: namespace,
                            size: next.len(),
                            limit: max_payload,
                        },
                    ));
                }
                Ok(OpResult::Event(EventOutcome::Modify(next))) => {
                    if serde_json::from_str::<serde::de::IgnoredAny>(&next).is_err() {
                        dispatch.failures.push((
                            namespace.clone(),
                            InvokeError::OutputNotJson {
                                plugin: namespace,
                                message: "a modified payload must be JSON".into(),
                            },
                        ));
                        continue;
                    }
                    dispatch.payload = next;
                }
                Ok(OpResult::Event(EventOutcome::Veto(reason))) => {
                    dispatch.vetoed = Some((namespace, sanitize(&reason, 1024)));
                    break;
                }
                Ok(_) => unreachable!("on-event returns an outcome"),
                Err(e) => {
                    tracing::warn!(plugin = %namespace, "event hook failed: {e}");
                    dispatch.failures.push((namespace, e));
                }
            }
        }
        dispatch
    }

    /// An instance kept alive across calls. hearth itself always uses a
    /// fresh instance per call; this exists to measure the warm path and for
    /// trusted batch work. Limits still apply per instance.
    pub async fn instantiate(
        &self,
        plugin: &Arc<LoadedPlugin>,
    ) -> Result<WarmInstance, InvokeError> {
        let mut store = self.inner.new_store(
            plugin,
            CallScope::internal("warm"),
            plugin.manifest.permissions.time_limit,
        );
        let bindings = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.inner.classify(plugin, &store, e))?;
        Ok(WarmInstance {
            runtime: self.inner.clone(),
            plugin: plugin.clone(),
            store,
            bindings,
        })
    }
}

/// See [`Runtime::instantiate`].
pub struct WarmInstance {
    runtime: Arc<Inner>,
    plugin: Arc<LoadedPlugin>,
    store: Store<HostState>,
    bindings: PluginBindings,
}

impl WarmInstance {
    /// Calls a tool on this instance.
    pub async fn invoke(&mut self, tool: &str, arguments: &str) -> Result<String, InvokeError> {
        let scope = CallScope::internal("warm");
        let ctx = wit_context(&scope);
        self.store.data_mut().scope = CallScope {
            tool: Some(tool.to_string()),
            ..scope
        };
        arm_deadline(&mut self.store, self.plugin.manifest.permissions.time_limit);
        let result = self
            .bindings
            .hearth_plugin_guest()
            .call_invoke(&mut self.store, tool, arguments, &ctx)
            .await
            .map_err(|e| self.runtime.classify(&self.plugin, &self.store, e))?;
        let out = result.map_err(|e| InvokeError::Tool(bound_tool_error(e)))?;
        self.runtime.check_output(&self.plugin, out)
    }
}

/// Arms a store's time limit. At every epoch tick a running guest yields to
/// the async executor, so a spinning plugin never monopolises a worker
/// thread; once `limit` has passed, the next tick traps it. (A yield-only
/// deadline would never stop it; a trap-only one would hog the thread.)
fn arm_deadline(store: &mut Store<HostState>, limit: Duration) {
    let deadline = Instant::now() + limit;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Err(wasmtime::Trap::Interrupt.into())
        } else {
            Ok(wasmtime::UpdateDeadline::Yield(1))
        }
    });
}

/// Checks every import against the manifest's grants; an import no host
/// provides is refused first, then every import not granted is listed in
/// one error.
fn check_imports(manifest: &Manifest, imports: &[String]) -> Result<(), LoadError> {
    use contract::Capability;
    let p = &manifest.permissions;
    let mut missing = Vec::new();
    for name in imports {
        match classify_import(name) {
            ImportClass::Always => {}
            ImportClass::Unknown => {
                return Err(LoadError::UnknownImport {
                    import: sanitize(name, 200),
                });
            }
            ImportClass::Needs(capability) => {
                let granted = match capability {
                    Capability::Kv => p.kv,
                    Capability::Llm => p.llm_tokens > 0,
                    Capability::Tools => !manifest.dependencies.is_empty(),
                    Capability::Http => !p.http.is_empty(),
                };
                if !granted {
                    missing.push((name.clone(), capability));
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoadError::NotGranted {
            plugin: manifest.namespace.to_string(),
            missing,
        })
    }
}

/// What a plugin's `describe` answered, bounded before anything else is
/// done with it: at most [`MAX_TOOLS`] tools, each description checked like
/// the manifest's, each schema small, shallow and cheap to check.
struct Described {
    tools: Vec<(String, String, String)>,
    events: Vec<EventKind>,
}

impl Described {
    fn from_wit(
        d: contract::latest::hearth::plugin::types::Description,
    ) -> Result<Described, LoadError> {
        if d.tools.len() > MAX_TOOLS {
            return Err(LoadError::Describe(format!(
                "it offers {} tools; the limit is {MAX_TOOLS}",
                d.tools.len()
            )));
        }
        if d.events.len() > 16 {
            return Err(LoadError::Describe(format!(
                "it lists {} events; there are only three",
                d.events.len()
            )));
        }
        let mut events = d.events;
        events.dedup();
        Ok(Described {
            tools: d
                .tools
                .into_iter()
                .map(|t| (t.name, t.description, t.parameters_schema))
                .collect(),
            events,
        })
    }

    fn to_cache(&self) -> Vec<u8> {
        serde_json::json!({
            "tools": self.tools.iter().map(|(n, d, s)| serde_json::json!([n, d, s])).collect::<Vec<_>>(),
            "events": self.events.iter().map(|e| event_name(*e)).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes()
    }

    fn from_cache(bytes: &[u8]) -> Result<Described, String> {
        #[derive(serde::Deserialize)]
        struct Raw {
            tools: Vec<(String, String, String)>,
            events: Vec<String>,
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let events = raw
            .events
            .iter()
            .map(|n| event_from_name(n).ok_or_else(|| format!("unknown event `{n}`")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Described {
            tools: raw.tools,
            events,
        })
    }

    /// Validates the answer against the host's bounds and the manifest's
    /// grants; returns the tools (schemas compiled) and events.
    fn check(&self, manifest: &Manifest) -> Result<(Vec<ToolInfo>, Vec<EventKind>), LoadError> {
        let tools = validate_tools(&self.tools)?;
        for event in &self.events {
            let conversational =
                matches!(event, EventKind::BeforePrompt | EventKind::AfterResponse);
            if conversational
                && manifest.permissions.conversation == manifest::ConversationAccess::None
            {
                return Err(LoadError::ConversationNotGranted {
                    plugin: manifest.namespace.to_string(),
                    event: event_name(*event),
                });
            }
        }
        Ok((tools, self.events.clone()))
    }
}

/// The WIT name of an event kind.
pub fn event_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::BeforePrompt => "before-prompt",
        EventKind::AfterResponse => "after-response",
        EventKind::Activated => "activated",
    }
}

/// The event kind of a WIT name.
pub fn event_from_name(name: &str) -> Option<EventKind> {
    [
        EventKind::BeforePrompt,
        EventKind::AfterResponse,
        EventKind::Activated,
    ]
    .into_iter()
    .find(|k| event_name(*k) == name)
}

fn validate_tools(tools: &[(String, String, String)]) -> Result<Vec<ToolInfo>, LoadError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(tools.len());
    for (name, description, schema_text) in tools {
        let bad = |problem: String| LoadError::BadTool {
            tool: sanitize(name, 64),
            problem,
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "tool names are 1-64 ASCII letters, digits, '_' or '-'".into()
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(bad("declared twice".into()));
        }
        manifest::check_description(description).map_err(|m| bad(format!("description {m}")))?;
        if schema_text.len() > MAX_SCHEMA_BYTES {
            return Err(bad(format!(
                "parameters schema is {} bytes; the limit is {MAX_SCHEMA_BYTES}",
                schema_text.len()
            )));
        }
        let schema: serde_json::Value = serde_json::from_str(schema_text)
            .map_err(|e| bad(format!("parameters schema is not JSON: {e}")))?;
        if !schema.is_object() {
            return Err(bad("parameters schema must be a JSON object".into()));
        }
        schema_cost(&schema).map_err(|m| bad(format!("parameters schema {m}")))?;
        // No resolver for remote or file references is built in: a schema
        // that points outside itself fails here instead of fetching.
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| bad(format!("parameters schema is not a valid JSON Schema: {e}")))?;
        out.push(ToolInfo {
            name: name.clone(),
            description: description.clone(),
            schema,
            validator: Arc::new(validator),
        });
    }
    Ok(out)
}

/// Bounds the work of compiling and checking against a schema: nesting at
/// most [`MAX_SCHEMA_DEPTH`], only local `#/...` references, chains of at
/// most [`MAX_SCHEMA_REF_CHAIN`], and at most [`MAX_SCHEMA_COST`] nodes
/// once every reference is expanded where it is used. A definition that
/// refers to the one below it twice, twenty levels deep, costs 2^20: refused
/// here, before the validator is built. A reference back into a schema being
/// expanded (a recursive schema) counts once: its work follows the input's
/// depth, which the request size bounds.
fn schema_cost(schema: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    fn depth_ok(v: &Value, depth: usize) -> bool {
        if depth > MAX_SCHEMA_DEPTH {
            return false;
        }
        match v {
            Value::Object(m) => m.values().all(|c| depth_ok(c, depth + 1)),
            Value::Array(a) => a.iter().all(|c| depth_ok(c, depth + 1)),
            _ => true,
        }
    }
    if !depth_ok(schema, 0) {
        return Err(format!("nests deeper than {MAX_SCHEMA_DEPTH} levels"));
    }
    struct Walk<'a> {
        root: &'a Value,
        memo: BTreeMap<String, u64>,
        expanding: Vec<String>,
    }
    impl Walk<'_> {
        fn cost(&mut self, v: &Value) -> Result<u64, String> {
            let mut total: u64 = 1;
            match v {
                Value::Object(m) => {
                    for (key, child) in m {
                        if key == "$dynamicRef" || key == "$recursiveRef" {
                            return Err(format!("uses `{key}`, which hearth does not accept"));
                        }
                        if key == "$ref" {
                            let Value::String(target) = child else {
                                return Err("has a `$ref` that is not a string".into());
                            };
                            total = total.saturating_add(self.reference(target)?);
                        } else {
                            total = total.saturating_add(self.cost(child)?);
                        }
                        if total > MAX_SCHEMA_COST {
                            return Ok(total);
                        }
                    }
                }
                Value::Array(a) => {
                    for child in a {
                        total = total.saturating_add(self.cost(child)?);
                        if total > MAX_SCHEMA_COST {
                            return Ok(total);
                        }
                    }
                }
                _ => {}
            }
            Ok(total)
        }

        fn reference(&mut self, target: &str) -> Result<u64, String> {
            let Some(pointer) = target.strip_prefix('#') else {
                return Err(format!(
                    "refers to `{}`; only references within the schema (#/...) are allowed",
                    sanitize(target, 200)
                ));
            };
            if let Some(&c) = self.memo.get(pointer) {
                return Ok(c);
            }
            if self.expanding.iter().any(|p| p == pointer) {
                return Ok(1);
            }
            if self.expanding.len() >= MAX_SCHEMA_REF_CHAIN {
                return Err(format!(
                    "follows references more than {MAX_SCHEMA_REF_CHAIN} deep"
                ));
            }
            let root = self.root;
            let Some(node) = root.pointer(pointer) else {
                return Err(format!(
                    "refers to `{}`, which it does not contain",
                    sanitize(target, 200)
                ));
            };
            self.expanding.push(pointer.to_string());
            let cost = self.cost(node);
            self.expanding.pop();
            let cost = cost?;
            self.memo.insert(pointer.to_string(), cost);
            Ok(cost)
        }
    }
    let mut walk = Walk {
        root: schema,
        memo: BTreeMap::new(),
        expanding: Vec::new(),
    };
    let cost = walk.cost(schema)?;
    if cost > MAX_SCHEMA_COST {
        return Err(format!(
            "is too expensive to check: expanding its references visits more than {MAX_SCHEMA_COST} nodes"
        ));
    }
    Ok(())
}

fn wit_context(scope: &CallScope) -> contract::latest::hearth::plugin::types::CallContext {
    contract::latest::hearth::plugin::types::CallContext {
        request_id: scope.request_id.clone(),
        caller: scope.caller.clone(),
        depth: scope.depth,
    }
}

impl CallScope {
    /// A scope for a direct call with a request id.
    pub fn new(request_id: impl Into<String>) -> CallScope {
        CallScope {
            request_id: request_id.into(),
            caller: None,
            depth: 0,
            tool: None,
        }
    }

    fn internal(what: &str) -> CallScope {
        CallScope::new(format!("hearth:{what}"))
    }
}

/// A change of the active set, to announce to the observers of
/// `activated`.
struct Announcement {
    /// The change's place in [`Inner::activations`].
    generation: u64,
    /// The new set, when some plugin in it observes `activated`.
    set: Option<BTreeMap<String, Arc<LoadedPlugin>>>,
}

/// The payload of the `activated` event sent to `plugin` when `set` became
/// the active set: a JSON object with the plugin's own `namespace` and
/// `version`, and `dependencies`, mapping each namespace in its
/// `[dependencies]` to the version now active there, or `null` if none is.
///
/// Nothing else about the set is included: a plugin may call only its
/// dependencies, so which other plugins are installed is not its business
/// (SECURITY.md, "What a plugin can reach"). It carries no conversation, so
/// observing `activated` needs no `conversation` permission.
///
/// ```json
/// {"namespace": "hostile", "version": "0.1.0", "dependencies": {"calc": "0.1.0"}}
/// ```
pub fn activated_payload(
    plugin: &LoadedPlugin,
    set: &BTreeMap<String, Arc<LoadedPlugin>>,
) -> String {
    let m = &plugin.manifest;
    let dependencies: serde_json::Map<String, serde_json::Value> = m
        .dependencies
        .keys()
        .map(|ns| {
            let version = set
                .get(ns.as_str())
                .map(|p| serde_json::Value::String(p.manifest.version.to_string()));
            (ns.to_string(), version.unwrap_or(serde_json::Value::Null))
        })
        .collect();
    serde_json::json!({
        "namespace": m.namespace.as_str(),
        "version": m.version.to_string(),
        "dependencies": dependencies,
    })
    .to_string()
}

/// What the observers of an event made of it.
#[derive(Debug)]
pub struct Dispatch {
    /// The payload after every modification.
    pub payload: String,
    /// The plugin that vetoed, and its reason; later observers did not run.
    pub vetoed: Option<(String, String)>,
    /// Observers that failed (skipped, the chain went on), with the error.
    pub failures: Vec<(String, InvokeError)>,
}

/// One export call.
enum Op<'a> {
    Describe,
    OnEvent(contract::latest::hearth::plugin::types::Event),
    ValidateConfig(&'a str),
    Invoke {
        tool: &'a str,
        arguments: &'a str,
        ctx: contract::latest::hearth::plugin::types::CallContext,
    },
}

/// What an export returned.
enum OpResult {
    Describe(contract::latest::hearth::plugin::types::Description),
    Event(contract::latest::hearth::plugin::types::EventOutcome),
    Validated(Result<(), String>),
    Invoked(Result<String, ToolError>),
}

impl Inner {
    pub(crate) fn active(&self, namespace: &str) -> Option<Arc<LoadedPlugin>> {
        let active = self.active.read().unwrap_or_else(|p| p.into_inner());
        active.get(namespace).cloned()
    }

    /// Notes a change of the active set; called with `active`, the new set,
    /// still write-locked, so generations follow the order of the changes.
    /// Returns what to announce, if any active plugin observes `activated`.
    fn activation_changed(&self, active: &BTreeMap<String, Arc<LoadedPlugin>>) -> Announcement {
        let generation = self.activations.fetch_add(1, Ordering::AcqRel) + 1;
        let observes = |p: &Arc<LoadedPlugin>| p.events.contains(&EventKind::Activated);
        Announcement {
            generation,
            // Only a set with observers is copied (a map of pointers).
            set: active.values().any(observes).then(|| active.clone()),
        }
    }

    /// Sends `activated` to each observer in `announcement`'s set, each in
    /// a task of its own, and returns at once (see
    /// [`Runtime::replace_active`]).
    fn announce_activation(self: &Arc<Self>, announcement: Announcement) {
        let Announcement {
            generation,
            set: Some(set),
        } = announcement
        else {
            return;
        };
        let Ok(tokio) = tokio::runtime::Handle::try_current() else {
            // Activation itself never waits on an observer, so there is no
            // thread to run the hooks on outside a runtime.
            tracing::info!(
                "the active set changed outside a tokio runtime: `activated` was not sent"
            );
            return;
        };
        for plugin in set
            .values()
            .filter(|p| p.events.contains(&EventKind::Activated))
        {
            let payload = activated_payload(plugin, &set);
            let (inner, plugin) = (self.clone(), plugin.clone());
            tokio.spawn(async move { inner.deliver_activated(plugin, payload, generation).await });
        }
    }

    /// Runs one observer's `activated` hook, unless a newer set has
    /// replaced the one it announces (that set's own announcement follows).
    async fn deliver_activated(
        self: Arc<Self>,
        plugin: Arc<LoadedPlugin>,
        payload: String,
        generation: u64,
    ) {
        let namespace = plugin.manifest.namespace.as_str();
        let current = self.activations.load(Ordering::Acquire) == generation
            && self
                .active(namespace)
                .is_some_and(|a| Arc::ptr_eq(&a, &plugin));
        if !current {
            tracing::debug!(
                plugin = namespace,
                "`activated` not sent: a newer active set superseded it"
            );
            return;
        }
        use contract::latest::hearth::plugin::types::{Event, EventOutcome};
        let event = Event {
            kind: EventKind::Activated,
            payload,
        };
        match self
            .run(
                &plugin,
                CallScope::internal("activated"),
                Op::OnEvent(event),
            )
            .await
        {
            Ok(OpResult::Event(EventOutcome::Proceed)) => {}
            Ok(OpResult::Event(EventOutcome::Modify(_) | EventOutcome::Veto(_))) => {
                tracing::debug!(
                    plugin = namespace,
                    "ignored the answer to `activated`: an activation cannot be changed or refused"
                );
            }
            Ok(_) => unreachable!("on-event returns an outcome"),
            // info, like a failed tool call: the plugin's failure, reported
            // for its author; activation went ahead regardless.
            Err(e) => tracing::info!(plugin = namespace, "the `activated` hook failed: {e}"),
        }
    }

    /// Drops the spare instances of the namespaces `which` picks (the
    /// plugins they belong to are leaving the active set).
    fn drop_spares(&self, which: impl Fn(&str) -> bool) {
        let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<SpareSlot> = {
            let names: Vec<String> = spares.keys().filter(|ns| which(ns)).cloned().collect();
            names.iter().filter_map(|ns| spares.remove(ns)).collect()
        };
        drop(spares);
        drop(gone);
    }

    fn new_store(
        self: &Arc<Self>,
        plugin: &Arc<LoadedPlugin>,
        scope: CallScope,
        limit: Duration,
    ) -> Store<HostState> {
        let stdout = CappedOutput::default();
        let stderr = CappedOutput::default();
        // Nothing inherited: no env, no args, no preopened directories, no
        // sockets, no host stdio.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .max_random_size(MAX_RANDOM_BYTES)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut http = wasmtime_wasi_http::WasiHttpCtx::new();
        http.set_field_size_limit(MAX_HTTP_FIELDS);
        let permissions = &plugin.manifest.permissions;
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let state = HostState {
            wasi,
            http,
            http_policy: plugin.http_policy.clone(),
            table,
            limiter: Limiter::new(
                plugin.budget_key.clone(),
                permissions.memory_bytes,
                MAX_TABLE_ELEMENTS,
                self.budget.clone(),
            ),
            stdout,
            stderr,
            plugin: plugin.clone(),
            runtime: Arc::downgrade(self),
            kv: permissions
                .kv
                .then(|| self.kv.begin(plugin.manifest.namespace.as_str())),
            scope,
            logs_written: 0,
            logs_dropped: 0,
            llm_tokens_left: permissions.llm_tokens,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        arm_deadline(&mut store, limit);
        store.set_hostcall_fuel(self.options.hostcall_fuel);
        store.set_max_component_handles(MAX_HANDLES);
        store
    }

    /// Runs one export on a fresh instance of `plugin` under every limit,
    /// then logs captured output, commits key-value writes if the call
    /// returned normally, and drops the store. Load-time exports run under
    /// [`LOAD_CALL_LIMIT`] (or the plugin's own limit if shorter).
    async fn run(
        self: &Arc<Self>,
        plugin: &Arc<LoadedPlugin>,
        scope: CallScope,
        op: Op<'_>,
    ) -> Result<OpResult, InvokeError> {
        let limit = match op {
            Op::Describe | Op::ValidateConfig(_) => {
                LOAD_CALL_LIMIT.min(plugin.manifest.permissions.time_limit)
            }
            Op::OnEvent(_) | Op::Invoke { .. } => plugin.manifest.permissions.time_limit,
        };
        // Calls (not load-time questions) may use a spare instance.
        let hot = matches!(op, Op::OnEvent(_) | Op::Invoke { .. });
        let (mut store, spare_bindings) = match hot.then(|| self.take_spare(plugin)).flatten() {
            Some(spare) => {
                let Spare {
                    mut store,
                    bindings,
                } = *spare;
                self.ready_spare(plugin, &mut store, scope, limit);
                (store, Some(bindings))
            }
            None => (self.new_store(plugin, scope, limit), None),
        };
        let started = Instant::now();
        let outcome = {
            let store = &mut store;
            let call = async move {
                let bindings = match spare_bindings {
                    Some(bindings) => bindings,
                    None => {
                        let bindings = plugin.pre.instantiate_async(&mut *store).await?;
                        if hot {
                            plugin.spares.measured(started.elapsed());
                        }
                        bindings
                    }
                };
                let guest = bindings.hearth_plugin_guest();
                wasmtime::Result::Ok(match op {
                    Op::Describe => OpResult::Describe(guest.call_describe(&mut *store).await?),
                    Op::OnEvent(event) => {
                        OpResult::Event(guest.call_on_event(&mut *store, &event).await?)
                    }
                    Op::ValidateConfig(config) => {
                        OpResult::Validated(guest.call_validate_config(&mut *store, config).await?)
                    }
                    Op::Invoke {
                        tool,
                        arguments,
                        ctx,
                    } => OpResult::Invoked(
                        guest
                            .call_invoke(&mut *store, tool, arguments, &ctx)
                            .await?,
                    ),
                })
            };
            tokio::time::timeout(limit + WALL_CLOCK_GRACE, call).await
        };
        let stderr_tail = self.flush_output(plugin, &mut store);
        let kv_txn = store.data_mut().kv.take();
        let result = match outcome {
            Err(_) => Err(InvokeError::Timeout {
                plugin: plugin.manifest.namespace.to_string(),
                limit,
                blocked: true,
            }),
            Ok(Err(trap)) => Err(match self.classify(plugin, &store, trap) {
                InvokeError::Trap { plugin, message } if !stderr_tail.is_empty() => {
                    InvokeError::Trap {
                        plugin,
                        // The guest's own account first (a Python traceback,
                        // a Rust panic message): it says what went wrong,
                        // and a long wasm backtrace after it must not bury it.
                        message: format!("{stderr_tail}\n{message}"),
                    }
                }
                other => other,
            }),
            Ok(Ok(value)) => Ok(value),
        };
        if hot && self.refill(plugin) {
            // Tearing an instance down resets the pages it dirtied; for a
            // plugin slow enough to keep a spare that is worth doing off
            // the caller's path too.
            tokio::task::spawn_blocking(move || drop(store));
        } else {
            drop(store);
        }
        match result {
            Err(e) => Err(e),
            Ok(value) => {
                tracing::trace!(plugin = %plugin.manifest.namespace, elapsed = ?started.elapsed(), "call finished");
                if let Some(txn) = kv_txn
                    && !txn.is_empty()
                {
                    tokio::task::spawn_blocking(move || txn.commit())
                        .await
                        .map_err(|e| InvokeError::Host {
                            plugin: plugin.manifest.namespace.to_string(),
                            message: e.to_string(),
                        })?
                        .map_err(|e| match e {
                            // Concurrent calls filled the namespace first:
                            // the plugin's doing, so the caller is told as
                            // for any other tool failure.
                            kv::KvError::QuotaExceeded(m) => InvokeError::Tool(ToolError::Failed(
                                format!("its key-value writes were not saved: {m}"),
                            )),
                            e => InvokeError::Host {
                                plugin: plugin.manifest.namespace.to_string(),
                                message: format!("saving its key-value writes failed: {e:?}"),
                            },
                        })?;
                }
                Ok(value)
            }
        }
    }

    /// Takes the spare instance of `plugin`, if one is ready.
    fn take_spare(&self, plugin: &Arc<LoadedPlugin>) -> Option<Box<Spare>> {
        let ns = plugin.manifest.namespace.as_str();
        let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        match spares.get(ns) {
            Some(SpareSlot::Ready(spare)) if Arc::ptr_eq(&spare.store.data().plugin, plugin) => {}
            _ => return None,
        }
        match spares.remove(ns) {
            Some(SpareSlot::Ready(spare)) => Some(spare),
            _ => None,
        }
    }

    /// Makes a spare serve a call: the call's scope, a key-value
    /// transaction of its own (anything the guest wrote while being
    /// instantiated, with no caller, is dropped, never committed by the
    /// call), and the call's deadline and host-call fuel.
    fn ready_spare(
        &self,
        plugin: &LoadedPlugin,
        store: &mut Store<HostState>,
        scope: CallScope,
        limit: Duration,
    ) {
        let state = store.data_mut();
        state.scope = scope;
        state.kv = plugin
            .manifest
            .permissions
            .kv
            .then(|| self.kv.begin(plugin.manifest.namespace.as_str()));
        arm_deadline(store, limit);
        store.set_hostcall_fuel(self.options.hostcall_fuel);
    }

    /// Starts making a spare instance of `plugin` in the background if it
    /// is slow to instantiate, active, and has none ready or on the way.
    /// Returns whether the plugin keeps spares.
    fn refill(self: &Arc<Self>, plugin: &Arc<LoadedPlugin>) -> bool {
        if !plugin.spares.worth_it(self.options.spare_after) {
            return false;
        }
        let ns = plugin.manifest.namespace.to_string();
        if !self.active(&ns).is_some_and(|a| Arc::ptr_eq(&a, plugin)) {
            return true;
        }
        let stale = {
            let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            match spares.get(&ns) {
                Some(SpareSlot::Filling) => return true,
                Some(SpareSlot::Ready(spare))
                    if Arc::ptr_eq(&spare.store.data().plugin, plugin) =>
                {
                    return true;
                }
                _ => spares.insert(ns.clone(), SpareSlot::Filling),
            }
        };
        drop(stale);
        let (inner, plugin) = (self.clone(), plugin.clone());
        tokio::spawn(async move {
            // Whatever the guest runs while instantiating runs under the
            // load-time limit, with no caller: it can reach no more than
            // on the call path.
            let limit = LOAD_CALL_LIMIT.min(plugin.manifest.permissions.time_limit);
            let mut store = inner.new_store(&plugin, CallScope::internal("spare"), limit);
            let made = tokio::time::timeout(
                limit + WALL_CLOCK_GRACE,
                plugin.pre.instantiate_async(&mut store),
            )
            .await;
            let _ = inner.flush_output(&plugin, &mut store);
            let still_active = inner
                .active(plugin.manifest.namespace.as_str())
                .is_some_and(|a| Arc::ptr_eq(&a, &plugin));
            let mut spares = inner.spares.lock().unwrap_or_else(|p| p.into_inner());
            let replaced = match made {
                Ok(Ok(bindings)) if still_active => {
                    spares.insert(ns, SpareSlot::Ready(Box::new(Spare { store, bindings })))
                }
                Ok(Ok(_)) => spares.remove(&ns),
                _ => {
                    // Failures are reported where someone is waiting: on
                    // the call path, which this plugin now always takes.
                    tracing::debug!(plugin = %ns, "making a spare instance failed; calls instantiate inline");
                    plugin.spares.disabled.store(true, Ordering::Relaxed);
                    spares.remove(&ns)
                }
            };
            drop(spares);
            drop(replaced);
        });
        true
    }

    /// Logs what the guest printed; returns the end of its stderr, which
    /// usually explains a trap (a Rust guest prints its panic message there).
    fn flush_output(&self, plugin: &LoadedPlugin, store: &mut Store<HostState>) -> String {
        let state = store.data_mut();
        let ns = plugin.manifest.namespace.as_str();
        let mut tail = String::new();
        for (stream, captured) in [
            ("stdout", state.stdout.take()),
            ("stderr", state.stderr.take()),
        ] {
            if captured.bytes.is_empty() {
                continue;
            }
            let text = sanitize(
                &String::from_utf8_lossy(&captured.bytes),
                state::MAX_CAPTURED_OUTPUT,
            );
            tracing::info!(
                plugin = ns,
                stream,
                dropped_bytes = captured.dropped,
                "{text}"
            );
            if stream == "stderr" {
                let start = text.len().saturating_sub(1024);
                let start = (start..text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(text.len());
                tail = text[start..].trim().to_string();
            }
        }
        if state.logs_dropped > 0 {
            tracing::warn!(
                plugin = ns,
                "dropped {} log records past the limit of {}",
                state.logs_dropped,
                state::MAX_LOG_RECORDS
            );
        }
        tail
    }

    fn classify(
        &self,
        plugin: &LoadedPlugin,
        store: &Store<HostState>,
        error: wasmtime::Error,
    ) -> InvokeError {
        let name = plugin.manifest.namespace.to_string();
        let limiter = &store.data().limiter;
        if let Some(wanted) = limiter.memory_refused
            && let Some(refusal) = limiter.budget_refused
        {
            return InvokeError::HostMemoryBudget {
                plugin: name,
                wanted,
                budget: limiter.budget.limit(),
                share: refusal == state::Refusal::PluginShare,
            };
        }
        if let Some(wanted) = limiter.memory_refused {
            return InvokeError::MemoryLimit {
                plugin: name,
                wanted,
                limit: limiter.memory_bytes,
            };
        }
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => InvokeError::Timeout {
                plugin: name,
                limit: plugin.manifest.permissions.time_limit,
                blocked: false,
            },
            Some(wasmtime::Trap::StackOverflow) => InvokeError::StackOverflow { plugin: name },
            _ => InvokeError::Trap {
                plugin: name,
                message: sanitize(&format!("{error:#}"), 2048),
            },
        }
    }

    fn check_output(&self, plugin: &LoadedPlugin, out: String) -> Result<String, InvokeError> {
        if out.len() > self.options.max_output_bytes {
            return Err(InvokeError::OutputTooLarge {
                plugin: plugin.manifest.namespace.to_string(),
                size: out.len(),
                limit: self.options.max_output_bytes,
            });
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&out) {
            return Err(InvokeError::OutputNotJson {
                plugin: plugin.manifest.namespace.to_string(),
                message: e.to_string(),
            });
        }
        Ok(out)
    }

    pub(crate) fn invoke<'a>(
        self: &'a Arc<Self>,
        plugin: &'a Arc<LoadedPlugin>,
        tool: &'a str,
        arguments: &'a str,
        scope: CallScope,
    ) -> Pin<Box<dyn Future<Output = Result<String, InvokeError>> + Send + 'a>> {
        let span = tracing::info_span!("plugin", namespace = %plugin.manifest.namespace, tool);
        Box::pin(
            async move {
                let started = Instant::now();
                let result = self.invoke_checked(plugin, tool, arguments, scope).await;
                let micros = started.elapsed().as_micros() as u64;
                match &result {
                    Ok(out) => tracing::debug!(micros, bytes = out.len(), "plugin call"),
                    // info, not warn: the caller reports the error itself (a one-shot
                    // command prints it once), and a server logs hearth at info.
                    Err(e) => tracing::info!(micros, error = %e, "plugin call failed"),
                }
                result
            }
            .instrument(span),
        )
    }

    async fn invoke_checked(
        self: &Arc<Self>,
        plugin: &Arc<LoadedPlugin>,
        tool: &str,
        arguments: &str,
        scope: CallScope,
    ) -> Result<String, InvokeError> {
        let Some(info) = plugin.tools.iter().find(|t| t.name == tool) else {
            return Err(InvokeError::NoSuchTool {
                plugin: plugin.manifest.namespace.to_string(),
                tool: tool.to_string(),
            });
        };
        if arguments.len() > self.options.max_input_bytes {
            return Err(InvokeError::BadArguments(format!(
                "arguments are {} bytes; the limit is {}",
                arguments.len(),
                self.options.max_input_bytes
            )));
        }
        if arguments.len() <= INLINE_CHECK_BYTES {
            info.check_arguments(arguments)
                .map_err(InvokeError::BadArguments)?;
        } else {
            // Checking grows with the arguments (up to the input cap) times
            // the schema's bounded cost: large ones are checked on a
            // blocking thread, never on the async workers.
            let (info, owned) = (info.clone(), arguments.to_string());
            tokio::task::spawn_blocking(move || info.check_arguments(&owned))
                .await
                .map_err(|e| InvokeError::Host {
                    plugin: plugin.manifest.namespace.to_string(),
                    message: format!("checking the arguments failed: {e}"),
                })?
                .map_err(InvokeError::BadArguments)?;
        }
        let ctx = wit_context(&scope);
        // The store knows which tool it runs, so a call this tool makes to
        // another plugin names it (`namespace.tool`) as the caller.
        let scope = CallScope {
            tool: Some(tool.to_string()),
            ..scope
        };
        let OpResult::Invoked(result) = self
            .run(
                plugin,
                scope,
                Op::Invoke {
                    tool,
                    arguments,
                    ctx,
                },
            )
            .await?
        else {
            unreachable!("invoke returns an invoke result")
        };
        let out = result.map_err(|e| InvokeError::Tool(bound_tool_error(e)))?;
        self.check_output(plugin, out)
    }
}

/// A guest's tool error made safe to carry: its message cut to
/// [`MAX_TOOL_ERROR_BYTES`] and stripped of anything that could drive a
/// terminal, before it reaches a client, a log, a caller or the model.
fn bound_tool_error(error: ToolError) -> ToolError {
    let bound = |m: String| sanitize(&m, MAX_TOOL_ERROR_BYTES);
    match error {
        ToolError::InvalidArguments(m) => ToolError::InvalidArguments(bound(m)),
        ToolError::UnknownTool(m) => ToolError::UnknownTool(bound(m)),
        ToolError::Failed(m) => ToolError::Failed(bound(m)),
        ToolError::Unavailable(m) => ToolError::Unavailable(bound(m)),
        ToolError::Denied(m) => ToolError::Denied(bound(m)),
    }
}
