//! `hearth mcp`: the installed plugins' tools over MCP on stdin/stdout.
//!
//! The plugin set is loaded as `hearth serve` loads it, and followed the
//! same way (a `hearth plugin install|enable|disable|remove` beside it
//! reloads it, and the client is told the tools changed). stdout carries
//! only the protocol: messages for people go to stderr.
//!
//! The model is needed only by plugins granted `llm`, so it is loaded
//! lazily, in the background, as soon as an active plugin may call it (at
//! start, or when such a plugin is installed or enabled later; a call that
//! comes first waits for it). A client that only calls tools like
//! `calc.eval` never waits for a model, or needs one on disk.

use super::args::McpArgs;
use super::generate::{self, ModelArgs};
use super::render::one_line;
use super::serve::{serving_plugins, shutdown_signal};
use crate::home::Home;
use crate::plugins::{Completion, LlmBackend, LlmError, LlmRequest};
use crate::scheduler::{Scheduler, SchedulerOptions};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

pub(super) async fn mcp(home: Home, args: McpArgs) -> anyhow::Result<i32> {
    let model = LazyModel::new(home.clone(), args.model);
    let (runtime, set) = serving_plugins(&home, Arc::new(model.clone()), None).await?;
    for problem in &set.resolution.problems {
        eprintln!("warning: {}", one_line(&problem.to_string()));
    }
    let tools: usize = runtime.active_plugins().iter().map(|p| p.tools.len()).sum();
    eprintln!(
        "hearth: MCP on stdio: {tools} tools of plugins {}",
        set.resolution.order.join(", ")
    );
    // The model loads in the background as soon as an active plugin may
    // call it: now, or when one is installed or enabled later.
    let (watched, loader) = (runtime.clone(), model.clone());
    tokio::spawn(async move {
        let mut changes = watched.watch_active();
        loop {
            let wants_model = watched
                .active_plugins()
                .iter()
                .any(|p| p.manifest.permissions.llm_tokens > 0);
            if wants_model {
                loader.start();
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    });
    crate::manager::watch_installed(
        runtime.clone(),
        home.clone(),
        std::time::Duration::from_secs(2),
    );
    crate::mcp::serve_stdio(crate::mcp::McpServer::new(runtime), shutdown_signal()).await?;
    Ok(0)
}

/// The model behind the plugins' `llm` import, loaded once, on first need.
#[derive(Clone)]
struct LazyModel {
    inner: Arc<Loader>,
}

struct Loader {
    home: Home,
    model: ModelArgs,
    started: AtomicBool,
    /// `None` until the load ends; then the scheduler, or why there is
    /// none (kept: a failed load is not retried on every call).
    loaded: watch::Sender<Option<Result<Scheduler, String>>>,
}

impl LazyModel {
    fn new(home: Home, model: ModelArgs) -> LazyModel {
        LazyModel {
            inner: Arc::new(Loader {
                home,
                model,
                started: AtomicBool::new(false),
                loaded: watch::Sender::new(None),
            }),
        }
    }

    /// Starts loading, once. The load runs in a task of its own, so a
    /// plugin call that gives up waiting (its time limit) does not cancel
    /// it for the next one.
    fn start(&self) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            eprintln!("hearth: loading the model for the plugins' llm calls …");
            let (home, model) = (inner.home.clone(), inner.model.clone());
            let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let path = generate::resolve_model(&home, &model)?;
                Ok(crate::engine::Engine::load(&path, &model.options(&home))?)
            })
            .await;
            let result = match loaded {
                Ok(Ok(engine)) => Ok(Scheduler::new(engine, SchedulerOptions::default())),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(e) => Err(format!("loading the model stopped: {e}")),
            };
            match &result {
                Ok(_) => eprintln!("hearth: model loaded"),
                Err(e) => eprintln!(
                    "warning: no model for the plugins' llm calls: {}",
                    one_line(e)
                ),
            }
            inner.loaded.send_replace(Some(result));
        });
    }
}

impl LlmBackend for LazyModel {
    fn complete<'a>(
        &'a self,
        namespace: &'a str,
        request: LlmRequest,
        budget: u32,
    ) -> Pin<Box<dyn Future<Output = Result<Completion, LlmError>> + Send + 'a>> {
        Box::pin(async move {
            self.start();
            let mut loaded = self.inner.loaded.subscribe();
            let scheduler = {
                let state = loaded
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| LlmError::Unavailable("the model loader stopped".into()))?;
                match state.as_ref() {
                    Some(Ok(scheduler)) => scheduler.clone(),
                    Some(Err(e)) => return Err(LlmError::Unavailable(e.clone())),
                    None => unreachable!("waited for a value"),
                }
            };
            scheduler.complete(namespace, request, budget).await
        })
    }
}
