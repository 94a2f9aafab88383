//! Errors of loading and invoking plugins.

use super::contract::Capability;
use super::contract::latest::hearth::plugin::types::ToolError;
use std::time::Duration;

/// Why a component could not be loaded. Nothing was activated.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component file is larger than the host accepts.
    #[error("component is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// Exports no `hearth:plugin/guest` interface, or its version stamp
    /// disagrees with the interface it exports.
    #[error("component is not a hearth plugin: {0}")]
    NotAPlugin(String),
    /// Built against a contract this host does not speak.
    #[error("component was built against an unsupported contract: {0}")]
    UnsupportedContract(String),
    /// Manifest and component disagree on the contract.
    #[error("plugin.toml says contract {manifest} but the component was built against {component}")]
    ContractMismatch {
        /// From the manifest.
        manifest: semver::Version,
        /// From the stamp.
        component: semver::Version,
    },
    /// Imports capabilities the manifest does not ask for; every one is
    /// listed.
    #[error(
        "component imports what plugin `{plugin}` was not granted: {}; grant {} in plugin.toml, \
         or build the component without {} (a world that imports only what the plugin uses)",
        missing.iter().map(|(i, c)| format!("`{i}` (needs {})", c.manifest_setting())).collect::<Vec<_>>().join(", "),
        if missing.len() == 1 { "it" } else { "them" },
        if missing.len() == 1 { "that import" } else { "those imports" },
    )]
    NotGranted {
        /// The plugin.
        plugin: String,
        /// Each import not granted, with the capability it needs.
        missing: Vec<(String, Capability)>,
    },
    /// Imports something this host does not provide.
    #[error("component imports `{import}`, which this host does not provide")]
    UnknownImport {
        /// The import.
        import: String,
    },
    /// Does not export the guest interface the contract requires.
    #[error("component does not implement the hearth:plugin world: {0}")]
    BadExports(String),
    /// Observes conversations without the permission to.
    #[error(
        "plugin `{plugin}` observes `{event}`, which shows it every prompt and answer, \
         but was not granted that; it needs [permissions] conversation = \"read\" (or \"modify\" to change them) in plugin.toml"
    )]
    ConversationNotGranted {
        /// The plugin.
        plugin: String,
        /// The event it asked for.
        event: &'static str,
    },
    /// `describe` answered with more than the host accepts.
    #[error("its description of itself is refused: {0}")]
    Describe(String),
    /// Cranelift failed.
    #[error("compiling the component failed: {0}")]
    Compile(String),
    /// Compilation ran past its watchdog.
    #[error("compiling the component took longer than {0:?}; it is refused")]
    CompileTimeout(Duration),
    /// The component exceeds a structural limit checked before compiling
    /// (see [`super::compile::precheck`]).
    #[error("component refused before compiling: {0}")]
    TooComplex(super::compile::PrecheckError),
    /// The compile worker ran out of the memory it may use.
    #[error("compiling needed more than {limit_mib} MiB; the component is refused ({detail})")]
    CompileMemory {
        /// The worker's memory cap, in MiB.
        limit_mib: u64,
        /// What the worker reported.
        detail: String,
    },
    /// `describe` or `validate-config` failed to run.
    #[error("calling `{export}` failed: {error}")]
    Call {
        /// Which export.
        export: &'static str,
        /// What happened.
        error: Box<InvokeError>,
    },
    /// `describe` returned something unusable.
    #[error("tool `{tool}`: {problem}")]
    BadTool {
        /// The tool name.
        tool: String,
        /// What is wrong.
        problem: String,
    },
    /// The plugin rejected its configuration.
    #[error("plugin `{plugin}` rejected its configuration: {message}")]
    Config {
        /// The plugin.
        plugin: String,
        /// Its message.
        message: String,
    },
}

/// A coarse classification of [`InvokeError`], for tests, metrics and exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The plugin returned a tool error.
    Tool,
    /// No such plugin or tool.
    NotFound,
    /// The arguments were refused before the plugin ran.
    BadArguments,
    /// Time limit.
    Timeout,
    /// Memory limit.
    MemoryLimit,
    /// Stack overflow.
    StackOverflow,
    /// Output limit.
    OutputTooLarge,
    /// Any other trap.
    Trap,
    /// The host failed.
    Host,
}

/// Why an invocation failed. The host and every other call are unaffected.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The plugin ran and returned an error.
    #[error("{}", describe_tool_error(.0))]
    Tool(ToolError),
    /// No active plugin with that namespace.
    #[error("no active plugin `{0}`")]
    NoSuchPlugin(String),
    /// The plugin has no such tool.
    #[error("plugin `{plugin}` has no tool `{tool}`")]
    NoSuchTool {
        /// The plugin.
        plugin: String,
        /// The tool asked for.
        tool: String,
    },
    /// The arguments were not acceptable.
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// Ran past its time limit.
    #[error("plugin `{plugin}` ran past its time limit of {limit:?} ({})",
        if *.blocked { "while blocked in a host call" } else { "interrupted while running" })]
    Timeout {
        /// The plugin.
        plugin: String,
        /// Its limit.
        limit: Duration,
        /// Whether it was stopped by the wall-clock backstop while waiting in
        /// a host call, rather than by the epoch deadline while running.
        blocked: bool,
    },
    /// Tried to grow memory past its limit.
    #[error("plugin `{plugin}` tried to grow its memory to {wanted} bytes; its limit is {limit}")]
    MemoryLimit {
        /// The plugin.
        plugin: String,
        /// The size it asked for.
        wanted: usize,
        /// Its limit.
        limit: usize,
    },
    /// A memory growth would have passed the host-wide budget for all
    /// concurrent plugin calls, or this plugin's share of it.
    #[error(
        "plugin `{plugin}` was refused memory (growing this call to {wanted} bytes): {}; try again when the host is less busy",
        if *.share {
            format!("one plugin's concurrent calls together may hold at most half of the {budget} bytes all plugin calls together may hold")
        } else {
            format!("all plugin calls together may hold {budget} bytes")
        }
    )]
    HostMemoryBudget {
        /// The plugin.
        plugin: String,
        /// The call's total it asked for.
        wanted: usize,
        /// The host-wide budget.
        budget: usize,
        /// Whether the plugin's own share (half the budget) was what ran
        /// out, rather than the whole budget.
        share: bool,
    },
    /// Tried something its permissions do not allow.
    #[error("plugin `{plugin}` {message}")]
    Denied {
        /// The plugin.
        plugin: String,
        /// What it was not allowed to do.
        message: String,
    },
    /// Overflowed the wasm stack.
    #[error("plugin `{plugin}` overflowed its stack")]
    StackOverflow {
        /// The plugin.
        plugin: String,
    },
    /// Returned more than the host accepts.
    #[error("plugin `{plugin}` returned {size} bytes; the limit is {limit}")]
    OutputTooLarge {
        /// The plugin.
        plugin: String,
        /// What it returned.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Returned something that is not JSON.
    #[error("plugin `{plugin}` returned invalid JSON: {message}")]
    OutputNotJson {
        /// The plugin.
        plugin: String,
        /// The parser's complaint.
        message: String,
    },
    /// Trapped for another reason.
    #[error("plugin `{plugin}` trapped: {message}")]
    Trap {
        /// The plugin.
        plugin: String,
        /// The trap, with its backtrace when available.
        message: String,
    },
    /// The host itself failed around the call.
    #[error("host error around plugin `{plugin}`: {message}")]
    Host {
        /// The plugin.
        plugin: String,
        /// What failed.
        message: String,
    },
}

/// Text for a guest's tool error.
pub fn describe_tool_error(e: &ToolError) -> String {
    match e {
        ToolError::InvalidArguments(m) => format!("invalid arguments: {m}"),
        ToolError::UnknownTool(m) => format!("unknown tool: {m}"),
        ToolError::Failed(m) => format!("tool failed: {m}"),
        ToolError::Unavailable(m) => format!("unavailable: {m}"),
        ToolError::Denied(m) => format!("denied: {m}"),
    }
}

impl InvokeError {
    /// The coarse kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            InvokeError::Tool(_) => ErrorKind::Tool,
            InvokeError::NoSuchPlugin(_) | InvokeError::NoSuchTool { .. } => ErrorKind::NotFound,
            InvokeError::BadArguments(_) => ErrorKind::BadArguments,
            InvokeError::Timeout { .. } => ErrorKind::Timeout,
            InvokeError::MemoryLimit { .. } | InvokeError::HostMemoryBudget { .. } => {
                ErrorKind::MemoryLimit
            }
            InvokeError::Denied { .. } => ErrorKind::Tool,
            InvokeError::StackOverflow { .. } => ErrorKind::StackOverflow,
            InvokeError::OutputTooLarge { .. } => ErrorKind::OutputTooLarge,
            InvokeError::OutputNotJson { .. } | InvokeError::Trap { .. } => ErrorKind::Trap,
            InvokeError::Host { .. } => ErrorKind::Host,
        }
    }

    /// How a calling plugin sees this failure.
    pub fn into_tool_error(self, qualified: &str) -> ToolError {
        match self {
            InvokeError::Tool(e) => e,
            InvokeError::NoSuchPlugin(_) | InvokeError::NoSuchTool { .. } => {
                ToolError::UnknownTool(format!("{qualified}: {self}"))
            }
            InvokeError::BadArguments(m) => ToolError::InvalidArguments(m),
            InvokeError::Timeout { .. } => ToolError::Unavailable(format!("{qualified}: {self}")),
            other => ToolError::Failed(format!("{qualified}: {other}")),
        }
    }
}
