// The server soak (issues 21 and 22), shared by the short run in the default suite
// (tests/node/server_soak.test.mjs) and the long one (bench/soak.mjs). Loopback only,
// every wait bounded.
//
// One `lazymoe serve --parallel 4` with a small --memory, an API key and a persistent
// prompt cache in a temporary directory with a small size limit. First each normal
// request is sent once, alone: its answer is the reference (greedy or forced output,
// so it is deterministic). Then, for a fixed time, normal clients (chat completions,
// messages and responses, streamed and not, through the official SDKs and raw fetch)
// repeat them beside hostile ones: idle TCP connections that send nothing, headers
// sent slowly and never finished, bodies sent slowly, clients that leave mid-stream
// and mid-prefill, bodies over --max-body, keyless uploads, invalid JSON and UTF-8.
// Meanwhile /health is polled, the server's RSS sampled from /proc and the prompt
// cache directory measured. runSoak returns what it saw; the callers assert it.
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startServer } from './server_harness.mjs';

const KEY = 'soak-key';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// An error with its causes (the SDKs' "Connection error." wraps fetch's, which wraps
// the socket's): what the server did shows only there.
const why = (e) => {
  const parts = [];
  for (let x = e, i = 0; x && i < 4; x = x.cause, i++) parts.push(`${x.message || x}${x.code ? ` (${x.code})` : ''}`);
  return parts.join(' <- ');
};

export function parseSize(s) {
  const m = /^(\d+)([KMG]?)$/.exec(s);
  return Number(m[1]) * { '': 1, K: 1024, M: 1 << 20, G: 1 << 30 }[m[2]];
}

// ~1,200 tokens (checked on the reference run: over the disk cache's 1,024-token
// minimum), different for every k: these prompts fill the disk cache and evict.
const longPrompt = (k) => `Document ${k}. ` + Array.from({ length: 240 }, (_, i) => `k${k}w${(i * 7 + k) % 97}`).join(' ');
const FORCED = Array.from({ length: 40 }, (_, i) => `f${i % 10}`).join(' ');
const SHORT = ['def reverse(s):', 'Explain a mutex in one line.', 'class Stack:', 'import os\nfor f in'];

// The normal requests: name -> (clients) => canonical answer (JSON-able).
function normalRequests(url, nShort, nLong) {
  const oai = new OpenAI({ baseURL: `${url}/v1`, apiKey: KEY, maxRetries: 0, timeout: 120000 });
  const ant = new Anthropic({ baseURL: url, apiKey: KEY, maxRetries: 0, timeout: 120000 });
  const reqs = {};
  SHORT.slice(0, nShort).forEach((p, i) => {
    const chat = { model: 'm', messages: [{ role: 'user', content: p }], max_tokens: 12, temperature: 0 };
    reqs[`chat_sdk_${i}`] = async () => {
      const r = await oai.chat.completions.create(chat);
      return [r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens];
    };
    reqs[`chat_sdk_stream_${i}`] = async () => {
      let text = '', finish = null, tokens = null;
      for await (const c of await oai.chat.completions.create({ ...chat, stream: true, stream_options: { include_usage: true } })) {
        if (c.choices[0] && c.choices[0].delta.content) text += c.choices[0].delta.content;
        if (c.choices[0] && c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
        if (c.usage) tokens = c.usage.completion_tokens;
      }
      return [text, finish, tokens];
    };
    const msg = { model: 'm', messages: [{ role: 'user', content: p }], max_tokens: 12, temperature: 0 };
    reqs[`messages_sdk_${i}`] = async () => {
      const r = await ant.messages.create(msg);
      return [r.content.map((b) => b.text).join(''), r.stop_reason, r.usage.output_tokens];
    };
    reqs[`messages_sdk_stream_${i}`] = async () => {
      let text = '', stop = null, tokens = null;
      for await (const ev of await ant.messages.create({ ...msg, stream: true })) {
        if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') text += ev.delta.text;
        if (ev.type === 'message_delta') { stop = ev.delta.stop_reason; tokens = ev.usage.output_tokens; }
      }
      return [text, stop, tokens];
    };
    const resp = { model: 'm', input: p, max_output_tokens: 12, temperature: 0 };
    reqs[`responses_sdk_${i}`] = async () => {
      const r = await oai.responses.create(resp);
      return [r.output_text, r.status, r.usage.output_tokens];
    };
    reqs[`responses_sdk_stream_${i}`] = async () => {
      let text = '', done = null;
      for await (const ev of await oai.responses.create({ ...resp, stream: true })) {
        if (ev.type === 'response.output_text.delta') text += ev.delta;
        if (ev.type === 'response.completed' || ev.type === 'response.incomplete') done = ev.response;
      }
      return [text, done && done.status, done && done.usage.output_tokens];
    };
  });
  // Raw fetch: long prompts (stored on disk, restored later), greedy and forced.
  for (let k = 0; k < nLong; k++) {
    reqs[`raw_long_greedy_${k}`] = async () => {
      const r = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
        body: JSON.stringify({ messages: [{ role: 'user', content: longPrompt(k) }], max_tokens: 6, temperature: 0 }),
      });
      const j = await r.json();
      if (r.status !== 200) throw new Error(`raw_long_greedy_${k}: ${r.status} ${JSON.stringify(j).slice(0, 300)}`);
      if (j.usage.prompt_tokens < 1100) throw new Error(`long prompt of only ${j.usage.prompt_tokens} tokens`);
      return [j.choices[0].message.content, j.choices[0].finish_reason, j.usage.completion_tokens];
    };
  }
  reqs.raw_forced_stream = async () => {
    const r = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': KEY },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'say it' }], stream: true, lazymoe_forced_output: FORCED }),
    });
    const text = await r.text();
    let out = '';
    for (const line of text.split('\n'))
      if (line.startsWith('data: {')) out += JSON.parse(line.slice(6)).choices[0]?.delta?.content || '';
    if (r.status !== 200 || out !== FORCED) throw new Error(`forced stream: ${r.status} ${JSON.stringify(out)}`);
    return [out];
  };
  return reqs;
}

// One raw connection: writes `head`, then `parts` with `gapMs` between them, and
// gathers what the server sends until it closes (or `timeoutMs`).
function rawExchange(port, head, parts = [], { gapMs = 0, timeoutMs = 30000, stopWriting } = {}) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = net.connect({ host: '127.0.0.1', port });
    let data = Buffer.alloc(0), closed = false;
    const timer = setTimeout(() => { s.destroy(); }, timeoutMs);
    s.on('data', (d) => { data = Buffer.concat([data, d]); });
    s.on('error', () => {});
    s.on('close', () => {
      closed = true;
      clearTimeout(timer);
      const text = data.toString('latin1');
      const m = /^HTTP\/1\.[01] (\d+)/.exec(text);
      resolve({ status: m ? Number(m[1]) : 0, text, ms: Date.now() - t0, timedOut: Date.now() - t0 >= timeoutMs });
    });
    s.on('connect', async () => {
      s.write(head);
      for (const p of parts) {
        if (closed || (stopWriting && stopWriting(data))) break;
        if (gapMs) await sleep(gapMs);
        if (!closed) s.write(p);
      }
    });
  });
}

function dirBytes(dir) {
  let total = 0;
  for (const f of fs.readdirSync(dir)) {
    try { total += fs.statSync(path.join(dir, f)).size; } catch { /* removed meanwhile */ }
  }
  return total;
}

function procStatus(pid) {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)[1]);
  return { rss: kb('VmRSS') * 1024, hwm: kb('VmHWM') * 1024 };
}

/**
 * opts: seconds (storm length), memory ('128M'), cacheSize ('12M': two of the long
 * prompts' files, so a third evicts), ctx, cacheTokens, maxBody, normalWorkers (clients
 * sending normal requests), shortPrompts (each sent six ways) and longPrompts (~1,200
 * tokens, stored on disk), log (progress lines). Returns a report; the caller asserts on it.
 */
export async function runSoak(opts = {}) {
  const o = { seconds: 20, memory: '128M', cacheSize: '12M', ctx: 2048, cacheTokens: 8192, maxBody: '256K', healthBoundMs: 3000,
    normalWorkers: 3, shortPrompts: 4, longPrompts: 4, log: () => {}, ...opts };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymoe-soak-'));
  const limit = parseSize(o.cacheSize);
  const rep = { failures: [], counts: {}, health: { n: 0, maxMs: 0, bad: 0 }, rssMax: 0, hwm: 0, diskMax: 0, limit,
    mismatches: [], planned: null };
  const count = (k, n = 1) => { rep.counts[k] = (rep.counts[k] || 0) + n; };
  const fail = (what) => { if (rep.failures.length < 40) rep.failures.push(what); };
  // The server writes temporary files in the directory too: all of them count.
  const server = await startServer(['--parallel', '4', '--memory', o.memory, '--ctx', String(o.ctx),
    '--cache-tokens', String(o.cacheTokens), '--prompt-cache-dir', dir, '--prompt-cache-size', o.cacheSize,
    '--api-key', KEY, '--header-timeout', '2', '--max-body', o.maxBody, '--max-connections', '48',
    '--allow-forced-output', '-v']);
  const port = Number(new URL(server.url).port);
  const plan = /plan ([\d.]+) GB of budget ([\d.]+) GB/.exec(server.log());
  rep.planned = plan ? Number(plan[1]) * 1e9 : null;
  rep.budget = parseSize(o.memory);
  let stopped = false;
  const monitors = [];
  // /health every 200 ms, each on a new connection (as a load balancer's probe does;
  // a kept-alive one may be closed as idle by the server when connections run short,
  // and the client's next request on it then races the close): how long each takes.
  monitors.push((async () => {
    while (!stopped) {
      const t0 = Date.now();
      try {
        const r = await new Promise((resolve, reject) => {
          const req = http.get(`${server.url}/health`, { agent: false, timeout: 30000 }, (res) => {
            let body = '';
            res.on('data', (d) => { body += d; });
            res.on('end', () => resolve({ status: res.statusCode, body }));
            res.on('error', reject);
          });
          req.on('timeout', () => req.destroy(new Error('no answer in 30 s')));
          req.on('error', reject);
        });
        JSON.parse(r.body);
        if (r.status !== 200) { rep.health.bad++; fail(`/health: ${r.status}`); }
      } catch (e) {
        rep.health.bad++;
        fail(`/health: ${e.message} ${e.code || ''}`);
      }
      const ms = Date.now() - t0;
      rep.health.n++;
      if (ms > rep.health.maxMs) rep.health.maxMs = ms;
      await sleep(200);
    }
  })());
  // RSS and the prompt cache directory, every 50 ms.
  monitors.push((async () => {
    while (!stopped) {
      try {
        const p = procStatus(server.pid);
        if (p.rss > rep.rssMax) rep.rssMax = p.rss;
        const d = dirBytes(dir);
        if (d > rep.diskMax) rep.diskMax = d;
      } catch { /* exited */ }
      await sleep(50);
    }
  })());

  const reqs = normalRequests(server.url, o.shortPrompts, o.longPrompts);
  const ref = {};
  try {
    // The references: each request alone.
    const t0 = Date.now();
    for (const [name, fn] of Object.entries(reqs)) ref[name] = JSON.stringify(await fn());
    rep.refSeconds = (Date.now() - t0) / 1000;
    o.log(`# references: ${Object.keys(ref).length} requests alone in ${rep.refSeconds.toFixed(1)} s`);
    for (const [name, a] of Object.entries(ref))
      if (!/raw_forced/.test(name) && JSON.parse(a)[2] < 1) fail(`${name}: reference generated nothing: ${a}`);

    const until = Date.now() + o.seconds * 1000;
    const live = () => Date.now() < until;
    const loops = [];
    const names = Object.keys(reqs);
    // Normal clients: every answer must equal its reference.
    for (let w = 0; w < o.normalWorkers; w++)
      loops.push((async () => {
        for (let i = w * 7; live(); i++) {
          const name = names[i % names.length];
          try {
            const a = JSON.stringify(await reqs[name]());
            if (a !== ref[name]) {
              rep.mismatches.push(`${name}: alone ${ref[name]} under load ${a}`);
              fail(`${name} differs under load`);
            }
            count('normal_ok');
          } catch (e) {
            fail(`${name}: ${why(e)}`);
            count('normal_failed');
          }
        }
      })());
    // Idle connections that send nothing: 12 kept open, reopened when the server
    // closes one (--header-timeout 2 s).
    loops.push((async () => {
      const idle = [];
      while (live()) {
        while (idle.length < 12) {
          const s = net.connect({ host: '127.0.0.1', port });
          s.on('error', () => {});
          s.on('close', () => { count('idle_closed'); const i = idle.indexOf(s); if (i >= 0) idle.splice(i, 1); });
          idle.push(s);
          count('idle_opened');
        }
        await sleep(100);
      }
      for (const s of [...idle]) s.destroy();
    })());
    // Headers sent slowly and never finished: closed at the header deadline.
    loops.push((async () => {
      while (live()) {
        const parts = Array.from({ length: 40 }, (_, i) => `X-Slow-${i}: ${'y'.repeat(10)}\r\n`);
        const r = await rawExchange(port, 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n', parts, { gapMs: 250, timeoutMs: 15000 });
        if (r.timedOut || r.ms > 8000) fail(`slow headers held ${r.ms} ms`);
        count('slow_header_cut');
      }
    })());
    // A body sent slowly, in pieces: still answered correctly.
    loops.push((async () => {
      while (live()) {
        const body = Buffer.from(JSON.stringify({ messages: [{ role: 'user', content: 'slow' }], lazymoe_forced_output: 'slowly but surely' }));
        const pieces = [];
        for (let i = 0; i < body.length; i += 16) pieces.push(body.subarray(i, i + 16));
        const r = await rawExchange(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\n` +
          `Content-Type: application/json\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n`, pieces, { gapMs: 150, timeoutMs: 60000 });
        if (r.status !== 200 || !r.text.includes('slowly but surely')) fail(`slow body: ${r.status} ${r.text.slice(0, 200)}`);
        else count('slow_body_ok');
      }
    })());
    // Clients that leave mid-stream.
    loops.push((async () => {
      const oai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
      const long = Array.from({ length: 600 }, (_, i) => `s${i % 10}`).join(' ');
      while (live()) {
        const ac = new AbortController();
        try {
          const st = await oai.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'go on' }], stream: true,
            max_tokens: 1200, lazymoe_forced_output: long }, { signal: ac.signal });
          let n = 0;
          for await (const c of st) { void c; if (++n >= 5) break; }
          ac.abort();
          count('left_mid_stream');
        } catch (e) {
          if (!/abort/i.test(e.message)) fail(`mid-stream client: ${why(e)}`);
        }
        await sleep(100);
      }
    })());
    // Clients that leave during their prompt's evaluation (a fresh ~1,800-token prompt).
    loops.push((async () => {
      let k = 100;
      while (live()) {
        const ac = new AbortController();
        const prompt = `Fresh ${k++} ` + Array.from({ length: 360 }, (_, i) => `p${(i * 13 + k) % 89}`).join(' ');
        const p = fetch(`${server.url}/v1/messages`, { method: 'POST', signal: ac.signal,
          headers: { 'content-type': 'application/json', 'x-api-key': KEY },
          body: JSON.stringify({ model: 'm', max_tokens: 50, stream: true, messages: [{ role: 'user', content: prompt }] }) })
          .then((r) => r.text()).catch((e) => e);
        await sleep(20 + (k % 7) * 40);
        ac.abort();
        const r = await p;
        if (r instanceof Error && !/abort/i.test(r.message)) fail(`mid-prefill client: ${why(r)}`);
        count('left_mid_prefill');
        await sleep(150);
      }
    })());
    // Hostile one-shots: oversized (413), keyless (401 before the body), invalid JSON
    // and UTF-8 (400).
    loops.push((async () => {
      const big = parseSize(o.maxBody) * 4;
      for (let i = 0; live(); i++) {
        let r;
        switch (i % 6) {
        case 0: // announced too large, asking first: refused without the body
          r = await rawExchange(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\n` +
            `Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: ${big}\r\n\r\n`, [], { timeoutMs: 10000 });
          if (r.status !== 413 || /100 Continue/.test(r.text)) fail(`oversized (Expect): ${r.status} ${r.text.slice(0, 120)}`);
          else count('oversized_413');
          break;
        case 5: // announced too large and sent: read, dropped, refused
          r = await rawExchange(port, `POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\n` +
            `Content-Type: application/json\r\nConnection: close\r\nContent-Length: ${big}\r\n\r\n`,
            Array.from({ length: big / 65536 }, () => Buffer.alloc(65536, 32)), { timeoutMs: 20000 });
          if (r.status !== 413) fail(`oversized (Content-Length): ${r.status} ${r.text.slice(0, 120)}`);
          else count('oversized_413');
          break;
        case 1: { // chunked, no length: cut once past --max-body
          const chunk = Buffer.alloc(32768, 32);
          const parts = Array.from({ length: big / 32768 }, () => Buffer.concat([Buffer.from('8000\r\n'), chunk, Buffer.from('\r\n')]));
          parts.push(Buffer.from('0\r\n\r\n'));
          r = await rawExchange(port, `POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: ${KEY}\r\nContent-Type: application/json\r\n` +
            'Transfer-Encoding: chunked\r\n\r\n', parts, { timeoutMs: 10000, stopWriting: (d) => d.length > 0 });
          if (r.status !== 413) fail(`oversized (chunked): ${r.status} ${r.text.slice(0, 120)}`);
          else count('oversized_413');
          break;
        }
        case 2: // keyless upload: 401 without the body being read
          r = await rawExchange(port, 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
            'Content-Length: 31457280\r\n\r\n', [Buffer.alloc(4096, 32)], { timeoutMs: 10000 });
          if (r.status !== 401 || r.timedOut) fail(`keyless: ${r.status} after ${r.ms} ms ${r.text.slice(0, 120)}`);
          else count('keyless_401');
          break;
        case 3: { // invalid JSON
          const body = '{"messages": [{"role": "user", "content": "x"}';
          r = await rawExchange(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\n` +
            `Content-Type: application/json\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n${body}`, [], { timeoutMs: 10000 });
          if (r.status !== 400) fail(`invalid JSON: ${r.status} ${r.text.slice(0, 200)}`);
          else count('invalid_400');
          break;
        }
        default: { // invalid UTF-8 inside a string
          const body = Buffer.concat([Buffer.from('{"model":"m","max_tokens":4,"messages":[{"role":"user","content":"a'),
            Buffer.from([0xc3, 0x28, 0xff, 0xfe]), Buffer.from('"}]}')]);
          r = await rawExchange(port, `POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: ${KEY}\r\nContent-Type: application/json\r\n` +
            `Connection: close\r\nContent-Length: ${body.length}\r\n\r\n`, [body], { timeoutMs: 10000 });
          if (r.status !== 400) fail(`invalid UTF-8: ${r.status} ${r.text.slice(0, 200)}`);
          else count('invalid_400');
        }
        }
        await sleep(100);
      }
    })());
    await Promise.all(loops);
    rep.stormSeconds = o.seconds;
    // Afterwards: nothing left running, and a normal request still answers as alone.
    let h = null;
    for (let i = 0; i < 200; i++) {
      h = await (await fetch(`${server.url}/health`)).json();
      if (h.running === 0 && h.queued === 0) break;
      await sleep(50);
    }
    rep.finalHealth = h;
    if (h.running !== 0 || h.queued !== 0) fail(`requests left behind: ${JSON.stringify(h)}`);
    const again = JSON.stringify(await reqs.chat_sdk_0());
    if (again !== ref.chat_sdk_0) fail(`after the soak: ${again} vs ${ref.chat_sdk_0}`);
  } finally {
    stopped = true;
    await Promise.all(monitors);
    try { rep.hwm = procStatus(server.pid).hwm; } catch { /* gone */ }
    try {
      const log = await server.stop();
      rep.stored = (log.match(/prompt cache: stored/g) || []).length;
      rep.removed = (log.match(/prompt cache: removing/g) || []).length;
      rep.restored = (log.match(/cached=[1-9]/g) || []).length;
      rep.status = {};
      for (const m of log.matchAll(/ (\d\d\d)(?: stream)? in=/g)) rep.status[m[1]] = (rep.status[m[1]] || 0) + 1;
    } catch (e) {
      fail(`server stop: ${e.message}`);
    }
    rep.diskAtEnd = dirBytes(dir);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return rep;
}
