// hearth's `/mcp` as the official MCP TypeScript SDK sees it (a client of
// the initialize-handshake revisions). Run by host/tests/mcp_python.rs:
//
//     node mcp_client.mjs URL API_KEY
//
// with HEARTH_MCP_SDK naming the installed @modelcontextprotocol/sdk
// folder. Exits non-zero on any mismatch; prints one line per check.

import assert from "node:assert/strict";
import { createRequire } from "node:module";

const require = createRequire(process.env.HEARTH_MCP_SDK + "/package.json");
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");

const [url, key] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${key}` } },
});
const client = new Client({ name: "hearth-test", version: "1.0.0" });
await client.connect(transport);
console.log(`ok: connected, protocol ${transport.protocolVersion ?? "(negotiated)"}`);
assert.equal(client.getServerVersion().name, "hearth");
assert.ok(client.getServerCapabilities().tools, "tools capability");

const { tools } = await client.listTools();
const calc = tools.find((t) => t.name === "calc.eval");
assert.ok(calc, `calc.eval in ${tools.map((t) => t.name)}`);
assert.equal(calc.inputSchema.properties.expression.type, "string");
assert.deepEqual(calc.inputSchema.required, ["expression"]);
console.log(`ok: tools/list: ${tools.length} tools, calc.eval with its schema`);

const result = await client.callTool({ name: "calc.eval", arguments: { expression: "6*7" } });
assert.ok(!result.isError, JSON.stringify(result));
assert.equal(JSON.parse(result.content[0].text).value, 42);
assert.equal(result.structuredContent.value, 42);
console.log("ok: calc.eval 6*7 = 42");

const failed = await client.callTool({ name: "calc.eval", arguments: { expression: "(2+" } });
assert.equal(failed.isError, true, JSON.stringify(failed));
console.log(`ok: a tool error is isError: ${failed.content[0].text}`);

await client.close();
