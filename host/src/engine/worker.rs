//! The engine thread: admits jobs into sequence slots, batches every
//! running sequence into one pass over the weights per step (prompts in
//! chunks beside decoding tokens), samples, applies stop sequences and
//! constraints, and sends each job's events.

use super::*;
use model::{BatchItem, KvCache};
use sample::Sampler;
use tokenizer::StreamDecoder;

/// One queued generation, as the engine thread receives it.
pub(super) struct Job {
    pub(super) tokens: Vec<u32>,
    pub(super) params: SamplingParams,
    pub(super) constraint: Option<Constraint>,
    pub(super) cancel: CancelToken,
    pub(super) deadline: Option<Instant>,
    /// Benchmarks generate a fixed number of tokens whatever the model says.
    pub(super) ignore_eos: bool,
    pub(super) events: EventSender,
    pub(super) on_end: EndHook,
}

/// Longest an idle engine waits for a burst to finish arriving.
const GATHER_MAX: Duration = Duration::from_millis(25);

/// Longest pause between the requests of one burst (see `Worker::gather`).
const GATHER_GAP: Duration = Duration::from_millis(3);

/// Prompt tokens evaluated per step across the batch, beside one token for
/// each decoding sequence: a long prompt is taken in chunks so that the
/// conversations already answering keep streaming.
const PREFILL_BUDGET: usize = model::PREFILL_CHUNK;

/// The engine thread's state: the network and its sequence slots.
pub(super) struct Worker {
    pub(super) network: Network,
    pub(super) device: candle_core::Device,
    pub(super) tokenizer: Arc<Tokenizer>,
    pub(super) context: usize,
    pub(super) slots: Vec<Slot>,
    /// Counts admissions, for first-come order and least-recent reuse.
    pub(super) clock: u64,
    /// Where the slots' key/value cache size is published.
    pub(super) kv: Arc<super::KvUsage>,
}

/// One sequence's place: its KV cache, the tokens in it, and the
/// generation using it, if any. A free slot keeps its cache: a new prompt
/// that starts the same way (the system prompt, the tools, the
/// conversation so far) only evaluates what is new.
#[derive(Default)]
pub(super) struct Slot {
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
    pub(super) fn serve(&mut self, jobs: &std::sync::mpsc::Receiver<Job>) {
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
        let held: usize = self.slots.iter().map(|s| s.cache.bytes()).sum();
        self.kv
            .bytes
            .store(held as u64, std::sync::atomic::Ordering::Relaxed);
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
