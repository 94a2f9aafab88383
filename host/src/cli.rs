//! The `hearth` command line.

use crate::bundled::BUNDLED;
use crate::home::Home;
use crate::plugins::{CallScope, LoadedPlugin, Manifest, Runtime, RuntimeOptions};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

/// hearth: a local AI assistant host with sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
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
    /// Invoke a tool and print its JSON result.
    Invoke {
        /// The tool, as namespace.tool (e.g. calc.eval).
        tool: String,
        /// The arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
    },
}

/// Where a plugin came from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// Embedded in this binary.
    Bundled(&'static str),
    /// Installed in the data directory.
    Installed(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Bundled(src) => write!(f, "bundled ({src})"),
            Origin::Installed(dir) => write!(f, "installed ({})", dir.display()),
        }
    }
}

/// A plugin found on disk or in the binary, not yet loaded.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its manifest.
    pub manifest: Manifest,
    /// Where it came from.
    pub origin: Origin,
    wasm: WasmSource,
}

#[derive(Debug, Clone)]
enum WasmSource {
    Static(&'static [u8]),
    File(PathBuf),
}

impl Candidate {
    fn bytes(&self) -> anyhow::Result<std::borrow::Cow<'static, [u8]>> {
        Ok(match &self.wasm {
            WasmSource::Static(b) => std::borrow::Cow::Borrowed(*b),
            WasmSource::File(p) => std::borrow::Cow::Owned(
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            ),
        })
    }
}

/// Finds the bundled plugins and those installed under `home`; an installed
/// plugin replaces a bundled one of the same namespace.
pub fn discover(home: &Home) -> anyhow::Result<BTreeMap<String, Candidate>> {
    let mut found = BTreeMap::new();
    for b in BUNDLED {
        let manifest = Manifest::parse(b.manifest, &format!("{}/plugin.toml", b.source))?;
        found.insert(
            manifest.namespace.to_string(),
            Candidate {
                manifest,
                origin: Origin::Bundled(b.source),
                wasm: WasmSource::Static(b.component),
            },
        );
    }
    let dir = home.plugins_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e.collect::<Result<Vec<_>, _>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry.path();
        if !path.join("plugin.toml").is_file() {
            continue;
        }
        let manifest = Manifest::from_file(&path.join("plugin.toml"))?;
        let namespace = manifest.namespace.to_string();
        if let Some(previous) = found.get(&namespace) {
            tracing::warn!(
                "{} replaces {} for namespace `{namespace}`",
                path.display(),
                previous.origin
            );
        }
        found.insert(
            namespace,
            Candidate {
                manifest,
                origin: Origin::Installed(path.clone()),
                wasm: WasmSource::File(path.join("plugin.wasm")),
            },
        );
    }
    Ok(found)
}

fn user_config(home: &Home, namespace: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let path = home.config_dir().join(format!("{namespace}.toml"));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            Ok(Some(serde_json::to_value(table)?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Loads and activates `wanted` (all when `None`) and, transitively, their
/// dependencies.
pub async fn activate(
    runtime: &Runtime,
    home: &Home,
    candidates: &BTreeMap<String, Candidate>,
    wanted: Option<&str>,
) -> anyhow::Result<Vec<Arc<LoadedPlugin>>> {
    let mut todo: Vec<String> = match wanted {
        Some(ns) => vec![ns.to_string()],
        None => candidates.keys().cloned().collect(),
    };
    let mut needed = BTreeSet::new();
    while let Some(ns) = todo.pop() {
        if !needed.insert(ns.clone()) {
            continue;
        }
        let Some(c) = candidates.get(&ns) else {
            bail!("no plugin provides namespace `{ns}`");
        };
        todo.extend(c.manifest.dependencies.keys().map(|d| d.to_string()));
    }
    let mut loaded = Vec::new();
    for ns in needed {
        let c = &candidates[&ns];
        let config = user_config(home, &ns)?;
        let plugin = runtime
            .load(c.manifest.clone(), &c.bytes()?, config.as_ref())
            .await
            .with_context(|| format!("loading plugin `{ns}` from {}", c.origin))?;
        runtime.activate(plugin.clone());
        loaded.push(plugin);
    }
    Ok(loaded)
}

fn runtime_for(home: &Home) -> anyhow::Result<Runtime> {
    Ok(Runtime::new(RuntimeOptions::in_dir(&home.root))?)
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let home = Home::from_env()?;
    match cli.command {
        Command::Plugin(PluginCommand::List { format }) => {
            let candidates = discover(&home)?;
            let runtime = runtime_for(&home)?;
            let plugins = activate(&runtime, &home, &candidates, None).await?;
            print_list(&plugins, &candidates, format)?;
            Ok(0)
        }
        Command::Plugin(PluginCommand::Invoke { tool, args }) => {
            let Some((namespace, _)) = tool.split_once('.') else {
                bail!("`{tool}` is not a qualified tool name; use namespace.tool, e.g. calc.eval");
            };
            serde_json::from_str::<serde_json::Value>(&args)
                .with_context(|| format!("--args is not valid JSON: {args}"))?;
            let candidates = discover(&home)?;
            if !candidates.contains_key(namespace) {
                bail!(
                    "no plugin provides namespace `{namespace}`; available: {}",
                    candidates.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            let runtime = runtime_for(&home)?;
            activate(&runtime, &home, &candidates, Some(namespace)).await?;
            let request_id = format!("cli-{}", std::process::id());
            match runtime
                .invoke_qualified(&tool, &args, CallScope::new(request_id))
                .await
            {
                Ok(out) => {
                    println!("{out}");
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("error: {tool}: {e}");
                    Ok(1)
                }
            }
        }
    }
}

fn print_list(
    plugins: &[Arc<LoadedPlugin>],
    candidates: &BTreeMap<String, Candidate>,
    format: Format,
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            let list: Vec<serde_json::Value> = plugins
                .iter()
                .map(|p| {
                    let m = &p.manifest;
                    serde_json::json!({
                        "namespace": m.namespace.as_str(),
                        "name": m.name.as_str(),
                        "version": m.version.to_string(),
                        "contract": p.contract.to_string(),
                        "description": m.description,
                        "origin": candidates[m.namespace.as_str()].origin.to_string(),
                        "digest": p.digest,
                        "tools": p.tools.iter().map(|t| serde_json::json!({
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
                        },
                        "dependencies": m.dependencies.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Format::Text => {
            for p in plugins {
                let m = &p.manifest;
                println!(
                    "{} {} — {}\n  from: {}",
                    m.namespace,
                    m.version,
                    m.description,
                    candidates[m.namespace.as_str()].origin
                );
                for t in &p.tools {
                    println!("  tool {}.{}: {}", m.namespace, t.name, t.description);
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
                println!("  permissions: {}", granted.join("; "));
            }
        }
    }
    Ok(())
}
