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
///
/// Read at compile time from the package declaration
/// (`package hearth:plugin@X.Y.Z;`) of the WIT world the bindings above are
/// generated from, so the stamp cannot drift from the interface the
/// component really exports.
pub const CONTRACT_VERSION: &str = wit_package_version(BOUND_WIT, "hearth:plugin");

/// The world `bindings` is generated from: the same folder, so a new
/// contract changes both paths.
const BOUND_WIT: &str = include_str!("../../wit/v0.1.0/world.wit");

/// The `X.Y.Z` of the first `package <package>@X.Y.Z;` declaration in a
/// WIT text. A `const fn` so that [`CONTRACT_VERSION`] is computed by the
/// compiler: a WIT file without the declaration, or with a version that is
/// not three dot-separated numbers, fails the build naming the problem.
const fn wit_package_version(wit: &'static str, package: &str) -> &'static str {
    const KEYWORD: &[u8] = b"package ";
    let text = wit.as_bytes();
    let name = package.as_bytes();
    let mut at = 0;
    // Declarations start a line; comments before them are skipped.
    while at < text.len() {
        let line_start = at == 0 || text[at - 1] == b'\n';
        if line_start
            && starts_with(text, at, KEYWORD)
            && starts_with(text, at + KEYWORD.len(), name)
        {
            let version_at = at + KEYWORD.len() + name.len();
            if version_at < text.len() && text[version_at] == b'@' {
                let start = version_at + 1;
                let mut end = start;
                while end < text.len() && text[end] != b';' {
                    end += 1;
                }
                assert!(
                    end < text.len(),
                    "the WIT package declaration does not end with `;`"
                );
                let (_, rest) = wit.split_at(start);
                let (version, _) = rest.split_at(end - start);
                assert!(
                    is_plain_version(version.as_bytes()),
                    "the WIT package version is not of the form X.Y.Z"
                );
                return version;
            }
        }
        at += 1;
    }
    panic!("the WIT text has no `package <name>@<version>;` declaration for this package")
}

/// Whether `text[at..]` starts with `prefix`.
const fn starts_with(text: &[u8], at: usize, prefix: &[u8]) -> bool {
    if at + prefix.len() > text.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if text[at + i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `v` is `X.Y.Z`: three non-empty runs of ASCII digits.
const fn is_plain_version(v: &[u8]) -> bool {
    let (mut dots, mut digits, mut i) = (0, 0, 0);
    while i < v.len() {
        match v[i] {
            b'0'..=b'9' => digits += 1,
            b'.' if digits > 0 => {
                dots += 1;
                digits = 0;
            }
            _ => return false,
        }
        i += 1;
    }
    dots == 2 && digits > 0
}

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

/// Lets a tool write `kv::get(key)?`. A value or key over the host's limits
/// and a full quota are the tool's failure (`failed`); the store itself
/// failing (or not being granted) is a resource being unavailable.
impl From<kv::Error> for ToolError {
    fn from(e: kv::Error) -> Self {
        match e {
            kv::Error::TooLarge(m) => ToolError::Failed(format!("key-value store: {m}")),
            kv::Error::QuotaExceeded(m) => {
                ToolError::Failed(format!("key-value store quota exceeded: {m}"))
            }
            kv::Error::Io(m) => ToolError::Unavailable(format!("key-value store failed: {m}")),
        }
    }
}

/// Lets a tool write `llm::ask(prompt, n)?`. An exhausted (or ungranted)
/// token budget is the host denying a capability; no model is a resource
/// being unavailable; a malformed request is the tool's own failure, not
/// its caller's arguments.
impl From<llm::Error> for ToolError {
    fn from(e: llm::Error) -> Self {
        match e {
            llm::Error::BudgetExceeded(m) => {
                ToolError::Denied(format!("model token budget exceeded: {m}"))
            }
            llm::Error::Unavailable(m) => ToolError::Unavailable(format!("no model: {m}")),
            llm::Error::Invalid(m) => ToolError::Failed(format!("invalid model request: {m}")),
        }
    }
}

/// Lets a tool write `http::get(url)?`. A destination the plugin was not
/// granted is `denied`; a failed connection or an unusable answer is the
/// remote resource being unavailable; a malformed URL is the tool's own
/// failure. The message is the error's [`Display`](std::fmt::Display).
impl From<http::HttpError> for ToolError {
    fn from(e: http::HttpError) -> Self {
        let message = e.to_string();
        match e {
            http::HttpError::InvalidUrl(_) => ToolError::Failed(message),
            http::HttpError::Denied(_) => ToolError::Denied(message),
            http::HttpError::Protocol(_) => ToolError::Unavailable(message),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_errors_become_tool_errors() {
        let cases = [
            (
                kv::Error::TooLarge("value is 9 bytes; the limit is 8".into()),
                "failed",
            ),
            (kv::Error::QuotaExceeded("the quota is 64".into()), "failed"),
            (kv::Error::Io("disk on fire".into()), "unavailable"),
        ];
        for (error, case) in cases {
            let shown = format!("{error:?}");
            let inner = match &error {
                kv::Error::TooLarge(m) | kv::Error::QuotaExceeded(m) | kv::Error::Io(m) => {
                    m.clone()
                }
            };
            let (got, message) = parts(error.into());
            assert_eq!(got, case, "{shown}");
            assert!(
                message.contains(&inner) && message.contains("key-value"),
                "{message}"
            );
        }
        // Inside a tool, `?` does the conversion.
        fn tool() -> Result<(), ToolError> {
            Err(kv::Error::QuotaExceeded("full".into()))?
        }
        assert!(matches!(tool(), Err(ToolError::Failed(m)) if m.contains("full")));
    }

    #[test]
    fn llm_errors_become_tool_errors() {
        let (case, message) = parts(llm::Error::BudgetExceeded("8 tokens left".into()).into());
        assert_eq!(case, "denied");
        assert!(message.contains("8 tokens left"), "{message}");
        let (case, message) = parts(llm::Error::Unavailable("no model attached".into()).into());
        assert_eq!(case, "unavailable");
        assert!(message.contains("no model attached"), "{message}");
        let (case, message) = parts(llm::Error::Invalid("max-tokens is 0".into()).into());
        assert_eq!(case, "failed");
        assert!(message.contains("max-tokens is 0"), "{message}");
    }

    #[test]
    fn http_errors_become_tool_errors() {
        use http::HttpError;
        let (case, message) = parts(HttpError::Denied("HttpRequestDenied".into()).into());
        assert_eq!(case, "denied");
        assert_eq!(message, "request denied by the host: HttpRequestDenied");
        let (case, message) = parts(HttpError::Protocol("ConnectionRefused".into()).into());
        assert_eq!(case, "unavailable");
        assert!(message.contains("ConnectionRefused"), "{message}");
        let (case, message) = parts(HttpError::InvalidUrl("`x` has no host".into()).into());
        assert_eq!(case, "failed");
        assert!(message.contains("`x` has no host"), "{message}");
        // The SDK's own helpers fail with an HttpError that `?` converts.
        fn tool() -> Result<http::Response, ToolError> {
            Ok(http::get("ftp://example.invalid")?)
        }
        assert!(matches!(tool(), Err(ToolError::Failed(m)) if m.contains("ftp://")));
    }

    /// The case name (as in the WIT) and the message of a tool error.
    fn parts(e: ToolError) -> (&'static str, String) {
        match e {
            ToolError::InvalidArguments(m) => ("invalid-arguments", m),
            ToolError::UnknownTool(m) => ("unknown-tool", m),
            ToolError::Failed(m) => ("failed", m),
            ToolError::Unavailable(m) => ("unavailable", m),
            ToolError::Denied(m) => ("denied", m),
        }
    }

    #[test]
    fn the_contract_version_is_the_one_every_bound_wit_file_declares() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/v0.1.0");
        let declaration = format!("package hearth:plugin@{CONTRACT_VERSION};");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.lines().any(|l| l.trim() == declaration),
                "{} does not declare `{declaration}`",
                path.display()
            );
            files += 1;
        }
        assert!(files >= 8, "only {files} WIT files in {}", dir.display());
        // The folder is named after the version it holds.
        assert!(dir.ends_with(format!("v{CONTRACT_VERSION}")));
        // The stamp the register! macro writes is the same text.
        assert_eq!(
            &__private::CONTRACT_VERSION_BYTES,
            CONTRACT_VERSION.as_bytes()
        );
    }

    #[test]
    fn package_versions_are_read_from_the_declaration_only() {
        let wit = "// package hearth:plugin@9.9.9; in a comment\npackage hearth:plugin@1.22.333;\n";
        assert_eq!(wit_package_version(wit, "hearth:plugin"), "1.22.333");
        assert_eq!(wit_package_version("package a:b@0.0.1;", "a:b"), "0.0.1");
        assert!(is_plain_version(b"0.1.0"));
        for bad in [&b"0.1"[..], b"0.1.0-rc1", b".1.0", b"0..0", b"0.1.", b""] {
            assert!(!is_plain_version(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    #[should_panic(expected = "no `package <name>@<version>;` declaration")]
    fn a_wit_text_without_the_declaration_is_refused() {
        wit_package_version("package other:thing@0.1.0;", "hearth:plugin");
    }
}
