//! The plugin's configuration: manifest defaults merged with user overrides.

use crate::bindings::hearth::plugin::config as host;
use serde::de::DeserializeOwned;

/// Reads one key and deserialises it; `None` when unset.
pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, String> {
    match host::get(key) {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("config key `{key}`: {e}")),
    }
}

/// The whole configuration as a JSON value.
pub fn all() -> serde_json::Value {
    serde_json::from_str(&host::get_all()).unwrap_or(serde_json::Value::Null)
}
