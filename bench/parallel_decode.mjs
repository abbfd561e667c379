// Aggregate decode throughput of concurrent requests (serve --parallel): K = 1, 2, 4
// clients at once, each generating TOKENS tokens, on one server; reports tokens/s over
// all clients (generated tokens / wall time from the first request to the last answer),
// its ratio to K = 1 and the wall time of the K requests against one request's (issue
// 21: 4 requests must finish in well under 4x one request's time), both measured in
// the same run; K = 1 runs again last to show the drift of a loaded machine. The answers are forced
// (--allow-forced-output) so every request decodes exactly TOKENS tokens; the model
// still evaluates every one of them. Run from the repository root:
//   node bench/parallel_decode.mjs [MODEL] [TOKENS] [extra serve args...]
// (default models/demo-coder, 256). Uses build/lazymoe (release), or $LAZYMOE_BIN
// (bench/parallel_cgroup.sh passes a wrapper that runs it inside a memory cgroup).
import { spawn } from 'node:child_process';

const [model = 'models/demo-coder', tokens = '256', ...extra] = process.argv.slice(2);
const N = Number(tokens);

async function serve(args) {
  const p = spawn(process.env.LAZYMOE_BIN || 'build/lazymoe', ['serve', model, '--port', '0', '--prompt-cache-size', '0', '--no-warm-start',
    '--allow-forced-output', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const url = await new Promise((res, rej) => {
    p.stderr.on('data', (d) => { log += d; const m = /listening on (\S+)/.exec(log); if (m) res(m[1]); });
    p.on('exit', (c) => rej(new Error(`exited ${c}: ${log}`)));
  });
  return { url, stop: () => new Promise((r) => { p.on('exit', r); p.kill('SIGTERM'); }), log: () => log };
}

// "w0 w1 ..." tokenizes to about two tokens a word; max_tokens cuts it at exactly N.
const forced = Array.from({ length: N }, (_, i) => `w${i % 10}`).join(' ');

async function one(url, i) {
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: `request ${i}: write something` }], max_tokens: N,
      lazymoe_forced_output: forced }),
  });
  const j = await r.json();
  if (!j.usage) throw new Error(JSON.stringify(j));
  return j.usage.completion_tokens;
}

const srv = await serve(['--parallel', '4', ...extra]);
try {
  await one(srv.url, -1); // warm-up: page in the weights
  const rows = [];
  for (const K of [1, 2, 4, 1]) { // K = 1 again last: how far the machine drifted meanwhile
    const t0 = performance.now();
    const done = await Promise.all(Array.from({ length: K }, (_, i) => one(srv.url, i + 10 * K)));
    const s = (performance.now() - t0) / 1000;
    const total = done.reduce((a, b) => a + b, 0);
    rows.push({ K, total, s, tps: total / s });
  }
  const h = await (await fetch(`${srv.url}/health`)).json();
  console.log(`model ${model}, ${N} tokens per request, serve --parallel 4 ${extra.join(' ')}`);
  for (const l of srv.log().split('\n')) if (/plan [\d.]+ GB/.test(l)) console.log(l.trim()); // with -v
  console.log('clients  tokens  seconds  aggregate tok/s  vs 1 client  time vs 1 request');
  for (const r of rows)
    console.log(`${String(r.K).padStart(7)}  ${String(r.total).padStart(6)}  ${r.s.toFixed(2).padStart(7)}  ${r.tps.toFixed(1).padStart(15)}  ${(r.tps / rows[0].tps).toFixed(2).padStart(10)}x  ${(r.s / rows[0].s).toFixed(2).padStart(16)}x`);
  console.log(`batch steps ${h.decode_steps}, tokens in them ${h.decoded_tokens}`);
} finally {
  await srv.stop();
}
