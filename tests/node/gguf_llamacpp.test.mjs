// Independent check of the GGUF conventions with llama.cpp itself (node-llama-cpp's
// prebuilt CPU library): files written by build/gguf_export from the demo model and
// the golden fixtures load in llama.cpp; it tokenizes text to the same ids as lazymoe
// and greedy-decodes the same ids from the same prompt (F32 files; Mixtral's permuted
// q/k rows included; and a Q8_0 file of the demo model), and gpt-oss files (arch "gpt-oss",
// MXFP4 experts as ggml blocks) give the same greedy ids and close log-probabilities.
// node-llama-cpp comes from tests/node/package.json, or from $LLAMACPP_NODE_MODULES.
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

// n greedy ids after ids on file from llama.cpp and from lazymoe, which must be the same;
// lazymoe's ids, and llama.cpp's model when keep (the caller disposes of it)
async function sameGreedy(file, ids, n, keep = false) {
  const { model, gen } = await llamaGreedy(file, ids, n);
  if (!keep) await model.dispose();
  const ours = lazymoeGreedy(file, ids, n);
  assert(JSON.stringify(ours) === JSON.stringify(gen), `greedy ids differ: lazymoe ${ours} llama.cpp ${gen}`);
  return { ours, model: keep ? model : null };
}

// transformers' first n greedy ids for a golden fixture (greedy.txt)
function greedyRef(dir, n) {
  return fs.readFileSync(path.join(dir, 'greedy.txt'), 'utf8').trim().split(/[\s,]+/).map(Number).slice(0, n);
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
  await sameGreedy(file, prompt, 16);
});

// A quantized file: Q8_0 blocks (exporter quantizes like ggml's reference); llama.cpp
// computes Q8_0 x Q8_0 dot products, lazymoe its own kernels: the greedy ids agree.
await testCase('gguf_llamacpp_demo_q8_0_greedy', async () => {
  const file = exportGguf(path.join(ROOT, 'models', 'demo-coder'), 'demo_q8_0.gguf', [], 'q8_0');
  const prompt = JSON.parse(lazymoe(['tokenize', file, '--text', 'def fibonacci(n):']).stdout);
  await sameGreedy(file, prompt, 24);
});

for (const f of ['mixtral_f32', 'mixtral_bf16', 'olmoe_f32']) {
  await testCase(`gguf_llamacpp_${f}_greedy`, async () => {
    const dir = path.join(ROOT, 'tests', 'fixtures', 'golden', f);
    const file = exportGguf(dir, `${f}.gguf`, ['--placeholder-vocab']);
    await sameGreedy(file, promptIds(dir), 10);
  });
}

// gpt-oss fixtures written the way llama.cpp's converter writes gpt-oss. llama.cpp always
// rounds YaRN's correction range outwards (ggml_rope_yarn_corr_dims floors and ceils it),
// which is transformers' `truncate: true`; the fixtures, like the released gpt-oss config,
// say false, and there the engines differ by design (0.76 in log-probability on the tiny
// head_dim 16 gpt_oss_f32 model; on gpt_oss_bf16 the first greedy pick is a near tie,
// 0.0007 apart, that the rounding flips). truncatedCopy writes a fixture with truncate
// true (lazymoe keeps it in the GGUF as rope.scaling.yarn_truncate), which both compute alike.
function fixture(name) { return path.join(ROOT, 'tests', 'fixtures', 'golden', name); }
function promptIds(dir) {
  return fs.readFileSync(path.join(dir, 'input_ids.txt'), 'utf8').split('\n')[0].split(',').map(Number);
}
function truncatedCopy(name) {
  const src = fixture(name), dir = path.join(tmp, `${name}_truncated`);
  fs.mkdirSync(dir);
  for (const n of fs.readdirSync(src)) fs.copyFileSync(path.join(src, n), path.join(dir, n));
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  assert(cfg.rope_parameters && cfg.rope_parameters.truncate === false, `${name} changed: expected YaRN truncate false`);
  cfg.rope_parameters.truncate = true;
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
  return dir;
}

// The MXFP4 fixture (released layout; experts become ggml MXFP4 blocks, bf16 elsewhere):
// llama.cpp greedy-decodes the ids lazymoe does, which are transformers' own (greedy.txt).
await testCase('gguf_llamacpp_gpt_oss_mxfp4_greedy', async () => {
  const dir = fixture('gpt_oss_mxfp4');
  const file = exportGguf(dir, 'gpt_oss_mxfp4.gguf', ['--placeholder-vocab'], 'bf16');
  const { ours } = await sameGreedy(file, promptIds(dir), 10);
  const ref = greedyRef(dir, 10);
  assert(JSON.stringify(ours) === JSON.stringify(ref), `greedy ids differ from transformers': ${ours} vs ${ref}`);
});

await testCase('gguf_llamacpp_gpt_oss_bf16_greedy', async () => {
  const dir = truncatedCopy('gpt_oss_bf16');
  const file = exportGguf(dir, 'gpt_oss_bf16.gguf', ['--placeholder-vocab'], 'bf16');
  await sameGreedy(file, promptIds(dir), 10);
});

// The sigmoid-router families, written as llama.cpp's converter writes them: glm4moe
// (leading dense layers, post_attention_norm, q/k/v biases, partial NEOX RoPE, shared
// experts *_shexp, exp_probs_b, expert groups, expert_weights_scale; the qknorm fixture
// adds per-head q/k norms) and minimax-m2 (q/k norms over whole projections,
// exp_probs_b, always-renormalised sigmoid weights). llama.cpp greedy-decodes the ids
// lazymoe does on the same file, and both give transformers' ids (greedy.txt) where
// transformers' own cached and uncached greedy runs agree (the manifest says so; the
// MQA minimax fixture has a near tie there).
for (const f of ['glm4_moe_f32', 'glm4_moe_qknorm_f32', 'minimax_m2_f32', 'minimax_m2_mqa_f32']) {
  await testCase(`gguf_llamacpp_${f}_greedy`, async () => {
    const dir = fixture(f);
    const file = exportGguf(dir, `${f}.gguf`, ['--placeholder-vocab']);
    const { ours } = await sameGreedy(file, promptIds(dir), 10);
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
    if (manifest.greedy_cache_equals_nocache !== false) {
      const ref = greedyRef(dir, 10);
      assert(JSON.stringify(ours) === JSON.stringify(ref), `greedy ids differ from transformers': ${ours} vs ${ref}`);
    }
  });
}

// float32 .npy [rows, V] as written by `lazymoe logits`
function readNpy(file) {
  const b = fs.readFileSync(file);
  const hl = b.readUInt16LE(8), header = b.toString('latin1', 10, 10 + hl);
  assert(header.includes("'descr': '<f4'"), `${file}: not float32`);
  const V = Number(header.match(/'shape': \((\d+), (\d+)\)/)[2]);
  return { V, data: new Float32Array(b.buffer.slice(b.byteOffset + 10 + hl, b.byteOffset + b.length)) };
}

function logSoftmax(row) {
  let m = -Infinity;
  for (const x of row) m = Math.max(m, x);
  let s = 0;
  for (const x of row) s += Math.exp(x - m);
  const lse = m + Math.log(s);
  return row.map((x) => x - lse);
}

// The largest |log-probability difference| at every prompt position between lazymoe's
// logits on file (resident, f32 activations; saved as tmp/TAG_ours.npy) and those of
// llama.cpp's model of the same file
async function worstLogprobDiff(model, file, ids, tag) {
  const npy = path.join(tmp, `${tag}_ours.npy`);
  const r = lazymoe(['logits', file, '--ids', ids.join(','), '--out', npy, '--resident', '--act-bits', '32',
                     '--threads', '2']);
  assert(r.status === 0, `lazymoe logits failed: ${r.stderr}`);
  const ours = readNpy(npy);
  const ctx = await model.createContext({ contextSize: 256, threads: 2 });
  const out = await ctx.getSequence().controlledEvaluate(ids.map((t) => [t, { generateNext: { logits: true } }]));
  let worst = 0;
  for (let i = 0; i < ids.length; i++) {
    const theirs = new Array(ours.V).fill(-Infinity);
    for (const [t, v] of out[i].next.logits) theirs[t] = v;
    const a = logSoftmax(Array.from(ours.data.subarray(i * ours.V, (i + 1) * ours.V))), b = logSoftmax(theirs);
    for (let v = 0; v < ours.V; v++) worst = Math.max(worst, Math.abs(a[v] - b[v]));
  }
  await ctx.dispose();
  return worst;
}

// Log-probabilities at every prompt position, llama.cpp vs lazymoe, on one f32 gpt-oss
// file (gpt_oss_f32: sinks, biases, windows of 4 under 11 tokens, YaRN, truncated as
// above): they agree to within the f16 rounding in llama.cpp's attention (measured 0.010).
await testCase('gguf_llamacpp_gpt_oss_f32_logprobs', async () => {
  const dir = truncatedCopy('gpt_oss_f32');
  const file = exportGguf(dir, 'gpt_oss_f32_truncated.gguf', ['--placeholder-vocab'], 'f32');
  const l = await getLlamaOnce();
  const model = await l.loadModel({ modelPath: file, gpuLayers: 0 });
  const ids = promptIds(dir);
  const worst = await worstLogprobDiff(model, file, ids, 'gpt_oss_f32');
  await model.dispose();
  console.log(`# gpt_oss_f32 (truncated YaRN): max |log-probability difference| lazymoe vs llama.cpp ${worst.toExponential(3)} over ${ids.length} positions`);
  assert(worst < 0.03, `log-probabilities differ by ${worst}`);
});

// The Gated DeltaNet hybrids, written as llama.cpp's converter writes them: qwen3next
// (attn_qkv / attn_gate split from in_proj_qkvz, fused ssm_ba, ssm_a = -exp(A_log), norms
// with the 1 folded in, gated full attention with partial RoPE, shared expert with its
// sigmoid gate) and qwen35moe (the same with ssm_beta / ssm_alpha and the value heads
// reordered to ggml's tiled order; interleaved MRoPE sections), the vision-language
// wrapper's text model too. llama.cpp greedy-decodes the ids lazymoe does, which are
// transformers' (greedy.txt), and its log-probabilities at every prompt position are
// lazymoe's to within the rounding of the f16 KV caches both keep by default (measured
// 1.0e-5 to 9.1e-4; lazymoe alone moves 7.5e-4 between --kv-bits 16 and 32 on
// qwen3_5_moe_text_f32: a key rounded to the other f16 neighbour shows at that size).
for (const f of ['qwen3_next_f32', 'qwen3_5_moe_text_f32', 'qwen3_5_moe_vl_f32']) {
  await testCase(`gguf_llamacpp_${f}_greedy_and_logprobs`, async () => {
    const dir = fixture(f);
    const file = exportGguf(dir, `${f}.gguf`, ['--placeholder-vocab']);
    const ids = promptIds(dir);
    const { ours, model } = await sameGreedy(file, ids, 10, true);
    const ref = greedyRef(dir, 10);
    assert(JSON.stringify(ours) === JSON.stringify(ref), `greedy ids differ from transformers': ${ours} vs ${ref}`);
    const worst = await worstLogprobDiff(model, file, ids, f);
    await model.dispose();
    console.log(`# ${f}: max |log-probability difference| lazymoe vs llama.cpp ${worst.toExponential(3)} over ${ids.length} positions`);
    assert(worst < 3e-3, `log-probabilities differ by ${worst}`);
  });
}

if (llama) await llama.dispose();
fs.rmSync(tmp, { recursive: true, force: true });
done();
