// SentencePiece ("llama") vocabularies read from GGUF files (src/text/tokenizer_spm.c),
// checked against references nobody here wrote: llama.cpp itself (node-llama-cpp's
// prebuilt libllama: tokenize and detokenize on the same file) and the token ids that
// llama.cpp's repository records for its test strings (models/*.gguf.out, made with the
// Hugging Face tokenizers of those models). The vocabulary files are llama.cpp's own test
// vocabularies (models/ggml-vocab-llama-spm.gguf: LLaMA's 32000 pieces, byte fallback;
// ggml-vocab-phi-3.gguf), taken from the llama.cpp source that node-llama-cpp ships
// (llama/gitRelease.bundle) with git.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, testCase, assert, lazymoe, done } from './harness.mjs';
import { extractVocabs, loadVocab, disposeLlama, lazymoeEncode, show } from './gguf_vocab.mjs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymoe-gguf-spm-'));
const VOCABS = ['llama-spm', 'phi-3'];

function lazymoeDecode(file, idLists, skipSpecial) {
  const input = idLists.map((ids, i) => JSON.stringify({ id: i, ids })).join('\n') + '\n';
  const r = lazymoe(['tokenize', file, '--decode', '--jsonl', '-', ...(skipSpecial ? ['--skip-special'] : [])], input);
  assert(r.status === 0, `lazymoe tokenize --decode failed: ${r.stderr}`);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l).text);
}

// Texts beyond llama.cpp's list: code with indentation and blank lines, characters no
// piece covers (byte fallback: rare CJK, emoji, control characters), runs of spaces,
// tabs and CRLF, leading and trailing spaces, and the special tokens' spellings; and
// texts longer than lazymoe's 4 KB chunks (all of heldout.txt and README.md, CJK with no
// space to cut at, a long run of spaces), which must encode as one piece does.
const heldout = fs.readFileSync(path.join(ROOT, 'models', 'demo-coder', 'heldout.txt'), 'utf8');
const EXTRA = [
  heldout.slice(0, 3000),
  'def f(x):\n\tif x:\n\t\treturn  x\r\n\n\n    pass   ',
  '𠜎𠜱𡿺 🦙🦙 🫠 \u0001\u0002\u007f é ŋ ⍼ ﬁ Ωmega ÄÖÜß',
  '   leading and trailing   ',
  ' ',
  'a',
  '中文测试，日本語のテキスト、한국어 텍스트.',
  '<s>not special here</s> <unk>',
  '[INST] hi [/INST]',
  '0123456789 3.14159 1e-9 0x7F',
  heldout,
  fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8'),
  '中文测试，日本語のテキスト、한국어텍스트。'.repeat(400),
  'x' + ' '.repeat(9000) + 'y' + '\t'.repeat(5000),
];

await testCase('gguf_spm_tokenizer_against_llamacpp_and_reference_ids', async () => {
  const vocabs = extractVocabs(VOCABS, tmp);
  for (const v of VOCABS) {
    const f = vocabs[v];
    const cases = fs.readFileSync(f['.inp'], 'utf8').split('\n__ggml_vocab_test__\n');
    const expected = fs.readFileSync(f['.out'], 'utf8').split('\n').map((l) => l.trim());
    assert(cases.length >= 30, `${v}: only ${cases.length} test strings`);
    const model = await loadVocab(f.gguf);
    const texts = [...cases, ...EXTRA];
    const ours = lazymoeEncode(f.gguf, texts);
    let refChecked = 0;
    for (let i = 0; i < texts.length; i++) {
      // llama.cpp with special tokens parsed, as lazymoe always does
      const theirs = Array.from(model.tokenize(texts[i], true));
      assert(JSON.stringify(ours[i]) === JSON.stringify(theirs),
             `${v}: ids differ for ${show(texts[i])}: lazymoe ${ours[i].slice(0, 16)} llama.cpp ${theirs.slice(0, 16)}`);
      if (i < cases.length) {
        const ref = expected[i] === '' ? [] : expected[i].split(/\s+/).map(Number);
        assert(JSON.stringify(ours[i]) === JSON.stringify(ref),
               `${v}: ids differ from the reference for ${show(texts[i])}: ${ours[i].slice(0, 16)} vs ${ref.slice(0, 16)}`);
        refChecked++;
      }
    }
    // decoding, special tokens kept and skipped, with a BOS in front and without
    const lists = [...ours, ...ours.slice(0, 8).map((ids) => [model.tokens.bos, ...ids])];
    for (const skip of [false, true]) {
      const dec = lazymoeDecode(f.gguf, lists, skip);
      for (let i = 0; i < lists.length; i++) {
        const theirs = model.detokenize(lists[i], !skip);
        assert(dec[i] === theirs, `${v}: decoding differs (skip special ${skip}) for ${show(theirs)}: lazymoe ${show(dec[i])}`);
      }
    }
    console.log(`# ${v}: ${texts.length} texts encoded as llama.cpp does (${refChecked} also equal to ` +
                `llama.cpp's recorded reference ids), ${2 * lists.length} decodings equal`);
    await model.dispose();
  }
});

// A text prompt through the model's path: `lazymoe tokenize` adds llama.cpp's BOS (the
// vocabulary's add_bos_token default) as llama.cpp's tokenize with special tokens does.
await testCase('gguf_spm_tokenizer_bos', async () => {
  const file = path.join(tmp, 'ggml-vocab-llama-spm.gguf');
  const r = lazymoe(['tokenize', file, '--text', 'Hello world']);
  assert(r.status === 0, r.stderr);
  const model = await loadVocab(file);
  const theirs = [model.tokens.bos, ...Array.from(model.tokenize('Hello world', true))];
  await model.dispose();
  assert(JSON.stringify(JSON.parse(r.stdout)) === JSON.stringify(theirs), `lazymoe ${r.stdout.trim()} llama.cpp ${theirs}`);
});

await disposeLlama();
fs.rmSync(tmp, { recursive: true, force: true });
done();
