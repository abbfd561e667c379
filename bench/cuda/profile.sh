#!/usr/bin/env bash
# Where CUDA time goes (issue 18): ncu (Nsight Compute, which the GPU box has; it has no nsys)
# on a synthetic Qwen3-30B-A3B-shaped model. Run on the GPU box from the repository root:
#   bash bench/cuda/profile.sh [LAZYMOE_CLI] [LAYERS]
# MODE=decode (default): every kernel of a graph-replayed decode step, summarized by
#   tools/ncu_summary.py; writes $OUT (default /tmp/profile)/ncu.csv and prints the summary.
# MODE=prefill: the first launches of k_gemm_tc / k_gemm_a8 (and their _grouped) in a 512-token prefill,
#   with the sections that say where the warps wait (WarpStateStats), how full the issue slots
#   are (SchedulerStats), the pipes' use (ComputeWorkloadAnalysis) and the memory traffic;
#   writes $OUT/ncu_prefill.txt and prints its summary lines. Environment settings pass
#   through (LAZYMOE_CUDA_TC_WIDE=1 profiles that variant).
# --cache-control none / --clock-control none: caches and clocks as in a real run (ncu's
# defaults flush the caches before each kernel and lock the base clock, which inflates the
# small kernels).
set -u
CLI=${1:-build/cuda/lazymoe}
LAYERS=${2:-6}
OUT=${OUT:-/tmp/profile}
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
mkdir -p "$OUT"
M=/tmp/profile-q$LAYERS
[ -f "$M/config.json" ] || "$CLI" synth --preset qwen3-30b-a3b --layers "$LAYERS" --out "$M" --quiet || exit 1
if [ "${MODE:-decode}" = prefill ]; then
    "$NCU" --cache-control none --clock-control none --kernel-name regex:'k_gemm_(tc|a8)' --launch-count 4 \
        --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
        --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        "$CLI" bench "$M" --backend cuda --ctx 1024 --prompt-tokens 512 --gen-tokens 1 --no-warm-start \
        >"$OUT/ncu_prefill.txt" 2>"$OUT/ncu_prefill.err" || { tail -5 "$OUT/ncu_prefill.err"; exit 1; }
    grep -E "k_gemm_tc|k_gemm_a8|Duration|Issue Slots Busy|No Eligible|Active Warps Per Scheduler|Eligible Warps|Warp Cycles Per Issued|Stall|Achieved Occupancy|Registers Per|Memory Throughput|L2 Hit|Executed Ipc A" \
        "$OUT/ncu_prefill.txt" | head -120
    exit 0
fi
"$NCU" --csv --page raw --cache-control none --clock-control none --launch-count 330 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed \
    "$CLI" bench "$M" --backend cuda --ctx 512 --prompt-tokens 1 --gen-tokens 3 --no-warm-start >"$OUT/ncu.csv" 2>"$OUT/ncu.err" ||
    { tail -5 "$OUT/ncu.err"; exit 1; }
python3 "$(dirname "$0")/../../tools/ncu_summary.py" "$OUT/ncu.csv"
