//! `hearth plugin …`: list, check, graph, install, update, remove, enable,
//! disable, new, build, dev and invoke.

use super::args::PluginCommand;
use super::render::{
    json_for_terminal, one_line, render_check, render_invoke_error, render_list, shown,
};
use super::serve::runtime_options;
use crate::home::Home;
use crate::manager::{self, ActiveSet, install, registry};
use crate::plugins::{CallScope, Runtime};
use anyhow::{Context, bail};
use std::io::Write;
use std::path::PathBuf;

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

/// Runs a `hearth plugin` command; returns the process exit code.
pub(super) async fn plugin(home: Home, command: PluginCommand) -> anyhow::Result<i32> {
    match command {
        PluginCommand::List { format } => {
            let (runtime, set) = active_set(&home, None).await?;
            print!("{}", render_list(&runtime, &set.loaded, format)?);
            for problem in &set.resolution.problems {
                eprintln!("warning: {}", one_line(&problem.to_string()));
            }
            Ok(0)
        }
        PluginCommand::New { name, lang, dir } => {
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
        PluginCommand::Build { dir } => {
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
        PluginCommand::Dev {
            dir,
            replace_bundled,
            yes,
        } => {
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
        PluginCommand::Invoke { tool, args } => {
            let Some((namespace, _)) = tool.split_once('.') else {
                bail!("`{tool}` is not a qualified tool name; use namespace.tool, e.g. calc.eval");
            };
            serde_json::from_str::<serde_json::Value>(&args)
                .with_context(|| format!("--args is not valid JSON: {args}"))?;
            // Only the plugin called and its dependencies are loaded.
            let discovery = manager::discover_installed(&home)?;
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
        PluginCommand::Check { dir, format } => {
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
        PluginCommand::Install {
            spec,
            registry,
            allow_unsigned,
            allow_downgrade,
            allow_v1_signatures,
            replace_bundled,
            yes,
        } => {
            let (name, requirement) = install::parse_spec(&spec)?;
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
        PluginCommand::Update {
            namespace,
            allow_unsigned,
            allow_v1_signatures,
            yes,
        } => {
            let lock = manager::store::Store::new(&home).read_lock()?;
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
        PluginCommand::Remove { namespace, force } => {
            let disabled = install::remove(&home, &namespace, force)?;
            println!("removed {namespace}");
            for d in disabled {
                println!("disabled {d}, which depends on it");
            }
            Ok(0)
        }
        PluginCommand::Enable { namespace } => {
            install::set_enabled(&home, &namespace, true)?;
            println!("enabled {namespace}");
            Ok(0)
        }
        PluginCommand::Disable { namespace } => {
            install::set_enabled(&home, &namespace, false)?;
            println!("disabled {namespace}");
            Ok(0)
        }
        PluginCommand::Graph { dir } => {
            let (_runtime, set) = active_set(&home, dir.as_deref()).await?;
            print!("{}", manager::dot(&set.candidates, &set.resolution));
            Ok(0)
        }
    }
}

/// Discovers, loads, resolves and activates the plugin set.
async fn active_set(
    home: &Home,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<(Runtime, ActiveSet)> {
    let discovery = match dir {
        Some(dir) => manager::discover_dir(dir)
            .with_context(|| format!("reading plugins folder {}", dir.display()))?,
        None => manager::discover_installed(home)?,
    };
    let runtime = runtime_for(home)?;
    let set = manager::load_and_activate(&runtime, home, discovery).await;
    Ok((runtime, set))
}
