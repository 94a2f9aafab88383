//! The llama architecture (Llama, SmolLM, Mistral-style dense models) on
//! these kernels: fused projections, an f32 KV cache, no allocation per
//! token once the buffers have grown.

use crate::{Activations, Q8Matrix, dot_f32, matmul};

/// One transformer block's weights.
pub struct Layer {
    /// RMS norm before attention.
    pub attn_norm: Vec<f32>,
    /// Q, K and V stacked.
    pub qkv: Q8Matrix,
    /// Attention output.
    pub wo: Q8Matrix,
    /// RMS norm before the feed-forward block.
    pub ffn_norm: Vec<f32>,
    /// Gate and up stacked.
    pub gate_up: Q8Matrix,
    /// Down projection.
    pub down: Q8Matrix,
    /// Cached keys, position-major.
    pub keys: Vec<f32>,
    /// Cached values, position-major.
    pub values: Vec<f32>,
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
}

/// A llama-architecture model.
pub struct Llama {
    cfg: Config,
    embedding: Q8Matrix,
    /// `None` when the output layer is tied to the embedding.
    output: Option<Q8Matrix>,
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
    scores: Vec<f32>,
    logits: Vec<f32>,
    a: Activations,
}

impl Llama {
    /// Assembles a model; `output` is `None` when tied to the embedding.
    pub fn new(
        cfg: Config,
        embedding: Q8Matrix,
        output: Option<Q8Matrix>,
        out_norm: Vec<f32>,
        layers: Vec<Layer>,
        threads: usize,
    ) -> Result<Llama, String> {
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

    /// Keeps the first `tokens` positions of the KV cache (a shared prompt
    /// prefix) and forgets the rest.
    pub fn truncate(&mut self, tokens: usize) {
        let kv_dim = self.cfg.kv_heads * self.cfg.head_dim;
        for l in &mut self.layers {
            l.keys.truncate(tokens * kv_dim);
            l.values.truncate(tokens * kv_dim);
        }
    }

    /// Forgets the KV cache.
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            l.keys.clear();
            l.values.clear();
        }
    }

    /// Feeds `tokens` at positions `pos..`; returns the next token's logits.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<&[f32], String> {
        // Run the whole pass on a pool thread, so this thread takes part in
        // every product instead of sleeping and being woken 100+ times per
        // token.
        match self.pool.take() {
            Some(pool) => {
                let result = pool.install(|| self.forward_on(tokens, pos, Some(&pool)));
                self.pool = Some(pool);
                result?;
            }
            None => self.forward_on(tokens, pos, None)?,
        }
        Ok(&self.scratch.logits)
    }

    fn forward_on(
        &mut self,
        tokens: &[u32],
        pos: usize,
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), String> {
        let c = self.cfg;
        let n = tokens.len();
        let kv_dim = c.kv_heads * c.head_dim;
        let qkv_dim = c.dim + 2 * kv_dim;
        let vocab = self.embedding.rows();
        let s = &mut self.scratch;
        if self
            .layers
            .first()
            .is_some_and(|l| l.keys.len() != pos * kv_dim)
        {
            return Err(format!("position {pos} does not follow the cache"));
        }
        s.x.resize(n * c.dim, 0.0);
        for (t, &id) in tokens.iter().enumerate() {
            if id as usize >= vocab {
                return Err(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                ));
            }
            self.embedding
                .row(id as usize, &mut s.x[t * c.dim..(t + 1) * c.dim]);
        }
        s.h.resize(n * c.dim, 0.0);
        s.qkv.resize(n * qkv_dim, 0.0);
        s.attn.resize(n * c.dim, 0.0);
        s.proj.resize(n * c.dim, 0.0);
        s.gate_up.resize(n * 2 * c.ffn, 0.0);
        s.act.resize(n * c.ffn, 0.0);
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        for layer in &mut self.layers {
            rms_norm(&s.x, &layer.attn_norm, c.eps, &mut s.h);
            s.a.quantize(&s.h, c.dim);
            matmul(&layer.qkv, &s.a, &mut s.qkv, pool);
            for t in 0..n {
                let p = pos + t;
                let row = &mut s.qkv[t * qkv_dim..(t + 1) * qkv_dim];
                let (q, kv) = row.split_at_mut(c.dim);
                let (k, v) = kv.split_at_mut(kv_dim);
                for head in q.chunks_exact_mut(c.head_dim) {
                    rope(head, p, &self.inv_freq);
                }
                for head in k.chunks_exact_mut(c.head_dim) {
                    rope(head, p, &self.inv_freq);
                }
                layer.keys.extend_from_slice(k);
                layer.values.extend_from_slice(v);
            }
            for t in 0..n {
                let len = pos + t + 1;
                s.scores.resize(len, 0.0);
                for h in 0..c.heads {
                    let kvh = h / group;
                    let q = &s.qkv[t * qkv_dim + h * c.head_dim..][..c.head_dim];
                    for (j, sc) in s.scores.iter_mut().enumerate() {
                        let k = &layer.keys[j * kv_dim + kvh * c.head_dim..][..c.head_dim];
                        *sc = dot_f32(q, k) * scale;
                    }
                    softmax(&mut s.scores);
                    let out = &mut s.attn[t * c.dim + h * c.head_dim..][..c.head_dim];
                    out.fill(0.0);
                    for (j, p) in s.scores.iter().enumerate() {
                        let v = &layer.values[j * kv_dim + kvh * c.head_dim..][..c.head_dim];
                        for (o, v) in out.iter_mut().zip(v) {
                            *o += p * v;
                        }
                    }
                }
            }
            s.a.quantize(&s.attn, c.dim);
            matmul(&layer.wo, &s.a, &mut s.proj, pool);
            add(&mut s.x, &s.proj);
            rms_norm(&s.x, &layer.ffn_norm, c.eps, &mut s.h);
            s.a.quantize(&s.h, c.dim);
            matmul(&layer.gate_up, &s.a, &mut s.gate_up, pool);
            for t in 0..n {
                let gu = &s.gate_up[t * 2 * c.ffn..(t + 1) * 2 * c.ffn];
                let (g, u) = gu.split_at(c.ffn);
                for ((a, g), u) in s.act[t * c.ffn..(t + 1) * c.ffn].iter_mut().zip(g).zip(u) {
                    *a = g / (1.0 + (-g).exp()) * u;
                }
            }
            s.a.quantize(&s.act, c.ffn);
            matmul(&layer.down, &s.a, &mut s.proj, pool);
            add(&mut s.x, &s.proj);
        }
        // Only the last position's logits are needed.
        let last = &s.x[(n - 1) * c.dim..];
        s.h.resize(c.dim, 0.0);
        rms_norm(last, &self.out_norm, c.eps, &mut s.h);
        s.a.quantize(&s.h, c.dim);
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        s.logits.resize(output.rows(), 0.0);
        matmul(output, &s.a, &mut s.logits, pool);
        Ok(())
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

/// Interleaved rotary embedding (GGUF llama: pairs 2i, 2i+1).
fn rope(head: &mut [f32], pos: usize, inv_freq: &[f32]) {
    for (i, f) in inv_freq.iter().enumerate() {
        let (sin, cos) = (pos as f32 * f).sin_cos();
        let (a, b) = (head[2 * i], head[2 * i + 1]);
        head[2 * i] = a * cos - b * sin;
        head[2 * i + 1] = a * sin + b * cos;
    }
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
