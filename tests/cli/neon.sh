#!/usr/bin/env bash
# The ARM NEON kernels, cross-compiled for AArch64 (aarch64-linux-gnu-gcc, static)
# and run under qemu-aarch64: tests/test_kernels.c against the scalar reference,
# as on x86. Needs gcc-aarch64-linux-gnu and qemu-user (tools/install-deps.sh);
# without them this test fails rather than skipping.
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
srcs="tests/test_kernels.c src/kernels/cpu/*.c src/formats/dtype.c src/common/error.c src/platform/platform_posix.c"
# shellcheck disable=SC2086
if ! log=$($CC -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-missing-field-initializers \
        -Iinclude -Isrc -O2 -g -static -o $out/test_kernels $srcs -lpthread -lm 2>&1); then
    echo "FAIL neon_kernels_build: $(echo "$log" | head -5 | tr '\n' ' ')"
    exit 1
fi
echo "ok neon_kernels_build"
# The binary's own ok/FAIL lines, renamed so they do not collide with the native run.
result=$($QEMU $out/test_kernels 2>&1); rc=$?
echo "$result" | sed -e 's/^ok /ok neon_/' -e 's/^FAIL /FAIL neon_/'
if ! echo "$result" | grep -q '^# auto kernels: neon$'; then echo "FAIL neon_kernels_selected: auto did not pick neon"; exit 1; fi
echo "ok neon_kernels_selected"
exit $rc
