"""Writes llama-architecture GGUF files of real models' shapes with random
weights, for speed benchmarks without a model hub.

    python shapes.py SOURCE.gguf OUT_DIR [SHAPE ...]     # default: 135m 1b

SOURCE is a GGUF file whose tokenizer (and chat template) the new files
borrow: the default model, SmolLM2-135M-Instruct, so every file has its
49,152-token vocabulary whatever the shape's own vocabulary is (the
embedding and output are then smaller than the real model's; the layers,
where the time goes, are the real ones). Each shape gives OUT_DIR/SHAPE.f16.gguf
(F16 weights, F32 norms); `llama-quantize` turns it into Q8_0, Q4_K_M and
the rest (see README.md).

Weights are drawn from a fixed seed, so a file is the same on every run and
machine: normal values scaled by 1/sqrt(fan-in), as trained layers roughly
are, so activations stay in range through the layers and the quantisers see
realistic value spreads. Speed does not depend on trained weights; answers
do, so these files are for timing only.

Needs the `gguf` package (0.19) and numpy.
"""

import sys
from pathlib import Path

import gguf
import numpy as np

# name: (dim, layers, heads, kv_heads, ffn, rope_base) of the real model.
SHAPES = {
    # SmolLM2-135M
    "135m": (576, 30, 9, 3, 1536, 100000.0),
    # Llama-3.2-1B
    "1b": (2048, 16, 32, 8, 8192, 500000.0),
    # Llama-3.2-3B
    "3b": (3072, 28, 24, 8, 8192, 500000.0),
    # Llama-3.1-8B / Mistral-7B-like
    "8b": (4096, 32, 32, 8, 14336, 500000.0),
}


def copy_tokenizer(source, writer):
    """Copies the tokenizer.* fields of `source` (a GGUFReader)."""
    for name, field in source.fields.items():
        if not name.startswith("tokenizer."):
            continue
        value = field.contents()
        kind = gguf.GGUFValueType(field.types[0])
        if kind == gguf.GGUFValueType.ARRAY:
            sub = gguf.GGUFValueType(field.types[1])
            writer.add_key_value(name, value, kind, sub_type=sub)
        else:
            writer.add_key_value(name, value, kind)


def write(shape, source, out):
    dim, layers, heads, kv_heads, ffn, rope_base = SHAPES[shape]
    head_dim = dim // heads
    kv_dim = kv_heads * head_dim
    vocab = len(source.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(20261203)

    def matrix(rows, cols):
        # GGUF stores a matrix as (rows, cols) = (out, in).
        w = rng.standard_normal((rows, cols), dtype=np.float32)
        return (w / np.sqrt(cols)).astype(np.float16)

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(f"random-{shape}")
    writer.add_context_length(8192)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_base)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    copy_tokenizer(source, writer)

    ones = np.ones(dim, dtype=np.float32)
    writer.add_tensor("token_embd.weight", matrix(vocab, dim))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", matrix(vocab, dim))
    for i in range(layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", ones)
        writer.add_tensor(p + "attn_q.weight", matrix(dim, dim))
        writer.add_tensor(p + "attn_k.weight", matrix(kv_dim, dim))
        writer.add_tensor(p + "attn_v.weight", matrix(kv_dim, dim))
        writer.add_tensor(p + "attn_output.weight", matrix(dim, dim))
        writer.add_tensor(p + "ffn_norm.weight", ones)
        writer.add_tensor(p + "ffn_gate.weight", matrix(ffn, dim))
        writer.add_tensor(p + "ffn_up.weight", matrix(ffn, dim))
        writer.add_tensor(p + "ffn_down.weight", matrix(dim, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    source = gguf.GGUFReader(sys.argv[1])
    out_dir = Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = sys.argv[3:] or ["135m", "1b"]
    for shape in shapes:
        if shape not in SHAPES:
            sys.exit(f"unknown shape `{shape}` (known: {', '.join(SHAPES)})")
        out = out_dir / f"{shape}.f16.gguf"
        if out.exists():
            print(f"{out} exists; kept", flush=True)
            continue
        tmp = out.with_suffix(".tmp")
        write(shape, source, tmp)
        tmp.rename(out)
        print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
