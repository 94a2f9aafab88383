//! Tool calls in model output: the formats chat templates teach models
//! (Hermes / Qwen `<tool_call>` blocks, Llama 3 bare JSON, Mistral
//! `[TOOL_CALLS]`), parsed into one typed structure.

use super::template::ToolSpec;
use serde::{Deserialize, Serialize};

/// A call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Identifier the tool result refers back to.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments object.
    pub arguments: serde_json::Value,
}

/// Model output split into text and tool calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedOutput {
    /// The text outside any tool call, trimmed.
    pub content: String,
    /// The calls, in order.
    pub calls: Vec<ToolCall>,
}

/// The system-prompt block that teaches a model without native tool
/// support the Hermes `<tool_call>` protocol.
pub fn tool_system_prompt(tools: &[ToolSpec]) -> String {
    let mut s = String::from(
        "You can call tools. To call one, answer with only\n<tool_call>\n{\"name\": \"<tool name>\", \"arguments\": {<arguments as JSON>}}\n</tool_call>\nTools:\n<tools>\n",
    );
    for t in tools {
        s.push_str(&serde_json::to_string(t).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("</tools>");
    s
}

/// How an assistant message's calls are written back into a prompt.
pub fn render_tool_calls(calls: &[ToolCall]) -> String {
    calls
        .iter()
        .map(|c| {
            format!(
                "<tool_call>\n{}\n</tool_call>",
                serde_json::json!({"name": c.name, "arguments": c.arguments})
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Finds tool calls in `text`. Text that is not a well-formed call stays content.
pub fn parse_tool_calls(text: &str) -> ParsedOutput {
    let mut out = ParsedOutput::default();
    let mut rest = text;
    let mut content = String::new();
    // Hermes / Qwen: any number of <tool_call>…</tool_call> blocks.
    while let Some(start) = rest.find("<tool_call>") {
        let after = &rest[start + "<tool_call>".len()..];
        let (body, next) = match after.find("</tool_call>") {
            Some(end) => (&after[..end], &after[end + "</tool_call>".len()..]),
            // A model stopped at the closing tag (a stop sequence) or ran out
            // of tokens: take the JSON if it is complete.
            None => (after, ""),
        };
        match call_from_json(body.trim()) {
            Some(call) => {
                content.push_str(&rest[..start]);
                out.calls.push(call);
            }
            None => content.push_str(&rest[..start + "<tool_call>".len() + body.len()]),
        }
        rest = next;
    }
    content.push_str(rest);
    if out.calls.is_empty() {
        let trimmed = content.trim();
        let trimmed = trimmed.strip_prefix("<|python_tag|>").unwrap_or(trimmed);
        if let Some(list) = trimmed.strip_prefix("[TOOL_CALLS]") {
            if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(list.trim()) {
                out.calls = items
                    .iter()
                    .filter_map(|v| call_from_value(v.clone()))
                    .collect();
                if out.calls.len() == items.len() {
                    content.clear();
                }
            }
        } else if trimmed.starts_with('{')
            && let Some(call) = call_from_json(trimmed)
        {
            // Llama 3: the whole answer is one JSON object.
            out.calls.push(call);
            content.clear();
        }
    }
    for (i, call) in out.calls.iter_mut().enumerate() {
        call.id = format!("call_{}", i);
    }
    out.content = content.trim().to_string();
    out
}

fn call_from_json(text: &str) -> Option<ToolCall> {
    call_from_value(serde_json::from_str(text).ok()?)
}

fn call_from_value(v: serde_json::Value) -> Option<ToolCall> {
    let serde_json::Value::Object(mut map) = v else {
        return None;
    };
    let name = map.remove("name")?.as_str()?.to_string();
    let arguments = map
        .remove("arguments")
        .or_else(|| map.remove("parameters"))
        .unwrap_or(serde_json::json!({}));
    // Some models write the arguments as a JSON string.
    let arguments = match arguments {
        serde_json::Value::String(s) => serde_json::from_str(&s).ok()?,
        other => other,
    };
    arguments.is_object().then_some(ToolCall {
        id: String::new(),
        name,
        arguments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hermes_blocks_are_parsed_and_text_kept() {
        let p = parse_tool_calls(
            "Let me check.\n<tool_call>\n{\"name\": \"weather.current\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\":\"calc.eval\",\"arguments\":\"{\\\"expression\\\":\\\"1+1\\\"}\"}</tool_call>",
        );
        assert_eq!(p.content, "Let me check.");
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.calls[0].name, "weather.current");
        assert_eq!(p.calls[0].arguments, json!({"city": "Paris"}));
        assert_eq!(p.calls[1].arguments, json!({"expression": "1+1"}));
        assert_ne!(p.calls[0].id, p.calls[1].id);
    }

    #[test]
    fn llama3_and_mistral_forms() {
        let p = parse_tool_calls(
            "<|python_tag|>{\"name\": \"calc.eval\", \"parameters\": {\"expression\": \"2\"}}",
        );
        assert_eq!(p.calls.len(), 1);
        assert_eq!(p.content, "");
        let p = parse_tool_calls("[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}]");
        assert_eq!(p.calls[0].name, "a");
    }

    #[test]
    fn malformed_calls_stay_text() {
        let p = parse_tool_calls("<tool_call>{not json}</tool_call> and {\"x\": 1}");
        assert!(p.calls.is_empty());
        assert!(p.content.contains("{not json}"));
        let p = parse_tool_calls("The answer is {\"a\": 1}");
        assert!(p.calls.is_empty());
    }
}
