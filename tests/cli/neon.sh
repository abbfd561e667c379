#!/usr/bin/env bash
# The ARM NEON kernels, cross-compiled for AArch64 (aarch64-linux-gnu-gcc, static)
# and run under qemu-aarch64: tests/test_kernels.c against the scalar reference,
# as on x86, on an emulated CPU with the dot-product extension and on one without.
# Needs gcc-aarch64-linux-gnu and qemu-user (tools/install-deps.sh); without them
# this test fails rather than skipping.
set -u
cd "$(dirname "$0")/../.."
CC=aarch64-linux-gnu-gcc
QEMU=qemu-aarch64
for tool in $CC $QEMU; do
    if ! command -v $tool >/dev/null; then
        echo "FAIL neon_kernels: $tool is missing: run tools/install-deps.sh (gcc-aarch64-linux-gnu, qemu-user)"
        exit 1
    fi
done
out=build/neon
mkdir -p $out
srcs="tests/test_kernels.c src/kernels/backend.c src/kernels/cpu/*.c src/formats/dtype.c src/formats/ggml_blocks.c src/formats/mxfp4.c src/common/error.c src/common/log.c src/platform/platform_posix.c"
# shellcheck disable=SC2086
if ! log=$($CC -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-missing-field-initializers \
        -Iinclude -Isrc -O2 -g -static -o $out/test_kernels $srcs -lpthread -lm 2>&1); then
    echo "FAIL neon_kernels_build: $(echo "$log" | head -5 | tr '\n' ' ')"
    exit 1
fi
echo "ok neon_kernels_build"
# The binary's own ok/FAIL lines, renamed so they do not collide with the native run.
# qemu's default CPU ("max") has the dot-product extension: the int8 kernels run
# with SDOT, and without it where the test hides it.
result=$($QEMU -cpu max $out/test_kernels 2>&1); rc=$?
echo "$result" | sed -e 's/^ok /ok neon_/' -e 's/^FAIL /FAIL neon_/'
if ! echo "$result" | grep -q '^# auto kernels: neon$'; then echo "FAIL neon_kernels_selected: auto did not pick neon"; exit 1; fi
echo "ok neon_kernels_selected"
if ! echo "$result" | grep -q '^# neon int8: SDOT (dotprod) and the plain way compared'; then
    echo "FAIL neon_kernels_sdot_ran: qemu -cpu max did not report the dot-product extension"; rc=1
else
    echo "ok neon_kernels_sdot_ran"
fi
# A Cortex-A57 (ARMv8.0) has no dot-product instructions: the CPU detection must
# say so, and nothing the kernels run on it may use them (qemu would stop with
# SIGILL). Only the int8 cases differ from the run above: their ok lines, and any FAIL.
result=$($QEMU -cpu cortex-a57 $out/test_kernels 2>&1); rc57=$?
echo "$result" | grep -E '^(ok kernels_act8|FAIL )' | sed -e 's/^ok /ok neon_a57_/' -e 's/^FAIL /FAIL neon_a57_/'
if [ $rc57 -ne 0 ] && ! echo "$result" | grep -q '^FAIL '; then
    echo "FAIL neon_a57_kernels: exited with status $rc57: $(echo "$result" | tail -3 | tr '\n' ' ')"
fi
if echo "$result" | grep -q '^# neon int8: this CPU lacks SDOT'; then
    echo "ok neon_a57_no_sdot"
else
    echo "FAIL neon_a57_no_sdot: the Cortex-A57 run did not take the plain int8 path"; rc57=1
fi
[ $rc -eq 0 ] && [ $rc57 -eq 0 ]
