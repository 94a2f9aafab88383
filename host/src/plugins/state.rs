//! Per-call store state and the host side of the capability imports.
//!
//! A [`HostState`] lives exactly as long as one call's `Store`: it holds the
//! empty WASI context, the HTTP policy, the memory limiter, captured output,
//! the call's key-value buffer and its model-token budget. Every import
//! checks its grant again here, even though the load-time import check
//! already refused components that import what they were not granted.

use super::LoadedPlugin;
use super::contract::latest::hearth::plugin::{config, kv, llm, logging, tools, types};
use super::http::HttpPolicy;
use super::kv::KvTxn;
use super::runtime::Inner;
use crate::engine::MAX_BYTES_PER_TOKEN;
use std::sync::{Arc, Mutex, Weak};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Most log records one call may write; later ones are counted and dropped.
pub const MAX_LOG_RECORDS: u32 = 256;
/// Longest log message kept, in bytes.
pub const MAX_LOG_MESSAGE: usize = 4096;
/// Bytes of stdout and of stderr kept per call.
pub const MAX_CAPTURED_OUTPUT: usize = 64 * 1024;
/// Bytes counted per message on top of its text, so a flood of empty
/// messages is bounded too.
const MESSAGE_OVERHEAD_BYTES: usize = 8;
/// Deepest plugin-to-plugin call chain.
pub const MAX_CALL_DEPTH: u32 = 8;

/// The linear memory all concurrent calls of a runtime may hold together.
/// Each store reserves what its memories grow by and gives it back when it
/// is dropped, so the sum of live plugin memories never passes the budget;
/// and no one plugin (all its concurrent calls together) may hold more than
/// half of it, so a plugin flooding the host with calls leaves room for the
/// others. Reservations happen only when a memory is created or grows, so
/// the lock is rarely taken.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_plugin: std::collections::HashMap<Arc<str>, usize>,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// All calls together would pass the budget.
    Host,
    /// This plugin's calls together would pass half of it.
    PluginShare,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> MemoryBudget {
        MemoryBudget {
            limit,
            held: Mutex::new(Held::default()),
        }
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The most one plugin's concurrent calls may hold together.
    pub fn plugin_share(&self) -> usize {
        self.limit / 2
    }

    /// Bytes reserved by live stores.
    pub fn used(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    fn try_reserve(&self, plugin: &Arc<str>, bytes: usize) -> Result<(), Refusal> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mine = held.by_plugin.get(plugin).copied().unwrap_or(0);
        if mine.saturating_add(bytes) > self.plugin_share() {
            return Err(Refusal::PluginShare);
        }
        if held.total.saturating_add(bytes) > self.limit {
            return Err(Refusal::Host);
        }
        held.total += bytes;
        // Every call reserves when its memories are created: the key is the
        // store's shared name, so this allocates nothing per call.
        *held.by_plugin.entry(plugin.clone()).or_default() += bytes;
        Ok(())
    }

    fn release(&self, plugin: &str, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.total = held.total.saturating_sub(bytes);
        if let Some(mine) = held.by_plugin.get_mut(plugin) {
            *mine = mine.saturating_sub(bytes);
            if *mine == 0 {
                held.by_plugin.remove(plugin);
            }
        }
    }
}

/// Limits linear memory and tables of one store, remembering what it refused
/// so a trap can be reported as the limit it really was.
///
/// The memory limit is the plugin's total over all its memories (a
/// component may instantiate several core modules that each define one),
/// and every byte is also reserved from the runtime's [`MemoryBudget`].
#[derive(Debug)]
pub struct Limiter {
    /// Bytes of linear memory the plugin may hold, all memories together.
    pub memory_bytes: usize,
    /// Bytes its memories hold now.
    pub memory_used: usize,
    /// The total a refused growth asked for, if any.
    pub memory_refused: Option<usize>,
    /// Why the host-wide budget refused a growth, if it did.
    pub budget_refused: Option<Refusal>,
    /// The runtime's budget, which this store has reserved `memory_used` of.
    pub budget: Arc<MemoryBudget>,
    /// The plugin whose share of the budget this store uses.
    pub plugin: Arc<str>,
    /// Elements allowed per table.
    pub table_elements: usize,
    /// Whether a table growth was refused.
    pub table_refused: bool,
}

impl Limiter {
    /// A limiter for a plugin allowed `memory_bytes` in all.
    pub fn new(
        plugin: Arc<str>,
        memory_bytes: usize,
        table_elements: usize,
        budget: Arc<MemoryBudget>,
    ) -> Limiter {
        Limiter {
            memory_bytes,
            memory_used: 0,
            memory_refused: None,
            budget_refused: None,
            budget,
            plugin,
            table_elements,
            table_refused: false,
        }
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.budget.release(&self.plugin, self.memory_used);
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    // Called when a memory is created (from 0 to its initial size) and on
    // every growth, so `memory_used` is the sum over all memories.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let added = desired.saturating_sub(current);
        let total = self.memory_used.saturating_add(added);
        if total > self.memory_bytes {
            self.memory_refused = Some(total);
            return Ok(false);
        }
        if let Err(refusal) = self.budget.try_reserve(&self.plugin, added) {
            self.memory_refused = Some(total);
            self.budget_refused = Some(refusal);
            return Ok(false);
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.table_refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        32
    }

    fn tables(&self) -> usize {
        32
    }

    fn memories(&self) -> usize {
        4
    }
}

/// What a guest wrote to stdout or stderr, capped.
#[derive(Debug, Default)]
pub struct Captured {
    /// The first bytes written.
    pub bytes: Vec<u8>,
    /// How many bytes were dropped past the cap.
    pub dropped: u64,
}

/// A stdout/stderr sink that keeps the first [`MAX_CAPTURED_OUTPUT`] bytes
/// and silently drops the rest, so a flood neither grows memory nor kills a
/// plugin that merely prints too much.
#[derive(Debug, Clone, Default)]
pub struct CappedOutput(Arc<Mutex<Captured>>);

impl CappedOutput {
    /// Takes what was captured so far.
    pub fn take(&self) -> Captured {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    // A synchronous stream: writes are a bounded memcpy, so there is no
    // background task per write and a flood costs the guest, not the host.
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }
}

impl CappedOutput {
    fn keep(&self, buf: &[u8]) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_CAPTURED_OUTPUT.saturating_sub(c.bytes.len());
        let kept = room.min(buf.len());
        c.bytes.extend_from_slice(&buf[..kept]);
        c.dropped += (buf.len() - kept) as u64;
    }
}

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::p2::OutputStream for CappedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.keep(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Makes guest text safe for a terminal or log: control characters (C0,
/// DEL and C1, so ANSI and OSC escapes included; not newline and tab) and
/// the invisible format characters that reorder or hide text (see
/// [`is_disguising`](super::manifest::is_disguising)) are shown escaped,
/// and the length is capped.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if out.len() >= max {
            out.push_str("…[truncated]");
            break;
        }
        if super::manifest::is_disguising(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Identifies the call a store serves.
#[derive(Debug, Clone)]
pub struct CallScope {
    /// Request id for logs.
    pub request_id: String,
    /// The calling plugin's tool as `namespace.tool` (`call-context.caller`
    /// in the contract), if a plugin made the call.
    pub caller: Option<String>,
    /// Hops from the original caller.
    pub depth: u32,
    /// The tool this store runs, set by the runtime when a tool call starts
    /// (`None` for `describe`, `validate-config` and event hooks): a tool
    /// call the plugin makes from here names it as its caller.
    pub(crate) tool: Option<String>,
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

    pub(super) fn internal(what: &str) -> CallScope {
        CallScope::new(format!("hearth:{what}"))
    }
}

/// The data of one call's `Store`.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_policy: HttpPolicy,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) stdout: CappedOutput,
    pub(crate) stderr: CappedOutput,
    pub(crate) plugin: Arc<LoadedPlugin>,
    /// Weak, because a spare instance waiting in the runtime holds this
    /// state: a strong reference would keep the runtime alive forever.
    pub(crate) runtime: Weak<Inner>,
    pub(crate) scope: CallScope,
    pub(crate) kv: Option<KvTxn>,
    pub(crate) logs_written: u32,
    pub(crate) logs_dropped: u32,
    pub(crate) llm_tokens_left: u32,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_policy,
        }
    }
}

impl HostState {
    fn namespace(&self) -> &str {
        self.plugin.manifest.namespace.as_str()
    }

    fn kv(&mut self) -> Result<&mut KvTxn, kv::Error> {
        let namespace = self.plugin.manifest.namespace.to_string();
        self.kv.as_mut().ok_or_else(|| {
            kv::Error::Io(format!(
                "plugin `{namespace}` was not granted the key-value store (kv = true)"
            ))
        })
    }
}

impl types::Host for HostState {}

impl logging::Host for HostState {
    async fn log(&mut self, level: logging::Level, message: String) -> wasmtime::Result<()> {
        if self.logs_written >= MAX_LOG_RECORDS {
            self.logs_dropped += 1;
            return Ok(());
        }
        self.logs_written += 1;
        let message = sanitize(&message, MAX_LOG_MESSAGE);
        let plugin = self.namespace();
        let request = self.scope.request_id.as_str();
        match level {
            logging::Level::Trace => tracing::trace!(plugin, request, "{message}"),
            logging::Level::Debug => tracing::debug!(plugin, request, "{message}"),
            logging::Level::Info => tracing::info!(plugin, request, "{message}"),
            logging::Level::Warn => tracing::warn!(plugin, request, "{message}"),
            logging::Level::Error => tracing::error!(plugin, request, "{message}"),
        }
        Ok(())
    }
}

impl config::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.plugin.config.get(&key).map(|v| v.to_string()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<String> {
        Ok(self.plugin.config.to_string())
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::Error>> {
        Ok(self.kv().and_then(|t| t.get(&key)))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        Ok(self.kv().and_then(|t| t.set(&key, value)))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, kv::Error>> {
        Ok(self.kv().and_then(|t| t.delete(&key)))
    }

    async fn list_keys(
        &mut self,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, kv::Error>> {
        Ok(self.kv().and_then(|t| t.list_keys(&prefix)))
    }
}

impl llm::Host for HostState {
    async fn complete(
        &mut self,
        request: llm::Request,
    ) -> wasmtime::Result<Result<llm::Completion, llm::Error>> {
        let granted = self.plugin.manifest.permissions.llm_tokens;
        if granted == 0 {
            return Ok(Err(llm::Error::BudgetExceeded(format!(
                "plugin `{}` was not granted model access (llm-tokens)",
                self.namespace()
            ))));
        }
        if request.max_tokens == 0 {
            return Ok(Err(llm::Error::Invalid(
                "max-tokens must be at least 1".into(),
            )));
        }
        if request.max_tokens > self.llm_tokens_left {
            return Ok(Err(llm::Error::BudgetExceeded(format!(
                "asked for {} tokens but only {} of this call's budget of {granted} are left",
                request.max_tokens, self.llm_tokens_left
            ))));
        }
        // Checked before anything proportional to the prompt is done: no
        // token is longer than MAX_BYTES_PER_TOKEN bytes, so a prompt longer
        // than that many bytes per token left cannot fit the budget.
        let bytes: usize = request
            .messages
            .iter()
            .map(|m| m.role.len() + m.content.len() + MESSAGE_OVERHEAD_BYTES)
            .sum();
        let max_bytes = self.llm_tokens_left as usize * MAX_BYTES_PER_TOKEN;
        if bytes > max_bytes {
            return Ok(Err(llm::Error::BudgetExceeded(format!(
                "the prompt is {bytes} bytes, more than the {max_bytes} bytes that can fit in the {} tokens left of this call's budget",
                self.llm_tokens_left
            ))));
        }
        let Some(backend) = self.runtime.upgrade().and_then(|r| r.llm.clone()) else {
            return Ok(Err(llm::Error::Unavailable(
                "no language model is attached to this host".into(),
            )));
        };
        let budget = self.llm_tokens_left;
        match backend.complete(self.namespace(), request, budget).await {
            Ok(done) => {
                let spent = done.prompt_tokens.saturating_add(done.completion_tokens);
                self.llm_tokens_left = self.llm_tokens_left.saturating_sub(spent);
                Ok(Ok(done))
            }
            Err(e) => Ok(Err(e)),
        }
    }
}

/// What a callee sees as `call-context.caller`: the qualified name
/// (`namespace.tool`) of the calling tool, as the contract documents. A
/// call made outside any tool (from an event hook) has no tool to name, so
/// it carries the namespace alone.
pub(crate) fn caller_name(namespace: &str, tool: Option<&str>) -> String {
    match tool {
        Some(tool) => format!("{namespace}.{tool}"),
        None => namespace.to_string(),
    }
}

impl tools::Host for HostState {
    async fn call(
        &mut self,
        qualified_name: String,
        arguments: String,
    ) -> wasmtime::Result<Result<String, types::ToolError>> {
        let caller = self.namespace().to_string();
        let Some((namespace, tool)) = qualified_name.split_once('.') else {
            return Ok(Err(types::ToolError::InvalidArguments(format!(
                "`{qualified_name}` is not a qualified tool name (namespace.tool)"
            ))));
        };
        let Some(requirement) = self
            .plugin
            .manifest
            .dependencies
            .iter()
            .find(|(ns, _)| ns.as_str() == namespace)
            .map(|(_, req)| req.clone())
        else {
            return Ok(Err(types::ToolError::Denied(format!(
                "plugin `{caller}` does not declare `{namespace}` in [dependencies]"
            ))));
        };
        if self.scope.depth + 1 >= MAX_CALL_DEPTH {
            return Ok(Err(types::ToolError::Failed(format!(
                "plugin call chain deeper than {MAX_CALL_DEPTH}"
            ))));
        }
        let Some(runtime) = self.runtime.upgrade() else {
            return Ok(Err(types::ToolError::Unavailable(
                "the host is shutting down".into(),
            )));
        };
        // Only an active plugin calls tools: `describe` and
        // `validate-config` run before activation, and what a plugin
        // answers there must not depend on what other plugins do. (Compared
        // by digest: a call in flight across a reload of the same component
        // keeps its dependencies.)
        if runtime
            .active(&caller)
            .is_none_or(|a| a.digest != self.plugin.digest)
        {
            return Ok(Err(types::ToolError::Unavailable(format!(
                "plugin `{caller}` is not active yet; it can call tools once it is"
            ))));
        }
        let Some(callee) = runtime.active(namespace) else {
            return Ok(Err(types::ToolError::Unavailable(format!(
                "dependency `{namespace}` is not active"
            ))));
        };
        if !requirement.matches(&callee.manifest.version) {
            return Ok(Err(types::ToolError::Unavailable(format!(
                "dependency `{namespace}` is {} but `{caller}` requires {requirement}",
                callee.manifest.version
            ))));
        }
        let scope = CallScope {
            request_id: self.scope.request_id.clone(),
            caller: Some(caller_name(&caller, self.scope.tool.as_deref())),
            depth: self.scope.depth + 1,
            tool: None,
        };
        let result = Box::pin(runtime.invoke(&callee, tool, &arguments, scope)).await;
        Ok(result.map_err(|e| e.into_tool_error(&qualified_name)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::manifest::is_disguising;
    use super::*;

    #[test]
    fn sanitize_escapes_terminal_controls_and_disguising_characters() {
        let hostile = "\x1b[2J\x1b]0;title\x07\x1b]52;c;aGVsbG8=\x07\u{9b}31m\u{7f}\u{202e}gnp.exe\u{200b}\u{2066}\u{feff}\u{61c}";
        let safe = sanitize(hostile, 1024);
        for c in safe.chars() {
            assert!(
                !c.is_control() && !is_disguising(c),
                "{c:?} passed through: {safe}"
            );
        }
        assert!(safe.contains(r"\u{1b}]52;c;aGVsbG8="), "{safe}");
        assert!(
            safe.contains(r"\u{9b}31m") && safe.contains(r"\u{202e}gnp.exe"),
            "{safe}"
        );
        assert!(
            safe.contains(r"\u{7}") && safe.contains(r"\u{feff}"),
            "{safe}"
        );
        // Ordinary text, newlines, tabs and other scripts are left alone.
        let plain = "line one\n\tcafé — 日本語 עברית";
        assert_eq!(sanitize(plain, 1024), plain);
    }

    #[test]
    fn the_caller_is_the_qualified_name_of_the_calling_tool() {
        assert_eq!(caller_name("notes", Some("save")), "notes.save");
        // An event hook runs no tool: the namespace alone.
        assert_eq!(caller_name("notes", None), "notes");
    }

    #[test]
    fn sanitize_keeps_its_length_cap() {
        let safe = sanitize(&"\u{202e}".repeat(10_000), 100);
        assert!(safe.len() < 100 + 20, "{}", safe.len());
        assert!(safe.ends_with("…[truncated]"));
        assert_eq!(sanitize(&"x".repeat(50), 100), "x".repeat(50));
    }
}
