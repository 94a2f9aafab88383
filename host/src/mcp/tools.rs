//! The plugins' tools as MCP tools: their names, their definitions in
//! `tools/list`, and what a call's outcome becomes in `tools/call` (the
//! error rule).

use crate::plugins::{ErrorKind, InvokeError, LoadedPlugin, Runtime};
use rmcp::model::{CallToolResult, ContentBlock, ErrorData, Tool};
use std::sync::Arc;

/// The MCP name of tool `tool` of plugin `namespace`: `namespace.tool`,
/// the name every other front end of hearth uses.
///
/// The 2026-07-28 revision's tool-name rules (1–128 characters of ASCII
/// letters, digits, `_`, `-` and `.`) admit it as it is: a namespace is at
/// most 40 lowercase letters, digits and hyphens, a tool name at most 64
/// letters, digits, `_` and `-`, so the joined name is at most 105
/// characters, and neither part contains a dot, so the first dot splits it
/// back unambiguously.
pub fn mcp_name(namespace: &str, tool: &str) -> String {
    format!("{namespace}.{tool}")
}

/// Every tool of the active plugins, by namespace then in the order the
/// plugin describes them: the same order for the same set, as the spec
/// asks, so clients can cache the list and models' prompt caches hit.
pub fn list(runtime: &Runtime) -> Vec<Tool> {
    let mut plugins = runtime.active_plugins();
    // `active_plugins` is by namespace already; sorting keeps the order a
    // property of this function rather than of the runtime's map.
    plugins.sort_by(|a, b| a.manifest.namespace.cmp(&b.manifest.namespace));
    plugins.iter().flat_map(plugin_tools).collect()
}

/// The MCP definitions of one plugin's tools.
fn plugin_tools(plugin: &Arc<LoadedPlugin>) -> Vec<Tool> {
    let namespace = plugin.manifest.namespace.as_str();
    plugin
        .tools
        .iter()
        .map(|t| {
            // Load-time validation made every schema a JSON object; a
            // non-object here would be a bug, and `{}` accepts anything the
            // runtime's own check then judges.
            let schema = t.schema.as_object().cloned().unwrap_or_default();
            Tool::new(
                mcp_name(namespace, &t.name),
                t.description.clone(),
                Arc::new(schema),
            )
        })
        .collect()
}

/// The definition of the tool an MCP client calls `name`, if an active
/// plugin offers it.
pub fn find(runtime: &Runtime, name: &str) -> Option<Tool> {
    let (namespace, tool) = name.split_once('.')?;
    let plugin = runtime.active(namespace)?;
    plugin_tools(&plugin)
        .into_iter()
        .find(|t| t.name.as_ref() == mcp_name(namespace, tool))
}

/// What a call's outcome becomes in `tools/call` — the error rule:
///
/// - a result is a successful tool result whose `structuredContent` is the
///   tool's JSON and whose one text block is the same JSON as text (for
///   clients that read only `content`);
/// - the tool's own error ([`ErrorKind::Tool`], including a permission the
///   plugin was refused) and arguments refused before it ran
///   ([`ErrorKind::BadArguments`]: not JSON, or not matching the tool's
///   schema) are tool results with `isError: true` and the message, since
///   the model can read them and call again differently, which is what the
///   spec asks of input-validation and execution errors;
/// - so are the limits the sandbox enforced on this one call
///   ([`ErrorKind::Timeout`], [`ErrorKind::MemoryLimit`],
///   [`ErrorKind::StackOverflow`], [`ErrorKind::OutputTooLarge`],
///   [`ErrorKind::Trap`]): the call failed, the server did not, and a
///   smaller input, another tool or a later retry may well succeed;
/// - a tool no active plugin offers ([`ErrorKind::NotFound`]) is the
///   protocol error the spec names for an unknown tool, `-32602` (invalid
///   params);
/// - a failure of the host around the call ([`ErrorKind::Host`]) is a
///   protocol error, `-32603` (internal error): nothing about the call
///   was wrong, and the model cannot fix it.
pub fn outcome(
    name: &str,
    result: Result<String, InvokeError>,
) -> Result<CallToolResult, ErrorData> {
    match result {
        Ok(json) => Ok(success(json)),
        Err(e) => match e.kind() {
            ErrorKind::NotFound => Err(unknown_tool(name, Some(&e))),
            ErrorKind::Host => Err(ErrorData::internal_error(format!("{name}: {e}"), None)),
            ErrorKind::Tool
            | ErrorKind::BadArguments
            | ErrorKind::Timeout
            | ErrorKind::MemoryLimit
            | ErrorKind::StackOverflow
            | ErrorKind::OutputTooLarge
            | ErrorKind::Trap => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "{name}: {e}"
            ))])),
        },
    }
}

/// The protocol error for a tool that no active plugin offers.
pub fn unknown_tool(name: &str, why: Option<&InvokeError>) -> ErrorData {
    let message = match why {
        Some(e) => format!("unknown tool `{name}`: {e}"),
        None => format!("unknown tool `{name}`; tools are named namespace.tool (tools/list)"),
    };
    ErrorData::invalid_params(message, None)
}

/// A tool's JSON result as a tool result.
fn success(json: String) -> CallToolResult {
    // The runtime checked that the result is JSON; were it not, the text
    // alone still reaches the client.
    match serde_json::from_str::<serde_json::Value>(&json) {
        Ok(value) => {
            let mut result = CallToolResult::success(vec![ContentBlock::text(json)]);
            result.structured_content = Some(value);
            result
        }
        Err(_) => CallToolResult::success(vec![ContentBlock::text(json)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::ToolError;

    fn text(result: &CallToolResult) -> String {
        result.content[0]
            .as_text()
            .map(|t| t.text.clone())
            .unwrap_or_default()
    }

    #[test]
    fn names_are_namespace_dot_tool_and_split_back() {
        let name = mcp_name("calc", "eval");
        assert_eq!(name, "calc.eval");
        assert_eq!(name.split_once('.'), Some(("calc", "eval")));
        // The longest possible name stays within the spec's 128 characters.
        let longest = mcp_name(&"n".repeat(40), &"t".repeat(64));
        assert!(longest.len() <= 128, "{}", longest.len());
    }

    #[test]
    fn a_result_is_structured_content_and_the_same_json_as_text() {
        let r = outcome("calc.eval", Ok(r#"{"value":42}"#.into())).unwrap();
        assert_eq!(r.is_error, Some(false));
        assert_eq!(r.structured_content, Some(serde_json::json!({"value": 42})));
        assert_eq!(text(&r), r#"{"value":42}"#);
    }

    #[test]
    fn tool_and_argument_errors_are_results_the_model_can_read() {
        let tool = outcome(
            "calc.eval",
            Err(InvokeError::Tool(ToolError::InvalidArguments(
                "unexpected `*`".into(),
            ))),
        )
        .unwrap();
        assert_eq!(tool.is_error, Some(true));
        assert!(text(&tool).contains("unexpected `*`"), "{}", text(&tool));
        let args = outcome(
            "calc.eval",
            Err(InvokeError::BadArguments(
                "arguments of `eval` do not match its schema".into(),
            )),
        )
        .unwrap();
        assert_eq!(args.is_error, Some(true));
        assert!(text(&args).contains("do not match its schema"));
    }

    #[test]
    fn sandbox_limits_are_results_and_host_failures_protocol_errors() {
        let timeout = outcome(
            "slow.wait",
            Err(InvokeError::Timeout {
                plugin: "slow".into(),
                limit: std::time::Duration::from_secs(1),
                blocked: false,
            }),
        )
        .unwrap();
        assert_eq!(timeout.is_error, Some(true));
        let trap = outcome(
            "bad.crash",
            Err(InvokeError::Trap {
                plugin: "bad".into(),
                message: "unreachable".into(),
            }),
        )
        .unwrap();
        assert_eq!(trap.is_error, Some(true));
        let host = outcome(
            "calc.eval",
            Err(InvokeError::Host {
                plugin: "calc".into(),
                message: "no thread".into(),
            }),
        )
        .unwrap_err();
        assert_eq!(host.code, rmcp::model::ErrorCode::INTERNAL_ERROR);
    }

    #[test]
    fn an_unknown_tool_is_invalid_params() {
        let e = outcome("nope.tool", Err(InvokeError::NoSuchPlugin("nope".into()))).unwrap_err();
        assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS);
        assert!(e.message.contains("nope.tool"), "{}", e.message);
    }
}
