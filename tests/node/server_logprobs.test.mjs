// logprobs / top_logprobs on OpenAI chat completions, through the official client:
// every generated token is reported once, in order, with its bytes; its log-probability
// is the model's own (greedy picks the most likely, so the token is its own first
// alternative); alternatives come most likely first and their probabilities sum to at
// most 1; the stream reports exactly what the body reports; the token bytes spell the
// answer. (That the numbers are the log-softmax of the model's logits is checked
// against the evaluation path in tests/test_generate.c.)
import OpenAI from 'openai';
import { testCase, assert, done } from './harness.mjs';
import { startServer } from './server_harness.mjs';

const server = await startServer([]);
const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
const messages = [{ role: 'user', content: 'Write a Python function that reverses a list.' }];
const base = { model: 'demo', messages, max_tokens: 24, temperature: 0, logprobs: true, top_logprobs: 4 };

function checkEntries(entries, content) {
  assert(Array.isArray(entries) && entries.length > 0, 'no logprobs entries');
  const bytes = [];
  for (const [i, e] of entries.entries()) {
    assert(typeof e.token === 'string' && Array.isArray(e.bytes) && Number.isFinite(e.logprob) && e.logprob <= 0,
      `entry ${i}: ${JSON.stringify(e)}`);
    assert(e.top_logprobs.length === 4, `entry ${i}: ${e.top_logprobs.length} alternatives`);
    for (let k = 1; k < 4; k++) assert(e.top_logprobs[k - 1].logprob >= e.top_logprobs[k].logprob, `entry ${i}: not sorted`);
    const mass = e.top_logprobs.reduce((s, t) => s + Math.exp(t.logprob), 0);
    assert(mass <= 1 + 1e-5, `entry ${i}: alternatives sum to ${mass}`);
    // greedy: the chosen token is the most likely one
    assert(e.top_logprobs[0].token === e.token && Math.abs(e.top_logprobs[0].logprob - e.logprob) < 1e-6,
      `entry ${i}: chose ${JSON.stringify(e.token)} ${e.logprob}, most likely ${JSON.stringify(e.top_logprobs[0])}`);
    bytes.push(...e.bytes);
  }
  assert(Buffer.from(bytes).toString('utf8') === content, `token bytes ${JSON.stringify(Buffer.from(bytes).toString('utf8'))} vs content ${JSON.stringify(content)}`);
}

let body;
await testCase('logprobs_body', async () => {
  body = await openai.chat.completions.create(base);
  const c = body.choices[0];
  assert(c.finish_reason === 'length', c.finish_reason);
  assert(c.logprobs.content.length === body.usage.completion_tokens, `${c.logprobs.content.length} entries, ${body.usage.completion_tokens} tokens`);
  checkEntries(c.logprobs.content, c.message.content);
});

await testCase('logprobs_stream_equals_body', async () => {
  const stream = await openai.chat.completions.create({ ...base, stream: true });
  const entries = [];
  let content = '';
  for await (const chunk of stream) {
    const ch = chunk.choices[0];
    if (!ch) continue;
    if (ch.delta?.content) content += ch.delta.content;
    if (ch.logprobs) entries.push(...ch.logprobs.content);
  }
  checkEntries(entries, content);
  assert(JSON.stringify(entries) === JSON.stringify(body.choices[0].logprobs.content), 'stream and body differ');
});

await testCase('logprobs_off_is_null', async () => {
  const r = await openai.chat.completions.create({ model: 'demo', messages, max_tokens: 4, temperature: 0 });
  assert(r.choices[0].logprobs === null, JSON.stringify(r.choices[0].logprobs));
  const t = await openai.chat.completions.create({ ...base, top_logprobs: 0, max_tokens: 4 });
  assert(t.choices[0].logprobs.content.every((e) => Array.isArray(e.top_logprobs) && e.top_logprobs.length === 0));
});

await server.stop();
done();
