//! `calc`: evaluates arithmetic expressions exactly.
//!
//! Numbers are arbitrary-precision rationals, so `0.1 + 0.2` is exactly
//! `3/10` and `1/3 * 3` is exactly `1`. The result carries the exact value as
//! a fraction and the nearest JSON number.

mod eval;

use hearth_sdk::{Call, Plugin, Tool, ToolError, Value, json};

pub use eval::{EvalError, evaluate};

struct Calc;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalArgs {
    expression: String,
}

impl Plugin for Calc {
    fn tools() -> Vec<Tool> {
        vec![
            Tool::new(
                "eval",
                "Evaluate an arithmetic expression exactly. Supports + - * / % ^, \
                 parentheses, decimals and unary minus. Returns the value and the \
                 exact fraction.",
            )
            .schema(json!({
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "description": "The expression, for example 2*(3+4) or 1/3 + 1/6",
                        // Numbers, operators, parentheses and spaces, with
                        // at least one digit: a model constrained by this
                        // schema cannot send an empty or wordy expression.
                        "pattern": "^[-+*/%^(). 0-9]*[0-9][-+*/%^(). 0-9]*$",
                        "maxLength": 1000
                    }
                },
                "required": ["expression"],
                "additionalProperties": false
            })),
        ]
    }

    fn invoke(call: Call) -> Result<Value, ToolError> {
        match call.tool.as_str() {
            "eval" => {
                let args: EvalArgs = call.args()?;
                let value = evaluate(&args.expression).map_err(ToolError::failed)?;
                Ok(eval::to_json(&args.expression, &value))
            }
            other => Err(ToolError::UnknownTool(other.to_string())),
        }
    }
}

hearth_sdk::register!(Calc);
