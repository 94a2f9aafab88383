//! The compiled-component cache.
//!
//! `Component::deserialize` trusts its input completely, so an artifact is
//! only loaded when (a) its file name carries the component's digest and a
//! hash of the wasmtime version and engine configuration, and (b) its bytes
//! hash to the digest recorded beside it when the host wrote it. Anything
//! else — a stale, truncated or tampered file — is reported, discarded and
//! recompiled; it is never loaded.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// What looking up the cache found.
pub enum Lookup {
    /// A verified artifact, deserialised.
    Hit(Component),
    /// Nothing cached for this component and engine.
    Miss,
    /// Something was there but failed verification; says what.
    Rejected(String),
}

/// A directory of `<digest>-<engine>.cwasm` files, each with a `.sha256`.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn engine_key(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("wasmtime48-{:016x}", hasher.finish())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl ComponentCache {
    /// A cache in `dir` (created if missing).
    pub fn new(dir: &Path) -> std::io::Result<ComponentCache> {
        std::fs::create_dir_all(dir)?;
        Ok(ComponentCache {
            dir: dir.to_path_buf(),
        })
    }

    /// Where the artifact for `digest` on `engine` lives.
    pub fn artifact_path(&self, engine: &Engine, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.cwasm", engine_key(engine)))
    }

    fn checksum_path(artifact: &Path) -> PathBuf {
        artifact.with_extension("cwasm.sha256")
    }

    /// Looks up and verifies the artifact for `digest`.
    pub fn lookup(&self, engine: &Engine, digest: &str) -> Lookup {
        let path = self.artifact_path(engine, digest);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Rejected(format!("cannot read {}: {e}", path.display())),
        };
        let expected = match std::fs::read_to_string(Self::checksum_path(&path)) {
            Ok(s) => s.trim().to_string(),
            Err(e) => {
                return Lookup::Rejected(format!(
                    "{} has no readable checksum: {e}",
                    path.display()
                ));
            }
        };
        let actual = sha256_hex(&bytes);
        if actual != expected {
            return Lookup::Rejected(format!(
                "{} does not match its checksum (tampered or corrupt)",
                path.display()
            ));
        }
        // SAFETY: the bytes are exactly what this host serialised for this
        // engine configuration (checked above against the checksum written
        // with them, in a directory only the host writes).
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Lookup::Hit(component),
            Err(e) => Lookup::Rejected(format!("{} is not loadable: {e}", path.display())),
        }
    }

    /// A cached `describe`/`validate-config` outcome, by key (see
    /// `Runtime::load`). Its content is checked again by the caller like a
    /// fresh answer, so a damaged entry costs a re-run, never a wrong tool.
    pub fn described(&self, key: &str) -> Option<Vec<u8>> {
        crate::home::read_capped(&self.dir.join(format!("{key}.described.json")), 4 << 20).ok()
    }

    /// Caches a successful `describe`/`validate-config` outcome.
    pub fn store_described(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        write_atomically(&self.dir.join(format!("{key}.described.json")), bytes)
    }

    /// Stores a compiled component; checksum first, then the artifact, each
    /// by write-temp + fsync + rename, so a crash leaves a miss, never a
    /// half-written artifact that verifies.
    pub fn store(
        &self,
        engine: &Engine,
        digest: &str,
        component: &Component,
    ) -> std::io::Result<()> {
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.store_bytes(engine, digest, &bytes)
    }

    /// Stores an already serialised artifact, as [`ComponentCache::store`]
    /// does. Only for bytes this host's own compile worker produced for
    /// `engine`'s configuration: [`ComponentCache::lookup`] will trust them.
    pub fn store_bytes(&self, engine: &Engine, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.artifact_path(engine, digest);
        write_atomically(&Self::checksum_path(&path), sha256_hex(bytes).as_bytes())?;
        write_atomically(&path, bytes)
    }

    /// The cache directory; the compile worker's temporary files go here
    /// too, so that nothing but the host writes what gets deserialised.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}
