"""A remote MCP server, built with the official MCP Python SDK, for hearth to use.

Run by host/tests/mcp_sources.rs, which points a `[[mcp]]` entry of
`hearth serve --config FILE` at it:

    mcp_server.py PORT CALL_LOG TOKEN

Serves streamable HTTP at http://127.0.0.1:PORT/mcp, stateless: protocol
2026-07-28 (one self-contained POST per request) and the earlier revisions'
initialize handshake both work, without sessions. PORT 0 picks a free port.
Once it accepts connections it prints `listening on PORT` (the real port) on
stdout and flushes; the caller waits for that line. Every request without
`Authorization: Bearer TOKEN` is answered 401 before the SDK sees it.

Tools, each appending one JSON line to CALL_LOG when called:

    lookup(key)     returns "value-of-" + key   {"tool":"lookup","key":KEY}
    slow(seconds)   sleeps max(seconds, 30) s   {"tool":"slow"}
                    (at most 60), then returns
                    "done": whatever the model
                    asks for, a short time limit
                    runs out well before
    secret()        returns "top secret"        {"tool":"secret"}
    fail()          a tool error (isError)      {"tool":"fail"}

Runs until killed.
"""

import asyncio
import json
import sys

import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

PORT, CALL_LOG, TOKEN = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def log_call(entry):
    with open(CALL_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, separators=(",", ":")) + "\n")


server = MCPServer("hearth-test-remote", log_level="WARNING")


@server.tool()
def lookup(key: str) -> str:
    """Looks up the value stored under a key."""
    log_call({"tool": "lookup", "key": key})
    return "value-of-" + key


@server.tool()
async def slow(seconds: float = 5) -> str:
    """Waits the given number of seconds, then answers "done"."""
    log_call({"tool": "slow"})
    await asyncio.sleep(min(max(seconds, 30), 60))
    return "done"


@server.tool()
def secret() -> str:
    """Tells a secret."""
    log_call({"tool": "secret"})
    return "top secret"


@server.tool()
def fail() -> str:
    """Always fails."""
    log_call({"tool": "fail"})
    raise ToolError("fail always fails")


def require_token(app):
    """ASGI middleware: HTTP requests must carry `Authorization: Bearer TOKEN`.

    Other scopes (the lifespan, which starts the SDK's session manager) pass
    through untouched.
    """
    expected = f"Bearer {TOKEN}".encode()

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            body = b'{"error":"missing or wrong bearer token"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b"Bearer"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return guarded


async def main():
    app = server.streamable_http_app(stateless_http=True, host="127.0.0.1")
    config = uvicorn.Config(require_token(app), host="127.0.0.1", port=PORT, log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    serving = asyncio.create_task(web.serve())
    while not web.started:
        if serving.done():
            serving.result()  # raises what stopped it
            sys.exit("the server stopped before it started")
        await asyncio.sleep(0.05)
    port = web.servers[0].sockets[0].getsockname()[1]
    print(f"listening on {port}", flush=True)
    await serving


asyncio.run(main())
