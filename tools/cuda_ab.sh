#!/usr/bin/env bash
# A change of the CUDA backend against an older build, in one GPU-box call (issue 18):
# the carried test program and the memcheck of its ops (correctness of the new build),
# then, on a synthetic Qwen3-30B-A3B-shaped MLX 4-bit model of LAYERS layers made there,
# `lazymoe bench --backend cuda --prompt-tokens 512 --gen-tokens 64` of the base and the
# new build alternating (ROUNDS pairs: same machine, same run, so their ratio is the
# claim), and, where the box has nsys, a kernel summary of the new build's decode
# (CUDA graphs traced node by node) in kern.csv.
#   OUT=dir NEW=build/cuda-carry/lazymoe BASE=build/cuda-carry/lazymoe-base \
#     TEST=build/cuda-carry/test_cuda LAYERS=6 ROUNDS=2 bash tools/cuda_ab.sh
# (tools/device_session.sh job `cudaab[:LAYERS]`.) summary.txt: one line per run (tok/s,
# first generated ids: the two builds' must agree), the test counts, memcheck's verdict.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/cuda_ab_out}
mkdir -p "$OUT"
NEW=${NEW:-build/cuda-carry/lazymoe}
BASE=${BASE:-build/cuda-carry/lazymoe-base}
TEST=${TEST:-build/cuda-carry/test_cuda}
LAYERS=${LAYERS:-6}
ROUNDS=${ROUNDS:-2}
S=$OUT/summary.txt
XDG_CACHE_HOME=$(mktemp -d) # no popularity history between runs
export LAZYMOE_SOURCE_DIR=$PWD XDG_CACHE_HOME
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >"$S" 2>&1
cat build/cuda-carry/commit.txt >>"$S" 2>/dev/null

M=/tmp/lazymoe-ab-$LAYERS
( [ -f "$M/config.json" ] || timeout 120 "$NEW" synth --preset qwen3-30b-a3b --layers "$LAYERS" --out "$M" --threads 8 \
    --quiet >"$OUT/synth.txt" 2>&1 ) &
synth=$!
if [ -x "$TEST" ]; then
    timeout 200 "$TEST" >"$OUT/test_cuda.txt" 2>&1
    echo "test_cuda exit $?: $(grep -c '^ok ' "$OUT/test_cuda.txt") ok, $(grep -c '^FAIL' "$OUT/test_cuda.txt") FAIL" >>"$S"
    grep '^FAIL' "$OUT/test_cuda.txt" | head -5 >>"$S"
    if command -v compute-sanitizer >/dev/null; then
        CUDA_TEST_OPS_ONLY=1 CUDA_TEST_SANITIZER=1 timeout 120 compute-sanitizer --tool memcheck --leak-check no \
            --error-exitcode 99 "$TEST" >"$OUT/memcheck.txt" 2>&1
        echo "memcheck exit $? ($(tail -1 "$OUT/memcheck.txt"))" >>"$S"
    fi
fi
wait $synth || { echo "synth failed: $(tail -2 "$OUT/synth.txt")" >>"$S"; exit 1; }

run() { # name, CLI, extra bench options
    local name=$1 cli=$2
    shift 2
    timeout 60 "$cli" bench "$M" --backend cuda --ctx 4096 --prompt-tokens 512 --gen-tokens 64 --no-warm-start --json \
        "$@" >"$OUT/$name.json" 2>"$OUT/$name.err"
    python3 - "$OUT/$name.json" "$name" >>"$S" 2>/dev/null <<'EOF' || tail -2 "$OUT/$name.err" >>"$S"
import json, sys
d = json.load(open(sys.argv[1]))
print("%-8s prefill %8.1f  decode %7.2f tok/s  ids %s" % (sys.argv[2], d["prefill_tok_s"], d["decode_tok_s"],
                                                         d["generated_ids"][:6]))
EOF
}
for i in $(seq "$ROUNDS"); do
    run "base$i" "$BASE"
    run "new$i" "$NEW"
done

NSYS=$(command -v nsys)
for n in /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys; do
    [ -z "$NSYS" ] && [ -x "$n" ] && NSYS=$n
done
if [ -n "$NSYS" ]; then
    timeout 60 "$NSYS" profile --cuda-graph-trace=node -o /tmp/lazymoe-ab --force-overwrite true "$NEW" bench "$M" \
        --backend cuda --ctx 4096 --prompt-tokens 16 --gen-tokens 64 --no-warm-start >"$OUT/nsys.txt" 2>&1
    timeout 60 "$NSYS" stats --report cuda_gpu_kern_sum --format csv /tmp/lazymoe-ab.nsys-rep >"$OUT/kern.csv" 2>>"$OUT/nsys.txt"
    echo "nsys: $(wc -l <"$OUT/kern.csv") lines in kern.csv" >>"$S"
else
    echo "nsys: not on this machine" >>"$S"
fi
cat "$S"
