// Many MCP calls through the MCP Inspector CLI's own client code, in one Node process.
//
// Why: each `mcp-inspector --cli` call is a Node process (about 0.5 s of CPU to start), and a test that calls every
// tool and reads every resource makes dozens. This runs the same functions the CLI's index.js runs for one call
// (cli/build/client: listTools, callTool with its schema-driven conversion of `key=value` strings, readResource,
// getPrompt...), each call on a fresh transport and client as the CLI makes them, and prints one JSON result per
// call. The CLI's option parsing itself stays covered by the tests that run it as a command.
//
//   node tests/inspector_batch.mjs <inspector cli/build/index.js> <server url> < calls.json
//
// calls.json: [{"method": "tools/call", "toolName": "x", "toolArg": {"k": "v"}}, {"method": "resources/read",
// "uri": "..."}, {"method": "prompts/get", "promptName": "p", "promptArgs": {"k": "v"}}, ...]
// Output: a JSON list, one {"result": ...} or {"error": "..."} per call, in order.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const [cliIndex, url] = process.argv.slice(2);
if (!cliIndex || !url) {
  console.error("usage: node inspector_batch.mjs <cli/build/index.js> <server url> < calls.json");
  process.exit(2);
}
const build = dirname(cliIndex);
const load = (path) => import(pathToFileURL(path).href);
const client = await load(join(build, "client", "index.js"));
const { createTransport } = await load(join(build, "transport.js"));
// the SDK the CLI itself imports (resolved from its folder; the ESM build, as its ESM code loads it)
const sdkCjs = createRequire(cliIndex).resolve("@modelcontextprotocol/sdk/client/index.js");
const { Client } = await load(sdkCjs.replace(`${join("dist", "cjs")}`, join("dist", "esm")));

async function one(call) {
  const transport = createTransport({ transportType: "http", url });
  const c = new Client({ name: "inspector-cli", version: "0.5.1" });
  try {
    await client.connect(c, transport);
    switch (call.method) {
      case "tools/list": return await client.listTools(c);
      case "tools/call": return await client.callTool(c, call.toolName, call.toolArg || {});
      case "resources/list": return await client.listResources(c);
      case "resources/templates/list": return await client.listResourceTemplates(c);
      case "resources/read": return await client.readResource(c, call.uri);
      case "prompts/list": return await client.listPrompts(c);
      case "prompts/get": return await client.getPrompt(c, call.promptName, call.promptArgs || {});
      default: throw new Error(`unsupported method ${call.method}`);
    }
  } finally {
    await client.disconnect(transport);
  }
}

const calls = JSON.parse(readFileSync(0, "utf8"));
const out = [];
for (const call of calls) {
  try {
    out.push({ result: await one(call) });
  } catch (error) {
    out.push({ error: error instanceof Error ? error.message : String(error) });
  }
}
process.stdout.write(JSON.stringify(out));
