//! Running a plugin's exports, step 3 of the lifecycle in the [module
//! docs](super): one export on a fresh instance in a new `Store` under every
//! limit (or on a spare instance made ahead of the call), tool calls with
//! their argument and output checks, the classification of what went wrong,
//! the guest's captured output, and [`WarmInstance`] for trusted callers
//! that keep an instance across calls.

use super::contract::latest::Plugin as PluginBindings;
use super::plugin::LoadedPlugin;
use super::runtime::{Inner, Runtime};
use super::state::{self, CappedOutput, HostState, Limiter};
use super::{
    CallScope, InvokeError, LOAD_CALL_LIMIT, MAX_TABLE_ELEMENTS, ToolError, contract, kv, sanitize,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::Instrument;
use wasmtime::Store;
use wasmtime::component::ResourceTable;

/// Slack on top of a plugin's time limit for the wall-clock backstop.
const WALL_CLOCK_GRACE: Duration = Duration::from_millis(200);
/// Live resource handles one store may hold.
const MAX_HANDLES: usize = 4_096;
/// Largest `wasi:random` request served in one call.
const MAX_RANDOM_BYTES: u64 = 1 << 20;
/// Largest header section a plugin may build.
const MAX_HTTP_FIELDS: usize = 64 * 1024;
/// Longest tool error message kept; the rest is cut (the message reaches
/// clients, logs, terminals and the model's context).
pub const MAX_TOOL_ERROR_BYTES: usize = 4096;
/// Arguments up to this size are checked against their schema in place;
/// larger ones on a blocking thread.
const INLINE_CHECK_BYTES: usize = 16 * 1024;

/// One export call.
pub(super) enum Op<'a> {
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
pub(super) enum OpResult {
    Describe(contract::latest::hearth::plugin::types::Description),
    Event(contract::latest::hearth::plugin::types::EventOutcome),
    Validated(Result<(), String>),
    Invoked(Result<String, ToolError>),
}

/// A fresh instance made ahead of a call: never called, used once.
pub(super) struct Spare {
    store: Store<HostState>,
    bindings: PluginBindings,
}

/// What a namespace's spare slot holds.
pub(super) enum SpareSlot {
    /// A spare is being made.
    Filling,
    /// A spare of this plugin (compared by pointer at take time).
    Ready(Box<Spare>),
}

impl Runtime {
    /// Whether a spare instance of `plugin` is ready for its next call.
    pub fn spare_ready(&self, plugin: &Arc<LoadedPlugin>) -> bool {
        let spares = self.inner.spares.lock().unwrap_or_else(|p| p.into_inner());
        matches!(
            spares.get(plugin.manifest.namespace.as_str()),
            Some(SpareSlot::Ready(spare)) if Arc::ptr_eq(&spare.store.data().plugin, plugin)
        )
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

impl Inner {
    /// Drops the spare instances of the namespaces `which` picks (the
    /// plugins they belong to are leaving the active set).
    pub(super) fn drop_spares(&self, which: impl Fn(&str) -> bool) {
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
    pub(super) async fn run(
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

fn wit_context(scope: &CallScope) -> contract::latest::hearth::plugin::types::CallContext {
    contract::latest::hearth::plugin::types::CallContext {
        request_id: scope.request_id.clone(),
        caller: scope.caller.clone(),
        depth: scope.depth,
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
