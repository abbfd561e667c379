#!/usr/bin/env bash
# lazymoe vs llama.cpp on the CPU, same machine, same run, same weights, same prompt:
#   1. a synthetic Qwen3-30B-A3B-shaped model, MLX 4-bit group 32 (`lazymoe synth`);
#   2. the same weights as a GGUF (bench/gguf_from_mlx.c: 4-bit groups map exactly onto
#      Q4_1; routers and norms become F32);
#   3. `lazymoe bench --resident --json` and llama.cpp (the prebuilt CPU libllama of the
#      npm package @node-llama-cpp/linux-x64, driven by bench/llamacpp_bench.mjs) on the
#      same prompt ids (bench/bench_prompt_ids.c reproduces lazymoe bench's random prompt),
#      same prompt/generation lengths and threads, alternating engines, REPS rounds,
#      best of each; prints prefill and decode tok/s, the ratios lazymoe / llama.cpp and
#      whether the greedy continuations agree. lazymoe runs twice per round: with its
#      default flags (int8 activations for quantized weights, the same kind of arithmetic
#      as llama.cpp's Q4_1 x Q8_1 dot products) and with f32 activations (--act-bits 32,
#      the reference numerics).
#
# usage: bench/llamacpp_compare.sh [LAYERS=4] [PROMPT=128] [GEN=32] [THREADS=2] [REPS=3]
# Needs npm (registry access) the first time: node-llama-cpp is installed into
# bench/out/llamacpp-npm (ignored by git). Model and GGUF go to bench/out/ and are kept
# for reruns (delete bench/out/llc-* to free ~2 GB per 4 layers, twice).
set -euo pipefail
cd "$(dirname "$0")/.."
LAYERS=${1:-4}
PROMPT=${2:-128}
GEN=${3:-32}
THREADS=${4:-2}
REPS=${5:-3}
OUT=bench/out
NPM_DIR=$OUT/llamacpp-npm
NODE_LLAMA_VERSION=3.22.1
mkdir -p "$OUT"
make -j"$(nproc)" build/lazymoe build/liblazymoe.a >/dev/null
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Iinclude -Isrc bench/gguf_from_mlx.c \
    build/liblazymoe.a -ljansson -lpcre2-8 -lpthread -lm -o build/gguf_from_mlx
cc -O2 -std=c11 -Wall -Wextra -Werror bench/bench_prompt_ids.c -o build/bench_prompt_ids
if [ ! -d "$NPM_DIR/node_modules/node-llama-cpp" ]; then
    mkdir -p "$NPM_DIR"
    (cd "$NPM_DIR" && npm init -y >/dev/null &&
        npm install --no-audit --no-fund --ignore-scripts \
            "node-llama-cpp@$NODE_LLAMA_VERSION" "@node-llama-cpp/linux-x64@$NODE_LLAMA_VERSION" >/dev/null)
fi
MODEL=$OUT/llc-synth$LAYERS
GGUF=$OUT/llc-synth$LAYERS.gguf
if [ ! -d "$MODEL" ]; then
    need=$((LAYERS * 800 + 2000))
    free_mb=$(df -Pm "$OUT" | awk 'NR==2{print $4}')
    [ "$free_mb" -gt $((need + 4000)) ] || { echo "not enough disk for $LAYERS layers ($need MB)"; exit 1; }
    build/lazymoe synth --preset qwen3-30b-a3b --layers "$LAYERS" --bits 4 --group-size 32 \
        --out "$MODEL" --quiet
fi
[ -f "$GGUF" ] || build/gguf_from_mlx "$MODEL" "$GGUF"
VOCAB=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$MODEL/config.json")
IDS=$OUT/llc-prompt-$PROMPT.txt
build/bench_prompt_ids "$PROMPT" "$VOCAB" 1 > "$IDS"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$OUT/llamacpp-compare-$stamp.txt
{
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM; load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "model: $MODEL ($(du -sh "$MODEL" | cut -f1)), $GGUF ($(du -sh "$GGUF" | cut -f1)); prompt $PROMPT, gen $GEN, threads $THREADS, $REPS rounds"
    for r in $(seq "$REPS"); do
        echo "round $r load $(cut -d' ' -f1 /proc/loadavg)"
        echo -n "lazymoe "
        build/lazymoe bench "$MODEL" --resident --prompt-tokens "$PROMPT" --gen-tokens "$GEN" \
            --threads "$THREADS" --seed 1 --json
        echo -n "lazymoe-f32 "
        build/lazymoe bench "$MODEL" --resident --prompt-tokens "$PROMPT" --gen-tokens "$GEN" \
            --threads "$THREADS" --seed 1 --json --act-bits 32
        echo -n "llamacpp "
        node bench/llamacpp_bench.mjs "$NPM_DIR/node_modules" "$GGUF" "$IDS" "$GEN" "$THREADS" 1
    done
} 2>&1 | tee "$log"
python3 - "$log" <<'EOF'
import json, sys
best = {}
ids = {}
engines = ("lazymoe", "lazymoe-f32", "llamacpp")
for line in open(sys.argv[1]):
    for eng in engines:
        if line.startswith(eng + " {"):
            d = json.loads(line[len(eng) + 1:])
            b = best.setdefault(eng, {"prefill": 0.0, "decode": 0.0})
            b["prefill"] = max(b["prefill"], d["prefill_tok_s"])
            b["decode"] = max(b["decode"], d["decode_tok_s"])
            ids[eng] = d["generated_ids"]
lc = best["llamacpp"]
print(f"best of rounds        prefill tok/s   decode tok/s")
for eng in engines:
    print(f"{eng:20s}  {best[eng]['prefill']:13.2f}   {best[eng]['decode']:12.2f}")
for eng in engines[:2]:
    lm = best[eng]
    print(f"ratio {eng}/llama.cpp: prefill {lm['prefill'] / lc['prefill']:.2f}x, decode {lm['decode'] / lc['decode']:.2f}x")
for eng in engines[:2]:
    a, b = ids[eng], ids["llamacpp"]
    same = sum(x == y for x, y in zip(a, b))
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    print(f"greedy ids {eng} vs llama.cpp: {same}/{len(a)} positions equal; first difference at {first}")
print("lazymoe     ", ids["lazymoe"][:12])
print("lazymoe-f32 ", ids["lazymoe-f32"][:12])
print("llama.cpp   ", ids["llamacpp"][:12])
EOF
echo "written to $log"
