//! Finding, loading and activating the plugin set.
//!
//! The set is the bundled plugins plus the plugins folder (by default
//! `$HEARTH_HOME/plugins`): an installed plugin replaces a bundled one of the
//! same namespace; two installed plugins claiming one namespace clash. Every
//! plugin is validated and loaded (which is side-effect free), the whole set
//! is resolved, and only then is anything activated, in resolution order.

use super::resolve::{Candidate, Problem, Resolution, resolve};
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
    /// A folder with `plugin.toml` and `plugin.wasm`.
    Dir(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Bundled(src) => write!(f, "bundled ({src})"),
            Origin::Dir(dir) => write!(f, "{}", dir.display()),
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
                std::fs::read(&path)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            }
        }
    }
}

/// What [`discover`] found: valid manifests and the problems of the rest.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Plugins with valid manifests.
    pub found: Vec<Found>,
    /// Folders whose manifest is broken.
    pub invalid: Vec<Problem>,
}

/// Finds the bundled plugins and those in `dir` (each subfolder with a
/// `plugin.toml`). Fails only when `dir` itself cannot be read.
pub fn discover(dir: &Path) -> std::io::Result<Discovery> {
    let mut discovery = Discovery::default();
    for b in BUNDLED {
        let manifest = Manifest::parse(b.manifest, &format!("{}/plugin.toml", b.source))
            .expect("bundled manifests are valid (checked by the test suite)");
        discovery.found.push(Found {
            manifest,
            origin: Origin::Bundled(b.source),
        });
    }
    let mut entries = match std::fs::read_dir(dir) {
        Ok(e) => e.collect::<Result<Vec<_>, _>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let folder = entry.path();
        let manifest_path = folder.join("plugin.toml");
        if !manifest_path.is_file() {
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

/// The user's configuration overrides for a plugin: `config/<namespace>.toml`.
pub fn user_config(home: &Home, namespace: &str) -> Result<Option<serde_json::Value>, String> {
    let path = home.config_dir().join(format!("{namespace}.toml"));
    match std::fs::read_to_string(&path) {
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

/// Loads every plugin found, resolves the set and activates, in order, the
/// plugins that can be activated. Nothing is activated before the whole
/// set has been checked.
pub async fn load_and_activate(runtime: &Runtime, home: &Home, discovery: Discovery) -> ActiveSet {
    let mut problems = discovery.invalid;
    let mut loaded = Vec::new();
    let mut candidates = Vec::new();
    for found in discovery.found {
        let origin_text = found.origin.to_string();
        let outcome = async {
            let bytes = found.component()?;
            let config = user_config(home, found.manifest.namespace.as_str())?;
            runtime
                .load(found.manifest.clone(), &bytes, config.as_ref())
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match outcome {
            Ok(plugin) => {
                candidates.push(Candidate {
                    manifest: plugin.manifest.clone(),
                    origin: origin_text,
                    tools: plugin.tools.iter().map(|t| t.name.clone()).collect(),
                    events: plugin.events.clone(),
                });
                loaded.push((plugin, found.origin));
            }
            Err(error) => problems.push(Problem::InvalidPlugin {
                plugin: Some(found.manifest.namespace.to_string()),
                origin: origin_text,
                error,
            }),
        }
    }
    let mut resolution = resolve(&candidates);
    resolution.problems.extend(problems);
    resolution.problems.sort();
    for namespace in &resolution.order {
        if let Some((plugin, _)) = loaded
            .iter()
            .find(|(p, _)| p.manifest.namespace.as_str() == namespace)
        {
            runtime.activate(plugin.clone());
        }
    }
    ActiveSet {
        loaded,
        candidates,
        resolution,
    }
}
