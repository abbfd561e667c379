// `lazymoe serve` driven by the official Anthropic client (npm `@anthropic-ai/sdk`) and
// raw HTTP: messages streamed and not (the full event sequence), system prompts,
// tool_use / tool_result / thinking blocks, stop sequences, usage with the prompt
// cache, count_tokens, the beta path, every client-error case, `event: error`
// mid-stream, a client that disconnects, two clients at once.
import Anthropic from '@anthropic-ai/sdk';
import { testCase, assert, done } from './harness.mjs';
import { startServer, http, parseSSE } from './server_harness.mjs';

const KEY = 'sk-ant-test';
const server = await startServer(['--allow-forced-output', '--api-key', KEY, '--max-body', '1M', '--max-input-tokens', '3000']);
const client = new Anthropic({ baseURL: server.url, apiKey: KEY, maxRetries: 0 });
const MODEL = 'claude-sonnet-4-6';
const hi = [{ role: 'user', content: 'hi' }];
const TOOLS = [{
  name: 'get_weather', description: 'Weather for a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] },
}];
const XML_CALL = '<think>\nthe user wants weather\n</think>\n\nLet me check.\n<tool_call>\n<function=get_weather>\n' +
  '<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>';
const eq = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const headers = { 'x-api-key': KEY, 'anthropic-version': '2023-06-01' };

// Checks the event grammar of a raw stream and returns its events.
function checkEventSequence(text) {
  const ev = parseSSE(text);
  for (const e of ev) assert(e.event && e.data && e.data.type === e.event, `event line ${e.event} vs data ${JSON.stringify(e.data)}`);
  assert(ev[0].event === 'message_start', ev[0].event);
  const u = ev[0].data.message.usage;
  assert(Number.isInteger(u.input_tokens) && Number.isInteger(u.cache_read_input_tokens) && u.input_tokens + u.cache_read_input_tokens > 0, JSON.stringify(u));
  assert(ev[ev.length - 1].event === 'message_stop' && ev[ev.length - 2].event === 'message_delta', ev.slice(-2).map((e) => e.event).join());
  let open = -1;
  let next = 0;
  for (const e of ev.slice(1, -2)) {
    if (e.event === 'ping') continue;
    if (e.event === 'content_block_start') {
      assert(open === -1 && e.data.index === next, `block start ${e.data.index}, expected ${next}, open ${open}`);
      open = next++;
    } else if (e.event === 'content_block_delta') {
      assert(e.data.index === open, `delta for ${e.data.index} while ${open} is open`);
    } else if (e.event === 'content_block_stop') {
      assert(e.data.index === open, `stop ${e.data.index} while ${open} is open`);
      open = -1;
    } else {
      throw new Error(`unexpected event ${e.event}`);
    }
  }
  assert(open === -1, 'a block was left open');
  return ev;
}

// A long prefill keeps the stream alive with events clients count as activity (Claude
// Code aborts after 300 s without one; pings do not count): the answer's text block
// opens early and gets empty deltas, and the answer then continues in it.
await testCase('anthropic_keepalive_during_long_prefill', async () => {
  const ka = await startServer(['--allow-forced-output', '--keepalive', '1']);
  try {
    const long = Array.from({ length: 100 }, (_, i) => `line ${i}: def f${i}(x): return x * ${i}`).join('\n');
    const forced = 'Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>';
    const t0 = Date.now();
    const r = await http(`${ka.url}/v1/messages`, {
      body: { model: MODEL, max_tokens: 200, stream: true, tools: TOOLS, messages: [{ role: 'user', content: long }], lazymoe_forced_output: forced },
      headers: { 'anthropic-version': '2023-06-01' },
    });
    const secs = (Date.now() - t0) / 1000;
    assert(r.status === 200, r.text);
    const ev = checkEventSequence(r.text);
    const firstText = ev.findIndex((e) => e.event === 'content_block_delta' && e.data.delta.text);
    const blanks = ev.slice(0, firstText).filter((e) => e.event === 'content_block_delta' && e.data.delta.text === '');
    assert(blanks.length >= 1, `a ${secs.toFixed(1)} s request sent no empty delta before its text (if the prefill took under 1 s, make the prompt longer): ${ev.map((e) => e.event).join()}`);
    const starts = ev.filter((e) => e.event === 'content_block_start').map((e) => e.data.content_block);
    assert(starts.length === 2 && starts[0].type === 'text' && starts[1].type === 'tool_use' && starts[1].name === 'get_weather', JSON.stringify(starts));
    const text = ev.filter((e) => e.event === 'content_block_delta' && e.data.index === 0).map((e) => e.data.delta.text).join('');
    assert(text === 'Let me check.', `the answer's text did not continue the early block: ${JSON.stringify(text)}`);
    const args = ev.filter((e) => e.event === 'content_block_delta' && e.data.index === 1).map((e) => e.data.delta.partial_json).join('');
    assert(JSON.parse(args).city === 'Paris' && ev.at(-2).data.delta.stop_reason === 'tool_use', args);
  } finally {
    await ka.stop();
  }
});

await testCase('anthropic_message_not_streamed', async () => {
  const m = await client.messages.create({ model: MODEL, max_tokens: 8, messages: hi });
  assert(m.type === 'message' && m.role === 'assistant' && m.model === MODEL && /^msg_/.test(m.id), JSON.stringify(m));
  assert(m.content.length === 1 && m.content[0].type === 'text', JSON.stringify(m.content));
  assert(['end_turn', 'max_tokens'].includes(m.stop_reason) && m.stop_sequence === null, m.stop_reason);
  assert(m.usage.output_tokens >= 1 && m.usage.output_tokens <= 8, JSON.stringify(m.usage));
  assert(m.usage.input_tokens + m.usage.cache_read_input_tokens > 5, JSON.stringify(m.usage));
});

await testCase('anthropic_stream_event_sequence_and_sdk', async () => {
  const body = { model: MODEL, max_tokens: 20, temperature: 0, messages: hi, stream: true };
  const raw = await http(`${server.url}/v1/messages`, { body, headers });
  assert(raw.status === 200 && /text\/event-stream/.test(raw.headers.get('content-type')), raw.text.slice(0, 200));
  const ev = checkEventSequence(raw.text);
  const text = ev.filter((e) => e.event === 'content_block_delta').map((e) => e.data.delta.text).join('');
  const final = await client.messages.stream({ ...body, stream: undefined }).finalMessage();
  assert(final.content.length === 1 && final.content[0].text === text, `${JSON.stringify(final.content)} vs ${JSON.stringify(text)}`);
  const nostream = await client.messages.create({ ...body, stream: undefined });
  assert(nostream.content[0].text === text, 'greedy streamed and not streamed texts differ');
  assert(final.usage.output_tokens === nostream.usage.output_tokens, JSON.stringify([final.usage, nostream.usage]));
  // repeated prompt: read from the prompt cache, and reported the Anthropic way
  assert(nostream.usage.cache_read_input_tokens > 0 && nostream.usage.input_tokens >= 1, JSON.stringify(nostream.usage));
});

await testCase('anthropic_tool_use_not_streamed', async () => {
  const m = await client.messages.create({ model: MODEL, max_tokens: 400, messages: [{ role: 'user', content: 'weather?' }], tools: TOOLS, lazymoe_forced_output: XML_CALL });
  assert(m.stop_reason === 'tool_use', m.stop_reason);
  assert(eq(m.content.map((b) => b.type), ['thinking', 'text', 'tool_use']), JSON.stringify(m.content));
  assert(m.content[0].thinking === 'the user wants weather' && m.content[1].text === 'Let me check.', JSON.stringify(m.content));
  const tu = m.content[2];
  assert(tu.name === 'get_weather' && tu.id && eq(tu.input, { city: 'Paris', days: 3 }), JSON.stringify(tu));
});

await testCase('anthropic_tool_use_streamed', async () => {
  const body = { model: MODEL, max_tokens: 400, messages: [{ role: 'user', content: 'weather?' }], tools: TOOLS, lazymoe_forced_output: XML_CALL };
  const raw = await http(`${server.url}/v1/messages`, { body: { ...body, stream: true }, headers });
  const ev = checkEventSequence(raw.text);
  const starts = ev.filter((e) => e.event === 'content_block_start').map((e) => e.data.content_block.type);
  assert(eq(starts, ['thinking', 'text', 'tool_use']), starts.join());
  const json = ev.filter((e) => e.event === 'content_block_delta' && e.data.delta.type === 'input_json_delta').map((e) => e.data.delta.partial_json);
  assert(json.length >= 2 && eq(JSON.parse(json.join('')), { city: 'Paris', days: 3 }), json.join(''));
  const delta = ev.find((e) => e.event === 'message_delta').data;
  assert(delta.delta.stop_reason === 'tool_use' && delta.usage.output_tokens > 50, JSON.stringify(delta));
  // the SDK's accumulator rebuilds the same message
  const final = await client.messages.stream(body).finalMessage();
  const tu = final.content.find((b) => b.type === 'tool_use');
  assert(tu && eq(tu.input, { city: 'Paris', days: 3 }) && final.stop_reason === 'tool_use', JSON.stringify(final));
  assert(final.content[0].type === 'thinking' && final.content[0].thinking === 'the user wants weather', JSON.stringify(final.content[0]));
});

await testCase('anthropic_tool_result_round_trip', async () => {
  const first = await client.messages.create({ model: MODEL, max_tokens: 400, messages: [{ role: 'user', content: 'weather?' }], tools: TOOLS, lazymoe_forced_output: XML_CALL });
  const tu = first.content.find((b) => b.type === 'tool_use');
  const messages = [
    { role: 'user', content: 'weather?' },
    { role: 'assistant', content: first.content.map((b) => (b.type === 'thinking' ? { ...b, signature: 'sig' } : b)) },
    { role: 'user', content: [
      { type: 'tool_result', tool_use_id: tu.id, content: [{ type: 'text', text: 'sunny, 21 C' }] },
      { type: 'text', text: 'and tomorrow?', cache_control: { type: 'ephemeral' } },
    ] },
  ];
  const m = await client.messages.create({ model: MODEL, max_tokens: 50, messages, tools: TOOLS, lazymoe_forced_output: 'Sunny again.' });
  assert(m.content[0].text === 'Sunny again.' && m.stop_reason === 'end_turn', JSON.stringify(m));
  // an error result (string content) is accepted too, and says it is an error
  const errMsgs = [...messages.slice(0, 2), { role: 'user', content: [{ type: 'tool_result', tool_use_id: tu.id, content: 'city not found', is_error: true }] }];
  const c1 = await client.messages.countTokens({ model: MODEL, messages: errMsgs, tools: TOOLS });
  errMsgs[2].content[0].is_error = false;
  const c2 = await client.messages.countTokens({ model: MODEL, messages: errMsgs, tools: TOOLS });
  assert(c1.input_tokens > c2.input_tokens, `is_error changes nothing: ${c1.input_tokens} vs ${c2.input_tokens}`);
});

await testCase('anthropic_system_prompts_and_billing_header', async () => {
  const count = async (extra) => (await client.messages.countTokens({ model: MODEL, messages: hi, ...extra })).input_tokens;
  const asString = await count({ system: 'You are terse.\nAnswer in English.' });
  const asBlocks = await count({ system: [{ type: 'text', text: 'You are terse.' }, { type: 'text', text: 'Answer in English.', cache_control: { type: 'ephemeral' } }] });
  assert(asString === asBlocks, `${asString} vs ${asBlocks}`);
  const none = await count({});
  assert(asString > none, 'system prompt not rendered');
  const billing = await count({ system: [{ type: 'text', text: 'x-anthropic-billing-header: cc_version=1.0.0; cch=abc123;' }, { type: 'text', text: 'You are terse.' }, { type: 'text', text: 'Answer in English.' }] });
  assert(billing === asString, `billing header not stripped: ${billing} vs ${asString}`);
  // inline system messages (Claude Code sends them) are accepted
  const m = await client.messages.create({ model: MODEL, max_tokens: 4, messages: [{ role: 'system', content: 'be nice' }, ...hi] });
  assert(m.type === 'message');
  // count_tokens equals what messages reports as the prompt
  const body = { model: MODEL, max_tokens: 3, system: 'S', messages: hi, tools: TOOLS };
  const c = (await client.messages.countTokens({ model: MODEL, system: 'S', messages: hi, tools: TOOLS })).input_tokens;
  const r = await client.messages.create(body);
  assert(r.usage.input_tokens + r.usage.cache_read_input_tokens === c, `${JSON.stringify(r.usage)} vs ${c}`);
});

await testCase('anthropic_stop_sequences', async () => {
  const m = await client.messages.create({ model: MODEL, max_tokens: 50, messages: hi, stop_sequences: ['zz', 'STOP'], lazymoe_forced_output: 'abc STOP def' });
  assert(m.content[0].text === 'abc' || m.content[0].text === 'abc ', JSON.stringify(m.content));
  assert(m.stop_reason === 'stop_sequence' && m.stop_sequence === 'STOP', JSON.stringify(m));
  const raw = await http(`${server.url}/v1/messages`, { body: { model: MODEL, max_tokens: 50, messages: hi, stop_sequences: ['def'], stream: true, lazymoe_forced_output: 'abc STOP def' }, headers });
  const d = checkEventSequence(raw.text).find((e) => e.event === 'message_delta').data.delta;
  assert(d.stop_reason === 'stop_sequence' && d.stop_sequence === 'def', JSON.stringify(d));
});

await testCase('anthropic_max_tokens', async () => {
  const m = await client.messages.create({ model: MODEL, max_tokens: 4, messages: hi, lazymoe_forced_output: 'one two three four five six seven' });
  assert(m.stop_reason === 'max_tokens' && m.usage.output_tokens === 4, JSON.stringify(m));
});

await testCase('anthropic_beta_path_headers_unknown_fields', async () => {
  const m = await client.beta.messages.create({
    model: 'claude-opus-4-1', max_tokens: 4, messages: hi, betas: ['interleaved-thinking-2025-05-14', 'context-management-2025-06-27'],
    metadata: { user_id: 'u' }, thinking: { type: 'enabled', budget_tokens: 1024 },
  });
  assert(m.type === 'message' && m.model === 'claude-opus-4-1', JSON.stringify(m));
  const raw = await http(`${server.url}/v1/messages?beta=true`, {
    body: { model: 'claude-3-5-haiku-20241022', max_tokens: 2, messages: hi, some_future_field: { a: [1] }, context_management: { edits: [] } },
    headers: { ...headers, 'anthropic-beta': 'oauth-2025-04-20,fine-grained-tool-streaming-2025-05-14' },
  });
  assert(raw.status === 200 && raw.json.type === 'message', raw.text);
  // Authorization: Bearer is accepted as well as x-api-key
  const bearer = new Anthropic({ baseURL: server.url, authToken: KEY, apiKey: null, maxRetries: 0 });
  const b = await bearer.messages.create({ model: MODEL, max_tokens: 2, messages: hi });
  assert(b.type === 'message');
});

// ---- errors --------------------------------------------------------------------------

async function expectError(body, status, type, check, hdrs = headers, path = '/v1/messages') {
  const r = await http(`${server.url}${path}`, { body, headers: hdrs });
  assert(r.status === status, `status ${r.status} (wanted ${status}): ${r.text.slice(0, 300)}`);
  assert(r.json && r.json.type === 'error' && r.json.error && r.json.error.type === type && typeof r.json.error.message === 'string',
    `not an Anthropic ${type} error: ${r.text.slice(0, 300)}`);
  if (check) check(r.json.error.message);
}

await testCase('anthropic_error_invalid_json_and_types', async () => {
  await expectError('{"model": ', 400, 'invalid_request_error', (m) => assert(/JSON/.test(m), m));
  const cases = [
    [{ max_tokens: 5, messages: 'hi' }, 'messages'],
    [{ max_tokens: 5 }, 'messages'],
    [{ max_tokens: 'five', messages: hi }, 'max_tokens'],
    [{ max_tokens: 5, messages: [{ role: 'user', content: 3 }] }, 'messages[0].content'],
    [{ max_tokens: 5, messages: [{ role: 'robot', content: 'x' }] }, 'messages[0].role'],
    [{ max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'image', source: {} }] }] }, 'messages[0].content[0].type'],
    [{ max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'tool_result' }] }] }, 'messages[0].content[0].tool_use_id'],
    [{ max_tokens: 5, messages: [{ role: 'assistant', content: [{ type: 'tool_use', name: 'f', input: 'x' }] }] }, 'messages[0].content[0].input'],
    [{ max_tokens: 5, messages: hi, system: 5 }, 'system'],
    [{ max_tokens: 5, messages: hi, system: [{ type: 'text' }] }, 'system[0].text'],
    [{ max_tokens: 5, messages: hi, tools: [{ input_schema: {} }] }, 'tools[0].name'],
    [{ max_tokens: 5, messages: hi, stop_sequences: 'x' }, 'stop_sequences'],
    [{ max_tokens: 5, messages: hi, temperature: [] }, 'temperature'],
    [{ max_tokens: 5, messages: hi, top_k: 'k' }, 'top_k'],
    [{ max_tokens: 5, messages: hi, tool_choice: { type: 'sometimes' } }, 'tool_choice.type'],
  ];
  for (const [body, field] of cases)
    await expectError({ model: MODEL, ...body }, 400, 'invalid_request_error', (m) => assert(m.includes(field), `${JSON.stringify(body)}: "${m}" does not name ${field}`));
  let caught = null;
  try { await client.messages.create({ model: MODEL, max_tokens: 5, messages: 'x' }); } catch (e) { caught = e; }
  assert(caught instanceof Anthropic.BadRequestError && caught.status === 400, String(caught));
});

await testCase('anthropic_error_too_large_and_too_long', async () => {
  await expectError({ model: MODEL, max_tokens: 5, messages: [{ role: 'user', content: 'x'.repeat(1100 * 1024) }] }, 413, 'request_too_large');
  const words = Array.from({ length: 1200 }, (_, i) => `w${i}`).join(' ');
  await expectError({ model: MODEL, max_tokens: 5, messages: [{ role: 'user', content: words }] }, 400, 'invalid_request_error',
    (m) => assert(/^prompt is too long: \d+ tokens > 3000 maximum$/.test(m), m));
  let caught = null;
  try { await client.messages.create({ model: MODEL, max_tokens: 5, messages: [{ role: 'user', content: words }] }); } catch (e) { caught = e; }
  assert(caught instanceof Anthropic.BadRequestError && /prompt is too long/.test(caught.message), String(caught));
});

await testCase('anthropic_error_auth_and_routes', async () => {
  await expectError({ model: MODEL, max_tokens: 5, messages: hi }, 401, 'authentication_error', null, { 'x-api-key': 'wrong' });
  await expectError({ model: MODEL, max_tokens: 5, messages: hi }, 401, 'authentication_error', null, {});
  await expectError({ model: MODEL, messages: hi }, 401, 'authentication_error', null, { authorization: 'Bearer nope' }, '/v1/messages/count_tokens');
  const bad = new Anthropic({ baseURL: server.url, apiKey: 'wrong', maxRetries: 0 });
  let caught = null;
  try { await bad.messages.create({ model: MODEL, max_tokens: 5, messages: hi }); } catch (e) { caught = e; }
  assert(caught instanceof Anthropic.AuthenticationError, String(caught));
  await expectError({}, 404, 'not_found_error', null, headers, '/v1/messages/nothing');
});

// ---- concurrency and mid-stream errors ---------------------------------------------------

const LONG = Array.from({ length: 1500 }, (_, i) => `t${i % 10}`).join(' ');

await testCase('anthropic_disconnect_and_two_clients', async () => {
  const ac = new AbortController();
  const stream = client.messages.stream({ model: MODEL, max_tokens: 3500, messages: hi, lazymoe_forced_output: LONG }, { signal: ac.signal });
  const other = client.messages.stream({ model: MODEL, max_tokens: 100, messages: [{ role: 'user', content: 'other' }], lazymoe_forced_output: 'the other answer' });
  let deltas = 0;
  stream.on('text', () => { if (++deltas === 5) ac.abort(); });
  let aborted = false;
  try { await stream.finalMessage(); } catch (e) { aborted = true; }
  assert(aborted || stream.aborted, 'the aborted stream finished');
  const o = await other.finalMessage();
  assert(o.content[0].text === 'the other answer' && o.stop_reason === 'end_turn', JSON.stringify(o));
  // The two requests race to the queue: when the other one ran first, the aborted
  // stream is still being cut short now; the worker logs it once it notices.
  const [line] = await server.logLines(/POST \/v1\/messages 499 stream .*finish=client-disconnected/, 1, 10000);
  assert(line && Number(/out=(\d+)/.exec(line)[1]) < 2500, `no early client-disconnected line: ${server.log().slice(-800)}`);
});

await testCase('anthropic_disconnect_not_streamed', async () => {
  const ac = new AbortController();
  const req = client.messages.create({ model: MODEL, max_tokens: 3500, messages: [{ role: 'user', content: 'long' }], lazymoe_forced_output: LONG }, { signal: ac.signal });
  setTimeout(() => ac.abort(), 300);
  let caught = null;
  try { await req; } catch (e) { caught = e; }
  assert(caught instanceof Anthropic.APIUserAbortError, String(caught));
  // the worker notices within its polling interval and logs the cut-short request
  const [line] = await server.logLines(/POST \/v1\/messages 499 in=\d+ .*finish=client-disconnected/, 1, 10000);
  assert(line && Number(/out=(\d+)/.exec(line)[1]) < 2500, `no early client-disconnected line: ${server.log().slice(-800)}`);
  const after = await client.messages.create({ model: MODEL, max_tokens: 20, messages: hi, lazymoe_forced_output: 'still here' });
  assert(after.content[0].text === 'still here', JSON.stringify(after));
});

await testCase('anthropic_event_error_mid_stream', async () => {
  const s2 = await startServer(['--allow-forced-output']);
  const c2 = new Anthropic({ baseURL: s2.url, apiKey: 'x', maxRetries: 0 });
  const stream = c2.messages.stream({ model: MODEL, max_tokens: 3500, messages: hi, lazymoe_forced_output: LONG });
  let stopping = null;
  let n = 0;
  stream.on('text', () => { if (++n === 3) stopping = s2.stop(); });
  let caught = null;
  try { await stream.finalMessage(); } catch (e) { caught = e; }
  assert(stopping, 'the stream ended before 3 deltas');
  await stopping; // the server exits 0 without sanitizer reports
  assert(caught && caught.error && caught.error.error && caught.error.error.type === 'overloaded_error', `${caught} ${JSON.stringify(caught && caught.error)}`);
  assert(/shutting down/.test(caught.message), caught.message);
});

try {
  const log = await server.stop();
  if (process.env.SHOW_LOG) console.error(log);
  console.log('ok anthropic_server_clean_exit');
} catch (e) { console.log(`FAIL anthropic_server_clean_exit: ${e.message}`); process.exitCode = 1; }
done();
