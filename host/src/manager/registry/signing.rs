//! Publisher keys and signatures: what an entry's signature covers (the
//! canonical JSON of everything that decides what the plugin is and may
//! do), key ids, the user's trusted keys, and signing new entries.

use super::*;

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
        crate::manager::store::write_atomically(&path, text.as_bytes())
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
