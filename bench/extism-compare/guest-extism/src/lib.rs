//! `upper`: the Extism side of the comparison. Takes the same JSON text as the
//! hearth guest's `upper` tool and returns the same JSON text.
//!
//! To do the same work as the hearth SDK, the struct is deserialised
//! straight from the input text, and the result is built as a `Value` and
//! serialised with `to_string`.

use extism_pdk::*;
use serde_json::json;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpperArgs {
    text: String,
}

#[plugin_fn]
pub fn upper(input: String) -> FnResult<String> {
    let args: UpperArgs = serde_json::from_str(&input)?;
    let value = json!({ "text": args.text.to_uppercase() });
    Ok(value.to_string())
}
