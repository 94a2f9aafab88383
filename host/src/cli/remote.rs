//! `hearth run --url` / `hearth chat --url`: the same commands against a
//! running `hearth serve` (or any OpenAI-compatible server over HTTP or
//! HTTPS), streaming.

use super::generate::SamplingArgs;
use crate::engine::{ChatMessage, OutputFormat};
use crate::http_client::{Client, Options};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::time::Duration;

/// Most bytes of one streamed answer: far more than any context window
/// of tokens in SSE framing, and a bound on a server that never stops.
const MAX_STREAM_BYTES: u64 = 64 << 20;
/// Most bytes of an error answer read for its message.
const MAX_ERROR_BYTES: u64 = 1 << 20;

/// Where the server is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `http://` or `https://`.
    scheme: &'static str,
    /// `host:port`.
    authority: String,
    /// Path prefix, e.g. `/v1`.
    prefix: String,
    key: Option<String>,
}

impl Remote {
    /// Parses `http(s)://host:port[/v1]`.
    pub fn new(url: &str, key: Option<String>) -> anyhow::Result<Remote> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
            ("http://", rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            ("https://", rest)
        } else {
            bail!("--url must start with http:// or https:// (got `{url}`)");
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
            scheme,
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
        // Redirects are not followed: a redirected POST would come back
        // as a GET without its body (301/302/303), and a hearth server
        // never redirects, so a 3xx is shown as the answer it is. There is
        // no overall limit, since an answer streams for as long as the
        // model generates; five minutes of silence (the server's own
        // default request timeout) ends it.
        let client = Client::new(Options {
            connect_timeout: Duration::from_secs(10),
            total_timeout: None,
            idle_timeout: Some(Duration::from_secs(300)),
            follow_redirects: false,
        })?;
        let url = format!(
            "{}{}{}/chat/completions",
            self.scheme, self.authority, self.prefix
        );
        let mut request = client
            .request(reqwest::Method::POST, &url)?
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = client.send(request).await?;
        let status = response.status();
        if !status.is_success() {
            let message = match client.body("POST", response, MAX_ERROR_BYTES).bytes().await {
                Ok(bytes) => {
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    v["error"]["message"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned())
                }
                Err(e) => e.to_string(),
            };
            bail!("the server answered {status}: {message}");
        }
        let mut body = client.body("POST", response, MAX_STREAM_BYTES);
        // Bytes, not text, until an event is complete: a chunk may end
        // inside a multi-byte character. `scanned` is how much of
        // `pending` is known to hold no event end, so a server that never
        // ends an event costs one pass over its bytes, not one per chunk.
        let mut pending: Vec<u8> = Vec::new();
        let mut scanned = 0;
        let mut text = String::new();
        while let Some(data) = body.chunk().await? {
            pending.extend_from_slice(&data);
            while let Some(end) = pending[scanned..]
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|at| scanned + at)
            {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                scanned = 0;
                for line in String::from_utf8_lossy(&event).lines() {
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
            scanned = pending.len().saturating_sub(1);
        }
        bail!("the server closed the stream before [DONE]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::{Read, Write};

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        sampling: SamplingArgs,
    }

    /// A loopback server that answers one request with `chunks`, written
    /// apart, and hands back the request it read.
    fn serve(chunks: Vec<Vec<u8>>) -> (std::net::SocketAddr, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the Content-Length bytes of the body.
            let body_len = loop {
                let n = stream.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_string)
                        })
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    break head_end + 4 + length;
                }
            };
            while request.len() < body_len {
                let n = stream.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            for chunk in chunks {
                stream.write_all(&chunk).unwrap();
                stream.flush().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            String::from_utf8(request).unwrap()
        });
        (addr, server)
    }

    #[tokio::test]
    async fn streams_an_answer_split_anywhere() {
        let events = "data: {\"choices\":[{\"delta\":{\"content\":\"Caf\u{e9} \"}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"ok\"}}]}\n\ndata: [DONE]\n\n";
        let bytes = events.as_bytes();
        // Split inside the two-byte `é` and between the two newlines.
        let cut_char = events.find('\u{e9}').unwrap() + 1;
        let cut_end = events.find("\n\n").unwrap() + 1;
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
        let (addr, server) = serve(vec![
            head.to_vec(),
            bytes[..cut_char].to_vec(),
            bytes[cut_char..cut_end].to_vec(),
            bytes[cut_end..].to_vec(),
        ]);
        let remote = Remote::new(&format!("http://{addr}"), Some("k3y".into())).unwrap();
        let sampling = Flags::parse_from(["test"]).sampling;
        let mut pieces = Vec::new();
        let text = remote
            .answer(
                &sampling,
                &[ChatMessage::new(crate::engine::Role::User, "Hi")],
                &mut |p| pieces.push(p.to_string()),
            )
            .await
            .unwrap();
        assert_eq!(text, "Caf\u{e9} ok");
        assert_eq!(pieces, ["Caf\u{e9} ", "ok"]);
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("authorization: Bearer k3y\r\n"),
            "{request}"
        );
        assert!(request.contains("\"stream\":true"), "{request}");
    }

    #[tokio::test]
    async fn error_answers_say_the_status_and_the_servers_message() {
        let body = r#"{"error":{"message":"invalid API key"}}"#;
        let answer = format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (addr, _server) = serve(vec![answer.into_bytes()]);
        let remote = Remote::new(&format!("http://{addr}/v1/"), None).unwrap();
        let sampling = Flags::parse_from(["test"]).sampling;
        let err = remote
            .answer(&sampling, &[], &mut |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(err, "the server answered 401 Unauthorized: invalid API key");
    }

    #[test]
    fn urls_must_be_http_or_https() {
        assert!(Remote::new("https://example.com/v1", None).is_ok());
        let err = Remote::new("ftp://example.com", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("http:// or https://"), "{err}");
        let err = Remote::new("http:///v1", None).unwrap_err().to_string();
        assert!(err.contains("has no host"), "{err}");
    }
}
