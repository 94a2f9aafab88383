#!/usr/bin/env bash
# Checks hearth@.service with `systemd-analyze verify` (Debian: systemd) and
# that hearth.toml uses only keys `hearth serve --config` accepts. The unit
# is verified as instance hearth@8081 with its ExecStart pointed at a stub
# (the check wants an executable there). Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#!/bin/sh\nexit 0\n' >"$tmp/hearth"
chmod +x "$tmp/hearth"
sed "s|/usr/local/bin/hearth|$tmp/hearth|" 'hearth@.service' >"$tmp/hearth@.service"
echo "== systemd-analyze verify hearth@8081.service"
out=$(cd "$tmp" && systemd-analyze verify ./hearth@8081.service 2>&1 || true)
if [ -n "$out" ]; then
    echo "$out" >&2
    exit 1
fi
echo "ok"
echo "== hearth.toml keys"
python3 - <<'PY'
import tomllib
config = tomllib.load(open("hearth.toml", "rb"))
# ServeConfig in host/src/cli/serve.rs (deny_unknown_fields).
known = {"addr", "model", "context", "api-keys", "admin-keys", "insecure-no-auth", "queue",
         "parallel", "shutdown-grace", "kv", "mcp-allowed-hosts", "mcp"}
unknown = set(config) - known
assert not unknown, f"unknown keys: {unknown}"
assert "api-keys" not in config, "keys belong in /etc/hearth/keys.env"
print("ok", sorted(config))
PY
echo "systemd: all checks passed"
