//! Chat templates: the Jinja template in the GGUF file, rendered with
//! minijinja the way Hugging Face's `apply_chat_template` does
//! (`trim_blocks`, `lstrip_blocks`, Python string methods).

use super::error::EngineError;
use super::tools::{ToolCall, render_tool_calls, tool_system_prompt};
use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

/// Used when a file carries no template: ChatML.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Who said something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(role: &str) -> Result<Role, UnknownRole> {
        match role {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            "tool" => Ok(Role::Tool),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// A role name that is not system, user, assistant or tool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role `{0}` is not system, user, assistant or tool")]
pub struct UnknownRole(pub String);

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    #[serde(default)]
    pub content: String,
    /// Tools the assistant called in this message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool result: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a tool result: the tool's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message with text only.
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// A tool offered to the model: name, description, JSON Schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The name the model calls it by.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments object.
    #[serde(default)]
    pub parameters: serde_json::Value,
}

/// A model's chat template, compiled once.
pub struct ChatTemplate {
    env: Environment<'static>,
    native_tools: bool,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("native_tools", &self.native_tools)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source` (or ChatML when the file has none).
    pub fn new(source: Option<&str>, bos: &str, eos: &str) -> Result<ChatTemplate, EngineError> {
        let source = source.unwrap_or(CHATML).to_string();
        let native_tools = source.contains("tools");
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |format: String| {
            // Templates use it for "today's date" lines; a fixed, neutral
            // rendering keeps prompts cacheable and tests stable.
            let _ = format;
            "26 Jul 2024".to_string()
        });
        env.add_template_owned("chat", source)
            .map_err(|e| EngineError::Template(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            native_tools,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// Renders a conversation, ending with the assistant's turn opened when
    /// `add_generation_prompt`. Tools go to the template when it handles
    /// them, and otherwise into the system message as a `<tool_call>` protocol.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let mut messages = messages.to_vec();
        let native = self.native_tools || tools.is_empty();
        if !native {
            let block = tool_system_prompt(tools);
            match messages.first_mut() {
                Some(m) if m.role == Role::System => {
                    m.content = format!("{}\n\n{block}", m.content);
                }
                _ => messages.insert(0, ChatMessage::new(Role::System, block)),
            }
        }
        let rendered: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                let mut v = serde_json::json!({ "role": m.role, "content": m.content });
                if !m.tool_calls.is_empty() {
                    if native {
                        v["tool_calls"] = serde_json::Value::Array(
                            m.tool_calls
                                .iter()
                                .map(|c| {
                                    serde_json::json!({
                                        "id": c.id, "type": "function",
                                        "function": {"name": c.name, "arguments": c.arguments}
                                    })
                                })
                                .collect(),
                        );
                    } else {
                        let calls = render_tool_calls(&m.tool_calls);
                        v["content"] = if m.content.is_empty() {
                            calls.into()
                        } else {
                            format!("{}\n{calls}", m.content).into()
                        };
                    }
                }
                if let Some(id) = &m.tool_call_id {
                    v["tool_call_id"] = id.clone().into();
                }
                if let Some(name) = &m.name {
                    v["name"] = name.clone().into();
                }
                if m.role == Role::Tool && !native {
                    v["content"] =
                        format!("<tool_response>\n{}\n</tool_response>", m.content).into();
                }
                v
            })
            .collect();
        let tools_value: Option<Vec<serde_json::Value>> =
            (native && !tools.is_empty()).then(|| {
                tools
                    .iter()
                    .map(|t| serde_json::json!({"type": "function", "function": t}))
                    .collect()
            });
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(describe(&e)))?;
        template
            .render(context! {
                messages => Value::from_serialize(&rendered),
                tools => tools_value.map(|t| Value::from_serialize(&t)),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos.clone(),
                eos_token => self.eos.clone(),
            })
            .map_err(|e| EngineError::Template(describe(&e)))
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    if let Some(detail) = e.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    if let Some(line) = e.line() {
        text.push_str(&format!(" (template line {line})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback_renders_and_opens_the_assistant_turn() {
        let t = ChatTemplate::new(None, "", "").unwrap();
        let out = t
            .render(&[ChatMessage::new(Role::User, "hi")], &[], true)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn tools_go_into_the_system_message_when_the_template_has_no_tools() {
        let t = ChatTemplate::new(None, "", "").unwrap();
        let tool = ToolSpec {
            name: "calc.eval".into(),
            description: "Evaluate".into(),
            parameters: serde_json::json!({"type": "object"}),
        };
        let out = t
            .render(&[ChatMessage::new(Role::User, "2+2?")], &[tool], true)
            .unwrap();
        assert!(out.starts_with("<|im_start|>system\n"), "{out}");
        assert!(out.contains("\"name\":\"calc.eval\""), "{out}");
        assert!(out.contains("<tool_call>"), "{out}");
    }

    #[test]
    fn template_errors_name_the_problem() {
        let err = ChatTemplate::new(Some("{% for %}"), "", "").unwrap_err();
        assert!(err.to_string().contains("chat template"), "{err}");
        let t = ChatTemplate::new(
            Some("{{ raise_exception('roles must alternate') }}"),
            "",
            "",
        )
        .unwrap();
        let err = t.render(&[], &[], true).unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }
}
