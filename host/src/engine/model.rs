//! The network itself: candle-transformers' quantized implementations of
//! the supported architectures behind one interface.

use super::error::EngineError;
use super::gguf::ModelFile;
use super::native::NativeLlama;
use super::weight_cache::WeightCache;
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
pub use hearth_kernels::llama::KvCache;
use hearth_kernels::llama::Step;
use std::fs::File;
use std::io::BufReader;

/// Prompt tokens evaluated per forward pass: bounds the attention
/// scratch memory for long prompts without slowing short ones.
pub const PREFILL_CHUNK: usize = 512;

/// Where the model runs.
pub fn device() -> Result<Device, EngineError> {
    #[cfg(feature = "cuda")]
    {
        // `cuda_if_available` does not fall back when built with CUDA: it
        // always opens the GPU, so a machine without a usable one would
        // fail every model load, even on the CPU-only native backend.
        match Device::new_cuda(0) {
            Ok(device) => Ok(device),
            Err(e) => {
                tracing::warn!(error = %e, "no usable CUDA device; running the model on the CPU");
                Ok(Device::Cpu)
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(Device::Cpu)
    }
}

/// Which implementation runs the model.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// hearth's own CPU kernels where they support the model, else candle.
    #[default]
    Auto,
    /// hearth's CPU kernels (dense llama models).
    Native,
    /// candle (every supported architecture; CUDA when built with it).
    Candle,
}

/// A loaded network with its KV cache.
pub enum Network {
    /// hearth's CPU kernels.
    Native(Box<NativeLlama>),
    /// Llama, SmolLM, Mistral-style models.
    Llama(quantized_llama::ModelWeights),
    /// Qwen 2 / 2.5.
    Qwen2(quantized_qwen2::ModelWeights),
    /// Qwen 3.
    Qwen3(quantized_qwen3::ModelWeights),
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Network::Native(_) => "Network::Native",
            Network::Llama(_) => "Network::Llama",
            Network::Qwen2(_) => "Network::Qwen2",
            Network::Qwen3(_) => "Network::Qwen3",
        })
    }
}

impl Network {
    /// Loads the weights of an opened file (whose header it consumes).
    pub fn load(
        file: ModelFile,
        device: &Device,
        backend: Backend,
        threads: usize,
        cache: Option<&WeightCache>,
    ) -> Result<Network, EngineError> {
        file.check_supported()?;
        let native_ok = device.is_cpu() && NativeLlama::supports(&file);
        match backend {
            Backend::Native if !native_ok => {
                return Err(EngineError::Unsupported {
                    path: file.path.clone(),
                    reason: "the native backend runs dense llama, qwen2 and qwen3 models on the CPU; use --backend candle".into(),
                });
            }
            Backend::Native | Backend::Auto if native_ok => {
                return Ok(Network::Native(Box::new(NativeLlama::load(
                    &file, threads, cache,
                )?)));
            }
            _ => {}
        }
        let path = file.path.clone();
        let bad = |e: candle_core::Error| EngineError::BadFile {
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut reader = BufReader::new(File::open(&file.path).map_err(|e| EngineError::Io {
            path: file.path.clone(),
            reason: e.to_string(),
        })?);
        let arch = file.architecture()?.to_string();
        let content = file.content;
        Ok(match arch.as_str() {
            "llama" => Network::Llama(
                quantized_llama::ModelWeights::from_gguf(content, &mut reader, device)
                    .map_err(bad)?,
            ),
            "qwen2" => Network::Qwen2(
                quantized_qwen2::ModelWeights::from_gguf(content, &mut reader, device)
                    .map_err(bad)?,
            ),
            "qwen3" => Network::Qwen3(
                quantized_qwen3::ModelWeights::from_gguf(content, &mut reader, device)
                    .map_err(bad)?,
            ),
            other => unreachable!("check_supported let {other} through"),
        })
    }

    /// Whether several sequences can be evaluated in one pass (hearth's
    /// kernels, with a cache per sequence); candle's models hold a single
    /// KV cache, so they serve one sequence at a time.
    pub fn batches(&self) -> bool {
        matches!(self, Network::Native(_))
    }

    /// Keeps the first `tokens` positions of the cache the network holds
    /// itself, where it can; returns how many were kept. hearth's kernels
    /// keep no cache of their own (each sequence brings its [`KvCache`]).
    pub fn keep_prefix(&mut self, tokens: usize) -> usize {
        match self {
            Network::Native(_) => tokens,
            _ => {
                self.clear();
                0
            }
        }
    }

    /// Bytes of key/value cache one position of a sequence takes, where
    /// hearth's kernels hold the cache (candle's models keep their own).
    pub fn kv_bytes_per_token(&self) -> Option<usize> {
        match self {
            Network::Native(n) => Some(n.kv_bytes_per_token()),
            _ => None,
        }
    }

    /// Forgets the cache the network holds itself (candle's models).
    pub fn clear(&mut self) {
        match self {
            Network::Native(_) => {}
            Network::Llama(m) => m.clear_kv_cache(),
            Network::Qwen2(m) => m.clear_kv_cache(),
            Network::Qwen3(m) => m.clear_kv_cache(),
        }
    }

    fn forward_chunk(
        &mut self,
        tokens: &[u32],
        pos: usize,
        device: &Device,
    ) -> Result<Vec<f32>, EngineError> {
        let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let logits = match self {
            Network::Native(_) => unreachable!("hearth's kernels evaluate batches"),
            Network::Llama(m) => m.forward(&input, pos)?,
            Network::Qwen2(m) => m.forward(&input, pos)?,
            Network::Qwen3(m) => m.forward(&input, pos)?,
        };
        Ok(logits
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?)
    }

    /// Feeds each item's tokens after what its sequence holds and returns
    /// the logits for the token after each item's last one, one row per
    /// item, concatenated.
    pub fn forward_batch(
        &mut self,
        batch: &mut [BatchItem<'_>],
        device: &Device,
    ) -> Result<Vec<f32>, EngineError> {
        if let Network::Native(m) = self {
            let mut steps: Vec<Step<'_>> = batch
                .iter_mut()
                .map(|b| Step {
                    cache: &mut *b.cache,
                    tokens: b.tokens,
                })
                .collect();
            return m.forward_batch(&mut steps);
        }
        let [item] = batch else {
            return Err(EngineError::Model(
                "candle's models evaluate one sequence at a time".into(),
            ));
        };
        let mut logits = Vec::new();
        let mut at = item.pos;
        for chunk in item.tokens.chunks(PREFILL_CHUNK) {
            logits = self.forward_chunk(chunk, at, device)?;
            at += chunk.len();
        }
        if logits.is_empty() {
            return Err(EngineError::Model("nothing to evaluate".into()));
        }
        Ok(logits)
    }
}

/// One sequence's part of [`Network::forward_batch`].
pub struct BatchItem<'a> {
    /// Its keys and values (used by hearth's kernels; candle's models keep
    /// their own).
    pub cache: &'a mut KvCache,
    /// Tokens to evaluate, at least one.
    pub tokens: &'a [u32],
    /// Position of the first of them.
    pub pos: usize,
}
