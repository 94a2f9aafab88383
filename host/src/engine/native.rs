//! hearth's own CPU implementation of dense decoder models (Llama,
//! SmolLM, Mistral-style; Qwen 2 and 2.5 with their Q/K/V biases; Qwen 3
//! with its per-head query and key norms), used instead of candle's on the
//! CPU. Why: candle's CPU path spends its time in 8-bit×8-bit dot products
//! and per-op tensor bookkeeping; this one runs fused projections through
//! `hearth-kernels` (the file's weights × 16-bit activations, see there),
//! keeps the token embedding quantised instead of expanding it to f32, and
//! allocates nothing per token.
//!
//! Weights stay in the file's format where a kernel reads it: Q8_0, Q4_0,
//! Q5_0, Q4_K, Q5_K and Q6_K (what the common Q4_K_M and Q5_K_M files hold)
//! are used as they are; any other type is widened to f32 at load and
//! re-quantised to 8-bit blocks.

use super::error::EngineError;
use super::gguf::ModelFile;
use super::weight_cache::{Source, WeightCache};
use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor};
use hearth_kernels::llama::{Config, Layer, Llama, Step};
use hearth_kernels::{Q4KMatrix, Q6KMatrix, Q8Matrix, Weights};
use std::fs::File;
use std::io::BufReader;

/// A dense llama-family model on hearth's CPU kernels.
pub struct NativeLlama {
    model: Llama,
}

impl NativeLlama {
    /// Whether this file can run here: a dense llama, qwen2 or qwen3
    /// model whose matrices' rows are whole 32-value blocks.
    pub fn supports(file: &ModelFile) -> bool {
        let Some(arch) = file.str("general.architecture") else {
            return false;
        };
        let blocks = |key: &str| {
            file.arch_int(key)
                .is_some_and(|d| d > 0 && d.is_multiple_of(32))
        };
        NATIVE.contains(&arch)
            && file.arch_int("expert_count").unwrap_or(0) == 0
            && blocks("embedding_length")
            && blocks("feed_forward_length")
            && file
                .heads()
                .is_some_and(|(heads, _, head_dim)| (heads * head_dim).is_multiple_of(32))
    }

    /// Loads the weights: mapped from their image in `cache` when there is
    /// one (made on the first load), else read from the file (see
    /// [`read`]).
    pub fn load(
        file: &ModelFile,
        threads: usize,
        cache: Option<&WeightCache>,
    ) -> Result<NativeLlama, EngineError> {
        let started = std::time::Instant::now();
        let (model, source) = match cache {
            Some(cache) => cache.load(&file.path, threads, || read(file, threads))?,
            None => (read(file, threads)?, Source::Private),
        };
        tracing::info!(
            model = %file.path.display(),
            weights = ?source,
            ms = started.elapsed().as_millis() as u64,
            "native weights loaded"
        );
        Ok(NativeLlama { model })
    }

    /// Bytes of key/value cache one position of a sequence takes.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.model.kv_bytes_per_token()
    }

    /// Evaluates a batch of sequences (see [`Llama::forward_batch`]);
    /// returns one row of logits per step, concatenated.
    pub fn forward_batch(&mut self, steps: &mut [Step<'_>]) -> Result<Vec<f32>, EngineError> {
        self.model
            .forward_batch(steps)
            .map(<[f32]>::to_vec)
            .map_err(EngineError::Model)
    }
}

/// Reads the weights from the file: Q8_0, Q4_0, Q5_0 and Q4_K–Q6_K
/// matrices as they are, any other type converted to 8-bit blocks.
fn read(file: &ModelFile, threads: usize) -> Result<Llama, EngineError> {
    let bad = |reason: String| EngineError::BadFile {
        path: file.path.clone(),
        reason,
    };
    let arch = file.architecture()?;
    let need = |key: &str| {
        file.arch_int(key)
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("no {arch}.{key}")))
    };
    let dim = need("embedding_length")?;
    let (heads, kv_heads, head_dim) = file
        .heads()
        .ok_or_else(|| bad(format!("no usable {arch}.attention.head_count")))?;
    let layers_n = need("block_count")?;
    let ffn = need("feed_forward_length")?;
    let float = |key: &str, default: f32| {
        file.content
            .metadata
            .get(&format!("{arch}.{key}"))
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(default)
    };
    let cfg = Config {
        dim,
        heads,
        kv_heads,
        head_dim,
        ffn,
        eps: float("attention.layer_norm_rms_epsilon", 1e-5),
        rope_base: float("rope.freq_base", 10_000.0),
        rope_dim: file
            .arch_int("rope.dimension_count")
            .map_or(head_dim, |v| v as usize),
        // llama.cpp's converter permutes llama's Q and K so that rotary
        // pairs are neighbours; Qwen's are stored as trained, in halves.
        rope_halves: arch != "llama",
    };
    let mut reader = BufReader::new(File::open(&file.path).map_err(|e| EngineError::Io {
        path: file.path.clone(),
        reason: e.to_string(),
    })?);
    let cpu = Device::Cpu;
    let mut tensor = |name: &str| -> Result<QTensor, EngineError> {
        file.content
            .tensor(&mut reader, name, &cpu)
            .map_err(|e| bad(format!("tensor {name}: {e}")))
    };
    let mut matrix = |name: &str| -> Result<Weights, EngineError> {
        to_weights(&tensor(name)?).map_err(|e| bad(format!("tensor {name}: {e}")))
    };
    let embedding = matrix("token_embd.weight")?;
    let output = if file.content.tensor_infos.contains_key("output.weight") {
        Some(matrix("output.weight")?)
    } else {
        None
    };
    let mut layers = Vec::with_capacity(layers_n);
    for i in 0..layers_n {
        let p = |n: &str| format!("blk.{i}.{n}.weight");
        // Parts of different formats (Q4_K_M files keep V in Q6_K)
        // stay as they are, side by side.
        let qkv = Weights::stack([
            matrix(&p("attn_q"))?,
            matrix(&p("attn_k"))?,
            matrix(&p("attn_v"))?,
        ]);
        let gate_up = Weights::stack([matrix(&p("ffn_gate"))?, matrix(&p("ffn_up"))?]);
        layers.push(Layer {
            attn_norm: Vec::new(),
            qkv,
            wo: matrix(&p("attn_output"))?,
            ffn_norm: Vec::new(),
            gate_up,
            down: matrix(&p("ffn_down"))?,
            qkv_bias: Vec::new(),
            q_norm: Vec::new(),
            k_norm: Vec::new(),
        });
    }
    let mut vector = |name: &str| -> Result<Vec<f32>, EngineError> {
        let t = file
            .content
            .tensor(&mut reader, name, &cpu)
            .and_then(|q| q.dequantize(&cpu))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        Ok(t)
    };
    let has = |name: &str| file.content.tensor_infos.contains_key(name);
    for (i, layer) in layers.iter_mut().enumerate() {
        let p = |n: &str| format!("blk.{i}.{n}");
        layer.attn_norm = vector(&p("attn_norm.weight"))?;
        layer.ffn_norm = vector(&p("ffn_norm.weight"))?;
        // Qwen 2's Q, K and V biases (all three or none).
        if has(&p("attn_q.bias")) {
            for name in ["attn_q.bias", "attn_k.bias", "attn_v.bias"] {
                let bias = vector(&p(name))?;
                layer.qkv_bias.extend(bias);
            }
        }
        // Qwen 3's per-head query and key norms.
        if has(&p("attn_q_norm.weight")) {
            layer.q_norm = vector(&p("attn_q_norm.weight"))?;
            layer.k_norm = vector(&p("attn_k_norm.weight"))?;
        }
    }
    let out_norm = vector("output_norm.weight")?;
    Llama::new(cfg, embedding, output, out_norm, layers, threads).map_err(EngineError::Model)
}

/// Architectures the native path runs.
const NATIVE: &[&str] = &["llama", "qwen2", "qwen3"];

/// A GGUF weight matrix in the format the kernels read: Q4_K, Q5_K, Q6_K,
/// Q4_0 and Q5_0 blocks as they are, anything else as 8-bit blocks (see
/// [`to_q8`]).
fn to_weights(t: &QTensor) -> candle_core::Result<Weights> {
    use hearth_kernels::{Q4_0Matrix, Q5_0Matrix, Q5KMatrix};
    let (rows, cols) = shape(t)?;
    Ok(match t.dtype() {
        // GGUF stores K-quants only for rows that are whole super-blocks
        // (256 values).
        GgmlDType::Q4K => Q4KMatrix::from_q4_k(&t.data()?, rows, cols).into(),
        GgmlDType::Q5K => Q5KMatrix::from_q5_k(&t.data()?, rows, cols).into(),
        GgmlDType::Q6K => Q6KMatrix::from_q6_k(&t.data()?, rows, cols).into(),
        // And Q4_0 and Q5_0 only for rows of whole 32-value blocks (which
        // `supports` asks of every matrix's columns anyway).
        GgmlDType::Q4_0 => Q4_0Matrix::from_q4_0(&t.data()?, rows, cols).into(),
        GgmlDType::Q5_0 => Q5_0Matrix::from_q5_0(&t.data()?, rows, cols).into(),
        _ => to_q8(t)?.into(),
    })
}

fn shape(t: &QTensor) -> candle_core::Result<(usize, usize)> {
    match t.shape().dims() {
        [r, c] => Ok((*r, *c)),
        other => candle_core::bail!("expected a matrix, got shape {other:?}"),
    }
}

/// Any GGUF weight matrix as 8-bit blocks: Q8_0 is taken as it is; other
/// types go through f32.
fn to_q8(t: &QTensor) -> candle_core::Result<Q8Matrix> {
    let (rows, cols) = shape(t)?;
    if t.dtype() == GgmlDType::Q8_0 {
        let data = t.data()?;
        let blocks = rows * cols / 32;
        let mut scales = Vec::with_capacity(blocks);
        let mut quants = Vec::with_capacity(rows * cols);
        for b in data.chunks_exact(34).take(blocks) {
            scales.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            quants.extend(b[2..].iter().map(|v| *v as i8));
        }
        return Ok(Q8Matrix::from_q8_0(scales, quants, rows, cols));
    }
    let full = t
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(Q8Matrix::from_f32(&full, rows, cols))
}
