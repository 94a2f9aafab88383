//! `POST /v1/chat/completions`: the request mapped to a turn of the
//! assistant, and the turn's events rendered as one JSON answer or as
//! server-sent chunks.

use super::body::{json_body, json_response};
use super::openai;
use super::sse::{Gone, Sse};
use super::{ApiError, AppState, Body_};
use crate::assistant::{Conversation, Outcome, TurnEvent};
use crate::engine::{ToolCall, Usage};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Answers a chat request.
pub(super) async fn chat(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    started: Instant,
    request_id: &str,
) -> Result<Response<Body_>, ApiError> {
    let body = json_body(state, req).await?;
    let request = openai::ChatRequest::parse(&body)?;
    if let Some(model) = &request.model
        && !model.is_empty()
        && model != &state.model_id
    {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "model `{model}` does not exist; this server serves `{}`",
                state.model_id
            ),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        return Err(e);
    }
    let stream = request.stream;
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let tool_events = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_tool_events);
    let mut turn = request.map(state.assistant.host_tools(), request_id)?;
    turn.deadline = Some(Instant::now() + state.options.request_timeout);
    let conversation = state.assistant.start(turn)?;
    let answer = Answer {
        id: format!("chatcmpl-{:016x}", rand::random::<u64>()),
        created: super::unix_now(),
        model: state.model_id.clone(),
    };
    if stream {
        let (sse, mut response) = Sse::open();
        response.extensions_mut().insert(super::Streaming);
        let state = state.clone();
        let work = async move {
            let mut metrics = Observed::new(&state, started, true);
            let shown = Shown {
                usage: include_usage,
                tool_events,
            };
            let ended = stream_turn(conversation, &answer, &sse, shown, &mut metrics).await;
            state.metrics.recent_request(
                "/v1/chat/completions",
                200,
                started.elapsed().as_secs_f64(),
            );
            // The request's line in the log, now that the stream is over.
            tracing::info!(
                route = "/v1/chat/completions",
                status = 200u16,
                elapsed_ms = started.elapsed().as_millis() as u64,
                prompt_tokens = metrics.facts.prompt_tokens,
                completion_tokens = metrics.facts.completion_tokens,
                plugin_calls = metrics.facts.plugin_calls,
                stream = if ended.is_ok() {
                    "complete"
                } else {
                    "client gone"
                },
                "answered"
            );
        };
        tokio::spawn(work.instrument(tracing::Span::current()));
        return Ok(response);
    }
    let mut metrics = Observed::new(state, started, false);
    let outcome = conversation.finish(|e| metrics.see(e)).await?;
    metrics.facts.prompt_tokens = outcome.usage.prompt_tokens as u32;
    metrics.facts.completion_tokens = outcome.usage.completion_tokens as u32;
    let facts = metrics.facts;
    let mut message = json!({"role": "assistant", "content": outcome.content});
    if !outcome.calls.is_empty() {
        message["tool_calls"] = Value::Array(answer.calls(&outcome.calls));
        if outcome.content.is_empty() {
            message["content"] = Value::Null;
        }
    }
    let mut response = json_response(
        StatusCode::OK,
        &json!({
            "id": answer.id, "object": "chat.completion", "created": answer.created, "model": answer.model,
            "choices": [{"index": 0, "message": message, "finish_reason": outcome.finish.as_str(), "logprobs": null}],
            "usage": usage(&outcome.usage),
        }),
    );
    response.extensions_mut().insert(facts);
    Ok(response)
}

/// What every chunk of one answer repeats.
struct Answer {
    id: String,
    created: u64,
    model: String,
}

impl Answer {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    }

    /// Calls in the API's shape (arguments as a JSON string), with ids
    /// unique to this answer.
    fn calls(&self, calls: &[ToolCall]) -> Vec<Value> {
        openai::tool_calls_json(calls, &self.id.replace("chatcmpl", "call"))
    }
}

/// What a stream includes beyond the answer, as the request asked.
#[derive(Debug, Clone, Copy)]
struct Shown {
    /// A last chunk with token counts.
    usage: bool,
    /// `hearth.tool` events for the host tools run during the answer.
    tool_events: bool,
}

/// The most of a tool's arguments or result a `hearth.tool` event carries:
/// a plugin may return as much as its memory holds, and the event is for
/// a person watching, not for the model (which gets the whole result).
const MAX_TOOL_EVENT_TEXT: usize = 64 << 10;

/// `text`, cut to [`MAX_TOOL_EVENT_TEXT`] bytes at a character boundary
/// with a note of its whole length when longer.
fn shown_text(text: &str) -> String {
    if text.len() <= MAX_TOOL_EVENT_TEXT {
        return text.to_string();
    }
    let mut end = MAX_TOOL_EVENT_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n… [cut here: {} bytes in all]",
        &text[..end],
        text.len()
    )
}

/// The `hearth.tool` event of a host tool call starting or ending.
fn tool_event(event: &TurnEvent) -> Option<Value> {
    match event {
        TurnEvent::ToolCall { call } => Some(json!({
            "phase": "call",
            "id": call.id,
            "name": call.name,
            "arguments": shown_text(&call.arguments.to_string()),
        })),
        TurnEvent::ToolResult { call, result, took } => {
            let elapsed_ms = took.as_secs_f64() * 1e3;
            Some(match result {
                Ok(result) => json!({
                    "phase": "result", "id": call.id, "name": call.name,
                    "ok": true, "result": shown_text(result), "elapsed_ms": elapsed_ms,
                }),
                Err(failure) => json!({
                    "phase": "result", "id": call.id, "name": call.name,
                    "ok": false, "error": failure.message, "outcome": failure.outcome,
                    "elapsed_ms": elapsed_ms,
                }),
            })
        }
        _ => None,
    }
}

/// Streams a turn: a role chunk, content deltas as the assistant releases
/// them (with `hearth.tool` events between them when asked), then tool
/// calls, the finish reason, usage if asked, `[DONE]`.
async fn stream_turn(
    mut conversation: Conversation,
    answer: &Answer,
    sse: &Sse,
    shown: Shown,
    metrics: &mut Observed<'_>,
) -> Result<(), Gone> {
    sse.send(&answer.chunk(json!({"role": "assistant", "content": ""}), None))
        .await?;
    loop {
        // Watch for the client going away even while nothing is being
        // sent (a queued request, a plugin call): dropping the
        // conversation stops the turn and frees its place in the queue.
        let event = tokio::select! {
            event = conversation.next() => event,
            () = sse.closed() => return Err(Gone),
        };
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                sse.send(&ApiError::from(e).body()).await?;
                sse.done().await;
                return Ok(());
            }
            None => return Ok(()),
        };
        metrics.see(&event);
        match event {
            TurnEvent::Text(text) => {
                sse.send(&answer.chunk(json!({ "content": text }), None))
                    .await?;
            }
            TurnEvent::Done(Outcome {
                calls,
                finish,
                usage: used,
                ..
            }) => {
                metrics.facts.prompt_tokens = used.prompt_tokens as u32;
                metrics.facts.completion_tokens = used.completion_tokens as u32;
                for call in answer.calls(&calls) {
                    sse.send(&answer.chunk(json!({ "tool_calls": [call] }), None))
                        .await?;
                }
                sse.send(&answer.chunk(json!({}), Some(finish.as_str())))
                    .await?;
                if shown.usage {
                    let mut last = answer.chunk(json!({}), None);
                    last["choices"] = json!([]);
                    last["usage"] = usage(&used);
                    sse.send(&last).await?;
                }
                sse.done().await;
                return Ok(());
            }
            TurnEvent::ToolCall { .. } | TurnEvent::ToolResult { .. } => {
                if shown.tool_events
                    && let Some(value) = tool_event(&event)
                {
                    sse.send_event("hearth.tool", &value).await?;
                }
            }
            TurnEvent::Generated { .. } => {}
        }
    }
}

/// Records a turn's events in the server's metrics.
struct Observed<'a> {
    state: &'a AppState,
    started: Instant,
    /// Time to first token is measured for streamed answers only.
    first_token: bool,
    /// For the request's line in the log.
    facts: super::RequestFacts,
}

impl<'a> Observed<'a> {
    fn new(state: &'a AppState, started: Instant, streamed: bool) -> Observed<'a> {
        Observed {
            state,
            started,
            first_token: streamed,
            facts: super::RequestFacts::default(),
        }
    }

    fn see(&mut self, event: &TurnEvent) {
        let metrics = &self.state.metrics;
        match event {
            TurnEvent::Text(_) if self.first_token => {
                self.first_token = false;
                metrics.time_to_first_token(self.started.elapsed().as_secs_f64());
            }
            TurnEvent::Generated {
                completion_tokens,
                decode_time,
            } => {
                let secs = decode_time.as_secs_f64();
                if *completion_tokens > 1 && secs > 0.0 {
                    metrics.tokens_per_second((completion_tokens - 1) as f64 / secs);
                }
            }
            TurnEvent::ToolResult { call, result, .. } => {
                let namespace = call.name.split('.').next().unwrap_or_default();
                let outcome = match result {
                    Ok(_) => "ok",
                    Err(f) => f.outcome,
                };
                metrics.plugin_call(namespace, outcome);
                self.facts.plugin_calls += 1;
            }
            _ => {}
        }
    }
}

fn usage(u: &Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.prompt_tokens + u.completion_tokens})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ToolCall;

    #[test]
    fn tool_events_carry_at_most_64_kib_of_a_result() {
        let call = ToolCall {
            id: "call_0".into(),
            name: "big.dump".into(),
            arguments: json!({}),
        };
        let result = format!("\"{}é\"", "x".repeat(MAX_TOOL_EVENT_TEXT - 2));
        let event = tool_event(&TurnEvent::ToolResult {
            call,
            result: Ok(result.clone()),
            took: std::time::Duration::from_millis(3),
        })
        .unwrap();
        let shown = event["result"].as_str().unwrap();
        assert!(shown.len() < MAX_TOOL_EVENT_TEXT + 64, "{}", shown.len());
        assert!(
            shown.ends_with(&format!("[cut here: {} bytes in all]", result.len())),
            "{}",
            &shown[shown.len() - 60..]
        );
        // Short texts go as they are.
        assert_eq!(shown_text("{\"value\":42}"), "{\"value\":42}");
    }
}
