#!/bin/bash
# Where a step's missed experts go, in one call on the GPU box (issue 18): GPU memory for 1/SHARE of
# the experts (default 4: 25%), the rest resident in host RAM, on LAYERS (24) layers of Qwen3-30B-A3B
# shapes (MLX 4-bit g64). Under each of VARIANTS (bench arguments --flag=value joined by +, "none" for
# none; default "none --cpu-experts=auto --cpu-experts=4": every miss uploaded, each step's misses
# split between the upload and the CPU by measured costs (experts/miss_split.h), every decode miss on
# the CPU), alternating in ROUNDS (default "a b"): decode of 128 tokens from one token, then a
# 512-token prefill, each bench with --repeat REPEAT (3). test_cuda first (TESTS=0 skips it).
# Everything lands in $OUT/tier_summary.txt (one line a run: prefill, decode, repeats, the GPU tier's
# counters, the split's costs) and $OUT/tier_all.txt (apart from ab_prefill.sh's files: both fit
# one call, ab_prefill.sh first, then TESTS=0 this, on the model it made). WARM=1 adds the GPU
# tier's warm start (below).
# Here: make CUDA=1 cuda-carry, XZ_OPT=-9e tar cJf build/device-carry.tar.xz
# build/carry90/{lazymoe,test_cuda,libs,commit.txt}, carry it with this script. ~3 minutes there.
# To check the script on this machine: BACKEND=cpu MODEL=models/demo-coder GPU_MEMORY=30M TESTS=0
# C=build/lazymoe OUT=/tmp/abt bash bench/cuda/ab_tier.sh (the CPU keeps the tier in RAM).
LAYERS=${LAYERS:-24} SHARE=${SHARE:-4} BACKEND=${BACKEND:-cuda} REPEAT=${REPEAT:-3}
VARIANTS=${VARIANTS:-"none --cpu-experts=auto --cpu-experts=4"}
mkdir -p "$OUT"
S=$OUT/tier_summary.txt A=$OUT/tier_all.txt W=/tmp/lw
mkdir -p $W
: > $S
if [ -z "${C:-}" ]; then
    tar xJf "${CARRY_TAR:-build/device-carry.tar.xz}"
    export LAZYMOE_SOURCE_DIR=$PWD LD_LIBRARY_PATH=$PWD/build/carry90/libs
    C=$PWD/build/carry90/lazymoe T=$PWD/build/carry90/test_cuda
    cat build/carry90/commit.txt >> $S
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> $S
fi
if [ "${TESTS:-1}" = 1 ]; then
    timeout 150 $T > $OUT/test_cuda.txt 2>&1; echo "exit $?" >> $OUT/test_cuda.txt
    echo "tests: ok $(grep -c '^ok ' $OUT/test_cuda.txt) FAIL $(grep -c '^FAIL' $OUT/test_cuda.txt) at $SECONDS s" >> $S
    grep -B2 -A6 '^FAIL' $OUT/test_cuda.txt | head -40 >> $S
fi
M=${MODEL:-$W/g64-$LAYERS}
[ -d $M ] || $C synth --preset qwen3-30b-a3b --layers $LAYERS --bits 4 --group-size 64 --out $M --threads 16 --quiet
B="--backend $BACKEND --no-warm-start --ctx 4096"
# the budget: the resident part and 1/SHARE of the expert slots, from a run with every expert there
if [ -z "${GPU_MEMORY:-}" ]; then
    timeout 120 $C bench $M $B --prompt-tokens 8 --gen-tokens 2 --json > $W/full.json 2>> $A
    GPU_MEMORY=$(python3 -c "
import json
g = json.load(open('$W/full.json'))['gpu']
print(int(g['resident_bytes'] + g['expert_bytes'] // $SHARE))")
fi
echo "gpu memory $GPU_MEMORY (1/$SHARE of the experts)" >> $S
run() { # name, bench arguments
    local n=$1; shift
    echo "### $n $*" >> $A
    timeout 150 $C bench $M $B --gpu-memory $GPU_MEMORY "$@" > $W/run.txt 2>&1
    cat $W/run.txt >> $A
    echo "$n: $(grep -E '^(prefill|decode|repeats) ' $W/run.txt | tr -s ' ' | cut -d: -f2- | tr '\n' ' ')" >> $S
    echo "    $(grep -E '^(gpu|misses) ' $W/run.txt | tr -s ' ' | tr '\n' ' ') ($SECONDS s)" >> $S
}
for r in ${ROUNDS:-a b}; do
    for v in $VARIANTS; do
        args=()
        for p in ${v//+/ }; do case "$p" in --*=*) args+=("${p%%=*}" "${p#*=}") ;; esac; done
        run "p1 $v $r" --prompt-tokens 1 --gen-tokens 128 --repeat $REPEAT "${args[@]}"
        run "p512 $v $r" --prompt-tokens 512 --gen-tokens 16 --repeat $REPEAT "${args[@]}"
    done
done
# WARM=1: the GPU tier's warm start -- decode after a run that recorded the popularity
# history (without --no-warm-start, in a fresh XDG_CACHE_HOME), then with --pin PIN (default 0)
if [ "${WARM:-0}" = 1 ]; then
    export XDG_CACHE_HOME=$W/xdg-tier
    rm -rf $XDG_CACHE_HOME
    B="--backend $BACKEND --ctx 4096"
    run "p1 records history" --prompt-tokens 1 --gen-tokens 128
    run "p1 warm start" --prompt-tokens 1 --gen-tokens 128 --repeat $REPEAT -v
    [ "${PIN:-0}" -gt 0 ] && run "p1 warm start pin $PIN" --prompt-tokens 1 --gen-tokens 128 --repeat $REPEAT --pin $PIN -v
fi
echo "== done ($SECONDS s)" >> $S
cat $S
