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

/// The type each weight matrix is stored in, by tensor name.
type DtypeOf = fn(&str) -> GgmlDType;

/// The shape and weight types of a small model written by [`tiny_model`].
struct Tiny {
    arch: &'static str,
    dim: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    blocks: usize,
    /// Size of one head; 0 for `dim / heads`. Written as
    /// `attention.key_length` when set (Qwen 3's heads are wider).
    head_dim: usize,
    /// The type each weight matrix is stored in.
    dtype: DtypeOf,
    /// A separate `output.weight` (else the embedding is tied).
    output: bool,
}

/// Writes a 2-block qwen2 model (dim 64, f32 weights) with the default
/// model's vocabulary.
fn tiny_qwen2(path: &Path) {
    tiny_model(
        path,
        &Tiny {
            arch: "qwen2",
            dim: 64,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            blocks: 2,
            head_dim: 0,
            dtype: |_| GgmlDType::F32,
            output: false,
        },
    );
}

/// Writes a model of `shape` with deterministic weights and the default
/// model's tokenizer (qwen2 gets biases and its own pre-tokenizer).
fn tiny_model(path: &Path, shape: &Tiny) {
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
    let Tiny {
        arch,
        dim,
        heads,
        kv_heads,
        ffn,
        blocks,
        head_dim,
        dtype,
        output,
    } = *shape;
    let vocab = source.info().vocab;
    let hd = if head_dim == 0 { dim / heads } else { head_dim };
    let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
    let tensor = |name: &str, data: Vec<f32>, shape: &[usize]| {
        let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
        let ty = if shape.len() == 2 {
            dtype(name)
        } else {
            GgmlDType::F32
        };
        (name.to_string(), QTensor::quantize(&t, ty).unwrap())
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        tensor("token_embd.weight", random(vocab * dim, 1.0), &[vocab, dim]),
        tensor("output_norm.weight", vec![1.0; dim], &[dim]),
    ];
    if output {
        tensors.push(tensor(
            "output.weight",
            random(vocab * dim, 1.0),
            &[vocab, dim],
        ));
    }
    for b in 0..blocks {
        let p = |n: &str| format!("blk.{b}.{n}");
        for (name, rows, cols) in [
            ("attn_q.weight", q_dim, dim),
            ("attn_k.weight", kv_dim, dim),
            ("attn_v.weight", kv_dim, dim),
            ("attn_output.weight", dim, q_dim),
            ("ffn_gate.weight", ffn, dim),
            ("ffn_up.weight", ffn, dim),
            ("ffn_down.weight", dim, ffn),
        ] {
            tensors.push(tensor(&p(name), random(rows * cols, 0.3), &[rows, cols]));
        }
        if arch == "qwen2" {
            for (name, n) in [
                ("attn_q.bias", q_dim),
                ("attn_k.bias", kv_dim),
                ("attn_v.bias", kv_dim),
            ] {
                tensors.push(tensor(&p(name), random(n, 0.1), &[n]));
            }
        }
        if arch == "qwen3" {
            for name in ["attn_q_norm.weight", "attn_k_norm.weight"] {
                let norm = random(hd, 0.5).iter().map(|v| 1.0 + v).collect();
                tensors.push(tensor(&p(name), norm, &[hd]));
            }
        }
        tensors.push(tensor(&p("attn_norm.weight"), vec![1.0; dim], &[dim]));
        tensors.push(tensor(&p("ffn_norm.weight"), vec![1.0; dim], &[dim]));
    }
    use gguf_file::Value;
    let key = |k: &str| format!("{arch}.{k}");
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(format!("tiny-{arch}"))),
        (key("attention.head_count"), Value::U32(heads as u32)),
        (key("attention.head_count_kv"), Value::U32(kv_heads as u32)),
        (key("embedding_length"), Value::U32(dim as u32)),
        (key("feed_forward_length"), Value::U32(ffn as u32)),
        (key("context_length"), Value::U32(512)),
        (key("block_count"), Value::U32(blocks as u32)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (key("rope.freq_base"), Value::F32(1e6)),
        (key("rope.dimension_count"), Value::U32(hd as u32)),
    ];
    if head_dim != 0 {
        metadata.push((key("attention.key_length"), Value::U32(hd as u32)));
        metadata.push((key("attention.value_length"), Value::U32(hd as u32)));
    }
    for (key, value) in &source.content.metadata {
        if key.starts_with("tokenizer.") && (key != "tokenizer.ggml.pre" || arch == "llama") {
            metadata.push((key.clone(), value.clone()));
        }
    }
    if arch != "llama" {
        metadata.push(("tokenizer.ggml.pre".into(), Value::String("qwen2".into())));
    }
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    gguf_file::write(&mut file, &meta, &refs).unwrap();
}

/// llama models in the mixes llama.cpp writes (Q4_K_M: Q4_K matrices
/// with V, the FFN's down projection and the output in Q6_K; Q5_K_M the
/// same with Q5_K; the older Q4_0 and Q5_0) run on hearth's own kernels,
/// with the blocks as they are, and agree with candle on the same file.
#[test]
fn quantised_llamas_run_natively_and_agree_with_candle() {
    let _memory = crate::MEMORY.blocking_read();
    fn wide(name: &str) -> bool {
        name.contains("attn_v") || name.contains("ffn_down") || name == "output.weight"
    }
    let mixes: [(&str, DtypeOf); 4] = [
        ("q4_k_m", |n| {
            if wide(n) {
                GgmlDType::Q6K
            } else {
                GgmlDType::Q4K
            }
        }),
        ("q5_k_m", |n| {
            if wide(n) {
                GgmlDType::Q6K
            } else {
                GgmlDType::Q5K
            }
        }),
        ("q4_0", |_| GgmlDType::Q4_0),
        ("q5_0", |_| GgmlDType::Q5_0),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (mix, dtype) in mixes {
        let path = dir.path().join(format!("tiny-{mix}.gguf"));
        tiny_model(
            &path,
            &Tiny {
                arch: "llama",
                dim: 256,
                heads: 4,
                kv_heads: 2,
                ffn: 512,
                blocks: 2,
                head_dim: 0,
                dtype,
                output: true,
            },
        );
        native_agrees_with_candle(&path, mix);
    }
}

/// Loads `path` on hearth's kernels and on candle: greedy output on the
/// native path is deterministic, three tokens long, and starts with the
/// token candle's does. Both read the same blocks; they quantise
/// activations differently (16-bit here, 8-bit in candle), so only the
/// first token, whose margin is wide with these weights, is compared.
fn native_agrees_with_candle(path: &Path, what: &str) {
    let load = |backend| {
        let options = EngineOptions {
            backend,
            ..Default::default()
        };
        Engine::load(path, &options).unwrap()
    };
    let (native, candle) = (
        load(hearth::engine::Backend::Native),
        load(hearth::engine::Backend::Candle),
    );
    let run = |engine: &Engine| {
        let mut req = GenerateRequest::chat(vec![ChatMessage::new(Role::User, "Hello")]);
        req.params = SamplingParams::greedy(3);
        engine.generate(req).unwrap().wait(&mut |_| {}).unwrap()
    };
    let (a, b) = (run(&native), run(&native));
    assert_eq!(a.text, b.text, "{what}: greedy output is deterministic");
    assert_eq!(a.usage.completion_tokens, 3, "{what}");
    let c = run(&candle);
    let first = |t: &str| native.tokenizer().encode(t).unwrap().first().copied();
    assert_eq!(
        first(&a.text),
        first(&c.text),
        "{what}: native {:?} vs candle {:?}",
        a.text,
        c.text
    );
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
}

/// Qwen 2 (Q/K/V biases) and Qwen 3 (per-head query and key norms, heads
/// wider than the hidden size divides into) run on hearth's own kernels
/// and agree with candle on the same file; Q8_0 and the Q4_K_M mix.
#[test]
fn qwen_models_run_natively_and_agree_with_candle() {
    let _memory = crate::MEMORY.blocking_read();
    let dir = tempfile::tempdir().unwrap();
    let mixes: [(&str, DtypeOf); 2] = [
        ("q8_0", |_| GgmlDType::Q8_0),
        ("q4_k_m", |n| {
            if n.contains("attn_v") || n.contains("ffn_down") {
                GgmlDType::Q6K
            } else {
                GgmlDType::Q4K
            }
        }),
    ];
    for (arch, head_dim) in [("qwen2", 0), ("qwen3", 128)] {
        for (mix, dtype) in mixes {
            let path = dir.path().join(format!("tiny-{arch}-{mix}.gguf"));
            tiny_model(
                &path,
                &Tiny {
                    arch,
                    dim: 256,
                    heads: 4,
                    kv_heads: 2,
                    ffn: 512,
                    blocks: 2,
                    head_dim,
                    dtype,
                    output: false,
                },
            );
            native_agrees_with_candle(&path, &format!("{arch} {mix}"));
        }
    }
}
