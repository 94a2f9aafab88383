//! The active set and events: which plugin serves each namespace
//! ([`Runtime::activate`], [`Runtime::replace_active`],
//! [`Runtime::deactivate`]), the `activated` event sent to its observers
//! whenever the set is placed, [`Runtime::dispatch`] of the conversation
//! events through the observers' hooks, and the WIT names of event kinds.

use super::call::{Op, OpResult};
use super::plugin::LoadedPlugin;
use super::runtime::{Inner, Runtime};
use super::{CallScope, EventKind, InvokeError, contract, manifest, sanitize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// How much an observer hook may grow a payload, in bytes.
pub const MAX_HOOK_GROWTH: usize = 64 * 1024;

impl Runtime {
    /// Makes `plugin` the active plugin of its namespace; returns the one it
    /// replaced. Calls in flight finish on the plugin they started with.
    ///
    /// Once the set is in place, every active plugin observing `activated`
    /// is sent it in the background (see [`Runtime::replace_active`]).
    pub fn activate(&self, plugin: Arc<LoadedPlugin>) -> Option<Arc<LoadedPlugin>> {
        self.inner
            .drop_spares(|ns| ns == plugin.manifest.namespace.as_str());
        let (replaced, announcement) = {
            let mut active = self.inner.active.write().unwrap_or_else(|p| p.into_inner());
            let replaced = active.insert(plugin.manifest.namespace.to_string(), plugin);
            (replaced, self.inner.activation_changed(&active))
        };
        self.inner.announce_activation(announcement);
        self.inner.active_changes.send_modify(|n| *n += 1);
        replaced
    }

    /// Replaces the whole active set at once. Calls already running keep the
    /// plugins they started with; calls that start afterwards see only the
    /// new set. This is how a running host reloads after install, update,
    /// enable or disable.
    ///
    /// Once the set is in place, every active plugin observing `activated`
    /// gets an `on-event` call with it, each in a task of its own on the
    /// current tokio runtime, so a slow or failing observer never delays or
    /// fails the activation (a failure is logged at info). The payload is
    /// described by [`activated_payload`]; an observer's `modify` or `veto`
    /// is ignored (there is nothing to change or refuse). An event still
    /// waiting when a newer set replaces this one is dropped in favour of
    /// the newer set's.
    pub fn replace_active(&self, plugins: Vec<Arc<LoadedPlugin>>) {
        let next: BTreeMap<String, Arc<LoadedPlugin>> = plugins
            .into_iter()
            .map(|p| (p.manifest.namespace.to_string(), p))
            .collect();
        self.inner.drop_spares(|_| true);
        let announcement = {
            let mut active = self.inner.active.write().unwrap_or_else(|p| p.into_inner());
            *active = next;
            self.inner.activation_changed(&active)
        };
        self.inner.announce_activation(announcement);
        self.inner.active_changes.send_modify(|n| *n += 1);
    }

    /// Removes a namespace from the active set.
    pub fn deactivate(&self, namespace: &str) -> Option<Arc<LoadedPlugin>> {
        self.inner.drop_spares(|ns| ns == namespace);
        let removed = {
            let mut active = self.inner.active.write().unwrap_or_else(|p| p.into_inner());
            active.remove(namespace)
        };
        self.inner.active_changes.send_modify(|n| *n += 1);
        removed
    }

    /// Sees a new value after every change of the active set (by
    /// [`activate`](Runtime::activate), [`replace_active`](Runtime::replace_active)
    /// or [`deactivate`](Runtime::deactivate)), including one that left it
    /// as it was: cheap to hold, for front ends that tell their clients when
    /// the tools may have changed (the MCP server).
    pub fn watch_active(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.active_changes.subscribe()
    }

    /// The active plugin of a namespace.
    pub fn active(&self, namespace: &str) -> Option<Arc<LoadedPlugin>> {
        self.inner.active(namespace)
    }

    /// Every active plugin, by namespace.
    pub fn active_plugins(&self) -> Vec<Arc<LoadedPlugin>> {
        let active = self.inner.active.read().unwrap_or_else(|p| p.into_inner());
        active.values().cloned().collect()
    }

    /// Runs the `on-event` hook of every active plugin that observes `kind`,
    /// highest priority first (the resolver refuses equal priorities). Each
    /// sees the payload as the ones before left it; a veto stops the chain.
    /// A hook that fails is skipped and reported, never fatal.
    ///
    /// This is for the conversation events. `activated` is sent by the
    /// runtime itself whenever the active set changes
    /// ([`Runtime::replace_active`]), to each observer on its own, so no
    /// observer can change what another one sees or keep it from being told.
    pub async fn dispatch(&self, kind: EventKind, payload: &str, scope: CallScope) -> Dispatch {
        let mut observers: Vec<Arc<LoadedPlugin>> = self
            .active_plugins()
            .into_iter()
            .filter(|p| p.events.contains(&kind))
            .collect();
        observers.sort_by(|a, b| {
            b.manifest
                .priority
                .cmp(&a.manifest.priority)
                .then_with(|| a.manifest.namespace.cmp(&b.manifest.namespace))
        });
        let mut dispatch = Dispatch {
            payload: payload.to_string(),
            vetoed: None,
            failures: Vec::new(),
        };
        use contract::latest::hearth::plugin::types::{Event, EventOutcome};
        let conversational = matches!(kind, EventKind::BeforePrompt | EventKind::AfterResponse);
        let max_payload = payload.len().saturating_add(MAX_HOOK_GROWTH);
        for plugin in observers {
            let namespace = plugin.manifest.namespace.to_string();
            let access = plugin.manifest.permissions.conversation;
            // Activation checks this too; the check here keeps a plugin that
            // was loaded some other way from ever seeing a conversation.
            if conversational && access == manifest::ConversationAccess::None {
                continue;
            }
            let read_only = conversational && access == manifest::ConversationAccess::Read;
            let event = Event {
                kind,
                payload: dispatch.payload.clone(),
            };
            match self
                .inner
                .run(&plugin, scope.clone(), Op::OnEvent(event))
                .await
            {
                Ok(OpResult::Event(EventOutcome::Proceed)) => {}
                Ok(OpResult::Event(EventOutcome::Modify(_) | EventOutcome::Veto(_)))
                    if read_only =>
                {
                    dispatch.failures.push((
                        namespace.clone(),
                        InvokeError::Denied {
                            plugin: namespace,
                            message: "may only read conversations (conversation = \"read\"); its change was ignored".into(),
                        },
                    ));
                }
                Ok(OpResult::Event(EventOutcome::Modify(next))) if next.len() > max_payload => {
                    dispatch.failures.push((
                        namespace.clone(),
                        InvokeError::OutputTooLarge {
                            plugin: namespace,
                            size: next.len(),
                            limit: max_payload,
                        },
                    ));
                }
                Ok(OpResult::Event(EventOutcome::Modify(next))) => {
                    if serde_json::from_str::<serde::de::IgnoredAny>(&next).is_err() {
                        dispatch.failures.push((
                            namespace.clone(),
                            InvokeError::OutputNotJson {
                                plugin: namespace,
                                message: "a modified payload must be JSON".into(),
                            },
                        ));
                        continue;
                    }
                    dispatch.payload = next;
                }
                Ok(OpResult::Event(EventOutcome::Veto(reason))) => {
                    dispatch.vetoed = Some((namespace, sanitize(&reason, 1024)));
                    break;
                }
                Ok(_) => unreachable!("on-event returns an outcome"),
                Err(e) => {
                    tracing::warn!(plugin = %namespace, "event hook failed: {e}");
                    dispatch.failures.push((namespace, e));
                }
            }
        }
        dispatch
    }
}

/// The WIT name of an event kind.
pub fn event_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::BeforePrompt => "before-prompt",
        EventKind::AfterResponse => "after-response",
        EventKind::Activated => "activated",
    }
}

/// The event kind of a WIT name.
pub fn event_from_name(name: &str) -> Option<EventKind> {
    [
        EventKind::BeforePrompt,
        EventKind::AfterResponse,
        EventKind::Activated,
    ]
    .into_iter()
    .find(|k| event_name(*k) == name)
}

/// A change of the active set, to announce to the observers of
/// `activated`.
struct Announcement {
    /// The change's place in [`Inner::activations`].
    generation: u64,
    /// The new set, when some plugin in it observes `activated`.
    set: Option<BTreeMap<String, Arc<LoadedPlugin>>>,
}

/// The payload of the `activated` event sent to `plugin` when `set` became
/// the active set: a JSON object with the plugin's own `namespace` and
/// `version`, and `dependencies`, mapping each namespace in its
/// `[dependencies]` to the version now active there, or `null` if none is.
///
/// Nothing else about the set is included: a plugin may call only its
/// dependencies, so which other plugins are installed is not its business
/// (SECURITY.md, "What a plugin can reach"). It carries no conversation, so
/// observing `activated` needs no `conversation` permission.
///
/// ```json
/// {"namespace": "hostile", "version": "0.1.0", "dependencies": {"calc": "0.1.0"}}
/// ```
pub fn activated_payload(
    plugin: &LoadedPlugin,
    set: &BTreeMap<String, Arc<LoadedPlugin>>,
) -> String {
    let m = &plugin.manifest;
    let dependencies: serde_json::Map<String, serde_json::Value> = m
        .dependencies
        .keys()
        .map(|ns| {
            let version = set
                .get(ns.as_str())
                .map(|p| serde_json::Value::String(p.manifest.version.to_string()));
            (ns.to_string(), version.unwrap_or(serde_json::Value::Null))
        })
        .collect();
    serde_json::json!({
        "namespace": m.namespace.as_str(),
        "version": m.version.to_string(),
        "dependencies": dependencies,
    })
    .to_string()
}

/// What the observers of an event made of it.
#[derive(Debug)]
pub struct Dispatch {
    /// The payload after every modification.
    pub payload: String,
    /// The plugin that vetoed, and its reason; later observers did not run.
    pub vetoed: Option<(String, String)>,
    /// Observers that failed (skipped, the chain went on), with the error.
    pub failures: Vec<(String, InvokeError)>,
}

impl Inner {
    pub(crate) fn active(&self, namespace: &str) -> Option<Arc<LoadedPlugin>> {
        let active = self.active.read().unwrap_or_else(|p| p.into_inner());
        active.get(namespace).cloned()
    }

    /// Notes a change of the active set; called with `active`, the new set,
    /// still write-locked, so generations follow the order of the changes.
    /// Returns what to announce, if any active plugin observes `activated`.
    fn activation_changed(&self, active: &BTreeMap<String, Arc<LoadedPlugin>>) -> Announcement {
        let generation = self.activations.fetch_add(1, Ordering::AcqRel) + 1;
        let observes = |p: &Arc<LoadedPlugin>| p.events.contains(&EventKind::Activated);
        Announcement {
            generation,
            // Only a set with observers is copied (a map of pointers).
            set: active.values().any(observes).then(|| active.clone()),
        }
    }

    /// Sends `activated` to each observer in `announcement`'s set, each in
    /// a task of its own, and returns at once (see
    /// [`Runtime::replace_active`]).
    fn announce_activation(self: &Arc<Self>, announcement: Announcement) {
        let Announcement {
            generation,
            set: Some(set),
        } = announcement
        else {
            return;
        };
        let Ok(tokio) = tokio::runtime::Handle::try_current() else {
            // Activation itself never waits on an observer, so there is no
            // thread to run the hooks on outside a runtime.
            tracing::info!(
                "the active set changed outside a tokio runtime: `activated` was not sent"
            );
            return;
        };
        for plugin in set
            .values()
            .filter(|p| p.events.contains(&EventKind::Activated))
        {
            let payload = activated_payload(plugin, &set);
            let (inner, plugin) = (self.clone(), plugin.clone());
            tokio.spawn(async move { inner.deliver_activated(plugin, payload, generation).await });
        }
    }

    /// Runs one observer's `activated` hook, unless a newer set has
    /// replaced the one it announces (that set's own announcement follows).
    async fn deliver_activated(
        self: Arc<Self>,
        plugin: Arc<LoadedPlugin>,
        payload: String,
        generation: u64,
    ) {
        let namespace = plugin.manifest.namespace.as_str();
        let current = self.activations.load(Ordering::Acquire) == generation
            && self
                .active(namespace)
                .is_some_and(|a| Arc::ptr_eq(&a, &plugin));
        if !current {
            tracing::debug!(
                plugin = namespace,
                "`activated` not sent: a newer active set superseded it"
            );
            return;
        }
        use contract::latest::hearth::plugin::types::{Event, EventOutcome};
        let event = Event {
            kind: EventKind::Activated,
            payload,
        };
        match self
            .run(
                &plugin,
                CallScope::internal("activated"),
                Op::OnEvent(event),
            )
            .await
        {
            Ok(OpResult::Event(EventOutcome::Proceed)) => {}
            Ok(OpResult::Event(EventOutcome::Modify(_) | EventOutcome::Veto(_))) => {
                tracing::debug!(
                    plugin = namespace,
                    "ignored the answer to `activated`: an activation cannot be changed or refused"
                );
            }
            Ok(_) => unreachable!("on-event returns an outcome"),
            // info, like a failed tool call: the plugin's failure, reported
            // for its author; activation went ahead regardless.
            Err(e) => tracing::info!(plugin = namespace, "the `activated` hook failed: {e}"),
        }
    }
}
