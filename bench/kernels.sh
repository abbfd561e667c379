#!/usr/bin/env bash
# CPU kernels end to end, on one machine in one run (bench/bench_kernels.c):
#   - memcpy bandwidth, then resident decode of a Qwen3-30B-A3B-shaped 4-bit model,
#     printed as a fraction of the bandwidth bound (memcpy bandwidth / weight bytes
#     touched per token), and prefill of a 512-token prompt as a multiple of decode;
#   - the same model with the portable scalar kernels (LAZYMOE_KERNELS=scalar, a short
#     run) as the baseline the SIMD kernels are measured against.
#
# usage: bench/kernels.sh [LAYERS=24] [MODEL_DIR]
# Without MODEL_DIR a synthetic model of LAYERS layers (~360 MB each) is written to
# bench/out/q30b-LAYERS and deleted afterwards (KEEP=1 keeps it). Output and JSON
# lines go to bench/out/kernels-*.txt as well.
set -euo pipefail
cd "$(dirname "$0")/.."
LAYERS=${1:-24}
MODEL=${2:-}
OUT=bench/out
mkdir -p "$OUT"
make -j"$(nproc)" build/lazymoe build/liblazymoe.a >/dev/null
cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Isrc bench/bench_kernels.c build/liblazymoe.a \
    -ljansson -lpcre2-8 -lpthread -lm -o build/bench_kernels
made=0
if [ -z "$MODEL" ]; then
    MODEL=$OUT/q30b-$LAYERS
    if [ ! -d "$MODEL" ]; then
        need=$((LAYERS * 400 + 1000))
        free_mb=$(df -Pm "$OUT" | awk 'NR==2{print $4}')
        [ "$free_mb" -gt $((need + 4000)) ] || { echo "not enough disk for $LAYERS layers ($need MB)"; exit 1; }
        build/lazymoe synth --preset qwen3-30b-a3b --layers "$LAYERS" --bits 4 --out "$MODEL" --quiet
        made=1
    fi
fi
cleanup() { if [ $made = 1 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$MODEL"; fi; }
trap cleanup EXIT
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$OUT/kernels-$stamp.txt
{
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM; load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "model: $MODEL ($(du -sh "$MODEL" | cut -f1))"
    echo "== SIMD kernels (auto): prompt 512, decode 32, best of 5"
    build/bench_kernels "$MODEL" 512 32 5
    echo "== scalar reference kernels: prompt 64, decode 4, 1 run"
    LAZYMOE_KERNELS=scalar build/bench_kernels "$MODEL" 64 4 1
} 2>&1 | tee "$log"
echo "written to $log"
