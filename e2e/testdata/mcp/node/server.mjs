// Stdio MCP server standing in for a SaaS integration: it holds the API key
// (env API_KEY) and is the one process that agentfence must let reach the
// API (env API_URL). Its tool result carries either the API's answer or the
// errno code of the failed request, so a test can tell "blocked by the
// fence" (EPERM) from "API not there" (ECONNREFUSED).
//
// Kept self-contained (no local imports) so a test can copy it under another
// name next to this file and launch the copy as a variant.
import http from 'node:http';

import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { z } from 'zod';

// Longer than any fenced connect needs to fail, shorter than the client's
// default request timeout, so a stuck API still yields a tool result.
const requestTimeoutMs = 10_000;

function postTicket(title) {
  const body = JSON.stringify({ title });
  return new Promise((resolve, reject) => {
    // Inside the executor: a bad API_URL becomes a rejection, so a tool error.
    const url = new URL(process.env.API_URL ?? '');
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
      res.on('end', () => resolve({ status: res.statusCode, text }));
      res.on('error', reject);
    });
    req.on('timeout', () => {
      const err = new Error(`POST ${url} timed out`);
      err.code = 'ETIMEDOUT';
      req.destroy(err);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const server = new McpServer({ name: 'agentfence-e2e-tickets', version: '1.0.0' });

server.registerTool('create_ticket', {
  description: 'Create a ticket in the SaaS tracker',
  inputSchema: { title: z.string() },
}, async ({ title }) => {
  try {
    const { status, text } = await postTicket(title);
    if (status < 200 || status > 299) {
      return { content: [{ type: 'text', text: `HTTP ${status}: ${text}` }], isError: true };
    }
    return { content: [{ type: 'text', text }] };
  } catch (err) {
    // The code comes first so a test can match it without parsing node's
    // message wording.
    return { content: [{ type: 'text', text: `${err.code ?? 'ERROR'}: ${err.message}` }], isError: true };
  }
});

await server.connect(new StdioServerTransport());
