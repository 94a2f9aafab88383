//! Finding, loading and activating the plugin set.
//!
//! The user's set is the bundled plugins plus those installed in the store:
//! an installed plugin replaces the bundled one of its namespace, and
//! disabled namespaces are left out. `plugin check --dir` looks at a folder
//! of plugin folders instead, where two plugins claiming one namespace
//! clash. Every plugin is validated and loaded (which is side-effect free),
//! the whole set is resolved, and only then is anything activated, in
//! resolution order.

use super::ManagerError;
use super::registry::MAX_COMPONENT_SIZE;
use super::resolve::{Candidate, Problem, Resolution, resolve};
use super::store::Store;
use crate::bundled::BUNDLED;
use crate::home::Home;
use crate::plugins::{LoadedPlugin, Manifest, Runtime};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Embedded in this binary, built from this repository folder.
    Bundled(&'static str),
    /// A folder with `plugin.toml` and `plugin.wasm` (`plugin check --dir`).
    Dir(PathBuf),
    /// Installed from an index into the store.
    Installed {
        /// The index it came from.
        registry: String,
        /// The component in the store.
        component: PathBuf,
        /// Its digest, checked on every read.
        sha256: String,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Bundled(src) => write!(f, "bundled ({src})"),
            Origin::Dir(dir) => write!(f, "{}", dir.display()),
            Origin::Installed { registry, .. } => write!(f, "installed from {registry}"),
        }
    }
}

/// A plugin found, not yet loaded.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its manifest.
    pub manifest: Manifest,
    /// Where it is.
    pub origin: Origin,
    /// The tools and events it described when it was installed; a later
    /// answer must match them.
    pub declared: Option<Declared>,
    /// Its seniority in the set (lower: there first), when known.
    pub rank: Option<u64>,
}

/// What an installed plugin declared at install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// Unqualified tool names.
    pub tools: Vec<String>,
    /// Event names.
    pub events: Vec<String>,
}

impl Declared {
    /// How `plugin`'s answer now differs from what was declared, if it does.
    pub fn differences(&self, plugin: &LoadedPlugin) -> Option<String> {
        use std::collections::BTreeSet;
        let mut out = Vec::new();
        let was: BTreeSet<&str> = self.tools.iter().map(String::as_str).collect();
        let now: BTreeSet<&str> = plugin.tools.iter().map(|t| t.name.as_str()).collect();
        let added: Vec<&str> = now.difference(&was).copied().collect();
        let removed: Vec<&str> = was.difference(&now).copied().collect();
        if !added.is_empty() {
            out.push(format!("new tools {}", added.join(", ")));
        }
        if !removed.is_empty() {
            out.push(format!("tools gone: {}", removed.join(", ")));
        }
        let was: BTreeSet<&str> = self.events.iter().map(String::as_str).collect();
        let now: BTreeSet<&str> = plugin
            .events
            .iter()
            .map(|e| crate::plugins::event_name(*e))
            .collect();
        if was != now {
            out.push(format!(
                "events {} instead of {}",
                now.into_iter().collect::<Vec<_>>().join(", "),
                was.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        (!out.is_empty()).then(|| {
            format!(
                "it describes itself differently than when it was installed ({}); a plugin's tools and events are fixed at install — reinstall it to accept the change",
                out.join("; ")
            )
        })
    }
}

impl Found {
    /// The component bytes.
    pub fn component(&self) -> Result<std::borrow::Cow<'static, [u8]>, String> {
        match &self.origin {
            Origin::Bundled(source) => BUNDLED
                .iter()
                .find(|b| b.source == *source)
                .map(|b| std::borrow::Cow::Borrowed(b.component))
                .ok_or_else(|| format!("no bundled component for {source}")),
            Origin::Dir(dir) => {
                let path = dir.join("plugin.wasm");
                crate::home::read_capped(&path, MAX_COMPONENT_SIZE)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            }
            Origin::Installed {
                component, sha256, ..
            } => crate::home::read_capped(component, MAX_COMPONENT_SIZE)
                .map_err(|e| format!("cannot read {}: {e}", component.display()))
                .and_then(|bytes| {
                    let actual = crate::plugins::cache::sha256_hex(&bytes);
                    if actual == *sha256 {
                        Ok(std::borrow::Cow::Owned(bytes))
                    } else {
                        Err(format!(
                            "{} is corrupt: digest {actual}, installed as {sha256}; reinstall it",
                            component.display()
                        ))
                    }
                }),
        }
    }
}

/// What discovery found: valid manifests and the problems of the rest.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Plugins with valid manifests.
    pub found: Vec<Found>,
    /// Folders whose manifest is broken.
    pub invalid: Vec<Problem>,
}

fn bundled(skip: impl Fn(&str) -> bool) -> Vec<Found> {
    let mut found = Vec::new();
    for b in BUNDLED {
        let manifest = Manifest::parse(b.manifest, &format!("{}/plugin.toml", b.source))
            .expect("bundled manifests are valid (checked by the test suite)");
        if !skip(manifest.namespace.as_str()) {
            found.push(Found {
                manifest,
                origin: Origin::Bundled(b.source),
                declared: None,
                rank: Some(0),
            });
        }
    }
    found
}

/// The user's set: the bundled plugins and the installed ones (an installed
/// plugin replaces the bundled plugin of its namespace), less the disabled.
/// Cleans what an interrupted install left, unless an install is running.
pub fn discover_installed(home: &Home) -> Result<Discovery, ManagerError> {
    discover(home, false).map(|(discovery, _)| discovery)
}

/// The user's whole set, disabled plugins included, and the disabled
/// namespaces: what an admin sees before changing it.
pub fn discover_with_disabled(
    home: &Home,
) -> Result<(Discovery, std::collections::BTreeSet<String>), ManagerError> {
    discover(home, true)
}

fn discover(
    home: &Home,
    with_disabled: bool,
) -> Result<(Discovery, std::collections::BTreeSet<String>), ManagerError> {
    let store = Store::new(home);
    if let Ok(guard) = store.try_exclusive() {
        store.clean_leftovers();
        drop(guard);
    }
    let lock = store.read_lock()?;
    let skipped = |ns: &str| !with_disabled && lock.disabled.contains(ns);
    let mut discovery = Discovery {
        found: bundled(|ns| skipped(ns) || lock.get(ns).is_some()),
        invalid: Vec::new(),
    };
    for installed in &lock.plugin {
        if skipped(&installed.namespace) {
            continue;
        }
        let path = store.manifest_path(&installed.manifest);
        let manifest = store
            .read_verified(&path, &installed.manifest)
            .map_err(|e| e.to_string())
            .and_then(|bytes| String::from_utf8(bytes).map_err(|e| e.to_string()))
            .and_then(|text| {
                Manifest::parse(&text, &path.display().to_string()).map_err(|e| e.to_string())
            });
        match manifest {
            Ok(manifest) => discovery.found.push(Found {
                manifest,
                origin: Origin::Installed {
                    registry: installed.registry.clone(),
                    component: store.component_path(&installed.component),
                    sha256: installed.component.clone(),
                },
                declared: match (&installed.tools, &installed.events) {
                    (Some(tools), Some(events)) => Some(Declared {
                        tools: tools.clone(),
                        events: events.clone(),
                    }),
                    _ => None,
                },
                rank: Some(installed.seq.max(1)),
            }),
            Err(error) => discovery.invalid.push(Problem::InvalidPlugin {
                plugin: Some(installed.namespace.clone()),
                origin: format!("installed from {}", installed.registry),
                error,
            }),
        }
    }
    Ok((discovery, lock.disabled.clone()))
}

/// The bundled plugins and the plugins of `dir`, as `plugin check --dir`
/// sees them: `dir` is one plugin folder (with a `plugin.toml`) or a
/// folder of plugin folders. A subfolder without a `plugin.toml` is
/// reported, never skipped in silence (hidden folders aside). Fails only
/// when `dir` itself cannot be read.
pub fn discover_dir(dir: &Path) -> std::io::Result<Discovery> {
    let mut discovery = Discovery {
        found: bundled(|_| false),
        invalid: Vec::new(),
    };
    let folders: Vec<PathBuf> = if dir.join("plugin.toml").is_file() {
        vec![dir.to_path_buf()]
    } else {
        let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        entries
            .into_iter()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    };
    for folder in folders {
        let manifest_path = folder.join("plugin.toml");
        if !manifest_path.is_file() {
            discovery.invalid.push(Problem::InvalidPlugin {
                plugin: None,
                origin: folder.display().to_string(),
                error: "no plugin.toml here: --dir takes a plugin folder, or a folder of plugin folders"
                    .into(),
            });
            continue;
        }
        match Manifest::from_file(&manifest_path) {
            Ok(manifest) => {
                // An installed plugin replaces the bundled one it shadows.
                discovery.found.retain(|f| {
                    !(matches!(f.origin, Origin::Bundled(_))
                        && f.manifest.namespace == manifest.namespace)
                });
                discovery.found.push(Found {
                    manifest,
                    origin: Origin::Dir(folder),
                    declared: None,
                    rank: None,
                });
            }
            Err(e) => discovery.invalid.push(Problem::InvalidPlugin {
                plugin: None,
                origin: folder.display().to_string(),
                error: e.to_string(),
            }),
        }
    }
    Ok(discovery)
}

/// Largest user configuration file read, in bytes.
const MAX_USER_CONFIG_BYTES: u64 = 1 << 20;

/// The user's configuration overrides for a plugin: `config/<namespace>.toml`.
pub fn user_config(home: &Home, namespace: &str) -> Result<Option<serde_json::Value>, String> {
    let path = home.config_dir().join(format!("{namespace}.toml"));
    match crate::home::read_text_capped(&path, MAX_USER_CONFIG_BYTES) {
        Ok(text) => {
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::to_value(table)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A loaded and resolved set.
#[derive(Debug)]
pub struct ActiveSet {
    /// Every plugin that loaded, with its origin (activated or not).
    pub loaded: Vec<(Arc<LoadedPlugin>, Origin)>,
    /// What the resolver saw.
    pub candidates: Vec<Candidate>,
    /// The resolution, including load failures as problems.
    pub resolution: Resolution,
}

impl ActiveSet {
    /// The problems that concern `namespace`.
    pub fn problems_of(&self, namespace: &str) -> Vec<&Problem> {
        self.resolution
            .problems
            .iter()
            .filter(|p| p.blocks().contains(&namespace))
            .collect()
    }
}

/// Every plugin of a discovery, loaded (compiled or from the cache) but not
/// activated, as resolver candidates; load failures become problems. The
/// plugins load concurrently, so one slow plugin delays only itself; an
/// installed plugin whose `describe` answer no longer matches what it
/// declared at install is a problem of its own, and is not activated.
pub async fn load_all(
    runtime: &Runtime,
    home: &Home,
    discovery: Discovery,
) -> (
    Vec<(Arc<LoadedPlugin>, Origin)>,
    Vec<Candidate>,
    Vec<Problem>,
) {
    let mut problems = discovery.invalid;
    let mut loaded = Vec::new();
    let mut candidates = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, found) in discovery.found.into_iter().enumerate() {
        let runtime = runtime.clone();
        let home = home.clone();
        tasks.spawn(async move {
            let outcome = async {
                let bytes = found.component()?;
                let config = user_config(&home, found.manifest.namespace.as_str())?;
                let plugin = runtime
                    .load(found.manifest.clone(), &bytes, config.as_ref())
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(why) = found.declared.as_ref().and_then(|d| d.differences(&plugin)) {
                    return Err(why);
                }
                Ok(plugin)
            }
            .await;
            (i, found, outcome)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => tracing::error!("loading a plugin panicked: {e}"),
        }
    }
    // Discovery order, whatever order the loads finished in.
    outcomes.sort_by_key(|(i, _, _)| *i);
    for (_, found, outcome) in outcomes {
        let origin_text = found.origin.to_string();
        match outcome {
            Ok(plugin) => {
                let mut candidate = Candidate::of(&plugin, origin_text);
                candidate.rank = found.rank;
                candidates.push(candidate);
                loaded.push((plugin, found.origin));
            }
            Err(error) => problems.push(Problem::InvalidPlugin {
                plugin: Some(found.manifest.namespace.to_string()),
                origin: origin_text,
                error,
            }),
        }
    }
    (loaded, candidates, problems)
}

/// Loads every plugin found, resolves the set and makes the plugins that
/// can be activated the runtime's active set, in one atomic swap. Nothing
/// is activated before the whole set has been checked; calls in flight
/// finish on the set they started with. A running host calls this again
/// after install, update, enable or disable.
pub async fn load_and_activate(runtime: &Runtime, home: &Home, discovery: Discovery) -> ActiveSet {
    let (loaded, candidates, problems) = load_all(runtime, home, discovery).await;
    activate(runtime, loaded, candidates, problems)
}

/// Loads and activates only what a call to `namespace` needs: that plugin
/// and its dependencies, transitively. The rest of the set is still
/// resolved — from manifests, and from the tools and events installed
/// plugins recorded at install — so a declared conflict or a dependency
/// problem keeps the plugin inactive exactly as in the whole set; but none
/// of it is read, compiled or instantiated. This is what a one-off command
/// (`hearth plugin invoke`) uses; a server loads the whole set.
pub async fn load_for(
    runtime: &Runtime,
    home: &Home,
    discovery: Discovery,
    namespace: &str,
) -> ActiveSet {
    let mut needed = std::collections::BTreeSet::from([namespace.to_string()]);
    let mut queue = vec![namespace.to_string()];
    while let Some(ns) = queue.pop() {
        for found in discovery
            .found
            .iter()
            .filter(|f| f.manifest.namespace.as_str() == ns)
        {
            for dep in found.manifest.dependencies.keys() {
                if needed.insert(dep.to_string()) {
                    queue.push(dep.to_string());
                }
            }
        }
    }
    let (load, rest): (Vec<Found>, Vec<Found>) = discovery
        .found
        .into_iter()
        .partition(|f| needed.contains(f.manifest.namespace.as_str()));
    let invalid = discovery
        .invalid
        .into_iter()
        .filter(|p| p.blocks().iter().any(|ns| needed.contains(*ns)))
        .collect();
    let (loaded, mut candidates, problems) = load_all(
        runtime,
        home,
        Discovery {
            found: load,
            invalid,
        },
    )
    .await;
    for found in rest {
        let mut c = Candidate::from_manifest(found.manifest, found.origin.to_string());
        if let Some(declared) = found.declared {
            c.tools = declared.tools;
            c.events = declared
                .events
                .iter()
                .filter_map(|e| crate::plugins::event_from_name(e))
                .collect();
        }
        c.rank = found.rank;
        candidates.push(c);
    }
    activate(runtime, loaded, candidates, problems)
}

/// Resolves `candidates` and makes the loaded plugins the resolution
/// activates the active set, in one swap.
fn activate(
    runtime: &Runtime,
    loaded: Vec<(Arc<LoadedPlugin>, Origin)>,
    candidates: Vec<Candidate>,
    problems: Vec<Problem>,
) -> ActiveSet {
    let mut resolution = resolve(&candidates);
    resolution.problems.extend(problems);
    resolution.problems.sort();
    let active = resolution
        .order
        .iter()
        .filter_map(|ns| {
            loaded
                .iter()
                .find(|(p, _)| p.manifest.namespace.as_str() == ns)
        })
        .map(|(p, _)| p.clone())
        .collect();
    runtime.replace_active(active);
    runtime.record_set_problems(resolution.problems.iter().map(|p| p.to_string()).collect());
    ActiveSet {
        loaded,
        candidates,
        resolution,
    }
}

/// Reloads the user's set into a running runtime: discovers the bundled and
/// installed plugins again (after an install, update, remove, enable or
/// disable), loads them (from the compile cache), resolves, and swaps the
/// active set atomically. Calls in flight finish on the set they started
/// with. This is what a long-running host calls when the lock file changes.
pub async fn reload(runtime: &Runtime, home: &Home) -> Result<ActiveSet, ManagerError> {
    let discovery = discover_installed(home)?;
    Ok(load_and_activate(runtime, home, discovery).await)
}
