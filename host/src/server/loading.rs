//! The port while the model is being pulled and loaded.
//!
//! `hearth serve` binds its address before it loads the model, so that a
//! probe, a load balancer and a client each learn the truth instead of a
//! refused connection: `/healthz` answers 200 (the process is alive),
//! `/readyz` 503 with `"status": "loading"` (no traffic yet), `/metrics`
//! the load under way (`hearth_model_load_attempts_total` 1,
//! `hearth_model_loaded` 0), and every other route 503 with `Retry-After`.
//! Once the model is in, the same listener goes to [`super::serve`]:
//! connections waiting in its backlog are answered by the real service.

use super::body::json_response;
use super::metrics::{Metrics, Scrape};
use super::routes::Route;
use super::{ApiError, Body_};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The loading-time service on a listener; see the module documentation.
#[derive(Debug)]
pub struct Loading {
    listener: Arc<tokio::net::TcpListener>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What a loading-time request is answered from.
#[derive(Debug)]
struct Shared {
    metrics: Metrics,
    started: Instant,
    model: String,
}

impl Loading {
    /// Starts answering on `listener`; `model` names what is loading (a
    /// path, or the default model) for `/readyz`.
    pub fn start(
        listener: tokio::net::TcpListener,
        model: String,
        header_timeout: Duration,
    ) -> Loading {
        let metrics = Metrics::default();
        metrics.model_load_started();
        let shared = Arc::new(Shared {
            metrics,
            started: Instant::now(),
            model,
        });
        let listener = Arc::new(listener);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let accepting = listener.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            let mut stopping = stopped.clone();
            loop {
                let stream = tokio::select! {
                    accepted = accepting.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            tracing::warn!("accept: {e}");
                            continue;
                        }
                    },
                    _ = stopping.changed() => break,
                };
                let shared = shared.clone();
                // When the load ends, idle connections close at once and
                // one answering a request after its answer: the client's
                // next connection reaches the loaded service.
                let stopped = stopped.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        std::future::ready(Ok::<_, Infallible>(answer(&shared, &req)))
                    });
                    if let Err(e) =
                        super::serve_connection(stream, service, header_timeout, stopped).await
                    {
                        tracing::debug!("connection while loading: {e}");
                    }
                });
            }
            while connections.join_next().await.is_some() {}
        });
        Loading {
            listener,
            stop,
            task,
        }
    }

    /// The address being answered on.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Stops answering (the model is in, or failed to load) and hands the
    /// listener back once the loading-time connections have closed.
    pub async fn finish(self) -> tokio::net::TcpListener {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        Arc::try_unwrap(self.listener).expect("the accept loop has ended")
    }
}

/// The answer to one request while the model loads.
fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Body_> {
    let loading_for = shared.started.elapsed().as_secs();
    let mut response = match Route::parse(req.uri().path()) {
        Ok(Route::Healthz) => json_response(StatusCode::OK, &json!({"status": "ok"})),
        Ok(Route::Readyz) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "loading", "model": shared.model, "loading_s": loading_for}),
        ),
        // The page itself loads, and says the model is loading (from the
        // API's 503s) until it is in.
        Ok(Route::Page) => super::web::answer(None, req.method()).unwrap_or_else(|e| e.response()),
        Ok(Route::Asset { file }) => {
            super::web::answer(Some(&file), req.method()).unwrap_or_else(|e| e.response())
        }
        Ok(Route::Metrics) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(shared.metrics.render(&Scrape::default()))).boxed())
            .expect("valid response"),
        // Unknown paths keep their 404, so a typo is not mistaken for a
        // server that is still starting.
        Err(e) => e.response(),
        Ok(_) => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!(
                    "the model is still loading ({loading_for} s so far); retry shortly, or wait for /readyz to answer 200"
                ),
            );
            e.code = Some("model_loading");
            e.retry_after = Some(5);
            e.response()
        }
    };
    // The client's next request should open a new connection, which after
    // the load reaches the real service.
    response
        .headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}
