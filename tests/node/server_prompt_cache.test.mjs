// The prompt cache keeps a long conversation while a short side request runs (issue 21:
// Claude Code's own 573-token title request evicted its 34,771-token conversation).
// Repro on a --ctx 4096 server: a ~2,100-token request, a ~260-token one, the first again
// -> the first must come back with its prompt cached. Before: the first session had grown
// (by doubling) to the whole 4096-token budget and any other request evicted it. Then
// the persistent prompt cache across server restarts.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { testCase, assert, done, lazymoe } from './harness.mjs';
import { startServer, SERVER_MODEL } from './server_harness.mjs';

const server = await startServer([]);
const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
const words = (n, tag) => Array.from({ length: n }, (_, i) => `${tag}${i}`).join(' ');
const long = [{ role: 'user', content: `Summarize: ${words(700, 'w')}` }];
const short = [{ role: 'user', content: `Title for: ${words(80, 'q')}` }];
const ask = (messages, max_tokens) => openai.chat.completions.create({ model: 'demo', messages, max_tokens, temperature: 0 });

await testCase('prompt_cache_side_request_keeps_long_conversation', async () => {
  const a = await ask(long, 8);
  assert(a.usage.prompt_tokens > 2048 && a.usage.prompt_tokens < 3000, `long prompt ${a.usage.prompt_tokens} tokens`);
  const b = await ask(short, 16);
  assert(b.usage.prompt_tokens > 200 && b.usage.prompt_tokens < 400, `short prompt ${b.usage.prompt_tokens} tokens`);
  const again = await ask(long, 8);
  const cached = again.usage.prompt_tokens_details.cached_tokens;
  assert(cached >= a.usage.prompt_tokens - 1, `cached ${cached} of ${again.usage.prompt_tokens}`);
  assert(again.choices[0].message.content === a.choices[0].message.content, 'the cached run answers differently');
});

// The log line says when the first token came (queue, prompt-cache restore and prefill):
// the measure of a cached prefix. The requests above: the cold long one, the short one,
// the long one again from the cache.
await testCase('log_first_token', async () => {
  const lines = await server.logLines(/chat\/completions 200 in=/, 3);
  assert(lines.length >= 3, server.log());
  const t = lines.slice(0, 3).map((l) => {
    const m = /queued ([\d.]+)s first-token ([\d.]+)s total ([\d.]+)s/.exec(l);
    assert(m, l);
    const [q, first, total] = m.slice(1).map(Number);
    assert(q <= first && first <= total, l);
    return first;
  });
  // 2,100 tokens evaluated against one: the cached answer starts far sooner
  assert(t[2] < t[0] / 2, `first token: cold ${t[0]} s, cached ${t[2]} s`);
});

await testCase('default_context_is_the_models_maximum', async () => {
  // no --ctx: the demo model's declared maximum fits its memory plan easily
  const r = lazymoe(['info', SERVER_MODEL]);
  const m = /context +(\d+) tokens \(model maximum (\d+)\)/.exec(r.stdout) || [];
  const ctx = Number(m[1]), max = Number(m[2]);
  assert(r.status === 0 && ctx === max && ctx >= 32768, `info: context ${ctx}, model maximum ${max}: ${r.stdout.slice(0, 600)}`);
});

await server.stop();

// The persistent prompt cache: a restarted server starts from the stored state of a
// long prompt (same answer, prompt counted as cached), also for a new conversation that
// only shares the prompt's beginning; a damaged file is dropped with a log line and the
// request is evaluated in full, with the same answer.
await testCase('prompt_cache_survives_restart', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymoe-pc-'));
  try {
    const system = { role: 'system', content: `You are a coding agent. Tools and rules: ${words(900, 't')}` };
    const first = [system, { role: 'user', content: 'Fix the parser.' }];
    const other = [system, { role: 'user', content: 'Write the tests.' }];
    const run = async (extra, fn) => {
      const srv = await startServer(['--prompt-cache-dir', dir, ...extra]);
      const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'unused', maxRetries: 0 });
      try { return await fn(client); } finally { await srv.stop(); }
    };
    const ask2 = (client, messages) => client.chat.completions.create({ model: 'demo', messages, max_tokens: 12, temperature: 0 });
    const cold = await run([], (c) => ask2(c, first));
    assert(cold.usage.prompt_tokens > 1024 && cold.usage.prompt_tokens_details.cached_tokens === 0, JSON.stringify(cold.usage));
    const files = fs.readdirSync(dir).filter((f) => f.endsWith('.lmkv'));
    assert(files.length === 1, `stored files: ${files}`);
    const [warm, shared] = await run([], async (c) => [await ask2(c, first), await ask2(c, other)]);
    assert(warm.usage.prompt_tokens_details.cached_tokens === warm.usage.prompt_tokens - 1, JSON.stringify(warm.usage));
    assert(warm.choices[0].message.content === cold.choices[0].message.content, 'restored state answers differently');
    assert(shared.usage.prompt_tokens_details.cached_tokens > 900, `shared prefix: ${JSON.stringify(shared.usage)}`);
    // a restarted server whose first request shares only the system prompt with the
    // stored conversation restores just that prefix (its KV room is this request's, not
    // the stored conversation's) and answers as before
    let plog = '';
    const partial = await (async () => {
      const srv = await startServer(['--prompt-cache-dir', dir]);
      const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'unused', maxRetries: 0 });
      try { return await ask2(client, other); } finally { plog = await srv.stop(); }
    })();
    const m = /prompt cache: restored (\d+) of the (\d+) tokens/.exec(plog) || [];
    const kept = Number(m[1]), stored = Number(m[2]);
    assert(kept > 900 && kept < stored && kept === partial.usage.prompt_tokens_details.cached_tokens,
      `restored ${kept} of ${stored}, cached ${JSON.stringify(partial.usage)}: ${plog.slice(-600)}`);
    assert(partial.choices[0].message.content === shared.choices[0].message.content, 'prefix-restored state answers differently');
    // damage the stored file: the next server drops it and evaluates everything again
    const f = path.join(dir, files[0]);
    const buf = fs.readFileSync(f);
    buf[buf.length - 100] ^= 0xff;
    fs.writeFileSync(f, buf);
    let log = '';
    const again = await (async () => {
      const srv = await startServer(['--prompt-cache-dir', dir, '--prompt-cache-size', '1G']);
      const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'unused', maxRetries: 0 });
      try { return await ask2(client, first); } finally { log = await srv.stop(); }
    })();
    assert(/prompt cache: dropping .*checksum/.test(log), log.slice(-600));
    assert(again.choices[0].message.content === cold.choices[0].message.content, 'answer after a damaged file differs');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// A request the client abandons (an agent's user pressing Esc, a client timeout) still
// leaves its evaluated prompt on disk: the restarted server starts from it. Before, only
// finished requests were stored, and Claude Code's aborted first request (a 30k-token
// prefill) was evaluated again from zero after a restart.
await testCase('prompt_cache_keeps_an_abandoned_request', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymoe-pc-'));
  try {
    const messages = [{ role: 'system', content: `You are a coding agent. Rules: ${words(900, 'r')}` },
      { role: 'user', content: 'Fix the parser.' }];
    // a forced answer (test-only; every token is still evaluated) makes sure there is an
    // answer to leave in the middle of
    const srv = await startServer(['--prompt-cache-dir', dir, '--allow-forced-output']);
    const ac = new AbortController();
    const res = await fetch(`${srv.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: ac.signal,
      body: JSON.stringify({ messages, max_tokens: 400, temperature: 0, stream: true, lazymoe_forced_output: 'x = 1\n'.repeat(100) }),
    });
    const reader = res.body.getReader();
    let text = '';
    while (!/"content":"[^"]/.test(text)) {
      const { done: end, value } = await reader.read();
      assert(!end, `stream ended before any text: ${text.slice(-300)}`);
      text += new TextDecoder().decode(value);
    }
    ac.abort(); // the client leaves during the answer
    let files = [];
    for (let i = 0; i < 200 && files.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      files = fs.readdirSync(dir).filter((f) => f.endsWith('.lmkv'));
    }
    const log = await srv.stop();
    assert(/ 499 stream /.test(log), `no 499 for the abandoned request: ${log.slice(-400)}`);
    assert(files.length === 1, `stored files after the abandoned request: ${files}; ${log.slice(-400)}`);
    const again = await startServer(['--prompt-cache-dir', dir]);
    try {
      const client = new OpenAI({ baseURL: `${again.url}/v1`, apiKey: 'unused', maxRetries: 0 });
      const r = await client.chat.completions.create({ model: 'demo', messages, max_tokens: 4, temperature: 0 });
      assert(r.usage.prompt_tokens > 1024 && r.usage.prompt_tokens_details.cached_tokens === r.usage.prompt_tokens - 1,
        JSON.stringify(r.usage));
    } finally { await again.stop(); }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

done();
