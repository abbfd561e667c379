#!/bin/bash
# Prefill A/B in one call on the GPU box (issue 18): test_cuda, then on 24 layers of Qwen3-30B-A3B
# shapes (MLX 4-bit g64), alternating, in ROUNDS (default two), each bench with --repeat REPEAT
# (default 4: a first run, then the mean of 3 in fresh sessions, llama-bench's way): an earlier
# build carried as build/carry90-prev if there is one, then this build under each of VARIANTS
# (space-separated; each environment settings or --flag=value bench arguments joined by +, default
# "X=0 LAZYMOE_CUDA_TC_WIDE=1": as built, and k_gemm_tc's affine path in blocks of 8 warps); then decode from one token and one profiled
# prefill per variant, and MODE=prefill bench/cuda/profile.sh (ncu) per variant. Everything lands in
# $OUT/summary.txt, all.txt, test_cuda.txt, prof_N.txt and ncu_N.txt (the device tool returns 8
# files). Here: make CUDA=1 cuda-carry, then
# XZ_OPT=-9e tar cJf build/device-carry.tar.xz build/carry90/{lazymoe,test_cuda,libs,commit.txt}
# [build/carry90-prev/{lazymoe,commit.txt}] and carry it with this script. ~2-3 minutes there.
CARRY_TAR=${CARRY_TAR:-build/device-carry.tar.xz} LAYERS=${LAYERS:-24}
tar xJf "$CARRY_TAR"
export LAZYMOE_SOURCE_DIR=$PWD LD_LIBRARY_PATH=$PWD/build/carry90/libs
C=$PWD/build/carry90/lazymoe T=$PWD/build/carry90/test_cuda
S=$OUT/summary.txt A=$OUT/all.txt W=/tmp/lw
mkdir -p $W
cat build/carry90/commit.txt > $S
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> $S
timeout 120 $T > $OUT/test_cuda.txt 2>&1; echo "exit $?" >> $OUT/test_cuda.txt
echo "tests: ok $(grep -c '^ok ' $OUT/test_cuda.txt) FAIL $(grep -c '^FAIL' $OUT/test_cuda.txt) at $SECONDS s" >> $S
grep -B2 -A6 '^FAIL' $OUT/test_cuda.txt | head -60 >> $S
M=$W/g64-$LAYERS
[ -d $M ] || $C synth --preset qwen3-30b-a3b --layers $LAYERS --bits 4 --group-size 64 --out $M --threads 16 --quiet
# settings -> envs (environment settings, X=0 first) and args (a setting --flag=value: bench arguments)
split_settings() {
    envs=(X=0) args=()
    for p in "$@"; do case "$p" in --*=*) args+=("${p%%=*}" "${p#*=}") ;; *) envs+=("$p") ;; esac; done
}
run() { # name, binary, settings..., then bench arguments after --
    local n=$1 bin=$2 set=(); shift 2
    while [ "$1" != -- ]; do set+=("$1"); shift; done
    shift
    local envs args
    split_settings "${set[@]}"
    echo "### $n $bin ${envs[*]} ${args[*]}" >> $A
    env "${envs[@]}" timeout 120 $bin bench $M --backend cuda --no-warm-start --ctx 4096 "${args[@]}" "$@" > $W/run.txt 2>&1
    cat $W/run.txt >> $A
    echo "$n: $(grep -E '^(prefill|decode|repeats) ' $W/run.txt | tr -s ' ' | cut -d: -f2- | tr '\n' ' ') ($SECONDS s)" >> $S
}
P="--prompt-tokens 512 --gen-tokens 64 --repeat ${REPEAT:-4}"
VARIANTS=${VARIANTS:-"X=0 LAZYMOE_CUDA_TC_WIDE=1"}
PREV=build/carry90-prev/lazymoe
[ -x $PREV ] && echo "prev: $(cat build/carry90-prev/commit.txt)" >> $S
for r in ${ROUNDS:-a b}; do
    [ -x $PREV ] && run prev_$r $PREV X=0 -- $P
    for v in $VARIANTS; do run "${v}_$r" $C ${v//+/ } -- $P; done
done
[ -x $PREV ] && run p1_prev $PREV X=0 -- --prompt-tokens 1 --gen-tokens 128 --repeat 3
for v in $VARIANTS; do run "p1_$v" $C ${v//+/ } -- --prompt-tokens 1 --gen-tokens 128 --repeat 3; done
i=0
for v in $VARIANTS; do
    i=$((i + 1))
    split_settings ${v//+/ }
    env "${envs[@]}" LAZYMOE_OP_TIMING=1 LAZYMOE_CUDA_TIMING=1 timeout 90 $C bench $M --backend cuda --no-warm-start \
        --ctx 4096 --prompt-tokens 512 --gen-tokens 4 "${args[@]}" > $OUT/prof_$i.txt 2>&1
    echo "prof_$i.txt: $v" >> $S
done
# where the prefill GEMM waits (ncu; NCU=0 skips it), for each variant
i=0
for v in $VARIANTS; do
    i=$((i + 1))
    case "$v" in *--*) continue ;; esac # environment variants only
    [ "${NCU:-1}" = 0 ] || env ${v//+/ } MODE=prefill OUT=$W/ncu timeout 240 bash bench/cuda/profile.sh $C 2 > $OUT/ncu_$i.txt 2>&1
done
echo "== done ($SECONDS s)" >> $S
cat $S
