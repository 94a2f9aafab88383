//! [`ManagerError`]: why the plugin manager refused or failed a change to
//! the installed set, by kind, so that callers can answer accordingly (the
//! admin API with 404, 409, 400 or 500).

/// Why a change to (or a read of) the installed set failed. Installs fail
/// with their own [`InstallError`](super::install::InstallError), which
/// names the step.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No bundled or installed plugin has this namespace.
    #[error("no bundled or installed plugin has namespace `{namespace}`")]
    UnknownNamespace {
        /// The namespace asked for.
        namespace: String,
    },
    /// Nothing is installed under this namespace (and no bundled plugin has
    /// it).
    #[error("`{namespace}` is not installed")]
    NotInstalled {
        /// The namespace asked for.
        namespace: String,
    },
    /// The namespace is a bundled plugin's, which can be disabled but not
    /// removed.
    #[error("`{namespace}` is bundled, not installed; use `hearth plugin disable {namespace}`")]
    Bundled {
        /// The bundled plugin's namespace.
        namespace: String,
    },
    /// Other plugins of the set depend on this one.
    #[error(
        "`{namespace}` is needed by {}; remove those first or pass --force to disable them too",
        quoted(.dependents)
    )]
    NeededBy {
        /// The plugin to remove.
        namespace: String,
        /// The namespaces that depend on it.
        dependents: Vec<String>,
    },
    /// A requirement in a `name@<requirement>` spec is not a semver
    /// requirement.
    #[error("`{requirement}` is not a semver requirement: {reason}")]
    BadRequirement {
        /// The text after the `@`.
        requirement: String,
        /// What the semver parser said.
        reason: String,
    },
    /// The installed set on disk could not be read or written: I/O, or a
    /// lock file or store object that is corrupt or of an unsupported
    /// format. The message names the file.
    #[error("{0}")]
    Store(String),
}

/// `a`, `b`: namespaces in backquotes, comma-separated.
fn quoted(namespaces: &[String]) -> String {
    namespaces
        .iter()
        .map(|d| format!("`{d}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
