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

// The key-value pairs of a GGUF file's header: {key: value} for strings and numbers
// (arrays are skipped), and where the tensor infos begin.
function readHeader(b, file) {
  assert(b.toString('latin1', 0, 4) === 'GGUF', `${file}: not a GGUF file`);
  const nkv = Number(b.readBigUInt64LE(16));
  const size = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  let off = 24;
  const str = () => { const n = Number(b.readBigUInt64LE(off)); off += 8 + n; return b.toString('utf8', off - n, off); };
  const skip = (t) => {
    if (t === 8) str();
    else if (t === 9) {
      const et = b.readUInt32LE(off), n = Number(b.readBigUInt64LE(off + 4));
      off += 12;
      for (let i = 0; i < n; i++) skip(et);
    } else off += size[t];
  };
  const kvs = [];
  for (let k = 0; k < nkv; k++) {
    const start = off, key = str(), t = b.readUInt32LE(off);
    off += 4;
    const valueAt = off;
    skip(t);
    const value = t === 8 ? b.toString('utf8', valueAt + 8, off) : t === 4 ? b.readUInt32LE(valueAt) : undefined;
    kvs.push({ key, type: t, start, valueAt, end: off, value });
  }
  return { kvs, end: off };
}

// A string or u32 value of a GGUF file's metadata (undefined when absent)
export function ggufValue(file, key) {
  const kv = readHeader(fs.readFileSync(file), file).kvs.find((k) => k.key === key);
  return kv && kv.value;
}

// A copy of a GGUF file at out with tokenizer.ggml.pre set to pre: the same vocabulary
// (and tensors) under another pre-tokenizer name.
export function withPre(file, pre, out) {
  const b = fs.readFileSync(file);
  const { kvs, end } = readHeader(b, file);
  const parts = [b.subarray(0, 24)];
  for (const kv of kvs) {
    if (kv.key === 'tokenizer.ggml.pre') {
      const v = Buffer.from(pre, 'utf8'), len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(v.length));
      parts.push(b.subarray(kv.start, kv.valueAt), len, v);
    } else {
      parts.push(b.subarray(kv.start, kv.end));
    }
  }
  // tensor infos (name, n_dims, ne[n_dims], type, offset into the data section) as they
  // are; the data section starts at the next multiple of the alignment in both files
  const align = kvs.find((k) => k.key === 'general.alignment')?.value ?? 32;
  const pad = (n) => Buffer.alloc((align - (n % align)) % align);
  let off = end;
  for (let t = 0, n = Number(b.readBigUInt64LE(8)); t < n; t++) {
    off += 8 + Number(b.readBigUInt64LE(off));
    off += 4 + 8 * b.readUInt32LE(off) + 12;
  }
  parts.push(b.subarray(end, off));
  const body = Buffer.concat(parts);
  fs.writeFileSync(out, Buffer.concat([body, pad(body.length), b.subarray(off + pad(off).length)]));
  return out;
}
