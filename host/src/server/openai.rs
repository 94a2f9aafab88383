//! The OpenAI chat-completions wire format: requests in, responses and
//! stream chunks out, mapped to and from the engine's types.

use super::ApiError;
use crate::assistant::{ToolChoice, Turn};
use crate::engine::{ChatMessage, OutputFormat, Role, SamplingParams, ToolCall, ToolSpec};
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest `max_tokens` accepted.
pub const MAX_TOKENS_CAP: u32 = 8192;

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// Which model (must be the one served, when given).
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<InMessage>,
    /// Server-sent events instead of one response.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Most tokens to generate (legacy name).
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Stop sequences.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Mapped to the repeat penalty.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Mapped to the repeat penalty.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"schema": …}}`.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Tools the model may call.
    #[serde(default)]
    pub tools: Option<Vec<InTool>>,
    /// `none`, `auto`, `required` or `{"type":"function","function":{"name":…}}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Number of choices (only 1).
    #[serde(default)]
    pub n: Option<u32>,
    /// Accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
}

/// Streaming options.
#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with token counts.
    #[serde(default)]
    pub include_usage: bool,
    /// hearth's extension: report the plugin (and MCP) tool calls the
    /// server runs during the answer, as they happen, in `hearth.tool`
    /// events (named SSE events, which OpenAI clients pass over).
    #[serde(default)]
    pub include_tool_events: bool,
}

/// One stop string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// A message as clients send it.
#[derive(Debug, Deserialize)]
pub struct InMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or a list of parts of which the text ones are used.
    #[serde(default)]
    pub content: Option<Value>,
    /// Calls the assistant made.
    #[serde(default)]
    pub tool_calls: Option<Vec<InToolCall>>,
    /// For `tool` messages.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// Optional name.
    #[serde(default)]
    pub name: Option<String>,
}

/// A call in an assistant message.
#[derive(Debug, Deserialize)]
pub struct InToolCall {
    /// Its id.
    #[serde(default)]
    pub id: String,
    /// The function.
    pub function: InFunctionCall,
}

/// Function name and JSON-encoded arguments.
#[derive(Debug, Deserialize)]
pub struct InFunctionCall {
    /// Name.
    pub name: String,
    /// Arguments, as a JSON string.
    #[serde(default)]
    pub arguments: String,
}

/// A tool definition.
#[derive(Debug, Deserialize)]
pub struct InTool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: ToolSpec,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message, Some(param))
}

impl ChatRequest {
    /// Reads a request body; an error names the field at fault.
    pub fn parse(body: &Value) -> Result<ChatRequest, ApiError> {
        serde_path_to_error::deserialize(body).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            if path == "." {
                // A missing or unknown top-level field: serde names it in
                // the message, and it is the parameter at fault.
                let field = message.split('`').nth(1).filter(|f| !f.is_empty());
                return ApiError::invalid(message.clone(), field);
            }
            ApiError::invalid(
                format!("`{path}`: {message}"),
                Some(path.split('.').next().unwrap_or(&path)),
            )
        })
    }

    /// Checks every field and maps the request to a [`Turn`] of the
    /// assistant. `host_tools` are offered beside the client's own (and
    /// may be named by `tool_choice`).
    pub fn map(self, host_tools: Vec<ToolSpec>, request_id: &str) -> Result<Turn, ApiError> {
        if self.messages.is_empty() {
            return Err(invalid(
                "messages",
                "`messages` must contain at least one message",
            ));
        }
        if let Some(n) = self.n
            && n != 1
        {
            return Err(invalid("n", format!("only n = 1 is supported, got {n}")));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            messages.push(message(i, m)?);
        }
        let mut params = SamplingParams::default();
        if let Some(max) = self.max_completion_tokens.or(self.max_tokens) {
            if max <= 0 || max > MAX_TOKENS_CAP as i64 {
                return Err(invalid(
                    "max_tokens",
                    format!("`max_tokens` must be between 1 and {MAX_TOKENS_CAP}, got {max}"),
                ));
            }
            params.max_new_tokens = max as usize;
        }
        if let Some(t) = self.temperature {
            params.temperature = t;
        }
        if let Some(p) = self.top_p {
            params.top_p = p;
        }
        params.seed = self.seed;
        params.stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        let penalty = [self.frequency_penalty, self.presence_penalty]
            .into_iter()
            .flatten()
            .fold(None, |m: Option<f32>, p| Some(m.map_or(p, |m| m.max(p))));
        if let Some(p) = penalty {
            if !p.is_finite() || !(-2.0..=2.0).contains(&p) {
                return Err(invalid(
                    "frequency_penalty",
                    format!("penalties must be between -2 and 2, got {p}"),
                ));
            }
            // OpenAI's additive penalties in [-2, 2] as a multiplicative one.
            params.repeat_penalty = (1.0 + p / 2.0).max(0.1);
        }
        params.validate().map_err(|e| match e {
            crate::engine::EngineError::InvalidParameter { name, reason } => {
                invalid(name, format!("invalid `{name}`: {reason}"))
            }
            other => ApiError::invalid(other.to_string(), None),
        })?;
        let format = match &self.response_format {
            None => None,
            Some(v) => match v.get("type").and_then(Value::as_str) {
                Some("text") => None,
                Some("json_object") => Some(OutputFormat::JsonObject),
                Some("json_schema") => {
                    let schema = v.pointer("/json_schema/schema").cloned().ok_or_else(|| {
                        invalid(
                            "response_format",
                            "`response_format.json_schema.schema` is missing",
                        )
                    })?;
                    Some(OutputFormat::JsonSchema(schema))
                }
                _ => {
                    return Err(invalid(
                        "response_format",
                        "`response_format.type` must be text, json_object or json_schema",
                    ));
                }
            },
        };
        let mut client_tools: Vec<ToolSpec> = Vec::new();
        for (i, t) in self.tools.unwrap_or_default().into_iter().enumerate() {
            if t.kind != "function" {
                return Err(invalid(
                    "tools",
                    format!("tools[{i}].type must be `function`"),
                ));
            }
            client_tools.push(t.function);
        }
        let offered = |name: &str| {
            client_tools
                .iter()
                .chain(&host_tools)
                .any(|t| t.name == name)
        };
        let choice = match &self.tool_choice {
            None => ToolChoice::Auto,
            Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
            Some(Value::String(s)) if s == "none" => ToolChoice::None,
            Some(Value::String(s)) if s == "required" => {
                if client_tools.is_empty() && host_tools.is_empty() {
                    return Err(invalid(
                        "tool_choice",
                        "`tool_choice` is `required` but no tools were given",
                    ));
                }
                ToolChoice::Required
            }
            Some(v) => {
                let name = v
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("tool_choice", "`tool_choice` must be none, auto, required or {\"type\":\"function\",\"function\":{\"name\":…}}"))?;
                if !offered(name) {
                    return Err(invalid(
                        "tool_choice",
                        format!("`tool_choice` names `{name}`, which is not in `tools`"),
                    ));
                }
                ToolChoice::Function(name.to_string())
            }
        };
        Ok(Turn {
            messages,
            client_tools,
            host_tools,
            choice,
            params,
            format,
            deadline: None,
            request_id: request_id.to_string(),
        })
    }
}

fn message(i: usize, m: InMessage) -> Result<ChatMessage, ApiError> {
    // `developer` is OpenAI's newer name for the system role.
    let role = match m.role.as_str() {
        "developer" => Role::System,
        other => other.parse::<Role>().map_err(|_| {
            invalid(
                "messages",
                format!(
                    "messages[{i}].role `{other}` is not system, developer, user, assistant or tool"
                ),
            )
        })?,
    };
    let content = match m.content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(invalid(
                            "messages",
                            format!("messages[{i}].content: only text parts are supported"),
                        ));
                    }
                }
            }
            text
        }
        Some(_) => {
            return Err(invalid(
                "messages",
                format!("messages[{i}].content must be a string or a list of text parts"),
            ));
        }
    };
    let mut tool_calls = Vec::new();
    for call in m.tool_calls.unwrap_or_default() {
        let arguments = if call.function.arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(&call.function.arguments).map_err(|e| {
                invalid(
                    "messages",
                    format!("messages[{i}].tool_calls: arguments are not JSON: {e}"),
                )
            })?
        };
        tool_calls.push(ToolCall {
            id: call.id,
            name: call.function.name,
            arguments,
        });
    }
    Ok(ChatMessage {
        role,
        content,
        tool_calls,
        tool_call_id: m.tool_call_id,
        name: m.name,
    })
}

/// Calls in the API's shape (arguments as a JSON string).
pub fn tool_calls_json(calls: &[ToolCall], id_prefix: &str) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "index": i,
                "id": format!("{id_prefix}_{i}"),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments.to_string()}
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assistant::ToolChoice;

    fn host_tools() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "calc.eval".into(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        }]
    }

    fn map(body: Value) -> Result<Turn, ApiError> {
        ChatRequest::parse(&body)?.map(host_tools(), "test")
    }

    const HI: &str = r#"[{"role": "user", "content": "hi"}]"#;

    /// Request bodies that must be refused: what they get back.
    #[test]
    fn bad_requests_map_to_the_status_param_and_code_that_name_the_problem() {
        let messages: Value = serde_json::from_str(HI).unwrap();
        let with = |extra: Value| {
            let mut body = json!({ "messages": messages });
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body
        };
        let cases: Vec<(Value, &str, &str)> = vec![
            // body, param, words the message must contain
            (json!({}), "messages", "missing field `messages`"),
            (json!({"messages": []}), "messages", "at least one message"),
            (
                json!({"messages": [{"role": "robot", "content": "hi"}]}),
                "messages",
                "role `robot`",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages",
                "string or a list",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages",
                "only text parts",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{"}}]}]}),
                "messages",
                "not JSON",
            ),
            (with(json!({"n": 2})), "n", "n = 1"),
            (
                with(json!({"max_tokens": 0})),
                "max_tokens",
                "between 1 and",
            ),
            (
                with(json!({"max_tokens": 100000})),
                "max_tokens",
                "between 1 and",
            ),
            (
                with(json!({"temperature": "hot"})),
                "temperature",
                "invalid type",
            ),
            (
                with(json!({"frequency_penalty": 3.0})),
                "frequency_penalty",
                "between -2 and 2",
            ),
            (
                with(json!({"response_format": {"type": "xml"}})),
                "response_format",
                "text, json_object or json_schema",
            ),
            (
                with(json!({"response_format": {"type": "json_schema"}})),
                "response_format",
                "schema` is missing",
            ),
            (
                with(json!({"tools": [{"type": "retrieval", "function": {"name": "f"}}]})),
                "tools",
                "must be `function`",
            ),
            (
                with(json!({"tool_choice": "sometimes"})),
                "tool_choice",
                "must be none, auto, required",
            ),
            (
                with(json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}})),
                "tool_choice",
                "`nope`",
            ),
            (
                with(json!({"unknown_field": 1})),
                "unknown_field",
                "unknown field",
            ),
        ];
        for (body, param, words) in cases {
            let e = map(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.kind, "invalid_request_error", "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert!(e.message.contains(words), "{body}: {}", e.message);
        }
    }

    /// Request bodies that are accepted: the turn they become.
    #[test]
    fn good_requests_map_to_the_turn_they_ask_for() {
        let turn = map(json!({"messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]})).unwrap();
        assert_eq!(turn.messages[0].role, Role::System);
        assert_eq!(turn.messages[1].content, "hi");
        assert_eq!(turn.choice, ToolChoice::Auto);
        assert_eq!(turn.host_tools.len(), 1);
        let messages: Value = serde_json::from_str(HI).unwrap();
        let cases: Vec<(Value, ToolChoice)> = vec![
            (json!("none"), ToolChoice::None),
            (json!("auto"), ToolChoice::Auto),
            // Only plugin tools: required is a forced plugin call.
            (json!("required"), ToolChoice::Required),
            (
                json!({"type": "function", "function": {"name": "calc.eval"}}),
                ToolChoice::Function("calc.eval".into()),
            ),
        ];
        for (choice, want) in cases {
            let turn = map(json!({"messages": messages, "tool_choice": choice})).unwrap();
            assert_eq!(turn.choice, want, "{choice}");
        }
        let turn = map(json!({"messages": messages, "response_format": {"type": "json_object"}, "max_completion_tokens": 7, "stop": "x"})).unwrap();
        assert_eq!(turn.format, Some(OutputFormat::JsonObject));
        assert_eq!(turn.params.max_new_tokens, 7);
        assert_eq!(turn.params.stop, vec!["x".to_string()]);
    }
}
