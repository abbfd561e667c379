// gpt-oss's harmony format through `lazymoe serve` and the official SDKs: the model's
// output is forced (test-only --allow-forced-output) to harmony text; the server parses
// it while streaming (src/text/harmony.c): analysis -> reasoning / thinking blocks,
// commentary to=functions.NAME -> tool calls with streamed arguments, final -> text;
// the tool result goes back, with the earlier reasoning, through the official gpt-oss
// chat template; reasoning effort (OpenAI reasoning_effort, Anthropic thinking budget)
// reaches the template. Model: tests/fixtures/server_harmony (README there).
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import path from 'node:path';
import { testCase, assert, done, ROOT } from './harness.mjs';
import { startServer, http, eq, WEATHER, TOOLS } from './server_harness.mjs';

const MODEL_DIR = path.join(ROOT, 'tests', 'fixtures', 'server_harmony');
const server = await startServer(['--allow-forced-output'], {}, MODEL_DIR);
const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'x', maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: server.url, apiKey: 'x', maxRetries: 0 });
// What gpt-oss writes after "<|start|>assistant": reasoning, then a call (<|call|> ends
// generation: an end-of-sequence token).
const CALL = '<|channel|>analysis<|message|>The user wants the weather in Paris.<|end|>' +
  '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>' +
  '{"city":"Paris","days":3}<|call|>';
const FINAL = '<|channel|>analysis<|message|>The tool says sunny.<|end|><|start|>assistant<|channel|>final<|message|>' +
  'Sunny, 21 C in Paris.<|return|>';
const ASK = [{ role: 'user', content: 'Weather in Paris?' }];

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

await testCase('harmony_openai_tool_call_not_streamed', async () => {
  const r = await openai.chat.completions.create({ model: 'gpt-oss', messages: ASK, tools: WEATHER, max_tokens: 300, lazymoe_forced_output: CALL });
  const c = r.choices[0];
  assert(c.finish_reason === 'tool_calls', JSON.stringify(c));
  assert(c.message.reasoning_content === 'The user wants the weather in Paris.', JSON.stringify(c.message));
  assert(!c.message.content, `no text expected: ${JSON.stringify(c.message.content)}`);
  const tc = c.message.tool_calls;
  assert(tc.length === 1 && tc[0].type === 'function' && tc[0].function.name === 'get_weather' && /^call_/.test(tc[0].id), JSON.stringify(tc));
  assert(eq(JSON.parse(tc[0].function.arguments), { city: 'Paris', days: 3 }), tc[0].function.arguments);
});

await testCase('harmony_openai_streamed_reasoning_and_arguments', async () => {
  const chunks = await collect(await openai.chat.completions.create({
    model: 'gpt-oss', messages: ASK, tools: WEATHER, max_tokens: 300, stream: true, lazymoe_forced_output: CALL,
  }));
  const reasoning = chunks.map((c) => (c.choices[0] && c.choices[0].delta.reasoning_content) || '').join('');
  assert(reasoning === 'The user wants the weather in Paris.', JSON.stringify(reasoning));
  const deltas = chunks.flatMap((c) => (c.choices[0] && c.choices[0].delta.tool_calls) || []);
  assert(deltas.length >= 2, `arguments not streamed: ${deltas.length} deltas`); // one token at a time
  assert(deltas[0].function.name === 'get_weather' && deltas[0].id, JSON.stringify(deltas[0]));
  const args = deltas.map((d) => d.function.arguments || '').join('');
  assert(eq(JSON.parse(args), { city: 'Paris', days: 3 }), args);
  const last = chunks.filter((c) => c.choices[0] && c.choices[0].finish_reason).pop();
  assert(last.choices[0].finish_reason === 'tool_calls', JSON.stringify(last));
  const text = chunks.map((c) => (c.choices[0] && c.choices[0].delta.content) || '').join('');
  assert(text === '', `harmony markup leaked into the text: ${JSON.stringify(text)}`);
});

await testCase('harmony_openai_tool_result_round_trip', async () => {
  const first = await openai.chat.completions.create({ model: 'gpt-oss', messages: ASK, tools: WEATHER, max_tokens: 300, lazymoe_forced_output: CALL });
  const call = first.choices[0].message.tool_calls[0];
  const withReasoning = [...ASK,
    { role: 'assistant', content: null, reasoning_content: first.choices[0].message.reasoning_content, tool_calls: [call] },
    { role: 'tool', tool_call_id: call.id, content: '{"sky":"sunny","celsius":21}' }];
  const r = await openai.chat.completions.create({ model: 'gpt-oss', messages: withReasoning, tools: WEATHER, max_tokens: 300, lazymoe_forced_output: FINAL });
  const c = r.choices[0];
  assert(c.finish_reason === 'stop' && c.message.content === 'Sunny, 21 C in Paris.', JSON.stringify(c));
  assert(c.message.reasoning_content === 'The tool says sunny.' && !c.message.tool_calls, JSON.stringify(c.message));
  // the template shows the call's reasoning again (no final answer after it yet): the
  // prompt is longer with it than without it
  const without = withReasoning.map((m) => (m.role === 'assistant' ? { ...m, reasoning_content: undefined } : m));
  const r2 = await openai.chat.completions.create({ model: 'gpt-oss', messages: without, tools: WEATHER, max_tokens: 300, lazymoe_forced_output: FINAL });
  assert(r.usage.prompt_tokens > r2.usage.prompt_tokens + 5, `reasoning not sent back: ${r.usage.prompt_tokens} vs ${r2.usage.prompt_tokens}`);
});

await testCase('harmony_reasoning_effort_reaches_template', async () => {
  const tokens = async (effort) => (await openai.chat.completions.create({
    model: 'gpt-oss', messages: ASK, max_tokens: 2, lazymoe_forced_output: '<|channel|>final<|message|>ok', ...(effort ? { reasoning_effort: effort } : {}),
  })).usage.prompt_tokens;
  const low = await tokens('low'), medium = await tokens('medium'), dflt = await tokens(null), high = await tokens('high');
  assert(medium === dflt, `the template's default is medium: ${medium} vs ${dflt}`);
  assert(low !== medium && high !== medium, `effort not rendered: low ${low} medium ${medium} high ${high}`);
  // Anthropic: the thinking budget picks the effort (< 4096 low, < 16384 medium, else high)
  const count = async (budget) => (await anthropic.messages.countTokens({
    model: 'gpt-oss', messages: ASK, thinking: { type: 'enabled', budget_tokens: budget },
  })).input_tokens;
  const aLow = await count(1024), aMed = await count(8000), aHigh = await count(32000);
  const aNone = (await anthropic.messages.countTokens({ model: 'gpt-oss', messages: ASK })).input_tokens;
  assert(aMed === aNone && aLow !== aMed && aHigh !== aMed, `budgets: ${aLow} ${aMed} ${aHigh} (none ${aNone})`);
});

await testCase('harmony_anthropic_thinking_and_tool_use', async () => {
  const m = await anthropic.messages.create({ model: 'gpt-oss', max_tokens: 300, messages: ASK, tools: TOOLS, lazymoe_forced_output: CALL });
  assert(m.stop_reason === 'tool_use', m.stop_reason);
  assert(eq(m.content.map((b) => b.type), ['thinking', 'tool_use']), JSON.stringify(m.content));
  assert(m.content[0].thinking === 'The user wants the weather in Paris.', JSON.stringify(m.content[0]));
  const tu = m.content[1];
  assert(tu.name === 'get_weather' && eq(tu.input, { city: 'Paris', days: 3 }), JSON.stringify(tu));
  // streamed: the SDK's accumulator sees the same blocks, arguments as input_json_delta
  const body = { model: 'gpt-oss', max_tokens: 300, messages: ASK, tools: TOOLS, lazymoe_forced_output: CALL };
  const raw = await http(`${server.url}/v1/messages`, { body: { ...body, stream: true }, headers: { 'x-api-key': 'x' } });
  const json = raw.text.split('\n').filter((l) => l.startsWith('data: ')).map((l) => JSON.parse(l.slice(6)))
    .filter((d) => d.type === 'content_block_delta' && d.delta.type === 'input_json_delta').map((d) => d.delta.partial_json);
  assert(json.length >= 2 && eq(JSON.parse(json.join('')), { city: 'Paris', days: 3 }), json.join('|'));
  const final = await anthropic.messages.stream(body).finalMessage();
  assert(eq(final.content.map((b) => b.type), ['thinking', 'tool_use']) && final.stop_reason === 'tool_use', JSON.stringify(final));
  // the result goes back with the thinking block; the answer is text
  const messages = [...ASK, { role: 'assistant', content: m.content.map((b) => (b.type === 'thinking' ? { ...b, signature: 's' } : b)) },
    { role: 'user', content: [{ type: 'tool_result', tool_use_id: tu.id, content: 'sunny, 21 C' }] }];
  const r = await anthropic.messages.create({ model: 'gpt-oss', max_tokens: 300, messages, tools: TOOLS, lazymoe_forced_output: FINAL });
  assert(r.stop_reason === 'end_turn' && eq(r.content.map((b) => b.type), ['thinking', 'text']), JSON.stringify(r.content));
  assert(r.content[1].text === 'Sunny, 21 C in Paris.' && r.content[0].thinking === 'The tool says sunny.', JSON.stringify(r.content));
  const noThinking = messages.map((x) => (x.role === 'assistant' ? { ...x, content: x.content.filter((b) => b.type !== 'thinking') } : x));
  const withT = (await anthropic.messages.countTokens({ model: 'gpt-oss', messages, tools: TOOLS })).input_tokens;
  const withoutT = (await anthropic.messages.countTokens({ model: 'gpt-oss', messages: noThinking, tools: TOOLS })).input_tokens;
  assert(withT > withoutT + 5, `thinking not sent back: ${withT} vs ${withoutT}`);
});

await server.stop();
done();
