//! Server-sent events: the one writer every streamed answer goes through.

use super::Body_;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use serde_json::Value;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// The client went away: stop producing.
#[derive(Debug)]
pub(super) struct Gone;

/// The sending end of an event stream.
pub(super) struct Sse {
    tx: mpsc::Sender<Bytes>,
}

impl Sse {
    /// A stream and the `text/event-stream` response that carries it.
    pub(super) fn open() -> (Sse, Response<Body_>) {
        let (tx, rx) = mpsc::channel::<Bytes>(32);
        let response = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            // A proxy in front (nginx) passes events on as they come
            // instead of buffering the stream.
            .header("x-accel-buffering", "no")
            .body(BodyExt::boxed(ChannelBody(rx)))
            .expect("valid response");
        (Sse { tx }, response)
    }

    /// Sends one `data:` event.
    pub(super) async fn send(&self, value: &Value) -> Result<(), Gone> {
        self.tx
            .send(Bytes::from(format!("data: {value}\n\n")))
            .await
            .map_err(|_| Gone)
    }

    /// Sends one named event (`event: NAME`), which clients that only
    /// read unnamed `data:` events pass over.
    pub(super) async fn send_event(&self, name: &str, value: &Value) -> Result<(), Gone> {
        self.tx
            .send(Bytes::from(format!("event: {name}\ndata: {value}\n\n")))
            .await
            .map_err(|_| Gone)
    }

    /// Sends the `[DONE]` marker that ends an OpenAI stream.
    pub(super) async fn done(&self) {
        let _ = self.tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    }

    /// Resolves when the client has gone away.
    pub(super) async fn closed(&self) {
        self.tx.closed().await
    }
}

/// A response body fed from a channel: dropping it (the client went away)
/// closes the channel, which stops whatever feeds it.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
