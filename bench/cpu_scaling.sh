#!/usr/bin/env bash
# CPU thread scaling of the resident path (issue 7: "2 cores and 16 cores both scale"):
# bench/bench_kernels.c on one synthetic Qwen3-30B-A3B-shaped 4-bit model at each thread
# count, with f32 activations (--act-bits 32) and int8 activations (8, the default for quantized
# weights). Prints, per
# run, decode tok/s as a fraction of the memcpy bound measured at that thread count,
# prefill tok/s, and the speed-up over 1 thread.
#
# usage: bench/cpu_scaling.sh [LAYERS=8] ["THREADS=1 2 4 8 16"] [PROMPT=256] [MODEL_DIR]
# BIN=dir   use lazymoe and bench_kernels from dir instead of building them (a machine
#           without the build dependencies, e.g. a copied release build).
# Without MODEL_DIR a model of LAYERS layers is written to bench/out/scale-LAYERS and
# deleted afterwards (KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
LAYERS=${1:-8}
THREADS=${2:-"1 2 4 8 16"}
PROMPT=${3:-256}
MODEL=${4:-}
OUT=bench/out
mkdir -p "$OUT"
if [ -n "${BIN:-}" ]; then
    LM=$BIN/lazymoe
    BK=$BIN/bench_kernels
else
    make -j"$(nproc)" build/lazymoe build/liblazymoe.a >/dev/null
    cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Isrc bench/bench_kernels.c build/liblazymoe.a \
        -ljansson -lpcre2-8 -lpthread -lm -o build/bench_kernels
    LM=build/lazymoe
    BK=build/bench_kernels
fi
made=0
if [ -z "$MODEL" ]; then
    MODEL=$OUT/scale-$LAYERS
    if [ ! -d "$MODEL" ]; then
        need=$((LAYERS * 400 + 1000))
        free_mb=$(df -Pm "$OUT" | awk 'NR==2{print $4}')
        [ "$free_mb" -gt $((need + 4000)) ] || { echo "not enough disk for $LAYERS layers ($need MB)"; exit 1; }
        "$LM" synth --preset qwen3-30b-a3b --layers "$LAYERS" --bits 4 --out "$MODEL" --quiet
        made=1
    fi
fi
cleanup() { if [ $made = 1 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$MODEL"; fi; }
trap cleanup EXIT
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$OUT/cpu-scaling-$stamp.txt
{
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM; load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "model: $MODEL ($(du -sh "$MODEL" | cut -f1)); prompt $PROMPT, decode 32, best of 2"
    for t in $THREADS; do
        for ab in 32 8; do
            echo -n "threads $t act $ab "
            "$BK" "$MODEL" "$PROMPT" 32 2 "$t" "$ab" 2>/dev/null | tail -1
        done
    done
} 2>&1 | tee "$log"
python3 - "$log" <<'EOF'
import json, sys
rows = []
for line in open(sys.argv[1]):
    if line.startswith("threads ") and "{" in line:
        rows.append(json.loads(line[line.index("{"):]))
base = {}
print("| threads | activations | kernels | memcpy GB/s | decode tok/s | of bound | decode x1 | prefill tok/s | prefill x1 | prefill/decode |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    key = r["act_bits"]
    if r["threads"] == 1:
        base[key] = r
    b = base.get(key, r)
    print(f"| {r['threads']} | {'int8' if key == 8 else 'f32'} | {r['kernels']} | {r['memcpy_bw'] / 1e9:.1f} | "
          f"{r['decode_tok_s']:.2f} | {100 * r['decode_vs_bound']:.0f}% | {r['decode_tok_s'] / b['decode_tok_s']:.2f}x | "
          f"{r['prefill_tok_s']:.1f} | {r['prefill_tok_s'] / b['prefill_tok_s']:.2f}x | {r['prefill_vs_decode']:.2f}x |")
EOF
echo "written to $log"
