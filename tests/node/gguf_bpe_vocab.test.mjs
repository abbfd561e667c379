// Byte-level BPE ("gpt2") vocabularies read from GGUF files (src/text/tokenizer_gguf.c:
// tokenizer.ggml.pre names a split regex), checked as gguf_spm_tokenizer.test.mjs checks
// SentencePiece ones: against the token ids llama.cpp's repository records for its test
// strings (models/ggml-vocab-NAME.gguf.out, made with the Hugging Face tokenizers of those
// models) and against llama.cpp itself (node-llama-cpp's prebuilt libllama) on the same
// file. The vocabularies are llama.cpp's own test files, under the pre-tokenizer names
// its converter writes: qwen2, llama-bpe (Llama 3), gpt-2, mpt, and qwen35 (Qwen3.5 / 3.6,
// the qwen35moe family's), taken from the llama.cpp source that node-llama-cpp ships
// (llama/gitRelease.bundle) with git.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, testCase, assert, done, execFileSync } from './harness.mjs';
import { AutoTokenizer } from '@huggingface/transformers';
import { extractVocabs, loadVocab, disposeLlama, lazymoeEncode, show, withPre, ggufValue } from './gguf_vocab.mjs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymoe-gguf-bpe-'));
const VOCABS = ['qwen2', 'llama-bpe', 'gpt-2', 'qwen35', 'mpt'];
let vocabs = null;

await testCase('gguf_bpe_vocab_against_reference_ids_and_llamacpp', async () => {
  vocabs = extractVocabs(VOCABS, tmp);
  const heldout = fs.readFileSync(path.join(ROOT, 'models', 'demo-coder', 'heldout.txt'), 'utf8').slice(0, 3000);
  for (const v of VOCABS) {
    const f = vocabs[v];
    const cases = fs.readFileSync(f['.inp'], 'utf8').split('\n__ggml_vocab_test__\n');
    const expected = fs.readFileSync(f['.out'], 'utf8').split('\n').map((l) => l.trim());
    assert(cases.length >= 30, `${v}: only ${cases.length} test strings`);
    const texts = [...cases, heldout];
    const ours = lazymoeEncode(f.gguf, texts);
    for (let i = 0; i < cases.length; i++) {
      const ref = expected[i] === '' ? [] : expected[i].split(/\s+/).map(Number);
      assert(JSON.stringify(ours[i]) === JSON.stringify(ref),
             `${v}: ids differ from the reference for ${show(texts[i])}: ${ours[i].slice(0, 16)} vs ${ref.slice(0, 16)}`);
    }
    const model = await loadVocab(f.gguf);
    const theirs = Array.from(model.tokenize(heldout, true));
    await model.dispose();
    assert(JSON.stringify(ours[cases.length]) === JSON.stringify(theirs), `${v}: heldout.txt encodes otherwise in llama.cpp`);
    console.log(`# ${v}: ${cases.length} texts equal to llama.cpp's recorded reference ids, heldout.txt to llama.cpp's`);
  }
});

// The names llama.cpp's converter writes for the other families lazymoe runs, with no
// test vocabulary of their own in llama.cpp: glm4 (GLM-4.5 / 4.6: Llama 3's split, no
// ignore_merges), minimax-m2 (gpt-4o's split) and olmo (OLMoE: GPT-2's split). Llama 3's
// vocabulary under each name encodes llama.cpp's test strings and a 3 KB text as
// llama.cpp does on the same file.
await testCase('gguf_bpe_vocab_other_pre_names_as_llamacpp', async () => {
  assert(vocabs, 'the vocabularies were not extracted');
  const f = vocabs['llama-bpe'];
  const cases = fs.readFileSync(f['.inp'], 'utf8').split('\n__ggml_vocab_test__\n');
  const texts = [...cases, fs.readFileSync(path.join(ROOT, 'models', 'demo-coder', 'heldout.txt'), 'utf8').slice(0, 3000)];
  for (const pre of ['glm4', 'minimax-m2', 'olmo']) {
    const file = withPre(f.gguf, pre, path.join(tmp, `vocab-${pre}.gguf`));
    const ours = lazymoeEncode(file, texts);
    const model = await loadVocab(file);
    for (let i = 0; i < texts.length; i++) {
      const theirs = Array.from(model.tokenize(texts[i], true));
      assert(JSON.stringify(ours[i]) === JSON.stringify(theirs),
             `${pre}: ids differ for ${show(texts[i])}: lazymoe ${ours[i].slice(0, 16)} llama.cpp ${theirs.slice(0, 16)}`);
    }
    await model.dispose();
  }
});

// gguf_export names GPT-2's regex as llama.cpp does ("gpt-2"; lazymoe wrote "gpt2", which
// llama.cpp refuses): a tokenizer.json with ByteLevel's own regex (tests/fixtures/textgen)
// written to GGUF loads in llama.cpp and encodes as lazymoe does.
await testCase('gguf_bpe_vocab_gpt2_export_loads_in_llamacpp', async () => {
  const file = path.join(tmp, 'textgen.gguf');
  execFileSync(path.join(ROOT, 'build', 'gguf_export'), [path.join(ROOT, 'tests', 'fixtures', 'textgen'), file]);
  const text = fs.readFileSync(path.join(ROOT, 'models', 'demo-coder', 'heldout.txt'), 'utf8').slice(0, 2000);
  const [ours] = lazymoeEncode(file, [text]);
  const model = await loadVocab(file);
  const theirs = Array.from(model.tokenize(text, true));
  await model.dispose();
  assert(JSON.stringify(ours) === JSON.stringify(theirs), `ids differ: lazymoe ${ours.slice(0, 12)} llama.cpp ${theirs.slice(0, 12)}`);
});

// GLM-4.5's tokenizer.json splits with Llama 3's regex but its BPE model keeps
// ignore_merges false; llama.cpp takes ignore_merges from the pre-tokenizer name (true
// for "llama-bpe", false for "glm4", the name its converter gives GLM-4.5's tokenizer).
// A GLM model directory (the glm4_moe golden weights with tests/fixtures/server_glm45's
// vocabulary and added tokens) gets GLM-4.5's pre-tokenizer and a merge order in which
// " there" is a vocabulary token that the merges do not reach ("e r" merges first:
// Ġth er e), so that the flag shows. gguf_export names it "glm4", and llama.cpp and
// lazymoe encode the exported file as the Hugging Face tokenizer (transformers.js)
// encodes the directory; under "llama-bpe" llama.cpp takes " there" whole. Its end
// ids are generation_config.json's in llama.cpp.
await testCase('gguf_bpe_vocab_glm_export_as_hf_and_llamacpp', async () => {
  const src = path.join(ROOT, 'tests', 'fixtures', 'server_glm45'), dir = path.join(tmp, 'glm45');
  fs.mkdirSync(dir);
  for (const n of ['config.json', 'model.safetensors', 'generation_config.json', 'tokenizer_config.json', 'chat_template.jinja'])
    fs.symlinkSync(fs.realpathSync(path.join(src, n)), path.join(dir, n));
  const tj = JSON.parse(fs.readFileSync(path.join(src, 'tokenizer.json'), 'utf8'));
  tj.pre_tokenizer = {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', behavior: 'Isolated', invert: false, pattern: { Regex:
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" } },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  };
  tj.model.ignore_merges = false;
  const er = tj.model.merges.findIndex((m) => (Array.isArray(m) ? m.join(' ') : m) === 'e r');
  assert(er > 0 && tj.model.vocab['Ġthere'] !== undefined, 'server_glm45 changed: no "e r" merge or no "Ġthere"');
  tj.model.merges.unshift(...tj.model.merges.splice(er, 1));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj));
  const file = path.join(tmp, 'glm45.gguf');
  execFileSync(path.join(ROOT, 'build', 'gguf_export'), [dir, file]);
  assert(ggufValue(file, 'tokenizer.ggml.pre') === 'glm4', `gguf_export wrote pre '${ggufValue(file, 'tokenizer.ggml.pre')}'`);
  const texts = [' there', 'they were there, and there they are.', "There's THE tokenizer THINKING 1234567 at 09:30\n\n",
                 fs.readFileSync(path.join(ROOT, 'models', 'demo-coder', 'heldout.txt'), 'utf8').slice(0, 3000)];
  const hf = await AutoTokenizer.from_pretrained(dir, { local_files_only: true });
  const ref = texts.map((t) => Array.from(hf.encode(t, { add_special_tokens: false })));
  const there = tj.model.vocab['Ġthere'];
  assert(!ref[0].includes(there), `the Hugging Face tokenizer took " there" whole: ${ref[0]}`);
  const ours = lazymoeEncode(file, texts);
  const model = await loadVocab(file);
  for (let i = 0; i < texts.length; i++) {
    const theirs = Array.from(model.tokenize(texts[i], true));
    assert(JSON.stringify(theirs) === JSON.stringify(ref[i]),
           `llama.cpp: ids differ for ${show(texts[i])}: ${theirs.slice(0, 16)} vs Hugging Face ${ref[i].slice(0, 16)}`);
    assert(JSON.stringify(ours[i]) === JSON.stringify(ref[i]),
           `lazymoe: ids differ for ${show(texts[i])}: ${ours[i].slice(0, 16)} vs Hugging Face ${ref[i].slice(0, 16)}`);
  }
  // generation_config.json's ends (<|endoftext|>, <|user|>, <|observation|>) end
  // generation in llama.cpp too: the exporter writes eot and eom as llama.cpp's converter
  const ends = JSON.parse(fs.readFileSync(path.join(src, 'generation_config.json'), 'utf8')).eos_token_id;
  for (const e of ends) assert(model.isEogToken(e), `llama.cpp: token ${e} does not end generation`);
  await model.dispose();
  const bpe = await loadVocab(withPre(file, 'llama-bpe', path.join(tmp, 'glm45-llama-bpe.gguf')));
  const whole = Array.from(bpe.tokenize(texts[0], true));
  await bpe.dispose();
  assert(JSON.stringify(whole) === JSON.stringify([there]), `llama.cpp under llama-bpe: ${whole} (expected [${there}])`);
});

await disposeLlama();
fs.rmSync(tmp, { recursive: true, force: true });
done();
