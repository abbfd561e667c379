#!/usr/bin/env bash
# lazymoe vs llama.cpp on llama.cpp's own quantized files (issue 15), CPU, same machine,
# same run, same prompt, DEFAULT flags on both sides:
#   1. a synthetic Qwen3-30B-A3B-shaped model, MLX 4-bit group 32 (`lazymoe synth`), and
#      the same weights as a Q4_1 GGUF (bench/gguf_from_mlx.c, exact), as in
#      bench/llamacpp_compare.sh (same files under bench/out/, shared with it);
#   2. that GGUF requantized by llama.cpp's quantizer (bench/llamacpp_quantize.c, the
#      prebuilt libllama of npm @node-llama-cpp/linux-x64) to Q4_K_M (its mixture: Q4_K
#      with some Q6_K) and to Q4_0 (which llama.cpp repacks for its fastest CPU kernels);
#   3. per round, each a fresh process: `lazymoe bench --resident --json` on the Q4_K_M
#      GGUF, on the Q4_0 GGUF and on the MLX directory; llama.cpp (bench/llamacpp_bench.mjs)
#      on the Q4_K_M and the Q4_0 GGUF; same prompt ids, lengths and threads.
# Prints the best of the rounds per engine and file, and the ratios lazymoe / llama.cpp:
# on the same file, and against llama.cpp's best (the faster of its two files, for
# prefill and decode separately).
#
# usage: bench/llamacpp_compare_gguf.sh [LAYERS=4] [PROMPT=128] [GEN=32] [THREADS=2] [REPS=2]
# Disk: about 2 GB per file for 4 layers (MLX, Q4_1, Q4_K_M, Q4_0); delete bench/out/llc-*
# to free it. node-llama-cpp comes from tests/node (npm ci there) or, failing that, is
# installed into bench/out/llamacpp-npm like bench/llamacpp_compare.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
LAYERS=${1:-4}
PROMPT=${2:-128}
GEN=${3:-32}
THREADS=${4:-2}
REPS=${5:-2}
. bench/llamacpp_gguf_files.sh

stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$OUT/llamacpp-compare-gguf-$stamp.txt
lm() { build/lazymoe bench "$1" --resident --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --threads "$THREADS" --seed 1 --json; }
{
    machine_line
    echo "files: $MODEL ($(du -sh "$MODEL" | cut -f1)), $QK ($(du -sh "$QK" | cut -f1)), $Q40 ($(du -sh "$Q40" | cut -f1)); prompt $PROMPT, gen $GEN, threads $THREADS, $REPS rounds"
    echo "tensor types: Q4_K_M file: $(build/lazymoe info "$QK" 2>/dev/null | sed -n 's/^quantization   //p')"
    for r in $(seq "$REPS"); do
        echo "round $r load $(cut -d' ' -f1 /proc/loadavg)"
        echo -n "lazymoe-q4km "; lm "$QK"
        echo -n "llamacpp-q4km "; node bench/llamacpp_bench.mjs "$NM" "$QK" "$IDS" "$GEN" "$THREADS" 1
        echo -n "lazymoe-q40 "; lm "$Q40"
        echo -n "llamacpp-q40 "; node bench/llamacpp_bench.mjs "$NM" "$Q40" "$IDS" "$GEN" "$THREADS" 1
        echo -n "lazymoe-mlx "; lm "$MODEL"
    done
} 2>&1 | tee "$log"
python3 bench/llamacpp_summary.py "$log"
echo "written to $log"
