//! The assistant: one conversation loop for the HTTP API, `hearth run` and
//! `hearth chat`.
//!
//! A [`Turn`] is one request for an answer: the conversation so far, the
//! tools the client offers, the plugins' tools, how the model must answer.
//! [`Assistant::start`] runs it in its own task and hands back a
//! [`Conversation`]: a stream of [`TurnEvent`]s (answer text as it is
//! generated, calls to the host's tools as they run, the end). Front ends only render
//! that stream: the server as SSE or one JSON body, the CLI on a terminal.
//!
//! The loop, in order:
//! 1. before-prompt observers see (and may rewrite or refuse) the user's
//!    last message;
//! 2. the model generates through the [`Scheduler`] (interactive priority);
//! 3. its output is read for tool calls — only calls to tools actually
//!    offered count: a call to any other name is never run and never reaches
//!    the client (see [`Step`]);
//! 4. calls to the host's tools run — a plugin's in the sandbox (the
//!    runtime checks their arguments against the tool's schema), an MCP
//!    server's on that server (the same check first, see
//!    [`crate::mcp::sources`]) — and their results, or errors, go back to
//!    the model for the next step, up to [`MAX_STEPS`] generations;
//!    calls to the client's tools end the turn, for the client to run;
//! 5. after-response observers see (and may rewrite or withhold) the answer.
//!
//! `tool_choice` (see [`ToolChoice`]) constrains only the first step's
//! output, with a JSON Schema of the allowed calls. With client tools,
//! `Required` allows only the client's tools: the client asked for a call it
//! will run. With no client tools, `Required` forces a call to one of the
//! host's tools; the steps after it answer freely. In JSON mode (a `format` without
//! a forced call) the model's JSON is the answer, never read as a call.

use crate::engine::{
    ChatMessage, EngineError, Event, FinishReason, GenerateRequest, OutputFormat, Prompt, Role,
    SamplingParams, ToolCall, ToolSpec, Usage,
};
use crate::plugins::{CallScope, EventKind, InvokeError, Runtime};
use crate::scheduler::{Priority, Scheduler, SchedulerError};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;

mod step;

use step::may_be_call;
pub use step::{Read, Step};

/// Most generations one turn may run (each round of plugin calls adds one).
pub const MAX_STEPS: usize = 5;

/// Which calls the model may or must make.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// The model decides (OpenAI `"auto"`).
    #[default]
    Auto,
    /// No tools at all: none are offered (OpenAI `"none"`).
    None,
    /// The first step must call a tool: one of the client's if it offered
    /// any, else one of the plugins' (OpenAI `"required"`).
    Required,
    /// The first step must call this tool (OpenAI `{"type":"function",…}`).
    Function(String),
}

/// One request for an answer.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The conversation so far; the last user message is what is answered.
    pub messages: Vec<ChatMessage>,
    /// Tools the client offers; calls to them end the turn.
    pub client_tools: Vec<ToolSpec>,
    /// Tools the host runs: the active plugins' and the MCP servers', by
    /// qualified name (a snapshot from [`Assistant::host_tools`]); calls to
    /// them run here.
    pub host_tools: Vec<ToolSpec>,
    /// Which calls the model may or must make.
    pub choice: ToolChoice,
    /// Sampling.
    pub params: SamplingParams,
    /// A format the answer must follow (JSON mode or a schema).
    pub format: Option<OutputFormat>,
    /// When the whole turn must be done.
    pub deadline: Option<Instant>,
    /// Names this turn in logs and in the plugins' call scopes.
    pub request_id: String,
}

impl Turn {
    /// A turn answering `messages` with default sampling, `host_tools`
    /// offered and no client tools.
    pub fn new(messages: Vec<ChatMessage>, host_tools: Vec<ToolSpec>) -> Turn {
        Turn {
            messages,
            client_tools: Vec::new(),
            host_tools,
            choice: ToolChoice::Auto,
            params: SamplingParams::default(),
            format: None,
            deadline: None,
            request_id: format!("turn-{:08x}", rand::random::<u32>()),
        }
    }
}

/// Why a turn ended (the API's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model finished its answer.
    Stop,
    /// The token limit or the step limit was reached.
    Length,
    /// The answer is calls to the client's tools.
    ToolCalls,
    /// An after-response observer withheld the answer.
    ContentFilter,
}

impl Finish {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::ContentFilter => "content_filter",
        }
    }
}

/// How a finished turn ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The answer's text (all of it, whether or not it was also streamed).
    pub content: String,
    /// Calls to the client's tools, for it to run.
    pub calls: Vec<ToolCall>,
    /// Why the turn ended.
    pub finish: Finish,
    /// Tokens over every step.
    pub usage: Usage,
}

/// A call to a host tool that failed: what the model is told.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolFailure {
    /// The error, for the model and the person watching.
    pub message: String,
    /// `timeout`, `trap` or `error` (for metrics).
    pub outcome: &'static str,
}

/// What a running turn reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    /// More of the answer. Held back while it may still turn out to be a
    /// tool call, or while observers may rewrite the answer; the pieces
    /// together are [`Outcome::content`].
    Text(String),
    /// A host tool (a plugin's or an MCP server's) is about to run.
    ToolCall {
        /// The call as the model made it.
        call: ToolCall,
    },
    /// A host tool ran: its JSON result, or why it failed.
    ToolResult {
        /// The call.
        call: ToolCall,
        /// The result (JSON text) or the failure.
        result: Result<String, ToolFailure>,
        /// How long it took.
        took: Duration,
    },
    /// One generation ended (for speed metrics).
    Generated {
        /// Tokens it generated.
        completion_tokens: usize,
        /// Time from its first token to its last.
        decode_time: Duration,
    },
    /// The turn is over; nothing follows.
    Done(Outcome),
}

/// Why a turn could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum AssistantError {
    /// A before-prompt observer refused the request.
    #[error("plugin `{plugin}` refused the request: {reason}")]
    Refused {
        /// The plugin.
        plugin: String,
        /// Its reason.
        reason: String,
    },
    /// `tool_choice` names a tool nobody offers.
    #[error("`tool_choice` names `{0}`, which is not an offered tool")]
    UnknownTool(String),
    /// `tool_choice` requires a call but no tools are offered.
    #[error("`tool_choice` is `required` but no tools are offered")]
    NoTools,
    /// The queue refused the generation.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The model failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The conversation loop over a scheduler and, optionally, plugins. Cheap
/// to clone.
#[derive(Clone)]
pub struct Assistant {
    scheduler: Scheduler,
    plugins: Option<Runtime>,
    mcp: crate::mcp::McpSources,
}

impl std::fmt::Debug for Assistant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assistant")
            .field("plugins", &self.plugins.is_some())
            .field("mcp", &self.mcp)
            .finish()
    }
}

/// The receiving end of a running turn. Dropping it stops the turn: the
/// generation in progress is cancelled and no further step starts.
#[derive(Debug)]
pub struct Conversation {
    events: mpsc::Receiver<Result<TurnEvent, AssistantError>>,
}

impl Conversation {
    /// The next event; `None` after [`TurnEvent::Done`] or an error.
    pub async fn next(&mut self) -> Option<Result<TurnEvent, AssistantError>> {
        self.events.recv().await
    }

    /// Waits for the end, passing every event to `on_event` on the way.
    pub async fn finish(
        mut self,
        mut on_event: impl FnMut(&TurnEvent),
    ) -> Result<Outcome, AssistantError> {
        while let Some(event) = self.next().await {
            let event = event?;
            on_event(&event);
            if let TurnEvent::Done(outcome) = event {
                return Ok(outcome);
            }
        }
        Err(EngineError::Stopped.into())
    }
}

/// The client went away: the turn stops quietly.
struct Gone;

/// Where a turn's events go.
struct Sink(mpsc::Sender<Result<TurnEvent, AssistantError>>);

impl Sink {
    async fn send(&self, event: TurnEvent) -> Result<(), Gone> {
        self.0.send(Ok(event)).await.map_err(|_| Gone)
    }
}

impl Assistant {
    /// An assistant generating through `scheduler`, running tool calls and
    /// hooks in `plugins` (`None`: no plugins).
    pub fn new(scheduler: Scheduler, plugins: Option<Runtime>) -> Assistant {
        Assistant {
            scheduler,
            plugins,
            mcp: Default::default(),
        }
    }

    /// The same assistant, offering the tools of the MCP servers `mcp`
    /// beside the plugins'.
    pub fn with_mcp(mut self, mcp: crate::mcp::McpSources) -> Assistant {
        self.mcp = mcp;
        self
    }

    /// The scheduler behind it.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The plugin runtime, if plugins are on.
    pub fn plugins(&self) -> Option<&Runtime> {
        self.plugins.as_ref()
    }

    /// The tools the host runs, by qualified name, sorted: the active
    /// plugins' and the MCP servers'. A plugin namespace that is also an
    /// MCP prefix keeps the plugin's tools; the server's are not offered.
    pub fn host_tools(&self) -> Vec<ToolSpec> {
        let mut tools: Vec<ToolSpec> = match &self.plugins {
            Some(runtime) => runtime
                .active_plugins()
                .iter()
                .flat_map(|p| {
                    p.tools.iter().map(|t| ToolSpec {
                        name: format!("{}.{}", p.manifest.namespace, t.name),
                        description: t.description.clone(),
                        parameters: t.schema.clone(),
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        let plugin_namespaces: std::collections::BTreeSet<String> = tools
            .iter()
            .filter_map(|t| t.name.split_once('.').map(|(ns, _)| ns.to_string()))
            .collect();
        tools.extend(self.mcp.tools().into_iter().filter(|t| {
            let ns = t.name.split_once('.').map_or("", |(ns, _)| ns);
            !plugin_namespaces.contains(ns)
        }));
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        tools
    }

    /// Checks `turn` and starts it in its own task.
    pub fn start(&self, turn: Turn) -> Result<Conversation, AssistantError> {
        check_choice(&turn)?;
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        let span = tracing::info_span!("turn", request = %turn.request_id);
        tokio::spawn(
            async move {
                let sink = Sink(tx);
                match this.converse(turn, &sink).await {
                    Ok(Ok(())) | Err(Gone) => {}
                    Ok(Err(e)) => {
                        let _ = sink.0.send(Err(e)).await;
                    }
                }
            }
            .instrument(span),
        );
        Ok(Conversation { events: rx })
    }

    /// Whether an active plugin observes `kind`.
    fn observed(&self, kind: EventKind) -> bool {
        self.plugins
            .as_ref()
            .is_some_and(|r| r.active_plugins().iter().any(|p| p.events.contains(&kind)))
    }

    async fn converse(&self, turn: Turn, sink: &Sink) -> Result<Result<(), AssistantError>, Gone> {
        let Turn {
            mut messages,
            mut client_tools,
            mut host_tools,
            choice,
            params,
            format,
            deadline,
            request_id,
        } = turn;
        if choice == ToolChoice::None {
            host_tools.clear();
        }
        if choice == ToolChoice::None {
            client_tools.clear();
        }
        if let Err(e) = self.before_prompt(&mut messages, &request_id).await {
            return Ok(Err(e));
        }
        // Answer rewriting by after-response observers needs the whole
        // answer before any of it is sent.
        let hold_all = self.observed(EventKind::AfterResponse);
        let mut usage = Usage::default();
        for step in 0..MAX_STEPS {
            let plan = Step::plan(step, &choice, &client_tools, &host_tools, format.as_ref());
            // Tools are described to the model only when a call can come of
            // it: not in JSON mode, where the JSON is the answer.
            let offered: Vec<ToolSpec> = if plan.forced || plan.calls_allowed {
                client_tools.iter().chain(&host_tools).cloned().collect()
            } else {
                Vec::new()
            };
            let request = GenerateRequest {
                prompt: Prompt::Chat {
                    messages: messages.clone(),
                    tools: offered,
                },
                params: params.clone(),
                format: plan.format.clone(),
                cancel: Default::default(),
            };
            let mut generation = match self.submit(request, deadline).await {
                Ok(g) => g,
                Err(e) => return Ok(Err(e)),
            };
            // Text goes out as it comes unless it may be a call or the
            // whole answer is held.
            let live = !hold_all && !plan.forced;
            let mut held = String::new();
            let mut streaming = false;
            let done = loop {
                let event = tokio::select! {
                    event = generation.next() => event,
                    () = sink.0.closed() => return Err(Gone),
                };
                match event {
                    Some(Ok(Event::Text(piece))) => {
                        if !live {
                            continue;
                        }
                        if streaming {
                            sink.send(TurnEvent::Text(piece)).await?;
                            continue;
                        }
                        held.push_str(&piece);
                        if plan.calls_allowed && may_be_call(&held) {
                            continue;
                        }
                        streaming = true;
                        sink.send(TurnEvent::Text(std::mem::take(&mut held)))
                            .await?;
                    }
                    Some(Ok(Event::Done(done))) => break done,
                    Some(Err(e)) => return Ok(Err(e.into())),
                    None => return Ok(Err(EngineError::Stopped.into())),
                }
            };
            sink.send(TurnEvent::Generated {
                completion_tokens: done.usage.completion_tokens,
                decode_time: done.decode_time,
            })
            .await?;
            usage.prompt_tokens += done.usage.prompt_tokens;
            usage.completion_tokens += done.usage.completion_tokens;
            let finish = match done.finish_reason {
                FinishReason::Length => Finish::Length,
                FinishReason::Stop | FinishReason::Cancelled => Finish::Stop,
            };
            if streaming {
                // Plain text went out already: that was the answer.
                let outcome = Outcome {
                    content: done.text,
                    calls: Vec::new(),
                    finish,
                    usage,
                };
                return self.end(outcome, true, &request_id, sink).await;
            }
            let read = plan.read(&done.text, &client_tools, &host_tools);
            for call in &read.unknown {
                tracing::info!(
                    tool = call.name,
                    "the model called a tool nobody offered; not run"
                );
            }
            let last = step + 1 == MAX_STEPS;
            if !read.client.is_empty() || read.host.is_empty() || last {
                // Plugin calls beside client calls are dropped: the client
                // would never see their results. The model can call them
                // again when the client answers.
                let outcome = Outcome {
                    content: read.content,
                    finish: if !read.client.is_empty() {
                        Finish::ToolCalls
                    } else if !read.host.is_empty() {
                        Finish::Length
                    } else {
                        finish
                    },
                    calls: read.client,
                    usage,
                };
                return self.end(outcome, false, &request_id, sink).await;
            }
            let mut assistant = ChatMessage::new(Role::Assistant, read.content);
            assistant.tool_calls = read.host.iter().chain(&read.unknown).cloned().collect();
            messages.push(assistant);
            for (i, call) in read.host.into_iter().enumerate() {
                sink.send(TurnEvent::ToolCall { call: call.clone() })
                    .await?;
                let started = Instant::now();
                // A client that goes away stops the call too: dropping it
                // stops the plugin's instance and discards its writes.
                let call_id = format!("{request_id}-{step}-{i}");
                let result = tokio::select! {
                    result = self.run_tool(&call, &call_id) => result,
                    () = sink.0.closed() => return Err(Gone),
                };
                let content = match &result {
                    Ok(json) => json.clone(),
                    // The model sees the failure and can answer anyway.
                    Err(f) => json!({"error": f.message}).to_string(),
                };
                messages.push(tool_reply(&call, content));
                sink.send(TurnEvent::ToolResult {
                    call,
                    result,
                    took: started.elapsed(),
                })
                .await?;
            }
            for call in read.unknown {
                let error = format!("there is no tool named `{}`", call.name);
                messages.push(tool_reply(&call, json!({ "error": error }).to_string()));
            }
        }
        unreachable!("the last step ends the turn")
    }

    /// Queues one generation, preparing it (template, tokens, constraint)
    /// on a blocking thread: that work grows with the conversation.
    async fn submit(
        &self,
        request: GenerateRequest,
        deadline: Option<Instant>,
    ) -> Result<crate::engine::Generation, AssistantError> {
        Ok(self
            .scheduler
            .submit_async(request, Priority::Interactive, deadline)
            .await?)
    }

    /// Observers see the user's last message (a JSON string), and may
    /// rewrite or refuse it.
    async fn before_prompt(
        &self,
        messages: &mut [ChatMessage],
        request_id: &str,
    ) -> Result<(), AssistantError> {
        let Some(runtime) = &self.plugins else {
            return Ok(());
        };
        let Some(last) = messages.iter_mut().rev().find(|m| m.role == Role::User) else {
            return Ok(());
        };
        if !self.observed(EventKind::BeforePrompt) {
            return Ok(());
        }
        let payload = Value::String(last.content.clone()).to_string();
        let scope = CallScope::new(format!("{request_id}-before"));
        let d = runtime
            .dispatch(EventKind::BeforePrompt, &payload, scope)
            .await;
        if let Some((plugin, reason)) = d.vetoed {
            return Err(AssistantError::Refused { plugin, reason });
        }
        match serde_json::from_str::<Value>(&d.payload) {
            Ok(Value::String(text)) => last.content = text,
            _ => tracing::warn!("a before-prompt hook returned no JSON string; ignored"),
        }
        Ok(())
    }

    /// Ends the turn. An answer not `streamed` yet goes to after-response
    /// observers first, then out as one piece of text.
    async fn end(
        &self,
        mut outcome: Outcome,
        streamed: bool,
        request_id: &str,
        sink: &Sink,
    ) -> Result<Result<(), AssistantError>, Gone> {
        if !streamed {
            self.after_response(&mut outcome, request_id).await;
        }
        if !streamed && !outcome.content.is_empty() {
            sink.send(TurnEvent::Text(outcome.content.clone())).await?;
        }
        sink.send(TurnEvent::Done(outcome)).await?;
        Ok(Ok(()))
    }

    /// Observers see the answer and may rewrite it or withhold it.
    async fn after_response(&self, outcome: &mut Outcome, request_id: &str) {
        let Some(runtime) = &self.plugins else {
            return;
        };
        if !self.observed(EventKind::AfterResponse) {
            return;
        }
        let payload = Value::String(outcome.content.clone()).to_string();
        let scope = CallScope::new(format!("{request_id}-after"));
        let d = runtime
            .dispatch(EventKind::AfterResponse, &payload, scope)
            .await;
        if let Some((plugin, reason)) = d.vetoed {
            tracing::info!(plugin, reason, "answer withheld by a plugin");
            outcome.content.clear();
            outcome.calls.clear();
            outcome.finish = Finish::ContentFilter;
        } else if let Ok(Value::String(text)) = serde_json::from_str::<Value>(&d.payload) {
            outcome.content = text;
        }
    }

    async fn run_tool(&self, call: &ToolCall, request_id: &str) -> Result<String, ToolFailure> {
        let plugin_namespace = |runtime: &Runtime| {
            let ns = call.name.split_once('.').map_or("", |(ns, _)| ns);
            runtime
                .active_plugins()
                .iter()
                .any(|p| p.manifest.namespace.as_str() == ns)
        };
        let runtime = match &self.plugins {
            Some(runtime) if plugin_namespace(runtime) || !self.mcp.owns(&call.name) => runtime,
            _ => {
                let result = self.mcp.call(&call.name, &call.arguments).await;
                tracing::info!(tool = call.name, ok = result.is_ok(), "MCP tool call");
                return result.map_err(|e| ToolFailure {
                    outcome: e.outcome(),
                    message: e.to_string(),
                });
            }
        };
        let scope = CallScope::new(request_id);
        let result = runtime
            .invoke_qualified(&call.name, &call.arguments.to_string(), scope)
            .await;
        tracing::info!(tool = call.name, ok = result.is_ok(), "plugin tool call");
        result.map_err(|e| ToolFailure {
            outcome: failure_outcome(&e),
            message: e.to_string(),
        })
    }
}

/// `timeout`, `trap` or `error`: how a failed plugin call is counted.
pub fn failure_outcome(e: &InvokeError) -> &'static str {
    use crate::plugins::ErrorKind;
    match e.kind() {
        ErrorKind::Timeout => "timeout",
        ErrorKind::Trap
        | ErrorKind::MemoryLimit
        | ErrorKind::StackOverflow
        | ErrorKind::OutputTooLarge => "trap",
        _ => "error",
    }
}

fn tool_reply(call: &ToolCall, content: String) -> ChatMessage {
    let mut reply = ChatMessage::new(Role::Tool, content);
    reply.tool_call_id = Some(call.id.clone());
    reply.name = Some(call.name.clone());
    reply
}

/// Refuses a `tool_choice` that cannot be met, before anything runs.
fn check_choice(turn: &Turn) -> Result<(), AssistantError> {
    let offered = || turn.client_tools.iter().chain(&turn.host_tools);
    match &turn.choice {
        ToolChoice::Required if offered().next().is_none() => Err(AssistantError::NoTools),
        ToolChoice::Function(name) if !offered().any(|t| &t.name == name) => {
            Err(AssistantError::UnknownTool(name.clone()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
