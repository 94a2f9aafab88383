//! Errors in the OpenAI shape, and what every lower layer's error maps to.

use super::Body_;
use super::body::json_response;
use crate::assistant::AssistantError;
use crate::engine::EngineError;
use crate::scheduler::SchedulerError;
use http::{Response, StatusCode, header};
use serde_json::{Value, json};

/// An error in the OpenAI shape.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) kind: &'static str,
    pub(super) message: String,
    pub(super) param: Option<String>,
    pub(super) code: Option<&'static str>,
    pub(super) retry_after: Option<u64>,
    /// A field beside `error` with details for the caller to act on.
    pub(super) extra: Option<Box<(&'static str, Value)>>,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
            extra: None,
        }
    }

    /// A 400 naming the parameter at fault.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = param.map(str::to_string);
        e
    }

    /// The `{"error": {...}}` object: the body of an error response and
    /// the payload of an error event in a stream.
    pub(super) fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    pub(super) fn response(&self) -> Response<Body_> {
        let mut body = self.body();
        if let Some(extra) = &self.extra {
            let (key, value) = &**extra;
            body[*key] = value.clone();
        }
        let mut r = json_response(self.status, &body);
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        r
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::ContextOverflow { .. } | EngineError::PromptTooLong { .. } => {
                let mut a = ApiError::invalid(e.to_string(), Some("messages"));
                a.code = Some("context_length_exceeded");
                a
            }
            EngineError::InvalidParameter { name, .. } => {
                ApiError::invalid(e.to_string(), Some(name))
            }
            EngineError::Constraint(_) | EngineError::Template(_) | EngineError::Tokenizer(_) => {
                ApiError::invalid(e.to_string(), None)
            }
            EngineError::QueueDeadline { .. } => {
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    e.to_string(),
                );
                a.retry_after = Some(5);
                a
            }
            EngineError::ShuttingDown | EngineError::Stopped => {
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    e.to_string(),
                );
                a.retry_after = Some(5);
                a
            }
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                e.to_string(),
            ),
        }
    }
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::Invalid(e) => e.into(),
            SchedulerError::QueueFull { retry_after, .. } => {
                // The scheduler's own message says how full and how long.
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    e.to_string(),
                );
                a.code = Some("queue_full");
                a.retry_after = Some(retry_after.as_secs().max(1));
                a
            }
            SchedulerError::ShuttingDown => EngineError::ShuttingDown.into(),
        }
    }
}

impl From<AssistantError> for ApiError {
    fn from(e: AssistantError) -> Self {
        match e {
            AssistantError::Refused { .. } => {
                let mut a = ApiError::invalid(e.to_string(), Some("messages"));
                a.code = Some("refused_by_plugin");
                a
            }
            AssistantError::UnknownTool(_) | AssistantError::NoTools => {
                ApiError::invalid(e.to_string(), Some("tool_choice"))
            }
            AssistantError::Scheduler(e) => e.into(),
            AssistantError::Engine(e) => e.into(),
        }
    }
}
