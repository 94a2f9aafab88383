#!/usr/bin/env bash
# What a plugin costs by language, with the bundled Rust calc as the
# baseline of the same run: component size, cold load (compile), cached
# load, and p50/p99 of a call on a fresh instance, in-process (back to back
# and spaced); then the same calls through `POST /v1/plugins/{ns}/{tool}` of
# a running server, and the server's resident memory with the set loaded.
#
#   bash bench/plugins-languages/run.sh [MODEL.gguf]
#
# MODEL defaults to the default model as `hearth model pull` stores it; the
# server part is skipped, saying so, when it is missing.
# Needs the kits' toolchains on PATH (componentize-py, componentize-qjs, zig
# or `python3 -m ziglang`); a language whose toolchain is missing is
# skipped, saying so. Run nothing else meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."

model="${1:-${HEARTH_HOME:-$HOME/.local/share/hearth}/models/SmolLM2-135M-Instruct.Q8_0.gguf}"

cargo build --release --locked -p hearth --example plugin_languages --example plugin_http
HEARTH=target/release/hearth
[ -x "$HEARTH" ] || cargo build --release --locked -p hearth

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# folder, tool, arguments
subjects=(
    "python|add|{\"key\":\"a\",\"amount\":1}"
    "js|units|{}"
    "c|stats|{\"text\":\"one two three\"}"
    "zig|stats|{\"text\":\"one two three\"}"
)

args=()
for s in "${subjects[@]}"; do
    IFS='|' read -r lang tool json <<<"$s"
    cp -r "examples/plugins/$lang" "$work/$lang"
    if HEARTH_HOME="$work/home" "$HEARTH" plugin build "$work/$lang" >"$work/$lang.log" 2>&1; then
        args+=("$work/$lang" "$tool" "$json")
    else
        echo "skipping $lang: $(tail -1 "$work/$lang.log")" >&2
    fi
done

target/release/examples/plugin_languages "${args[@]}"
echo
if [ -f "$model" ]; then
    target/release/examples/plugin_http "$HEARTH" "$model" "${args[@]}"
else
    echo "skipping the server benchmark: no model at $model (hearth model pull)" >&2
fi
