//! The task scheduling centre: one bounded queue in front of the engine.
//!
//! - Priority classes: interactive requests run before model calls made by
//!   plugins, which run before background work; first come, first served
//!   within a class.
//! - Admission: a full queue refuses at once with a retry-after estimate
//!   (the server's 503), never blocking the caller.
//! - Deadlines: a request still queued at its deadline is answered with an
//!   error without running; one running at its deadline is stopped between
//!   two tokens.
//! - Cancellation: dropping the [`Generation`] a submission returns (a
//!   client that disconnected) drops queued work and stops running work.
//! - Generation runs on the engine's thread; this module's dispatcher is one
//!   more plain thread. Nothing here blocks an async executor.

use crate::engine::{
    CancelToken, EndHook, Engine, EngineError, Event, EventSender, GenerateRequest, Generation,
    Prepared,
};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Who is asking, in the order they are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// A person waiting on an API or CLI request.
    Interactive = 0,
    /// A plugin calling the model.
    Plugin = 1,
    /// Work nobody is waiting on.
    Background = 2,
}

const CLASSES: usize = 3;

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The queue holds `capacity` requests already.
    #[error("the queue is full ({capacity} requests waiting); retry after {} s", retry_after.as_secs())]
    QueueFull {
        /// The queue's bound.
        capacity: usize,
        /// When trying again is likely to succeed.
        retry_after: Duration,
    },
    /// The request itself is invalid (bad parameters, too long a prompt…).
    #[error(transparent)]
    Invalid(#[from] EngineError),
    /// The scheduler is shutting down.
    #[error("the service is shutting down")]
    ShuttingDown,
}

/// Counters for health checks and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Waiting requests per class (interactive, plugin, background).
    pub queued: [usize; CLASSES],
    /// Requests generating now (at most the engine's parallel sequences);
    /// filled in by [`Scheduler::stats`] from the running requests.
    pub in_flight: usize,
    /// Requests that ran to an end.
    pub completed: u64,
    /// Submissions refused because the queue was full.
    pub rejected_full: u64,
    /// Requests whose deadline passed while queued.
    pub expired: u64,
    /// Queued requests dropped because their client went away.
    pub abandoned: u64,
}

/// Limits of the queue.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Most requests waiting (not counting those generating).
    pub capacity: usize,
    /// Most requests generating at once (default and upper bound: the
    /// engine's parallel sequences).
    pub parallel: Option<usize>,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            capacity: 64,
            parallel: None,
        }
    }
}

struct Queued {
    prepared: Prepared,
    deadline: Option<Instant>,
    enqueued: Instant,
    events: EventSender,
}

#[derive(Default)]
struct State {
    queues: [VecDeque<Queued>; CLASSES],
    stats: Stats,
    shutting_down: bool,
    /// The running requests' tokens by id, for shutdown.
    running: Vec<(u64, CancelToken)>,
    next_id: u64,
    /// Exponential average of how long one generation takes.
    average_run: Option<Duration>,
}

struct Inner {
    engine: Engine,
    capacity: usize,
    parallel: usize,
    state: Mutex<State>,
    wake: Condvar,
}

/// The queue and its dispatcher thread. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Scheduler {
    /// Starts the dispatcher in front of `engine`.
    pub fn new(engine: Engine, options: SchedulerOptions) -> Scheduler {
        let parallel = options
            .parallel
            .unwrap_or(usize::MAX)
            .clamp(1, engine.parallel());
        let inner = Arc::new(Inner {
            engine,
            capacity: options.capacity.max(1),
            parallel,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let worker = inner.clone();
        std::thread::Builder::new()
            .name("hearth-scheduler".into())
            .spawn(move || dispatch(&worker))
            .expect("start the scheduler thread");
        Scheduler { inner }
    }

    /// The engine behind the queue.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Checks and queues a request. Invalid requests and a full queue are
    /// refused here; otherwise events arrive on the returned generation
    /// once the request's turn comes. `deadline` bounds queueing and
    /// generation together.
    pub fn submit(
        &self,
        request: GenerateRequest,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> Result<Generation, SchedulerError> {
        let prepared = self.inner.engine.prepare(request)?;
        self.enqueue(prepared, priority, deadline)
    }

    /// Like [`submit`](Self::submit), from async code: the preparation
    /// (chat template, tokenizer, output constraint), which grows with the
    /// conversation, runs on a blocking thread, never on an async worker.
    pub async fn submit_async(
        &self,
        request: GenerateRequest,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> Result<Generation, SchedulerError> {
        let engine = self.inner.engine.clone();
        let prepared = tokio::task::spawn_blocking(move || engine.prepare(request))
            .await
            .map_err(|_| SchedulerError::ShuttingDown)??;
        self.enqueue(prepared, priority, deadline)
    }

    /// Queues a prepared request, or refuses it when the queue is full.
    fn enqueue(
        &self,
        mut prepared: Prepared,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> Result<Generation, SchedulerError> {
        prepared.set_deadline(deadline);
        let prompt_tokens = prepared.prompt_tokens();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut state = self.inner.state.lock().expect("scheduler state");
        if state.shutting_down {
            return Err(SchedulerError::ShuttingDown);
        }
        let waiting: usize = state.queues.iter().map(VecDeque::len).sum();
        if waiting >= self.inner.capacity {
            state.stats.rejected_full += 1;
            let per_job =
                state.average_run.unwrap_or(Duration::from_secs(1)) / self.inner.parallel as u32;
            // Time for the queue to drain by a quarter, at least a second.
            let retry_after = (per_job * (waiting as u32 / 4 + 1))
                .clamp(Duration::from_secs(1), Duration::from_secs(60));
            return Err(SchedulerError::QueueFull {
                capacity: self.inner.capacity,
                retry_after: Duration::from_secs(retry_after.as_secs_f64().ceil() as u64),
            });
        }
        state.queues[priority as usize].push_back(Queued {
            prepared,
            deadline,
            enqueued: Instant::now(),
            events: tx,
        });
        state.stats.queued[priority as usize] += 1;
        drop(state);
        self.inner.wake.notify_one();
        Ok(Generation::from_channel(rx, prompt_tokens))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let state = self.inner.state.lock().expect("scheduler state");
        Stats {
            in_flight: state.running.len(),
            ..state.stats.clone()
        }
    }

    /// Refuses new work, answers every queued request with
    /// [`EngineError::ShuttingDown`] and stops the running one.
    pub fn shutdown(&self) {
        let mut state = self.inner.state.lock().expect("scheduler state");
        state.shutting_down = true;
        for queue in state.queues.iter_mut() {
            for job in queue.drain(..) {
                let _ = job.events.send(Err(EngineError::ShuttingDown));
                job.prepared.cancel_token().cancel();
            }
        }
        state.stats.queued = [0; CLASSES];
        for (_, running) in &state.running {
            running.cancel();
        }
        drop(state);
        self.inner.wake.notify_all();
    }
}

impl Scheduler {
    /// Most requests generating at once.
    pub fn parallel(&self) -> usize {
        self.inner.parallel
    }
}

/// Takes the next request in priority order once a sequence is free;
/// `None` once shut down.
fn next(inner: &Inner) -> Option<Queued> {
    let mut state = inner.state.lock().expect("scheduler state");
    loop {
        if state.running.len() < inner.parallel {
            for class in 0..CLASSES {
                if let Some(job) = state.queues[class].pop_front() {
                    state.stats.queued[class] -= 1;
                    return Some(job);
                }
            }
        }
        if state.shutting_down {
            return None;
        }
        state = inner.wake.wait(state).expect("scheduler state");
    }
}

fn dispatch(inner: &Arc<Inner>) {
    while let Some(job) = next(inner) {
        let now = Instant::now();
        if job.events.is_closed() || job.prepared.cancel_token().is_cancelled() {
            inner.state.lock().expect("scheduler state").stats.abandoned += 1;
            continue;
        }
        if job.deadline.is_some_and(|d| now >= d) {
            inner.state.lock().expect("scheduler state").stats.expired += 1;
            let waited_ms = now.duration_since(job.enqueued).as_millis() as u64;
            let _ = job
                .events
                .send(Err(EngineError::QueueDeadline { waited_ms }));
            continue;
        }
        let cancel = job.prepared.cancel_token().clone();
        let id = {
            let mut state = inner.state.lock().expect("scheduler state");
            if state.shutting_down {
                cancel.cancel();
            }
            state.next_id += 1;
            let id = state.next_id;
            state.running.push((id, cancel));
            id
        };
        let started = Instant::now();
        // Runs in the engine before the request's last event goes out, so
        // whoever receives it sees the scheduler already free.
        let owner = inner.clone();
        let on_end = EndHook::new(move || {
            let took = started.elapsed();
            let mut state = owner.state.lock().expect("scheduler state");
            state.running.retain(|(r, _)| *r != id);
            state.stats.completed += 1;
            state.average_run = Some(match state.average_run {
                None => took,
                Some(avg) => (avg * 7 + took) / 8,
            });
            drop(state);
            owner.wake.notify_all();
        });
        let events = job.events.clone();
        if let Err(e) = inner.engine.start_into(job.prepared, job.events, on_end) {
            let _ = events.send(Err(e));
        }
    }
}

/// Plugins reach the model through the scheduler at the plugin priority:
/// behind interactive requests, within the token budget of their call
/// (prompt and completion together).
impl crate::plugins::LlmBackend for Scheduler {
    fn complete<'a>(
        &'a self,
        namespace: &'a str,
        request: crate::plugins::LlmRequest,
        budget: u32,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<crate::plugins::Completion, crate::plugins::LlmError>,
                > + Send
                + 'a,
        >,
    > {
        Box::pin(async move { self.complete_for_plugin(namespace, request, budget).await })
    }
}

/// How long a plugin's model call may wait and run, at most.
const PLUGIN_CALL_LIMIT: Duration = Duration::from_secs(120);

impl Scheduler {
    async fn complete_for_plugin(
        &self,
        namespace: &str,
        request: crate::plugins::LlmRequest,
        budget: u32,
    ) -> Result<crate::plugins::Completion, crate::plugins::LlmError> {
        use crate::engine::{ChatMessage, Prompt, Role, SamplingParams};
        use crate::plugins::LlmError;
        let mut messages = Vec::with_capacity(request.messages.len());
        for m in request.messages {
            let role: Role = m
                .role
                .parse()
                .map_err(|e: crate::engine::UnknownRole| LlmError::Invalid(e.to_string()))?;
            messages.push(ChatMessage::new(role, m.content));
        }
        let prompt = Prompt::Chat {
            messages,
            tools: Vec::new(),
        };
        // Tokenising is CPU work proportional to the prompt: it runs on a
        // blocking thread, never on the async workers, and once: the tokens
        // counted against the budget are the ones generated from. (The
        // runtime has already refused prompts too long in bytes for the
        // budget.)
        let engine = self.engine().clone();
        let tokens = tokio::task::spawn_blocking(move || engine.tokenize(&prompt))
            .await
            .map_err(|e| LlmError::Unavailable(e.to_string()))?
            .map_err(|e| LlmError::Invalid(e.to_string()))?;
        let prompt_tokens = tokens.len() as u32;
        if prompt_tokens >= budget {
            return Err(LlmError::BudgetExceeded(format!(
                "the prompt is {prompt_tokens} tokens but only {budget} of this call's budget are left"
            )));
        }
        let mut params = SamplingParams {
            max_new_tokens: request.max_tokens.min(budget - prompt_tokens) as usize,
            ..SamplingParams::default()
        };
        if let Some(t) = request.temperature {
            params.temperature = t;
        }
        let generate = GenerateRequest {
            prompt: Prompt::Tokens(tokens),
            params,
            format: None,
            cancel: CancelToken::default(),
        };
        let deadline = Instant::now() + PLUGIN_CALL_LIMIT;
        let mut generation = self
            .submit(generate, Priority::Plugin, Some(deadline))
            .map_err(|e| match e {
                SchedulerError::Invalid(e) => LlmError::Invalid(e.to_string()),
                other => LlmError::Unavailable(other.to_string()),
            })?;
        tracing::debug!(
            plugin = namespace,
            prompt_tokens,
            "plugin model call queued"
        );
        while let Some(event) = generation.next().await {
            match event {
                Ok(Event::Text(_)) => {}
                Ok(Event::Done(done)) => {
                    return Ok(crate::plugins::Completion {
                        text: done.text,
                        prompt_tokens: done.usage.prompt_tokens as u32,
                        completion_tokens: done.usage.completion_tokens as u32,
                    });
                }
                Err(e) => return Err(LlmError::Unavailable(e.to_string())),
            }
        }
        Err(LlmError::Unavailable("the engine stopped".into()))
    }
}
