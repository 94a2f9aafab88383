//! Loading a plugin, step 2 of the lifecycle in the [module docs](super):
//! [`Runtime::load`] checks the size, structure, imports and contract
//! version of the bytes, compiles them in a capped worker or loads them from
//! the verified cache ([`CacheOutcome`]), checks the imports again against
//! the compiled type, pre-instantiates, and asks `describe` and
//! `validate-config` under the load-time limit, their answers bounded
//! ([`MAX_TOOLS`]) and cached under the component, its configuration and
//! its limits.

use super::cache::{self, Lookup};
use super::call::{Op, OpResult};
use super::contract::latest::PluginPre;
use super::contract::{self, ImportClass, classify_import};
use super::plugin::{LoadedPlugin, SparePolicy, ToolInfo, validate_tools};
use super::runtime::Runtime;
use super::{
    CallScope, EventKind, InvokeError, LoadError, Manifest, compile, event_from_name, event_name,
    http, manifest, sanitize,
};
use std::sync::Arc;
use wasmtime::component::Component;

/// Most tools one plugin may describe.
pub const MAX_TOOLS: usize = 64;

/// Whether loading used the compiled cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a verified artifact.
    Hit,
    /// Compiled; nothing was cached.
    Compiled,
    /// Compiled because the cached artifact failed verification.
    Recompiled(String),
}

impl Runtime {
    /// Validates, compiles (or loads from the verified cache) and prepares a
    /// plugin. `config` overrides the manifest's defaults key by key. Nothing
    /// is activated; see [`Runtime::activate`].
    pub async fn load(
        &self,
        manifest: Manifest,
        bytes: &[u8],
        config: Option<&serde_json::Value>,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let inner = &self.inner;
        if bytes.len() > inner.options.max_component_bytes {
            return Err(LoadError::TooLarge {
                size: bytes.len(),
                limit: inner.options.max_component_bytes,
            });
        }
        compile::precheck(bytes).map_err(compile::PrecheckError::into_load_error)?;
        // Imports and the contract version are read from the bytes, so a
        // component that could never be activated is refused before it is
        // compiled.
        let surface = contract::surface(bytes).map_err(LoadError::Invalid)?;
        check_imports(&manifest, &surface.imports)?;
        let contract = contract::declared_contract(bytes, &surface).map_err(|e| match e {
            contract::ContractError::Unsupported(m) => LoadError::UnsupportedContract(m),
            contract::ContractError::NotAPlugin(m) => LoadError::NotAPlugin(m),
        })?;
        if (contract.major, contract.minor) != (manifest.contract.major, manifest.contract.minor) {
            return Err(LoadError::ContractMismatch {
                manifest: manifest.contract.clone(),
                component: contract,
            });
        }
        let digest = cache::sha256_hex(bytes);
        let (component, cache_outcome) = self.compile(&digest, bytes).await?;

        let imports: Vec<String> = component
            .component_type()
            .imports(&inner.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        // The compiled type is the authority; it names the same imports.
        check_imports(&manifest, &imports)?;
        let pre = inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::BadExports(format!("{e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| LoadError::BadExports(format!("{e:#}")))?;

        let mut effective = manifest.config.clone();
        if let (Some(base), Some(serde_json::Value::Object(overrides))) =
            (effective.as_object_mut(), config)
        {
            for (key, value) in overrides {
                base.insert(key.clone(), value.clone());
            }
        }
        let http_policy =
            http::HttpPolicy::new(manifest.namespace.as_str(), &manifest.permissions.http);
        let budget_key: Arc<str> = manifest.namespace.as_str().into();
        let mut plugin = LoadedPlugin {
            manifest,
            digest,
            contract,
            tools: Vec::new(),
            events: Vec::new(),
            config: effective,
            imports,
            cache: cache_outcome,
            pre,
            http_policy,
            budget_key,
            spares: SparePolicy::default(),
        };

        // Describe and validate in throwaway instances, under the same limits
        // as any call. The plugin is not active yet, so these cannot reach
        // other plugins or the model in any way that matters.
        //
        // Both answers depend only on the component, its configuration and
        // the limits it runs under, so they are cached under those: a plugin
        // is asked once, and a slow answer does not slow every later command.
        let config_json = plugin.config.to_string();
        let described_key = cache::sha256_hex(
            format!(
                "{}\n{}\n{:?}\n{config_json}",
                env!("CARGO_PKG_VERSION"),
                plugin.digest,
                plugin.manifest.permissions,
            )
            .as_bytes(),
        );
        if let Some(described) = inner.cache.described(&described_key) {
            match Described::from_cache(&described) {
                Ok(d) => {
                    (plugin.tools, plugin.events) = d.check(&plugin.manifest)?;
                    return Ok(Arc::new(plugin));
                }
                Err(why) => tracing::warn!("discarding a cached description: {why}"),
            }
        }
        let probe = Arc::new(plugin.clone());
        let load_error = |export: &'static str| {
            move |e: InvokeError| LoadError::Call {
                export,
                error: Box::new(e),
            }
        };
        let OpResult::Describe(description) = inner
            .run(&probe, CallScope::internal("describe"), Op::Describe)
            .await
            .map_err(load_error("describe"))?
        else {
            unreachable!("describe returns a description")
        };
        let described = Described::from_wit(description)?;
        (plugin.tools, plugin.events) = described.check(&plugin.manifest)?;
        let OpResult::Validated(verdict) = inner
            .run(
                &probe,
                CallScope::internal("validate-config"),
                Op::ValidateConfig(&config_json),
            )
            .await
            .map_err(load_error("validate-config"))?
        else {
            unreachable!("validate-config returns a verdict")
        };
        if let Err(message) = verdict {
            return Err(LoadError::Config {
                plugin: plugin.manifest.namespace.to_string(),
                message: sanitize(&message, 1024),
            });
        }
        if let Err(e) = inner
            .cache
            .store_described(&described_key, &described.to_cache())
        {
            tracing::warn!("could not cache the description of {}: {e}", plugin.digest);
        }
        Ok(Arc::new(plugin))
    }

    async fn compile(
        &self,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome), LoadError> {
        let inner = &self.inner;
        let rejected = match inner.cache.lookup(&inner.engine, digest) {
            Lookup::Hit(component) => return Ok((component, CacheOutcome::Hit)),
            Lookup::Miss => None,
            Lookup::Rejected(why) => {
                tracing::warn!("discarding cached component: {why}");
                Some(why)
            }
        };
        // Each compilation may use every core and gigabytes: only so many
        // run at once, whichever way they run.
        let permit = inner
            .compile_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        let component = match &inner.options.compile_worker {
            Some(program) => {
                let limits = compile::WorkerLimits {
                    memory_bytes: inner.options.compile_memory_bytes,
                    timeout: inner.options.compile_timeout,
                };
                let compiled = compile::compile_in_worker(
                    program,
                    &inner.engine,
                    &inner.cache,
                    digest,
                    bytes,
                    limits,
                )
                .await;
                // The worker is gone (finished, or killed and reaped).
                drop(permit);
                compiled?
            }
            None => {
                let engine = inner.engine.clone();
                let owned = bytes.to_vec();
                // Compilation is CPU-bound and unbounded in principle: run it
                // off the async workers and stop waiting after the watchdog
                // fires. The thread cannot be stopped, so it keeps its permit
                // until it really ends.
                let task = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    Component::new(&engine, &owned)
                });
                let component =
                    match tokio::time::timeout(inner.options.compile_timeout, task).await {
                        Err(_) => {
                            return Err(LoadError::CompileTimeout(inner.options.compile_timeout));
                        }
                        Ok(Err(join)) => return Err(LoadError::Compile(join.to_string())),
                        Ok(Ok(Err(e))) => return Err(compile::compile_error(format!("{e:#}"))),
                        Ok(Ok(Ok(c))) => c,
                    };
                if let Err(e) = inner.cache.store(&inner.engine, digest, &component) {
                    tracing::warn!("could not cache compiled component {digest}: {e}");
                }
                component
            }
        };
        Ok((
            component,
            match rejected {
                Some(why) => CacheOutcome::Recompiled(why),
                None => CacheOutcome::Compiled,
            },
        ))
    }
}

/// Checks every import against the manifest's grants; an import no host
/// provides is refused first, then every import not granted is listed in
/// one error.
fn check_imports(manifest: &Manifest, imports: &[String]) -> Result<(), LoadError> {
    use contract::Capability;
    let p = &manifest.permissions;
    let mut missing = Vec::new();
    for name in imports {
        match classify_import(name) {
            ImportClass::Always => {}
            ImportClass::Unknown => {
                return Err(LoadError::UnknownImport {
                    import: sanitize(name, 200),
                });
            }
            ImportClass::Needs(capability) => {
                let granted = match capability {
                    Capability::Kv => p.kv,
                    Capability::Llm => p.llm_tokens > 0,
                    Capability::Tools => !manifest.dependencies.is_empty(),
                    Capability::Http => !p.http.is_empty(),
                };
                if !granted {
                    missing.push((name.clone(), capability));
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoadError::NotGranted {
            plugin: manifest.namespace.to_string(),
            missing,
        })
    }
}

/// What a plugin's `describe` answered, bounded before anything else is
/// done with it: at most [`MAX_TOOLS`] tools, each description checked like
/// the manifest's, each schema small, shallow and cheap to check.
struct Described {
    tools: Vec<(String, String, String)>,
    events: Vec<EventKind>,
}

impl Described {
    fn from_wit(
        d: contract::latest::hearth::plugin::types::Description,
    ) -> Result<Described, LoadError> {
        if d.tools.len() > MAX_TOOLS {
            return Err(LoadError::Describe(format!(
                "it offers {} tools; the limit is {MAX_TOOLS}",
                d.tools.len()
            )));
        }
        if d.events.len() > 16 {
            return Err(LoadError::Describe(format!(
                "it lists {} events; there are only three",
                d.events.len()
            )));
        }
        let mut events = d.events;
        events.dedup();
        Ok(Described {
            tools: d
                .tools
                .into_iter()
                .map(|t| (t.name, t.description, t.parameters_schema))
                .collect(),
            events,
        })
    }

    fn to_cache(&self) -> Vec<u8> {
        serde_json::json!({
            "tools": self.tools.iter().map(|(n, d, s)| serde_json::json!([n, d, s])).collect::<Vec<_>>(),
            "events": self.events.iter().map(|e| event_name(*e)).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes()
    }

    fn from_cache(bytes: &[u8]) -> Result<Described, String> {
        #[derive(serde::Deserialize)]
        struct Raw {
            tools: Vec<(String, String, String)>,
            events: Vec<String>,
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let events = raw
            .events
            .iter()
            .map(|n| event_from_name(n).ok_or_else(|| format!("unknown event `{n}`")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Described {
            tools: raw.tools,
            events,
        })
    }

    /// Validates the answer against the host's bounds and the manifest's
    /// grants; returns the tools (schemas compiled) and events.
    fn check(&self, manifest: &Manifest) -> Result<(Vec<ToolInfo>, Vec<EventKind>), LoadError> {
        let tools = validate_tools(&self.tools)?;
        for event in &self.events {
            let conversational =
                matches!(event, EventKind::BeforePrompt | EventKind::AfterResponse);
            if conversational
                && manifest.permissions.conversation == manifest::ConversationAccess::None
            {
                return Err(LoadError::ConversationNotGranted {
                    plugin: manifest.namespace.to_string(),
                    event: event_name(*event),
                });
            }
        }
        Ok((tools, self.events.clone()))
    }
}
