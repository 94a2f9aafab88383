//! Install, update, remove, enable and disable — all or nothing.
//!
//! An install goes through named steps; any failure stops it, names the
//! plugin and the step, and leaves the installed set exactly as it was:
//!
//! 1. **resolve**: pick the highest version matching the request, and from
//!    the same index whatever dependencies the current set does not satisfy;
//! 2. **signature**: entries from files or URLs must be signed by a trusted
//!    publisher key (unless `--allow-unsigned`);
//! 3. **download**: into a staging file, never more than the declared size;
//! 4. **digest**: size and SHA-256 must match the entry;
//! 5. **validate**: the component is compiled (and cached) and its imports
//!    checked against the permissions the entry requests;
//! 6. **check set**: the resolver runs on the would-be set; any new problem
//!    stops the install;
//! 7. **permissions**: what each plugin asks for, and on upgrade what it
//!    adds, is shown and must be confirmed;
//! 8. **commit**: components move into the content-addressed store by
//!    rename, then the lock file is replaced atomically.

use super::ManagerError;
use super::registry::{Entry, Index, Staged, TrustedKeys, fetch};
use super::resolve::{Candidate, Problem, resolve};
use super::set::{Discovery, discover_installed, load_all, user_config};
use super::store::{Installed, Store};
use crate::home::Home;
use crate::plugins::Runtime;
use crate::plugins::manifest::{Manifest, Permissions};
use semver::VersionReq;
use std::collections::{BTreeMap, BTreeSet};

/// The steps of an install, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Choosing versions.
    Resolve,
    /// Checking the publisher signature.
    Signature,
    /// Fetching the component.
    Download,
    /// Checking size and SHA-256.
    Digest,
    /// Compiling and checking imports against permissions.
    Validate,
    /// Resolving the would-be set.
    CheckSet,
    /// Confirming permissions.
    Permissions,
    /// Moving into the store and writing the lock file.
    Commit,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Resolve => "resolve",
            Step::Signature => "signature",
            Step::Download => "download",
            Step::Digest => "digest",
            Step::Validate => "validate",
            Step::CheckSet => "check set",
            Step::Permissions => "permissions",
            Step::Commit => "commit",
        })
    }
}

/// A failed install: which plugin, which step, what happened. Nothing was
/// changed.
#[derive(Debug, thiserror::Error)]
#[error("installing {plugin} failed at step `{step}`: {message}; nothing was changed")]
pub struct InstallError {
    /// The plugin (`namespace@version` when known).
    pub plugin: String,
    /// The step.
    pub step: Step,
    /// What happened.
    pub message: String,
}

/// Splits `name` or `name@<semver requirement>` (any version without one).
pub fn parse_spec(spec: &str) -> Result<(&str, VersionReq), ManagerError> {
    match spec.split_once('@') {
        Some((name, req)) => {
            VersionReq::parse(req)
                .map(|r| (name, r))
                .map_err(|e| ManagerError::BadRequirement {
                    requirement: req.to_string(),
                    reason: e.to_string(),
                })
        }
        None => Ok((spec, VersionReq::STAR)),
    }
}

/// Install switches.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Accept entries without a trusted signature.
    pub allow_unsigned: bool,
    /// Accept a lower version than the installed one.
    pub allow_downgrade: bool,
    /// Accept entries signed under the v1 scheme, which does not cover
    /// permissions and config.
    pub allow_v1_signatures: bool,
    /// Let an entry take over the namespace of a plugin bundled with
    /// hearth (`calc`, `notes`, `weather`): off, those namespaces are
    /// reserved for the bundled plugins and the repository's own entries.
    pub replace_bundled: bool,
}

/// What an install did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `namespace@version` of each plugin installed, dependencies first.
    pub installed: Vec<String>,
    /// Set when the requested version was already installed.
    pub already: Option<String>,
}

/// Lists what a set of permissions grants, one item per capability.
pub fn describe_permissions(manifest: &Manifest) -> Vec<String> {
    let p = &manifest.permissions;
    let mut out = Vec::new();
    for grant in &p.http {
        out.push(format!("http to {grant}"));
    }
    if p.kv {
        out.push("its own key-value store".into());
    }
    if p.llm_tokens > 0 {
        out.push(format!("the model, {} tokens per call", p.llm_tokens));
    }
    if let Some(conversation) = p.conversation.describe() {
        out.push(conversation.into());
    }
    for (dep, req) in &manifest.dependencies {
        out.push(format!("calling tools of `{dep}` {req}"));
    }
    out.push(format!("{} MiB of memory", p.memory_bytes >> 20));
    out.push(format!("{} ms per call", p.time_limit.as_millis()));
    out
}

/// What `new` grants beyond `old`.
pub fn added_permissions(old: &Manifest, new: &Manifest) -> Vec<String> {
    let (o, n): (&Permissions, &Permissions) = (&old.permissions, &new.permissions);
    let mut out = Vec::new();
    for grant in n.http.iter().filter(|g| !o.http.contains(g)) {
        out.push(format!("http to {grant}"));
    }
    if n.kv && !o.kv {
        out.push("its own key-value store".into());
    }
    if n.conversation > o.conversation
        && let Some(conversation) = n.conversation.describe()
    {
        out.push(conversation.into());
    }
    if n.llm_tokens > o.llm_tokens {
        out.push(format!(
            "the model: {} tokens per call (was {})",
            n.llm_tokens, o.llm_tokens
        ));
    }
    for (dep, req) in new
        .dependencies
        .iter()
        .filter(|(d, _)| !old.dependencies.contains_key(*d))
    {
        out.push(format!("calling tools of `{dep}` {req}"));
    }
    if n.memory_bytes > o.memory_bytes {
        out.push(format!(
            "{} MiB of memory (was {})",
            n.memory_bytes >> 20,
            o.memory_bytes >> 20
        ));
    }
    if n.time_limit > o.time_limit {
        out.push(format!(
            "{} ms per call (was {})",
            n.time_limit.as_millis(),
            o.time_limit.as_millis()
        ));
    }
    out
}

/// Installs `name` (a name or namespace) at the highest version of `index`
/// matching `requirement`, with the dependencies it needs.
/// `confirm` sees the permission summary and decides.
pub async fn install(
    home: &Home,
    runtime: &Runtime,
    index: &Index,
    name: &str,
    requirement: &VersionReq,
    options: &Options,
    confirm: &mut (dyn FnMut(&str) -> bool + Send),
) -> Result<Report, InstallError> {
    fn fail(plugin: &str, step: Step, message: impl ToString) -> InstallError {
        InstallError {
            plugin: plugin.to_string(),
            step,
            message: message.to_string(),
        }
    }
    let store = Store::new(home);
    let _guard = store.exclusive().map_err(|m| fail(name, Step::Commit, m))?;
    store.clean_leftovers();
    let lock = store
        .read_lock()
        .map_err(|m| fail(name, Step::Resolve, m))?;
    let current = discover_installed(home).map_err(|m| fail(name, Step::Resolve, m))?;

    // 1. resolve
    let Some(entry) = index.select(name, requirement) else {
        let versions = index.versions(name);
        return Err(fail(
            name,
            Step::Resolve,
            if versions.is_empty() {
                format!("{} lists no plugin `{name}`", index.location)
            } else {
                format!(
                    "no version of `{name}` in {} matches {requirement} (listed: {})",
                    index.location,
                    versions.join(", ")
                )
            },
        ));
    };
    if let Some(installed) = lock.get(entry.manifest.namespace.as_str()) {
        if installed.component == entry.sha256
            && installed.version == entry.manifest.version.to_string()
        {
            return Ok(Report {
                installed: Vec::new(),
                already: Some(entry.id()),
            });
        }
        let installed_version = semver::Version::parse(&installed.version).ok();
        if installed_version
            .as_ref()
            .is_some_and(|v| *v > entry.manifest.version)
            && !options.allow_downgrade
        {
            return Err(fail(
                &entry.id(),
                Step::Resolve,
                format!(
                    "{} is installed; refusing to downgrade to {} without --allow-downgrade",
                    installed.version, entry.manifest.version
                ),
            ));
        }
    }
    let mut plan: Vec<&Entry> = Vec::new();
    plan_with_dependencies(index, entry, &current, &mut plan, &mut BTreeSet::new())
        .map_err(|m| fail(&entry.id(), Step::Resolve, m))?;
    // Who owns each namespace the plan writes to, said plainly.
    let mut takeovers: BTreeMap<String, String> = BTreeMap::new();
    for e in &plan {
        if let Some(takeover) =
            takeover(e, &lock, options, index).map_err(|m| fail(&e.id(), Step::Resolve, m))?
        {
            takeovers.insert(e.manifest.namespace.to_string(), takeover);
        }
    }

    let trusted = TrustedKeys::load(home).map_err(|m| fail(&entry.id(), Step::Signature, m))?;
    let mut staged: Vec<(&Entry, Staged, Candidate)> = Vec::new();
    for e in &plan {
        // 2. signature: checked before downloading anything.
        if e.source.needs_signature()
            && let Err(why) = trusted.verify(e, options.allow_v1_signatures)
        {
            if !options.allow_unsigned {
                return Err(fail(
                    &e.id(),
                    Step::Signature,
                    format!("{why}; pass --allow-unsigned to install it anyway"),
                ));
            }
            tracing::warn!("installing {} without a trusted signature: {why}", e.id());
        }
        // 3. download
        let s = fetch(e, &store.staging_dir())
            .await
            .map_err(|m| fail(&e.id(), Step::Download, m))?;
        // 4. digest
        if s.size != e.size {
            return Err(fail(
                &e.id(),
                Step::Digest,
                format!(
                    "size mismatch: {} bytes arrived, the entry declares {} (truncated or padded download)",
                    s.size, e.size
                ),
            ));
        }
        if s.sha256 != e.sha256 {
            return Err(fail(
                &e.id(),
                Step::Digest,
                format!(
                    "digest mismatch: the entry says sha256 {}, the download has {}",
                    e.sha256, s.sha256
                ),
            ));
        }
        // 5. validate: compile (cached for later) and check imports.
        let bytes = std::fs::read(s.file.path())
            .map_err(|err| fail(&e.id(), Step::Validate, err.to_string()))?;
        let config = user_config(home, e.manifest.namespace.as_str())
            .map_err(|m| fail(&e.id(), Step::Validate, m))?;
        let plugin = runtime
            .load(e.manifest.clone(), &bytes, config.as_ref())
            .await
            .map_err(|err| fail(&e.id(), Step::Validate, err.to_string()))?;
        let mut candidate = Candidate::of(&plugin, index.location.clone());
        // The newcomer: if it clashes, it is the one left out.
        candidate.rank = Some(u64::MAX);
        staged.push((e, s, candidate));
    }

    // 6. check the would-be set against the current one, tools and hooks
    // included (the current plugins load from the compile cache).
    let planned: BTreeSet<&str> = plan.iter().map(|e| e.manifest.namespace.as_str()).collect();
    let (_, before, _) = load_all(runtime, home, current.clone()).await;
    let mut after: Vec<Candidate> = before
        .iter()
        .filter(|c| !planned.contains(c.manifest.namespace.as_str()))
        .cloned()
        .collect();
    after.extend(staged.iter().map(|(_, _, c)| c.clone()));
    let old_problems: BTreeSet<Problem> = resolve(&before).problems.into_iter().collect();
    let new_problems: Vec<String> = resolve(&after)
        .problems
        .into_iter()
        .filter(|p| !old_problems.contains(p))
        .map(|p| p.to_string())
        .collect();
    if !new_problems.is_empty() {
        return Err(fail(&entry.id(), Step::CheckSet, new_problems.join("; ")));
    }

    // 7. permissions
    let mut summary = String::new();
    for e in &plan {
        let ns = e.manifest.namespace.as_str();
        if let Some(takeover) = takeovers.get(ns) {
            summary.push_str(&format!("{} {takeover}\n", e.id()));
        }
        if e.publisher.is_none() && e.source.needs_signature() {
            summary.push_str(&format!(
                "{} is UNSIGNED: nobody vouches for {}\n",
                e.id(),
                e.source
            ));
        }
        match lock.get(ns).and(manifest_of(&current, ns)) {
            Some(old) => {
                let added = added_permissions(old, &e.manifest);
                summary.push_str(&format!(
                    "{} (upgrade from {}) asks for: {}\n",
                    e.id(),
                    old.version,
                    describe_permissions(&e.manifest).join(", ")
                ));
                if added.is_empty() {
                    summary.push_str("  it adds no permissions\n");
                } else {
                    summary.push_str(&format!("  NEW permissions: {}\n", added.join(", ")));
                }
            }
            None => summary.push_str(&format!(
                "{} asks for: {}\n",
                e.id(),
                describe_permissions(&e.manifest).join(", ")
            )),
        }
    }
    if !confirm(&summary) {
        return Err(fail(
            &entry.id(),
            Step::Permissions,
            "not confirmed; pass --yes to grant them",
        ));
    }

    // 8. commit: store objects first (harmless if we stop here), then the
    // lock file in one atomic replace.
    let mut new_lock = lock.clone();
    let mut report = Report::default();
    let first_seq = new_lock.plugin.iter().map(|p| p.seq).max().unwrap_or(0) + 1;
    for (seq, (e, s, candidate)) in (first_seq..).zip(staged) {
        let manifest_text = toml::to_string(&e.raw_manifest)
            .map_err(|err| fail(&e.id(), Step::Commit, err.to_string()))?;
        let manifest_sha = store
            .put_manifest(&manifest_text)
            .map_err(|m| fail(&e.id(), Step::Commit, m))?;
        store
            .put_component(s.file, &e.sha256)
            .map_err(|m| fail(&e.id(), Step::Commit, m))?;
        new_lock.put(Installed {
            namespace: e.manifest.namespace.to_string(),
            name: e.manifest.name.to_string(),
            version: e.manifest.version.to_string(),
            component: e.sha256.clone(),
            manifest: manifest_sha,
            registry: index.location.clone(),
            publisher: e.publisher.clone(),
            tools: Some(candidate.tools.clone()),
            events: Some(
                candidate
                    .events
                    .iter()
                    .map(|k| crate::plugins::event_name(*k).to_string())
                    .collect(),
            ),
            seq,
        });
        report.installed.push(e.id());
    }
    store
        .write_lock(&new_lock)
        .map_err(|m| fail(&entry.id(), Step::Commit, m))?;
    Ok(report)
}

/// Whether installing `e` takes a namespace from another plugin, and how to
/// say so. The namespace of a bundled plugin may only be taken by the
/// repository's own entry for it, unless the user opts in; an installed
/// plugin's namespace is taken when the entry has another name or another
/// publisher. An upgrade of the same plugin is not a takeover.
fn takeover(
    e: &Entry,
    lock: &super::store::Lock,
    options: &Options,
    index: &Index,
) -> Result<Option<String>, String> {
    let ns = e.manifest.namespace.as_str();
    if let Some(installed) = lock.get(ns) {
        let same_plugin =
            installed.name == e.manifest.name.as_str() && installed.publisher == e.publisher;
        if same_plugin {
            return Ok(None);
        }
        return Ok(Some(format!(
            "REPLACES {} {} installed from {} (a different plugin{}) in namespace `{ns}`",
            installed.name,
            installed.version,
            installed.registry,
            match (&installed.publisher, &e.publisher) {
                (a, b) if a == b => String::new(),
                (_, Some(key)) => format!(", signed by key {key}"),
                (_, None) => ", unsigned".to_string(),
            }
        )));
    }
    let Some((bundled, version)) = crate::bundled::BUNDLED.iter().find_map(|b| {
        Manifest::parse(b.manifest, b.source)
            .ok()
            .filter(|m| m.namespace.as_str() == ns)
            .map(|m| (b, m.version))
    }) else {
        return Ok(None);
    };
    if e.source == super::registry::Source::Repo(bundled.source) {
        return Ok(None);
    }
    if !options.replace_bundled {
        return Err(format!(
            "`{ns}` is the namespace of the plugin bundled with hearth ({} {version}); {} from {} would replace it. \
             Pass --replace-bundled to allow that",
            bundled.source,
            e.id(),
            index.location
        ));
    }
    Ok(Some(format!(
        "REPLACES the bundled plugin `{ns}` {version} ({})",
        bundled.source
    )))
}

/// The manifest of a namespace in a set.
fn manifest_of<'d>(set: &'d Discovery, namespace: &str) -> Option<&'d Manifest> {
    set.found
        .iter()
        .find(|f| f.manifest.namespace.as_str() == namespace)
        .map(|f| &f.manifest)
}

/// Adds `entry` and, first, the dependencies the current set does not
/// satisfy, picked from the same index.
fn plan_with_dependencies<'i>(
    index: &'i Index,
    entry: &'i Entry,
    current: &Discovery,
    plan: &mut Vec<&'i Entry>,
    visiting: &mut BTreeSet<String>,
) -> Result<(), String> {
    if plan
        .iter()
        .any(|p| p.manifest.namespace == entry.manifest.namespace)
    {
        return Ok(());
    }
    if !visiting.insert(entry.manifest.namespace.to_string()) {
        return Err(format!(
            "dependency cycle through `{}`",
            entry.manifest.namespace
        ));
    }
    for (dep, req) in &entry.manifest.dependencies {
        if manifest_of(current, dep.as_str()).is_some_and(|m| req.matches(&m.version)) {
            continue;
        }
        let Some(found) = index.select(dep.as_str(), req) else {
            return Err(format!(
                "`{}` needs `{dep}` {req}, which neither the installed set nor {} provides (listed: {})",
                entry.manifest.namespace,
                index.location,
                index.versions(dep.as_str()).join(", ")
            ));
        };
        plan_with_dependencies(index, found, current, plan, visiting)?;
    }
    plan.push(entry);
    Ok(())
}

/// Removes an installed plugin. Refuses while another plugin of the set
/// depends on it, unless `force`, which also disables those dependents.
/// Returns the dependents it disabled.
pub fn remove(home: &Home, namespace: &str, force: bool) -> Result<Vec<String>, ManagerError> {
    let store = Store::new(home);
    let _guard = store.exclusive()?;
    let mut lock = store.read_lock()?;
    if lock.get(namespace).is_none() {
        let namespace = namespace.to_string();
        return Err(
            if crate::bundled::BUNDLED
                .iter()
                .any(|b| b.source.ends_with(&format!("/{namespace}")))
            {
                ManagerError::Bundled { namespace }
            } else {
                ManagerError::NotInstalled { namespace }
            },
        );
    }
    let dependents = dependents_of(home, namespace)?;
    if !dependents.is_empty() && !force {
        return Err(ManagerError::NeededBy {
            namespace: namespace.to_string(),
            dependents,
        });
    }
    lock.plugin.retain(|p| p.namespace != namespace);
    lock.disabled.extend(dependents.iter().cloned());
    store.write_lock(&lock)?;
    Ok(dependents)
}

fn dependents_of(home: &Home, namespace: &str) -> Result<Vec<String>, ManagerError> {
    let current = discover_installed(home)?;
    Ok(current
        .found
        .iter()
        .filter(|f| {
            f.manifest
                .dependencies
                .keys()
                .any(|d| d.as_str() == namespace)
        })
        .map(|f| f.manifest.namespace.to_string())
        .collect())
}

/// Enables or disables a namespace (bundled or installed). Takes effect at
/// the next load of the set.
pub fn set_enabled(home: &Home, namespace: &str, enabled: bool) -> Result<(), ManagerError> {
    let store = Store::new(home);
    let _guard = store.exclusive()?;
    let mut lock = store.read_lock()?;
    let known = lock.get(namespace).is_some()
        || crate::bundled::BUNDLED.iter().any(|b| {
            Manifest::parse(b.manifest, b.source).is_ok_and(|m| m.namespace.as_str() == namespace)
        });
    if !known {
        return Err(ManagerError::UnknownNamespace {
            namespace: namespace.to_string(),
        });
    }
    let changed = if enabled {
        lock.disabled.remove(namespace)
    } else {
        lock.disabled.insert(namespace.to_string())
    };
    if changed {
        store.write_lock(&lock)?;
    }
    Ok(())
}
