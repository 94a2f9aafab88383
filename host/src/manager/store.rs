//! The installed set on disk, made crash-safe.
//!
//! - `store/<sha256>.wasm`: components, content-addressed;
//! - `store/<sha256>.plugin.toml`: the manifests they were installed with;
//! - `installed.toml`: the lock file naming the installed plugins and the
//!   disabled namespaces. Replacing it (write-temp, fsync, rename, fsync the
//!   folder) is the one commit point of every change, so a crash at any
//!   moment leaves either the old set or the new one, never a mix;
//! - `staging/`: downloads in progress, removed at the next start.

use super::ManagerError;
use crate::home::Home;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest lock file read, in bytes.
const MAX_LOCK_BYTES: u64 = 16 << 20;

/// The lock file format this hearth writes.
pub const LOCK_FORMAT: u32 = 1;

/// Writes `bytes` to `path` atomically: a temporary file in the same folder,
/// synced, renamed over `path`, then the folder synced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// One installed plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installed {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the component in the store.
    pub component: String,
    /// SHA-256 of the manifest in the store.
    pub manifest: String,
    /// The index it was installed from (for `update`).
    pub registry: String,
    /// The key id that signed its entry, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// The tools it described at install. A later `describe` must give
    /// the same names, or the plugin is not activated.
    /// (`None` in lock files written before hearth recorded them.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// The events it observed at install, fixed the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Install order: among plugins that clash, the one installed first
    /// keeps its place and the newcomer is left out.
    #[serde(default)]
    pub seq: u64,
}

/// `installed.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Format version.
    pub format: u32,
    /// Namespaces the user disabled (bundled or installed).
    #[serde(default)]
    pub disabled: BTreeSet<String>,
    /// Installed plugins.
    #[serde(default)]
    pub plugin: Vec<Installed>,
}

impl Default for Lock {
    fn default() -> Self {
        Lock {
            format: LOCK_FORMAT,
            disabled: BTreeSet::new(),
            plugin: Vec::new(),
        }
    }
}

impl Lock {
    /// The installed plugin of a namespace.
    pub fn get(&self, namespace: &str) -> Option<&Installed> {
        self.plugin.iter().find(|p| p.namespace == namespace)
    }

    /// Adds or replaces the plugin of its namespace.
    pub fn put(&mut self, installed: Installed) {
        self.plugin.retain(|p| p.namespace != installed.namespace);
        self.plugin.push(installed);
        self.plugin.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    }
}

/// The on-disk store of one data directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store of `home`.
    pub fn new(home: &Home) -> Store {
        Store {
            root: home.root.clone(),
        }
    }

    /// The lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("installed.toml")
    }

    /// Where downloads are staged.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    fn objects(&self) -> PathBuf {
        self.root.join("store")
    }

    /// A component by digest.
    pub fn component_path(&self, sha256: &str) -> PathBuf {
        self.objects().join(format!("{sha256}.wasm"))
    }

    /// A manifest by digest.
    pub fn manifest_path(&self, sha256: &str) -> PathBuf {
        self.objects().join(format!("{sha256}.plugin.toml"))
    }

    /// Reads the lock file (empty when there is none).
    pub fn read_lock(&self) -> Result<Lock, ManagerError> {
        let path = self.lock_path();
        let text = match crate::home::read_text_capped(&path, MAX_LOCK_BYTES) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock::default()),
            Err(e) => {
                return Err(ManagerError::Store(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let lock: Lock = toml::from_str(&text)
            .map_err(|e| ManagerError::Store(format!("{}: {e}", path.display())))?;
        if lock.format != LOCK_FORMAT {
            return Err(ManagerError::Store(format!(
                "{}: format {} is not supported (expected {LOCK_FORMAT})",
                path.display(),
                lock.format
            )));
        }
        Ok(lock)
    }

    /// Replaces the lock file: the commit point.
    pub fn write_lock(&self, lock: &Lock) -> Result<(), ManagerError> {
        let text = toml::to_string(lock).map_err(|e| ManagerError::Store(e.to_string()))?;
        write_atomically(&self.lock_path(), text.as_bytes()).map_err(|e| {
            ManagerError::Store(format!("writing {}: {e}", self.lock_path().display()))
        })
    }

    /// Moves a verified staging file into the store under its digest.
    pub fn put_component(
        &self,
        staged: tempfile::NamedTempFile,
        sha256: &str,
    ) -> Result<PathBuf, ManagerError> {
        let path = self.component_path(sha256);
        std::fs::create_dir_all(self.objects()).map_err(|e| ManagerError::Store(e.to_string()))?;
        staged.persist(&path).map_err(|e| {
            ManagerError::Store(format!(
                "moving the component into {}: {}",
                path.display(),
                e.error
            ))
        })?;
        sync_dir(&self.objects()).map_err(|e| ManagerError::Store(e.to_string()))?;
        Ok(path)
    }

    /// Stores a manifest text; returns its digest.
    pub fn put_manifest(&self, text: &str) -> Result<String, ManagerError> {
        let sha = crate::plugins::cache::sha256_hex(text.as_bytes());
        let path = self.manifest_path(&sha);
        if !path.exists() {
            write_atomically(&path, text.as_bytes())
                .map_err(|e| ManagerError::Store(format!("writing {}: {e}", path.display())))?;
        }
        Ok(sha)
    }

    /// Reads a stored manifest and checks it against its digest.
    pub fn read_verified(&self, path: &Path, sha256: &str) -> Result<Vec<u8>, ManagerError> {
        let bytes = crate::home::read_capped(path, crate::plugins::manifest::MAX_MANIFEST_BYTES)
            .map_err(|e| ManagerError::Store(format!("cannot read {}: {e}", path.display())))?;
        let actual = crate::plugins::cache::sha256_hex(&bytes);
        if actual != sha256 {
            return Err(ManagerError::Store(format!(
                "{} is corrupt: its digest is {actual}, the lock file says {sha256}",
                path.display()
            )));
        }
        Ok(bytes)
    }

    /// Removes what an interrupted install left behind: staging files and
    /// temporary files in the store and beside the lock file.
    pub fn clean_leftovers(&self) {
        let _ = std::fs::remove_dir_all(self.staging_dir());
        for dir in [self.objects(), self.root.clone()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Takes the install lock if nobody holds it.
    pub fn try_exclusive(&self) -> Result<std::fs::File, ManagerError> {
        let file = self.lock_file()?;
        file.try_lock()
            .map_err(|e| ManagerError::Store(e.to_string()))?;
        Ok(file)
    }

    fn lock_file(&self) -> Result<std::fs::File, ManagerError> {
        std::fs::create_dir_all(&self.root).map_err(|e| ManagerError::Store(e.to_string()))?;
        let path = self.root.join("install.lock");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ManagerError::Store(format!("opening {}: {e}", path.display())))
    }

    /// Takes the data directory's install lock (released on drop), so two
    /// installs never interleave.
    pub fn exclusive(&self) -> Result<std::fs::File, ManagerError> {
        let file = self.lock_file()?;
        file.lock()
            .map_err(|e| ManagerError::Store(format!("locking the install lock: {e}")))?;
        Ok(file)
    }
}
