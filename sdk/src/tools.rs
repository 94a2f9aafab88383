//! Calls tools of declared dependencies (`[dependencies]` in the manifest).

use crate::ToolError;
use crate::bindings::hearth::plugin::tools as host;
use serde_json::Value;

/// Calls `namespace.tool` with JSON arguments.
pub fn call(qualified_name: &str, arguments: &Value) -> Result<Value, ToolError> {
    let text = host::call(qualified_name, &arguments.to_string())?;
    serde_json::from_str(&text)
        .map_err(|e| ToolError::Failed(format!("{qualified_name} returned invalid JSON: {e}")))
}
