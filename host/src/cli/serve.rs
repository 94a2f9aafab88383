//! `hearth serve`: its `--config` file, the plugin runtime's options, the
//! served plugin set, and shutdown on a signal.

use super::args::ServeArgs;
use super::generate;
use super::render::one_line;
use crate::home::Home;
use crate::manager::{self, ActiveSet};
use crate::plugins::{Runtime, RuntimeOptions};
use anyhow::{Context, bail};
use std::path::PathBuf;

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
    shutdown_grace: Option<u64>,
    #[serde(default)]
    listen_while_loading: bool,
    kv: Option<String>,
    #[serde(default)]
    mcp_allowed_hosts: Vec<String>,
    /// MCP servers whose tools the model may call.
    #[serde(default)]
    mcp: Vec<crate::mcp::SourceConfig>,
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
        self.shutdown_grace = self.shutdown_grace.or(file.shutdown_grace);
        self.listen_while_loading |= file.listen_while_loading;
        self.kv = self.kv.or(file.kv);
        // Both lists count: the file's names are the standing ones, a flag
        // adds one for this run.
        self.mcp_allowed_hosts.extend(file.mcp_allowed_hosts);
        self.mcp_sources = file.mcp;
        Ok(self)
    }
}

/// The runtime's options for `home`: components compile in a child process
/// of this binary, whose limits `HEARTH_COMPILE_TIMEOUT_MS` and
/// `HEARTH_COMPILE_MEMORY_MB` override.
pub(super) fn runtime_options(home: &Home) -> anyhow::Result<RuntimeOptions> {
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
    kv_redis: Option<String>,
) -> anyhow::Result<(Runtime, ActiveSet)> {
    let discovery = manager::discover_installed(home)?;
    let mut options = runtime_options(home)?;
    options.llm = Some(llm);
    options.kv_redis = kv_redis;
    let runtime = Runtime::new(options)?;
    let set = manager::load_and_activate(&runtime, home, discovery).await;
    Ok((runtime, set))
}

pub(super) async fn serve(home: Home, args: ServeArgs) -> anyhow::Result<i32> {
    let ServeArgs {
        addr,
        model,
        api_keys,
        admin_keys,
        insecure_no_auth,
        queue,
        parallel,
        shutdown_grace,
        listen_while_loading,
        kv,
        mcp_allowed_hosts,
        mcp_sources,
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
    // Checked before the model loads, so a typo fails at once.
    let mcp_hosts = crate::mcp::AllowedHosts::new(addr, &mcp_allowed_hosts)?;
    let parallel = parallel.unwrap_or(8);
    if parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let loading_what = model.model.as_ref().map_or_else(
        || "the default model".to_string(),
        |p| p.display().to_string(),
    );
    // With --listen-while-loading the port opens first: while the model is
    // pulled and loaded (minutes on a first start), probes get honest
    // answers (`/healthz` 200, `/readyz` 503) instead of a refused
    // connection. Otherwise it opens once the model is in.
    let loading = if listen_while_loading {
        let loading = crate::server::Loading::start(
            bind(addr).await?,
            loading_what.clone(),
            crate::server::ServerOptions::default().header_timeout,
        );
        tracing::info!(
            addr = %loading.local_addr()?,
            model = %loading_what,
            "loading the model; /readyz answers 503 until it is in"
        );
        Some(loading)
    } else {
        tracing::info!(
            model = %loading_what,
            "loading the model; the port opens once it is in"
        );
        None
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let model_home = home.clone();
    let started = std::time::Instant::now();
    let load = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let path = generate::resolve_model(&model_home, &model)?;
        let options = crate::engine::EngineOptions {
            parallel: Some(parallel),
            ..model.options(&model_home)
        };
        let engine = crate::engine::Engine::load(&path, &options)?;
        Ok((path, engine))
    });
    let (path, engine) = tokio::select! {
        loaded = load => match loaded? {
            Ok(loaded) => loaded,
            Err(e) => {
                if let Some(loading) = loading {
                    drop(loading.finish().await);
                }
                return Err(e.context("loading the model"));
            }
        },
        () = &mut shutdown => {
            tracing::info!("stopped while loading the model");
            return Ok(0);
        }
    };
    tracing::info!(
        model = %path.display(),
        load_s = started.elapsed().as_secs_f64(),
        "model loaded"
    );
    let scheduler = crate::scheduler::Scheduler::new(
        engine,
        crate::scheduler::SchedulerOptions {
            capacity: queue.unwrap_or(64),
            parallel: None,
        },
    );
    let (runtime, set) = serving_plugins(&home, std::sync::Arc::new(scheduler.clone()), kv).await?;
    for problem in &set.resolution.problems {
        tracing::warn!("{}", one_line(&problem.to_string()));
    }
    tracing::info!(
        plugins = %set.resolution.order.join(", "),
        "plugins active"
    );
    let mcp_sources = connect_mcp_sources(mcp_sources, &set).await?;
    // Installs, removals, enables and disables made beside this server (by
    // `hearth plugin …`, or by another replica sharing the data directory
    // through its admin routes) reach it within a couple of seconds.
    manager::watch_installed(
        runtime.clone(),
        home.clone(),
        std::time::Duration::from_secs(2),
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
    let state = std::sync::Arc::new(
        crate::server::AppState::new(scheduler, model_id.clone(), options)
            .with_plugins(runtime)
            .with_mcp_sources(mcp_sources)
            .with_mcp(mcp_hosts)
            .with_home(home),
    );
    let listener = match loading {
        Some(loading) => loading.finish().await,
        None => bind(addr).await?,
    };
    let local = listener.local_addr()?;
    // Scripts read the address from this line: its first URL, which ends
    // it (no fields follow the message in the text format).
    tracing::info!("serving {model_id} at http://{local}/v1");
    tracing::info!("MCP (the plugins' tools) at http://{local}/mcp");
    crate::server::serve(
        listener,
        state,
        shutdown,
        std::time::Duration::from_secs(shutdown_grace.unwrap_or(30)),
    )
    .await?;
    tracing::info!("stopped");
    Ok(0)
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// Connects to the `[[mcp]]` servers, refusing a prefix that is an active
/// plugin's namespace (names must say who runs a tool), and says which
/// tools each offers.
async fn connect_mcp_sources(
    entries: Vec<crate::mcp::SourceConfig>,
    set: &ActiveSet,
) -> anyhow::Result<crate::mcp::McpSources> {
    if entries.is_empty() {
        return Ok(Default::default());
    }
    for entry in &entries {
        if set.resolution.order.iter().any(|ns| ns == &entry.prefix) {
            bail!(
                "[[mcp]] entry `{}`: the prefix is the namespace of an installed plugin; choose another",
                entry.prefix
            );
        }
    }
    let http = crate::http_client::Client::new(crate::http_client::Options {
        connect_timeout: std::time::Duration::from_secs(10),
        // Calls have their own timeouts; change notifications arrive on
        // streams that stay open.
        total_timeout: None,
        idle_timeout: None,
        follow_redirects: false,
    })?;
    let sources = crate::mcp::McpSources::connect(entries, http.reqwest()).await?;
    let tools = sources.tools();
    for (prefix, url) in sources.describe() {
        let names: Vec<&str> = tools
            .iter()
            .filter(|t| t.name.split_once('.').is_some_and(|(ns, _)| ns == prefix))
            .map(|t| t.name.as_str())
            .collect();
        tracing::info!(
            prefix,
            %url,
            tools = %if names.is_empty() {
                "none yet".to_string()
            } else {
                names.join(", ")
            },
            "MCP server"
        );
    }
    Ok(sources)
}

/// `hearth health`: 0 when `GET /readyz` at `addr` answers 200, else 1
/// with the status line or the connection error on stderr.
pub(super) fn health(
    addr: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> anyhow::Result<i32> {
    use std::io::{Read, Write};
    let check = || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut answer = Vec::new();
        // The status line and a little of the body are enough.
        stream.take(4096).read_to_end(&mut answer)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    match check() {
        Ok(answer) if answer.starts_with("HTTP/1.1 200") => Ok(0),
        Ok(answer) => {
            let status = answer.lines().next().unwrap_or("no answer");
            eprintln!("hearth: {addr} is not ready: {}", one_line(status));
            Ok(1)
        }
        Err(e) => {
            eprintln!("hearth: {addr}: {e}");
            Ok(1)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(super) async fn shutdown_signal() {
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
