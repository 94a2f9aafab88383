#!/usr/bin/env python3
"""Summarise a run.sh results directory as a Markdown table.

The directory holds one file per measurement, named
    t<THREADS>-r<ROUND>-llama.json   output of `llama-bench ... -o json`
    t<THREADS>-r<ROUND>-hearth.json  output of `hearth bench model ... --format json`
    start-r<ROUND>-{llama,hearth}.json  measure.py's start-up figures
    first-start-hearth.json          hearth's first start (writes its weight image)

llama-bench writes a JSON array; the entry with n_prompt > 0 is prompt
processing and the one with n_gen > 0 is decode, each with avg_ts (tokens/s).
hearth writes one JSON object with prompt_tokens_per_s and decode_tokens_per_s.

Every figure in the table is the median over rounds; ratio is hearth divided
by llama.cpp, so above 1 means hearth is faster.

    python3 summarise.py RESULTS_DIR
"""

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"^t(\d+)-r(\d+)-(llama|hearth)\.json$")


def parse_llama(text):
    """(prompt tok/s, decode tok/s) from llama-bench's JSON array."""
    prompt = decode = None
    for entry in json.loads(text):
        if entry.get("n_prompt", 0) > 0 and entry.get("n_gen", 0) == 0:
            prompt = float(entry["avg_ts"])
        elif entry.get("n_gen", 0) > 0 and entry.get("n_prompt", 0) == 0:
            decode = float(entry["avg_ts"])
    return prompt, decode


def parse_hearth(text):
    """(prompt tok/s, decode tok/s) from hearth's single JSON object.

    The whole output should be that object; failing that, the last line that
    parses as a JSON object is used (in case something else got printed)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
        for line in reversed(text.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                    break
                except json.JSONDecodeError:
                    continue
        if obj is None:
            raise ValueError("no JSON object in hearth output")
    return float(obj["prompt_tokens_per_s"]), float(obj["decode_tokens_per_s"])


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=1):
    return "n/a" if value is None else f"{value:.{digits}f}"


def ratio(a, b):
    return None if a is None or not b else a / b


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    results = Path(argv[1])
    # samples[threads][engine] -> list of (prompt, decode)
    samples = defaultdict(lambda: defaultdict(list))
    problems = []
    for path in sorted(results.iterdir()):
        m = NAME.match(path.name)
        if not m:
            continue
        threads, engine = int(m.group(1)), m.group(3)
        parse = parse_llama if engine == "llama" else parse_hearth
        try:
            samples[threads][engine].append(parse(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"{path.name}: {e}")
    if not samples:
        print(f"no result files in {results}", file=sys.stderr)
        return 1

    print("| threads | hearth prompt tok/s | llama.cpp prompt tok/s | ratio "
          "| hearth decode tok/s | llama.cpp decode tok/s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    counts = set()
    for threads in sorted(samples):
        h, l = samples[threads]["hearth"], samples[threads]["llama"]
        hp, hd = median([s[0] for s in h]), median([s[1] for s in h])
        lp, ld = median([s[0] for s in l]), median([s[1] for s in l])
        print(f"| {threads} | {fmt(hp)} | {fmt(lp)} | {fmt(ratio(hp, lp), 2)} "
              f"| {fmt(hd)} | {fmt(ld)} | {fmt(ratio(hd, ld), 2)} |")
        counts.add((len(h), len(l)))
    print()
    print("Medians over rounds (hearth/llama.cpp rounds: "
          + ", ".join(f"{a}/{b}" for a, b in sorted(counts))
          + "); ratio = hearth / llama.cpp, above 1 means hearth is faster.")
    start = defaultdict(list)
    for path in sorted(results.glob("start-r*-*.json")):
        engine = path.stem.rsplit("-", 1)[1]
        try:
            start[engine].append(json.loads(path.read_text()))
        except ValueError as e:
            problems.append(f"{path.name}: {e}")
    if start:
        print()
        print("| start-up (1 prompt + 1 decoded token) | hearth | llama.cpp | ratio |")
        print("|---|---:|---:|---:|")
        for key, label in (("wall_s", "process start to exit, s"),
                           ("max_rss_mb", "peak resident memory, MB")):
            h = median([s[key] for s in start["hearth"]])
            l = median([s[key] for s in start["llama"]])
            print(f"| {label} | {fmt(h, 2)} | {fmt(l, 2)} | {fmt(ratio(h, l), 2)} |")
        first = results / "first-start-hearth.json"
        if first.exists():
            f = json.loads(first.read_text())
            print()
            print(f"hearth's first start (reads the model, writes its weight image): "
                  f"{f['wall_s']:.2f} s, peak {f['max_rss_mb']:.0f} MB. "
                  "Ratios here are hearth / llama.cpp: below 1 is faster and smaller.")
    for p in problems:
        print(f"warning: could not parse {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
