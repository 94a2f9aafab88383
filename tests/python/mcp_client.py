"""hearth's MCP server as the official MCP Python SDK sees it.

Run by host/tests/mcp_python.rs, once per transport and protocol mode:

    mcp_client.py stdio MODE                # starts `$HEARTH_BIN mcp` itself
    mcp_client.py http URL API_KEY MODE     # talks to a running `hearth serve`

MODE is `auto` (the SDK's default: server/discover, protocol 2026-07-28,
change notifications on a subscriptions/listen stream; over HTTP, an
abandoned call's request is closed) or `legacy` (the initialize handshake
of the earlier revisions, change notifications on the session). HEARTH_BIN names the hearth binary and HEARTH_HOME the data
directory the server uses; the script disables and re-enables the `notes`
plugin there with `hearth plugin` and checks that the tool list follows. Exits non-zero, with a
traceback, on any mismatch; prints one line per check that passed.
"""

import asyncio
import json
import os
import subprocess
import sys

import mcp_types as types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

# The server looks at installed.toml every 2 s; a reload is well within this.
CHANGE_TIMEOUT = 30


def passed(what):
    print(f"ok: {what}", flush=True)


def text_of(result):
    return "".join(block.text for block in result.content if getattr(block, "type", "") == "text")


def hearth_plugin(*args):
    """`hearth plugin ARGS` against the server's data directory."""
    out = subprocess.run(
        [os.environ["HEARTH_BIN"], "plugin", *args],
        env={**os.environ, "HEARTH_HOME": os.environ["HEARTH_HOME"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, (args, out.stdout, out.stderr)


async def tool_names(client):
    listed = await client.list_tools(cache_mode="refresh")
    return {tool.name: tool for tool in listed.tools}


async def check_tools(client):
    tools = await tool_names(client)
    assert "calc.eval" in tools, sorted(tools)
    assert "notes.save" in tools, sorted(tools)
    calc = tools["calc.eval"]
    schema = calc.input_schema
    assert schema["type"] == "object", schema
    assert schema["properties"]["expression"]["type"] == "string", schema
    assert schema["required"] == ["expression"], schema
    assert "arithmetic" in (calc.description or ""), calc.description
    passed(f"tools/list: {len(tools)} tools, calc.eval with its schema")

    result = await client.call_tool("calc.eval", {"expression": "6*7"})
    assert not result.is_error, result
    assert result.structured_content["value"] == 42, result
    assert json.loads(text_of(result))["value"] == 42, result
    passed("tools/call calc.eval 6*7 = 42")

    # The plugin's own error: the expression passes the schema, not the parser.
    result = await client.call_tool("calc.eval", {"expression": "(2+"})
    assert result.is_error, result
    assert "calc.eval" in text_of(result), text_of(result)
    passed(f"a tool error is isError: {text_of(result)}")

    # A schema violation: refused before the plugin runs, as a tool result.
    result = await client.call_tool("calc.eval", {"expression": 42})
    assert result.is_error, result
    assert "schema" in text_of(result), text_of(result)
    passed(f"a schema violation is isError: {text_of(result)}")

    # An unknown tool is a protocol error, invalid params.
    try:
        await client.call_tool("nope.nothing", {})
    except MCPError as e:
        assert e.error.code == types.INVALID_PARAMS, e.error
        passed(f"an unknown tool is JSON-RPC error {e.error.code}")
    else:
        raise AssertionError("calling an unknown tool succeeded")


# Runs for the whole of calc's 1 s time limit, then traps.
SLOW = {"expression": "((2/3)^4096+(5/7)^4096)^4096"}


async def check_cancel(client):
    """A call whose request goes away is dropped, not run to its end.

    The host counts each finished plugin call in /metrics; the driver checks
    that only the second of these two calls was counted (as a timeout).
    """
    call = asyncio.ensure_future(client.call_tool("calc.eval", SLOW))
    await asyncio.sleep(0.3)
    call.cancel()
    try:
        await call
    except asyncio.CancelledError:
        pass
    passed("a slow call, abandoned after 0.3 s")
    result = await client.call_tool("calc.eval", SLOW)
    assert result.is_error and "time limit" in text_of(result), result
    passed(f"the same call, waited for, hits the limit: {text_of(result)}")


async def wait_for(predicate, what):
    """Waits until `predicate()` (async) holds, for the reload to land."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CHANGE_TIMEOUT
    while True:
        if await predicate():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def check_changes_modern(client):
    """2026-07-28: a subscriptions/listen stream is told of each change."""
    async with client.listen(tools_list_changed=True) as sub:
        assert sub.honored.tools_list_changed, sub.honored
        events = aiter(sub)
        hearth_plugin("disable", "notes")
        event = await asyncio.wait_for(anext(events), CHANGE_TIMEOUT)
        passed(f"told of the change on the listen stream: {type(event).__name__}")
        tools = await tool_names(client)
        assert "notes.save" not in tools and "calc.eval" in tools, sorted(tools)
        passed("notes.* gone after `hearth plugin disable notes`")
        hearth_plugin("enable", "notes")
        await asyncio.wait_for(anext(events), CHANGE_TIMEOUT)
        tools = await tool_names(client)
        assert "notes.save" in tools, sorted(tools)
        passed("notes.* back after `hearth plugin enable notes`, notified again")


async def check_changes_legacy(client, changed):
    """Earlier revisions: notifications/tools/list_changed on the session."""
    changed.clear()
    hearth_plugin("disable", "notes")
    await asyncio.wait_for(changed.wait(), CHANGE_TIMEOUT)
    passed("told of the change: notifications/tools/list_changed")
    tools = await tool_names(client)
    assert "notes.save" not in tools and "calc.eval" in tools, sorted(tools)
    passed("notes.* gone after `hearth plugin disable notes`")
    changed.clear()
    hearth_plugin("enable", "notes")
    await asyncio.wait_for(changed.wait(), CHANGE_TIMEOUT)
    tools = await tool_names(client)
    assert "notes.save" in tools, sorted(tools)
    passed("notes.* back after `hearth plugin enable notes`, notified again")


async def main():
    transport, mode = sys.argv[1], sys.argv[-1]
    changed = asyncio.Event()

    async def on_message(message):
        inner = getattr(message, "root", message)
        if getattr(inner, "method", None) == "notifications/tools/list_changed":
            changed.set()

    if transport == "stdio":
        server = StdioServerParameters(
            command=os.environ["HEARTH_BIN"],
            args=["mcp"],
            env={"HEARTH_HOME": os.environ["HEARTH_HOME"]},
        )
    else:
        url, api_key = sys.argv[2], sys.argv[3]
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {api_key}"})
        server = streamable_http_client(url, http_client=http)

    async with Client(server, mode=mode, message_handler=on_message, read_timeout_seconds=60) as client:
        passed(f"connected over {transport}, protocol {client.protocol_version}")
        if mode == "legacy":
            assert client.protocol_version < "2026-07-28", client.protocol_version
        else:
            assert client.protocol_version >= "2026-07-28", client.protocol_version
        assert client.server_capabilities.tools.list_changed, client.server_capabilities
        await check_tools(client)
        if transport == "http" and mode == "auto":
            await check_cancel(client)
        if mode == "legacy":
            await check_changes_legacy(client, changed)
        else:
            await check_changes_modern(client)


asyncio.run(main())
