//! The plugin's persistent key-value store (needs `kv = true`).
//!
//! Writes become visible to later calls only when the current call returns;
//! a call that traps leaves the store as it was.

use crate::bindings::hearth::plugin::kv as host;
pub use host::Error;
use serde::{Serialize, de::DeserializeOwned};

/// Reads raw bytes.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    host::get(key)
}

/// Writes raw bytes.
pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
    host::set(key, value)
}

/// Deletes a key; returns whether it existed.
pub fn delete(key: &str) -> Result<bool, Error> {
    host::delete(key)
}

/// Keys starting with `prefix`, in order.
pub fn list_keys(prefix: &str) -> Result<Vec<String>, Error> {
    host::list_keys(prefix)
}

/// Reads a JSON value stored with [`set_json`].
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    match get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Io(format!("value of `{key}` is not valid JSON: {e}"))),
    }
}

/// Stores a value as JSON.
pub fn set_json<T: Serialize>(key: &str, value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Io(e.to_string()))?;
    set(key, &bytes)
}
