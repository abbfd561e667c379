#!/usr/bin/env bash
# The CUDA backend's check on the GPU box, in one device call (issue 18, phase 1).
#
# Here (a machine with nvcc, no GPU needed), before the call:
#   tools/cuda_check.sh --pack
#     builds the CUDA test program and CLI (make CUDA=1; CUDA runtime, jansson and
#     pcre2 linked statically in the test) and puts stripped copies in
#     build/cuda-carry/ (about 5 MB), a fallback for a box that cannot build.
# On the GPU box (the device tool's `run`, from the repository root):
#   bash tools/cuda_check.sh          with carry ["build/cuda-carry"]
#     1. records the machine (nvidia-smi, nvcc, cores);
#     2. builds with nvcc there (make -j CUDA=1) when its compiler and the
#        libjansson/libpcre2 headers are present, else takes build/cuda-carry/;
#     3. runs tests/cuda/test_cuda (make test-cuda's program): every op against the
#        scalar CPU backend, then the golden fixtures on the GPU (logits vs
#        transformers and vs the CPU, greedy ids, lazy == resident);
#     4. runs the op tests again under compute-sanitizer memcheck (out-of-bounds
#        and misaligned accesses, API errors) when the tool is there;
#     5. the CLI on the demo model with --backend cuda and cpu (ids must match) and a
#        short bench of each (a first look at speed, not a benchmark);
#   and packs every log into $OUT/cuda.tgz (one file: a call returns at most 8).
# Each step is bounded so the whole run stays under 8 minutes on 16 cores.
set -u
cd "$(dirname "$0")/.."
CARRY=build/cuda-carry

if [ "${1:-}" = "--pack" ]; then
    make -j2 CUDA=1 build/cuda/tests/test_cuda build/cuda/lazymoe || exit 1
    mkdir -p $CARRY
    strip -o $CARRY/test_cuda build/cuda/tests/test_cuda && strip -o $CARRY/lazymoe build/cuda/lazymoe || exit 1
    git rev-parse HEAD >$CARRY/commit.txt
    ls -la $CARRY
    echo "carry $CARRY in the device call: bash tools/cuda_check.sh"
    exit 0
fi

OUT=${OUT:-/tmp/cuda_check_out}
mkdir -p "$OUT"
R=$(mktemp -d)/cuda
mkdir -p "$R"
export XDG_CACHE_HOME="$R/xdg" # expert popularity of the runs stays out of ~/.cache
start=$SECONDS
step() { echo "== $* ($((SECONDS - start)) s)" | tee -a "$R/steps.txt"; }
pack() {
    step "packing"
    tar -czf "$OUT/cuda.tgz" -C "$(dirname "$R")" cuda
    ls -la "$OUT"
}
trap pack EXIT

step "machine"
{
    date -u
    git rev-parse HEAD 2>/dev/null
    nvidia-smi 2>&1
    nvidia-smi -q 2>&1 | grep -E "Driver Version|CUDA Version|Product Name" | head -5
    command -v nvcc && nvcc --version
    nproc
    uname -a
    command -v compute-sanitizer
    ls /usr/include/jansson.h /usr/include/pcre2.h /usr/include/microhttpd.h 2>&1
    # what a llama.cpp CUDA build from source would need there
    for t in cmake gcc g++ clang make ninja python3 node; do printf '%s: ' $t; command -v $t || echo missing; done
    ldd --version 2>&1 | head -1
    head -2 /etc/os-release
    lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-300
    free -g | head -2
} >"$R/machine.txt" 2>&1
cat "$R/machine.txt"

step "build"
TEST=""
CLI=""
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
if [ -x "$NVCC" ] && [ -f /usr/include/jansson.h ] && [ -f /usr/include/pcre2.h ]; then
    # microhttpd (the server) is only in the CLI; the test program does not need it
    if timeout 300 make -j"$(nproc)" CUDA=1 NVCC="$NVCC" build/cuda/tests/test_cuda >"$R/build.txt" 2>&1; then
        TEST=build/cuda/tests/test_cuda
        if [ -f /usr/include/microhttpd.h ] &&
           timeout 120 make -j"$(nproc)" CUDA=1 NVCC="$NVCC" build/cuda/lazymoe >>"$R/build.txt" 2>&1; then
            CLI=build/cuda/lazymoe
        fi
    fi
    tail -5 "$R/build.txt"
else
    echo "no build here: nvcc $NVCC, jansson/pcre2 headers missing" | tee "$R/build.txt"
fi
if [ -z "$TEST" ] && [ -x $CARRY/test_cuda ]; then
    TEST=$CARRY/test_cuda
    echo "using the carried test program (built at $(cat $CARRY/commit.txt 2>/dev/null))" | tee -a "$R/build.txt"
fi
if [ -z "$CLI" ] && [ -x $CARRY/lazymoe ] && ! ldd $CARRY/lazymoe | grep -q "not found"; then CLI=$CARRY/lazymoe; fi
ldd $CARRY/lazymoe >"$R/carried_cli_ldd.txt" 2>&1
if [ -z "$TEST" ]; then
    echo "FAIL cuda_check: no test program (neither built here nor carried in $CARRY)" | tee "$R/result.txt"
    exit 1
fi

step "test_cuda ($TEST)"
export LAZYMOE_SOURCE_DIR="$PWD"
timeout 240 "$TEST" >"$R/test_cuda.txt" 2>&1
echo "exit $?" >>"$R/test_cuda.txt"
grep -E "^(ok|FAIL|#)" "$R/test_cuda.txt" | head -120
grep -cE "^ok " "$R/test_cuda.txt" | sed 's/^/ok cases: /'
grep -cE "^FAIL " "$R/test_cuda.txt" | sed 's/^/FAIL cases: /'

if command -v compute-sanitizer >/dev/null; then
    # CUDA_TEST_SANITIZER=1: cuda_errors_are_messages leaves out the out-of-memory it
    # provokes on purpose (call 1's only two reports), so API errors stay reported
    # beside bad accesses
    step "compute-sanitizer memcheck, ops only"
    CUDA_TEST_OPS_ONLY=1 CUDA_TEST_SANITIZER=1 timeout 150 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 99 \
        "$TEST" >"$R/memcheck.txt" 2>&1
    echo "exit $?" >>"$R/memcheck.txt"
    tail -15 "$R/memcheck.txt"
fi

if [ -n "$CLI" ]; then
    step "CLI ($CLI)"
    for be in cuda cpu; do
        timeout 60 "$CLI" run models/demo-coder --ids 1,2,3,4,5 -n 24 --temp 0 --print-ids --ignore-eos --act-bits 32 \
            --kv-bits 32 --backend $be >"$R/run_$be.txt" 2>&1
        echo "exit $?" >>"$R/run_$be.txt"
        timeout 60 "$CLI" bench models/demo-coder --backend $be --act-bits 32 --resident --prompt-tokens 256 --gen-tokens 64 >"$R/bench_$be.txt" 2>&1
        echo "exit $?" >>"$R/bench_$be.txt"
    done
    if [ "$(head -c 300 "$R/run_cuda.txt")" = "$(head -c 300 "$R/run_cpu.txt")" ]; then
        echo "demo-coder greedy ids: cuda == cpu" | tee -a "$R/steps.txt"
    else
        echo "demo-coder greedy ids: cuda != cpu" | tee -a "$R/steps.txt"
    fi
    # the expert cache in GPU memory (phase 2): a budget for the resident part and
    # about 8 of the 32 experts per layer (uploads from host memory at every layer);
    # every expert is still computed on the GPU, so the ids are the cpu run's
    timeout 60 "$CLI" run models/demo-coder --ids 1,2,3,4,5 -n 24 --temp 0 --print-ids --ignore-eos --act-bits 32 \
        --kv-bits 32 --backend cuda --ctx 256 --gpu-memory 14M >"$R/run_cuda_tier.txt" 2>&1
    echo "exit $?" >>"$R/run_cuda_tier.txt"
    if [ "$(head -c 300 "$R/run_cuda_tier.txt")" = "$(head -c 300 "$R/run_cpu.txt")" ]; then
        echo "demo-coder greedy ids, --gpu-memory 14M: cuda == cpu" | tee -a "$R/steps.txt"
    else
        echo "demo-coder greedy ids, --gpu-memory 14M: cuda != cpu" | tee -a "$R/steps.txt"
    fi
    timeout 60 "$CLI" bench models/demo-coder --backend cuda --act-bits 32 --kv-bits 32 --ctx 256 --gpu-memory 14M \
        --prompt-tokens 128 --gen-tokens 32 --json -v >"$R/bench_cuda_tier.json" 2>"$R/bench_cuda_tier.err"
    echo "exit $?" >>"$R/bench_cuda_tier.err"
    timeout 30 "$CLI" run models/demo-coder --ids 1,2 -n 2 --backend cuda --ctx 256 --gpu-memory 1M \
        >"$R/run_cuda_too_small.txt" 2>&1
    echo "exit $?" >>"$R/run_cuda_too_small.txt"
    timeout 30 "$CLI" info models/demo-coder --backend cuda >"$R/info_cuda.txt" 2>&1
    echo "exit $?" >>"$R/info_cuda.txt"
    for f in "$R"/run_*.txt "$R"/bench_*.txt "$R"/bench_cuda_tier.* "$R"/info_cuda.txt; do echo "-- $f"; tail -n 4 "$f"; done
fi
step "done"
