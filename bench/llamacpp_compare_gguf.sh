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
OUT=bench/out
mkdir -p "$OUT"
NM=tests/node/node_modules
if [ ! -d "$NM/node-llama-cpp" ]; then
    NM=$OUT/llamacpp-npm/node_modules
    if [ ! -d "$NM/node-llama-cpp" ]; then
        mkdir -p "$OUT/llamacpp-npm"
        (cd "$OUT/llamacpp-npm" && npm init -y >/dev/null &&
            npm install --no-audit --no-fund --ignore-scripts node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1 >/dev/null)
    fi
fi
LIB=$NM/@node-llama-cpp/linux-x64/bins/linux-x64
make -j2 build/lazymoe build/liblazymoe.a >/dev/null
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Iinclude -Isrc bench/gguf_from_mlx.c \
    build/liblazymoe.a -ljansson -lpcre2-8 -lpthread -lm -o build/gguf_from_mlx
cc -O2 -std=c11 -Wall -Wextra -Werror bench/bench_prompt_ids.c -o build/bench_prompt_ids
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror bench/llamacpp_quantize.c -ldl -o build/llamacpp_quantize
MODEL=$OUT/llc-synth$LAYERS
Q41=$OUT/llc-synth$LAYERS.gguf
QK=$OUT/llc-synth$LAYERS-Q4_K_M.gguf
Q40=$OUT/llc-synth$LAYERS-Q4_0.gguf
if [ ! -d "$MODEL" ]; then
    need=$((LAYERS * 1600 + 4000))
    free_mb=$(df -Pm "$OUT" | awk 'NR==2{print $4}')
    [ "$free_mb" -gt $((need + 4000)) ] || { echo "not enough disk for $LAYERS layers ($need MB)"; exit 1; }
    build/lazymoe synth --preset qwen3-30b-a3b --layers "$LAYERS" --bits 4 --group-size 32 --out "$MODEL" --quiet
fi
[ -f "$Q41" ] || build/gguf_from_mlx "$MODEL" "$Q41"
[ -f "$QK" ] || build/llamacpp_quantize "$LIB" "$Q41" "$QK" q4_k_m "$THREADS" 2>&1 | grep -E "model size|quant size|WARNING" || true
[ -f "$Q40" ] || build/llamacpp_quantize "$LIB" "$Q41" "$Q40" q4_0 "$THREADS" 2>&1 | grep -E "model size|quant size|WARNING" || true
VOCAB=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$MODEL/config.json")
IDS=$OUT/llc-prompt-$PROMPT.txt
build/bench_prompt_ids "$PROMPT" "$VOCAB" 1 > "$IDS"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$OUT/llamacpp-compare-gguf-$stamp.txt
lm() { build/lazymoe bench "$1" --resident --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --threads "$THREADS" --seed 1 --json; }
{
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM; load $(cut -d' ' -f1-3 /proc/loadavg)"
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
python3 - "$log" <<'EOF'
import json, sys
best, ids = {}, {}
engines = ("lazymoe-q4km", "llamacpp-q4km", "lazymoe-q40", "llamacpp-q40", "lazymoe-mlx")
for line in open(sys.argv[1]):
    for eng in engines:
        if line.startswith(eng + " {"):
            d = json.loads(line[len(eng) + 1:])
            b = best.setdefault(eng, {"prefill": 0.0, "decode": 0.0})
            b["prefill"] = max(b["prefill"], d["prefill_tok_s"])
            b["decode"] = max(b["decode"], d["decode_tok_s"])
            ids[eng] = d["generated_ids"]
print("best of rounds          prefill tok/s   decode tok/s")
for eng in engines:
    print(f"{eng:22s}  {best[eng]['prefill']:13.2f}   {best[eng]['decode']:12.2f}")
lcb = {k: max(best["llamacpp-q4km"][k], best["llamacpp-q40"][k]) for k in ("prefill", "decode")}
print(f"llama.cpp best: prefill {lcb['prefill']:.2f}, decode {lcb['decode']:.2f}")
for eng, same in (("lazymoe-q4km", "llamacpp-q4km"), ("lazymoe-q40", "llamacpp-q40"), ("lazymoe-mlx", None)):
    r = best[eng]
    s = f"ratio {eng}: vs llama.cpp best prefill {r['prefill'] / lcb['prefill']:.2f}x decode {r['decode'] / lcb['decode']:.2f}x"
    if same:
        s += f"; vs llama.cpp on the same file prefill {r['prefill'] / best[same]['prefill']:.2f}x decode {r['decode'] / best[same]['decode']:.2f}x"
    print(s)
for a, b in (("lazymoe-q4km", "llamacpp-q4km"), ("lazymoe-q40", "llamacpp-q40")):
    x, y = ids[a], ids[b]
    same = sum(p == q for p, q in zip(x, y))
    print(f"greedy ids {a} vs {b}: {same}/{len(x)} equal")
EOF
echo "written to $log"
