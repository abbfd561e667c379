#!/usr/bin/env bash
# What bounds the prefill GEMM (issue 18): ncu (Nsight Compute, on the GPU box) on the first
# launches of k_gemm_tc_grouped (the experts' gate+up and down of a 512-token prefill chunk) and
# of k_gemm_tc (q/k/v, o), with the sections that say where the warps wait (WarpStateStats),
# how full the issue slots are (SchedulerStats), the pipes' use (ComputeWorkloadAnalysis) and the
# memory traffic (MemoryWorkloadAnalysis). Run on the GPU box from the repository root:
#   bash bench/cuda/profile_prefill.sh [LAZYMOE_CLI] [LAYERS]
# Environment settings pass through (LAZYMOE_CUDA_TC_WIDE=1 profiles that variant). Writes
# $OUT (default /tmp/profile)/ncu_prefill.txt and prints its summary lines. ~1-2 minutes.
set -u
CLI=${1:-build/cuda/lazymoe}
LAYERS=${2:-2}
OUT=${OUT:-/tmp/profile}
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
mkdir -p "$OUT"
M=/tmp/profile-prefill-q$LAYERS
[ -f "$M/config.json" ] || "$CLI" synth --preset qwen3-30b-a3b --layers "$LAYERS" --out "$M" --quiet || exit 1
"$NCU" --cache-control none --clock-control none --kernel-name regex:'k_gemm_tc' --launch-count 4 \
    --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    "$CLI" bench "$M" --backend cuda --ctx 1024 --prompt-tokens 512 --gen-tokens 1 --no-warm-start \
    >"$OUT/ncu_prefill.txt" 2>"$OUT/ncu_prefill.err" || { tail -5 "$OUT/ncu_prefill.err"; exit 1; }
grep -E "k_gemm_tc|Duration|Issue Slots Busy|No Eligible|Active Warps Per Scheduler|Eligible Warps|Warp Cycles Per Issued|Stall|Achieved Occupancy|Registers Per|Memory Throughput|L2 Hit|Executed Ipc A" \
    "$OUT/ncu_prefill.txt" | head -120
