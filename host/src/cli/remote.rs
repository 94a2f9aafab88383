//! `hearth run --url` / `hearth chat --url`: the same commands against a
//! running `hearth serve` (or any OpenAI-compatible server over plain
//! HTTP), streaming.

use super::generate::SamplingArgs;
use crate::engine::{ChatMessage, OutputFormat};
use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// Where the server is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `host:port`.
    authority: String,
    /// Path prefix, e.g. `/v1`.
    prefix: String,
    key: Option<String>,
}

impl Remote {
    /// Parses `http://host:port[/v1]`.
    pub fn new(url: &str, key: Option<String>) -> anyhow::Result<Remote> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--url must start with http:// (got `{url}`)");
        };
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() {
            bail!("--url `{url}` has no host");
        }
        let path = path.trim_end_matches('/');
        let prefix = if path.is_empty() {
            "/v1".to_string()
        } else {
            format!("/{path}")
        };
        Ok(Remote {
            authority: authority.to_string(),
            prefix,
            key,
        })
    }

    /// Streams one assistant turn; `out` gets each piece. Returns the text.
    pub async fn answer(
        &self,
        sampling: &SamplingArgs,
        messages: &[ChatMessage],
        out: &mut (dyn FnMut(&str) + Send),
    ) -> anyhow::Result<String> {
        let mut body = json!({
            "messages": messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
            "stream": true,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            // The API's additive penalty, mapped back to the repeat penalty by hearth.
            "frequency_penalty": ((sampling.repeat_penalty - 1.0) * 2.0).clamp(-2.0, 2.0),
        });
        if let Some(seed) = sampling.seed {
            body["seed"] = seed.into();
        }
        if !sampling.stop.is_empty() {
            body["stop"] = json!(sampling.stop);
        }
        match sampling.format()? {
            None => {}
            Some(OutputFormat::JsonObject) => {
                body["response_format"] = json!({"type": "json_object"})
            }
            Some(OutputFormat::JsonSchema(schema)) => {
                body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
            }
        }
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("connecting to {}", self.authority))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut request = http::Request::post(format!("{}/chat/completions", self.prefix))
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.key {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body.to_string())))?)
            .await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let message = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("the server answered {status}: {message}");
        }
        let mut pending = String::new();
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                for line in event.lines() {
                    let Some(data) = line.strip_prefix("data: ") else {
                        continue;
                    };
                    if data == "[DONE]" {
                        return Ok(text);
                    }
                    let v: Value =
                        serde_json::from_str(data).context("a stream event is not JSON")?;
                    if let Some(message) = v["error"]["message"].as_str() {
                        bail!("the server failed: {message}");
                    }
                    let delta = &v["choices"][0]["delta"];
                    if let Some(piece) = delta["content"].as_str() {
                        out(piece);
                        text.push_str(piece);
                    }
                    for call in delta["tool_calls"].as_array().into_iter().flatten() {
                        out(&format!(
                            "[tool call {}({})]",
                            call["function"]["name"].as_str().unwrap_or("?"),
                            call["function"]["arguments"].as_str().unwrap_or("")
                        ));
                    }
                }
            }
        }
        bail!("the server closed the stream before [DONE]")
    }
}
