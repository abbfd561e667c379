#!/usr/bin/env bash
# Where a CUDA decode step goes, per kernel (issue 18): ncu (Nsight Compute, which the GPU
# box has; it has no nsys) on a graph-replayed decode step of a synthetic Qwen3-30B-A3B-shaped
# model, summarized by tools/ncu_summary.py. Run on the GPU box from the repository root:
#   bash bench/cuda/profile.sh [LAZYMOE_CLI] [LAYERS]
# --cache-control none / --clock-control none: caches and clocks as in a real run (ncu's
# defaults flush the caches before each kernel and lock the base clock, which inflates the
# small kernels). Writes $OUT (default /tmp/profile)/ncu.csv and prints the summary.
set -u
CLI=${1:-build/cuda/lazymoe}
LAYERS=${2:-6}
OUT=${OUT:-/tmp/profile}
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
mkdir -p "$OUT"
M=/tmp/profile-q$LAYERS
[ -f "$M/config.json" ] || "$CLI" synth --preset qwen3-30b-a3b --layers "$LAYERS" --out "$M" --quiet || exit 1
"$NCU" --csv --page raw --cache-control none --clock-control none --launch-count 330 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed \
    "$CLI" bench "$M" --backend cuda --ctx 512 --prompt-tokens 1 --gen-tokens 3 --no-warm-start >"$OUT/ncu.csv" 2>"$OUT/ncu.err" ||
    { tail -5 "$OUT/ncu.err"; exit 1; }
python3 "$(dirname "$0")/../../tools/ncu_summary.py" "$OUT/ncu.csv"
