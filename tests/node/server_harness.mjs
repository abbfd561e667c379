// Starts `lazymoe serve` (the ASan build under the suite) on a free loopback port
// for the server tests, and stops it, checking that it exits cleanly (status 0,
// no sanitizer report: leaks are checked at exit).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { ROOT, LAZYMOE } from './harness.mjs';

// The model the server tests use: one place, so that the project's own trained
// model can replace the fixture later.
export const SERVER_MODEL = process.env.LAZYMOE_SERVER_MODEL || path.join(ROOT, 'models', 'demo-coder');

export async function startServer(extraArgs = [], env = {}, model = SERVER_MODEL) {
  // The persistent prompt cache stays off unless a test names its directory: one
  // test's stored prompts must not change another's cached_tokens.
  const pc = extraArgs.includes('--prompt-cache-dir') ? [] : ['--prompt-cache-size', '0'];
  const args = ['serve', model, '--port', '0', '--ctx', '4096', '--no-warm-start', ...pc, ...extraArgs];
  const proc = spawn(LAZYMOE, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  let log = '';
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in 60 s: ${log}`)), 60000);
    proc.stderr.on('data', (d) => {
      log += d;
      const m = log.match(/listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    exited.then(({ code }) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening: ${log}`));
    });
  });
  return {
    url,
    pid: proc.pid,
    log: () => log,
    // The log lines matching re, waiting (up to timeoutMs) until there are at least
    // `count`: the server writes a request's line before it answers, but stderr and the
    // HTTP socket are two pipes, and node may read the answer first.
    async logLines(re, count = 1, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const lines = log.split('\n').filter((l) => re.test(l));
        if (lines.length >= count || Date.now() > deadline) return lines;
        await new Promise((res) => setTimeout(res, 20));
      }
    },
    // Stops the server with SIGTERM; throws unless it exits 0 without sanitizer reports.
    async stop() {
      proc.kill('SIGTERM');
      const { code, signal } = await exited;
      if (code !== 0 || /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/.test(log))
        throw new Error(`server exit ${code} ${signal || ''}: ${log.split('\n').slice(-40).join(' | ')}`);
      return log;
    },
  };
}

/** Raw HTTP request (fetch) returning {status, headers, text, json}. */
export async function http(url, { method = 'POST', body, headers = {} } = {}) {
  const r = await fetch(url, {
    method,
    headers: { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.status, headers: r.headers, text, json };
}

/** Parses an SSE body into [{event, data}] (data JSON-parsed when it is JSON). */
export function parseSSE(text) {
  const out = [];
  for (const block of text.split('\n\n')) {
    if (!block.trim()) continue;
    let event = null;
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
    }
    if (!event && !data.length) continue;
    const d = data.join('\n');
    let parsed = d;
    try { parsed = JSON.parse(d); } catch { /* [DONE] */ }
    out.push({ event, data: parsed });
  }
  return out;
}

/** JSON equality of plain values (key order matters). */
export const eq = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// The weather tool the server tests call, as OpenAI chat (WEATHER) and Anthropic
// (TOOLS) declare it.
export const WEATHER = [{
  type: 'function',
  function: {
    name: 'get_weather', description: 'Weather for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] },
  },
}];
export const TOOLS = [{ name: 'get_weather', description: 'Weather for a city', input_schema: WEATHER[0].function.parameters }];
