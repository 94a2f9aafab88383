//! Engine errors: each names the file, parameter or limit that was wrong.

use std::path::PathBuf;

/// Everything that can go wrong loading a model or generating with it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be opened or read.
    #[error("model file {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// The file is not a usable GGUF file (wrong magic, truncated, corrupt
    /// metadata, tensors outside the file).
    #[error("model file {path} is not a usable GGUF file: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is a GGUF file of a kind this engine cannot run.
    #[error("model file {path}: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported, and what is.
        reason: String,
    },
    /// Loading would need more memory than the machine has free.
    #[error(
        "model file {path} needs about {need_mib} MiB ({weights_mib} MiB weights + {kv_mib} MiB KV cache for {context} tokens) but only {available_mib} MiB is available; try a smaller quantization (hearth model quantize --type q4_0) or a shorter context (--context {suggest_context})"
    )]
    OutOfMemory {
        /// The file.
        path: PathBuf,
        /// Total estimate.
        need_mib: u64,
        /// Weights as loaded.
        weights_mib: u64,
        /// KV cache at `context`.
        kv_mib: u64,
        /// Context length the estimate is for.
        context: usize,
        /// What the OS reports as available.
        available_mib: u64,
        /// A context that would fit, if any does.
        suggest_context: usize,
    },
    /// A sampling or request parameter is out of range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter {
        /// The parameter, as named in the API (`temperature`, `top_p`…).
        name: &'static str,
        /// What was wrong and what is accepted.
        reason: String,
    },
    /// The prompt does not fit the context window.
    #[error(
        "the prompt is {prompt_tokens} tokens but the context window is {context} tokens (at least 1 must be left to generate); shorten the conversation or raise --context"
    )]
    ContextOverflow {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// The context window.
        context: usize,
    },
    /// The prompt is too long in bytes to fit the context window, whatever
    /// it tokenises to; refused before tokenising.
    #[error(
        "the prompt is {bytes} bytes, more than fits in the context window of {context} tokens ({max_bytes} bytes at most); shorten the conversation"
    )]
    PromptTooLong {
        /// Bytes in the rendered prompt.
        bytes: usize,
        /// The most that could fit.
        max_bytes: usize,
        /// The context window.
        context: usize,
    },
    /// The chat template failed to render.
    #[error("chat template: {0}")]
    Template(String),
    /// The output constraint (JSON schema) could not be built or was broken.
    #[error("output constraint: {0}")]
    Constraint(String),
    /// The tokenizer could not be built from the file or failed on input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model computation failed.
    #[error("model: {0}")]
    Model(String),
    /// The request waited in the queue past its deadline and never ran.
    #[error("the request waited {waited_ms} ms in the queue, past its deadline, and was not run")]
    QueueDeadline {
        /// Time spent queued.
        waited_ms: u64,
    },
    /// The service is shutting down; the request was not run.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The engine thread is gone (it panicked or was shut down).
    #[error("the engine has stopped")]
    Stopped,
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Model(e.to_string())
    }
}
