#!/usr/bin/env bash
# Checks and unit-tests hearth's Prometheus rules and example configs with
# promtool (Debian: apt-get install prometheus). Exits non-zero on any
# failure.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool not found: apt-get install prometheus (or put upstream promtool on PATH)" >&2
    exit 2
fi
promtool --version 2>&1 | head -1

echo "== promtool check rules hearth-alerts.yml"
promtool check rules hearth-alerts.yml

echo "== promtool test rules hearth-alerts.test.yml"
promtool test rules hearth-alerts.test.yml

echo "== promtool check config prometheus.host.example.yml"
promtool check config prometheus.host.example.yml

# Debian's Prometheus is built without Kubernetes service discovery, so its
# promtool rejects kubernetes_sd_configs. Upstream promtool checks the file
# as it is; otherwise the rest of it (relabelling, jobs, rule files) is
# checked with the discovery block swapped for an empty static_configs.
echo "== promtool check config prometheus.k8s.example.yml"
if promtool check config prometheus.k8s.example.yml >/tmp/hearth-promtool-k8s.log 2>&1; then
    cat /tmp/hearth-promtool-k8s.log
elif grep -q "field kubernetes_sd_configs not found" /tmp/hearth-promtool-k8s.log; then
    echo "this promtool has no Kubernetes discovery; checking the rest of the file"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cp hearth-alerts.yml "$tmp/"
    python3 - prometheus.k8s.example.yml "$tmp/prometheus.yml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
# kubernetes_sd_configs: and its indented block -> static_configs: []
text, n = re.subn(r"(?m)^(\s*)kubernetes_sd_configs:\n(?:\1\s+.*\n)+", r"\1static_configs: []\n", text)
assert n == 1, n
open(sys.argv[2], "w").write(text)
PY
    promtool check config "$tmp/prometheus.yml"
else
    cat /tmp/hearth-promtool-k8s.log >&2
    exit 1
fi
echo "prometheus: all checks passed"
