#!/usr/bin/env bash
# The CUDA backend (src/kernels/cuda/) where no GPU is needed:
#  - a build without CUDA refuses --backend cuda with the rebuild hint (always run);
#  - with nvcc (PATH, $NVCC or /usr/local/cuda/bin/nvcc): `make CUDA=1` compiles it
#    with every warning an error, the object exports the backend's entry points and
#    holds sm_90 machine code and sm_80 PTX, the CUDA CLI and tests/cuda/test_cuda
#    link, and the CLI without a usable GPU fails with the CUDA runtime's reason.
# Without nvcc the compile cases print "skip ..." (tests/run.sh lists skips; they
# are not counted as passed). Running the kernels needs a GPU: `make test-cuda`,
# tools/cuda_check.sh.
set -u
cd "$(dirname "$0")/../.."
BIN=${LAZYMOE_BIN:-build/asan/lazymoe}
fail=0
ok() { echo "ok $1"; }
bad() { echo "FAIL $1: $2"; fail=1; }

out=$($BIN logits tests/fixtures/golden/qwen3_moe_f32 --ids 1,2 --out /dev/null --backend cuda 2>&1); rc=$?
if [ $rc -ne 0 ] && echo "$out" | grep -q "this build has no CUDA (rebuild with make CUDA=1 where nvcc is installed)"; then
    ok cuda_absent_is_an_error
else
    bad cuda_absent_is_an_error "rc $rc: $out"
fi

NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [ ! -x "$NVCC" ]; then
    echo "skip cuda_build: no nvcc (not on PATH, not at /usr/local/cuda/bin/nvcc): the CUDA backend was not compiled"
    exit $fail
fi
CUDA_BIN=$(dirname "$NVCC")
if log=$(make -s CUDA=1 NVCC="$NVCC" build/cuda/lazymoe build/cuda/tests/test_cuda 2>&1); then
    ok cuda_build
else
    bad cuda_build "$(echo "$log" | grep -m6 -E 'error|warning' | tr '\n' ' ')"
    exit 1
fi

obj=build/cuda/src/kernels/cuda/cuda_backend.o
missing=""
for s in lm_backend_cuda_create lm_backend_cuda_weight_bytes; do
    nm -g --defined-only $obj | awk '{print $3}' | grep -qx "$s" || missing="$missing $s"
done
# backend.c built for CUDA calls the backend; the default one does not
nm -u build/cuda/src/kernels/backend.o | grep -q lm_backend_cuda_create || missing="$missing (backend.o does not call it)"
if nm -u build/release/src/kernels/backend.o 2>/dev/null | grep -q lm_backend_cuda_create; then
    missing="$missing (the default backend.o calls it)"
fi
if [ -z "$missing" ]; then ok cuda_symbols; else bad cuda_symbols "missing:$missing"; fi

if [ -x "$CUDA_BIN/cuobjdump" ]; then
    elf=$("$CUDA_BIN/cuobjdump" --list-elf $obj 2>&1)
    ptx=$("$CUDA_BIN/cuobjdump" --list-ptx $obj 2>&1)
    if echo "$elf" | grep -q sm_90 && echo "$ptx" | grep -q sm_80; then
        ok cuda_targets
    else
        bad cuda_targets "elf: $elf / ptx: $ptx"
    fi
else # a compiler-only install: the fatbin is there and ptxas built sm_90 code for it
    if objdump -h $obj | grep -q '\.nv_fatbin' && strings -a $obj | grep -q -- '-arch sm_90'; then
        ok cuda_targets_fatbin
    else
        bad cuda_targets_fatbin "no .nv_fatbin section with sm_90 code in $obj"
    fi
fi

# Without a usable GPU (no device or no driver) the backend is an error, not a crash.
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "skip cuda_no_gpu_message: this machine has a GPU (make test-cuda runs the kernels)"
else
    out=$(build/cuda/lazymoe logits tests/fixtures/golden/qwen3_moe_f32 --ids 1,2 --out /dev/null --backend cuda 2>&1)
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && echo "$out" | grep -q "the cuda backend found no usable GPU"; then
        ok cuda_no_gpu_message
    else
        bad cuda_no_gpu_message "rc $rc: $out"
    fi
    out=$(build/cuda/tests/test_cuda 2>&1)
    if echo "$out" | grep -q "^FAIL cuda_setup: the cuda backend found no usable GPU"; then
        ok cuda_test_program_reports_no_gpu
    else
        bad cuda_test_program_reports_no_gpu "$out"
    fi
fi
exit $fail
