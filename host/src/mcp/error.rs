//! What can go wrong serving MCP, apart from a call (whose failures are
//! answers, see [`super::tools::outcome`]).

/// Failure to set up or run an MCP server.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The stdio session could not start (the first message was not an
    /// MCP request, or writing the answer failed).
    /// (Boxed: rmcp's error carries the offending message, hundreds of
    /// bytes, which every `Result` of this type would otherwise reserve.)
    #[error("starting the MCP session on stdio: {0}")]
    Start(#[source] Box<rmcp::service::ServerInitializeError>),
    /// The task serving the session failed.
    #[error("the MCP session ended abnormally: {0}")]
    Session(#[source] tokio::task::JoinError),
    /// An `mcp-allowed-hosts` entry is not a host.
    #[error(
        "mcp-allowed-hosts: `{entry}` is not a host name, IP address or host:port \
         (no scheme, path or user)"
    )]
    BadAllowedHost {
        /// The entry (sanitized).
        entry: String,
    },
}
