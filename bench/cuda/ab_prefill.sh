#!/bin/bash
# Prefill A/B in one call on the GPU box (issue 18): test_cuda, then one binary on 24 layers of
# Qwen3-30B-A3B shapes (MLX 4-bit g64) with k_gemm_tc's generic loader (LAZYMOE_CUDA_TC_GENERIC=1,
# the kernel before tc_block_affine) against its affine path (the default), alternating, twice,
# each bench with --repeat 4 (a first run, then the mean of 3 in fresh sessions, llama-bench's
# way); then decode from one token, a 2048-token prompt, and one profiled prefill. Everything
# lands in $OUT/summary.txt, all.txt, test_cuda.txt, prof.txt (the device tool returns few
# files). Here: make CUDA=1 cuda-carry, then
# XZ_OPT=-9e tar cJf build/device-carry.tar.xz build/carry90/{lazymoe,test_cuda,libs,commit.txt}
# and carry it with this script. ~3 minutes there.
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
run() { # name, env settings..., then bench arguments after --
    local n=$1; shift; local envs=(); while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
    echo "### $n ${envs[*]}" >> $A
    env "${envs[@]}" timeout 120 $C bench $M --backend cuda --no-warm-start --ctx 4096 "$@" > $W/run.txt 2>&1
    cat $W/run.txt >> $A
    echo "$n: $(grep -E '^(prefill|decode|repeats) ' $W/run.txt | tr -s ' ' | cut -d: -f2- | tr '\n' ' ') ($SECONDS s)" >> $S
}
P="--prompt-tokens 512 --gen-tokens 64 --repeat 4"
for r in a b; do
    run generic_$r LAZYMOE_CUDA_TC_GENERIC=1 -- $P
    run affine_$r X=0 -- $P
done
run p1_affine X=0 -- --prompt-tokens 1 --gen-tokens 128 --repeat 3
run p2048_generic LAZYMOE_CUDA_TC_GENERIC=1 -- --prompt-tokens 2048 --gen-tokens 16 --repeat 3
run p2048_affine X=0 -- --prompt-tokens 2048 --gen-tokens 16 --repeat 3
LAZYMOE_OP_TIMING=1 LAZYMOE_CUDA_TIMING=1 timeout 90 $C bench $M --backend cuda --no-warm-start \
    --ctx 4096 --prompt-tokens 512 --gen-tokens 4 > $OUT/prof.txt 2>&1
echo "== done ($SECONDS s)" >> $S
cat $S
