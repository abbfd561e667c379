// llama.cpp side of bench/llamacpp_compare.sh: prefill a given prompt of token ids,
// then decode greedily, through node-llama-cpp (its prebuilt CPU libllama), and print
// one JSON line shaped like `lazymoe bench --json` (prefill_tok_s, decode_tok_s,
// generated_ids).
//
// usage: node bench/llamacpp_bench.mjs NODE_MODULES_DIR MODEL.gguf IDS_FILE GEN THREADS REPS [mmap] [fa] [default-batch]
// IDS_FILE: the prompt's token ids, whitespace-separated. Best of REPS fresh contexts.
// "mmap": map the file as llama.cpp does by default (for runs under a memory cap, where
// the weights cannot all be read into memory) instead of reading it in at load.
// "fa": flash attention on (off otherwise). "default-batch": node-llama-cpp's default
// batch size (min(context, 512) tokens, and n_ubatch = n_batch: its addon sets both) in
// place of the whole prompt in one batch.
// Decode timing matches lazymoe's loop: GEN single-token evaluations after the prefill,
// the first token picked from the prefill's logits.
import path from "node:path";
import fs from "node:fs";

const [nodeModules, modelPath, idsFile, genArg, threadsArg, repsArg, ...flags] = process.argv.slice(2);
const known = ["mmap", "fa", "default-batch"];
if (!repsArg || flags.some((f) => !known.includes(f))) {
    console.error("usage: node llamacpp_bench.mjs NODE_MODULES_DIR MODEL.gguf IDS_FILE GEN THREADS REPS [mmap] [fa] [default-batch]");
    process.exit(2);
}
const { getLlama, LlamaLogLevel } = await import(
    path.join(path.resolve(nodeModules), "node-llama-cpp/dist/index.js"));
const ids = fs.readFileSync(idsFile, "utf8").trim().split(/\s+/).map(Number);
const gen = Number(genArg), threads = Number(threadsArg), reps = Number(repsArg);

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error,
                               maxThreads: threads });
const t0 = performance.now();
// Weights read into memory at load (no mmap), like lazymoe --resident: no page faults
// inside the timed prefill.
const useMmap = flags.includes("mmap");
const flashAttention = flags.includes("fa");
const defaultBatch = flags.includes("default-batch");
const model = await llama.loadModel({ modelPath, gpuLayers: 0, useMmap });
const loadS = (performance.now() - t0) / 1e3;

let best = null, batchSize = 0;
for (let r = 0; r < reps; r++) {
    const context = await model.createContext({
        contextSize: ids.length + gen + 16, threads, flashAttention,
        ...(defaultBatch ? {} : { batchSize: ids.length }) });
    const seq = context.getSequence();
    // Prefill: the whole prompt in one batch; evaluate() yields the argmax of the last
    // prompt position's logits when the batch is done. Decode: each further step
    // evaluates the previous token and yields the next argmax (temperature 0 = greedy).
    const out = [];
    let t = performance.now(), prefillS = 0;
    for await (const tok of seq.evaluate(ids, { temperature: 0 })) {
        if (out.length === 0) {
            prefillS = (performance.now() - t) / 1e3;
            t = performance.now();
        }
        out.push(tok);
        if (out.length > gen) break;
    }
    const decodeS = (performance.now() - t) / 1e3;
    const res = { prefill_tok_s: ids.length / prefillS, decode_tok_s: gen / decodeS,
                  generated_ids: out.slice(0, gen) };
    if (!best || res.decode_tok_s > best.decode_tok_s) best = { ...res, prefill_tok_s: Math.max(res.prefill_tok_s, best ? best.prefill_tok_s : 0) };
    else best.prefill_tok_s = Math.max(best.prefill_tok_s, res.prefill_tok_s);
    batchSize = context.batchSize;
    await context.dispose();
}
console.log(JSON.stringify({ engine: "llama.cpp (node-llama-cpp prebuilt CPU)", model: modelPath, mmap: useMmap,
                             flash_attention: flashAttention, flash_attention_supported: model.flashAttentionSupported,
                             batch_size: batchSize,
                             prompt_tokens: ids.length, gen_tokens: gen, threads, load_s: loadS,
                             ...best }));
await model.dispose();
await llama.dispose();
