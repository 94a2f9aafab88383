#!/usr/bin/env python3
"""Checks deploy/grafana/hearth.json offline: it is a dashboard Grafana can
import (unique panel ids and places, a Prometheus data-source variable,
every target with a query), each query is valid PromQL (promtool checks
them as recording rules, with the dashboard's variables filled in), and
each of the four service targets has its panel with its threshold.

Usage: python3 deploy/grafana/check.py   (needs promtool on PATH)
Exits non-zero on the first failure, saying what is wrong."""

import json
import pathlib
import re
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
dashboard = json.loads((HERE / "hearth.json").read_text())


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


for key in ("uid", "title", "schemaVersion", "panels", "templating"):
    if key not in dashboard:
        fail(f"the dashboard has no {key!r}")
variables = {v["name"]: v for v in dashboard["templating"]["list"]}
if variables.get("datasource", {}).get("query") != "prometheus":
    fail("no `datasource` variable of type prometheus")

ids, places, queries = set(), set(), []
for panel in dashboard["panels"]:
    if panel["id"] in ids:
        fail(f"panel id {panel['id']} is used twice")
    ids.add(panel["id"])
    grid = panel["gridPos"]
    if grid["x"] + grid["w"] > 24:
        fail(f"panel {panel['title']!r} is wider than the grid")
    for dx in range(grid["w"]):
        for dy in range(grid["h"]):
            cell = (grid["x"] + dx, grid["y"] + dy)
            if cell in places:
                fail(f"panel {panel['title']!r} overlaps another at {cell}")
            places.add(cell)
    if panel["type"] == "row":
        continue
    if panel.get("datasource", {}).get("uid") != "${datasource}":
        fail(f"panel {panel['title']!r} does not use the datasource variable")
    if not panel.get("targets"):
        fail(f"panel {panel['title']!r} has no query")
    for target in panel["targets"]:
        queries.append((panel["title"], target["expr"]))

# The four targets, each with its threshold on its panel.
targets = {
    "P99 response time": 0.5,
    "Error rate": 0.001,
    "Model load success": 0.999,
    "Memory against the limit": 0.8,
}
for prefix, threshold in targets.items():
    panel = next((p for p in dashboard["panels"] if p["title"].startswith(prefix)), None)
    if panel is None:
        fail(f"no panel for the target {prefix!r}")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    if threshold not in [s["value"] for s in steps]:
        fail(f"the panel {panel['title']!r} has no threshold at {threshold}")

# Grafana's variables, filled in as Grafana would before sending a query.
def filled(expr):
    return expr.replace("$__range", "1d").replace("$job", "hearth")

rules = {"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard:query_{i}", "expr": filled(expr)} for i, (_, expr) in enumerate(queries)
]}]}
with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
    # JSON is YAML: no YAML library needed.
    json.dump(rules, f)
result = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
pathlib.Path(f.name).unlink()
if result.returncode != 0:
    fail("promtool rejects a query:\n" + result.stdout + result.stderr)

metrics = sorted({m for _, e in queries for m in re.findall(r"\bhearth_[a-z_]+", e)})
print(f"dashboard: {len(dashboard['panels'])} panels, {len(queries)} queries valid; metrics used: {', '.join(metrics)}")
