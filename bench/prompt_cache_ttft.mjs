// Time to first token of a long agent-style prompt: cold, after a server restart with
// the persistent prompt cache, and for a new conversation sharing the prompt's system
// part (a second agent session), each measured as streamed-request start -> first
// content chunk. Run from the repository root:
//   node bench/prompt_cache_ttft.mjs [MODEL] [WORDS] [extra serve args...]
// (default models/demo-coder, 6000 words ~ 20k tokens). Uses build/lazymoe (release).
// Also checks that the restored server answers with exactly the cold answer's tokens and
// log-probabilities (top 5 alternatives of each of the 8 tokens): restoring == recomputing.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [model = 'models/demo-coder', words = '6000', ...extra] = process.argv.slice(2);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymoe-ttft-'));
const system = `You are a coding agent. Tools and rules: ${Array.from({ length: Number(words) }, (_, i) => `t${i}`).join(' ')}`;

async function serve() {
  const p = spawn('build/lazymoe', ['serve', model, '--port', '0', '--prompt-cache-dir', dir, '--no-warm-start', ...extra],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const url = await new Promise((res, rej) => {
    p.stderr.on('data', (d) => { log += d; const m = /listening on (\S+)/.exec(log); if (m) res(m[1]); });
    p.on('exit', (c) => rej(new Error(`exited ${c}: ${log}`)));
  });
  return { url, stop: () => new Promise((r) => { p.on('exit', r); p.kill('SIGTERM'); }), log: () => log };
}

// One streamed request: time to the first content chunk, the usage, and the logprobs of
// every generated token (top 5 alternatives), to compare a restored state with a cold one.
async function ttft(url, user) {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'system', content: system }, { role: 'user', content: user }], max_tokens: 8, temperature: 0,
      logprobs: true, top_logprobs: 5, stream: true, stream_options: { include_usage: true } }),
  });
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let first = null, buf = '', usage = null;
  const logprobs = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const line = ev.split('\n').find((l) => l.startsWith('data: '));
      if (!line || line === 'data: [DONE]') continue;
      const d = JSON.parse(line.slice(6));
      if (d.usage) usage = d.usage;
      const c = d.choices && d.choices[0];
      if (c && c.delta && c.delta.content && first === null) first = performance.now() - t0;
      if (c && c.logprobs && c.logprobs.content) logprobs.push(...c.logprobs.content);
    }
  }
  return { ms: first ?? performance.now() - t0, usage, logprobs };
}

let s = await serve();
const cold = await ttft(s.url, 'Fix the parser.');
await s.stop();
s = await serve();
const warm = await ttft(s.url, 'Fix the parser.');
const shared = await ttft(s.url, 'Write the tests.');
await s.stop();
fs.rmSync(dir, { recursive: true, force: true });
const row = (name, r) => console.log(`${name.padEnd(34)} ${(r.ms / 1000).toFixed(2).padStart(8)} s  prompt ${r.usage?.prompt_tokens} cached ${r.usage?.prompt_tokens_details?.cached_tokens}`);
row('cold', cold);
row('restarted server, same prompt', warm);
row('restarted server, new conversation', shared);
console.log(`speedup: same prompt ${(cold.ms / warm.ms).toFixed(1)}x, new conversation ${(cold.ms / shared.ms).toFixed(1)}x`);
// the restored state must give exactly what evaluating the prompt gave: the same tokens
// with the same log-probabilities and the same top-5 alternatives
const same = cold.logprobs.length > 0 && JSON.stringify(cold.logprobs) === JSON.stringify(warm.logprobs);
console.log(`restored == cold: ${same ? 'yes' : 'NO'} (${cold.logprobs.length} tokens, logprob and top-5 alternatives each; ` +
  `first token ${JSON.stringify(cold.logprobs[0]?.token)} ${cold.logprobs[0]?.logprob})`);
if (!same) { console.log(JSON.stringify({ cold: cold.logprobs, restored: warm.logprobs })); process.exitCode = 1; }
