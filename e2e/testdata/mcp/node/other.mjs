// A different script than server.mjs that makes the same API call itself:
// launched in the server's place, it must not inherit the server's right to
// reach the API. It reports on stderr, since when launched as the "server"
// its stdout is the MCP pipe the agent reads.
import http from 'node:http';

const body = JSON.stringify({ title: 'from other script' });
const result = await new Promise((resolve) => {
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
    timeout: 10_000,
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
process.stderr.write(JSON.stringify({ other: result }) + '\n');
