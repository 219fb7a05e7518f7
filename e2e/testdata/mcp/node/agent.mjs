// Stands in for an AI agent: it launches its MCP server over stdio, calls the
// server's tool, and then tries the same API call itself. Under agentfence
// the tool call must succeed and the agent's own call must fail (EPERM).
//
// Usage: node agent.mjs [NAME=VALUE ...] [COMMAND [ARG ...]]
//   NAME=VALUE   set only in the server's environment (like env(1)), e.g.
//                NODE_OPTIONS=--require=/abs/evil.js, so the agent itself is
//                not affected.
//   COMMAND ARG  the server to launch; default: this node binary running
//                server.mjs beside this file.
// The server gets the agent's whole environment (API_URL, API_KEY, ...) plus
// the NAME=VALUE pairs: the SDK would otherwise pass only a safe subset.
//
// Output on stdout, one JSON object a line:
//   {"tool": "<tool result text or error>", "tool_error": <bool>}
//   {"direct": "<response body, or error code such as EPERM>"}
// Exit status is 0 whenever both lines were printed; the server's stderr
// passes through to ours.
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const requestTimeoutMs = 10_000;

function parseArgs(argv) {
  const serverEnv = {};
  let i = 0;
  for (; i < argv.length; i++) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(argv[i]);
    if (!m) break;
    serverEnv[m[1]] = m[2];
  }
  const rest = argv.slice(i);
  if (rest.length === 0) {
    return { serverEnv, command: process.execPath, args: [path.join(here, 'server.mjs')] };
  }
  return { serverEnv, command: rest[0], args: rest.slice(1) };
}

async function callTool({ serverEnv, command, args }) {
  const transport = new StdioClientTransport({
    command,
    args,
    env: { ...process.env, ...serverEnv },
    stderr: 'inherit',
  });
  const client = new Client({ name: 'agentfence-e2e-agent', version: '1.0.0' });
  try {
    await client.connect(transport);
    const res = await client.callTool({ name: 'create_ticket', arguments: { title: 'from agent' } });
    const text = (res.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('\n');
    return { tool: text, tool_error: Boolean(res.isError) };
  } catch (err) {
    // The server could not be started or did not speak MCP (e.g. a test
    // launched a non-server script): still a line, so the test can assert.
    return { tool: `${err.code ?? 'ERROR'}: ${err.message}`, tool_error: true };
  } finally {
    await client.close().catch(() => {});
  }
}

function postDirect() {
  const body = JSON.stringify({ title: 'direct from agent' });
  return new Promise((resolve) => {
    let url;
    try {
      url = new URL(process.env.API_URL ?? '');
    } catch (err) {
      resolve(err.code ?? err.message);
      return;
    }
    const req = http.request(url, {
      method: 'POST',
      headers: {
        Authorization: `Bearer ${process.env.API_KEY ?? ''}`,
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(body),
      },
      timeout: requestTimeoutMs,
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => resolve(res.statusCode >= 200 && res.statusCode <= 299 ? text : `HTTP ${res.statusCode}: ${text}`));
      res.on('error', (err) => resolve(err.code ?? err.message));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
    req.on('error', (err) => resolve(err.code ?? err.message));
    req.end(body);
  });
}

const opts = parseArgs(process.argv.slice(2));
process.stdout.write(JSON.stringify(await callTool(opts)) + '\n');
process.stdout.write(JSON.stringify({ direct: await postDirect() }) + '\n');
