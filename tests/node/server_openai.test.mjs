// `lazymoe serve` driven by the official OpenAI client (npm `openai`) and raw HTTP:
// chat completions streamed and not, usage, stop, sampling, tool calls and reasoning
// (through the test-only forced output: tokenizer -> model -> detokenizer -> tool-call
// parser -> SSE -> the SDK's parser), every client-error case, a client that
// disconnects mid-stream, two clients at once, the prompt cache.
import OpenAI from 'openai';
import { testCase, assert, done } from './harness.mjs';
import path from 'node:path';
import { startServer, http, SERVER_MODEL } from './server_harness.mjs';

const KEY = 'test-key-123';
const server = await startServer(['--allow-forced-output', '--api-key', KEY, '--max-body', '1M', '--max-input-tokens', '3000']);
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
const auth = { authorization: `Bearer ${KEY}` };
const hi = [{ role: 'user', content: 'hi' }];
const WEATHER = [{
  type: 'function',
  function: {
    name: 'get_weather', description: 'Weather for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] },
  },
}];
const XML_CALL = '<think>\nthe user wants weather\n</think>\n\nLet me check.\n<tool_call>\n<function=get_weather>\n' +
  '<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>';
const eq = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

// Tool calls as the client sees them after accumulating the deltas the OpenAI way.
function accumulateCalls(chunks) {
  const calls = [];
  for (const c of chunks) for (const ch of c.choices) for (const tc of ch.delta.tool_calls || []) {
    assert(Number.isInteger(tc.index), `tool call delta without index: ${JSON.stringify(tc)}`);
    if (!calls[tc.index]) {
      assert(tc.id && tc.function && tc.function.name && tc.type === 'function', `first delta lacks id/name: ${JSON.stringify(tc)}`);
      calls[tc.index] = { id: tc.id, name: tc.function.name, arguments: tc.function.arguments || '' };
    } else {
      assert(!tc.id && !(tc.function && tc.function.name), `later delta repeats id/name: ${JSON.stringify(tc)}`);
      calls[tc.index].arguments += tc.function.arguments || '';
    }
  }
  return calls;
}

await testCase('openai_health_and_models', async () => {
  const h = await http(`${server.url}/health`, { method: 'GET' });
  assert(h.status === 200 && h.json.status === 'ok', h.text);
  const ids = [];
  for await (const m of client.models.list()) ids.push(m);
  assert(ids.length === 1 && ids[0].id === path.basename(SERVER_MODEL) && ids[0].context_length === 4096, JSON.stringify(ids));
});

await testCase('openai_chat_not_streamed', async () => {
  const r = await client.chat.completions.create({ model: 'whatever', messages: hi, max_tokens: 8, seed: 3 });
  assert(r.object === 'chat.completion' && r.choices.length === 1 && r.model === 'whatever', JSON.stringify(r));
  const c = r.choices[0];
  assert(c.message.role === 'assistant' && typeof c.message.content === 'string', JSON.stringify(c));
  assert(['stop', 'length'].includes(c.finish_reason), c.finish_reason);
  assert(r.usage.prompt_tokens > 5 && r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 8, JSON.stringify(r.usage));
  assert(r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens);
});

await testCase('openai_stream_equals_not_streamed_greedy', async () => {
  const msgs = [{ role: 'system', content: 'be brief' }, { role: 'user', content: [{ type: 'text', text: 'tell' }, { type: 'text', text: 'me' }] }];
  const full = await client.chat.completions.create({ model: 'm', messages: msgs, max_tokens: 24, temperature: 0 });
  const chunks = await collect(await client.chat.completions.create({
    model: 'm', messages: msgs, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
  }));
  assert(chunks.length >= 3, `${chunks.length} chunks`);
  assert(chunks.every((c) => c.id === chunks[0].id && c.object === 'chat.completion.chunk'), 'ids differ');
  assert(chunks[0].choices[0].delta.role === 'assistant', JSON.stringify(chunks[0]));
  const text = chunks.map((c) => (c.choices[0] && c.choices[0].delta.content) || '').join('');
  assert(text === full.choices[0].message.content, `${JSON.stringify(text)} vs ${JSON.stringify(full.choices[0].message.content)}`);
  const last = chunks[chunks.length - 1];
  assert(last.choices.length === 0 && last.usage, `last chunk ${JSON.stringify(last)}`);
  assert(last.usage.completion_tokens === full.usage.completion_tokens && last.usage.prompt_tokens === full.usage.prompt_tokens);
  const fin = chunks[chunks.length - 2].choices[0].finish_reason;
  assert(fin === full.choices[0].finish_reason, `${fin} vs ${full.choices[0].finish_reason}`);
  // the second request repeated the prompt: read from the prompt cache
  assert(last.usage.prompt_tokens_details.cached_tokens === last.usage.prompt_tokens - 1, JSON.stringify(last.usage));
});

await testCase('openai_forced_text_exact_utf8', async () => {
  const want = 'Hello, w\u00f6rld! \u4f60\u597d \u{1F600} <b>&</b>';
  const r = await client.chat.completions.create({ model: 'm', messages: hi, lazymoe_forced_output: want });
  assert(r.choices[0].message.content === want, JSON.stringify(r.choices[0].message.content));
  assert(r.choices[0].finish_reason === 'stop');
});

await testCase('openai_tool_call_not_streamed', async () => {
  const r = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'weather in Paris?' }], tools: WEATHER, lazymoe_forced_output: XML_CALL });
  const m = r.choices[0].message;
  assert(r.choices[0].finish_reason === 'tool_calls', r.choices[0].finish_reason);
  assert(m.content === 'Let me check.', JSON.stringify(m.content));
  assert(m.reasoning_content === 'the user wants weather', JSON.stringify(m));
  assert(m.tool_calls.length === 1 && m.tool_calls[0].type === 'function' && /^call_/.test(m.tool_calls[0].id), JSON.stringify(m.tool_calls));
  assert(m.tool_calls[0].function.name === 'get_weather');
  assert(eq(JSON.parse(m.tool_calls[0].function.arguments), { city: 'Paris', days: 3 }), m.tool_calls[0].function.arguments);
});

await testCase('openai_tool_call_streamed_deltas', async () => {
  const chunks = await collect(await client.chat.completions.create({
    model: 'm', messages: [{ role: 'user', content: 'weather?' }], tools: WEATHER, stream: true, lazymoe_forced_output: XML_CALL,
  }));
  const calls = accumulateCalls(chunks);
  assert(calls.length === 1 && calls[0].name === 'get_weather', JSON.stringify(calls));
  assert(eq(JSON.parse(calls[0].arguments), { city: 'Paris', days: 3 }), calls[0].arguments);
  const reasoning = chunks.map((c) => (c.choices[0] && c.choices[0].delta.reasoning_content) || '').join('');
  assert(reasoning === 'the user wants weather', JSON.stringify(reasoning));
  const content = chunks.map((c) => (c.choices[0] && c.choices[0].delta.content) || '').join('');
  assert(content === 'Let me check.', JSON.stringify(content));
  assert(chunks[chunks.length - 1].choices[0].finish_reason === 'tool_calls');
});

await testCase('openai_sdk_stream_helper_final_completion', async () => {
  // The SDK's own accumulator (ChatCompletionStream) must rebuild the call.
  const stream = client.chat.completions.stream({ model: 'm', messages: [{ role: 'user', content: 'weather?' }], tools: WEATHER, lazymoe_forced_output: XML_CALL });
  const final = await stream.finalChatCompletion();
  const tc = final.choices[0].message.tool_calls;
  assert(tc && tc.length === 1 && tc[0].function.name === 'get_weather', JSON.stringify(final));
  assert(eq(JSON.parse(tc[0].function.arguments), { city: 'Paris', days: 3 }));
});

await testCase('openai_tool_call_formats', async () => {
  const forms = {
    hermes: '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}\n</tool_call>',
    xml_unwrapped: '<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>',
  };
  for (const [name, forced] of Object.entries(forms)) {
    const r = await client.chat.completions.create({ model: 'm', messages: hi, tools: WEATHER, lazymoe_forced_output: forced });
    const tc = r.choices[0].message.tool_calls;
    assert(tc && tc.length === 1 && eq(JSON.parse(tc[0].function.arguments), { city: 'Oslo', days: 2 }), `${name}: ${JSON.stringify(r.choices[0])}`);
    assert(r.choices[0].finish_reason === 'tool_calls', name);
  }
  // two calls: indices 0 and 1, distinct ids
  const two = '<tool_call>\n<function=get_weather>\n<parameter=city>\nA\n</parameter>\n</function>\n</tool_call>\n' +
    '<tool_call>\n<function=get_weather>\n<parameter=city>\nB\n</parameter>\n</function>\n</tool_call>';
  const chunks = await collect(await client.chat.completions.create({ model: 'm', messages: hi, tools: WEATHER, stream: true, lazymoe_forced_output: two }));
  const calls = accumulateCalls(chunks);
  assert(calls.length === 2 && calls[0].id !== calls[1].id, JSON.stringify(calls));
  assert(JSON.parse(calls[0].arguments).city === 'A' && JSON.parse(calls[1].arguments).city === 'B');
  // without tools the markup is plain text
  const plain = await client.chat.completions.create({ model: 'm', messages: hi, lazymoe_forced_output: forms.hermes });
  assert(!plain.choices[0].message.tool_calls && plain.choices[0].message.content === forms.hermes, JSON.stringify(plain.choices[0]));
  // tool_choice none: tools are not offered, markup stays text
  const none = await client.chat.completions.create({ model: 'm', messages: hi, tools: WEATHER, tool_choice: 'none', lazymoe_forced_output: forms.hermes });
  assert(!none.choices[0].message.tool_calls, JSON.stringify(none.choices[0]));
});

await testCase('openai_tool_results_round_trip', async () => {
  const first = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'weather in Paris?' }], tools: WEATHER, lazymoe_forced_output: XML_CALL });
  const call = first.choices[0].message.tool_calls[0];
  const messages = [
    { role: 'user', content: 'weather in Paris?' },
    { role: 'assistant', content: null, tool_calls: [call] },
    { role: 'tool', tool_call_id: call.id, content: 'sunny, 21 C' },
  ];
  const r = await client.chat.completions.create({ model: 'm', messages, tools: WEATHER, lazymoe_forced_output: 'It is sunny.' });
  assert(r.choices[0].message.content === 'It is sunny.' && r.choices[0].finish_reason === 'stop', JSON.stringify(r.choices[0]));
  assert(r.usage.prompt_tokens > first.usage.prompt_tokens + 20, `${r.usage.prompt_tokens} vs ${first.usage.prompt_tokens}`);
});

await testCase('openai_stop_sequences', async () => {
  const r = await client.chat.completions.create({ model: 'm', messages: hi, stop: ['STOP', 'zz'], lazymoe_forced_output: 'abc STOP def' });
  assert(r.choices[0].message.content === 'abc ' && r.choices[0].finish_reason === 'stop', JSON.stringify(r.choices[0]));
  const s = await collect(await client.chat.completions.create({ model: 'm', messages: hi, stop: 'de', stream: true, lazymoe_forced_output: 'abc STOP def' }));
  const text = s.map((c) => (c.choices[0] && c.choices[0].delta.content) || '').join('');
  assert(text === 'abc STOP ', JSON.stringify(text));
});

await testCase('openai_max_tokens_and_length', async () => {
  const long = 'one two three four five six seven eight nine ten';
  const a = await client.chat.completions.create({ model: 'm', messages: hi, max_tokens: 5, lazymoe_forced_output: long });
  assert(a.choices[0].finish_reason === 'length' && a.usage.completion_tokens === 5, JSON.stringify(a));
  const b = await client.chat.completions.create({ model: 'm', messages: hi, max_completion_tokens: 3, lazymoe_forced_output: long });
  assert(b.choices[0].finish_reason === 'length' && b.usage.completion_tokens === 3, JSON.stringify(b));
  assert(long.startsWith(b.choices[0].message.content) && long.startsWith(a.choices[0].message.content));
});

await testCase('openai_sampling_parameters', async () => {
  const p = { model: 'm', messages: hi, max_tokens: 16, temperature: 1.0, top_p: 0.9, top_k: 40, presence_penalty: 0.5, frequency_penalty: 0.2, seed: 42 };
  const a = await client.chat.completions.create(p);
  const b = await client.chat.completions.create(p);
  assert(a.choices[0].message.content === b.choices[0].message.content, 'same seed, different text');
  const outs = new Set();
  for (let seed = 1; seed <= 4; seed++) outs.add((await client.chat.completions.create({ ...p, seed })).choices[0].message.content);
  assert(outs.size >= 2, 'four seeds gave one text');
});

await testCase('openai_multi_turn_uses_prompt_cache', async () => {
  const t1 = [{ role: 'user', content: 'first question about caching' }];
  const a = await client.chat.completions.create({ model: 'm', messages: t1, lazymoe_forced_output: 'first answer' });
  const t2 = [...t1, { role: 'assistant', content: 'first answer' }, { role: 'user', content: 'second' }];
  const b = await client.chat.completions.create({ model: 'm', messages: t2, lazymoe_forced_output: 'ok' });
  const cached = b.usage.prompt_tokens_details.cached_tokens;
  assert(cached >= a.usage.prompt_tokens && cached < b.usage.prompt_tokens, `cached ${cached}, first prompt ${a.usage.prompt_tokens}, second ${b.usage.prompt_tokens}`);
});

// ---- errors: the OpenAI shape, 4xx, the field named ----------------------------------

async function expectError(body, status, check, headers = auth) {
  const r = await http(`${server.url}/v1/chat/completions`, { body, headers });
  assert(r.status === status, `status ${r.status} (wanted ${status}): ${r.text.slice(0, 300)}`);
  assert(r.json && r.json.error && typeof r.json.error.message === 'string' && r.json.error.type, `not an OpenAI error: ${r.text.slice(0, 300)}`);
  if (check) check(r.json.error);
  return r.json.error;
}

await testCase('openai_error_invalid_json', async () => {
  await expectError('{"model": "m", "messages": [', 400, (e) => assert(/JSON/.test(e.message), e.message));
  await expectError('[1, 2]', 400, (e) => assert(/object/.test(e.message), e.message));
  await expectError('', 400);
});

await testCase('openai_error_wrong_types_name_the_field', async () => {
  const cases = [
    [{ messages: 'hi' }, 'messages'],
    [{ messages: [] }, 'messages'],
    [{}, 'messages'],
    [{ messages: [{ role: 'user', content: 5 }] }, 'messages[0].content'],
    [{ messages: [{ role: 'wizard', content: 'x' }] }, 'messages[0].role'],
    [{ messages: [{ content: 'x' }] }, 'messages[0].role'],
    [{ messages: hi, temperature: 'hot' }, 'temperature'],
    [{ messages: hi, temperature: -1 }, 'temperature'],
    [{ messages: hi, max_tokens: 'many' }, 'max_tokens'],
    [{ messages: hi, max_tokens: 0 }, 'max_tokens'],
    [{ messages: hi, stop: 7 }, 'stop'],
    [{ messages: hi, stream: 'yes' }, 'stream'],
    [{ messages: hi, tools: {} }, 'tools'],
    [{ messages: hi, tools: [{ type: 'function' }] }, 'tools[0].function'],
    [{ messages: hi, seed: 1.5 }, 'seed'],
    [{ messages: hi, n: 2 }, 'n'],
    [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 'messages[0].content[0].type'],
    [{ messages: [{ role: 'assistant', content: '', tool_calls: [{ function: { name: 'f', arguments: 'not json' } }] }] }, 'messages[0].tool_calls[0].function.arguments'],
  ];
  for (const [body, field] of cases) {
    await expectError({ model: 'm', ...body }, 400, (e) => {
      assert(e.message.includes(field), `${JSON.stringify(body)}: message "${e.message}" does not name ${field}`);
      assert(e.param === field || e.param === field.split('[')[0] || field.startsWith(e.param || '\u0000'), `param ${e.param} for ${field}`);
    });
  }
  // the SDK turns them into BadRequestError (no retry)
  let caught = null;
  try { await client.chat.completions.create({ model: 'm', messages: 'x' }); } catch (e) { caught = e; }
  assert(caught instanceof OpenAI.BadRequestError && caught.status === 400, String(caught));
});

await testCase('openai_error_body_too_large_413', async () => {
  const big = 'x'.repeat(1100 * 1024);
  await expectError({ model: 'm', messages: [{ role: 'user', content: big }] }, 413, (e) => assert(/larger/.test(e.message), e.message));
});

await testCase('openai_error_prompt_too_long', async () => {
  const words = Array.from({ length: 1200 }, (_, i) => `w${i}`).join(' ');
  const e = await expectError({ model: 'm', messages: [{ role: 'user', content: words }] }, 400);
  assert(e.code === 'context_length_exceeded', JSON.stringify(e));
  assert(/prompt is too long: \d+ tokens > 3000 maximum/.test(e.message), e.message);
  let caught = null;
  try { await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: words }] }); } catch (x) { caught = x; }
  assert(caught instanceof OpenAI.BadRequestError && caught.code === 'context_length_exceeded', String(caught));
});

await testCase('openai_error_auth', async () => {
  await expectError({ model: 'm', messages: hi }, 401, (e) => assert(e.code === 'invalid_api_key', JSON.stringify(e)), {});
  await expectError({ model: 'm', messages: hi }, 401, null, { authorization: 'Bearer wrong' });
  const ok = await http(`${server.url}/v1/chat/completions`, { body: { messages: hi, max_tokens: 2 }, headers: { 'x-api-key': KEY } });
  assert(ok.status === 200, ok.text);
  const bad = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'nope', maxRetries: 0 });
  let caught = null;
  try { await bad.chat.completions.create({ model: 'm', messages: hi }); } catch (x) { caught = x; }
  assert(caught instanceof OpenAI.AuthenticationError, String(caught));
  // /health needs no key
  assert((await http(`${server.url}/health`, { method: 'GET' })).status === 200);
});

await testCase('openai_error_routes', async () => {
  const r = await http(`${server.url}/v1/nothing`, { body: {}, headers: auth });
  assert(r.status === 404 && r.json.error, r.text);
  const g = await http(`${server.url}/v1/chat/completions`, { method: 'GET', headers: auth });
  assert(g.status === 405 && g.json.error, g.text);
});

// ---- concurrency -------------------------------------------------------------------------

const LONG = Array.from({ length: 1500 }, (_, i) => `t${i % 10}`).join(' '); // ~3000 tokens

await testCase('openai_disconnect_cancels_only_its_own_generation', async () => {
  const ac = new AbortController();
  const a = await client.chat.completions.create({ model: 'm', messages: hi, stream: true, max_tokens: 3500, lazymoe_forced_output: LONG }, { signal: ac.signal });
  // B runs beside A (--parallel 4 by default): it does not wait for A's 3500 tokens
  const bPromise = client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'B' }], lazymoe_forced_output: 'answer of B' });
  let n = 0;
  let aborted = false;
  try {
    for await (const c of a) {
      if (++n === 5) {
        const h = await http(`${server.url}/health`, { method: 'GET' });
        assert(h.status === 200 && h.json.generating === true && h.json.queued === 0, `health while generating: ${h.text}`);
        ac.abort();
      }
      void c;
    }
  } catch (e) { aborted = true; }
  assert(n >= 5, `only ${n} chunks`);
  const b = await bPromise;
  assert(b.choices[0].message.content === 'answer of B', JSON.stringify(b.choices[0]));
  // the server logged A as cut short by its client, long before the 3500 tokens
  const [line] = await server.logLines(/finish=client-disconnected/);
  assert(line, `no client-disconnected line in ${server.log().slice(-1500)}`);
  const out = Number(/out=(\d+)/.exec(line)[1]);
  assert(out < 2500, `A generated ${out} tokens after its client left`);
  void aborted;
});

await testCase('openai_two_clients_at_once', async () => {
  const [x, y] = await Promise.all([
    collect(await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'X' }], stream: true, lazymoe_forced_output: 'answer for X, which is streamed' })),
    client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'Y' }], lazymoe_forced_output: 'answer for Y' }),
  ]);
  const xt = x.map((c) => (c.choices[0] && c.choices[0].delta.content) || '').join('');
  assert(xt === 'answer for X, which is streamed', JSON.stringify(xt));
  assert(y.choices[0].message.content === 'answer for Y', JSON.stringify(y.choices[0]));
});

// A server stopped (SIGTERM) mid-stream ends the stream the way the code intends: an
// error chunk ("the server is shutting down", which the SDK raises as an APIError)
// and [DONE], not a cut connection (which the SDK reports as "terminated").
await testCase('openai_error_chunk_on_shutdown', async () => {
  const s2 = await startServer(['--allow-forced-output']);
  const c2 = new OpenAI({ baseURL: `${s2.url}/v1`, apiKey: 'x', maxRetries: 0 });
  const stream = await c2.chat.completions.create({ model: 'm', messages: hi, stream: true, max_tokens: 3500, lazymoe_forced_output: LONG });
  let stopping = null;
  let n = 0;
  let caught = null;
  try {
    for await (const c of stream) {
      if (c.choices[0] && c.choices[0].delta.content && ++n === 3) stopping = s2.stop();
    }
  } catch (e) { caught = e; }
  assert(stopping, `the stream ended after ${n} text chunks, before the server was stopped`);
  await stopping; // the server exits 0 without sanitizer reports
  assert(caught instanceof OpenAI.APIError, `the stream ended without the error chunk: ${caught}`);
  assert(caught.error && caught.error.type === 'server_error' && /shutting down/.test(caught.message), `${caught} ${JSON.stringify(caught.error)}`);
});

await testCase('openai_forced_output_refused_without_flag', async () => {
  const plain = await startServer([]);
  try {
    const r = await http(`${plain.url}/v1/chat/completions`, { body: { messages: hi, lazymoe_forced_output: 'x' } });
    assert(r.status === 400 && /allow-forced-output/.test(r.json.error.message), r.text);
  } finally {
    await plain.stop();
  }
});

try { const log = await server.stop(); if (process.env.SHOW_LOG) console.error(log); console.log("ok openai_server_clean_exit"); } catch (e) { console.log(`FAIL openai_server_clean_exit: ${e.message}`); process.exitCode = 1; }
done();
