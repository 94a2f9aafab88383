//! The runtime itself: [`Runtime`] and its shared [`Inner`], the options it
//! starts with ([`RuntimeOptions`], the [`LlmBackend`] behind the `llm`
//! import), the wasmtime engine configuration untrusted code runs under, the
//! epoch ticker, the linker with every host capability, and the accessors
//! of what the runtime owns (engine, memory budget, key-value usage,
//! component cache). Step 1 of the lifecycle in the [module docs](super).

use super::cache::ComponentCache;
use super::call::SpareSlot;
use super::contract::latest::Plugin as PluginBindings;
use super::kv::{self, KvStore};
use super::plugin::LoadedPlugin;
use super::state::{self, HostState};
use super::{
    Completion, EPOCH_TICK, LlmError, LlmRequest, MAX_TABLE_ELEMENTS, SPARE_AFTER, manifest,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Bytes of each pooled memory kept resident between instances.
const KEEP_RESIDENT: usize = 8 << 20;

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
    /// A Redis server (`redis://host:port/db`) holding the key-value data
    /// instead of `kv_path`, shared by every hearth naming it.
    pub kv_redis: Option<String>,
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
    /// see [`compile::worker_main`](super::compile::worker_main)): a child process under
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
            kv_redis: None,
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

/// `url` with any `user:password@` replaced, for messages.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
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
    /// The Redis server named for the key-value store did not answer.
    #[error("the key-value store at {url}: {reason}")]
    Kv {
        /// The server's URL as given.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

pub(crate) struct Inner {
    pub(super) engine: Engine,
    pub(super) linker: Linker<HostState>,
    pub(super) cache: ComponentCache,
    pub(super) kv: KvStore,
    pub(super) options: RuntimeOptions,
    pub(crate) llm: Option<Arc<dyn LlmBackend>>,
    pub(super) active: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    ticker_stop: Arc<AtomicBool>,
    pub(super) budget: Arc<state::MemoryBudget>,
    /// One permit per compilation allowed at once.
    pub(super) compile_permits: Arc<tokio::sync::Semaphore>,
    /// Spare instances by namespace (see [`SPARE_AFTER`]).
    pub(super) spares: std::sync::Mutex<BTreeMap<String, SpareSlot>>,
    /// Counts changes of the active set by `activate` and
    /// `replace_active`, bumped under the `active` write lock: an
    /// `activated` event still waiting to go out when a newer set replaced
    /// its own is dropped, since the newer set's announcement supersedes it.
    pub(super) activations: AtomicU64,
    /// Bumped after every change of the active set (`activate`,
    /// `replace_active`, `deactivate`), for front ends that tell their
    /// clients when the tools change ([`Runtime::watch_active`]).
    pub(super) active_changes: tokio::sync::watch::Sender<u64>,
    /// Why plugins of the user's set are not active, as the last
    /// resolution of the set said ([`Runtime::set_problems`]).
    pub(super) set_problems: std::sync::Mutex<Vec<String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The plugin runtime. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Runtime {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// The engine configuration untrusted code runs under (see SECURITY notes in
/// the [module docs](super)): Cranelift only, epoch interruption, bounded stacks,
/// every proposal we do not use switched off, and a pooling allocator.
pub(super) fn engine_config() -> Config {
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
        let kv = match &options.kv_redis {
            Some(url) => KvStore::redis(url).map_err(|reason| RuntimeError::Kv {
                url: without_password(url),
                reason,
            })?,
            None => KvStore::open(&options.kv_path),
        };
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
                active_changes: tokio::sync::watch::Sender::new(0),
                set_problems: Default::default(),
            }),
        })
    }

    /// Keeps what the resolution of the set just activated found wrong
    /// (conflicts, missing dependencies, load failures), for the admin
    /// listing.
    pub fn record_set_problems(&self, problems: Vec<String>) {
        *self
            .inner
            .set_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = problems;
    }

    /// The problems of the set last activated.
    pub fn set_problems(&self) -> Vec<String> {
        self.inner
            .set_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
}
