//! One generation of a turn: what its output is constrained to (from
//! `tool_choice`, the offered tools and the client's format), and how its
//! output is read into answer text and calls, sorted by who offered the
//! tool called.

use super::ToolChoice;
use crate::engine::{OutputFormat, ToolCall, ToolSpec};
use serde_json::{Value, json};

/// Whether text could still turn out to be a tool call in one of the
/// formats [`crate::engine::parse_tool_calls`] reads: those start the answer.
pub(super) fn may_be_call(text: &str) -> bool {
    let t = text.trim_start();
    ["<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "{"]
        .iter()
        .any(|m| t.starts_with(m) || m.starts_with(t))
}

/// How one generation is constrained and read.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The output constraint.
    pub format: Option<OutputFormat>,
    /// The output is a call, forced by a JSON Schema of the allowed calls.
    pub forced: bool,
    /// Calls are read from the output at all (not in JSON mode).
    pub calls_allowed: bool,
}

/// A generation's output, read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Read {
    /// The answer's text.
    pub content: String,
    /// Calls to the client's tools.
    pub client: Vec<ToolCall>,
    /// Calls to the host's tools (plugins', MCP servers').
    pub host: Vec<ToolCall>,
    /// Calls to names nobody offered: never run, never sent to the client.
    pub unknown: Vec<ToolCall>,
}

impl Step {
    /// The constraint of step `step` of a turn.
    pub fn plan(
        step: usize,
        choice: &ToolChoice,
        client_tools: &[ToolSpec],
        host_tools: &[ToolSpec],
        format: Option<&OutputFormat>,
    ) -> Step {
        let any_tools = !client_tools.is_empty() || !host_tools.is_empty();
        let forced_set: Option<Vec<&ToolSpec>> = match choice {
            _ if step > 0 => None,
            ToolChoice::Required if !client_tools.is_empty() => Some(client_tools.iter().collect()),
            ToolChoice::Required => Some(host_tools.iter().collect()),
            ToolChoice::Function(name) => Some(
                client_tools
                    .iter()
                    .chain(host_tools)
                    .filter(|t| &t.name == name)
                    .take(1)
                    .collect(),
            ),
            ToolChoice::Auto | ToolChoice::None => None,
        };
        match forced_set {
            Some(set) if !set.is_empty() => Step {
                format: Some(OutputFormat::JsonSchema(call_schema(&set))),
                forced: true,
                calls_allowed: true,
            },
            _ => Step {
                format: format.cloned(),
                forced: false,
                calls_allowed: any_tools && format.is_none(),
            },
        }
    }

    /// Splits the model's output into answer text and calls, by who
    /// offered the tool called.
    pub fn read(&self, text: &str, client_tools: &[ToolSpec], host_tools: &[ToolSpec]) -> Read {
        let (content, calls) = if self.forced {
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(mut call)) => {
                    let name = call
                        .remove("name")
                        .and_then(|n| n.as_str().map(str::to_string))
                        .unwrap_or_default();
                    let arguments = call.remove("arguments").unwrap_or(json!({}));
                    let id = "call_0".to_string();
                    (
                        String::new(),
                        vec![ToolCall {
                            id,
                            name,
                            arguments,
                        }],
                    )
                }
                _ => (text.to_string(), Vec::new()),
            }
        } else if self.calls_allowed {
            let parsed = crate::engine::parse_tool_calls(text);
            (parsed.content, parsed.calls)
        } else {
            (text.to_string(), Vec::new())
        };
        let mut read = Read {
            content,
            ..Read::default()
        };
        let offered = |tools: &[ToolSpec], name: &str| tools.iter().any(|t| t.name == name);
        for call in calls {
            if offered(client_tools, &call.name) {
                read.client.push(call);
            } else if offered(host_tools, &call.name) {
                read.host.push(call);
            } else {
                read.unknown.push(call);
            }
        }
        if read.client.is_empty() && read.host.is_empty() && !read.unknown.is_empty() {
            // Nothing offered was called: what looked like calls (JSON with
            // a "name", say) is the answer, as the model wrote it.
            read.content = text.to_string();
            read.unknown.clear();
        }
        read
    }
}

/// The JSON Schema of a call to one of `tools`.
fn call_schema(tools: &[&ToolSpec]) -> Value {
    let one = |t: &ToolSpec| {
        let params = if t.parameters.is_object() {
            t.parameters.clone()
        } else {
            json!({"type": "object"})
        };
        json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": false
        })
    };
    if tools.len() == 1 {
        one(tools[0])
    } else {
        json!({"anyOf": tools.iter().map(|t| one(t)).collect::<Vec<_>>()})
    }
}
