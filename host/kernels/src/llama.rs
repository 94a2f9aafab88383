//! The llama architecture (Llama, SmolLM, Mistral-style dense models) on
//! these kernels: fused projections, one f32 KV cache per sequence, and
//! batches of sequences evaluated together (continuous batching).

use std::io::{self, Seek, Write};
use std::sync::Arc;

use crate::image::{Reader, Writer, float_bytes};
use crate::{Activations, Image, Q8Matrix, Weights, dot_f32};

/// One transformer block's weights.
///
/// The matrices are [`Weights`] in a model; a layer built of another type
/// that converts into it ([`Q8Matrix`], say) is taken by [`Llama::new`] as
/// well, so code that builds layers of one format needs no conversions.
pub struct Layer<W = Weights> {
    /// RMS norm before attention.
    pub attn_norm: Vec<f32>,
    /// Q, K and V stacked.
    pub qkv: W,
    /// Attention output.
    pub wo: W,
    /// RMS norm before the feed-forward block.
    pub ffn_norm: Vec<f32>,
    /// Gate and up stacked.
    pub gate_up: W,
    /// Down projection.
    pub down: W,
    /// Biases added to Q, K and V (Qwen 2), stacked; empty for none.
    pub qkv_bias: Vec<f32>,
    /// RMS norm weights applied to each query head before rotation
    /// (Qwen 3), one per head dimension; empty for none.
    pub q_norm: Vec<f32>,
    /// The same for each key head; empty for none.
    pub k_norm: Vec<f32>,
}

impl<W: Into<Weights>> Layer<W> {
    /// The same layer with its matrices as [`Weights`].
    fn into_weights(self) -> Layer {
        Layer {
            attn_norm: self.attn_norm,
            qkv: self.qkv.into(),
            wo: self.wo.into(),
            ffn_norm: self.ffn_norm,
            gate_up: self.gate_up.into(),
            down: self.down.into(),
            qkv_bias: self.qkv_bias,
            q_norm: self.q_norm,
            k_norm: self.k_norm,
        }
    }
}

/// Shapes and constants from the file's metadata.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Hidden size.
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Feed-forward size.
    pub ffn: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// Rotary embedding base.
    pub rope_base: f32,
    /// Dimensions per head that rotate.
    pub rope_dim: usize,
    /// Rotary pairs are a head's halves (dimension `i` with `i + rope_dim
    /// / 2`, "NeoX" style, as Qwen stores them) rather than neighbours
    /// (`2i` with `2i + 1`, as GGUF llama files are permuted for).
    pub rope_halves: bool,
}

impl Config {
    /// Query values per position: heads × head size (the hidden size for
    /// most models; not for Qwen 3, whose heads are wider).
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// A llama-architecture model.
pub struct Llama {
    cfg: Config,
    embedding: Weights,
    /// `None` when the output layer is tied to the embedding.
    output: Option<Weights>,
    out_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// Inverse frequencies for rotary embeddings.
    inv_freq: Vec<f32>,
    pool: Option<rayon::ThreadPool>,
    scratch: Scratch,
}

/// Buffers reused across tokens.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    logits: Vec<f32>,
    /// (sequence, position) of each row of the batch.
    rows: Vec<(usize, usize)>,
    /// Rotary (sin, cos) per row and frequency.
    rot: Vec<(f32, f32)>,
    a: Activations,
}

impl Llama {
    /// Assembles a model; `output` is `None` when tied to the embedding.
    /// Matrices may be [`Weights`] or anything that converts into it
    /// ([`Q8Matrix`], [`crate::Q4KMatrix`], [`crate::Q6KMatrix`], and the
    /// other GGUF formats' matrices).
    pub fn new<W: Into<Weights>>(
        cfg: Config,
        embedding: impl Into<Weights>,
        output: Option<impl Into<Weights>>,
        out_norm: Vec<f32>,
        layers: Vec<Layer<W>>,
        threads: usize,
    ) -> Result<Llama, String> {
        let embedding = embedding.into();
        let output = output.map(Into::into);
        let layers: Vec<Layer> = layers.into_iter().map(Layer::into_weights).collect();
        check_shapes(&cfg, &embedding, output.as_ref(), &out_norm, &layers)?;
        let inv_freq = (0..cfg.rope_dim / 2)
            .map(|i| 1.0 / cfg.rope_base.powf(2.0 * i as f32 / cfg.rope_dim as f32))
            .collect();
        let pool = (threads > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("hearth-cpu-{i}"))
                    .build()
            })
            .transpose()
            .map_err(|e| format!("starting {threads} CPU threads: {e}"))?;
        Ok(Llama {
            cfg,
            embedding,
            output,
            out_norm,
            layers,
            inv_freq,
            pool,
            scratch: Scratch::default(),
        })
    }

    /// A model of the given shape with deterministic pseudo-random weights
    /// (uniform in ±`amplitude` / 2, unit norms, tied output), for tests and
    /// benchmarks that need real sizes but no file.
    pub fn random(
        cfg: Config,
        layers: usize,
        vocab: usize,
        amplitude: f32,
        threads: usize,
    ) -> Result<Llama, String> {
        let mut seed = 0x2545_f491_u32;
        let mut matrix = |rows: usize, cols: usize| {
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed as f32 / u32::MAX as f32 - 0.5) * amplitude
                })
                .collect();
            Q8Matrix::from_f32(&data, rows, cols)
        };
        let kv = cfg.kv_heads * cfg.head_dim;
        let q = cfg.q_dim();
        let layers = (0..layers)
            .map(|_| Layer {
                attn_norm: vec![1.0; cfg.dim],
                qkv: matrix(q + 2 * kv, cfg.dim),
                wo: matrix(cfg.dim, q),
                ffn_norm: vec![1.0; cfg.dim],
                gate_up: matrix(2 * cfg.ffn, cfg.dim),
                down: matrix(cfg.dim, cfg.ffn),
                qkv_bias: Vec::new(),
                q_norm: Vec::new(),
                k_norm: Vec::new(),
            })
            .collect();
        let embedding = matrix(vocab, cfg.dim);
        Llama::new(
            cfg,
            embedding,
            None::<Weights>,
            vec![1.0; cfg.dim],
            layers,
            threads,
        )
    }

    /// Writes the model as a weight image (see [`crate::image`]) that
    /// [`Llama::from_image`] maps back; `key` names what it was made from
    /// (the model file's digest, say) and must be given again to read it.
    pub fn write_image<W: Write + Seek>(&self, key: &[u8; 32], out: W) -> io::Result<W> {
        let mut w = Writer::new(out)?;
        let c = &self.cfg;
        for v in [c.dim, c.heads, c.kv_heads, c.head_dim, c.ffn, c.rope_dim] {
            w.word(v as u64);
        }
        w.word(c.eps.to_bits().into());
        w.word(c.rope_base.to_bits().into());
        w.word(c.rope_halves.into());
        self.embedding.save(&mut w)?;
        match &self.output {
            Some(output) => {
                w.word(1);
                output.save(&mut w)?;
            }
            None => w.word(0),
        }
        w.blob(&float_bytes(&self.out_norm))?;
        w.word(self.layers.len() as u64);
        for layer in &self.layers {
            w.blob(&float_bytes(&layer.attn_norm))?;
            layer.qkv.save(&mut w)?;
            layer.wo.save(&mut w)?;
            w.blob(&float_bytes(&layer.ffn_norm))?;
            layer.gate_up.save(&mut w)?;
            layer.down.save(&mut w)?;
            w.blob(&float_bytes(&layer.qkv_bias))?;
            w.blob(&float_bytes(&layer.q_norm))?;
            w.blob(&float_bytes(&layer.k_norm))?;
        }
        w.finish(key)
    }

    /// A model whose matrices stay in `image` (a mapped weight image that
    /// [`Llama::write_image`] wrote with the same `key`). Everything the
    /// image says is checked (bounds, shapes against the configuration),
    /// so a damaged or foreign image is an error.
    pub fn from_image(image: Image, key: &[u8; 32], threads: usize) -> Result<Llama, String> {
        let mut r = Reader::open(&image, key)?;
        let cfg = Config {
            dim: r.size()?,
            heads: r.size()?,
            kv_heads: r.size()?,
            head_dim: r.size()?,
            ffn: r.size()?,
            rope_dim: r.size()?,
            eps: f32::from_bits(r.word()? as u32),
            rope_base: f32::from_bits(r.word()? as u32),
            rope_halves: r.word()? != 0,
        };
        let embedding = Weights::load(&mut r)?;
        let output = match r.word()? {
            0 => None,
            _ => Some(Weights::load(&mut r)?),
        };
        let out_norm = r.floats()?;
        let n = r.size()?;
        let mut layers = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            layers.push(Layer {
                attn_norm: r.floats()?,
                qkv: Weights::load(&mut r)?,
                wo: Weights::load(&mut r)?,
                ffn_norm: r.floats()?,
                gate_up: Weights::load(&mut r)?,
                down: Weights::load(&mut r)?,
                qkv_bias: r.floats()?,
                q_norm: r.floats()?,
                k_norm: r.floats()?,
            });
        }
        r.finish()?;
        Llama::new(cfg, embedding, output, out_norm, layers, threads)
    }

    /// Bytes of key/value cache one position of a sequence takes (keys and
    /// values, f32, every layer).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.layers.len() * self.cfg.kv_heads * self.cfg.head_dim * 4
    }

    /// The vocabulary size (length of one row of logits).
    pub fn vocab(&self) -> usize {
        self.output.as_ref().unwrap_or(&self.embedding).rows()
    }

    /// Evaluates several sequences in one pass: each [`Step`] feeds its
    /// tokens at the positions following its cache (a whole prompt, a
    /// chunk of one, or the one token sampled last). Every weight matrix
    /// is read once for all of them, which is what makes serving several
    /// conversations at once cheaper than serving them in turn. Returns
    /// one row of logits per step (the token after its last one).
    ///
    /// The kernels sum in the same order whatever the batch holds, so a
    /// sequence gets the same bits alone or beside others.
    pub fn forward_batch(&mut self, steps: &mut [Step<'_>]) -> Result<&[f32], String> {
        if steps.is_empty() || steps.iter().any(|s| s.tokens.is_empty()) {
            return Err("every sequence in a batch needs at least one token".into());
        }
        // Run the whole pass on a pool thread, so this thread takes part in
        // every product instead of sleeping and being woken 100+ times per
        // token.
        match self.pool.take() {
            Some(pool) => {
                let result = pool.install(|| self.forward_on(steps, Some(&pool)));
                self.pool = Some(pool);
                result?;
            }
            None => self.forward_on(steps, None)?,
        }
        Ok(&self.scratch.logits)
    }

    fn forward_on(
        &mut self,
        steps: &mut [Step<'_>],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), String> {
        let c = self.cfg;
        let kv_dim = c.kv_heads * c.head_dim;
        let q_dim = c.q_dim();
        let qkv_dim = q_dim + 2 * kv_dim;
        let vocab = self.embedding.rows();
        let layers = self.layers.len();
        let s = &mut self.scratch;
        // Which sequence and position each row of the batch is.
        s.rows.clear();
        for (i, step) in steps.iter_mut().enumerate() {
            step.cache.ensure_layers(layers, kv_dim);
            step.cache.reserve(step.tokens.len());
            let pos = step.cache.len;
            s.rows.extend((0..step.tokens.len()).map(|t| (i, pos + t)));
        }
        let n = s.rows.len();
        s.x.resize(n * c.dim, 0.0);
        let ids = steps.iter().flat_map(|s| s.tokens.iter());
        for (x, &id) in s.x.chunks_exact_mut(c.dim).zip(ids) {
            if id as usize >= vocab {
                return Err(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                ));
            }
            self.embedding.row(id as usize, x);
        }
        s.h.resize(n * c.dim, 0.0);
        s.qkv.resize(n * qkv_dim, 0.0);
        s.attn.resize(n * q_dim, 0.0);
        s.proj.resize(n * c.dim, 0.0);
        s.gate_up.resize(n * 2 * c.ffn, 0.0);
        s.act.resize(n * c.ffn, 0.0);
        // Rotation angles depend on the position alone: computed once per
        // row rather than once per head and layer.
        let half = self.inv_freq.len();
        s.rot.clear();
        for &(_, p) in &s.rows {
            s.rot
                .extend(self.inv_freq.iter().map(|f| (p as f32 * f).sin_cos()));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&s.x, &layer.attn_norm, c.eps, &mut s.h);
            s.a.quantize(&s.h, c.dim);
            layer.qkv.matmul(&s.a, &mut s.qkv, pool);
            if !layer.qkv_bias.is_empty() {
                for row in s.qkv.chunks_exact_mut(qkv_dim) {
                    add(row, &layer.qkv_bias);
                }
            }
            for ((row, &(seq, _)), rot) in s
                .qkv
                .chunks_exact_mut(qkv_dim)
                .zip(&s.rows)
                .zip(s.rot.chunks_exact(half))
            {
                let (q, kv) = row.split_at_mut(q_dim);
                let (k, v) = kv.split_at_mut(kv_dim);
                for (heads, norm) in [(q, &layer.q_norm), (k, &layer.k_norm)] {
                    for head in heads.chunks_exact_mut(c.head_dim) {
                        if !norm.is_empty() {
                            rms_norm_in_place(head, norm, c.eps);
                        }
                        if c.rope_halves {
                            rope_halves(head, rot);
                        } else {
                            rope(head, rot);
                        }
                    }
                }
                // Rows of one sequence come in position order, so pushing
                // keeps the cache position-major.
                let cache = &mut steps[seq].cache;
                cache.own.keys[l].extend_from_slice(k);
                cache.own.values[l].extend_from_slice(v);
            }
            let attend = |(t, out): (usize, &mut [f32])| {
                let (seq, p) = s.rows[t];
                attention(
                    &c,
                    &s.qkv[t * qkv_dim..t * qkv_dim + q_dim],
                    &steps[seq].cache.parts(l, p + 1),
                    out,
                );
            };
            // Rows are independent: spread them over the pool when there
            // are several (a prompt, or a batch of decoding sequences).
            if pool.is_some() && n > 1 {
                use rayon::prelude::*;
                s.attn
                    .par_chunks_exact_mut(q_dim)
                    .enumerate()
                    .for_each(attend);
            } else if pool.is_some() && s.rows[0].1 + 1 >= PARALLEL_ATTENTION_FROM {
                // One row (a sequence decoding alone) over a long context:
                // its key/value groups are independent, so they are spread
                // over the pool instead.
                use rayon::prelude::*;
                let (seq, p) = s.rows[0];
                let group = c.heads / c.kv_heads;
                let per = group * c.head_dim;
                let parts = steps[seq].cache.parts(l, p + 1);
                s.attn[..q_dim]
                    .par_chunks_exact_mut(per)
                    .zip(s.qkv[..q_dim].par_chunks_exact(per))
                    .enumerate()
                    .for_each(|(g, (out, q))| attention_of(&c, g * group, q, &parts, out));
            } else {
                s.attn.chunks_exact_mut(q_dim).enumerate().for_each(attend);
            }
            s.a.quantize(&s.attn, q_dim);
            layer.wo.matmul(&s.a, &mut s.proj, pool);
            add(&mut s.x, &s.proj);
            rms_norm(&s.x, &layer.ffn_norm, c.eps, &mut s.h);
            s.a.quantize(&s.h, c.dim);
            layer.gate_up.matmul(&s.a, &mut s.gate_up, pool);
            swiglu(&s.gate_up, c.ffn, &mut s.act);
            s.a.quantize(&s.act, c.ffn);
            layer.down.matmul(&s.a, &mut s.proj, pool);
            add(&mut s.x, &s.proj);
        }
        for step in steps.iter_mut() {
            step.cache.len += step.tokens.len();
        }
        // Only each sequence's last position needs logits.
        let seqs = steps.len();
        s.h.resize(seqs * c.dim, 0.0);
        let mut last = 0;
        for (i, step) in steps.iter().enumerate() {
            last += step.tokens.len();
            let x = &s.x[(last - 1) * c.dim..last * c.dim];
            rms_norm(
                x,
                &self.out_norm,
                c.eps,
                &mut s.h[i * c.dim..(i + 1) * c.dim],
            );
        }
        s.a.quantize(&s.h, c.dim);
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        s.logits.resize(seqs * output.rows(), 0.0);
        output.matmul(&s.a, &mut s.logits, pool);
        Ok(())
    }
}

/// Checks every matrix and vector against the configuration, so a model
/// whose file or image disagrees with itself is an error here rather than
/// a bad index in the forward pass.
fn check_shapes(
    c: &Config,
    embedding: &Weights,
    output: Option<&Weights>,
    out_norm: &[f32],
    layers: &[Layer],
) -> Result<(), String> {
    let kv = c.kv_heads * c.head_dim;
    let sane = c.dim > 0
        && c.heads > 0
        && c.kv_heads > 0
        && c.heads.is_multiple_of(c.kv_heads)
        && c.head_dim > 0
        && c.rope_dim <= c.head_dim
        && c.rope_dim.is_multiple_of(2)
        && c.ffn > 0;
    if !sane {
        return Err(format!("an impossible model configuration: {c:?}"));
    }
    let matrix = |name: &str, m: &Weights, rows: Option<usize>, cols: usize| {
        if m.cols() != cols || rows.is_some_and(|r| r != m.rows()) {
            Err(format!(
                "{name} is {}×{}, the configuration asks for {}×{cols}",
                m.rows(),
                m.cols(),
                rows.map_or("any".to_string(), |r| r.to_string())
            ))
        } else {
            Ok(())
        }
    };
    let vector = |name: &str, v: &[f32]| {
        if v.len() == c.dim {
            Ok(())
        } else {
            Err(format!("{name} has {} values, not {}", v.len(), c.dim))
        }
    };
    matrix("the embedding", embedding, None, c.dim)?;
    if let Some(output) = output {
        matrix("the output", output, Some(embedding.rows()), c.dim)?;
    }
    vector("the output norm", out_norm)?;
    for (i, l) in layers.iter().enumerate() {
        vector(&format!("layer {i}'s attention norm"), &l.attn_norm)?;
        vector(&format!("layer {i}'s feed-forward norm"), &l.ffn_norm)?;
        matrix(
            &format!("layer {i}'s QKV"),
            &l.qkv,
            Some(c.q_dim() + 2 * kv),
            c.dim,
        )?;
        matrix(
            &format!("layer {i}'s attention output"),
            &l.wo,
            Some(c.dim),
            c.q_dim(),
        )?;
        let optional = |name: &str, v: &[f32], len: usize| {
            if v.is_empty() || v.len() == len {
                Ok(())
            } else {
                Err(format!(
                    "layer {i}'s {name} has {} values, not {len}",
                    v.len()
                ))
            }
        };
        optional("QKV bias", &l.qkv_bias, c.q_dim() + 2 * kv)?;
        optional("query norm", &l.q_norm, c.head_dim)?;
        optional("key norm", &l.k_norm, c.head_dim)?;
        matrix(
            &format!("layer {i}'s gate and up"),
            &l.gate_up,
            Some(2 * c.ffn),
            c.dim,
        )?;
        matrix(&format!("layer {i}'s down"), &l.down, Some(c.dim), c.ffn)?;
    }
    Ok(())
}

/// One sequence's part of a [`Llama::forward_batch`] call.
pub struct Step<'a> {
    /// The sequence's keys and values so far; the tokens go after them.
    pub cache: &'a mut KvCache,
    /// Tokens to evaluate (at least one).
    pub tokens: &'a [u32],
}

/// Positions a sequence's key/value cache grows by at a time.
pub const KV_BLOCK: usize = 256;

/// The keys and values of one sequence, per layer, position-major. Grows
/// as the sequence does, [`KV_BLOCK`] positions at a time; nothing is
/// reserved for the whole context.
///
/// A prompt prefix several sequences have in common (the system prompt and
/// tool descriptions of every chat) is held once: [`share_prefix`]
/// freezes the source's positions into a segment both then point to,
/// instead of copying megabytes per conversation.
///
/// [`share_prefix`]: KvCache::share_prefix
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// Frozen leading segments and how many positions of each this
    /// sequence uses, in position order.
    shared: Vec<(Arc<Segment>, usize)>,
    /// The positions after the shared ones.
    own: Segment,
    len: usize,
    /// Floats per position and layer (key/value heads × head size).
    per: usize,
}

/// Keys and values of consecutive positions, per layer, position-major.
#[derive(Debug, Clone, Default)]
struct Segment {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions held in shared segments.
    fn base(&self) -> usize {
        self.shared.iter().map(|(_, used)| used).sum()
    }

    /// Keeps the first `tokens` positions (a shared prompt prefix).
    pub fn truncate(&mut self, tokens: usize) {
        if tokens >= self.len {
            return;
        }
        let base = self.base();
        if tokens >= base {
            let keep = (tokens - base) * self.per;
            for (k, v) in self.own.keys.iter_mut().zip(&mut self.own.values) {
                k.truncate(keep);
                v.truncate(keep);
            }
        } else {
            for (k, v) in self.own.keys.iter_mut().zip(&mut self.own.values) {
                k.clear();
                v.clear();
            }
            let mut left = tokens;
            self.shared.retain_mut(|(_, used)| {
                let keep = left > 0;
                *used = (*used).min(left);
                left -= *used;
                keep
            });
        }
        self.len = tokens;
    }

    /// Makes this cache hold the first `tokens` positions of `other`
    /// (another sequence that starts with the same prompt) without copying
    /// them: `other`'s own positions are frozen into a shared segment
    /// first when the prefix reaches into them.
    pub fn share_prefix(&mut self, other: &mut KvCache, tokens: usize) {
        let tokens = tokens.min(other.len);
        if tokens > other.base() {
            other.freeze();
        }
        self.ensure_layers(other.own.keys.len(), other.per);
        for (k, v) in self.own.keys.iter_mut().zip(&mut self.own.values) {
            k.clear();
            v.clear();
        }
        self.shared.clear();
        let mut left = tokens;
        for (segment, used) in &other.shared {
            if left == 0 {
                break;
            }
            let take = (*used).min(left);
            self.shared.push((Arc::clone(segment), take));
            left -= take;
        }
        self.len = tokens;
    }

    /// Moves the own positions into a new shared segment.
    fn freeze(&mut self) {
        let own = self.len - self.base();
        if own == 0 {
            return;
        }
        let layers = self.own.keys.len();
        let frozen = std::mem::replace(
            &mut self.own,
            Segment {
                keys: vec![Vec::new(); layers],
                values: vec![Vec::new(); layers],
            },
        );
        self.shared.push((Arc::new(frozen), own));
    }

    /// Makes room for `positions` more, in whole blocks of
    /// [`KV_BLOCK`] positions: a sequence holds at most one block it does
    /// not use (a vector left to grow by doubling may hold twice what it
    /// uses), and grows without a copy per token.
    fn reserve(&mut self, positions: usize) {
        let own = self.len - self.base();
        let want = (own + positions).next_multiple_of(KV_BLOCK) * self.per;
        for v in self.own.keys.iter_mut().chain(&mut self.own.values) {
            if v.capacity() < (own + positions) * self.per {
                v.reserve_exact(want - v.len());
            }
        }
    }

    /// Bytes this sequence's own positions take, slack included (shared
    /// prefix segments are counted by the sequences that made them).
    pub fn bytes(&self) -> usize {
        let floats: usize = self
            .own
            .keys
            .iter()
            .chain(&self.own.values)
            .map(Vec::capacity)
            .sum();
        floats * 4
    }

    fn ensure_layers(&mut self, layers: usize, per: usize) {
        if self.own.keys.len() != layers || self.per != per {
            self.own.keys = vec![Vec::new(); layers];
            self.own.values = vec![Vec::new(); layers];
            self.shared.clear();
            self.len = 0;
            self.per = per;
        }
    }

    /// Layer `l`'s (keys, values) for the first `positions` positions, as
    /// the consecutive parts they are stored in.
    fn parts(&self, l: usize, positions: usize) -> Vec<(&[f32], &[f32])> {
        let mut parts = Vec::with_capacity(self.shared.len() + 1);
        let mut left = positions;
        for (segment, used) in &self.shared {
            let n = (*used).min(left);
            if n > 0 {
                let floats = n * self.per;
                parts.push((&segment.keys[l][..floats], &segment.values[l][..floats]));
            }
            left -= n;
        }
        if left > 0 {
            let take = left * self.per;
            parts.push((&self.own.keys[l][..take], &self.own.values[l][..take]));
        }
        parts
    }
}

/// From how many positions one row's attention is split over the threads
/// by key/value group: below it the work is shorter than handing it out.
const PARALLEL_ATTENTION_FROM: usize = 256;

/// (keys, values) of consecutive positions, each position-major.
type Part<'a> = (&'a [f32], &'a [f32]);

/// Causal attention of one query row (all heads) over a sequence's cache,
/// given as the parts it is stored in (positions in order).
fn attention(c: &Config, q: &[f32], parts: &[Part<'_>], out: &mut [f32]) {
    attention_of(c, 0, q, parts, out);
}

/// [`attention`] for the query heads from `first` on that `q` and `out`
/// hold (whole key/value groups): each head's arithmetic is the same
/// whichever slice it is computed in.
fn attention_of(c: &Config, first: usize, q: &[f32], parts: &[Part<'_>], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::Isa::detected() == crate::Isa::Avx512 {
            // SAFETY: the CPU has AVX-512 (and AVX2, FMA).
            unsafe { attention_avx512(c, first, q, parts, out) };
            return;
        }
        if crate::avx2() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe { attention_avx2(c, first, q, parts, out) };
            return;
        }
    }
    attention_any::<false, false>(c, first, q, parts, out);
}

/// The same code compiled for 8-lane vectors with fused multiply-adds.
/// Same operations in the same order as the portable build (which uses
/// `mul_add` too), so the results do not depend on which ran.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_avx2(c: &Config, first: usize, q: &[f32], parts: &[Part<'_>], out: &mut [f32]) {
    attention_any::<true, false>(c, first, q, parts, out);
}

/// As [`attention_avx2`], with 16-lane registers where they pay (three
/// 64-dimensional heads sharing a key/value head); the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attention_avx512(
    c: &Config,
    first: usize,
    q: &[f32],
    parts: &[Part<'_>],
    out: &mut [f32],
) {
    attention_any::<true, true>(c, first, q, parts, out);
}

#[inline(always)]
fn attention_any<const AVX: bool, const WIDE: bool>(
    c: &Config,
    first: usize,
    q: &[f32],
    parts: &[Part<'_>],
    out: &mut [f32],
) {
    // A head size known at compile time keeps a head's query and output in
    // registers while the positions stream past.
    match c.head_dim {
        64 => attention_heads::<64, AVX, WIDE>(c, first, q, parts, out),
        128 => attention_heads::<128, AVX, WIDE>(c, first, q, parts, out),
        _ => attention_heads::<0, AVX, WIDE>(c, first, q, parts, out),
    }
}

/// `HD` is the head size, or 0 for "read it from `c`". `first` is the
/// index of the first query head `q` holds.
#[inline(always)]
fn attention_heads<const HD: usize, const AVX: bool, const WIDE: bool>(
    c: &Config,
    first: usize,
    q: &[f32],
    parts: &[Part<'_>],
    out: &mut [f32],
) {
    let hd = if HD == 0 { c.head_dim } else { HD };
    let kv_dim = c.kv_heads * hd;
    let len: usize = parts.iter().map(|(k, _)| k.len() / kv_dim).sum();
    let group = c.heads / c.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = vec![0f32; len];
    #[cfg(target_arch = "x86_64")]
    if AVX && HD == 64 && group.is_multiple_of(3) {
        // Three query heads per pass over their key/value head: each
        // cache row is read once for all three (reading the cache, not
        // arithmetic, is what bounds attention at long contexts).
        let mut scores = vec![0f32; 3 * len];
        for (i, (q3, o3)) in q
            .chunks_exact(3 * hd)
            .zip(out.chunks_exact_mut(3 * hd))
            .enumerate()
        {
            let kv = ((first + 3 * i) / group) * hd;
            // SAFETY: AVX2/FMA present (AVX is set only on that path),
            // AVX-512 too where WIDE is.
            unsafe {
                if WIDE {
                    three_heads64_avx512(q3, parts, kv_dim, kv, scale, &mut scores, o3);
                } else {
                    three_heads64_avx2(q3, parts, kv_dim, kv, scale, &mut scores, o3);
                }
            }
        }
        return;
    }
    for (h, (qh, o)) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
        let kv = ((first + h) / group) * hd;
        one_head::<HD, AVX>(qh, parts, kv_dim, kv, scale, &mut scores, o);
    }
}

/// Attention of three 64-dimensional query heads (`q`, 3 × 64) that share
/// the key/value head at offset `kv`, in AVX2. Per (head, position) the
/// arithmetic is exactly [`one_head`]'s: the same chains of fused
/// multiply-adds, the same reduction tree, values summed in position order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn three_heads64_avx2(
    q: &[f32],
    parts: &[Part<'_>],
    kv_dim: usize,
    kv: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let len = scores.len() / 3;
    check_three_heads(q, parts, kv_dim, kv, out);
    // SAFETY: rows read are below each part's row count (the tail of four
    // reuses the last row), offsets stay within a row (asserted), and
    // score indices stay below `len` per head.
    unsafe {
        let sc = _mm_set1_ps(scale);
        let qp = q.as_ptr();
        let mut at = 0;
        for (keys, _) in parts {
            let n = keys.len() / kv_dim;
            let row = |j: usize| keys.as_ptr().add(j.min(n - 1) * kv_dim + kv);
            let mut j = 0;
            while j < n {
                let k = [row(j), row(j + 1), row(j + 2), row(j + 3)];
                let mut a = [[_mm256_setzero_ps(); 4]; 3];
                for d in 0..8 {
                    let kd = [
                        _mm256_loadu_ps(k[0].add(8 * d)),
                        _mm256_loadu_ps(k[1].add(8 * d)),
                        _mm256_loadu_ps(k[2].add(8 * d)),
                        _mm256_loadu_ps(k[3].add(8 * d)),
                    ];
                    for (h, a) in a.iter_mut().enumerate() {
                        let qd = _mm256_loadu_ps(qp.add(64 * h + 8 * d));
                        for (a, kd) in a.iter_mut().zip(&kd) {
                            *a = _mm256_fmadd_ps(qd, *kd, *a);
                        }
                    }
                }
                for (h, a) in a.iter().enumerate() {
                    let t = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
                    let s = _mm_mul_ps(
                        _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t)),
                        sc,
                    );
                    let mut four = [0f32; 4];
                    _mm_storeu_ps(four.as_mut_ptr(), s);
                    let m = (n - j).min(4);
                    scores[h * len + at + j..][..m].copy_from_slice(&four[..m]);
                }
                j += 4;
            }
            at += n;
        }
        for h in 0..3 {
            softmax::<true>(&mut scores[h * len..(h + 1) * len]);
        }
        // Values sixteen dimensions per pass: 3 heads × 2 vectors of
        // accumulators stay in registers while the positions stream past.
        for d0 in (0..64).step_by(16) {
            let mut acc = [[_mm256_setzero_ps(); 2]; 3];
            let mut at = 0;
            for (_, values) in parts {
                let n = values.len() / kv_dim;
                for j in 0..n {
                    let v = values.as_ptr().add(j * kv_dim + kv + d0);
                    let (v0, v1) = (_mm256_loadu_ps(v), _mm256_loadu_ps(v.add(8)));
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let p = _mm256_set1_ps(*scores.get_unchecked(h * len + at + j));
                        acc[0] = _mm256_fmadd_ps(p, v0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(p, v1, acc[1]);
                    }
                }
                at += n;
            }
            for (h, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(64 * h + d0), acc[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(64 * h + d0 + 8), acc[1]);
            }
        }
    }
}

/// The shapes the three-head kernels rely on for their unchecked reads.
#[inline(always)]
fn check_three_heads(q: &[f32], parts: &[Part<'_>], kv_dim: usize, kv: usize, out: &[f32]) {
    assert!(q.len() == 192 && out.len() == 192 && kv + 64 <= kv_dim);
    assert!(
        parts
            .iter()
            .all(|(k, v)| k.len() == v.len() && k.len() % kv_dim == 0)
    );
}

/// [`three_heads64_avx2`] with 16-lane registers: two positions per
/// register for the scores (so the twelve chains of a round of four stay
/// in registers instead of spilling) and a whole 64-dimensional head per
/// four registers for the values. Every lane does the same fused
/// multiply-adds in the same order and the scores are reduced with the
/// same `vhaddps` tree, so the bits are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)] // one index addresses several arrays
unsafe fn three_heads64_avx512(
    q: &[f32],
    parts: &[Part<'_>],
    kv_dim: usize,
    kv: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let len = scores.len() / 3;
    check_three_heads(q, parts, kv_dim, kv, out);
    // Each head's query eight dimensions at a time, repeated in both
    // halves of a register (one position per half).
    let mut qq = [[0f32; 16]; 24];
    for (i, qq) in qq.iter_mut().enumerate() {
        let src = &q[8 * i..][..8];
        qq[..8].copy_from_slice(src);
        qq[8..].copy_from_slice(src);
    }
    // Positions j and j + 1's eight dimensions from `d` in one register.
    #[inline(always)]
    unsafe fn pair(a: *const f32, b: *const f32) -> __m512 {
        // SAFETY: the caller passes rows with 8 readable floats.
        unsafe {
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(a))),
                _mm256_castps_pd(_mm256_loadu_ps(b)),
            ))
        }
    }
    // SAFETY: rows read are below each part's row count (the tail of four
    // reuses the last row), offsets stay within a row (asserted), and
    // score indices stay below `len` per head.
    unsafe {
        let sc = _mm_set1_ps(scale);
        let mut at = 0;
        for (keys, _) in parts {
            let n = keys.len() / kv_dim;
            let row = |j: usize| keys.as_ptr().add(j.min(n - 1) * kv_dim + kv);
            let mut j = 0;
            while j < n {
                let k = [row(j), row(j + 1), row(j + 2), row(j + 3)];
                let mut a = [[_mm512_setzero_ps(); 2]; 3];
                for d in 0..8 {
                    let k01 = pair(k[0].add(8 * d), k[1].add(8 * d));
                    let k23 = pair(k[2].add(8 * d), k[3].add(8 * d));
                    for h in 0..3 {
                        let qd = _mm512_loadu_ps(qq[8 * h + d].as_ptr());
                        a[h][0] = _mm512_fmadd_ps(qd, k01, a[h][0]);
                        a[h][1] = _mm512_fmadd_ps(qd, k23, a[h][1]);
                    }
                }
                let m = (n - j).min(4);
                for h in 0..3 {
                    let half = |v: __m512, i: usize| {
                        _mm256_castpd_ps(if i == 0 {
                            _mm512_castpd512_pd256(_mm512_castps_pd(v))
                        } else {
                            _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))
                        })
                    };
                    let t = _mm256_hadd_ps(
                        _mm256_hadd_ps(half(a[h][0], 0), half(a[h][0], 1)),
                        _mm256_hadd_ps(half(a[h][1], 0), half(a[h][1], 1)),
                    );
                    let s = _mm_mul_ps(
                        _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t)),
                        sc,
                    );
                    let dst = scores.as_mut_ptr().add(h * len + at + j);
                    if m == 4 {
                        _mm_storeu_ps(dst, s);
                    } else {
                        let mut four = [0f32; 4];
                        _mm_storeu_ps(four.as_mut_ptr(), s);
                        std::ptr::copy_nonoverlapping(four.as_ptr(), dst, m);
                    }
                }
                j += 4;
            }
            at += n;
        }
        for h in 0..3 {
            softmax::<true>(&mut scores[h * len..(h + 1) * len]);
        }
        let mut acc = [[_mm512_setzero_ps(); 4]; 3];
        let mut at = 0;
        for (_, values) in parts {
            let n = values.len() / kv_dim;
            for j in 0..n {
                let v = values.as_ptr().add(j * kv_dim + kv);
                let vv = [
                    _mm512_loadu_ps(v),
                    _mm512_loadu_ps(v.add(16)),
                    _mm512_loadu_ps(v.add(32)),
                    _mm512_loadu_ps(v.add(48)),
                ];
                for h in 0..3 {
                    let p = _mm512_set1_ps(*scores.get_unchecked(h * len + at + j));
                    for c in 0..4 {
                        acc[h][c] = _mm512_fmadd_ps(p, vv[c], acc[h][c]);
                    }
                }
            }
            at += n;
        }
        for h in 0..3 {
            for c in 0..4 {
                _mm512_storeu_ps(out.as_mut_ptr().add(64 * h + 16 * c), acc[h][c]);
            }
        }
    }
}

/// `q · k / √d` for every position of one key/value head.
#[inline(always)]
fn head_scores<const HD: usize, const AVX: bool>(
    qh: &[f32],
    parts: &[Part<'_>],
    kv_dim: usize,
    kv: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let hd = qh.len();
    #[cfg(target_arch = "x86_64")]
    if AVX && HD == 64 {
        let mut at = 0;
        for (keys, _) in parts {
            let n = keys.len() / kv_dim;
            // SAFETY: AVX2/FMA present (AVX is set only on that path);
            // the slice sizes are checked inside.
            unsafe { scores64_avx2(qh, keys, kv_dim, kv, scale, &mut scores[at..at + n]) };
            at += n;
        }
        return;
    }
    let mut at = 0;
    for (keys, _) in parts {
        let n = keys.len() / kv_dim;
        // Four positions at a time: four independent chains of fused
        // multiply-adds keep the FMA units busy. Each position's
        // arithmetic is the same whichever group of four it falls in (a
        // lone tail position just leaves lanes unused).
        let key = |j: usize| &keys[(j * kv_dim + kv).min(keys.len() - hd)..][..hd];
        let mut j = 0;
        while j < n {
            let mut acc = [[0f32; 8]; 4];
            for (i, acc) in acc.iter_mut().enumerate() {
                lanes_dot::<HD>(qh, key(j + i), acc);
            }
            for (i, acc) in acc.iter().enumerate().take(n - j) {
                scores[at + j + i] = reduce8(acc) * scale;
            }
            j += 4;
        }
        at += n;
    }
}

/// [`head_scores`] for 64-dimensional heads in AVX2, four positions per
/// round: the query stays in eight registers, four chains of fused
/// multiply-adds run side by side, and three `vhaddps` rounds reduce all
/// four with the same tree as [`reduce8`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn scores64_avx2(
    qh: &[f32],
    keys: &[f32],
    kv_dim: usize,
    kv: usize,
    scale: f32,
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    let n = scores.len();
    assert!(qh.len() == 64 && kv + 64 <= kv_dim && keys.len() >= n * kv_dim);
    if n == 0 {
        return;
    }
    // SAFETY: every row read is below n (the tail reuses the last row),
    // and n rows of kv_dim floats are in `keys` (asserted).
    unsafe {
        let q = qh.as_ptr();
        let mut qv = [_mm256_setzero_ps(); 8];
        for (d, v) in qv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(q.add(8 * d));
        }
        let row = |j: usize| keys.as_ptr().add(j.min(n - 1) * kv_dim + kv);
        let sc = _mm_set1_ps(scale);
        let mut j = 0;
        while j < n {
            let (k0, k1, k2, k3) = (row(j), row(j + 1), row(j + 2), row(j + 3));
            let mut a = [_mm256_setzero_ps(); 4];
            for (d, qd) in qv.iter().enumerate() {
                a[0] = _mm256_fmadd_ps(*qd, _mm256_loadu_ps(k0.add(8 * d)), a[0]);
                a[1] = _mm256_fmadd_ps(*qd, _mm256_loadu_ps(k1.add(8 * d)), a[1]);
                a[2] = _mm256_fmadd_ps(*qd, _mm256_loadu_ps(k2.add(8 * d)), a[2]);
                a[3] = _mm256_fmadd_ps(*qd, _mm256_loadu_ps(k3.add(8 * d)), a[3]);
            }
            let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
            let s = _mm_mul_ps(
                _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h)),
                sc,
            );
            if j + 4 <= n {
                _mm_storeu_ps(scores.as_mut_ptr().add(j), s);
            } else {
                let mut tail = [0f32; 4];
                _mm_storeu_ps(tail.as_mut_ptr(), s);
                scores[j..].copy_from_slice(&tail[..n - j]);
            }
            j += 4;
        }
    }
}

/// Attention of one query head over one key/value head.
#[inline(always)]
fn one_head<const HD: usize, const AVX: bool>(
    qh: &[f32],
    parts: &[Part<'_>],
    kv_dim: usize,
    kv: usize,
    scale: f32,
    scores: &mut [f32],
    o: &mut [f32],
) {
    head_scores::<HD, AVX>(qh, parts, kv_dim, kv, scale, scores);
    softmax::<AVX>(scores);
    if HD == 0 {
        o.fill(0.0);
        accumulate_parts(scores, parts, kv_dim, kv, o);
    } else {
        let mut a = [0f32; HD];
        accumulate_parts(scores, parts, kv_dim, kv, &mut a);
        o.copy_from_slice(&a);
    }
}

/// `acc += Σ_j p_j · v_j` over all parts' positions, in position order.
#[inline(always)]
fn accumulate_parts(p: &[f32], parts: &[Part<'_>], kv_dim: usize, offset: usize, acc: &mut [f32]) {
    let mut at = 0;
    for (_, values) in parts {
        let n = values.len() / kv_dim;
        accumulate(&p[at..at + n], values, kv_dim, offset, acc);
        at += n;
    }
}

/// Eight partial sums of `q · k`, each lane a chain of fused multiply-adds
/// over every eighth element.
#[inline(always)]
fn lanes_dot<const HD: usize>(q: &[f32], k: &[f32], acc: &mut [f32; 8]) {
    let hd = if HD == 0 { q.len() } else { HD };
    let (q, k) = (&q[..hd], &k[..hd]);
    let (qc, kc) = (q.chunks_exact(8), k.chunks_exact(8));
    let (qr, kr) = (qc.remainder(), kc.remainder());
    for (q, k) in qc.zip(kc) {
        for l in 0..8 {
            acc[l] = q[l].mul_add(k[l], acc[l]);
        }
    }
    for (l, (q, k)) in qr.iter().zip(kr).enumerate() {
        acc[l] = q.mul_add(*k, acc[l]);
    }
}

/// The total of eight partial sums, adding neighbours pairwise (the tree
/// two rounds of `vhaddps` build).
#[inline(always)]
fn reduce8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// `acc += Σ_j p_j · v_j` over the positions, in position order.
#[inline(always)]
fn accumulate(p: &[f32], values: &[f32], kv_dim: usize, offset: usize, acc: &mut [f32]) {
    let hd = acc.len();
    for (j, p) in p.iter().enumerate() {
        let v = &values[j * kv_dim + offset..][..hd];
        for (a, v) in acc.iter_mut().zip(v) {
            *a = p.mul_add(*v, *a);
        }
    }
}

/// `e^x` to within a few units in the last place, as plain arithmetic that
/// vectorises (the C library's `expf` is a call per element). Inputs are
/// clamped to where the result is a normal float.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so `n · ln 2` is exact in the first part.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer n held in the low mantissa bits,
    // which become 2^n's exponent below: no float-to-int conversion,
    // whose saturating semantics would keep the loop from vectorising.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    // Cephes' minimax polynomial for e^r on |r| ≤ ln 2 / 2.
    let mut p = 1.987_569_2e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    // 2^n through the exponent bits; n is in [-126, 127] after the clamp.
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    y * f32::from_bits(biased << 23)
}

/// [`exp`] of `c - max` in place for each chunk of eight, summed per lane
/// into `sums`: the same operations as the portable loop, eight at once
/// (the compiler leaves that loop scalar).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp_sum8_avx2<'a>(
    chunks: impl Iterator<Item = &'a mut [f32]>,
    max: f32,
    sums: &mut [f32; 8],
) {
    use std::arch::x86_64::*;
    const ROUND: f32 = 12_582_912.0;
    // SAFETY: each chunk holds eight floats (chunks_exact_mut(8)).
    unsafe {
        let mut acc = _mm256_loadu_ps(sums.as_ptr());
        let m = _mm256_set1_ps(max);
        let round = _mm256_set1_ps(ROUND);
        let c = |v: f32| _mm256_set1_ps(v);
        for chunk in chunks {
            let x = _mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), m);
            let x = _mm256_min_ps(_mm256_max_ps(x, c(-87.0)), c(88.0));
            let t = _mm256_add_ps(_mm256_mul_ps(x, c(std::f32::consts::LOG2_E)), round);
            let n = _mm256_sub_ps(t, round);
            let r = _mm256_fmadd_ps(n, c(-0.693_359_4), x);
            let r = _mm256_fmadd_ps(n, c(2.121_944_4e-4), r);
            let mut p = c(1.987_569_2e-4);
            p = _mm256_fmadd_ps(p, r, c(1.398_199_9e-3));
            p = _mm256_fmadd_ps(p, r, c(8.333_452e-3));
            p = _mm256_fmadd_ps(p, r, c(4.166_579_6e-2));
            p = _mm256_fmadd_ps(p, r, c(1.666_666_5e-1));
            p = _mm256_fmadd_ps(p, r, c(0.5));
            let y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), c(1.0));
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_sub_epi32(
                    _mm256_castps_si256(t),
                    _mm256_set1_epi32(ROUND.to_bits() as i32),
                ),
                _mm256_set1_epi32(127),
            ));
            let e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
            _mm256_storeu_ps(chunk.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        _mm256_storeu_ps(sums.as_mut_ptr(), acc);
    }
}

/// `g · σ(g) · u` for every element: SwiGLU's gate.
fn swiglu(gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        unsafe { swiglu_avx2(gate_up, ffn, out) };
        return;
    }
    swiglu_any(gate_up, ffn, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_avx2(gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    swiglu_any(gate_up, ffn, out);
}

#[inline(always)]
fn swiglu_any(gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    for (gu, a) in gate_up.chunks_exact(2 * ffn).zip(out.chunks_exact_mut(ffn)) {
        let (g, u) = gu.split_at(ffn);
        for ((a, g), u) in a.iter_mut().zip(g).zip(u) {
            *a = g / (1.0 + exp(-g)) * u;
        }
    }
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ms = dot_f32(row, row) / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// RMS norm of one vector in place (Qwen 3's per-head query and key
/// norms).
fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let ms = dot_f32(x, x) / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v = *v * inv * w;
    }
}

/// Rotary embedding over a head's halves (NeoX style: pairs `i`,
/// `i + rope_dim / 2`); `rot` as for [`rope`].
fn rope_halves(head: &mut [f32], rot: &[(f32, f32)]) {
    let half = rot.len();
    for (i, &(sin, cos)) in rot.iter().enumerate() {
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * cos - b * sin;
        head[i + half] = a * sin + b * cos;
    }
}

/// Interleaved rotary embedding (GGUF llama: pairs 2i, 2i+1); `rot` holds
/// the (sin, cos) of each pair's angle at this position.
fn rope(head: &mut [f32], rot: &[(f32, f32)]) {
    for (i, &(sin, cos)) in rot.iter().enumerate() {
        let (a, b) = (head[2 * i], head[2 * i + 1]);
        head[2 * i] = a * cos - b * sin;
        head[2 * i + 1] = a * sin + b * cos;
    }
}

/// In place, with eight running maxima and sums (a single running sum is
/// one long dependency chain).
#[inline(always)]
fn softmax<const AVX: bool>(x: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    for (l, v) in chunks.remainder().iter().enumerate() {
        m[l] = if *v > m[l] { *v } else { m[l] };
    }
    let max = m.into_iter().fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX2/FMA present (AVX is set only on that path).
        unsafe { exp_sum8_avx2(chunks.by_ref(), max, &mut sums) };
    }
    for c in &mut chunks {
        for l in 0..8 {
            c[l] = exp(c[l] - max);
            sums[l] += c[l];
        }
    }
    for (l, v) in chunks.into_remainder().iter_mut().enumerate() {
        *v = exp(*v - max);
        sums[l] += *v;
    }
    let sum = reduce8(&sums);
    for v in x.iter_mut() {
        *v /= sum;
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small model with deterministic pseudo-random weights.
    fn tiny(threads: usize) -> Llama {
        let cfg = Config {
            dim: 64,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            ffn: 96,
            eps: 1e-5,
            rope_base: 10_000.0,
            rope_dim: 16,
            rope_halves: false,
        };
        Llama::random(cfg, 2, 50, 0.4, threads).unwrap()
    }

    /// Greedy continuation of `prompt`, one sequence alone.
    fn alone(model: &mut Llama, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
        let mut cache = KvCache::default();
        let mut out = Vec::new();
        let mut feed = prompt.to_vec();
        for _ in 0..steps {
            let logits = model
                .forward_batch(&mut [Step {
                    cache: &mut cache,
                    tokens: &feed,
                }])
                .unwrap()
                .to_vec();
            feed = vec![argmax(&logits)];
            out.push(logits);
        }
        out
    }

    fn argmax(x: &[f32]) -> u32 {
        (0..x.len()).max_by(|&a, &b| x[a].total_cmp(&x[b])).unwrap() as u32
    }

    /// Three sequences decoded together get the bits each gets alone.
    fn check_batched_equals_alone(mut model: Llama, what: &str) {
        let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5], &[7], &[9, 8, 7, 6, 5, 4, 3, 2, 1]];
        let expected: Vec<_> = prompts.iter().map(|p| alone(&mut model, p, 6)).collect();
        let vocab = model.vocab();
        let mut caches = vec![KvCache::default(); 3];
        let mut feeds: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
        for (step, _) in expected[0].iter().enumerate() {
            let mut steps: Vec<Step<'_>> = caches
                .iter_mut()
                .zip(&feeds)
                .map(|(cache, tokens)| Step { cache, tokens })
                .collect();
            let logits = model.forward_batch(&mut steps).unwrap().to_vec();
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                assert!(row.iter().all(|v| v.is_finite()), "{what}");
                assert_eq!(row, expected[i][step], "{what} seq {i} step {step}");
                feeds[i] = vec![argmax(row)];
            }
        }
    }

    #[test]
    fn sequences_get_the_same_bits_batched_as_alone() {
        for threads in [1, 2] {
            check_batched_equals_alone(tiny(threads), &format!("Q8, {threads} threads"));
            check_batched_equals_alone(
                tiny_k_quant(threads),
                &format!("K-quants, {threads} threads"),
            );
        }
    }

    /// A small model of GGUF Q4_K_M's mix: Q4_K matrices, Q6_K for V, the
    /// down projection and the output, so QKV is a mixed stack.
    fn tiny_k_quant(threads: usize) -> Llama {
        use crate::kquant::random::{Rng, q4_k, q6_k};
        use crate::{Q4KMatrix, Q6KMatrix};
        let cfg = Config {
            dim: 256,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            ffn: 512,
            eps: 1e-5,
            rope_base: 10_000.0,
            rope_dim: 64,
            rope_halves: false,
        };
        let mut rng = Rng(99);
        let mut q4 = |rows: usize, cols: usize| -> Weights {
            Q4KMatrix::from_q4_k(&q4_k(&mut rng, rows, cols), rows, cols).into()
        };
        let mut rng6 = Rng(77);
        let mut q6 = |rows: usize, cols: usize| -> Weights {
            Q6KMatrix::from_q6_k(&q6_k(&mut rng6, rows, cols), rows, cols).into()
        };
        let kv = cfg.kv_heads * cfg.head_dim;
        let layers: Vec<Layer> = (0..2)
            .map(|_| Layer {
                attn_norm: vec![1.0; cfg.dim],
                qkv: Weights::stack([q4(cfg.dim, cfg.dim), q4(kv, cfg.dim), q6(kv, cfg.dim)]),
                wo: q4(cfg.dim, cfg.dim),
                ffn_norm: vec![1.0; cfg.dim],
                gate_up: Weights::stack([q4(cfg.ffn, cfg.dim), q4(cfg.ffn, cfg.dim)]),
                down: q6(cfg.dim, cfg.ffn),
                qkv_bias: Vec::new(),
                q_norm: Vec::new(),
                k_norm: Vec::new(),
            })
            .collect();
        assert_eq!(layers[0].qkv.format(), "mixed");
        let embedding = q4(50, cfg.dim);
        let output = Some(q6(50, cfg.dim));
        Llama::new(cfg, embedding, output, vec![1.0; cfg.dim], layers, threads).unwrap()
    }

    /// How the engine builds a model today (layers of `Q8Matrix` pushed
    /// one by one, norms filled in afterwards, an `Option<Q8Matrix>`
    /// output): still compiles and runs.
    #[test]
    fn layers_of_q8_matrices_are_still_accepted() {
        let cfg = tiny(1).cfg;
        let m = |rows: usize, cols: usize| {
            let w: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 * 0.01).collect();
            Q8Matrix::from_f32(&w, rows, cols)
        };
        let kv = cfg.kv_heads * cfg.head_dim;
        let mut layers = Vec::with_capacity(2);
        for _ in 0..2 {
            layers.push(Layer {
                attn_norm: Vec::new(),
                qkv: Q8Matrix::stack(&[m(cfg.dim, cfg.dim), m(kv, cfg.dim), m(kv, cfg.dim)]),
                wo: m(cfg.dim, cfg.dim),
                ffn_norm: Vec::new(),
                gate_up: Q8Matrix::stack(&[m(cfg.ffn, cfg.dim), m(cfg.ffn, cfg.dim)]),
                down: m(cfg.dim, cfg.ffn),
                qkv_bias: Vec::new(),
                q_norm: Vec::new(),
                k_norm: Vec::new(),
            });
        }
        for layer in layers.iter_mut() {
            layer.attn_norm = vec![1.0; cfg.dim];
            layer.ffn_norm = vec![1.0; cfg.dim];
        }
        let output: Option<Q8Matrix> = Some(m(50, cfg.dim));
        let mut model =
            Llama::new(cfg, m(50, cfg.dim), output, vec![1.0; cfg.dim], layers, 1).unwrap();
        assert_eq!(model.vocab(), 50);
        assert_eq!(alone(&mut model, &[1, 2], 1)[0].len(), 50);
    }

    /// Image bytes at an 8-byte aligned address, as a mapping's are.
    struct Aligned(Vec<u64>, usize);

    impl AsRef<[u8]> for Aligned {
        fn as_ref(&self) -> &[u8] {
            // SAFETY: u64s are initialised bytes; `1` is at most their length.
            unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.1) }
        }
    }

    fn image_of(bytes: &[u8]) -> Image {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: the words hold at least `bytes.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast(), bytes.len())
        };
        Arc::new(Aligned(words, bytes.len()))
    }

    fn write(model: &Llama, key: &[u8; 32]) -> Vec<u8> {
        model
            .write_image(key, io::Cursor::new(Vec::new()))
            .unwrap()
            .into_inner()
    }

    #[test]
    fn a_model_read_back_from_its_image_gives_the_same_bits() {
        let key = [7u8; 32];
        for (mut model, what) in [(tiny(1), "Q8"), (tiny_k_quant(2), "Q4_K_M mix")] {
            let bytes = write(&model, &key);
            let mut mapped = Llama::from_image(image_of(&bytes), &key, 2).unwrap();
            assert_eq!(mapped.cfg.dim, model.cfg.dim, "{what}");
            let prompt = [3, 1, 4, 1, 5];
            assert_eq!(
                alone(&mut mapped, &prompt, 4),
                alone(&mut model, &prompt, 4),
                "{what}"
            );
            // And the bytes written again from the mapped model are the same.
            assert_eq!(write(&mapped, &key), bytes, "{what}");
            check_batched_equals_alone(mapped, what);
        }
    }

    /// A Qwen-style model: heads wider than the hidden size divides
    /// into (Qwen 3), Q/K/V biases (Qwen 2), per-head query and key norms
    /// (Qwen 3), rotation over halves.
    fn tiny_qwen(threads: usize) -> Llama {
        let cfg = Config {
            dim: 64,
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            ffn: 96,
            eps: 1e-6,
            rope_base: 1e6,
            rope_dim: 32,
            rope_halves: true,
        };
        let mut model = Llama::random(cfg, 2, 50, 0.4, threads).unwrap();
        let qkv = cfg.q_dim() + 2 * cfg.kv_heads * cfg.head_dim;
        for (i, layer) in model.layers.iter_mut().enumerate() {
            layer.qkv_bias = (0..qkv).map(|j| ((i + j) % 5) as f32 * 0.02).collect();
            layer.q_norm = (0..32).map(|j| 0.5 + (j % 3) as f32 * 0.25).collect();
            layer.k_norm = (0..32).map(|j| 1.5 - (j % 4) as f32 * 0.25).collect();
        }
        model
    }

    #[test]
    fn qwen_style_layers_batch_like_alone_and_survive_their_image() {
        for threads in [1, 2] {
            check_batched_equals_alone(tiny_qwen(threads), "qwen-style");
        }
        let key = [1u8; 32];
        let mut model = tiny_qwen(1);
        let bytes = write(&model, &key);
        let mut mapped = Llama::from_image(image_of(&bytes), &key, 1).unwrap();
        assert!(mapped.cfg.rope_halves);
        assert_eq!(mapped.layers[1].q_norm, model.layers[1].q_norm);
        let prompt = [5, 6, 7];
        assert_eq!(
            alone(&mut mapped, &prompt, 3),
            alone(&mut model, &prompt, 3)
        );
        // The biases and norms are used: without them the logits change.
        let mut plain = tiny_qwen(1);
        for layer in plain.layers.iter_mut() {
            layer.qkv_bias.clear();
            layer.q_norm.clear();
        }
        assert_ne!(alone(&mut plain, &prompt, 1), alone(&mut model, &prompt, 1));
    }

    #[test]
    fn the_cache_grows_in_blocks_and_holds_at_most_one_unused() {
        let mut model = tiny(1);
        let per_token = model.kv_bytes_per_token();
        assert_eq!(per_token, 2 * 2 * 2 * 16 * 4);
        let mut cache = KvCache::default();
        let mut feed = vec![1u32; 300];
        for _ in 0..3 {
            model
                .forward_batch(&mut [Step {
                    cache: &mut cache,
                    tokens: &feed,
                }])
                .unwrap();
            feed = vec![2];
            let blocks = cache.len().div_ceil(KV_BLOCK);
            assert_eq!(
                cache.bytes(),
                blocks * KV_BLOCK * per_token,
                "{} positions",
                cache.len()
            );
        }
    }

    #[test]
    fn a_damaged_or_foreign_image_is_refused_with_a_reason() {
        let key = [7u8; 32];
        let bytes = write(&tiny_k_quant(1), &key);
        let err = |b: &[u8], k: &[u8; 32]| Llama::from_image(image_of(b), k, 1).err().unwrap();
        assert!(err(&bytes, &[8u8; 32]).contains("another model file"));
        assert!(err(&bytes[..bytes.len() - 8], &key).contains("past its end"));
        assert!(err(&bytes[..40], &key).contains("not a hearth weight image"));
        let mut other = bytes.clone();
        other[8] = 99;
        assert!(err(&other, &key).contains("format 99"));
        // Buffers cut short (the index moved up to follow them) are
        // caught: the index is checked against the file, not trusted.
        let index_at = u64::from_le_bytes(bytes[48..56].try_into().unwrap()) as usize;
        for cut in (64..index_at).step_by(index_at / 50) {
            let mut shorter = bytes[..cut].to_vec();
            shorter.extend_from_slice(&bytes[index_at..]);
            shorter[48..56].copy_from_slice(&(cut as u64).to_le_bytes());
            assert!(
                Llama::from_image(image_of(&shorter), &key, 1).is_err(),
                "cut at {cut}"
            );
        }
        // A shape the configuration does not allow is refused.
        let mut wrong = bytes.clone();
        wrong[index_at..index_at + 8].copy_from_slice(&128u64.to_le_bytes());
        assert!(
            Llama::from_image(image_of(&wrong), &key, 1).is_err(),
            "a wrong dimension"
        );
    }

    #[test]
    fn exp_matches_the_library_within_a_few_ulps() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (fast, libm) = (exp(x), x.exp());
            assert!(
                (fast - libm).abs() <= 4.0 * f32::EPSILON * libm,
                "exp({x}) = {fast}, libm {libm}"
            );
        }
        // Far below the range: a tiny non-negative number, never NaN or
        // garbage from the exponent bits.
        assert!((0.0..1e-37).contains(&exp(-1e4)));
        let mut p = [1.0, 2.0, 3.0, -1e30, 0.5, 0.5, 7.0, 1.0, 2.0, 9.0];
        softmax::<false>(&mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[9] > p[6] && p[6] > p[2] && p[3] < 1e-30);
    }

    /// The AVX2 kernels (three heads per pass, vector exp) give the
    /// portable code's bits, however the cache is split into parts.
    #[test]
    fn attention_gets_the_same_bits_on_every_path() {
        let c = Config {
            dim: 576,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            ffn: 1536,
            eps: 1e-5,
            rope_base: 1e4,
            rope_dim: 64,
            rope_halves: false,
        };
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let len = 37;
        let keys: Vec<f32> = (0..len * 192).map(|_| next() * 4.0).collect();
        let values: Vec<f32> = (0..len * 192).map(|_| next()).collect();
        let q: Vec<f32> = (0..576).map(|_| next() * 4.0).collect();
        let mut portable = vec![0f32; 576];
        attention_any::<false, false>(&c, 0, &q, &[(&keys, &values)], &mut portable);
        let split = 20 * 192;
        for parts in [
            vec![(&keys[..], &values[..])],
            vec![
                (&keys[..split], &values[..split]),
                (&keys[split..], &values[split..]),
            ],
        ] {
            let mut out = vec![0f32; 576];
            attention(&c, &q, &parts, &mut out);
            assert_eq!(out, portable, "{} parts", parts.len());
            // Group by group (as one decoding row is spread over threads):
            // each head's bits are the same.
            let per = (c.heads / c.kv_heads) * c.head_dim;
            let mut grouped = vec![0f32; 576];
            for (g, (o, q)) in grouped.chunks_mut(per).zip(q.chunks(per)).enumerate() {
                attention_of(&c, g * (c.heads / c.kv_heads), q, &parts, o);
            }
            assert_eq!(grouped, portable, "by group, {} parts", parts.len());
            // The 8-lane path too where the 16-lane one ran above.
            #[cfg(target_arch = "x86_64")]
            if crate::avx2() {
                // SAFETY: AVX2/FMA present (checked).
                unsafe { attention_avx2(&c, 0, &q, &parts, &mut out) };
                assert_eq!(out, portable, "AVX2, {} parts", parts.len());
            }
        }
        let mut a: Vec<f32> = (0..37).map(|_| next() * 30.0).collect();
        let mut b = a.clone();
        softmax::<false>(&mut a);
        #[cfg(target_arch = "x86_64")]
        if crate::avx2() {
            // SAFETY: AVX2/FMA present (checked).
            unsafe { softmax_avx2(&mut b) };
            assert_eq!(a, b);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_avx2(x: &mut [f32]) {
        softmax::<true>(x);
    }

    #[test]
    fn a_shared_prefix_continues_like_the_original() {
        let mut model = tiny(1);
        let mut first = KvCache::default();
        model
            .forward_batch(&mut [Step {
                cache: &mut first,
                tokens: &[3, 1, 4, 1, 5, 9],
            }])
            .unwrap();
        let mut copy = KvCache::default();
        copy.share_prefix(&mut first, 4);
        assert_eq!(copy.len(), 4);
        let from_copy = model
            .forward_batch(&mut [Step {
                cache: &mut copy,
                tokens: &[2, 6],
            }])
            .unwrap()
            .to_vec();
        first.truncate(4);
        let from_truncated = model
            .forward_batch(&mut [Step {
                cache: &mut first,
                tokens: &[2, 6],
            }])
            .unwrap()
            .to_vec();
        let fresh = alone(&mut model, &[3, 1, 4, 1, 2, 6], 1);
        assert_eq!(from_copy, fresh[0]);
        assert_eq!(from_truncated, fresh[0]);

        // `first` now holds a shared segment (4 positions) and 2 of its
        // own; a prefix of 5 spans both, freezing the second part.
        let mut third = KvCache::default();
        third.share_prefix(&mut first, 5);
        let expected = alone(&mut model, &[3, 1, 4, 1, 2, 7], 1);
        let mut step = |cache: &mut KvCache, tokens: &[u32]| {
            model
                .forward_batch(&mut [Step { cache, tokens }])
                .unwrap()
                .to_vec()
        };
        assert_eq!(step(&mut third, &[7]), expected[0]);
        // Cutting back into the shared part and going on from there.
        third.truncate(2);
        assert_eq!(third.len(), 2);
        assert_eq!(step(&mut third, &[4, 1, 2, 7]), expected[0]);
        // The source is unchanged by all of this.
        assert_eq!(
            step(&mut first, &[9]),
            alone(&mut model, &[3, 1, 4, 1, 2, 6, 9], 1)[0]
        );
    }
}
