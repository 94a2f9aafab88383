#!/usr/bin/env bash
# Compares hearth's CPU inference speed with llama.cpp's llama-bench on one
# GGUF model: prompt processing (49 tokens) and decode (64 tokens), per
# thread count, as a Markdown table of medians.
#
#   bash bench/llama-cpp/build.sh                     # once: builds llama-bench
#   bash bench/llama-cpp/run.sh MODEL.gguf [THREADS...]   # default threads: 1 2
#
# For each thread count it runs ROUNDS rounds; each round runs llama-bench
# once and hearth once, alternating which goes first, so that drift in machine
# load hits both alike.
#
# Environment:
#   ROUNDS       rounds per thread count (default 5)
#   HEARTH       hearth binary (default target/release/hearth in the repo root)
#   LLAMA_BENCH  llama-bench binary (default bench/llama-cpp/.work/bin/llama-bench)
#   PROMPT_TOKENS, GEN_TOKENS  the test sizes (default 49 and 64; the
#                usual llama-bench sizes are 512 and 128)
#   RESULTS_DIR  where raw outputs go (default bench/llama-cpp/.work/results/DATE)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
say() { printf '== %s\n' "$*" >&2; }

[[ $# -ge 1 ]] || die "usage: $0 MODEL.gguf [THREADS...]"
model="$1"
shift
[[ -f "$model" ]] || die "model not found: $model"
threads=("$@")
[[ ${#threads[@]} -gt 0 ]] || threads=(1 2)
for t in "${threads[@]}"; do
    [[ "$t" =~ ^[1-9][0-9]*$ ]] || die "thread count must be a positive integer: $t"
done

rounds="${ROUNDS:-5}"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer: $rounds"
prompt_tokens="${PROMPT_TOKENS:-49}"
gen_tokens="${GEN_TOKENS:-64}"

hearth="${HEARTH:-target/release/hearth}"
[[ "$hearth" == */* && "$hearth" != /* ]] && hearth="$repo/$hearth"
llama_bench="${LLAMA_BENCH:-$here/.work/bin/llama-bench}"
[[ -x "$llama_bench" ]] || die "no llama-bench at $llama_bench (run bench/llama-cpp/build.sh)"
command -v "$hearth" >/dev/null || die "no hearth binary at $hearth (cargo build --release, or set HEARTH)"
command -v python3 >/dev/null || die "python3 not found"

results="${RESULTS_DIR:-$here/.work/results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$results"
say "model $model, threads ${threads[*]}, $rounds rounds, raw output in $results"

run_llama() { # threads round
    local out="$results/t$1-r$2-llama.json"
    # --repack 0: llama.cpp's repacking for AMX crashes or crawls on some
    # VMs whose CPUs report AMX (see README); hearth does not use AMX either.
    "$llama_bench" -m "$model" -t "$1" -p "$prompt_tokens" -n "$gen_tokens" -r 1 -o json \
        --repack 0 \
        >"$out.tmp" 2>"$results/t$1-r$2-llama.log" \
        || die "llama-bench failed (t=$1 round $2), see $results/t$1-r$2-llama.log"
    mv "$out.tmp" "$out"
}

run_hearth() { # threads round
    local out="$results/t$1-r$2-hearth.json"
    "$hearth" bench model --model "$model" --threads "$1" \
        --prompt-tokens "$prompt_tokens" --gen-tokens "$gen_tokens" --format json \
        >"$out.tmp" 2>"$results/t$1-r$2-hearth.log" \
        || die "hearth bench failed (t=$1 round $2), see $results/t$1-r$2-hearth.log"
    mv "$out.tmp" "$out"
}

# Start-up: process start to exit for one prompt token and one decoded
# token (each tool's warm-up included), and peak resident memory, on the
# first thread count. hearth's first start also writes its weight image
# (kept in HEARTH_HOME's cache), so it is reported apart from the rest.
start_llama() { # round
    python3 "$here/measure.py" "$llama_bench" -m "$model" -t "${threads[0]}" -p 1 -n 1 -r 1 \
        --repack 0 >"$results/start-r$1-llama.json" \
        || die "llama-bench failed to start (round $1)"
}

start_hearth() { # round
    python3 "$here/measure.py" "$hearth" bench model --model "$model" --threads "${threads[0]}" \
        --prompt-tokens 1 --gen-tokens 1 --reps 1 --format json >"$results/start-r$1-hearth.json" \
        || die "hearth failed to start (round $1)"
}

export HEARTH_HOME="${HEARTH_HOME:-$results/home}"
start_hearth 0
mv "$results/start-r0-hearth.json" "$results/first-start-hearth.json"
for ((r = 1; r <= rounds; r++)); do
    say "start-up, round $r/$rounds"
    if ((r % 2)); then
        start_llama "$r"
        start_hearth "$r"
    else
        start_hearth "$r"
        start_llama "$r"
    fi
done

for t in "${threads[@]}"; do
    for ((r = 1; r <= rounds; r++)); do
        say "threads $t, round $r/$rounds"
        if ((r % 2)); then
            run_llama "$t" "$r"
            run_hearth "$t" "$r"
        else
            run_hearth "$t" "$r"
            run_llama "$t" "$r"
        fi
    done
done

echo
python3 "$here/summarise.py" "$results"
