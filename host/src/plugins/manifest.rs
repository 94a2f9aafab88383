//! `plugin.toml`: parsed strictly into [`RawManifest`], then validated into
//! [`Manifest`]. Every error names the file, the field and what was expected.

use super::contract;
use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// Memory limit when the manifest sets none.
pub const DEFAULT_MEMORY_MB: u32 = 64;
/// Highest memory limit a manifest may ask for.
pub const MAX_MEMORY_MB: u32 = 1024;
/// Time limit per call when the manifest sets none.
pub const DEFAULT_TIME_LIMIT_MS: u64 = 5_000;
/// Highest time limit a manifest may ask for.
pub const MAX_TIME_LIMIT_MS: u64 = 300_000;
/// Highest per-call model token budget a manifest may ask for.
pub const MAX_LLM_TOKENS: u32 = 1_000_000;

/// Longest manifest file read, in bytes; a larger file is refused from its
/// metadata before it is read.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Deepest nesting of tables and arrays in `[config]`: deep enough for any
/// real configuration, and far enough below the TOML reader's own limit
/// that the manifest hearth writes into its store always reads back.
pub const MAX_CONFIG_DEPTH: usize = 32;
/// Longest plugin or tool description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;

/// Whether a character can disguise text or drive a terminal: control
/// characters (C0, DEL, C1: ANSI and OSC sequences start with them) and
/// the invisible format characters that reorder or hide text (bidi
/// overrides and isolates, zero-width characters). Plugin-controlled
/// text that people read must not contain them.
pub fn is_disguising(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Checks a description a person will read: at most
/// [`MAX_DESCRIPTION_BYTES`], and nothing that could disguise it.
pub fn check_description(text: &str) -> Result<(), String> {
    if text.len() > MAX_DESCRIPTION_BYTES {
        return Err(format!(
            "is {} bytes; the limit is {MAX_DESCRIPTION_BYTES}",
            text.len()
        ));
    }
    if let Some(c) = text.chars().find(|c| is_disguising(*c)) {
        return Err(format!(
            "contains the control or formatting character U+{:04X}, which could disguise it on a terminal",
            c as u32
        ));
    }
    Ok(())
}

/// Namespaces no plugin may claim: they name the host itself.
pub const RESERVED_NAMESPACES: &[&str] = &[
    "hearth", "host", "system", "admin", "core", "std", "wasi", "builtin", "plugin", "plugins",
];

/// A manifest problem: which file, which field, what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{message}", field.as_ref().map(|f| format!("`{f}`: ")).unwrap_or_default())]
pub struct ManifestError {
    /// The manifest's file name or description.
    pub file: String,
    /// The offending field, when one is to blame.
    pub field: Option<String>,
    /// What was wrong and what was expected.
    pub message: String,
}

/// `plugin.toml` exactly as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawManifest {
    /// Plugin name.
    pub name: String,
    /// Namespace its tools are exposed under.
    pub namespace: String,
    /// Semver version.
    pub version: String,
    /// Contract version it was built against.
    pub contract: String,
    /// Ordering among plugins offering the same tool or hook (higher first).
    #[serde(default)]
    pub priority: i32,
    /// One-line description.
    pub description: String,
    /// Capabilities it asks for.
    #[serde(default)]
    pub permissions: RawPermissions,
    /// Namespace → semver requirement.
    #[serde(default)]
    pub dependencies: BTreeMap<String, String>,
    /// Namespace → semver requirement of plugins it cannot run beside.
    #[serde(default)]
    pub conflicts: BTreeMap<String, String>,
    /// Configuration defaults.
    #[serde(default)]
    pub config: toml::Table,
}

/// `[permissions]` exactly as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPermissions {
    /// Origins (`https://host[:port]`) it may send HTTP requests to.
    #[serde(default)]
    pub http: Vec<String>,
    /// Whether it may use its key-value namespace.
    #[serde(default)]
    pub kv: bool,
    /// Model tokens one call may spend.
    #[serde(default)]
    pub llm_tokens: u32,
    /// Linear memory limit in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Wall-clock limit per call in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
    /// Access to conversations through the `before-prompt` and
    /// `after-response` hooks: `"read"` or `"modify"` (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
}

/// What a plugin may do with the conversations it observes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConversationAccess {
    /// Never sees a prompt or an answer: it may not observe `before-prompt`
    /// or `after-response`.
    #[default]
    None,
    /// Sees every user prompt and model answer; may not change them.
    Read,
    /// Sees them and may rewrite or refuse them.
    Modify,
}

impl ConversationAccess {
    /// Parses the manifest's `conversation` value.
    pub fn parse(text: Option<&str>) -> Result<ConversationAccess, String> {
        match text {
            None => Ok(ConversationAccess::None),
            Some("read") => Ok(ConversationAccess::Read),
            Some("modify") => Ok(ConversationAccess::Modify),
            Some(other) => Err(format!(
                "`{other}` is not a conversation access; expected \"read\" or \"modify\""
            )),
        }
    }

    /// The manifest's spelling (`None` when not granted).
    pub fn as_manifest(self) -> Option<&'static str> {
        match self {
            ConversationAccess::None => None,
            ConversationAccess::Read => Some("read"),
            ConversationAccess::Modify => Some("modify"),
        }
    }

    /// How the permission reads to a person deciding whether to grant it.
    pub fn describe(self) -> Option<&'static str> {
        match self {
            ConversationAccess::None => None,
            ConversationAccess::Read => {
                Some("reading every prompt and answer of your conversations")
            }
            ConversationAccess::Modify => Some(
                "reading, rewriting and refusing every prompt and answer of your conversations",
            ),
        }
    }
}

/// A validated identifier: a name or namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ident(String);

impl Ident {
    /// Validates `text`: 1–40 lowercase ASCII letters, digits and single
    /// hyphens, starting with a letter. Non-ASCII is refused so that no two
    /// names can look alike.
    pub fn parse(text: &str) -> Result<Ident, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.len() > 40 {
            return Err(format!("`{text}` is longer than 40 characters"));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii()) {
            return Err(format!(
                "`{text}` contains `{c}`: only ASCII letters, digits and '-' are allowed"
            ));
        }
        if text.contains('_') {
            return Err(format!("`{text}`: use '-' between words, not '_'"));
        }
        if text.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("`{text}` must be lowercase"));
        }
        if !text.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(format!("`{text}` must start with a letter"));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!(
                "`{text}` contains `{c}`: only letters, digits and '-' are allowed"
            ));
        }
        if text.ends_with('-') || text.contains("--") {
            return Err(format!("`{text}`: '-' must sit between letters or digits"));
        }
        Ok(Ident(text.to_string()))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One origin a plugin may reach over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    /// `http` or `https`.
    pub scheme: String,
    /// Lower-case host name or IP literal; `*.example.com` matches subdomains.
    pub host: String,
    /// Port (the scheme's default when not written).
    pub port: u16,
}

impl HttpGrant {
    /// Parses `scheme://host[:port]`.
    pub fn parse(text: &str) -> Result<HttpGrant, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("`{text}` must look like https://host[:port]"))?;
        let default_port = match scheme {
            "https" => 443,
            "http" => 80,
            _ => return Err(format!("`{text}`: scheme must be http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "`{text}`: give only scheme, host and port (no path, query or user)"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{text}`: port `{p}` is not a number from 1 to 65535"))?;
                (h, port)
            }
            _ => (rest, default_port),
        };
        let host = host.to_ascii_lowercase();
        if host.is_empty() || host == "*" {
            return Err(format!(
                "`{text}`: name the host; granting every host is not allowed"
            ));
        }
        if !host.is_ascii() {
            return Err(format!("`{text}`: write non-ASCII host names in punycode"));
        }
        Ok(HttpGrant {
            scheme: scheme.to_string(),
            host,
            port,
        })
    }

    /// Whether a request to `scheme://host:port` is covered by this grant.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if self.scheme != scheme || self.port != port {
            return false;
        }
        let host = host.to_ascii_lowercase();
        match self.host.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => self.host == host,
        }
    }

    /// Whether the grant itself names a loopback or private address, which
    /// is then allowed even though such addresses are blocked by default.
    pub fn names_local_address(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok()
    }
}

impl fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Validated capabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Permissions {
    /// Origins it may reach.
    pub http: Vec<HttpGrant>,
    /// Key-value store access.
    pub kv: bool,
    /// Model tokens per call (0: no model access).
    pub llm_tokens: u32,
    /// Linear memory limit in bytes.
    pub memory_bytes: usize,
    /// Wall-clock limit per call.
    pub time_limit: Duration,
    /// Access to conversations through observer hooks.
    pub conversation: ConversationAccess,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Plugin name.
    pub name: Ident,
    /// Namespace of its tools.
    pub namespace: Ident,
    /// Its version.
    pub version: Version,
    /// Contract version it targets.
    pub contract: Version,
    /// Priority (higher runs first).
    pub priority: i32,
    /// Description.
    pub description: String,
    /// Capabilities.
    pub permissions: Permissions,
    /// Dependencies by namespace.
    pub dependencies: BTreeMap<Ident, VersionReq>,
    /// Conflicts by namespace.
    pub conflicts: BTreeMap<Ident, VersionReq>,
    /// Configuration defaults as a JSON object.
    pub config: serde_json::Value,
}

impl Manifest {
    /// Reads and validates a `plugin.toml` file.
    pub fn from_file(path: &Path) -> Result<Manifest, ManifestError> {
        let text =
            crate::home::read_text_capped(path, MAX_MANIFEST_BYTES).map_err(|e| ManifestError {
                file: path.display().to_string(),
                field: None,
                message: format!("cannot read: {e}"),
            })?;
        Manifest::parse(&text, &path.display().to_string())
    }

    /// Parses and validates manifest text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError {
            file: file.to_string(),
            field: None,
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        raw.validate(file)
    }
}

impl RawManifest {
    /// Checks every field and returns the validated manifest.
    pub fn validate(self, file: &str) -> Result<Manifest, ManifestError> {
        let err = |field: &str, message: String| ManifestError {
            file: file.to_string(),
            field: Some(field.to_string()),
            message,
        };
        let name = Ident::parse(&self.name).map_err(|m| err("name", m))?;
        let namespace = Ident::parse(&self.namespace).map_err(|m| err("namespace", m))?;
        if RESERVED_NAMESPACES.contains(&namespace.as_str()) {
            return Err(err(
                "namespace",
                format!("`{namespace}` is reserved for the host; choose another"),
            ));
        }
        let version = Version::parse(&self.version).map_err(|e| {
            err(
                "version",
                format!("`{}` is not a semver version: {e}", self.version),
            )
        })?;
        let contract = Version::parse(&self.contract).map_err(|e| {
            err(
                "contract",
                format!("`{}` is not a semver version: {e}", self.contract),
            )
        })?;
        contract::check_supported(&contract).map_err(|m| err("contract", m))?;
        if self.description.trim().is_empty() {
            return Err(err("description", "must not be empty".into()));
        }
        check_description(&self.description).map_err(|m| err("description", m))?;
        let p = self.permissions;
        let http = p
            .http
            .iter()
            .map(|g| HttpGrant::parse(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| err("permissions.http", m))?;
        let memory_mb = p.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
        if !(1..=MAX_MEMORY_MB).contains(&memory_mb) {
            return Err(err(
                "permissions.memory-mb",
                format!("{memory_mb} is out of range; expected 1 to {MAX_MEMORY_MB}"),
            ));
        }
        let time_limit_ms = p.time_limit_ms.unwrap_or(DEFAULT_TIME_LIMIT_MS);
        if !(1..=MAX_TIME_LIMIT_MS).contains(&time_limit_ms) {
            return Err(err(
                "permissions.time-limit-ms",
                format!("{time_limit_ms} is out of range; expected 1 to {MAX_TIME_LIMIT_MS}"),
            ));
        }
        let conversation = ConversationAccess::parse(p.conversation.as_deref())
            .map_err(|m| err("permissions.conversation", m))?;
        if p.llm_tokens > MAX_LLM_TOKENS {
            return Err(err(
                "permissions.llm-tokens",
                format!("{} is more than the maximum {MAX_LLM_TOKENS}", p.llm_tokens),
            ));
        }
        let deps = |table: BTreeMap<String, String>, what: &str| {
            table
                .into_iter()
                .map(|(ns, req)| {
                    let field = format!("{what}.{ns}");
                    let ident = Ident::parse(&ns).map_err(|m| err(&field, m))?;
                    let req = VersionReq::parse(&req).map_err(|e| {
                        err(&field, format!("`{req}` is not a semver requirement: {e}"))
                    })?;
                    Ok((ident, req))
                })
                .collect::<Result<BTreeMap<_, _>, ManifestError>>()
        };
        let dependencies = deps(self.dependencies, "dependencies")?;
        if dependencies.contains_key(&namespace) {
            return Err(err(
                &format!("dependencies.{namespace}"),
                "a plugin cannot depend on itself".into(),
            ));
        }
        let conflicts = deps(self.conflicts, "conflicts")?;
        let config = serde_json::to_value(&self.config)
            .map_err(|e| err("config", format!("cannot be represented as JSON: {e}")))?;
        fn depth(value: &serde_json::Value) -> usize {
            match value {
                serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
                serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }
        // The table itself is one level.
        let config_depth = depth(&config).saturating_sub(1);
        if config_depth > MAX_CONFIG_DEPTH {
            return Err(err(
                "config",
                format!("nests {config_depth} levels deep; the limit is {MAX_CONFIG_DEPTH}"),
            ));
        }
        Ok(Manifest {
            name,
            namespace,
            version,
            contract,
            priority: self.priority,
            description: self.description,
            permissions: Permissions {
                http,
                kv: p.kv,
                llm_tokens: p.llm_tokens,
                memory_bytes: memory_mb as usize * 1024 * 1024,
                time_limit: Duration::from_millis(time_limit_ms),
                conversation,
            },
            dependencies,
            conflicts,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "weather"
namespace = "weather"
version = "1.2.3"
contract = "0.1.0"
description = "weather"

[permissions]
http = ["https://wttr.in", "http://127.0.0.1:8080", "https://*.example.com"]
kv = true
memory-mb = 16

[dependencies]
calc = "^0.1"

[config]
units = "metric"
"#;

    fn error_of(text: &str) -> String {
        Manifest::parse(text, "plugin.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(GOOD, "plugin.toml").unwrap();
        assert_eq!(m.namespace.as_str(), "weather");
        assert_eq!(m.permissions.memory_bytes, 16 << 20);
        assert_eq!(
            m.permissions.time_limit,
            Duration::from_millis(DEFAULT_TIME_LIMIT_MS)
        );
        assert_eq!(m.permissions.http[1].port, 8080);
        assert!(m.permissions.http[0].allows("https", "WTTR.in", 443));
        assert!(!m.permissions.http[0].allows("http", "wttr.in", 80));
        assert!(!m.permissions.http[0].allows("https", "wttr.in.evil.com", 443));
        assert!(m.permissions.http[2].allows("https", "api.example.com", 443));
        assert!(!m.permissions.http[2].allows("https", "example.com", 443));
        assert!(!m.permissions.http[2].allows("https", "evilexample.com", 443));
        assert!(m.permissions.http[1].names_local_address());
        assert_eq!(m.config["units"], "metric");
        assert!(m.dependencies[&Ident::parse("calc").unwrap()].matches(&Version::new(0, 1, 5)));
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = error_of(&GOOD.replace("kv = true", "kv = true\nfilesystem = true"));
        assert!(
            e.contains("plugin.toml") && e.contains("unknown field `filesystem`"),
            "{e}"
        );
    }

    #[test]
    fn bad_fields_are_named_with_the_expectation() {
        let cases = [
            (
                "namespace = \"weather\"",
                "namespace = \"Weather\"",
                "`namespace`: `Weather` must be lowercase",
            ),
            (
                "namespace = \"weather\"",
                "namespace = \"my_tools\"",
                "use '-' between words, not '_'",
            ),
            (
                "namespace = \"weather\"",
                "namespace = \"wеather\"",
                "only ASCII",
            ),
            (
                "namespace = \"weather\"",
                "namespace = \"hearth\"",
                "`hearth` is reserved",
            ),
            (
                "version = \"1.2.3\"",
                "version = \"1.2\"",
                "`version`: `1.2` is not a semver version",
            ),
            (
                "contract = \"0.1.0\"",
                "contract = \"9.0.0\"",
                "`contract`: contract 9.0.0 is not supported",
            ),
            (
                "memory-mb = 16",
                "memory-mb = 0",
                "`permissions.memory-mb`: 0 is out of range",
            ),
            ("\"https://wttr.in\",", "\"*\",", "`permissions.http`"),
            (
                "\"https://wttr.in\",",
                "\"https://wttr.in/path\",",
                "no path",
            ),
            (
                "calc = \"^0.1\"",
                "calc = \"banana\"",
                "`dependencies.calc`: `banana` is not a semver requirement",
            ),
            (
                "calc = \"^0.1\"",
                "weather = \"*\"",
                "cannot depend on itself",
            ),
        ];
        for (from, to, expected) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "case {to} did not apply");
            let e = error_of(&text);
            assert!(e.contains(expected), "for {to}: {e}");
        }
    }

    #[test]
    fn missing_required_fields_are_named() {
        let e = error_of(&GOOD.replace("description = \"weather\"\n", ""));
        assert!(e.contains("missing field `description`"), "{e}");
    }
}
