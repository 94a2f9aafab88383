#!/usr/bin/env bash
# Builds both guests and the harness in release, then runs the comparison.
#
#   bash bench/extism-compare/run.sh
#
# Everything is built into bench/extism-compare/target. Builds run at low
# priority with one job (BENCH_JOBS / BENCH_NICE override that), since the
# harness compiles two wasmtime versions plus hearth (20-40 min at -j 1 on a
# 2-core machine the first time). BENCH_ROUNDS and BENCH_BATCH_MS are passed
# through to the harness.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="$here/Cargo.toml"
target="$here/target"
jobs="${BENCH_JOBS:-1}"
niceness="${BENCH_NICE:-15}"
# hearth's build script runs a nested cargo (it builds the bundled plugins);
# CARGO_BUILD_JOBS keeps that one at the same job count.
export CARGO_BUILD_JOBS="$jobs"

build() {
    nice -n "$niceness" cargo build --release -j "$jobs" \
        --manifest-path "$manifest" --target-dir "$target" "$@"
}

rustup target add wasm32-wasip2 wasm32-unknown-unknown

echo "== building guest-hearth (wasm32-wasip2)" >&2
build -p bench-guest-hearth --target wasm32-wasip2
echo "== building guest-extism (wasm32-unknown-unknown)" >&2
build -p bench-guest-extism --target wasm32-unknown-unknown
echo "== building harness" >&2
build -p bench-extism-compare

hearth_wasm="$target/wasm32-wasip2/release/bench_guest_hearth.wasm"
extism_wasm="$target/wasm32-unknown-unknown/release/bench_guest_extism.wasm"
echo "== running" >&2
exec "$target/release/extism-compare" "$hearth_wasm" "$extism_wasm"
