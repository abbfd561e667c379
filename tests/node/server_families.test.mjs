// GLM-4.5/4.6 (glm4_moe) and MiniMax-M2 tool calls and reasoning through `lazymoe serve`
// and the official OpenAI and Anthropic SDKs. The model's output is forced (test-only
// --allow-forced-output) to what each family writes: GLM's
// <think>..</think> then <tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>..</tool_call>,
// MiniMax-M2's reasoning (its prompt opens <think>) then
// <minimax:tool_call><invoke name=..><parameter name=..>..</parameter></invoke></minimax:tool_call>.
// The server parses them while streaming (src/text/toolcall.c) into reasoning, text and
// tool calls with typed arguments; the tool result goes back with the call and its
// reasoning through the family's published chat template, and the prompt it builds has
// exactly as many tokens as the template rendered by Python jinja2 gives
// (tests/fixtures/server_*/expected_prompts.json, tools/make_server_family_fixtures.py).
// Models: tests/fixtures/server_glm (GLM-4.6's template), server_glm45 (GLM-4.5's),
// server_minimax (random weights of the transformers goldens, the published templates,
// tokenizers that write the markup).
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import fs from 'node:fs';
import path from 'node:path';
import { testCase, assert, done, ROOT, lazymoe } from './harness.mjs';
import { startServer, http, parseSSE, eq, WEATHER, TOOLS } from './server_harness.mjs';

const ASK = [{ role: 'user', content: 'Weather in Paris?' }];
const REASONING = 'The user wants the weather in Paris.';
const ARGS = { city: 'Paris', days: 3 };
const RESULT = '{"sky":"sunny","celsius":21}';

const GLM = {
  // GLM-4.5/4.6 start a turn with a newline, think, then write the call; <|observation|>
  // (an end-of-turn token) hands over to the tool.
  call: `\n<think>${REASONING}</think>\nLet me check.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n` +
    '<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call><|observation|>',
  final: '\n<think>The tool says sunny.</think>\nSunny, 21 C in Paris.<|user|>',
  // a tool without parameters, as the template renders such a call
  noArgCall: '\n<think></think>\n<tool_call>get_time\n</tool_call><|observation|>',
};
const FAMILIES = {
  glm: { dir: 'server_glm', ...GLM }, // GLM-4.6's template
  glm45: { dir: 'server_glm45', ...GLM }, // GLM-4.5's: tc.arguments.items() without `or {}`
  minimax: {
    dir: 'server_minimax',
    // the template opened <think>: the output starts inside the reasoning
    call: `${REASONING}\n</think>\n\nLet me check.\n<minimax:tool_call>\n<invoke name="get_weather">\n` +
      '<parameter name="city">Paris</parameter>\n<parameter name="days">3</parameter>\n</invoke>\n</minimax:tool_call>[e~[',
    final: 'The tool says sunny.\n</think>\n\nSunny, 21 C in Paris.[e~[',
    noArgCall: 'Need the clock.\n</think>\n\n<minimax:tool_call>\n<invoke name="get_time">\n</invoke>\n</minimax:tool_call>[e~[',
  },
};
const CLOCK = [{ type: 'function', function: { name: 'get_time', description: 'Current time', parameters: { type: 'object', properties: {} } } }];

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

for (const [fam, F] of Object.entries(FAMILIES)) {
  const dir = path.join(ROOT, 'tests', 'fixtures', F.dir);
  const expected = JSON.parse(fs.readFileSync(path.join(dir, 'expected_prompts.json'), 'utf8'));
  // The token count of a prompt Python jinja2 rendered, with this model's tokenizer.
  const tokens = (id) => {
    const r = lazymoe(['tokenize', dir, '--text', expected[id]]);
    assert(r.status === 0, `tokenize: ${r.stderr}`);
    return JSON.parse(r.stdout).length;
  };
  const server = await startServer(['--allow-forced-output'], {}, dir);
  const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'x', maxRetries: 0 });
  const anthropic = new Anthropic({ baseURL: server.url, apiKey: 'x', maxRetries: 0 });
  const chat = (body) => openai.chat.completions.create({ model: fam, max_tokens: 400, ...body });

  await testCase(`${fam}_openai_tool_call_not_streamed`, async () => {
    const r = await chat({ messages: ASK, tools: WEATHER, lazymoe_forced_output: F.call });
    const c = r.choices[0];
    assert(c.finish_reason === 'tool_calls', JSON.stringify(c));
    assert(c.message.reasoning_content === REASONING, JSON.stringify(c.message));
    assert(c.message.content === 'Let me check.', JSON.stringify(c.message.content));
    const tc = c.message.tool_calls;
    assert(tc.length === 1 && tc[0].type === 'function' && tc[0].function.name === 'get_weather' && /^call_/.test(tc[0].id), JSON.stringify(tc));
    // "days" is an integer in the schema: the XML value 3 becomes the JSON number 3
    assert(eq(JSON.parse(tc[0].function.arguments), ARGS), tc[0].function.arguments);
  });

  await testCase(`${fam}_openai_streamed`, async () => {
    const chunks = await collect(await chat({ messages: ASK, tools: WEATHER, stream: true, lazymoe_forced_output: F.call }));
    const pick = (f) => chunks.map((c) => (c.choices[0] && f(c.choices[0].delta)) || '').join('');
    assert(pick((d) => d.reasoning_content) === REASONING, JSON.stringify(pick((d) => d.reasoning_content)));
    const text = pick((d) => d.content);
    assert(text === 'Let me check.', `markup leaked into the text or text lost: ${JSON.stringify(text)}`);
    const deltas = chunks.flatMap((c) => (c.choices[0] && c.choices[0].delta.tool_calls) || []);
    assert(deltas.length >= 2, `arguments not streamed: ${deltas.length} deltas`);
    assert(deltas[0].function.name === 'get_weather' && deltas[0].id && deltas.every((d) => d.index === 0), JSON.stringify(deltas));
    assert(eq(JSON.parse(deltas.map((d) => d.function.arguments || '').join('')), ARGS), JSON.stringify(deltas));
    const last = chunks.filter((c) => c.choices[0] && c.choices[0].finish_reason).pop();
    assert(last.choices[0].finish_reason === 'tool_calls', JSON.stringify(last));
  });

  await testCase(`${fam}_openai_tool_result_prompt_matches_jinja2`, async () => {
    const first = await chat({ messages: ASK, tools: WEATHER, lazymoe_forced_output: F.call });
    const m = first.choices[0].message;
    const call = m.tool_calls[0];
    const back = [...ASK, { role: 'assistant', content: m.content, reasoning_content: m.reasoning_content, tool_calls: [call] },
      { role: 'tool', tool_call_id: call.id, content: RESULT }];
    const r = await chat({ messages: back, tools: WEATHER, lazymoe_forced_output: F.final });
    const c = r.choices[0];
    assert(c.finish_reason === 'stop' && c.message.content === 'Sunny, 21 C in Paris.', JSON.stringify(c));
    assert(c.message.reasoning_content === 'The tool says sunny.' && !c.message.tool_calls, JSON.stringify(c.message));
    const want = tokens('tool_round_trip');
    assert(r.usage.prompt_tokens === want, `prompt ${r.usage.prompt_tokens} tokens, jinja2's render ${want}`);
    // without the reasoning the template renders a shorter prompt, again as jinja2 does
    const noR = back.map((x) => (x.role === 'assistant' ? { ...x, reasoning_content: undefined } : x));
    const r2 = await chat({ messages: noR, tools: WEATHER, max_tokens: 2, lazymoe_forced_output: 'ok' });
    const want2 = tokens('tool_round_trip_no_reasoning');
    assert(r2.usage.prompt_tokens === want2 && want2 < want, `no reasoning: ${r2.usage.prompt_tokens} vs ${want2} (with: ${want})`);
  });

  await testCase(`${fam}_reasoning_before_the_last_user_turn_is_dropped`, async () => {
    // the client sends reasoning back as a field, or (MiniMax's documented way) as a
    // <think> block inside the content; both templates drop it before the last user turn
    const later = (assistant) => [...ASK, assistant, { role: 'user', content: 'Thanks. And Oslo?' }];
    const count = async (assistant) => (await chat({ messages: later(assistant), max_tokens: 2, lazymoe_forced_output: 'ok' })).usage.prompt_tokens;
    const withField = await count({ role: 'assistant', content: 'Sunny.', reasoning_content: 'Old thoughts.' });
    const inContent = await count({ role: 'assistant', content: '<think>\nOld thoughts.\n</think>\n\nSunny.' });
    const plain = await count({ role: 'assistant', content: 'Sunny.' });
    const want = tokens('later_turn');
    assert(want === tokens('later_turn_no_reasoning'), 'jinja2 keeps old reasoning: fixture out of date');
    assert(withField === want && inContent === want && plain === want, `${withField} ${inContent} ${plain}, jinja2 ${want}`);
  });

  await testCase(`${fam}_tool_without_arguments`, async () => {
    // the call parses to arguments {} (OpenAI: the string "{}"); sent back, it renders as
    // jinja2 renders a call whose arguments are {}: GLM-4.5's template would raise on null
    const ask = [{ role: 'user', content: 'Time?' }];
    const first = await chat({ messages: ask, tools: CLOCK, lazymoe_forced_output: F.noArgCall });
    const c = first.choices[0];
    assert(c.finish_reason === 'tool_calls' && c.message.tool_calls.length === 1, JSON.stringify(c));
    const tc = c.message.tool_calls[0];
    assert(tc.function.name === 'get_time' && eq(JSON.parse(tc.function.arguments), {}), JSON.stringify(tc));
    const back = [...ask, { role: 'assistant', content: '', tool_calls: [tc] }, { role: 'tool', tool_call_id: tc.id, content: '12:00' }];
    const r = await chat({ messages: back, tools: CLOCK, max_tokens: 2, lazymoe_forced_output: 'ok' });
    const want = tokens('no_argument_round_trip');
    assert(r.usage.prompt_tokens === want, `prompt ${r.usage.prompt_tokens} tokens, jinja2's render ${want}`);
    // the same call as OpenAI clients may send it back: arguments "" (no JSON at all)
    const empty = back.map((x) => (x.tool_calls ? { ...x, tool_calls: [{ ...tc, function: { ...tc.function, arguments: '' } }] } : x));
    const r2 = await chat({ messages: empty, tools: CLOCK, max_tokens: 2, lazymoe_forced_output: 'ok' });
    assert(r2.usage.prompt_tokens === want, `arguments "": prompt ${r2.usage.prompt_tokens} tokens, jinja2's render ${want}`);
  });

  await testCase(`${fam}_anthropic_thinking_and_tool_use`, async () => {
    const body = { model: fam, max_tokens: 400, messages: ASK, tools: TOOLS, lazymoe_forced_output: F.call };
    const m = await anthropic.messages.create(body);
    assert(m.stop_reason === 'tool_use', m.stop_reason);
    assert(eq(m.content.map((b) => b.type), ['thinking', 'text', 'tool_use']), JSON.stringify(m.content));
    assert(m.content[0].thinking === REASONING && m.content[1].text === 'Let me check.', JSON.stringify(m.content));
    const tu = m.content[2];
    assert(tu.name === 'get_weather' && eq(tu.input, ARGS) && /^toolu_|^call_/.test(tu.id), JSON.stringify(tu));
    // streamed: arguments arrive as input_json_delta pieces; the SDK assembles the same blocks
    const raw = await http(`${server.url}/v1/messages`, { body: { ...body, stream: true }, headers: { 'x-api-key': 'x' } });
    const events = parseSSE(raw.text).map((e) => e.data);
    const json = events.filter((d) => d.type === 'content_block_delta' && d.delta.type === 'input_json_delta').map((d) => d.delta.partial_json);
    assert(json.length >= 2 && eq(JSON.parse(json.join('')), ARGS), json.join('|'));
    const thinking = events.filter((d) => d.type === 'content_block_delta' && d.delta.type === 'thinking_delta').map((d) => d.delta.thinking).join('');
    assert(thinking === REASONING, JSON.stringify(thinking));
    const final = await anthropic.messages.stream(body).finalMessage();
    assert(eq(final.content.map((b) => b.type), ['thinking', 'text', 'tool_use']) && final.stop_reason === 'tool_use', JSON.stringify(final));
    assert(eq(final.content[2].input, ARGS), JSON.stringify(final.content[2]));
    // the result goes back with the thinking block (signature is the client's echo); the
    // prompt is the one jinja2 renders, as for the OpenAI request
    const messages = [...ASK, { role: 'assistant', content: m.content.map((b) => (b.type === 'thinking' ? { ...b, signature: 's' } : b)) },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: tu.id, content: RESULT }] }];
    const r = await anthropic.messages.create({ model: fam, max_tokens: 400, messages, tools: TOOLS, lazymoe_forced_output: F.final });
    assert(r.stop_reason === 'end_turn' && eq(r.content.map((b) => b.type), ['thinking', 'text']), JSON.stringify(r.content));
    assert(r.content[0].thinking === 'The tool says sunny.' && r.content[1].text === 'Sunny, 21 C in Paris.', JSON.stringify(r.content));
    // input_tokens leaves out the prefix the server had cached from the first request
    const u = r.usage, total = u.input_tokens + (u.cache_read_input_tokens || 0) + (u.cache_creation_input_tokens || 0);
    const counted = (await anthropic.messages.countTokens({ model: fam, messages, tools: TOOLS })).input_tokens;
    assert(total === tokens('tool_round_trip') && counted === total, `usage ${JSON.stringify(u)}, counted ${counted}, jinja2 ${tokens('tool_round_trip')}`);
    const noThinking = messages.map((x) => (x.role === 'assistant' ? { ...x, content: x.content.filter((b) => b.type !== 'thinking') } : x));
    const without = (await anthropic.messages.countTokens({ model: fam, messages: noThinking, tools: TOOLS })).input_tokens;
    assert(without === tokens('tool_round_trip_no_reasoning'), `without thinking ${without}`);
  });

  await server.stop();
}
done();
