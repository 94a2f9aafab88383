//! The plugin index (`registry.toml`), publisher keys and signatures, and
//! fetching components with a byte cap.
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
pub const BUILTIN_INDEX: &str = include_str!("../../../registry.toml");

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

/// What a v1 signature signed: namespace, name, version and digest only.
pub fn signed_message_v1(namespace: &str, name: &str, version: &str, sha256: &str) -> Vec<u8> {
    format!("{SIGNATURE_CONTEXT_V1}\n{namespace}\n{name}\n{version}\n{sha256}\n").into_bytes()
}

/// What a publisher signs for an entry: [`SIGNATURE_CONTEXT`], a newline,
/// and the entry as canonical JSON without `signature` and `source`.
pub fn signed_payload(entry: &RawEntry) -> Vec<u8> {
    let mut entry = entry.clone();
    entry.sha256 = entry.sha256.to_ascii_lowercase();
    let mut value = serde_json::to_value(&entry).expect("entries serialise");
    if let Some(fields) = value.as_object_mut() {
        fields.remove("signature");
        fields.remove("source");
    }
    let mut out = format!("{SIGNATURE_CONTEXT}\n").into_bytes();
    canonical_json(&value, &mut out);
    out
}

/// JSON with object keys sorted and no whitespace, whatever order the map
/// type keeps, so signer and verifier agree byte for byte.
fn canonical_json(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            out.push(b'{');
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                canonical_json(&map[key], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

/// The key id of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..16].to_string()
}

/// The public keys the user trusts: `$HEARTH_HOME/trusted-keys.toml`,
/// `[keys] <id> = "<hex public key>"`.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, VerifyingKey>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTrusted {
    #[serde(default)]
    keys: BTreeMap<String, String>,
}

impl TrustedKeys {
    fn path(home: &Home) -> PathBuf {
        home.root.join("trusted-keys.toml")
    }

    /// Loads the trusted keys; a key whose id does not match is an error.
    pub fn load(home: &Home) -> Result<TrustedKeys, String> {
        let path = Self::path(home);
        let text = match crate::home::read_text_capped(&path, MAX_KEYS_FILE_BYTES) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TrustedKeys::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let raw: RawTrusted =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut keys = BTreeMap::new();
        for (id, hex_key) in raw.keys {
            let bytes = hex_array::<32>(&hex_key, &format!("keys.{id}"))
                .map_err(|m| format!("{}: {m}", path.display()))?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|e| {
                format!("{}: `keys.{id}` is not an ed25519 key: {e}", path.display())
            })?;
            if key_id(&key) != id {
                return Err(format!(
                    "{}: key `{id}` has id {}; fix the id",
                    path.display(),
                    key_id(&key)
                ));
            }
            keys.insert(id, key);
        }
        Ok(TrustedKeys { keys })
    }

    /// Trusts a public key (hex); returns its id.
    pub fn add(home: &Home, public_hex: &str) -> Result<String, String> {
        let bytes = hex_array::<32>(public_hex.trim(), "public key")?;
        let key =
            VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 key: {e}"))?;
        let path = Self::path(home);
        let mut raw: RawTrusted = match crate::home::read_text_capped(&path, MAX_KEYS_FILE_BYTES) {
            Ok(t) => toml::from_str(&t).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RawTrusted::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let id = key_id(&key);
        raw.keys.insert(id.clone(), hex::encode(key.as_bytes()));
        let text = toml::to_string(&raw).map_err(|e| e.to_string())?;
        super::store::write_atomically(&path, text.as_bytes())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(id)
    }

    /// Checks an entry's signature; the error says what is wrong. A
    /// signature under the v1 scheme, which does not cover permissions or
    /// config, is accepted only when `allow_v1`.
    pub fn verify(&self, entry: &Entry, allow_v1: bool) -> Result<(), String> {
        let (Some(publisher), Some(signature)) = (&entry.publisher, &entry.signature) else {
            return Err(format!("{} is not signed", entry.id()));
        };
        let Some(key) = self.keys.get(publisher) else {
            return Err(format!(
                "{} is signed by key {publisher}, which you do not trust (add it with `hearth registry trust <public key>`)",
                entry.id()
            ));
        };
        let signature = Signature::from_bytes(signature);
        if key.verify(&entry.signed_payload, &signature).is_ok() {
            return Ok(());
        }
        let m = &entry.manifest;
        let v1 = signed_message_v1(
            m.namespace.as_str(),
            m.name.as_str(),
            &m.version.to_string(),
            &entry.sha256,
        );
        if key.verify(&v1, &signature).is_ok() {
            if allow_v1 {
                tracing::warn!(
                    "{} carries a v1 signature: its permissions and config are not signed",
                    entry.id()
                );
                return Ok(());
            }
            return Err(format!(
                "{} carries a v1 signature, which covers its name, version and digest but not its permissions or config; \
                 ask the publisher to sign it again, or pass --allow-v1-signatures once you have checked what it asks for",
                entry.id()
            ));
        }
        Err(format!(
            "bad signature: {} does not verify with key {publisher} (the entry was changed after signing, or signed by another key)",
            entry.id()
        ))
    }
}

/// Generates a publisher key pair; writes the secret key (hex) to `path`
/// with owner-only permissions; returns (key id, public key hex).
pub fn keygen(path: &Path) -> Result<(String, String), String> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| format!("no randomness: {e}"))?;
    let key = SigningKey::from_bytes(&secret);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    writeln!(file, "{}", hex::encode(secret)).map_err(|e| e.to_string())?;
    let public = key.verifying_key();
    Ok((key_id(&public), hex::encode(public.as_bytes())))
}

/// Reads a secret key written by [`keygen`].
pub fn read_secret(path: &Path) -> Result<SigningKey, String> {
    let text = crate::home::read_text_capped(path, 4096)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(SigningKey::from_bytes(&hex_array::<32>(
        text.trim(),
        "secret key",
    )?))
}

/// Builds a signed entry for a component and its manifest, ready to append
/// to an index.
pub fn signed_entry(
    key: &SigningKey,
    manifest: &RawManifest,
    component: &[u8],
    source: &str,
) -> RawEntry {
    let sha256 = sha256_hex(component);
    let mut entry = RawEntry {
        name: manifest.name.clone(),
        namespace: manifest.namespace.clone(),
        version: manifest.version.clone(),
        contract: manifest.contract.clone(),
        description: manifest.description.clone(),
        source: source.to_string(),
        publisher: Some(key_id(&key.verifying_key())),
        sha256,
        size: component.len() as u64,
        signature: None,
        priority: manifest.priority,
        permissions: manifest.permissions.clone(),
        dependencies: manifest.dependencies.clone(),
        conflicts: manifest.conflicts.clone(),
        config: manifest.config.clone(),
    };
    sign_entry(key, &mut entry);
    entry
}

/// Signs (or signs again) an entry as it now stands, with `key`.
pub fn sign_entry(key: &SigningKey, entry: &mut RawEntry) {
    entry.publisher = Some(key_id(&key.verifying_key()));
    entry.signature = Some(hex::encode(key.sign(&signed_payload(entry)).to_bytes()));
}

/// The text of the index at `path` with `entry` added: appended to the
/// existing text (kept as written), or, when an entry of the same
/// namespace and version is listed, refused — or put in its place when
/// `replace`. A missing or empty file starts a new index.
pub fn index_with(path: &Path, entry: &RawEntry, replace: bool) -> Result<String, String> {
    let old = match crate::home::read_text_capped(path, MAX_INDEX_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    if old.trim().is_empty() {
        return Ok(format!("format = {FORMAT}\n\n{}", entry_toml(entry)));
    }
    let mut table: toml::Table =
        toml::from_str(&old).map_err(|e| format!("is not valid TOML: {e}"))?;
    let same = |t: &toml::Value| {
        t.get("namespace").and_then(toml::Value::as_str) == Some(entry.namespace.as_str())
            && t.get("version").and_then(toml::Value::as_str) == Some(entry.version.as_str())
    };
    let listed = table
        .get("plugin")
        .and_then(toml::Value::as_array)
        .is_some_and(|entries| entries.iter().any(same));
    if !listed {
        let separator = if old.ends_with('\n') { "\n" } else { "\n\n" };
        return Ok(format!("{old}{separator}{}", entry_toml(entry)));
    }
    if !replace {
        return Err(format!(
            "{}@{} is already listed; pass --replace to put this entry in its place",
            entry.namespace, entry.version
        ));
    }
    let new = toml::Value::try_from(entry).map_err(|e| e.to_string())?;
    if let Some(toml::Value::Array(entries)) = table.get_mut("plugin")
        && let Some(old) = entries.iter_mut().find(|e| same(e))
    {
        *old = new;
    }
    toml::to_string(&table).map_err(|e| e.to_string())
}

/// The TOML text of one entry, to append to an index.
pub fn entry_toml(entry: &RawEntry) -> String {
    #[derive(Serialize)]
    struct One<'a> {
        plugin: [&'a RawEntry; 1],
    }
    toml::to_string(&One { plugin: [entry] }).expect("entries serialise")
}

/// A downloaded component, hashed while written.
#[derive(Debug)]
pub struct Staged {
    /// The staging file (removed on drop unless kept).
    pub file: tempfile::NamedTempFile,
    /// Hex SHA-256 of what arrived.
    pub sha256: String,
    /// Bytes that arrived.
    pub size: u64,
}

struct HashingWriter<'a> {
    file: &'a mut std::fs::File,
    hasher: Sha256,
    size: u64,
    cap: u64,
}

impl HashingWriter<'_> {
    fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.size += chunk.len() as u64;
        if self.size > self.cap {
            return Err(format!(
                "larger than its declared size of {} bytes",
                self.cap
            ));
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .map_err(|e| format!("writing the staging file: {e}"))
    }
}

/// Fetches an entry's component into `staging`, never reading more than
/// its declared size plus one byte, hashing as it goes.
pub async fn fetch(entry: &Entry, staging: &Path) -> Result<Staged, String> {
    std::fs::create_dir_all(staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(staging)
        .map_err(|e| format!("creating a staging file: {e}"))?;
    let mut sink = HashingWriter {
        file: file.as_file_mut(),
        hasher: Sha256::new(),
        size: 0,
        cap: entry.size,
    };
    match &entry.source {
        Source::Repo(dir) => {
            let bundled = BUNDLED
                .iter()
                .find(|b| b.source == *dir)
                .expect("validated source");
            sink.write(bundled.component)?;
        }
        Source::File(path) => {
            use std::io::Read;
            let f = std::fs::File::open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            // One byte more than declared is enough to know it is too big.
            let mut limited = f.take(entry.size + 1);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = limited
                    .read(&mut buf)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                if n == 0 {
                    break;
                }
                sink.write(&buf[..n])?;
            }
        }
        Source::Url(url) => {
            // Streamed into the staging file as it arrives, never more
            // than the declared size.
            let client = registry_client().map_err(|e| e.to_string())?;
            let response = client.get_ok(url).await.map_err(|e| e.to_string())?;
            let mut body = client.body("GET", response, entry.size);
            loop {
                match body.chunk().await {
                    Ok(Some(chunk)) => sink.write(&chunk)?,
                    Ok(None) => break,
                    Err(HttpError::TooLarge { limit, .. }) => {
                        return Err(format!(
                            "GET {url}: larger than its declared size of {limit} bytes"
                        ));
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
    let sha256 = hex::encode(sink.hasher.finalize());
    let size = sink.size;
    file.as_file()
        .sync_all()
        .map_err(|e| format!("syncing the staging file: {e}"))?;
    Ok(Staged { file, sha256, size })
}

/// The client for registry downloads (indexes and components).
///
/// Redirects are not followed: a component's digest and size are pinned by
/// its signed entry, and the index is named by the URL the user gave, so
/// both are fetched from exactly that URL, and a 3xx is reported with
/// where it points rather than silently followed to a host nobody named
/// (possibly over plain HTTP). Sixty seconds for the whole download, as
/// before; fifteen of them at most for connecting.
fn registry_client() -> Result<Client, HttpError> {
    Client::new(Options {
        connect_timeout: std::time::Duration::from_secs(15),
        total_timeout: Some(std::time::Duration::from_secs(60)),
        idle_timeout: None,
        follow_redirects: false,
    })
}

/// GETs `url` (200 OK only), failing with [`HttpError::TooLarge`] past
/// `cap` bytes.
async fn get_capped(url: &str, cap: u64) -> Result<Vec<u8>, HttpError> {
    let client = registry_client()?;
    let response = client.get_ok(url).await?;
    client.body("GET", response, cap).bytes().await
}

/// GETs a URL into `out`, failing past `cap` bytes (the error names the
/// limit and the URL), on answers other than 200 (redirects included),
/// and after 60 seconds. HTTPS uses the Mozilla root certificates.
pub async fn http_get(url: &str, cap: u64, out: &mut Vec<u8>) -> Result<(), String> {
    out.extend_from_slice(&get_capped(url, cap).await.map_err(|e| e.to_string())?);
    Ok(())
}
