// Constrained decoding through `lazymoe serve models/demo-coder` (a Python code model
// that never writes JSON by itself): 20 JSON schemas through OpenAI chat completions
// (response_format json_schema, the official client, streamed and not), the Responses
// API (text.format) and Anthropic messages (output_config.format, the official client), sampled at temperature 0.9
// with several seeds: every answer must parse and validate against its schema (a small
// JSON Schema validator below, independent of the server's converter). tool_choice
// required / named (OpenAI chat and Responses) and any / tool (Anthropic) must always give a call whose
// arguments validate against the tool's schema. Unsupported schema keywords and
// fields are 400s naming them, in each API's error shape.
//
// GRAMMAR_SEEDS=N runs N seeds per schema and API (default 2, to keep the ASan suite short).
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { testCase, assert, done } from './harness.mjs';
import { startServer, http } from './server_harness.mjs';

const SEEDS = Number(process.env.GRAMMAR_SEEDS || 2);
const MAX_TOKENS = 120;
const server = await startServer([]);
const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: server.url, apiKey: 'unused', maxRetries: 0 });

// ---- a small JSON Schema validator (the keywords the schemas below use) ----------------
function typeOf(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v; // string, boolean, object
}
const canon = (v) => JSON.stringify(v, (k, x) => (x && typeof x === 'object' && !Array.isArray(x)
  ? Object.fromEntries(Object.keys(x).sort().map((key) => [key, x[key]])) : x));

// Returns null when v validates, else a reason with its path.
function validate(schema, v, root = schema, path = '$') {
  if (schema === true) return null;
  if (schema === false) return `${path}: schema false`;
  if (schema.$ref) {
    const target = schema.$ref.slice(2).split('/').reduce((o, k) => o && o[k], root);
    if (!target) return `${path}: unresolved ${schema.$ref}`;
    return validate(target, v, root, path);
  }
  if ('const' in schema && canon(schema.const) !== canon(v)) return `${path}: not the const`;
  if (schema.enum && !schema.enum.some((e) => canon(e) === canon(v))) return `${path}: not in enum`;
  if (schema.anyOf && !schema.anyOf.some((s) => validate(s, v, root, path) === null)) return `${path}: no anyOf branch`;
  if (schema.oneOf && schema.oneOf.filter((s) => validate(s, v, root, path) === null).length !== 1)
    return `${path}: not exactly one oneOf branch`;
  if (schema.type) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    const t = typeOf(v);
    if (!types.includes(t) && !(t === 'integer' && types.includes('number')) && !(schema.nullable && v === null))
      return `${path}: ${t} is not ${types.join('|')}`;
  }
  if (typeof v === 'string') {
    const n = [...v].length;
    if (schema.minLength !== undefined && n < schema.minLength) return `${path}: shorter than ${schema.minLength}`;
    if (schema.maxLength !== undefined && n > schema.maxLength) return `${path}: longer than ${schema.maxLength}`;
  }
  if (Array.isArray(v)) {
    if (schema.minItems !== undefined && v.length < schema.minItems) return `${path}: fewer than ${schema.minItems} items`;
    if (schema.maxItems !== undefined && v.length > schema.maxItems) return `${path}: more than ${schema.maxItems} items`;
    if (schema.items) for (let i = 0; i < v.length; i++) {
      const r = validate(schema.items, v[i], root, `${path}[${i}]`);
      if (r) return r;
    }
  }
  if (typeOf(v) === 'object') {
    for (const k of schema.required || []) if (!(k in v)) return `${path}: missing required ${k}`;
    const props = schema.properties || {};
    for (const [k, x] of Object.entries(v)) {
      if (k in props) {
        const r = validate(props[k], x, root, `${path}.${k}`);
        if (r) return r;
      } else if (schema.additionalProperties === false) {
        return `${path}: unexpected property ${k}`;
      } else if (typeof schema.additionalProperties === 'object') {
        const r = validate(schema.additionalProperties, x, root, `${path}.${k}`);
        if (r) return r;
      }
    }
  }
  return null;
}

// ---- the schemas ---------------------------------------------------------------------------
const str = { type: 'string' }, int = { type: 'integer' }, num = { type: 'number' }, bool = { type: 'boolean' };
const obj = (properties, required = Object.keys(properties), extra = {}) => ({ type: 'object', properties, required, ...extra });
const SCHEMAS = {
  person: obj({ name: str, age: int, email: { type: 'string', format: 'email' } }, ['name', 'age']),
  address: obj({ user: obj({ name: str, address: obj({ street: str, city: str, zip: { type: 'string', maxLength: 10 } }) }) }),
  tags: obj({ tags: { type: 'array', items: { enum: ['python', 'c', 'rust', 'go'] }, minItems: 1, maxItems: 3 } }),
  point3: obj({ x: num, y: num, z: int }),
  flags: obj({ flag: bool, nothing: { type: 'null' } }),
  mixed_enum: obj({ status: { enum: ['ok', 'error', 1, null, true] } }),
  consts: obj({ version: { const: '1.0' }, kind: { const: 3 } }),
  any_of: obj({ value: { anyOf: [str, int] } }),
  one_of: obj({
    shape: {
      oneOf: [
        obj({ kind: { const: 'circle' }, r: num }, ['kind', 'r'], { additionalProperties: false }),
        obj({ kind: { const: 'square' }, side: int }, ['kind', 'side'], { additionalProperties: false }),
      ],
    },
  }),
  refs: {
    $defs: { pt: obj({ x: int, y: int }, ['x', 'y'], { additionalProperties: false }) },
    ...obj({ start: { $ref: '#/$defs/pt' }, path: { type: 'array', items: { $ref: '#/$defs/pt' }, maxItems: 3 } }),
  },
  tree: {
    $defs: { node: obj({ value: int, children: { type: 'array', items: { $ref: '#/$defs/node' }, maxItems: 2 } }) },
    $ref: '#/$defs/node',
  },
  nullable: obj({ nick: { type: ['string', 'null'] }, score: { type: ['number', 'null'] }, old: { type: 'integer', nullable: true } }),
  list_top: { type: 'array', items: obj({ id: int, ok: bool }), minItems: 2, maxItems: 4 },
  lengths: obj({ code: { type: 'string', minLength: 3, maxLength: 5 } }),
  optional: obj({ a: str, b: int, c: bool }, []),
  map: { type: 'object', additionalProperties: int },
  deep: obj({ a: obj({ b: obj({ c: obj({ d: str }) }) }) }),
  title: obj({ title: str }, ['title'], { additionalProperties: false }),
  matrix: obj({ m: { type: 'array', items: { type: 'array', items: num, minItems: 2, maxItems: 2 }, minItems: 2, maxItems: 2 } }),
  record: obj({
    id: int, name: str, tags: { type: 'array', items: str, maxItems: 3 },
    meta: obj({ created: num, active: bool, owner: { anyOf: [{ type: 'null' }, obj({ name: str })] } }),
    level: { enum: ['low', 'mid', 'high'] },
  }, ['id', 'name', 'level', 'meta']),
};
const NAMES = Object.keys(SCHEMAS);
assert(NAMES.length === 20, `20 schemas, got ${NAMES.length}`);

function check(name, text, where) {
  let v;
  try { v = JSON.parse(text); } catch (e) { throw new Error(`${where} ${name}: not JSON: ${JSON.stringify(text)}`); }
  const r = validate(SCHEMAS[name], v);
  assert(r === null, `${where} ${name}: ${r}: ${text}`);
}

const ask = (name) => [{ role: 'user', content: `Write a ${name.replace('_', ' ')} as JSON.` }];

await testCase('grammar_openai_json_schema_20_schemas', async () => {
  for (const name of NAMES) for (let seed = 0; seed < SEEDS; seed++) {
    const r = await openai.chat.completions.create({
      model: 'demo', messages: ask(name), max_tokens: MAX_TOKENS, temperature: 0.9, seed,
      response_format: { type: 'json_schema', json_schema: { name, schema: SCHEMAS[name], strict: true } },
    });
    check(name, r.choices[0].message.content, `openai seed ${seed}`);
  }
});

await testCase('grammar_anthropic_output_config_20_schemas', async () => {
  for (const name of NAMES) for (let seed = 0; seed < SEEDS; seed++) {
    const r = await anthropic.messages.create({
      model: 'demo', max_tokens: MAX_TOKENS, temperature: 0.9, messages: ask(name),
      output_config: { format: { type: 'json_schema', schema: SCHEMAS[name] } }, seed: 100 + seed,
    });
    assert(r.content.length === 1 && r.content[0].type === 'text', JSON.stringify(r.content));
    check(name, r.content[0].text, `anthropic seed ${seed}`);
  }
});

await testCase('grammar_responses_text_format_20_schemas', async () => {
  for (const name of NAMES) {
    const r = await openai.responses.create({
      model: 'demo', input: ask(name), max_output_tokens: MAX_TOKENS, temperature: 0.9,
      text: { format: { type: 'json_schema', name, schema: SCHEMAS[name], strict: true } },
    });
    // 'incomplete' when the grammar had to close the JSON on the very last allowed token
    assert(r.status === 'completed' || (r.status === 'incomplete' && r.usage.output_tokens === MAX_TOKENS),
      `${name}: status ${r.status} after ${r.usage.output_tokens} tokens`);
    check(name, r.output_text, 'responses');
  }
  for (const name of ['record', 'tree']) {
    const stream = await openai.responses.create({
      model: 'demo', input: ask(name), max_output_tokens: MAX_TOKENS, temperature: 0.9, stream: true,
      text: { format: { type: 'json_schema', name, schema: SCHEMAS[name] } },
    });
    let text = '';
    for await (const ev of stream) if (ev.type === 'response.output_text.delta') text += ev.delta;
    check(name, text, 'responses stream');
  }
});

await testCase('grammar_openai_streamed_and_json_object', async () => {
  for (const name of ['record', 'tree', 'one_of']) {
    const stream = await openai.chat.completions.create({
      model: 'demo', messages: ask(name), max_tokens: MAX_TOKENS, temperature: 0.9, seed: 7, stream: true,
      response_format: { type: 'json_schema', json_schema: { name, schema: SCHEMAS[name] } },
    });
    let text = '';
    for await (const c of stream) for (const ch of c.choices) text += ch.delta.content || '';
    check(name, text, 'openai stream');
  }
  for (let seed = 0; seed < 2 * SEEDS; seed++) {
    const r = await openai.chat.completions.create({
      model: 'demo', messages: ask('config'), max_tokens: MAX_TOKENS, temperature: 0.9, seed,
      response_format: { type: 'json_object' },
    });
    const v = JSON.parse(r.choices[0].message.content);
    assert(typeOf(v) === 'object', r.choices[0].message.content);
  }
});

// ---- tool calls --------------------------------------------------------------------------------
const WEATHER = {
  name: 'get_weather', description: 'Weather for a city',
  parameters: obj({ city: { type: 'string', maxLength: 40 }, days: int, unit: { enum: ['c', 'f'] } }, ['city', 'days']),
};
const SEARCH = {
  name: 'search', description: 'Search the code',
  parameters: obj({ query: str, limit: int, paths: { type: 'array', items: str, maxItems: 3 }, exact: bool }, ['query', 'paths']),
};
const TOOLS = [WEATHER, SEARCH];
const schemaOf = (name) => TOOLS.find((t) => t.name === name).parameters;

await testCase('grammar_openai_tool_choice_required_and_named', async () => {
  const tools = TOOLS.map((f) => ({ type: 'function', function: f }));
  for (let seed = 0; seed < 3 * SEEDS; seed++) {
    const named = seed % 2 === 1;
    const r = await openai.chat.completions.create({
      model: 'demo', messages: [{ role: 'user', content: 'What is the weather in Paris?' }], tools,
      tool_choice: named ? { type: 'function', function: { name: 'search' } } : 'required',
      max_tokens: 200, temperature: 0.9, seed,
    });
    const c = r.choices[0];
    assert(c.finish_reason === 'tool_calls' && c.message.tool_calls && c.message.tool_calls.length >= 1, JSON.stringify(c));
    for (const tc of c.message.tool_calls) {
      if (named) assert(tc.function.name === 'search', JSON.stringify(tc));
      const v = JSON.parse(tc.function.arguments);
      const why = validate(schemaOf(tc.function.name), v);
      assert(why === null, `seed ${seed}: ${why}: ${tc.function.arguments}`);
    }
  }
});

await testCase('grammar_responses_tool_choice_required_and_named', async () => {
  const tools = TOOLS.map((f) => ({ type: 'function', name: f.name, description: f.description, parameters: f.parameters }));
  for (let k = 0; k < 2; k++) {
    const named = k === 1;
    const r = await openai.responses.create({
      model: 'demo', input: 'What is the weather in Paris?', tools, max_output_tokens: 200, temperature: 0.9,
      tool_choice: named ? { type: 'function', name: 'search' } : 'required',
    });
    const calls = r.output.filter((o) => o.type === 'function_call');
    assert(calls.length >= 1, JSON.stringify(r.output));
    for (const c of calls) {
      if (named) assert(c.name === 'search', JSON.stringify(c));
      const why = validate(schemaOf(c.name), JSON.parse(c.arguments));
      assert(why === null, `${why}: ${c.arguments}`);
    }
  }
});

await testCase('grammar_anthropic_tool_choice_any_and_tool', async () => {
  const tools = TOOLS.map((f) => ({ name: f.name, description: f.description, input_schema: f.parameters }));
  for (let seed = 0; seed < 3 * SEEDS; seed++) {
    const named = seed % 2 === 0;
    const r = await anthropic.messages.create({
      model: 'demo', max_tokens: 200, temperature: 0.9, seed: 50 + seed, tools,
      tool_choice: named ? { type: 'tool', name: 'get_weather' } : { type: 'any' },
      messages: [{ role: 'user', content: 'Find the parser.' }],
    });
    const uses = r.content.filter((b) => b.type === 'tool_use');
    assert(r.stop_reason === 'tool_use' && uses.length >= 1, JSON.stringify(r));
    for (const u of uses) {
      if (named) assert(u.name === 'get_weather', JSON.stringify(u));
      const why = validate(schemaOf(u.name), u.input);
      assert(why === null, `seed ${seed}: ${why}: ${JSON.stringify(u.input)}`);
    }
  }
});

// ---- refusals ----------------------------------------------------------------------------------
await testCase('grammar_unsupported_is_400', async () => {
  const post = (body) => http(`${server.url}/v1/chat/completions`, { body: { messages: ask('x'), max_tokens: 8, ...body } });
  let r = await post({ response_format: { type: 'json_schema', json_schema: { name: 'p', schema: obj({ s: { type: 'string', pattern: '^a' } }) } } });
  assert(r.status === 400 && r.json.error.type === 'invalid_request_error' && /"pattern" is not supported/.test(r.json.error.message) &&
    r.json.error.param === 'response_format.json_schema.schema' && /schema\.properties\.s/.test(r.json.error.message), r.text);
  r = await post({ response_format: { type: 'json_schema', json_schema: { name: 'p', schema: obj({ n: { type: 'integer', minimum: 0 } }) } } });
  assert(r.status === 400 && /"minimum"/.test(r.json.error.message), r.text);
  r = await post({ response_format: { type: 'json_schema', json_schema: { name: 'p' } } });
  assert(r.status === 400 && r.json.error.param === 'response_format.json_schema.schema', r.text);
  r = await post({ response_format: { type: 'yaml' } });
  assert(r.status === 400 && r.json.error.param === 'response_format.type', r.text);
  r = await post({ top_logprobs: 3 });
  assert(r.status === 400 && r.json.error.param === 'top_logprobs' && /requires logprobs/.test(r.json.error.message), r.text);
  r = await post({ logprobs: true, top_logprobs: 21 });
  assert(r.status === 400 && r.json.error.param === 'top_logprobs', r.text);
  r = await post({ logprobs: 'yes' });
  assert(r.status === 400 && r.json.error.param === 'logprobs', r.text);
  r = await post({ tool_choice: 'required' });
  assert(r.status === 400 && r.json.error.param === 'tool_choice' && /needs tools/.test(r.json.error.message), r.text);
  const tools = [{ type: 'function', function: WEATHER }];
  r = await post({ tools, tool_choice: { type: 'function', function: { name: 'nope' } } });
  assert(r.status === 400 && r.json.error.param === 'tool_choice.function.name' && /nope/.test(r.json.error.message), r.text);
  r = await post({ tools, tool_choice: 'required', response_format: { type: 'json_object' } });
  assert(r.status === 400 && /cannot be combined/.test(r.json.error.message), r.text);
  const mixed = { name: 'f', parameters: obj({ v: { type: ['string', 'integer'] } }) };
  r = await post({ tools: [{ type: 'function', function: mixed }], tool_choice: 'required' });
  assert(r.status === 400 && /tools\[0\]\.parameters\.properties\.v/.test(r.json.error.message), r.text);
  const a = await http(`${server.url}/v1/messages`, {
    body: { model: 'x', max_tokens: 8, messages: ask('x'), output_config: { format: { type: 'json_schema', schema: { type: 'object', propertyNames: {} } } } },
  });
  assert(a.status === 400 && a.json.type === 'error' && a.json.error.type === 'invalid_request_error' &&
    /output_config\.format\.schema: "propertyNames" is not supported/.test(a.json.error.message), a.text);
  const b = await http(`${server.url}/v1/messages`, {
    body: { model: 'x', max_tokens: 8, messages: ask('x'), tool_choice: { type: 'tool', name: 'nope' }, tools: [{ name: 'f', input_schema: { type: 'object' } }] },
  });
  assert(b.status === 400 && /nope/.test(b.json.error.message), b.text);
});

await server.stop();
done();
