//! Write hearth plugins in Rust.
//!
//! A plugin is a type implementing [`Plugin`], exported with [`register!`]:
//!
//! ```
//! use hearth_sdk::{json, Call, Plugin, Tool, ToolError, Value};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn tools() -> Vec<Tool> {
//!         vec![Tool::new("echo", "Returns its text argument")
//!             .schema(json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}))]
//!     }
//!     fn invoke(call: Call) -> Result<Value, ToolError> {
//!         #[derive(serde::Deserialize)]
//!         struct Args { text: String }
//!         let args: Args = call.args()?;
//!         Ok(json!({ "text": args.text }))
//!     }
//! }
//!
//! hearth_sdk::register!(Echo);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2`. The capability modules
//! ([`kv`], [`config`], [`llm`], [`tools`], [`http`], [`log`]) wrap the host's
//! imports; a component only imports what it uses, and the host refuses one
//! that uses a capability its `plugin.toml` does not ask for.

#![deny(missing_docs)]

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/v0.1.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "hearth_sdk::bindings",
    });
}

pub mod config;
pub mod http;
pub mod kv;
pub mod llm;
pub mod log;
pub mod tools;

use bindings::hearth::plugin::types;
pub use serde_json::{Value, json};
pub use types::{CallContext, EventKind, EventOutcome, ToolError};

/// The contract version this SDK implements, stamped into every component.
pub const CONTRACT_VERSION: &str = "0.1.0";

/// An observed event: its kind and its JSON payload.
pub use types::Event;

/// A tool a plugin offers, built with [`Tool::new`] and [`Tool::schema`].
#[derive(Debug, Clone)]
pub struct Tool {
    name: String,
    description: String,
    schema: Value,
}

impl Tool {
    /// A tool that takes no arguments (schema: an empty object).
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Tool {
            name: name.into(),
            description: description.into(),
            schema: json!({ "type": "object", "properties": {} }),
        }
    }

    /// Sets the JSON Schema of the arguments object.
    pub fn schema(mut self, schema: Value) -> Self {
        self.schema = schema;
        self
    }
}

/// One invocation: the tool's name, its arguments and who is calling.
#[derive(Debug)]
pub struct Call {
    /// The unqualified tool name.
    pub tool: String,
    /// The arguments as JSON text, exactly as the host passed them.
    pub arguments: String,
    /// Request id, caller and depth.
    pub context: CallContext,
}

impl Call {
    /// Deserialises the arguments straight into `T` (no intermediate
    /// value); the error names the field.
    pub fn args<T: serde::de::DeserializeOwned>(&self) -> Result<T, ToolError> {
        serde_json::from_str(&self.arguments)
            .map_err(|e| ToolError::InvalidArguments(e.to_string()))
    }

    /// The arguments as a JSON value, for tools that inspect them freely.
    pub fn value(&self) -> Result<Value, ToolError> {
        self.args()
    }
}

impl ToolError {
    /// The tool ran and failed.
    pub fn failed(message: impl std::fmt::Display) -> Self {
        ToolError::Failed(message.to_string())
    }

    /// The arguments were wrong.
    pub fn invalid(message: impl std::fmt::Display) -> Self {
        ToolError::InvalidArguments(message.to_string())
    }

    /// A needed resource is unavailable.
    pub fn unavailable(message: impl std::fmt::Display) -> Self {
        ToolError::Unavailable(message.to_string())
    }
}

/// What a plugin implements. Every call runs in a fresh instance, so the
/// methods are associated functions: keep state in [`kv`], not in statics.
pub trait Plugin {
    /// The tools this plugin offers (at most 64; descriptions up to 1 KiB
    /// of plain text, schemas up to 16 KiB with local `$ref`s only). The
    /// names are recorded when the plugin is installed and must not change
    /// later.
    fn tools() -> Vec<Tool>;

    /// The events this plugin observes (none by default). The answer is
    /// recorded when the plugin is installed and must not change later.
    /// Observing `BeforePrompt` or `AfterResponse` shows the plugin every
    /// prompt and answer: its `plugin.toml` must ask for
    /// `[permissions] conversation = "read"`, or `"modify"` for an
    /// [`on_event`](Plugin::on_event) that rewrites or refuses them.
    fn events() -> Vec<EventKind> {
        Vec::new()
    }

    /// Checks the configuration (defaults merged with the user's overrides).
    fn validate_config(config: &Value) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// Runs one tool.
    fn invoke(call: Call) -> Result<Value, ToolError>;

    /// Observes an event (does nothing by default).
    fn on_event(event: Event) -> EventOutcome {
        let _ = event;
        EventOutcome::Proceed
    }
}

/// Exports a [`Plugin`] implementation as the component's `guest` interface
/// and stamps the contract version into it.
#[macro_export]
macro_rules! register {
    ($plugin:ty) => {
        /// The contract version, read by the host before instantiation.
        #[cfg_attr(target_arch = "wasm32", unsafe(link_section = "hearth:contract-version"))]
        #[used]
        static __HEARTH_CONTRACT_VERSION: [u8; $crate::__private::CONTRACT_VERSION_BYTES.len()] =
            $crate::__private::CONTRACT_VERSION_BYTES;

        #[doc(hidden)]
        pub struct __HearthExport;

        impl $crate::__private::Guest for __HearthExport {
            fn describe() -> $crate::__private::Description {
                $crate::__private::describe::<$plugin>()
            }
            fn validate_config(config: String) -> Result<(), String> {
                $crate::__private::validate_config::<$plugin>(config)
            }
            fn invoke(
                tool: String,
                arguments: String,
                context: $crate::CallContext,
            ) -> Result<String, $crate::ToolError> {
                $crate::__private::invoke::<$plugin>(tool, arguments, context)
            }
            fn on_event(event: $crate::Event) -> $crate::EventOutcome {
                <$plugin as $crate::Plugin>::on_event(event)
            }
        }

        // Native builds of a plugin exist for its unit tests; only a wasm
        // component exports the contract.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_plugin!(__HearthExport with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    pub use bindings::exports::hearth::plugin::guest::Guest;
    pub use types::Description;

    pub const CONTRACT_VERSION_BYTES: [u8; CONTRACT_VERSION.len()] = {
        let mut out = [0u8; CONTRACT_VERSION.len()];
        let src = CONTRACT_VERSION.as_bytes();
        let mut i = 0;
        while i < src.len() {
            out[i] = src[i];
            i += 1;
        }
        out
    };

    pub fn describe<P: Plugin>() -> Description {
        Description {
            tools: P::tools()
                .into_iter()
                .map(|t| types::Tool {
                    name: t.name,
                    description: t.description,
                    parameters_schema: t.schema.to_string(),
                })
                .collect(),
            events: P::events(),
        }
    }

    pub fn validate_config<P: Plugin>(config: String) -> Result<(), String> {
        let value: Value =
            serde_json::from_str(&config).map_err(|e| format!("configuration is not JSON: {e}"))?;
        P::validate_config(&value)
    }

    pub fn invoke<P: Plugin>(
        tool: String,
        arguments: String,
        context: CallContext,
    ) -> Result<String, ToolError> {
        let value = P::invoke(Call {
            tool,
            arguments,
            context,
        })?;
        Ok(value.to_string())
    }
}
