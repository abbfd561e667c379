#!/usr/bin/env bash
# Long-context speed, lazymoe vs llama.cpp (issue 21), CPU, same machine, same run, same
# prompt ids: prefill tok/s over a whole PROMPT-token prompt, and decode tok/s of GEN
# greedy tokens at that context.
#   - the files of bench/llamacpp_compare_gguf.sh (bench/llamacpp_gguf_files.sh: a
#     synthetic Qwen3-30B-A3B-shaped model of LAYERS layers, its exact Q4_1 GGUF, and
#     that requantized by llama.cpp's quantizer to Q4_K_M and Q4_0; the same paths under
#     bench/out/, so either script reuses what the other made);
#   - per round, each a fresh process: `lazymoe bench --resident --json --ctx PROMPT+GEN+16`
#     (default flags otherwise: int8 activations, f16 KV cache) on the Q4_K_M and the
#     Q4_0 GGUF; llama.cpp (bench/llamacpp_bench.mjs, node-llama-cpp 3.22.1's prebuilt
#     CPU libllama) on the same two files with flash attention ON and node-llama-cpp's
#     default batch for a long prompt (512 tokens a batch, n_ubatch = n_batch; f16 KV
#     cache), context PROMPT+GEN+16, weights read in at load (no mmap), like lazymoe
#     --resident.
# Prints the best of the rounds per engine and file and the ratios lazymoe / llama.cpp
# (against llama.cpp's best file, prefill and decode apart, and on the same file).
#
# usage: bench/long_context_compare.sh [LAYERS=24] [PROMPT=32768] [GEN=16] [THREADS=2] [REPS=1]
# At the defaults: about 42 GB of disk for the four files (checked before making them;
# delete bench/out/llc-synth24* to free it), ~10 GB of memory per run, and well over
# half an hour of a quiet 2-core machine. Validate at LAYERS=2 PROMPT=4096 first.
# FILES="q40" (or "q4km") runs both engines on that file only, and makes only it: half the
# time and disk (default "q4km q40").
set -euo pipefail
cd "$(dirname "$0")/.."
LAYERS=${1:-24}
PROMPT=${2:-32768}
GEN=${3:-16}
THREADS=${4:-2}
REPS=${5:-1}
. bench/llamacpp_gguf_files.sh

CTX=$((PROMPT + GEN + 16))
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$OUT/long-context-compare-$stamp.txt
lm() {
    build/lazymoe bench "$1" --resident --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --threads "$THREADS" \
        --seed 1 --ctx "$CTX" --json
}
llc() { node bench/llamacpp_bench.mjs "$NM" "$1" "$IDS" "$GEN" "$THREADS" 1 fa default-batch; }
{
    machine_line
    for f in $QK $Q40; do [ -f "$f" ] && echo "file: $f ($(du -sh "$f" | cut -f1))"; done
    echo "files run: $FILES; $LAYERS layers, prompt $PROMPT, gen $GEN, context $CTX, threads $THREADS, $REPS rounds"
    echo "lazymoe: bench --resident --ctx $CTX (default flags); llama.cpp: flash attention on, node-llama-cpp's default batch"
    for r in $(seq "$REPS"); do
        echo "round $r load $(cut -d' ' -f1 /proc/loadavg)"
        for f in $FILES; do
            path=$QK; [ "$f" = q40 ] && path=$Q40
            echo -n "lazymoe-$f "; lm "$path"
            echo -n "llamacpp-$f "; llc "$path"
        done
    done
    echo "end load $(cut -d' ' -f1-3 /proc/loadavg)"
} 2>&1 | tee "$log"
python3 bench/llamacpp_summary.py "$log"
echo "written to $log"
