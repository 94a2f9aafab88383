//! MCP on this process's stdin and stdout (`hearth mcp`): one client, the
//! process that started us. stdout carries only the protocol; everything
//! else goes to stderr.

use super::{McpError, McpServer};
use rmcp::ServiceExt;
use rmcp::service::ServerInitializeError;

/// Serves `server` on stdin/stdout until the client closes stdin or
/// `shutdown` resolves (then calls in flight are dropped).
///
/// # Errors
///
/// [`McpError::Start`] when the first message is not an MCP request or the
/// answer cannot be written; [`McpError::Session`] when the session's task
/// fails. A client that closes stdin before saying anything is a normal
/// end.
pub async fn serve_stdio(
    server: McpServer,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), McpError> {
    let session = async {
        // On Linux, when both are pipes (as MCP clients start servers),
        // they are read and written without a blocking thread, so a
        // shutdown is not left waiting on a read of stdin.
        let running = match server.serve(rmcp::transport::stdio_pipes()).await {
            Ok(running) => running,
            Err(ServerInitializeError::ConnectionClosed(_)) => return Ok(()),
            Err(e) => return Err(McpError::Start(Box::new(e))),
        };
        running.waiting().await.map_err(McpError::Session)?;
        Ok(())
    };
    tokio::select! {
        result = session => result,
        () = shutdown => Ok(()),
    }
}
