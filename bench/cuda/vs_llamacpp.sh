#!/bin/bash
# lazymoe CUDA against llama.cpp CUDA in one call on the GPU box (issue 18): the CUDA tests, then
# llama.cpp built there from source (tools/llamacpp_cuda.sh --pack makes build/llamacpp-carry) and
# both engines on 24 layers of Qwen3-30B-A3B shapes at 4.5 bits: llama.cpp on Q4_0 (--pure), lazymoe
# on MLX 4-bit group 64 (its own format, 4.5 bits too) and on the same Q4_0 file; every expert in
# GPU memory, then experts of 18 of 24 layers on the CPU (llama.cpp -ncmoe 18) against lazymoe with
# GPU memory for 25% of the experts.
# Here: make CUDA=1 cuda-carry (build/carry90), tools/llamacpp_cuda.sh --pack (build/llamacpp-carry),
# then XZ_OPT=-9e tar cJf build/device-carry.tar.xz build/carry90 build/llamacpp-carry and carry it
# with this script (~4.5 MB: the device tool takes 64 MiB with the tree). ~6 minutes there, most
# of it llama.cpp's build.
# LAYERS=48 (the issue's table: 17.3 GB of Q4_0; -ncmoe 36; the MLX copy is then written after
# the GGUF intermediates are deleted, so the box's 64 GB disk holds both), TESTS=0 (no test_cuda
# first), MLX64=0 (lazymoe on the Q4_0 file only). CARRY_TAR: the carried archive
# (build/device-carry.tar.xz); AGAIN=0: llama-bench -ngl 99 once. REPEAT (3): lazymoe's bench
# --repeat, so that its mean over fresh sessions after a first run sits beside llama-bench's mean
# over runs after a warmup. Q40_ENV: settings for one more Q4_0 prefill run (q40x); G64X_ARGS:
# bench arguments for one more MLX prefill run (g64x, e.g. "--act-bits 32"); G64Y_ENV: settings
# for another (g64y); Q40X_ARGS: bench arguments for one more Q4_0 (and Q4_K_M) prefill run; Q40=0: no
# lazymoe runs on the Q4_0 file; QKM=1: the same shapes as Q4_K_M too
# (llama-quantize's mix: Q4_K with Q6_K for some tensors), both engines on it, every expert in GPU
# memory (48 layers: ~18.5 GB more disk; with MLX64=1 the box's 64 GB hold it only just). Each result
# is summarized into $OUT/summary.txt as it comes (the device tool returns 8 files; a call cut
# short keeps what it had).
LAYERS=${LAYERS:-24} TESTS=${TESTS:-1} MLX64=${MLX64:-1} CARRY_TAR=${CARRY_TAR:-build/device-carry.tar.xz}
AGAIN=${AGAIN:-1} REPEAT=${REPEAT:-3}
G64_LATE=$((LAYERS > 24))
NCMOE=$((LAYERS * 3 / 4))
tar xJf "$CARRY_TAR"
export LAZYMOE_SOURCE_DIR=$PWD LD_LIBRARY_PATH=$PWD/build/carry90/libs
C=$PWD/build/carry90/lazymoe; T=$PWD/build/carry90/test_cuda
S=$OUT/summary.txt
st() { echo "== $* ($SECONDS s)" >> $S; }
cat build/carry90/commit.txt > $S
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> $S
ldd $C | grep "not found" >> $S
if [ "$TESTS" = 1 ]; then
    timeout 200 $T > $OUT/test_cuda.txt 2>&1; echo "exit $?" >> $OUT/test_cuda.txt
    echo "tests: ok $(grep -c '^ok ' $OUT/test_cuda.txt) FAIL $(grep -c '^FAIL' $OUT/test_cuda.txt) at $SECONDS s" >> $S
    grep -A3 '^FAIL' $OUT/test_cuda.txt | head -20 >> $S
    # a binary whose tests fail measures nothing: build/carry90-prev (an earlier tested
    # build, carried beside it) takes its place where there is one
    if grep -q '^FAIL' $OUT/test_cuda.txt || ! grep -q '^exit 0' $OUT/test_cuda.txt; then
        [ -x build/carry90-prev/lazymoe ] && C=$PWD/build/carry90-prev/lazymoe && echo "using $(cat build/carry90-prev/commit.txt)" >> $S
    fi
fi
W=/tmp/lw; mkdir -p $W; export XDG_CACHE_HOME=$W/xdg
tar xJf build/llamacpp-carry/llama-src.tar.xz -C $W
( nice -n 5 cmake -S $W/llama.cpp -B $W/build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON \
   -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
   -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release && nice -n 5 cmake --build $W/build -j 16 --target llama-bench llama-quantize ) > $OUT/llama_build.txt 2>&1 &
bp=$!
st "synth g32"
$C synth --preset qwen3-30b-a3b --layers $LAYERS --bits 4 --group-size 32 --out $W/g32 --threads 8 --quiet > $OUT/synth32.txt 2>&1
st "gguf q4_1"
build/llamacpp-carry/gguf_from_mlx $W/g32 $W/q41.gguf > $OUT/gguf.txt 2>&1; rm -rf $W/g32
synth64() {
    st "synth g64"
    $C synth --preset qwen3-30b-a3b --layers $LAYERS --bits 4 --group-size 64 --out $W/g64 --threads ${1:-8} --quiet > $W/synth64.txt 2>&1
    echo "synth g64 exit $?" >> $S
}
[ "$MLX64" = 1 ] && [ "$G64_LATE" = 0 ] && synth64
st "wait build"
wait $bp; echo "build exit $?" >> $S
B=$W/build/bin
"$B/llama-quantize" --pure --allow-requantize $W/q41.gguf $W/q40.gguf q4_0 16 > $OUT/quant.txt 2>&1; echo "quantize exit $?" >> $S
[ "${QKM:-0}" = 1 ] && { "$B/llama-quantize" --allow-requantize $W/q41.gguf $W/q4km.gguf q4_k_m 16 >> $OUT/quant.txt 2>&1; echo "quantize q4_k_m exit $?" >> $S; }
rm -f $W/q41.gguf
[ "$MLX64" = 1 ] && [ "$G64_LATE" = 1 ] && synth64 16
ls -la $W >> $S; df -h /tmp | tail -1 >> $S
# one result file's numbers into the summary
sumj() {
    python3 - "$1" >> $S <<'PY'
import json, os, sys
p = sys.argv[1]; f = os.path.basename(p)
try:
    if f.startswith('llama_'):
        for r in json.load(open(p)):
            print(f, 'n_prompt', r.get('n_prompt'), 'n_gen', r.get('n_gen'), 'avg_ts %.2f' % r['avg_ts'],
                  'stddev %.2f' % r.get('stddev_ts', 0), 'samples', [round(x, 1) for x in r.get('samples_ts', [])])
    else:
        j = json.load(open(p)); g = j.get('gpu', {})
        rep = ' repeats %d: prefill %.1f +- %.1f decode %.2f +- %.2f' % (j['repeats'], j['prefill_tok_s_repeats'],
              j['prefill_tok_s_repeats_sd'], j['decode_tok_s_repeats'], j['decode_tok_s_repeats_sd']) if 'repeats' in j else ''
        print(f, 'load %.1f s first: prefill %.1f decode %.2f' % (j['load_s'], j['prefill_tok_s'], j['decode_tok_s']) + rep,
              'ids', j['generated_ids'][:4], 'vram peak', g.get('vram_peak_bytes'), 'budget', g.get('budget'),
              'decode upload', g.get('decode_upload_bytes'), 'cpu experts', g.get('cpu_computed_experts'))
except Exception as e:
    print(f, 'unreadable', e)
PY
}
st "llama-bench ngl99"
timeout 150 $B/llama-bench -m $W/q40.gguf -ngl 99 -p 512 -n 64 -r 2 -o json > $W/llama_ngl99.json 2> $W/llama_ngl99.err
sumj $W/llama_ngl99.json
lz() {
    local n=$1 m=$2; shift 2
    timeout 150 $C bench $m --backend cuda --ctx 4096 --no-warm-start --json -v "$@" > $W/lz_$n.json 2> $W/lz_$n.err
    echo "lz_$n exit $? ($SECONDS s)" >> $S
    sumj $W/lz_$n.json
}
st "lazymoe"
[ "$MLX64" = 1 ] && lz g64_p512 $W/g64 --prompt-tokens 512 --gen-tokens 64 --repeat $REPEAT
[ "$MLX64" = 1 ] && lz g64_p1 $W/g64 --prompt-tokens 1 --gen-tokens 64 --repeat $REPEAT
# G64X_ARGS (e.g. "--act-bits 32"): the MLX prefill once more with those bench arguments
[ "$MLX64" = 1 ] && [ -n "${G64X_ARGS:-}" ] && lz g64x_p512 $W/g64 --prompt-tokens 512 --gen-tokens 64 --repeat $REPEAT $G64X_ARGS
# G64Y_ENV (e.g. LAZYMOE_CUDA_A8_WARPS=8): the MLX prefill once more with those settings
[ "$MLX64" = 1 ] && [ -n "${G64Y_ENV:-}" ] && (export $G64Y_ENV; lz g64y_p512 $W/g64 --prompt-tokens 512 --gen-tokens 64 --repeat $REPEAT)
[ "${Q40:-1}" = 1 ] && lz q40_p512 $W/q40.gguf --prompt-tokens 512 --gen-tokens 64 --repeat $REPEAT
[ "${Q40:-1}" = 1 ] && lz q40_p1 $W/q40.gguf --prompt-tokens 1 --gen-tokens 64 --repeat $REPEAT
# Q40_ENV (e.g. LAZYMOE_CUDA_TC_Q4_0=1): the Q4_0 prefill once more with those settings
[ -n "${Q40_ENV:-}" ] && (export $Q40_ENV; lz q40x_p512 $W/q40.gguf --prompt-tokens 512 --gen-tokens 64 --repeat $REPEAT)
# Q40X_ARGS (e.g. "--act-bits 8": k_gemm_g8): the Q4_0 prefill once more with those bench arguments
[ -n "${Q40X_ARGS:-}" ] && lz q40a_p512 $W/q40.gguf --prompt-tokens 512 --gen-tokens 64 --repeat $REPEAT $Q40X_ARGS
[ "$AGAIN" = 1 ] && st "llama-bench ngl99 again"
[ "$AGAIN" = 1 ] && timeout 150 $B/llama-bench -m $W/q40.gguf -ngl 99 -p 512 -n 64 -r 2 -o json > $W/llama_ngl99_b.json 2> $W/llama_ngl99_b.err
[ "$AGAIN" = 1 ] && sumj $W/llama_ngl99_b.json
if [ "${QKM:-0}" = 1 ]; then
    st "q4_k_m"
    timeout 150 $B/llama-bench -m $W/q4km.gguf -ngl 99 -p 512 -n 64 -r 2 -o json > $W/llama_q4km.json 2> $W/llama_q4km.err
    sumj $W/llama_q4km.json
    lz q4km_p512 $W/q4km.gguf --prompt-tokens 512 --gen-tokens 64 --repeat $REPEAT
    lz q4km_p1 $W/q4km.gguf --prompt-tokens 1 --gen-tokens 64 --repeat $REPEAT
    [ -n "${Q40X_ARGS:-}" ] && lz q4kma_p512 $W/q4km.gguf --prompt-tokens 512 --gen-tokens 64 --repeat $REPEAT $Q40X_ARGS
fi
st "llama-bench ncmoe $NCMOE"
timeout 200 $B/llama-bench -m $W/q40.gguf -ngl 99 -ncmoe $NCMOE -t 16 -p 512 -n 64 -r 1 -o json > $W/llama_ncmoe.json 2> $W/llama_ncmoe.err
sumj $W/llama_ncmoe.json
M25=$W/g64 F25=g64
[ "$MLX64" = 1 ] || M25=$W/q40.gguf F25=q40
B25=$(python3 -c "
import json
g = json.load(open('$W/lz_${F25}_p512.json'))['gpu']
print(int(g['resident_bytes'] + g['expert_bytes'] // 4))" 2>>$S)
st "lazymoe 25% $B25"
[ -n "$B25" ] && lz ${F25}_25_p512 $M25 --prompt-tokens 512 --gen-tokens 64 --gpu-memory $B25 --repeat $REPEAT
[ -n "$B25" ] && lz ${F25}_25_p1 $M25 --prompt-tokens 1 --gen-tokens 64 --gpu-memory $B25 --repeat $REPEAT
st "done"
cat $S
