// Shared by the GGUF vocabulary tests (gguf_spm_tokenizer, gguf_bpe_vocab): llama.cpp's
// own test vocabularies (models/ggml-vocab-NAME.gguf with the test strings .inp and the
// reference ids .out its repository records) from the llama.cpp source that
// node-llama-cpp ships (llama/gitRelease.bundle), llama.cpp itself on a vocabulary file,
// and lazymoe's encodings of texts.
import fs from 'node:fs';
import path from 'node:path';
import { ROOT, assert, lazymoe, execFileSync } from './harness.mjs';

export const nodeModules = process.env.LLAMACPP_NODE_MODULES || path.join(ROOT, 'tests', 'node', 'node_modules');

// models/ggml-vocab-NAME.gguf and its .inp / .out, for each name, written under tmp:
// {NAME: {gguf, '.inp', '.out'}} (paths)
export function extractVocabs(names, tmp) {
  const bundle = path.join(nodeModules, 'node-llama-cpp', 'llama', 'gitRelease.bundle');
  assert(fs.existsSync(bundle), `${bundle} is missing (npm install in tests/node)`);
  const repo = path.join(tmp, 'llama.cpp.git');
  execFileSync('git', ['init', '-q', '--bare', repo]);
  execFileSync('git', ['--git-dir', repo, 'fetch', '-q', bundle, 'HEAD']);
  const out = {};
  for (const v of names) {
    out[v] = {};
    for (const ext of ['', '.inp', '.out']) {
      const dst = path.join(tmp, `ggml-vocab-${v}.gguf${ext}`);
      fs.writeFileSync(dst, execFileSync('git', ['--git-dir', repo, 'show', `FETCH_HEAD:models/ggml-vocab-${v}.gguf${ext}`],
                                         { maxBuffer: 1 << 26 }));
      out[v][ext || 'gguf'] = dst;
    }
  }
  return out;
}

let llama = null;
// llama.cpp's model of a vocabulary file (vocabulary only)
export async function loadVocab(file) {
  if (!llama) {
    const { getLlama, LlamaLogLevel } = await import(path.join(nodeModules, 'node-llama-cpp', 'dist', 'index.js'));
    llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error, maxThreads: 2 });
  }
  return llama.loadModel({ modelPath: file, vocabOnly: true });
}

export async function disposeLlama() {
  if (llama) await llama.dispose();
  llama = null;
}

// lazymoe's encodings (no BOS) of texts, through `lazymoe tokenize FILE --jsonl -`
export function lazymoeEncode(file, texts) {
  const input = texts.map((t, i) => JSON.stringify({ id: i, text: t })).join('\n') + '\n';
  const r = lazymoe(['tokenize', file, '--jsonl', '-', '--no-special'], input);
  assert(r.status === 0, `lazymoe tokenize failed: ${r.stderr}`);
  return r.stdout.trim().split('\n').map((l) => {
    const o = JSON.parse(l);
    assert(o.ids, `lazymoe tokenize: ${l}`);
    return o.ids;
  });
}

export const show = (s) => JSON.stringify(s.length > 60 ? s.slice(0, 60) + '...' : s);
