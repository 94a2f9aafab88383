//! The llama architecture (Llama, SmolLM, Mistral-style dense models) on
//! these kernels: fused projections, one f32 KV cache per sequence, and
//! batches of sequences evaluated together (continuous batching).

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
    logits: Vec<f32>,
    /// (sequence, position) of each row of the batch.
    rows: Vec<(usize, usize)>,
    /// Rotary (sin, cos) per row and frequency.
    rot: Vec<(f32, f32)>,
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
        let qkv_dim = c.dim + 2 * kv_dim;
        let vocab = self.embedding.rows();
        let layers = self.layers.len();
        let s = &mut self.scratch;
        // Which sequence and position each row of the batch is.
        s.rows.clear();
        for (i, step) in steps.iter_mut().enumerate() {
            step.cache.ensure_layers(layers);
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
        s.attn.resize(n * c.dim, 0.0);
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
            matmul(&layer.qkv, &s.a, &mut s.qkv, pool);
            for ((row, &(seq, _)), rot) in s
                .qkv
                .chunks_exact_mut(qkv_dim)
                .zip(&s.rows)
                .zip(s.rot.chunks_exact(half))
            {
                let (q, kv) = row.split_at_mut(c.dim);
                let (k, v) = kv.split_at_mut(kv_dim);
                for head in q.chunks_exact_mut(c.head_dim) {
                    rope(head, rot);
                }
                for head in k.chunks_exact_mut(c.head_dim) {
                    rope(head, rot);
                }
                // Rows of one sequence come in position order, so pushing
                // keeps the cache position-major.
                let cache = &mut steps[seq].cache;
                cache.keys[l].extend_from_slice(k);
                cache.values[l].extend_from_slice(v);
            }
            let attend = |(t, out): (usize, &mut [f32])| {
                let (seq, p) = s.rows[t];
                let cache = &steps[seq].cache;
                attention(
                    &c,
                    &s.qkv[t * qkv_dim..t * qkv_dim + c.dim],
                    &cache.keys[l][..(p + 1) * kv_dim],
                    &cache.values[l][..(p + 1) * kv_dim],
                    out,
                );
            };
            // Rows are independent: spread them over the pool when there
            // are several (a prompt, or a batch of decoding sequences).
            if pool.is_some() && n > 1 {
                use rayon::prelude::*;
                s.attn
                    .par_chunks_exact_mut(c.dim)
                    .enumerate()
                    .for_each(attend);
            } else {
                s.attn.chunks_exact_mut(c.dim).enumerate().for_each(attend);
            }
            s.a.quantize(&s.attn, c.dim);
            matmul(&layer.wo, &s.a, &mut s.proj, pool);
            add(&mut s.x, &s.proj);
            rms_norm(&s.x, &layer.ffn_norm, c.eps, &mut s.h);
            s.a.quantize(&s.h, c.dim);
            matmul(&layer.gate_up, &s.a, &mut s.gate_up, pool);
            swiglu(&s.gate_up, c.ffn, &mut s.act);
            s.a.quantize(&s.act, c.ffn);
            matmul(&layer.down, &s.a, &mut s.proj, pool);
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
        matmul(output, &s.a, &mut s.logits, pool);
        Ok(())
    }
}

/// One sequence's part of a [`Llama::forward_batch`] call.
pub struct Step<'a> {
    /// The sequence's keys and values so far; the tokens go after them.
    pub cache: &'a mut KvCache,
    /// Tokens to evaluate (at least one).
    pub tokens: &'a [u32],
}

/// The keys and values of one sequence, per layer, position-major. Grows
/// as the sequence does; nothing is reserved for the whole context.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
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

    /// Keeps the first `tokens` positions (a shared prompt prefix).
    pub fn truncate(&mut self, tokens: usize) {
        if tokens >= self.len {
            return;
        }
        let per = self.keys.first().map_or(0, |k| k.len() / self.len.max(1));
        for (k, v) in self.keys.iter_mut().zip(&mut self.values) {
            k.truncate(tokens * per);
            v.truncate(tokens * per);
        }
        self.len = tokens;
    }

    /// Becomes a copy of the first `tokens` positions of `other` (another
    /// sequence that starts with the same prompt).
    pub fn copy_prefix(&mut self, other: &KvCache, tokens: usize) {
        let tokens = tokens.min(other.len);
        let per = other.keys.first().map_or(0, |k| k.len() / other.len.max(1));
        self.ensure_layers(other.keys.len());
        for (dst, src) in self.keys.iter_mut().zip(&other.keys) {
            dst.clear();
            dst.extend_from_slice(&src[..tokens * per]);
        }
        for (dst, src) in self.values.iter_mut().zip(&other.values) {
            dst.clear();
            dst.extend_from_slice(&src[..tokens * per]);
        }
        self.len = tokens;
    }

    fn ensure_layers(&mut self, layers: usize) {
        if self.keys.len() != layers {
            self.keys = vec![Vec::new(); layers];
            self.values = vec![Vec::new(); layers];
            self.len = 0;
        }
    }
}

/// Causal attention of one query row (all heads) over a sequence's cache.
fn attention(c: &Config, q: &[f32], keys: &[f32], values: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        unsafe { attention_avx2(c, q, keys, values, out) };
        return;
    }
    attention_any(c, q, keys, values, out);
}

/// The same code compiled for 8-lane vectors with fused multiply-adds.
/// Same operations in the same order as the portable build (which uses
/// `mul_add` too), so the results do not depend on which ran.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_avx2(c: &Config, q: &[f32], keys: &[f32], values: &[f32], out: &mut [f32]) {
    attention_any(c, q, keys, values, out);
}

#[inline(always)]
fn attention_any(c: &Config, q: &[f32], keys: &[f32], values: &[f32], out: &mut [f32]) {
    // A head size known at compile time keeps a head's query and output in
    // registers while the positions stream past.
    match c.head_dim {
        64 => attention_heads::<64>(c, q, keys, values, out),
        128 => attention_heads::<128>(c, q, keys, values, out),
        _ => attention_heads::<0>(c, q, keys, values, out),
    }
}

/// `HD` is the head size, or 0 for "read it from `c`".
#[inline(always)]
fn attention_heads<const HD: usize>(
    c: &Config,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
) {
    let hd = if HD == 0 { c.head_dim } else { HD };
    let kv_dim = c.kv_heads * hd;
    let len = keys.len() / kv_dim;
    let group = c.heads / c.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = vec![0f32; len];
    for h in 0..c.heads {
        let kv = (h / group) * hd;
        let qh = &q[h * hd..(h + 1) * hd];
        // Four positions at a time: four independent chains of fused
        // multiply-adds keep the FMA units busy, and one reduction tree
        // serves all four. A lone tail position goes through the same
        // arithmetic (its lanes of the tree are simply unused).
        let key = |j: usize| &keys[(j * kv_dim + kv).min(keys.len() - hd)..][..hd];
        let mut j = 0;
        while j < len {
            let mut acc = [[0f32; 8]; 4];
            for (i, acc) in acc.iter_mut().enumerate() {
                lanes_dot::<HD>(qh, key(j + i), acc);
            }
            let sums = reduce4(&acc);
            for (i, s) in sums.iter().enumerate().take(len - j) {
                scores[j + i] = s * scale;
            }
            j += 4;
        }
        softmax(&mut scores);
        let o = &mut out[h * hd..(h + 1) * hd];
        if HD == 0 {
            accumulate(&scores, values, kv_dim, kv, o);
        } else {
            let mut a = [0f32; HD];
            accumulate(&scores, values, kv_dim, kv, &mut a);
            o.copy_from_slice(&a);
        }
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

/// The totals of four 8-lane partial sums, adding neighbours pairwise
/// (the tree two rounds of `vhaddps` build).
#[inline(always)]
fn reduce4(acc: &[[f32; 8]; 4]) -> [f32; 4] {
    acc.map(|a| ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])))
}

/// `acc = Σ_j p_j · v_j` over the positions, in position order.
#[inline(always)]
fn accumulate(p: &[f32], values: &[f32], kv_dim: usize, offset: usize, acc: &mut [f32]) {
    acc.fill(0.0);
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
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E).round_ties_even();
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
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
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
fn softmax(x: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; 8];
    for (i, v) in x.iter().enumerate() {
        let l = i % 8;
        m[l] = if *v > m[l] { *v } else { m[l] };
    }
    let max = m.into_iter().fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
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
    let sum = reduce4(&[sums, [0.0; 8], [0.0; 8], [0.0; 8]])[0];
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
        };
        let mut seed = 0x2545_f491_u32;
        let mut matrix = |rows: usize, cols: usize| {
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed as f32 / u32::MAX as f32 - 0.5) * 0.4
                })
                .collect();
            Q8Matrix::from_f32(&data, rows, cols)
        };
        let kv = cfg.kv_heads * cfg.head_dim;
        let layers = (0..2)
            .map(|_| Layer {
                attn_norm: vec![1.0; cfg.dim],
                qkv: matrix(cfg.dim + 2 * kv, cfg.dim),
                wo: matrix(cfg.dim, cfg.dim),
                ffn_norm: vec![1.0; cfg.dim],
                gate_up: matrix(2 * cfg.ffn, cfg.dim),
                down: matrix(cfg.dim, cfg.ffn),
            })
            .collect();
        let embedding = matrix(50, cfg.dim);
        Llama::new(cfg, embedding, None, vec![1.0; cfg.dim], layers, threads).unwrap()
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

    #[test]
    fn sequences_get_the_same_bits_batched_as_alone() {
        for threads in [1, 2] {
            let mut model = tiny(threads);
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
                    assert_eq!(
                        row, expected[i][step],
                        "threads {threads} seq {i} step {step}"
                    );
                    feeds[i] = vec![argmax(row)];
                }
            }
        }
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
        softmax(&mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[9] > p[6] && p[6] > p[2] && p[3] < 1e-30);
    }

    #[test]
    fn a_copied_prefix_continues_like_the_original() {
        let mut model = tiny(1);
        let mut first = KvCache::default();
        model
            .forward_batch(&mut [Step {
                cache: &mut first,
                tokens: &[3, 1, 4, 1, 5, 9],
            }])
            .unwrap();
        let mut copy = KvCache::default();
        copy.copy_prefix(&first, 4);
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
    }
}
