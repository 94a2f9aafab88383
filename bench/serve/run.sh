#!/usr/bin/env bash
# Starts `hearth serve` on a free loopback port, runs bench/serve/load.py
# against it, then stops the server with SIGTERM and checks it exited 0.
#
# Usage: bench/serve/run.sh [MODEL.gguf] [-- extra load.py arguments]
# Environment: HEARTH (binary; default target/release/hearth if present,
# else target/debug/hearth), CHATS, ROUNDS, PLUGIN_CONNS, PLUGIN_REQUESTS,
# PLUGIN_RATE (open-loop calls/s, default 5000), MAX_TOKENS, PYTHON
# (default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

# The default model as `hearth model pull` stores it.
model="${HEARTH_HOME:-$HOME/.local/share/hearth}/models/SmolLM2-135M-Instruct.Q8_0.gguf"
if [[ $# -gt 0 && "$1" != "--" ]]; then
  model="$1"
  shift
fi
[[ "${1:-}" == "--" ]] && shift
extra=("$@")

if [[ -z "${HEARTH:-}" ]]; then
  if [[ -x "$root/target/release/hearth" ]]; then
    HEARTH="$root/target/release/hearth"
  else
    HEARTH="$root/target/debug/hearth"
  fi
fi
PYTHON="${PYTHON:-python3}"
[[ -x "$HEARTH" ]] || { echo "run.sh: no hearth binary at $HEARTH" >&2; exit 1; }
[[ -f "$model" ]] || { echo "run.sh: no model file at $model" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/hearth-bench.XXXXXX")"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    sleep 2
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

key="bench-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')"
port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
url="http://127.0.0.1:$port"

echo "run.sh: $HEARTH serve on $url with $(basename "$model")" >&2
HEARTH_HOME="$work/home" "$HEARTH" serve --addr "127.0.0.1:$port" --api-key "$key" \
  --model "$model" >"$work/server.log" 2>&1 &
server_pid=$!

ready=""
for _ in $(seq 1 600); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "run.sh: the server exited during start-up:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  if "$PYTHON" - "$port" <<'EOF' 2>/dev/null; then
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
    ready=1
    break
  fi
  sleep 0.2
done
[[ -n "$ready" ]] || { echo "run.sh: not ready after 120 s" >&2; cat "$work/server.log" >&2; exit 1; }
grep -h '^hearth:' "$work/server.log" >&2 || true

# The plugin phase runs on the Rust load generator when it is built
# (cargo build --release --manifest-path bench/serve/plugin-load/Cargo.toml):
# Python's asyncio client tops out near the server's own rate.
loadgen="$here/plugin-load/target/release/plugin-load"
python_plugin_conns="${PLUGIN_CONNS:-64}"
[[ -x "$loadgen" ]] && python_plugin_conns=0
"$PYTHON" "$here/load.py" --url "$url" --key "$key" \
  --chats "${CHATS:-8}" --chat-rounds "${ROUNDS:-3}" \
  --plugin-conns "$python_plugin_conns" --plugin-requests "${PLUGIN_REQUESTS:-20}" \
  --max-tokens "${MAX_TOKENS:-32}" "${extra[@]}"
if [[ -x "$loadgen" ]]; then
  "$loadgen" "127.0.0.1:$port" "$key" 64 20 >/dev/null # warm-up
  # Closed loop (saturation), the same connections at a fixed offered
  # rate (open loop), and one connection alone.
  "$loadgen" "127.0.0.1:$port" "$key" "${PLUGIN_CONNS:-64}" "${PLUGIN_REQUESTS:-200}"
  "$loadgen" "127.0.0.1:$port" "$key" "${PLUGIN_CONNS:-64}" "${PLUGIN_REQUESTS:-200}" "${PLUGIN_RATE:-5000}"
  "$loadgen" "127.0.0.1:$port" "$key" 1 "${PLUGIN_REQUESTS:-200}"
fi

kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
if [[ $status -ne 0 ]]; then
  echo "run.sh: the server exited with status $status after SIGTERM:" >&2
  tail -n 20 "$work/server.log" >&2
  exit 1
fi
echo "run.sh: server stopped cleanly (exit 0)" >&2
