//! The plugin index (`registry.toml`): its entries, where their components
//! come from, and how an entry is checked. Publisher keys and signatures
//! are in [`signing`], adding entries to an index in [`publish`], fetching
//! components with a byte cap in [`fetch`].
//!
//! An entry's `source` is one of:
//! - a folder of the hearth repository (`plugins/calc`): the component this
//!   build produced from it, checked against the entry's digest (the build is
//!   reproducible, so a fresh clone gives the same bytes);
//! - a `.wasm` path relative to the index, a `file://` URL, or an `http(s)://`
//!   URL: downloaded, and accepted only with a valid ed25519 signature by a
//!   publisher key the user trusts (or with `--allow-unsigned`).
//!
//! The signature covers everything in the entry that decides what the
//! plugin is and may do: `hearth-registry-entry-v2`, a newline, then the
//! entry as canonical JSON (keys sorted, no spaces) without `signature` and
//! `source` — name, namespace, version, contract, description, publisher,
//! sha256, size, priority, permissions, dependencies, conflicts and config.
//! Editing any of them breaks the signature; the component may be mirrored
//! anywhere, since its digest is signed. Entries signed under the earlier
//! `hearth-registry-entry-v1` scheme (namespace, name, version and sha256
//! only) verify only with an explicit flag. The publisher key id is the
//! first 16 hex digits of the SHA-256 of the public key.

mod fetch;
mod publish;
mod signing;

use fetch::get_capped;
pub use fetch::{Staged, fetch, http_get};
pub use publish::{entry_toml, index_with};
pub use signing::{
    TrustedKeys, key_id, keygen, read_secret, sign_entry, signed_entry, signed_message_v1,
    signed_payload,
};

use crate::bundled::BUNDLED;
use crate::home::Home;
use crate::http_client::{Client, HttpError, Options};
use crate::plugins::cache::sha256_hex;
use crate::plugins::manifest::{Manifest, RawManifest, RawPermissions};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use semver::VersionReq;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What signatures sign, before the entry's canonical JSON.
pub const SIGNATURE_CONTEXT: &str = "hearth-registry-entry-v2";
/// The earlier scheme, which left permissions and config unsigned.
pub const SIGNATURE_CONTEXT_V1: &str = "hearth-registry-entry-v1";
/// The index format this hearth reads.
pub const FORMAT: u32 = 1;
/// Largest component an entry may declare.
pub const MAX_COMPONENT_SIZE: u64 = 64 << 20;
/// Largest index accepted, in bytes.
pub const MAX_INDEX_BYTES: u64 = 16 << 20;
/// Largest trusted-keys file accepted, in bytes.
const MAX_KEYS_FILE_BYTES: u64 = 1 << 20;
/// The index built into this binary: the repository's `registry.toml`.
pub const BUILTIN_INDEX: &str = include_str!("../../../../registry.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIndex {
    format: u32,
    /// The `rustc --version` that produced the digests of repository
    /// entries (their bytes depend on the compiler).
    #[serde(default)]
    toolchain: Option<String>,
    #[serde(default)]
    plugin: Vec<RawEntry>,
}

/// One `[[plugin]]` entry exactly as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawEntry {
    /// Plugin name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Version.
    pub version: String,
    /// Contract version.
    pub contract: String,
    /// Description.
    pub description: String,
    /// Where the component comes from.
    pub source: String,
    /// Publisher key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// Hex SHA-256 of the component.
    pub sha256: String,
    /// Component size in bytes.
    pub size: u64,
    /// Hex ed25519 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Priority.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Requested permissions.
    #[serde(default)]
    pub permissions: RawPermissions,
    /// Dependencies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dependencies: BTreeMap<String, String>,
    /// Conflicts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conflicts: BTreeMap<String, String>,
    /// Configuration defaults.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub config: toml::Table,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// Where a component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A folder of this repository, built into this binary.
    Repo(&'static str),
    /// A local file.
    File(PathBuf),
    /// An `http://` or `https://` URL.
    Url(String),
}

impl Source {
    /// Whether this source needs a publisher signature.
    pub fn needs_signature(&self) -> bool {
        !matches!(self, Source::Repo(_))
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Repo(dir) => write!(f, "{dir} (built from source)"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Url(u) => f.write_str(u),
        }
    }
}

/// A validated entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The manifest the installed plugin gets.
    pub manifest: Manifest,
    /// The same, as written (stored beside the component when installed).
    pub raw_manifest: RawManifest,
    /// Where the component comes from.
    pub source: Source,
    /// Hex SHA-256 of the component.
    pub sha256: String,
    /// Declared size.
    pub size: u64,
    /// Publisher key id.
    pub publisher: Option<String>,
    /// The signature, decoded.
    pub signature: Option<[u8; 64]>,
    /// What a v2 signature of this entry signs.
    pub signed_payload: Vec<u8>,
}

impl Entry {
    /// `namespace@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.namespace, self.manifest.version)
    }
}

/// A problem with an index: where, which entry and field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {place}{message}")]
pub struct IndexError {
    /// The index file or URL.
    pub location: String,
    /// `plugin[2] (calc): ` style prefix, or empty.
    pub place: String,
    /// What is wrong.
    pub message: String,
}

/// A loaded index.
#[derive(Debug, Clone)]
pub struct Index {
    /// Where it came from.
    pub location: String,
    /// The compiler its repository digests were recorded with, if stated.
    pub toolchain: Option<String>,
    /// Its entries.
    pub entries: Vec<Entry>,
}

fn hex_array<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = hex::decode(text).map_err(|e| format!("`{what}` is not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("`{what}` must be {} hex digits, not {}", N * 2, b.len() * 2))
}

impl Index {
    /// The index built into this binary.
    pub fn builtin() -> Index {
        Index::parse(BUILTIN_INDEX, "registry.toml (built in)", None)
            .expect("the built-in registry.toml is valid (checked by the test suite)")
    }

    /// The index at `location` (a path or an `http(s)://` URL), or the
    /// built-in one for `None` or the built-in index's own name.
    pub async fn open(location: Option<&str>) -> Result<Index, IndexError> {
        let builtin = Index::builtin();
        match location {
            None => Ok(builtin),
            Some(l) if l == builtin.location => Ok(builtin),
            Some(l) => Index::load(l).await,
        }
    }

    /// A one-entry index for the plugin folder `dir` (its `plugin.toml`
    /// and `plugin.wasm`), unsigned: what `hearth plugin dev` installs.
    pub fn local(dir: &Path) -> Result<Index, String> {
        let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let manifest_path = dir.join("plugin.toml");
        let text = crate::home::read_text_capped(
            &manifest_path,
            crate::plugins::manifest::MAX_MANIFEST_BYTES,
        )
        .map_err(|e| format!("cannot read {}: {e}", manifest_path.display()))?;
        let raw: RawManifest =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
        let component = dir.join("plugin.wasm");
        let bytes = crate::home::read_capped(&component, MAX_COMPONENT_SIZE).map_err(|e| {
            format!(
                "cannot read {}: {e} (build it first with `hearth plugin build {}`)",
                component.display(),
                dir.display()
            )
        })?;
        let location = format!("local folder {}", dir.display());
        let entry = RawEntry {
            name: raw.name.clone(),
            namespace: raw.namespace.clone(),
            version: raw.version.clone(),
            contract: raw.contract.clone(),
            description: raw.description.clone(),
            source: component.display().to_string(),
            publisher: None,
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            signature: None,
            priority: raw.priority,
            permissions: raw.permissions.clone(),
            dependencies: raw.dependencies.clone(),
            conflicts: raw.conflicts.clone(),
            config: raw.config.clone(),
        };
        let entry = Entry::validate(entry, None, &manifest_path.display().to_string())
            .map_err(|m| format!("{}: {m}", manifest_path.display()))?;
        Ok(Index {
            location,
            toolchain: None,
            entries: vec![entry],
        })
    }

    /// Loads an index from a path or an `http(s)://` URL.
    pub async fn load(location: &str) -> Result<Index, IndexError> {
        let err = |message: String| IndexError {
            location: location.to_string(),
            place: String::new(),
            message,
        };
        if location.starts_with("http://") || location.starts_with("https://") {
            let body = match get_capped(location, MAX_INDEX_BYTES).await {
                Ok(body) => body,
                Err(HttpError::TooLarge { .. }) => {
                    return Err(err(format!(
                        "is larger than the limit of {MAX_INDEX_BYTES} bytes"
                    )));
                }
                Err(e) => return Err(err(e.to_string())),
            };
            let text = String::from_utf8(body).map_err(|_| err("is not UTF-8".into()))?;
            return Index::parse(&text, location, None);
        }
        let path = Path::new(location.strip_prefix("file://").unwrap_or(location));
        let text = crate::home::read_text_capped(path, MAX_INDEX_BYTES)
            .map_err(|e| err(format!("cannot read: {e}")))?;
        Index::parse(&text, location, path.parent())
    }

    /// Parses and validates index text. `base` resolves relative `.wasm`
    /// sources.
    pub fn parse(text: &str, location: &str, base: Option<&Path>) -> Result<Index, IndexError> {
        let raw: RawIndex = toml::from_str(text).map_err(|e| IndexError {
            location: location.to_string(),
            place: String::new(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        if raw.format != FORMAT {
            return Err(IndexError {
                location: location.to_string(),
                place: String::new(),
                message: format!(
                    "`format` is {}; this hearth reads format {FORMAT}",
                    raw.format
                ),
            });
        }
        let mut entries = Vec::new();
        for (i, e) in raw.plugin.into_iter().enumerate() {
            let place = format!("plugin[{i}] ({}): ", e.name);
            let fail = |message: String| IndexError {
                location: location.to_string(),
                place: place.clone(),
                message,
            };
            entries
                .push(Entry::validate(e, base, &format!("{location} plugin[{i}]")).map_err(fail)?);
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in &entries {
            if !seen.insert(e.id()) {
                return Err(IndexError {
                    location: location.to_string(),
                    place: String::new(),
                    message: format!("{} is listed twice", e.id()),
                });
            }
        }
        Ok(Index {
            location: location.to_string(),
            toolchain: raw.toolchain,
            entries,
        })
    }

    /// The highest version of `name` (a plugin name or namespace) matching
    /// `requirement`.
    pub fn select(&self, name: &str, requirement: &VersionReq) -> Option<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.manifest.namespace.as_str() == name || e.manifest.name.as_str() == name)
            .filter(|e| requirement.matches(&e.manifest.version))
            .max_by(|a, b| a.manifest.version.cmp(&b.manifest.version))
    }

    /// The versions of `name` listed, for messages.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.manifest.namespace.as_str() == name || e.manifest.name.as_str() == name)
            .map(|e| e.manifest.version.to_string())
            .collect()
    }
}

impl Entry {
    fn validate(e: RawEntry, base: Option<&Path>, file: &str) -> Result<Entry, String> {
        let raw_manifest = RawManifest {
            name: e.name.clone(),
            namespace: e.namespace.clone(),
            version: e.version.clone(),
            contract: e.contract.clone(),
            priority: e.priority,
            description: e.description.clone(),
            permissions: e.permissions.clone(),
            dependencies: e.dependencies.clone(),
            conflicts: e.conflicts.clone(),
            config: e.config.clone(),
        };
        let manifest = raw_manifest.clone().validate(file).map_err(|m| {
            format!(
                "{}{}",
                m.field.map(|f| format!("`{f}`: ")).unwrap_or_default(),
                m.message
            )
        })?;
        let sha256 = e.sha256.to_ascii_lowercase();
        hex_array::<32>(&sha256, "sha256")?;
        if e.size == 0 || e.size > MAX_COMPONENT_SIZE {
            return Err(format!(
                "`size` must be from 1 to {MAX_COMPONENT_SIZE} bytes, not {}",
                e.size
            ));
        }
        let source = parse_source(&e.source, base)?;
        let signed_payload = signed_payload(&e);
        let signature = e
            .signature
            .as_deref()
            .map(|s| hex_array::<64>(s, "signature"))
            .transpose()?;
        if signature.is_some() != e.publisher.is_some() {
            return Err("`signature` and `publisher` go together".into());
        }
        // A repository plugin is installed with its own plugin.toml (config
        // defaults included); the entry must agree with what it states.
        let (manifest, raw_manifest) = match &source {
            Source::Repo(dir) => {
                let bundled = BUNDLED
                    .iter()
                    .find(|b| b.source == *dir)
                    .expect("checked by parse_source");
                let file = format!("{dir}/plugin.toml");
                let raw: RawManifest =
                    toml::from_str(bundled.manifest).map_err(|e| format!("{file}: {e}"))?;
                let built = raw.clone().validate(&file).map_err(|m| m.to_string())?;
                let agrees = built.name == manifest.name
                    && built.namespace == manifest.namespace
                    && built.version == manifest.version
                    && built.contract == manifest.contract
                    && built.priority == manifest.priority
                    && built.permissions == manifest.permissions
                    && built.dependencies == manifest.dependencies
                    && built.conflicts == manifest.conflicts;
                if !agrees {
                    return Err(format!(
                        "the entry does not describe {file} (name, version, contract, priority, permissions, dependencies and conflicts must match)"
                    ));
                }
                (built, raw)
            }
            _ => (manifest, raw_manifest),
        };
        Ok(Entry {
            manifest,
            raw_manifest,
            source,
            sha256,
            size: e.size,
            publisher: e.publisher,
            signature,
            signed_payload,
        })
    }
}

fn parse_source(text: &str, base: Option<&Path>) -> Result<Source, String> {
    if text.starts_with("https://") || text.starts_with("http://") {
        return Ok(Source::Url(text.to_string()));
    }
    if let Some(path) = text.strip_prefix("file://") {
        return Ok(Source::File(PathBuf::from(path)));
    }
    if text.contains("://") {
        return Err(format!(
            "`source` {text:?}: use https://, http://, file:// or a path"
        ));
    }
    if text.ends_with(".wasm") {
        let path = Path::new(text);
        return Ok(Source::File(match base {
            Some(base) if path.is_relative() => base.join(path),
            _ => path.to_path_buf(),
        }));
    }
    BUNDLED
        .iter()
        .find(|b| b.source == text.trim_end_matches('/'))
        .map(|b| Source::Repo(b.source))
        .ok_or_else(|| {
            format!(
                "`source` {text:?} is neither a URL, a .wasm file nor a plugin folder of this repository ({})",
                BUNDLED.iter().map(|b| b.source).collect::<Vec<_>>().join(", ")
            )
        })
}
