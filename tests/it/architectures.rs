//! Architectures beyond llama, on small GGUF files written here with
//! deterministic weights and the default model's real tokenizer: loading,
//! the qwen2 pre-tokenizer, generation through candle.

use hearth_tests::default_model;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use hearth::engine::{
    ChatMessage, Engine, EngineOptions, GenerateRequest, ModelFile, Role, SamplingParams,
};
use std::path::Path;

/// Writes a 2-block qwen2 model (dim 64) with the default model's vocabulary.
fn tiny_qwen2(path: &Path) {
    let source = ModelFile::open(&default_model()).unwrap();
    let mut seed = 7u64;
    let mut random = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5) * scale
            })
            .collect()
    };
    let (dim, heads, kv_heads, ffn, blocks) = (64usize, 4usize, 2usize, 128usize, 2usize);
    let vocab = source.info().vocab;
    let kv_dim = kv_heads * dim / heads;
    let tensor = |data: Vec<f32>, shape: &[usize]| {
        let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
        QTensor::quantize(&t, GgmlDType::F32).unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            tensor(random(vocab * dim, 1.0), &[vocab, dim]),
        ),
        ("output_norm.weight".into(), tensor(vec![1.0; dim], &[dim])),
    ];
    for b in 0..blocks {
        let p = |n: &str| format!("blk.{b}.{n}");
        for (name, rows, cols) in [
            ("attn_q.weight", dim, dim),
            ("attn_k.weight", kv_dim, dim),
            ("attn_v.weight", kv_dim, dim),
            ("attn_output.weight", dim, dim),
            ("ffn_gate.weight", ffn, dim),
            ("ffn_up.weight", ffn, dim),
            ("ffn_down.weight", dim, ffn),
        ] {
            tensors.push((p(name), tensor(random(rows * cols, 0.3), &[rows, cols])));
        }
        for (name, n) in [
            ("attn_q.bias", dim),
            ("attn_k.bias", kv_dim),
            ("attn_v.bias", kv_dim),
        ] {
            tensors.push((p(name), tensor(random(n, 0.1), &[n])));
        }
        tensors.push((p("attn_norm.weight"), tensor(vec![1.0; dim], &[dim])));
        tensors.push((p("ffn_norm.weight"), tensor(vec![1.0; dim], &[dim])));
    }
    use gguf_file::Value;
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("qwen2".into())),
        ("general.name".into(), Value::String("tiny-qwen2".into())),
        (
            "qwen2.attention.head_count".into(),
            Value::U32(heads as u32),
        ),
        (
            "qwen2.attention.head_count_kv".into(),
            Value::U32(kv_heads as u32),
        ),
        ("qwen2.embedding_length".into(), Value::U32(dim as u32)),
        ("qwen2.feed_forward_length".into(), Value::U32(ffn as u32)),
        ("qwen2.context_length".into(), Value::U32(512)),
        ("qwen2.block_count".into(), Value::U32(blocks as u32)),
        (
            "qwen2.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-6),
        ),
        ("qwen2.rope.freq_base".into(), Value::F32(1e6)),
    ];
    for (key, value) in &source.content.metadata {
        if key.starts_with("tokenizer.") && key != "tokenizer.ggml.pre" {
            metadata.push((key.clone(), value.clone()));
        }
    }
    metadata.push(("tokenizer.ggml.pre".into(), Value::String("qwen2".into())));
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    gguf_file::write(&mut file, &meta, &refs).unwrap();
}

#[test]
fn a_qwen2_model_loads_tokenizes_and_generates() {
    let _memory = crate::MEMORY.blocking_read();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-qwen2.gguf");
    tiny_qwen2(&path);
    let info = ModelFile::open(&path).unwrap().info();
    assert_eq!(info.architecture, "qwen2");
    assert_eq!(info.tokenizer, "gpt2 (pre qwen2)");

    let engine = Engine::load(&path, &EngineOptions::default()).unwrap();
    // The qwen2 split isolates every digit; the default (GPT-2) one does not.
    let t = engine.tokenizer();
    let digits = t.encode("12345").unwrap();
    assert_eq!(digits.len(), 5, "{digits:?}");
    assert_eq!(t.decode(&digits), "12345");

    let run = || {
        let mut req = GenerateRequest::chat(vec![ChatMessage::new(Role::User, "Hello")]);
        req.params = SamplingParams::greedy(6);
        engine.generate(req).unwrap().wait(&mut |_| {}).unwrap()
    };
    let (a, b) = (run(), run());
    assert!(a.usage.completion_tokens <= 6 && a.usage.prompt_tokens > 5);
    assert_eq!(a.text, b.text, "greedy output is deterministic");

    // The native backend is for llama only, and says so.
    let native = EngineOptions {
        backend: hearth::engine::Backend::Native,
        ..Default::default()
    };
    let err = Engine::load(&path, &native).unwrap_err();
    assert!(
        err.to_string()
            .contains("native backend runs dense llama models"),
        "{err}"
    );
}
