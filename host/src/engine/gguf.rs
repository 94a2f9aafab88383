//! GGUF model files: opening them with errors that name the file, telling
//! what a model is, estimating the memory it needs, and re-quantising.

use super::error::EngineError;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek};
use std::path::{Path, PathBuf};

/// Architectures the engine runs (the `general.architecture` key).
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3"];

/// An opened, validated GGUF file: metadata read, every tensor inside it.
#[derive(Debug)]
pub struct ModelFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its metadata and tensor table.
    pub content: gguf_file::Content,
    /// Its size in bytes.
    pub size: u64,
}

/// What a model is, for `hearth model info` and `/v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The file.
    pub path: PathBuf,
    /// `general.name`, when present.
    pub name: Option<String>,
    /// `general.architecture`.
    pub architecture: String,
    /// Number of weights.
    pub parameters: u64,
    /// Tensor types and how many tensors use each, e.g. `{"Q8_0": 211, "F32": 61}`.
    pub tensor_types: BTreeMap<String, usize>,
    /// The type most weights are stored in.
    pub quantization: String,
    /// The context length the model was trained for.
    pub context_length: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size.
    pub embedding: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Bytes of key/value cache one position of one sequence takes on
    /// hearth's kernels (K and V, f32, every layer).
    pub kv_bytes_per_token: u64,
    /// Whether the file carries a chat template.
    pub chat_template: bool,
    /// Tokenizer model and pre-tokenizer, e.g. `gpt2 (pre smollm)`.
    pub tokenizer: String,
    /// Vocabulary size.
    pub vocab: usize,
    /// File size in bytes.
    pub file_size: u64,
}

impl ModelFile {
    /// Opens `path` and checks that it is a GGUF file whose tensors all lie
    /// inside it, so a truncated download fails here, naming the file,
    /// rather than halfway through loading.
    pub fn open(path: &Path) -> Result<ModelFile, EngineError> {
        let io = |e: std::io::Error| EngineError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let bad = |reason: String| EngineError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut magic = [0u8; 4];
        if file.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
            return Err(bad(format!(
                "it does not start with the GGUF magic (found {:?}; {size} bytes)",
                String::from_utf8_lossy(&magic[..magic.len().min(size as usize)])
            )));
        }
        file.rewind().map_err(io)?;
        let content = gguf_file::Content::read(&mut BufReader::new(&mut file))
            .map_err(|e| bad(format!("reading the header: {e}")))?;
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if elems % block != 0 {
                return Err(bad(format!(
                    "tensor {name} has {elems} elements, not a multiple of its type's block size {block}"
                )));
            }
            let bytes = (elems / block) as u64 * info.ggml_dtype.type_size() as u64;
            let end = content.tensor_data_offset + info.offset + bytes;
            if end > size {
                return Err(bad(format!(
                    "truncated: tensor {name} ends at byte {end} but the file has {size} bytes"
                )));
            }
        }
        Ok(ModelFile {
            path: path.to_path_buf(),
            content,
            size,
        })
    }

    /// A metadata string, if present.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    /// A metadata integer, if present (any integer type).
    pub fn int(&self, key: &str) -> Option<u64> {
        let v = self.content.metadata.get(key)?;
        v.to_u64()
            .ok()
            .or_else(|| v.to_u32().ok().map(u64::from))
            .or_else(|| v.to_i32().ok().and_then(|i| u64::try_from(i).ok()))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, EngineError> {
        self.str("general.architecture")
            .ok_or_else(|| EngineError::BadFile {
                path: self.path.clone(),
                reason: "no general.architecture key".into(),
            })
    }

    /// An architecture key such as `llama.context_length`.
    pub fn arch_int(&self, key: &str) -> Option<u64> {
        let arch = self.str("general.architecture")?;
        self.int(&format!("{arch}.{key}"))
    }

    /// Refuses architectures the engine has no implementation for.
    pub fn check_supported(&self) -> Result<(), EngineError> {
        let arch = self.architecture()?;
        if !ARCHITECTURES.contains(&arch) {
            return Err(EngineError::Unsupported {
                path: self.path.clone(),
                reason: format!(
                    "architecture `{arch}` is not supported (supported: {})",
                    ARCHITECTURES.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// What the model is.
    pub fn info(&self) -> ModelInfo {
        let mut tensor_types: BTreeMap<String, usize> = BTreeMap::new();
        let mut by_weight: BTreeMap<String, u64> = BTreeMap::new();
        let mut parameters = 0u64;
        for info in self.content.tensor_infos.values() {
            let n = info.shape.elem_count() as u64;
            parameters += n;
            let ty = format!("{:?}", info.ggml_dtype).to_uppercase();
            *tensor_types.entry(ty.clone()).or_default() += 1;
            *by_weight.entry(ty).or_default() += n;
        }
        let quantization = by_weight
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(t, _)| t.clone())
            .unwrap_or_default();
        let vocab = self
            .content
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map_or(0, Vec::len);
        let tokenizer = format!(
            "{} (pre {})",
            self.str("tokenizer.ggml.model").unwrap_or("none"),
            self.str("tokenizer.ggml.pre").unwrap_or("default")
        );
        let get = |k: &str| self.arch_int(k).unwrap_or(0) as usize;
        ModelInfo {
            path: self.path.clone(),
            name: self.str("general.name").map(str::to_string),
            architecture: self.str("general.architecture").unwrap_or("?").to_string(),
            parameters,
            tensor_types,
            quantization,
            context_length: get("context_length"),
            layers: get("block_count"),
            embedding: get("embedding_length"),
            heads: get("attention.head_count"),
            kv_heads: self
                .arch_int("attention.head_count_kv")
                .unwrap_or(self.arch_int("attention.head_count").unwrap_or(0))
                as usize,
            kv_bytes_per_token: self.kv_bytes_per_token(),
            chat_template: self.str("tokenizer.chat_template").is_some(),
            tokenizer,
            vocab,
            file_size: self.size,
        }
    }

    /// Bytes the weights take once loaded: quantized tensors stay as they
    /// are, f16/f32 matrices are expanded to f32 for the matmul, and the
    /// token embedding table is always expanded to f32.
    pub fn weights_bytes(&self) -> u64 {
        self.content
            .tensor_infos
            .iter()
            .map(|(name, info)| {
                let elems = info.shape.elem_count() as u64;
                let stored = elems / info.ggml_dtype.block_size() as u64
                    * info.ggml_dtype.type_size() as u64;
                let float = matches!(
                    info.ggml_dtype,
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
                );
                if name == "token_embd.weight" {
                    // Kept quantized for the tied output layer as well.
                    stored + elems * 4
                } else if float {
                    elems * 4
                } else {
                    stored
                }
            })
            .sum()
    }

    /// Bytes of f32 KV cache for `context` tokens.
    pub fn kv_bytes(&self, context: usize) -> u64 {
        // candle grows the cache by concatenation, so budget one extra
        // copy for the step that grows it.
        self.kv_bytes_per_token() * context as u64 * 3 / 2
    }

    /// Bytes of K and V (f32, every layer) one position takes.
    pub fn kv_bytes_per_token(&self) -> u64 {
        let Some((_, kv_heads, head_dim)) = self.heads() else {
            return 0;
        };
        let layers = self.arch_int("block_count").unwrap_or(0) as usize;
        (2 * layers * kv_heads * head_dim * 4) as u64
    }

    /// (heads, key/value heads, head size) from the metadata, when they
    /// make sense together: the head size is `attention.key_length` when
    /// given (Qwen 3's heads are wider than the hidden size divided among
    /// them), else the hidden size over the heads; keys and values the same
    /// size.
    pub fn heads(&self) -> Option<(usize, usize, usize)> {
        let heads = self.arch_int("attention.head_count")? as usize;
        let dim = self.arch_int("embedding_length")? as usize;
        let kv_heads = self
            .arch_int("attention.head_count_kv")
            .map_or(heads, |v| v as usize);
        let head_dim = match self.arch_int("attention.key_length") {
            Some(k) => k as usize,
            None => dim.checked_div(heads)?,
        };
        let value = self
            .arch_int("attention.value_length")
            .map_or(head_dim, |v| v as usize);
        (heads > 0
            && kv_heads > 0
            && heads.is_multiple_of(kv_heads)
            && head_dim > 0
            && value == head_dim)
            .then_some((heads, kv_heads, head_dim))
    }

    /// Refuses to load when the weights plus the KV cache for `context`
    /// tokens exceed the memory the OS reports as available.
    pub fn check_memory(&self, context: usize) -> Result<(), EngineError> {
        let Some(available) = available_memory() else {
            return Ok(());
        };
        let weights = self.weights_bytes();
        // Activations, logits and the allocator's slack.
        let overhead = 64 << 20;
        let need = weights + self.kv_bytes(context) + overhead;
        if need <= available {
            return Ok(());
        }
        let mut suggest = context;
        while suggest > 256 && weights + self.kv_bytes(suggest) + overhead > available {
            suggest /= 2;
        }
        let mib = |b: u64| b >> 20;
        Err(EngineError::OutOfMemory {
            path: self.path.clone(),
            need_mib: mib(need),
            weights_mib: mib(weights),
            kv_mib: mib(self.kv_bytes(context)),
            context,
            available_mib: mib(available),
            suggest_context: suggest,
        })
    }
}

impl ModelFile {
    /// How many sequences (at most `wanted`, at least 1) can each fill the
    /// whole `context` beside the weights in the memory available now.
    pub fn sequences_that_fit(&self, context: usize, wanted: usize) -> usize {
        let Some(available) = available_memory() else {
            return wanted.max(1);
        };
        let spare = available.saturating_sub(self.weights_bytes() + (64 << 20));
        let per = self.kv_bytes(context).max(1);
        (spare / per).clamp(1, wanted.max(1) as u64) as usize
    }
}

/// `MemAvailable` from /proc/meminfo (None where there is no such file);
/// `HEARTH_MEMORY_LIMIT` (bytes) lowers it, for containers whose limits
/// /proc does not show.
pub fn available_memory() -> Option<u64> {
    let limit = std::env::var("HEARTH_MEMORY_LIMIT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    match (limit, meminfo) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Quantization types `hearth model quantize` writes.
pub fn parse_type(name: &str) -> Result<GgmlDType, EngineError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q4_k" => GgmlDType::Q4K,
        "q6_k" => GgmlDType::Q6K,
        other => {
            return Err(EngineError::InvalidParameter {
                name: "type",
                reason: format!(
                    "`{other}` is not a quantization type (expected f32, f16, q8_0, q4_0, q4_1, q4_k or q6_k)"
                ),
            });
        }
    })
}

/// The metadata key llama.cpp and hearth's `model info` read a file's
/// overall type from.
pub const FILE_TYPE_KEY: &str = "general.file_type";

/// The `general.file_type` value (llama.cpp's `llama_ftype`, include/llama.h)
/// for a file whose weights are mostly `dtype`; `None` for types with no
/// file type of their own (Q8_1 and Q8_K only exist as dot-product
/// intermediates), where the key is better left out: llama.cpp then
/// guesses from the tensors instead of trusting a wrong label.
///
/// `llama_ftype`: ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_Q4_0 = 2,
/// MOSTLY_Q4_1 = 3, MOSTLY_Q8_0 = 7, MOSTLY_Q5_0 = 8, MOSTLY_Q5_1 = 9,
/// MOSTLY_Q2_K = 10, MOSTLY_Q3_K_S = 11, MOSTLY_Q4_K_S = 14,
/// MOSTLY_Q5_K_S = 16, MOSTLY_Q6_K = 18, MOSTLY_BF16 = 32 (the same numbers
/// as gguf-py's `LlamaFileType`). The k-quants map to their `_S` variants:
/// hearth writes every matrix in the one type, and the `_M`/`_L` mixes
/// promise some tensors in a wider type that such a file does not have.
pub fn llama_ftype(dtype: GgmlDType) -> Option<u32> {
    Some(match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 14,
        GgmlDType::Q5K => 16,
        GgmlDType::Q6K => 18,
        GgmlDType::BF16 => 32,
        GgmlDType::Q8_1 | GgmlDType::Q8K => return None,
    })
}

/// The type holding the most weights among `tensors` (type, element
/// count), ties broken by name so the answer never depends on the order
/// tensors are listed in.
fn dominant_type(tensors: impl IntoIterator<Item = (GgmlDType, u64)>) -> Option<GgmlDType> {
    let mut totals: Vec<(GgmlDType, u64)> = Vec::new();
    for (dtype, n) in tensors {
        match totals.iter_mut().find(|(t, _)| *t == dtype) {
            Some((_, total)) => *total += n,
            None => totals.push((dtype, n)),
        }
    }
    totals
        .into_iter()
        .max_by(|(a, n), (b, m)| {
            n.cmp(m)
                .then_with(|| format!("{b:?}").cmp(&format!("{a:?}")))
        })
        .map(|(t, _)| t)
}

impl ModelFile {
    /// The `general.file_type` the file's tensors call for (see
    /// [`llama_ftype`]), which [`quantize`] writes.
    pub fn tensor_file_type(&self) -> Option<u32> {
        dominant_type(
            self.content
                .tensor_infos
                .values()
                .map(|i| (i.ggml_dtype, i.shape.elem_count() as u64)),
        )
        .and_then(llama_ftype)
    }
}

/// Re-quantises every weight matrix of `input` to `to` and writes `output`
/// (through a temporary file and a rename). Norms and other vectors stay
/// f32; matrices whose rows do not divide into `to`'s blocks keep their type.
/// `general.file_type` is set to what the written tensors hold (copied
/// as is, it would keep naming the input's type).
pub fn quantize(
    input: &Path,
    output: &Path,
    to: GgmlDType,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), EngineError> {
    let model = ModelFile::open(input)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| EngineError::Io {
            path: path.clone(),
            reason: e.to_string(),
        }
    };
    let mut reader = BufReader::new(File::open(input).map_err(io(input))?);
    let cpu = Device::Cpu;
    let mut names: Vec<&String> = model.content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let qt = model.content.tensor(&mut reader, name, &cpu)?;
        let dims = qt.shape().dims().to_vec();
        let row = *dims.last().unwrap_or(&0);
        let is_matrix = dims.len() >= 2 && row % to.block_size() == 0;
        let qt = if is_matrix && qt.dtype() != to {
            let full = qt.dequantize(&cpu)?;
            if to == GgmlDType::F32 {
                QTensor::quantize(&full.to_dtype(DType::F32)?, GgmlDType::F32)?
            } else {
                QTensor::quantize(&full, to)?
            }
        } else {
            qt
        };
        tensors.push((name.as_str(), qt));
        progress(i + 1, names.len());
    }
    let file_type = dominant_type(
        tensors
            .iter()
            .map(|(_, t)| (t.dtype(), t.shape().elem_count() as u64)),
    )
    .and_then(llama_ftype)
    .map(gguf_file::Value::U32);
    let mut metadata: Vec<(&str, &gguf_file::Value)> = model
        .content
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != FILE_TYPE_KEY)
        .map(|(k, v)| (k.as_str(), v))
        .chain(file_type.as_ref().map(|v| (FILE_TYPE_KEY, v)))
        .collect();
    metadata.sort_by_key(|(k, _)| *k);
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-quantize-")
        .permissions(super::provision::model_file_permissions())
        .tempfile_in(dir)
        .map_err(io(output))?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        gguf_file::write(&mut w, &metadata, &refs)?;
        std::io::Write::flush(&mut w).map_err(io(output))?;
    }
    tmp.as_file().sync_all().map_err(io(output))?;
    tmp.persist(output).map_err(|e| EngineError::Io {
        path: output.to_path_buf(),
        reason: e.error.to_string(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    /// A two-tensor llama-shaped GGUF in `dir`: a Q4_1 matrix and an F32
    /// norm vector, labelled `general.file_type` = 3 (MOSTLY_Q4_1) like the
    /// default model as shipped.
    fn small_q4_1_model(dir: &Path) -> PathBuf {
        let cpu = Device::Cpu;
        let weights: Vec<f32> = (0..8 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let matrix = Tensor::from_vec(weights, (8, 64), &cpu).unwrap();
        let matrix = QTensor::quantize(&matrix, GgmlDType::Q4_1).unwrap();
        let norm = Tensor::ones(64, DType::F32, &cpu).unwrap();
        let norm = QTensor::quantize(&norm, GgmlDType::F32).unwrap();
        let arch = gguf_file::Value::String("llama".into());
        let file_type = gguf_file::Value::U32(3);
        let path = dir.join("small.Q4_1.gguf");
        let mut w = BufWriter::new(File::create(&path).unwrap());
        gguf_file::write(
            &mut w,
            &[("general.architecture", &arch), (FILE_TYPE_KEY, &file_type)],
            &[
                ("blk.0.attn_q.weight", &matrix),
                ("blk.0.attn_norm.weight", &norm),
            ],
        )
        .unwrap();
        std::io::Write::flush(&mut w).unwrap();
        path
    }

    #[test]
    fn quantize_writes_the_file_type_its_tensors_hold() {
        let dir = tempfile::tempdir().unwrap();
        let input = small_q4_1_model(dir.path());
        assert_eq!(ModelFile::open(&input).unwrap().int(FILE_TYPE_KEY), Some(3));
        for (to, expected) in [
            (GgmlDType::Q8_0, 7),
            (GgmlDType::Q4_0, 2),
            (GgmlDType::F16, 1),
            (GgmlDType::F32, 0),
        ] {
            let output = dir.path().join(format!("small.{to:?}.gguf"));
            quantize(&input, &output, to, &mut |_, _| {}).unwrap();
            let made = ModelFile::open(&output).unwrap();
            assert_eq!(
                made.content.tensor_infos["blk.0.attn_q.weight"].ggml_dtype,
                to
            );
            assert_eq!(
                made.content.metadata[FILE_TYPE_KEY].to_u32().unwrap(),
                expected,
                "{to:?}"
            );
            assert_eq!(made.tensor_file_type(), Some(expected), "{to:?}");
            // Everything else is copied.
            assert_eq!(made.str("general.architecture"), Some("llama"));
        }
    }

    #[test]
    fn file_types_follow_llama_cpp_numbering() {
        assert_eq!(llama_ftype(GgmlDType::Q8_0), Some(7));
        assert_eq!(llama_ftype(GgmlDType::Q4_1), Some(3));
        assert_eq!(llama_ftype(GgmlDType::Q6K), Some(18));
        assert_eq!(llama_ftype(GgmlDType::Q8K), None);
        // Ties do not depend on listing order.
        let a = [(GgmlDType::Q8_0, 10), (GgmlDType::F32, 10)];
        let b = [(GgmlDType::F32, 10), (GgmlDType::Q8_0, 10)];
        assert_eq!(dominant_type(a), dominant_type(b));
    }
}
