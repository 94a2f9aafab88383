//! `upper`: the hearth side of the Extism comparison. One tool, `upper`:
//! `{"text": "..."}` in, `{"text": "<UPPERCASED>"}` out.
//!
//! `call.args` deserialises the struct straight from the argument text, and
//! the returned `Value` is serialised with `to_string`. The Extism guest does
//! exactly the same steps.

use hearth_sdk::{Call, Plugin, Tool, ToolError, Value, json};

struct Upper;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpperArgs {
    text: String,
}

impl Plugin for Upper {
    fn tools() -> Vec<Tool> {
        vec![Tool::new("upper", "Upper-case a text.").schema(json!({
            "type": "object",
            "properties": {
                "text": { "type": "string", "description": "The text to upper-case" }
            },
            "required": ["text"],
            "additionalProperties": false
        }))]
    }

    fn invoke(call: Call) -> Result<Value, ToolError> {
        match call.tool.as_str() {
            "upper" => {
                let args: UpperArgs = call.args()?;
                Ok(json!({ "text": args.text.to_uppercase() }))
            }
            other => Err(ToolError::UnknownTool(other.to_string())),
        }
    }
}

hearth_sdk::register!(Upper);
