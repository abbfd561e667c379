// The prompt cache keeps a long conversation while a short side request runs (issue 21:
// Claude Code's own 573-token title request evicted its 34,771-token conversation).
// Repro on a --ctx 4096 server: a ~2,100-token request, a ~260-token one, the first again
// -> the first must come back with its prompt cached. Before: the first session had grown
// (by doubling) to the whole 4096-token budget and any other request evicted it.
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

await testCase('default_context_is_the_models_maximum', async () => {
  // no --ctx: the demo model's declared maximum fits its memory plan easily
  const r = lazymoe(['info', SERVER_MODEL]);
  const m = /context +(\d+) tokens \(model maximum (\d+)\)/.exec(r.stdout) || [];
  const ctx = Number(m[1]), max = Number(m[2]);
  assert(r.status === 0 && ctx === max && ctx >= 32768, `info: context ${ctx}, model maximum ${max}: ${r.stdout.slice(0, 600)}`);
});

await server.stop();
done();
