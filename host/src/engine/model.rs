//! The network itself: candle-transformers' quantized implementations of
//! the supported architectures behind one interface.

use super::error::EngineError;
use super::gguf::ModelFile;
use super::native::NativeLlama;
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
use std::fs::File;
use std::io::BufReader;

/// Prompt tokens evaluated per forward pass: bounds the attention
/// scratch memory for long prompts without slowing short ones.
const PREFILL_CHUNK: usize = 512;

/// Where the model runs.
pub fn device() -> Result<Device, EngineError> {
    #[cfg(feature = "cuda")]
    {
        Ok(Device::cuda_if_available(0)?)
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
    ) -> Result<Network, EngineError> {
        file.check_supported()?;
        let native_ok = device.is_cpu() && NativeLlama::supports(&file);
        match backend {
            Backend::Native if !native_ok => {
                return Err(EngineError::Unsupported {
                    path: file.path.clone(),
                    reason: "the native backend runs dense llama models on the CPU; use --backend candle".into(),
                });
            }
            Backend::Native | Backend::Auto if native_ok => {
                return Ok(Network::Native(Box::new(NativeLlama::load(
                    &file, threads,
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

    /// Keeps the first `tokens` positions of the KV cache where the
    /// implementation can (hearth's kernels); returns how many were kept.
    pub fn keep_prefix(&mut self, tokens: usize) -> usize {
        match self {
            Network::Native(m) => {
                m.truncate(tokens);
                tokens
            }
            _ => {
                self.clear();
                0
            }
        }
    }

    /// Forgets the KV cache (a new conversation).
    pub fn clear(&mut self) {
        match self {
            Network::Native(m) => m.clear(),
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
        let input =
            || -> Result<Tensor, EngineError> { Ok(Tensor::new(tokens, device)?.unsqueeze(0)?) };
        let logits = match self {
            Network::Native(m) => return m.forward(tokens, pos),
            Network::Llama(m) => m.forward(&input()?, pos)?,
            Network::Qwen2(m) => m.forward(&input()?, pos)?,
            Network::Qwen3(m) => m.forward(&input()?, pos)?,
        };
        Ok(logits
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?)
    }

    /// Feeds `tokens` at positions `pos..` and returns the logits for the
    /// token after the last one.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
        device: &Device,
    ) -> Result<Vec<f32>, EngineError> {
        let mut logits = Vec::new();
        let mut at = pos;
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            logits = self.forward_chunk(chunk, at, device)?;
            at += chunk.len();
        }
        if logits.is_empty() {
            return Err(EngineError::Model("nothing to evaluate".into()));
        }
        Ok(logits)
    }
}
