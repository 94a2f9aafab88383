//! A loaded plugin: [`LoadedPlugin`] (what `load` produced, shared by every
//! call), the [`ToolInfo`] of each tool it describes with the argument check
//! against its schema, the plugin's JSON summary, the policy deciding whether
//! it earns spare instances, and the checks every tool schema passes before
//! its validator is built (size, depth, local `$ref`s, bounded cost).

use super::contract::latest::PluginPre;
use super::load::CacheOutcome;
use super::state::HostState;
use super::{EventKind, LoadError, Manifest, SPARE_SAMPLES, http, manifest, sanitize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Largest JSON Schema of one tool's arguments, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 16 * 1024;
/// Deepest nesting of a tool's JSON Schema.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// Longest chain of `$ref`s followed within a schema.
pub const MAX_SCHEMA_REF_CHAIN: usize = 16;
/// Most schema nodes a check may visit once every `$ref` is expanded: this
/// bounds the work of checking any argument at one place of the input.
pub const MAX_SCHEMA_COST: u64 = 10_000;

/// A tool as a plugin described it.
#[derive(Clone)]
pub struct ToolInfo {
    /// Unqualified name.
    pub name: String,
    /// Description for the model.
    pub description: String,
    /// JSON Schema of the arguments.
    pub schema: serde_json::Value,
    /// `schema`, compiled once at load; every call's arguments are checked
    /// against it before the plugin runs.
    validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for ToolInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolInfo")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl ToolInfo {
    /// One tool described by something other than a plugin (an MCP
    /// server), checked by the same rules as a plugin's: name, description,
    /// and a schema that is small, shallow and cheap to check.
    pub fn checked(name: &str, description: &str, schema: &str) -> Result<ToolInfo, LoadError> {
        let mut one = validate_tools(&[(name.into(), description.into(), schema.into())])?;
        Ok(one.remove(0))
    }

    /// Checks arguments against the tool's schema; the error names every
    /// problem with where it is (at most a few).
    pub fn check_arguments(&self, arguments: &str) -> Result<(), String> {
        let value: serde_json::Value = serde_json::from_str(arguments)
            .map_err(|e| format!("arguments of `{}` are not JSON: {e}", self.name))?;
        let problems: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(5)
            .map(|e| {
                let at = e.instance_path.to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("at {at}: {e}")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "arguments of `{}` do not match its schema: {}",
                self.name,
                problems.join("; ")
            ))
        }
    }
}

/// A validated, compiled, pre-instantiated plugin. Clones share the
/// compiled code.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// Its manifest.
    pub manifest: Manifest,
    /// SHA-256 of the component bytes.
    pub digest: String,
    /// The contract version it exports its `guest` interface at.
    pub contract: semver::Version,
    /// Its tools.
    pub tools: Vec<ToolInfo>,
    /// The events it observes.
    pub events: Vec<EventKind>,
    /// Its effective configuration.
    pub config: serde_json::Value,
    /// The component's imports.
    pub imports: Vec<String>,
    /// How the compiled code was obtained.
    pub cache: CacheOutcome,
    pub(super) pre: PluginPre<HostState>,
    pub(super) http_policy: http::HttpPolicy,
    /// The namespace, shared by every store's share of the memory budget.
    pub(super) budget_key: Arc<str>,
    /// Whether it is worth keeping a spare instance of.
    pub(super) spares: SparePolicy,
}

/// What decides whether a plugin gets spare instances (see [`SPARE_AFTER`](super::SPARE_AFTER)).
pub(super) struct SparePolicy {
    /// Instantiations on the call path measured so far.
    samples: AtomicU32,
    /// The quickest of them, in microseconds.
    quickest_micros: AtomicU64,
    /// Set when making a spare failed: the plugin is instantiated on the
    /// call path from then on, where failures are reported to a caller.
    pub(super) disabled: AtomicBool,
}

impl Default for SparePolicy {
    fn default() -> Self {
        SparePolicy {
            samples: AtomicU32::new(0),
            quickest_micros: AtomicU64::new(u64::MAX),
            disabled: AtomicBool::new(false),
        }
    }
}

impl Clone for SparePolicy {
    fn clone(&self) -> Self {
        SparePolicy {
            samples: self.samples.load(Ordering::Relaxed).into(),
            quickest_micros: self.quickest_micros.load(Ordering::Relaxed).into(),
            disabled: self.disabled.load(Ordering::Relaxed).into(),
        }
    }
}

impl SparePolicy {
    pub(super) fn measured(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.quickest_micros.fetch_min(micros, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn worth_it(&self, threshold: Duration) -> bool {
        !self.disabled.load(Ordering::Relaxed)
            && self.samples.load(Ordering::Relaxed) >= SPARE_SAMPLES
            && Duration::from_micros(self.quickest_micros.load(Ordering::Relaxed)) >= threshold
    }
}

impl LoadedPlugin {
    /// What the plugin is and may do, as JSON (for `plugin list` and
    /// `GET /v1/plugins`): tools by qualified name with their schemas,
    /// permissions, dependencies.
    pub fn summary(&self) -> serde_json::Value {
        let m = &self.manifest;
        serde_json::json!({
            "namespace": m.namespace.as_str(),
            "name": m.name.as_str(),
            "version": m.version.to_string(),
            "contract": self.contract.to_string(),
            "description": m.description,
            "digest": self.digest,
            "tools": self.tools.iter().map(|t| serde_json::json!({
                "name": format!("{}.{}", m.namespace, t.name),
                "description": t.description,
                "parameters": t.schema,
            })).collect::<Vec<_>>(),
            "permissions": {
                "http": m.permissions.http.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
                "kv": m.permissions.kv,
                "llm_tokens": m.permissions.llm_tokens,
                "memory_bytes": m.permissions.memory_bytes,
                "time_limit_ms": m.permissions.time_limit.as_millis() as u64,
                "conversation": m.permissions.conversation.as_manifest(),
            },
            "dependencies": m.dependencies.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
        })
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("namespace", &self.manifest.namespace)
            .field("version", &self.manifest.version)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Whether it offers `tool`.
    pub fn has_tool(&self, tool: &str) -> bool {
        self.tools.iter().any(|t| t.name == tool)
    }
}

pub(super) fn validate_tools(
    tools: &[(String, String, String)],
) -> Result<Vec<ToolInfo>, LoadError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(tools.len());
    for (name, description, schema_text) in tools {
        let bad = |problem: String| LoadError::BadTool {
            tool: sanitize(name, 64),
            problem,
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "tool names are 1-64 ASCII letters, digits, '_' or '-'".into()
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(bad("declared twice".into()));
        }
        manifest::check_description(description).map_err(|m| bad(format!("description {m}")))?;
        if schema_text.len() > MAX_SCHEMA_BYTES {
            return Err(bad(format!(
                "parameters schema is {} bytes; the limit is {MAX_SCHEMA_BYTES}",
                schema_text.len()
            )));
        }
        let schema: serde_json::Value = serde_json::from_str(schema_text)
            .map_err(|e| bad(format!("parameters schema is not JSON: {e}")))?;
        if !schema.is_object() {
            return Err(bad("parameters schema must be a JSON object".into()));
        }
        schema_cost(&schema).map_err(|m| bad(format!("parameters schema {m}")))?;
        // No resolver for remote or file references is built in: a schema
        // that points outside itself fails here instead of fetching.
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| bad(format!("parameters schema is not a valid JSON Schema: {e}")))?;
        out.push(ToolInfo {
            name: name.clone(),
            description: description.clone(),
            schema,
            validator: Arc::new(validator),
        });
    }
    Ok(out)
}

/// Bounds the work of compiling and checking against a schema: nesting at
/// most [`MAX_SCHEMA_DEPTH`], only local `#/...` references, chains of at
/// most [`MAX_SCHEMA_REF_CHAIN`], and at most [`MAX_SCHEMA_COST`] nodes
/// once every reference is expanded where it is used. A definition that
/// refers to the one below it twice, twenty levels deep, costs 2^20: refused
/// here, before the validator is built. A reference back into a schema being
/// expanded (a recursive schema) counts once: its work follows the input's
/// depth, which the request size bounds.
fn schema_cost(schema: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    fn depth_ok(v: &Value, depth: usize) -> bool {
        if depth > MAX_SCHEMA_DEPTH {
            return false;
        }
        match v {
            Value::Object(m) => m.values().all(|c| depth_ok(c, depth + 1)),
            Value::Array(a) => a.iter().all(|c| depth_ok(c, depth + 1)),
            _ => true,
        }
    }
    if !depth_ok(schema, 0) {
        return Err(format!("nests deeper than {MAX_SCHEMA_DEPTH} levels"));
    }
    struct Walk<'a> {
        root: &'a Value,
        memo: BTreeMap<String, u64>,
        expanding: Vec<String>,
    }
    impl Walk<'_> {
        fn cost(&mut self, v: &Value) -> Result<u64, String> {
            let mut total: u64 = 1;
            match v {
                Value::Object(m) => {
                    for (key, child) in m {
                        if key == "$dynamicRef" || key == "$recursiveRef" {
                            return Err(format!("uses `{key}`, which hearth does not accept"));
                        }
                        if key == "$ref" {
                            let Value::String(target) = child else {
                                return Err("has a `$ref` that is not a string".into());
                            };
                            total = total.saturating_add(self.reference(target)?);
                        } else {
                            total = total.saturating_add(self.cost(child)?);
                        }
                        if total > MAX_SCHEMA_COST {
                            return Ok(total);
                        }
                    }
                }
                Value::Array(a) => {
                    for child in a {
                        total = total.saturating_add(self.cost(child)?);
                        if total > MAX_SCHEMA_COST {
                            return Ok(total);
                        }
                    }
                }
                _ => {}
            }
            Ok(total)
        }

        fn reference(&mut self, target: &str) -> Result<u64, String> {
            let Some(pointer) = target.strip_prefix('#') else {
                return Err(format!(
                    "refers to `{}`; only references within the schema (#/...) are allowed",
                    sanitize(target, 200)
                ));
            };
            if let Some(&c) = self.memo.get(pointer) {
                return Ok(c);
            }
            if self.expanding.iter().any(|p| p == pointer) {
                return Ok(1);
            }
            if self.expanding.len() >= MAX_SCHEMA_REF_CHAIN {
                return Err(format!(
                    "follows references more than {MAX_SCHEMA_REF_CHAIN} deep"
                ));
            }
            let root = self.root;
            let Some(node) = root.pointer(pointer) else {
                return Err(format!(
                    "refers to `{}`, which it does not contain",
                    sanitize(target, 200)
                ));
            };
            self.expanding.push(pointer.to_string());
            let cost = self.cost(node);
            self.expanding.pop();
            let cost = cost?;
            self.memo.insert(pointer.to_string(), cost);
            Ok(cost)
        }
    }
    let mut walk = Walk {
        root: schema,
        memo: BTreeMap::new(),
        expanding: Vec::new(),
    };
    let cost = walk.cost(schema)?;
    if cost > MAX_SCHEMA_COST {
        return Err(format!(
            "is too expensive to check: expanding its references visits more than {MAX_SCHEMA_COST} nodes"
        ));
    }
    Ok(())
}
