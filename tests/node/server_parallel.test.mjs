// Concurrent requests (--parallel N, issue 21): up to N requests generate at once,
// their decode steps batched into one forward pass; each answer is exactly the one the
// request gets alone (same sampling parameters and seed), streamed or not; the
// (N+1)-th request waits in the queue rather than being refused; a client that leaves
// mid-stream frees its place for a queued request.
import OpenAI from 'openai';
import { testCase, assert, done } from './harness.mjs';
import { startServer, http } from './server_harness.mjs';

const PROMPTS = [
  'Write a Python function that reverses a string.',
  'def fib(n):',
  'Explain what a mutex is in one paragraph.',
  'class Stack:\n    def push(self, x):',
  'List three sorting algorithms.',
];
// Sampled (not greedy), each with its own seed, lengths and mode.
const REQS = PROMPTS.map((p, i) => ({
  model: 'm',
  messages: [{ role: 'user', content: p }],
  max_tokens: 20 + 6 * i,
  temperature: 0.9,
  top_p: 0.95,
  seed: 7 + i,
  stream: i % 2 === 1,
}));

async function ask(client, req) {
  if (!req.stream) {
    const r = await client.chat.completions.create(req);
    return { text: r.choices[0].message.content, finish: r.choices[0].finish_reason, tokens: r.usage.completion_tokens };
  }
  const s = await client.chat.completions.create({ ...req, stream_options: { include_usage: true } });
  let text = '', finish = null, tokens = null;
  for await (const c of s) {
    if (c.choices[0] && c.choices[0].delta.content) text += c.choices[0].delta.content;
    if (c.choices[0] && c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
    if (c.usage) tokens = c.usage.completion_tokens;
  }
  return { text, finish, tokens };
}

const health = async (url) => (await http(`${url}/health`, { method: 'GET' })).json;

// The reference: one request at a time on a server that never batches.
const solo = await startServer(['--parallel', '1']);
const soloClient = new OpenAI({ baseURL: `${solo.url}/v1`, apiKey: 'x', maxRetries: 0 });
const alone = [];
for (const r of REQS) alone.push(await ask(soloClient, r));
const soloHealth = await health(solo.url);
await solo.stop();

const server = await startServer(['--parallel', '3', '--allow-forced-output']);
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'x', maxRetries: 0 });

await testCase('parallel_answers_equal_sequential_runs', async () => {
  assert(soloHealth.parallel === 1 && soloHealth.decode_steps === 0, `solo server batched: ${JSON.stringify(soloHealth)}`);
  const before = await health(server.url);
  assert(before.parallel === 3, JSON.stringify(before));
  const pending = REQS.map((r) => ask(client, r));
  // five requests, three places: two wait in the queue (not refused)
  let sawQueue = false;
  for (let i = 0; i < 200 && !sawQueue; i++) {
    const h = await health(server.url);
    if (h.running === 3 && h.queued >= 1) sawQueue = true;
    else await new Promise((res) => setTimeout(res, 10));
  }
  const together = await Promise.all(pending);
  assert(sawQueue, 'never saw 3 requests running with others queued');
  for (let i = 0; i < REQS.length; i++) {
    assert(together[i].text === alone[i].text,
      `request ${i} (${REQS[i].stream ? 'streamed' : 'body'}) differs:\n alone:    ${JSON.stringify(alone[i].text)}\n together: ${JSON.stringify(together[i].text)}`);
    assert(together[i].finish === alone[i].finish && together[i].tokens === alone[i].tokens,
      `request ${i}: ${JSON.stringify(together[i])} vs ${JSON.stringify(alone[i])}`);
  }
  assert(alone.some((a) => a.tokens >= 10), `answers too short to prove anything: ${JSON.stringify(alone)}`);
  const after = await health(server.url);
  const steps = after.decode_steps - before.decode_steps, toks = after.decoded_tokens - before.decoded_tokens;
  assert(toks > steps, `no step carried more than one request: ${steps} steps, ${toks} tokens`);
  console.log(`# 5 requests on 3 places: ${steps} steps carried ${toks} tokens (${(toks / steps).toFixed(2)} a step)`);
});

// ~9000 tokens: long enough that the streams outlast the test's steps
const LONG = Array.from({ length: 4500 }, (_, i) => `t${i % 10}`).join(' ');

await testCase('parallel_disconnect_frees_a_place_for_the_queue', async () => {
  const srv = await startServer(['--parallel', '3', '--allow-forced-output', '--ctx', '10240', '--cache-tokens', '40960']);
  const c = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'x', maxRetries: 0 });
  try {
    // three long streams fill the places; a fourth request waits
    const acs = [new AbortController(), new AbortController(), new AbortController()];
    const streams = await Promise.all(acs.map((ac, i) => c.chat.completions.create(
      { model: 'm', messages: [{ role: 'user', content: `long ${i}` }], stream: true, max_tokens: 9500, lazymoe_forced_output: LONG },
      { signal: ac.signal })));
    const its = streams.map((st) => st[Symbol.asyncIterator]());
    for (const it of its) await it.next(); // each is generating
    const waiting = c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'D' }], lazymoe_forced_output: 'answer of D' });
    let h = null;
    for (let i = 0; i < 300; i++) {
      h = await health(srv.url);
      if (h.queued === 1) break;
      await new Promise((res) => setTimeout(res, 10));
    }
    assert(h.running === 3 && h.queued === 1, `the fourth request is not queued: ${JSON.stringify(h)}`);
    acs[0].abort(); // one client leaves: D takes its place while the other two stream on
    const d = await waiting;
    assert(d.choices[0].message.content === 'answer of D', JSON.stringify(d.choices[0]));
    for (let i = 0; i < 100; i++) { // D's worker finishes its bookkeeping after the reply
      h = await health(srv.url);
      if (h.running === 2) break;
      await new Promise((res) => setTimeout(res, 10));
    }
    assert(h.running === 2 && h.served === 2, `two long streams should still run: ${JSON.stringify(h)}`);
    for (const it of its.slice(1)) {
      const r = await it.next();
      assert(!r.done, 'a stream beside the cancelled one ended');
    }
    acs[1].abort();
    acs[2].abort();
    for (let i = 0; i < 300; i++) {
      h = await health(srv.url);
      if (h.running === 0) break;
      await new Promise((res) => setTimeout(res, 20));
    }
    assert(h.running === 0 && h.queued === 0, `places not freed: ${JSON.stringify(h)}`);
    const lines = await srv.logLines(/finish=client-disconnected/, 3);
    assert(lines.length === 3, `expected 3 client-disconnected lines: ${srv.log().slice(-2000)}`);
    for (const l of lines) assert(Number(/out=(\d+)/.exec(l)[1]) < 8000, `generated on after its client left: ${l}`);
  } finally {
    await srv.stop();
  }
});

// The KV budget holds: requests whose room (prompt + max_tokens) does not fit beside
// the running ones wait for it, they are neither refused nor allowed past the budget.
await testCase('parallel_kv_budget_queues_requests_that_do_not_fit', async () => {
  const tight = await startServer(['--parallel', '3', '--allow-forced-output', '--ctx', '1024', '--cache-tokens', '1024']);
  const c = new OpenAI({ baseURL: `${tight.url}/v1`, apiKey: 'x', maxRetries: 0 });
  try {
    const forced = Array.from({ length: 300 }, (_, i) => `w${i % 10}`).join(' ');
    // each reserves ~20 + 700 positions of the 1024: only one at a time fits
    const reqs = [0, 1].map((i) => c.chat.completions.create(
      { model: 'm', messages: [{ role: 'user', content: `r${i}` }], max_tokens: 700, lazymoe_forced_output: forced }));
    let maxRunning = 0;
    let finished = false;
    const all = Promise.all(reqs).finally(() => { finished = true; });
    while (!finished) {
      const h = await health(tight.url);
      if (h.running > maxRunning) maxRunning = h.running;
      if (h.running === 1 && h.queued === 0) { /* the other may be waiting for room inside its worker */ }
      await new Promise((res) => setTimeout(res, 10));
    }
    const rs = await all;
    for (const r of rs) assert(r.choices[0].message.content === forced, 'an answer was cut');
    const lines = await tight.logLines(/chat\/completions 200/, 2);
    assert(lines.length === 2, `expected 2 chat/completions 200 lines, found ${lines.length}: ${tight.log().split('\n').filter((l) => !/\/health/.test(l)).slice(-20).join(' | ')}`);
    // the second waited for the first: its queued time covers the first's generation
    const q = lines.map((l) => Number(/queued ([\d.]+)s/.exec(l)[1]));
    const total = lines.map((l) => Number(/total ([\d.]+)s/.exec(l)[1]));
    assert(Math.max(...q) >= 0.8 * Math.min(...total), `the second request did not wait: queued ${q}, total ${total}`);
    void maxRunning;
  } finally {
    await tight.stop();
  }
});

await server.stop();
done();
