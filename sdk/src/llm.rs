//! Completion by the host's model (needs `llm-tokens` in the manifest).

use crate::bindings::hearth::plugin::llm as host;
pub use host::{Completion, Error, Message, Request};

/// Asks the model to answer `prompt` with at most `max_tokens` tokens.
pub fn ask(prompt: &str, max_tokens: u32) -> Result<Completion, Error> {
    complete(&Request {
        messages: vec![Message {
            role: "user".into(),
            content: prompt.into(),
        }],
        max_tokens,
        temperature: None,
    })
}

/// Sends a full completion request.
pub fn complete(request: &Request) -> Result<Completion, Error> {
    host::complete(request)
}
