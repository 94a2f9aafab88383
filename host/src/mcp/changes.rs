//! When the tool list changes: the runtime says whenever its active set
//! changes (install, update, enable, disable, remove, a reload); this turns
//! that into "the tools an MCP client sees are different now", so a reload
//! that changed nothing a client can see sends no notification.

use super::tools;
use crate::plugins::Runtime;
use rmcp::model::Tool;
use tokio::sync::watch;

/// Follows one runtime's active set for one listener (a session, or a
/// `subscriptions/listen` stream).
pub(crate) struct ToolListChanges {
    runtime: Runtime,
    changes: watch::Receiver<u64>,
    /// The list as the listener last knew it.
    seen: Vec<Tool>,
}

impl ToolListChanges {
    /// Starts from the list as it is now.
    pub(crate) fn new(runtime: Runtime) -> ToolListChanges {
        let mut changes = runtime.watch_active();
        changes.borrow_and_update();
        let seen = tools::list(&runtime);
        ToolListChanges {
            runtime,
            changes,
            seen,
        }
    }

    /// Waits until the tool list differs from the one last seen. Never
    /// returns while the runtime lives (this holds it), so callers select
    /// it against their own end.
    pub(crate) async fn changed(&mut self) {
        loop {
            if self.changes.changed().await.is_err() {
                // The runtime is gone: nothing will change any more.
                std::future::pending::<()>().await;
            }
            self.changes.borrow_and_update();
            let now = tools::list(&self.runtime);
            if now != self.seen {
                self.seen = now;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::with_calc;
    use super::*;
    use std::time::Duration;

    /// Whether `changes` reports a change within a short while.
    async fn reports(changes: &mut ToolListChanges) -> bool {
        tokio::time::timeout(Duration::from_millis(200), changes.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_change_is_reported_once_and_an_identical_reload_not_at_all() {
        let (_dir, runtime, calc) = with_calc().await;
        let mut changes = ToolListChanges::new(runtime.clone());
        assert!(!reports(&mut changes).await, "nothing changed yet");

        runtime.activate(calc.clone());
        assert!(reports(&mut changes).await, "calc.eval appeared");
        assert_eq!(tools::list(&runtime)[0].name, "calc.eval");

        // A reload that puts back the same set (the watcher reloads on any
        // write of installed.toml) is not a change a client can see.
        runtime.replace_active(vec![calc]);
        assert!(!reports(&mut changes).await, "same tools, no notification");

        runtime.deactivate("calc");
        assert!(reports(&mut changes).await, "calc.eval went away");
        assert!(tools::list(&runtime).is_empty());
    }

    #[tokio::test]
    async fn a_call_runs_in_the_sandbox_and_a_schema_violation_is_a_tool_error() {
        let (_dir, runtime, calc) = with_calc().await;
        runtime.activate(calc);
        let tool = tools::find(&runtime, "calc.eval").unwrap();
        assert_eq!(
            tool.input_schema["required"],
            serde_json::json!(["expression"])
        );
        let call = |args: &'static str| {
            let runtime = runtime.clone();
            async move {
                let scope = crate::plugins::CallScope::new("test");
                tools::outcome(
                    "calc.eval",
                    runtime.invoke_qualified("calc.eval", args, scope).await,
                )
            }
        };
        let ok = call(r#"{"expression":"6*7"}"#).await.unwrap();
        assert_eq!(ok.structured_content.unwrap()["value"], 42);
        let bad = call(r#"{"expression":42}"#).await.unwrap();
        assert_eq!(bad.is_error, Some(true));
    }
}
