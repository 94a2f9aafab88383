#!/usr/bin/env python3
"""Load benchmark for `hearth serve`: concurrent streaming chats plus direct
plugin invocations, over raw HTTP/1.1 (standard library only).

Example:
    python3 bench/serve/load.py --url http://127.0.0.1:8080 --key KEY \
        --chats 8 --chat-rounds 3 --plugin-conns 64 --plugin-requests 20 --max-tokens 32

Prints a Markdown table, then one line `{"bench": "hearth-serve", ...}` with
every figure (latencies in milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PROMPTS = [
    "Name a colour of the sky.",
    "Say hello in French.",
    "What is two plus three?",
    "Give one word that rhymes with cat.",
    "Name a fruit that is yellow.",
    "What day comes after Monday?",
    "Write a four-word sentence about rain.",
    "Name an animal that can fly.",
    "What is the opposite of cold?",
    "Suggest a name for a small dog.",
    "Which planet is closest to the sun?",
    "Say something kind in one sentence.",
]


class HttpError(Exception):
    """A protocol-level failure (malformed or truncated response)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]


async def read_head(reader: asyncio.StreamReader) -> Response:
    line = await reader.readline()
    if not line:
        raise HttpError("connection closed before the status line")
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HttpError(f"bad status line {line!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if not line:
            raise HttpError("connection closed inside the headers")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(status, headers)


async def body_chunks(reader: asyncio.StreamReader, head: Response):
    """Yields the body as it arrives (chunked, sized or close-delimited)."""
    if head.headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise HttpError("connection closed inside a chunked body")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # Trailers, then the blank line.
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in head.headers:
        remaining = int(head.headers["content-length"])
        while remaining > 0:
            data = await reader.read(min(remaining, 65536))
            if not data:
                raise HttpError("connection closed inside a sized body")
            remaining -= len(data)
            yield data
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


async def read_body(reader: asyncio.StreamReader, head: Response) -> bytes:
    out = bytearray()
    async for piece in body_chunks(reader, head):
        out += piece
    return bytes(out)


def request_bytes(method: str, host: str, path: str, key: str, body: bytes, close: bool) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        f"Authorization: Bearer {key}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close" if close else "Connection: keep-alive",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (as numpy's default)."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Stats:
    ttft_ms: list[float] = field(default_factory=list)
    chat_ms: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    content_deltas: int = 0
    chats_ok: int = 0
    chat_503: int = 0
    chat_errors: int = 0
    plugin_ms: list[float] = field(default_factory=list)
    plugin_ok: int = 0
    plugin_503: int = 0
    plugin_errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        if len(self.error_samples) < 10:
            self.error_samples.append(what)


async def one_chat(args, stats: Stats, host: str, port: int, prompt: str) -> None:
    payload = {
        "model": "",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.7,
        "max_tokens": args.max_tokens,
    }
    if args.tool_choice:
        payload["tool_choice"] = args.tool_choice
    body = json.dumps(payload).encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        req = request_bytes("POST", f"{host}:{port}", "/v1/chat/completions", args.key, body, close=True)
        start = time.perf_counter()
        writer.write(req)
        await writer.drain()
        head = await read_head(reader)
        if head.status == 503:
            await read_body(reader, head)
            stats.chat_503 += 1
            return
        if head.status != 200:
            text = (await read_body(reader, head))[:300]
            stats.chat_errors += 1
            stats.error(f"chat HTTP {head.status}: {text!r}")
            return
        first = None
        usage_tokens = None
        deltas = 0
        done = False
        buf = b""
        async for piece in body_chunks(reader, head):
            buf += piece
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    line = line.rstrip(b"\r")
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    obj = json.loads(data)
                    if "error" in obj:
                        raise HttpError(f"error event: {obj['error']}")
                    if obj.get("usage"):
                        usage_tokens = obj["usage"].get("completion_tokens")
                    for choice in obj.get("choices", []):
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            deltas += 1
                            if first is None:
                                first = time.perf_counter()
        end = time.perf_counter()
        if not done:
            raise HttpError("stream ended without [DONE]")
        if first is not None:
            stats.ttft_ms.append((first - start) * 1e3)
        stats.chat_ms.append((end - start) * 1e3)
        stats.content_deltas += deltas
        stats.completion_tokens += usage_tokens if usage_tokens is not None else deltas
        stats.chats_ok += 1
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def chat_client(args, stats: Stats, host: str, port: int, index: int) -> None:
    for r in range(args.chat_rounds):
        prompt = PROMPTS[(index * args.chat_rounds + r) % len(PROMPTS)]
        try:
            await one_chat(args, stats, host, port, prompt)
        except (OSError, HttpError, ValueError, asyncio.IncompleteReadError) as e:
            stats.chat_errors += 1
            stats.error(f"chat: {type(e).__name__}: {e}")


async def plugin_conn(args, stats: Stats, host: str, port: int, index: int) -> None:
    rng = random.Random(index)
    reader = writer = None
    try:
        for _ in range(args.plugin_requests):
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            a, b = rng.randint(1, 999), rng.randint(1, 999)
            body = json.dumps({"expression": f"{a}*{b}+{index}"}).encode()
            req = request_bytes("POST", f"{host}:{port}", "/v1/plugins/calc/eval", args.key, body, close=False)
            try:
                start = time.perf_counter()
                writer.write(req)
                await writer.drain()
                head = await read_head(reader)
                data = await read_body(reader, head)
                elapsed = (time.perf_counter() - start) * 1e3
            except (OSError, HttpError, asyncio.IncompleteReadError) as e:
                stats.plugin_errors += 1
                stats.error(f"plugin: {type(e).__name__}: {e}")
                writer.close()
                writer = None
                continue
            if head.status == 503:
                stats.plugin_503 += 1
            elif head.status != 200:
                stats.plugin_errors += 1
                stats.error(f"plugin HTTP {head.status}: {data[:300]!r}")
            else:
                try:
                    value = json.loads(data).get("value")
                except ValueError:
                    value = None
                if value != a * b + index:
                    stats.plugin_errors += 1
                    stats.error(f"plugin: {a}*{b}+{index} gave {data[:200]!r}")
                else:
                    stats.plugin_ok += 1
                    stats.plugin_ms.append(elapsed)
            if head.headers.get("connection", "").lower() == "close":
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


async def run(args) -> dict:
    url = urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        raise SystemExit("--url must be http://HOST:PORT")
    host, port = url.hostname, url.port or 80
    stats = Stats()

    async def chats():
        t0 = time.perf_counter()
        await asyncio.gather(*(chat_client(args, stats, host, port, i) for i in range(args.chats)))
        return time.perf_counter() - t0

    async def plugins():
        t0 = time.perf_counter()
        await asyncio.gather(*(plugin_conn(args, stats, host, port, i) for i in range(args.plugin_conns)))
        return time.perf_counter() - t0

    # Warm-up: the first request evaluates the system prompt and the
    # plugins' tool descriptions, which later ones reuse from the cache.
    # Timed and reported on its own.
    warm = Stats()
    for i in range(args.warmup):
        await one_chat(args, warm, host, port, PROMPTS[-1 - i % len(PROMPTS)])
    if args.mixed:
        chat_wall, plugin_wall = await asyncio.gather(chats(), plugins())
    else:
        chat_wall = await chats()
        plugin_wall = await plugins()

    def ms(v):
        return None if v is None else round(v, 2)

    return {
        "bench": "hearth-serve",
        "chats": args.chats,
        "chat_rounds": args.chat_rounds,
        "max_tokens": args.max_tokens,
        "tool_choice": args.tool_choice,
        "plugin_conns": args.plugin_conns,
        "plugin_requests": args.plugin_requests,
        "mixed": args.mixed,
        "warmup_requests": args.warmup,
        "warmup_ttft_ms": ms(max(warm.ttft_ms, default=None)),
        "chat_requests_ok": stats.chats_ok,
        "ttft_p50_ms": ms(percentile(stats.ttft_ms, 0.50)),
        "ttft_p99_ms": ms(percentile(stats.ttft_ms, 0.99)),
        "ttft_max_ms": ms(max(stats.ttft_ms, default=None)),
        "chat_latency_p50_ms": ms(percentile(stats.chat_ms, 0.50)),
        "completion_tokens": stats.completion_tokens,
        "content_deltas": stats.content_deltas,
        "deltas_per_request": round(stats.content_deltas / stats.chats_ok, 2) if stats.chats_ok else None,
        "tokens_per_s": round(stats.completion_tokens / chat_wall, 2) if chat_wall > 0 else None,
        "chat_wall_s": round(chat_wall, 3),
        "plugin_calls_ok": stats.plugin_ok,
        "plugin_p50_ms": ms(percentile(stats.plugin_ms, 0.50)),
        "plugin_p99_ms": ms(percentile(stats.plugin_ms, 0.99)),
        "plugin_max_ms": ms(max(stats.plugin_ms, default=None)),
        "plugin_calls_per_s": round(stats.plugin_ok / plugin_wall, 1) if plugin_wall > 0 else None,
        "plugin_wall_s": round(plugin_wall, 3),
        "http_503": stats.chat_503 + stats.plugin_503,
        "chat_503": stats.chat_503,
        "plugin_503": stats.plugin_503,
        "errors": stats.chat_errors + stats.plugin_errors,
        "chat_errors": stats.chat_errors,
        "plugin_errors": stats.plugin_errors,
        "error_samples": stats.error_samples,
    }


def markdown(r: dict) -> str:
    def f(v, unit=""):
        return "n/a" if v is None else f"{v}{unit}"

    rows = [
        ("Chat clients × rounds", f"{r['chats']} × {r['chat_rounds']} (max_tokens {r['max_tokens']})"),
        ("Load", "chats and plugin calls together" if r["mixed"] else "chats, then plugin calls"),
        ("Warm-up requests (TTFT of the slowest)", f"{r['warmup_requests']} ({f(r['warmup_ttft_ms'], ' ms')})"),
        ("Chat requests completed", f(r["chat_requests_ok"])),
        ("TTFT p50", f(r["ttft_p50_ms"], " ms")),
        ("TTFT p99", f(r["ttft_p99_ms"], " ms")),
        ("TTFT max", f(r["ttft_max_ms"], " ms")),
        ("Chat request latency p50", f(r["chat_latency_p50_ms"], " ms")),
        ("Completion tokens (content deltas)", f"{r['completion_tokens']} ({r['content_deltas']})"),
        ("Content deltas per request", f(r["deltas_per_request"])),
        ("Aggregate completion tokens/s", f(r["tokens_per_s"])),
        ("Chat wall time", f(r["chat_wall_s"], " s")),
        ("Plugin connections × calls", f"{r['plugin_conns']} × {r['plugin_requests']}"),
        ("Plugin calls completed", f(r["plugin_calls_ok"])),
        ("Plugin latency p50", f(r["plugin_p50_ms"], " ms")),
        ("Plugin latency p99", f(r["plugin_p99_ms"], " ms")),
        ("Plugin latency max", f(r["plugin_max_ms"], " ms")),
        ("Plugin calls/s", f(r["plugin_calls_per_s"])),
        ("HTTP 503 (chat / plugin)", f"{r['http_503']} ({r['chat_503']} / {r['plugin_503']})"),
        ("Other errors (chat / plugin)", f"{r['errors']} ({r['chat_errors']} / {r['plugin_errors']})"),
    ]
    out = ["| Metric | Value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="http://HOST:PORT of a running `hearth serve`")
    p.add_argument("--key", default="", help="API key (Bearer)")
    p.add_argument("--chats", type=int, default=8, help="concurrent streaming chat clients")
    p.add_argument("--chat-rounds", type=int, default=3, help="sequential requests per chat client")
    p.add_argument("--plugin-conns", type=int, default=64, help="concurrent keep-alive plugin connections")
    p.add_argument("--plugin-requests", type=int, default=20, help="plugin calls per connection")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument(
        "--tool-choice",
        default=None,
        help='sent as the chat `tool_choice` (e.g. "none" to keep plugin tools out of the chat); omitted by default',
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed chat requests first (fill the prompt cache)")
    p.add_argument("--mixed", action="store_true", help="run chats and plugin calls at the same time")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = p.parse_args()
    result = asyncio.run(run(args))
    if not args.json_only:
        print(markdown(result))
        dpr = result["deltas_per_request"]
        if dpr is not None and dpr <= 1.0 and result["completion_tokens"] > result["chat_requests_ok"]:
            print(
                "note: each answer arrived as a single content delta (not streamed token by token), "
                "so TTFT here equals the whole request's latency",
                file=sys.stderr,
            )
        for sample in result["error_samples"]:
            print(f"error: {sample}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
