#!/usr/bin/env bash
# `lazymoe convert` from the command line: exit codes, messages, a real conversion.
# Prints "ok NAME" / "FAIL NAME: reason" lines for tests/run.sh.
set -u
BIN=${LAZYMOE_BIN:-build/asan/lazymoe}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
G=tests/fixtures/golden

check() { # name, condition-result(0/1), reason
    if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "FAIL $1: $3"; fi
}

"$BIN" convert >"$T/out" 2>&1; rc=$?
check cli_convert_usage $([ $rc -eq 2 ] && grep -q "usage: lazymoe convert" "$T/out"; echo $?) "rc=$rc $(head -c 200 "$T/out")"

"$BIN" convert $G/olmoe_f32 "$T/m" --bits 7 >"$T/out" 2>&1; rc=$?
check cli_convert_bad_bits $([ $rc -eq 1 ] && grep -q "unsupported bits 7" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" convert $G/olmoe_f32 "$T/m" --dtype f8 >"$T/out" 2>&1; rc=$?
check cli_convert_bad_dtype $([ $rc -eq 2 ]; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" convert $G/olmoe_f32 "$T/m" --bits 8 --group-size 32 --dtype bf16 >"$T/out" 2>&1; rc=$?
check cli_convert_runs $([ $rc -eq 0 ] && [ -f "$T/m/model.safetensors" ] && [ -f "$T/m/config.json" ] \
    && grep -q "layer 2/2" "$T/out"; echo $?) "rc=$rc $(tail -3 "$T/out")"

"$BIN" convert $G/olmoe_f32 "$T/m" >"$T/out" 2>&1; rc=$?
check cli_convert_refuses_nonempty $([ $rc -eq 1 ] && grep -q -- "--force" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" convert $G/olmoe_f32 "$T/m" --force --quiet >"$T/out" 2>&1; rc=$?
check cli_convert_force $([ $rc -eq 0 ] && [ ! -s "$T/out" ] && [ -z "$(ls -d "$T"/m.lazymoe-* 2>/dev/null)" ]; echo $?) "rc=$rc $(cat "$T/out")"
