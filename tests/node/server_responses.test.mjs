// `lazymoe serve`'s OpenAI Responses API (POST /v1/responses) driven by the official
// OpenAI client's responses.create (npm `openai`) and raw HTTP: text streamed and
// not, the event sequence, history with reasoning / calls / tool results, function
// and freeform (custom) tool calls streamed and not (through the test-only forced
// output), built-in tools skipped, max_output_tokens cuts inside and after a call,
// NUL bytes in JSON strings on every endpoint, the prompt cache, every client error.
import OpenAI from 'openai';
import { testCase, assert, done } from './harness.mjs';
import { startServer, http, parseSSE } from './server_harness.mjs';

const server = await startServer(['--allow-forced-output', '--max-input-tokens', '3000']);
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
const WEATHER = [{
  type: 'function', name: 'get_weather', description: 'Weather for a city',
  parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] },
}];
const PATCH_TOOL = [{ type: 'custom', name: 'apply_patch', description: 'Edit files', format: { type: 'grammar', syntax: 'lark', definition: 'start: /.+/s' } }];
const XML_CALL = '<think>\nthe user wants weather\n</think>\n\nLet me check.\n<tool_call>\n<function=get_weather>\n' +
  '<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>';
const PATCH = '*** Begin Patch\n*** Update File: a.txt\n@@\n-old "line"\n+new\tline\n*** End Patch';
const PATCH_CALL = `<tool_call>\n<function=apply_patch>\n<parameter=input>\n${PATCH}\n</parameter>\n</function>\n</tool_call>`;
const eq = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function events(params) {
  const out = [];
  for await (const ev of await client.responses.create({ ...params, stream: true })) out.push(ev);
  return out;
}

// Checks the stream's framing: sequence numbers 0, 1, ...; created and in_progress
// first; one terminal event last; every item added is done at the same index.
function checkFraming(evs) {
  evs.forEach((e, i) => assert(e.sequence_number === i, `event ${i} has sequence_number ${e.sequence_number}: ${e.type}`));
  assert(evs[0].type === 'response.created' && evs[1].type === 'response.in_progress', evs.slice(0, 2).map((e) => e.type).join());
  assert(evs[0].response.status === 'in_progress' && evs[0].response.output.length === 0, JSON.stringify(evs[0]));
  const last = evs[evs.length - 1];
  assert(['response.completed', 'response.incomplete'].includes(last.type), last.type);
  const added = evs.filter((e) => e.type === 'response.output_item.added');
  const doneItems = evs.filter((e) => e.type === 'response.output_item.done');
  assert(added.length === doneItems.length && added.every((a, i) => a.output_index === i && doneItems[i].output_index === i &&
    a.item.id === doneItems[i].item.id), 'added/done items do not pair up');
  assert(eq(last.response.output.map((o) => o.id), doneItems.map((d) => d.item.id)), 'final output differs from the items done');
  return last.response;
}

// A long prefill keeps the stream alive with events (Codex ends a stream after 300 s
// without one; SSE comments are not events): response.in_progress again.
await testCase('responses_keepalive_during_long_prefill', async () => {
  const ka = await startServer(['--allow-forced-output', '--keepalive', '1']);
  try {
    const c = new OpenAI({ baseURL: `${ka.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const long = Array.from({ length: 100 }, (_, i) => `line ${i}: def f${i}(x): return x * ${i}`).join('\n');
    const t0 = Date.now();
    const evs = [];
    for await (const ev of await c.responses.create({ model: 'm', input: long, max_output_tokens: 20, stream: true, lazymoe_forced_output: 'done' })) evs.push(ev);
    const secs = (Date.now() - t0) / 1000;
    const r = checkFraming(evs);
    const first = evs.findIndex((e) => e.type === 'response.output_item.added');
    const alive = evs.slice(2, first).filter((e) => e.type === 'response.in_progress');
    assert(alive.length >= 1 && alive.length === first - 2, `a ${secs.toFixed(1)} s request sent ${alive.length} keep-alives before its output (if the prefill took under 1 s, make the prompt longer): ${evs.map((e) => e.type).join()}`);
    assert(alive.every((e) => e.response.status === 'in_progress' && e.response.id === r.id), JSON.stringify(alive[0]));
    assert(r.status === 'completed' && r.output[0].content[0].text === 'done', JSON.stringify(r.output));
  } finally {
    await ka.stop();
  }
});

await testCase('responses_not_streamed', async () => {
  const r = await client.responses.create({ model: 'whatever', input: 'def add(a, b):', max_output_tokens: 8, seed: 3 });
  assert(r.object === 'response' && r.id.startsWith('resp_') && r.model === 'whatever', JSON.stringify(r));
  assert(['completed', 'incomplete'].includes(r.status), r.status);
  assert(r.status !== 'incomplete' || r.incomplete_details.reason === 'max_output_tokens', JSON.stringify(r.incomplete_details));
  const msg = r.output.find((o) => o.type === 'message');
  assert(msg && msg.role === 'assistant' && msg.content[0].type === 'output_text', JSON.stringify(r.output));
  assert(typeof r.output_text === 'string' && r.output_text === msg.content[0].text, `SDK output_text ${JSON.stringify(r.output_text)}`);
  const u = r.usage;
  assert(u.input_tokens > 3 && u.output_tokens >= 1 && u.output_tokens <= 8 && u.total_tokens === u.input_tokens + u.output_tokens, JSON.stringify(u));
  assert(Number.isInteger(u.input_tokens_details.cached_tokens), JSON.stringify(u));
});

await testCase('responses_stream_equals_not_streamed_greedy', async () => {
  const params = { model: 'm', instructions: 'be brief', input: [{ role: 'user', content: [{ type: 'input_text', text: 'tell' }, { type: 'input_text', text: 'me' }] }], max_output_tokens: 24, temperature: 0 };
  const full = await client.responses.create(params);
  const evs = await events(params);
  const resp = checkFraming(evs);
  const text = evs.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('');
  assert(text === full.output_text, `${JSON.stringify(text)} vs ${JSON.stringify(full.output_text)}`);
  const textDone = evs.find((e) => e.type === 'response.output_text.done');
  assert(textDone && textDone.text === text, JSON.stringify(textDone));
  assert(evs.some((e) => e.type === 'response.content_part.added') && evs.some((e) => e.type === 'response.content_part.done'), 'content part events missing');
  assert(resp.status === full.status && resp.usage.output_tokens === full.usage.output_tokens && resp.usage.input_tokens === full.usage.input_tokens,
    `${JSON.stringify(resp.usage)} vs ${JSON.stringify(full.usage)}`);
  // the SDK's own stream helper accumulates the same answer
  const s = client.responses.stream(params);
  const final = await s.finalResponse();
  assert(final.output_text === full.output_text, JSON.stringify(final.output_text));
});

await testCase('responses_function_call_streamed_and_not', async () => {
  const params = { model: 'm', input: 'weather in Paris?', tools: WEATHER, lazymoe_forced_output: XML_CALL };
  const r = await client.responses.create(params);
  assert(r.status === 'completed', r.status);
  assert(eq(r.output.map((o) => o.type), ['reasoning', 'message', 'function_call']), JSON.stringify(r.output));
  assert(r.output[0].content[0].text === 'the user wants weather' && r.output[0].id.startsWith('rs_'), JSON.stringify(r.output[0]));
  assert(r.output_text === 'Let me check.', JSON.stringify(r.output_text));
  const fc = r.output[2];
  assert(fc.name === 'get_weather' && fc.call_id.startsWith('call_') && fc.id.startsWith('fc_') && fc.status === 'completed', JSON.stringify(fc));
  assert(eq(JSON.parse(fc.arguments), { city: 'Paris', days: 3 }), fc.arguments);

  const evs = await events(params);
  const resp = checkFraming(evs);
  assert(eq(resp.output.map((o) => o.type), ['reasoning', 'message', 'function_call']), JSON.stringify(resp.output));
  const reasoning = evs.filter((e) => e.type === 'response.reasoning_text.delta').map((e) => e.delta).join('');
  assert(reasoning === 'the user wants weather', JSON.stringify(reasoning));
  const added = evs.find((e) => e.type === 'response.output_item.added' && e.item.type === 'function_call');
  assert(added.item.arguments === '' && added.item.name === 'get_weather', JSON.stringify(added));
  const deltas = evs.filter((e) => e.type === 'response.function_call_arguments.delta');
  assert(deltas.length >= 1 && deltas.every((d) => d.item_id === added.item.id && d.output_index === added.output_index), 'deltas of another item');
  const args = deltas.map((d) => d.delta).join('');
  const argsDone = evs.find((e) => e.type === 'response.function_call_arguments.done');
  assert(argsDone.arguments === args && eq(JSON.parse(args), { city: 'Paris', days: 3 }), args);
  const item = evs.find((e) => e.type === 'response.output_item.done' && e.item.type === 'function_call').item;
  assert(item.arguments === args && item.call_id === added.item.call_id && item.status === 'completed', JSON.stringify(item));
});

await testCase('responses_custom_tool_call_raw_input', async () => {
  const params = { model: 'm', input: 'patch a.txt', tools: PATCH_TOOL, lazymoe_forced_output: PATCH_CALL };
  const r = await client.responses.create(params);
  assert(r.output.length === 1 && r.output[0].type === 'custom_tool_call', JSON.stringify(r.output));
  const c = r.output[0];
  assert(c.name === 'apply_patch' && c.input === PATCH && c.call_id.startsWith('call_'), JSON.stringify(c));
  const evs = await events(params);
  checkFraming(evs);
  const delta = evs.filter((e) => e.type === 'response.custom_tool_call_input.delta').map((e) => e.delta).join('');
  const doneEv = evs.find((e) => e.type === 'response.custom_tool_call_input.done');
  assert(delta === PATCH && doneEv.input === PATCH, JSON.stringify(delta));
  const item = evs.find((e) => e.type === 'response.output_item.done').item;
  assert(item.type === 'custom_tool_call' && item.input === PATCH, JSON.stringify(item));
});

await testCase('responses_history_and_prompt_cache', async () => {
  // a Codex-shaped conversation: developer instructions, user, reasoning sent back,
  // assistant text, a function call and its output, a custom call and its output
  const history = [
    { type: 'message', role: 'developer', content: [{ type: 'input_text', text: 'You are a coding agent.' }] },
    { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'weather, then patch' }] },
    { type: 'reasoning', id: 'rs_1', summary: [{ type: 'summary_text', text: 'short' }], content: [{ type: 'reasoning_text', text: 'think first' }], encrypted_content: null },
    { type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'Checking.' }] },
    { type: 'function_call', call_id: 'call_1', name: 'get_weather', arguments: '{"city":"Paris"}' },
    { type: 'function_call_output', call_id: 'call_1', output: 'sunny' },
    { type: 'custom_tool_call', call_id: 'call_2', name: 'apply_patch', input: PATCH },
    { type: 'custom_tool_call_output', call_id: 'call_2', output: [{ type: 'input_text', text: 'Success.' }] },
  ];
  const tools = [...WEATHER, ...PATCH_TOOL];
  const a = await client.responses.create({ model: 'm', input: history, tools, max_output_tokens: 4, temperature: 0, store: false, reasoning: { effort: 'low' }, parallel_tool_calls: true, tool_choice: 'auto' });
  assert(['completed', 'incomplete'].includes(a.status), JSON.stringify(a));
  const more = [...history, ...a.output.map((o) => ({ ...o })), { role: 'user', content: 'and now?' }];
  const b = await client.responses.create({ model: 'm', input: more, tools, max_output_tokens: 4, temperature: 0 });
  assert(b.usage.input_tokens > a.usage.input_tokens, `${b.usage.input_tokens} <= ${a.usage.input_tokens}`);
  assert(b.usage.input_tokens_details.cached_tokens >= a.usage.input_tokens - 8,
    `the second turn reused ${b.usage.input_tokens_details.cached_tokens} of ${a.usage.input_tokens} tokens`);
});

await testCase('responses_builtin_tools_skipped', async () => {
  const r = await http(`${server.url}/v1/responses`, {
    body: { input: 'hi', max_output_tokens: 2, tools: [{ type: 'web_search' }, { type: 'file_search', vector_store_ids: [] }, ...WEATHER], tool_choice: { type: 'web_search' } },
  });
  assert(r.status === 200 && r.json.object === 'response', r.text);
  assert(/built-in tools skipped.*web_search,file_search/.test(server.log()), 'no log line names the skipped tools');
});

await testCase('responses_cut_inside_call_is_text', async () => {
  const params = { model: 'm', input: 'weather?', tools: WEATHER, lazymoe_forced_output: '<tool_call>\n<function=get_weather>\n<parameter=city>\nParis is a long city name\n</parameter>\n</function>\n</tool_call>', max_output_tokens: 12 };
  const r = await client.responses.create(params);
  assert(r.status === 'incomplete' && r.incomplete_details.reason === 'max_output_tokens', JSON.stringify(r));
  assert(r.output.every((o) => o.type === 'message'), `a cut call was delivered as a call: ${JSON.stringify(r.output)}`);
  assert(r.output_text.startsWith('<tool_call>\n<function=get_weather>') && r.output_text.length < 90, JSON.stringify(r.output_text));
  const evs = await events(params);
  const resp = checkFraming(evs);
  assert(evs[evs.length - 1].type === 'response.incomplete' && resp.status === 'incomplete', evs[evs.length - 1].type);
  const item = evs.find((e) => e.type === 'response.output_item.done').item;
  assert(item.type === 'function_call' && item.status === 'incomplete', `streamed cut call: ${JSON.stringify(item)}`);
  // chat completions and messages, not streamed: text with finish reason length / max_tokens
  const c = await http(`${server.url}/v1/chat/completions`, { body: { messages: [{ role: 'user', content: 'w' }], tools: [{ type: 'function', function: WEATHER[0] }], lazymoe_forced_output: params.lazymoe_forced_output, max_tokens: 12 } });
  const m = c.json.choices[0];
  assert(m.finish_reason === 'length' && !m.message.tool_calls && m.message.content.startsWith('<tool_call>'), c.text);
  const a = await http(`${server.url}/v1/messages`, { body: { messages: [{ role: 'user', content: 'w' }], tools: [{ name: 'get_weather', input_schema: WEATHER[0].parameters }], lazymoe_forced_output: params.lazymoe_forced_output, max_tokens: 12 } });
  assert(a.json.stop_reason === 'max_tokens' && a.json.content.every((b) => b.type === 'text') && a.json.content[0].text.startsWith('<tool_call>'), a.text);
});

await testCase('responses_complete_call_then_cut_is_a_call', async () => {
  const whole = await client.responses.create({ model: 'm', input: 'weather?', tools: WEATHER, lazymoe_forced_output: XML_CALL });
  const n = whole.usage.output_tokens;
  const forced = `${XML_CALL}\n\nand then a long tail of words that the limit cuts off before the end`;
  const r = await client.responses.create({ model: 'm', input: 'weather?', tools: WEATHER, lazymoe_forced_output: forced, max_output_tokens: n + 2 });
  assert(r.status === 'incomplete', r.status);
  const fc = r.output.find((o) => o.type === 'function_call');
  assert(fc && fc.status === 'completed' && eq(JSON.parse(fc.arguments), { city: 'Paris', days: 3 }), JSON.stringify(r.output));
  const c = await http(`${server.url}/v1/chat/completions`, { body: { messages: [{ role: 'user', content: 'w' }], tools: [{ type: 'function', function: WEATHER[0] }], lazymoe_forced_output: forced, max_tokens: n + 2 } });
  const m = c.json.choices[0].message;
  assert(m.tool_calls && m.tool_calls.length === 1 && m.tool_calls[0].function.name === 'get_weather', c.text);
});

await testCase('nul_bytes_in_json_strings_on_every_endpoint', async () => {
  const text = 'cat says: a\u0000b';
  const bodies = [
    ['/v1/responses', { input: [{ role: 'user', content: text }, { type: 'function_call', call_id: 'c', name: 'f', arguments: '{"x":"\\u0000"}' }, { type: 'function_call_output', call_id: 'c', output: text }], max_output_tokens: 2 }],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: text }, { role: 'user', content: [{ type: 'text', text }] }], max_tokens: 2 }],
    ['/v1/messages', { messages: [{ role: 'user', content: [{ type: 'text', text }] }], system: text, max_tokens: 2 }],
    ['/v1/messages/count_tokens', { messages: [{ role: 'user', content: text }] }],
  ];
  for (const [url, body] of bodies) {
    const r = await http(`${server.url}${url}`, { body: JSON.stringify(body) }); // the NUL travels as \u0000
    assert(r.status === 200, `${url}: ${r.status} ${r.text}`);
  }
  // the NUL is tokenized as text: the prompt is longer than without it
  const count = async (t) => (await http(`${server.url}/v1/messages/count_tokens`, { body: { messages: [{ role: 'user', content: t }] } })).json.input_tokens;
  const withNul = await count('a\u0000b'), without = await count('ab');
  assert(withNul > without, `NUL not tokenized: ${withNul} vs ${without} tokens`);
});

async function expectError(body, status, check, { raw = false, headers = {} } = {}) {
  const r = await http(`${server.url}/v1/responses`, { body: raw ? body : JSON.stringify(body), headers });
  assert(r.status === status, `status ${r.status} for ${raw ? body : JSON.stringify(body)}: ${r.text}`);
  const e = r.json && r.json.error;
  assert(e && typeof e.message === 'string' && e.type && 'param' in e && 'code' in e, `not the OpenAI error shape: ${r.text}`);
  if (check) check(e);
  return e;
}

await testCase('responses_client_errors', async () => {
  await expectError('{"input": "hi"', 400, (e) => assert(/not valid JSON/.test(e.message), e.message), { raw: true });
  await expectError('[1]', 400, null, { raw: true });
  const cases = [
    [{}, 'input'],
    [{ input: 5 }, 'input'],
    [{ input: [] }, 'input'],
    [{ input: [7] }, 'input[0]'],
    [{ input: [{ type: 'telepathy' }] }, 'input[0].type'],
    [{ input: [{ role: 'wizard', content: 'x' }] }, 'input[0].role'],
    [{ input: [{ role: 'user' }] }, 'input[0].content'],
    [{ input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'x' }] }] }, 'input[0].content[0].type'],
    [{ input: [{ role: 'user', content: [{ type: 'input_text' }] }] }, 'input[0].content[0].text'],
    [{ input: [{ type: 'function_call', name: 'f', arguments: '{}' }] }, 'input[0].call_id'],
    [{ input: [{ type: 'function_call', call_id: 'c', name: 'f', arguments: 'not json' }] }, 'input[0].arguments'],
    [{ input: [{ type: 'function_call_output', call_id: 'c' }] }, 'input[0].output'],
    [{ input: [{ type: 'custom_tool_call', call_id: 'c', name: 'f', input: 3 }] }, 'input[0].input'],
    [{ input: [{ type: 'reasoning', summary: 'x' }] }, 'input[0].summary'],
    [{ input: [{ type: 'item_reference', id: 'x' }] }, 'input[0].type'],
    [{ input: 'hi', instructions: 3 }, 'instructions'],
    [{ input: 'hi', tools: {} }, 'tools'],
    [{ input: 'hi', tools: [{ type: 'function' }] }, 'tools[0].name'],
    [{ input: 'hi', tools: [{ name: 'f' }] }, 'tools[0].type'],
    [{ input: 'hi', tools: [{ type: 'function', name: 'f', parameters: 'x' }] }, 'tools[0].parameters'],
    [{ input: 'hi', tool_choice: 'sometimes' }, 'tool_choice'],
    [{ input: 'hi', tool_choice: { type: 'function' } }, 'tool_choice.name'],
    [{ input: 'hi', max_output_tokens: 0 }, 'max_output_tokens'],
    [{ input: 'hi', temperature: 'hot' }, 'temperature'],
    [{ input: 'hi', stream: 'yes' }, 'stream'],
    [{ input: 'hi', reasoning: 'high' }, 'reasoning'],
    [{ input: 'hi', text: { format: { type: 'xml' } } }, 'text.format.type'],
    [{ input: 'hi', text: { format: { type: 'json_schema', name: 'x' } } }, 'text.format.schema'],
    [{ input: 'hi', previous_response_id: 'resp_1' }, 'previous_response_id'],
    [{ input: 'hi', background: true }, 'background'],
    [{ input: 'hi', top_logprobs: 3 }, 'top_logprobs'],
    [{ input: 'hi', include: ['message.output_text.logprobs'] }, 'include'],
    [{ input: 'hi', include: 'x' }, 'include'],
  ];
  for (const [body, field] of cases) {
    await expectError({ model: 'm', ...body }, 400, (e) => {
      assert(e.message.includes(field), `${JSON.stringify(body)}: message "${e.message}" does not name ${field}`);
      assert(e.type === 'invalid_request_error' && (e.param === field || field.startsWith(e.param || '\u0000')), `param ${e.param} for ${field}`);
    });
  }
  const words = Array.from({ length: 3100 }, (_, i) => `w${i}`).join(' ');
  const e = await expectError({ input: words }, 400);
  assert(e.code === 'context_length_exceeded' && e.param === 'input', JSON.stringify(e));
  let caught = null;
  try { await client.responses.create({ model: 'm', input: 'hi', previous_response_id: 'resp_x' }); } catch (err) { caught = err; }
  assert(caught instanceof OpenAI.BadRequestError && caught.status === 400, String(caught));
});

await testCase('responses_wrong_method_and_stream_shape', async () => {
  const g = await http(`${server.url}/v1/responses`, { method: 'GET' });
  assert(g.status === 405 && g.json.error, g.text);
  const r = await http(`${server.url}/v1/responses`, { body: { input: 'hi', stream: true, max_output_tokens: 2 } });
  assert(/^text\/event-stream/.test(r.headers.get('content-type')), r.headers.get('content-type'));
  const evs = parseSSE(r.text);
  assert(evs.every((e) => e.event === e.data.type), 'an event line differs from its data type');
});

try { const log = await server.stop(); if (process.env.SHOW_LOG) console.error(log); console.log('ok responses_server_clean_exit'); } catch (e) { console.log(`FAIL responses_server_clean_exit: ${e.message}`); process.exitCode = 1; }
done();
