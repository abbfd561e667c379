// Independent check of the GGUF conventions with llama.cpp itself (node-llama-cpp's
// prebuilt CPU library): files written by build/gguf_export from the demo model and
// the golden fixtures load in llama.cpp; it tokenizes text to the same ids as lazymoe
// and greedy-decodes the same ids from the same prompt (F32 files; Mixtral's permuted
// q/k rows included; and a Q8_0 file of the demo model). node-llama-cpp comes from tests/node/package.json, or from
// $LLAMACPP_NODE_MODULES.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, testCase, assert, lazymoe, done, execFileSync } from './harness.mjs';

const nodeModules = process.env.LLAMACPP_NODE_MODULES || path.join(ROOT, 'tests', 'node', 'node_modules');
const exporter = path.join(ROOT, 'build', 'gguf_export');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymoe-gguf-llamacpp-'));

let llama = null;
async function getLlamaOnce() {
  if (llama) return llama;
  const entry = path.join(nodeModules, 'node-llama-cpp', 'dist', 'index.js');
  assert(fs.existsSync(entry), `node-llama-cpp is not installed in ${nodeModules} (npm install in tests/node)`);
  const { getLlama, LlamaLogLevel } = await import(entry);
  llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error, maxThreads: 2 });
  return llama;
}

function exportGguf(dir, name, extra = [], type = 'f32') {
  const out = path.join(tmp, name);
  execFileSync(exporter, [dir, out, type, ...extra]);
  return out;
}

async function llamaGreedy(file, ids, n) {
  const l = await getLlamaOnce();
  const model = await l.loadModel({ modelPath: file, gpuLayers: 0 });
  const ctx = await model.createContext({ contextSize: 256, threads: 2 });
  const out = [];
  for await (const t of ctx.getSequence().evaluate(ids, { temperature: 0 })) {
    out.push(t);
    if (out.length >= n) break;
  }
  await ctx.dispose();
  return { model, gen: out };
}

function lazymoeGreedy(file, ids, n) {
  const r = lazymoe(['run', file, '--ids', ids.join(','), '-n', String(n), '--temp', '0', '--print-ids',
                     '--ignore-eos', '--resident', '--threads', '2']);
  assert(r.status === 0, `lazymoe run failed: ${r.stderr}`);
  return r.stdout.trim().split(/\s+/).map(Number);
}

await testCase('gguf_llamacpp_demo_tokenize_and_greedy', async () => {
  const file = exportGguf(path.join(ROOT, 'models', 'demo-coder'), 'demo.gguf');
  const texts = ['def fibonacci(n):\n    """Return the n-th number."""\n', '  x = [1, 22, 333]  # café 🙂\r\n\tpass',
                 'class Foo(Bar):\n\n    def __init__(self):'];
  const { model } = await llamaGreedy(file, [1], 1);
  const heldout = fs.readFileSync(path.join(ROOT, 'models', 'demo-coder', 'heldout.txt'), 'utf8').slice(0, 4000);
  for (const text of [...texts, heldout]) {
    const ours = lazymoe(['tokenize', file, '--text', text]);
    assert(ours.status === 0, ours.stderr);
    const theirs = Array.from(model.tokenize(text, false));
    assert(JSON.stringify(JSON.parse(ours.stdout)) === JSON.stringify(theirs),
           `ids differ for ${JSON.stringify(text.slice(0, 40))}: lazymoe ${ours.stdout.slice(0, 80)} llama.cpp ${theirs.slice(0, 12)}`);
  }
  await model.dispose();
  const prompt = JSON.parse(lazymoe(['tokenize', file, '--text', texts[0]]).stdout);
  const { model: m2, gen } = await llamaGreedy(file, prompt, 16);
  await m2.dispose();
  const ours = lazymoeGreedy(file, prompt, 16);
  assert(JSON.stringify(ours) === JSON.stringify(gen), `greedy ids differ: lazymoe ${ours} llama.cpp ${gen}`);
});

// A quantized file: Q8_0 blocks (exporter quantizes like ggml's reference); llama.cpp
// computes Q8_0 x Q8_0 dot products, lazymoe its own kernels: the greedy ids agree.
await testCase('gguf_llamacpp_demo_q8_0_greedy', async () => {
  const file = exportGguf(path.join(ROOT, 'models', 'demo-coder'), 'demo_q8_0.gguf', [], 'q8_0');
  const prompt = JSON.parse(lazymoe(['tokenize', file, '--text', 'def fibonacci(n):']).stdout);
  const { model, gen } = await llamaGreedy(file, prompt, 24);
  await model.dispose();
  const ours = lazymoeGreedy(file, prompt, 24);
  assert(JSON.stringify(ours) === JSON.stringify(gen), `greedy ids differ: lazymoe ${ours} llama.cpp ${gen}`);
});

for (const f of ['mixtral_f32', 'mixtral_bf16', 'olmoe_f32']) {
  await testCase(`gguf_llamacpp_${f}_greedy`, async () => {
    const dir = path.join(ROOT, 'tests', 'fixtures', 'golden', f);
    const file = exportGguf(dir, `${f}.gguf`, ['--placeholder-vocab']);
    const ids = fs.readFileSync(path.join(dir, 'input_ids.txt'), 'utf8').split('\n')[0].split(',').map(Number);
    const { model, gen } = await llamaGreedy(file, ids, 10);
    await model.dispose();
    const ours = lazymoeGreedy(file, ids, 10);
    assert(JSON.stringify(ours) === JSON.stringify(gen), `greedy ids differ: lazymoe ${ours} llama.cpp ${gen}`);
  });
}

if (llama) await llama.dispose();
fs.rmSync(tmp, { recursive: true, force: true });
done();
