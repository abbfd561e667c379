#!/usr/bin/env bash
# `lazymoe synth` from the command line: usage, bad arguments, dry-run plan, a tiny
# model that `lazymoe info` and `lazymoe logits` read, --force, disk-space refusal.
# Prints "ok NAME" / "FAIL NAME: reason" lines for tests/run.sh.
set -u
BIN=${LAZYMOE_BIN:-build/asan/lazymoe}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

check() { # name, condition-result(0/1), reason
    if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "FAIL $1: $3"; fi
}

"$BIN" synth >"$T/out" 2>&1; rc=$?
check cli_synth_usage $([ $rc -eq 2 ] && grep -q "usage: lazymoe synth" "$T/out"; echo $?) "rc=$rc $(head -c 200 "$T/out")"

"$BIN" synth --preset tiny --out "$T/m" --routing zipf >"$T/out" 2>&1; rc=$?
check cli_synth_bad_routing $([ $rc -eq 2 ] && grep -q "realistic, uniform or collapsed" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" synth --preset llama --out "$T/m" >"$T/out" 2>&1; rc=$?
check cli_synth_bad_preset $([ $rc -eq 1 ] && grep -q "unknown preset 'llama'" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" synth --preset tiny --out "$T/m" --bits 3 >"$T/out" 2>&1; rc=$?
check cli_synth_bad_bits $([ $rc -eq 1 ] && grep -q "4 or 8" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" synth --preset tiny --layers x --out "$T/m" >"$T/out" 2>&1; rc=$?
check cli_synth_bad_layers $([ $rc -eq 2 ]; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" synth --preset tiny >"$T/out" 2>&1; rc=$?
check cli_synth_needs_out $([ $rc -eq 2 ] && grep -q -- "--out" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" synth --preset qwen3-30b-a3b --dry-run >"$T/out" 2>&1; rc=$?
check cli_synth_dry_run $([ $rc -eq 0 ] && grep -q "^bytes_per_expert: 2654208$" "$T/out" \
    && grep -q "^bytes_total: 17180913664$" "$T/out" && grep -q "^tensors: 1351$" "$T/out" \
    && [ ! -e "$T/m" ]; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" synth --preset mixtral-8x7b --layers 1 --dry-run >"$T/out" 2>&1; rc=$?
check cli_synth_dry_run_layers $([ $rc -eq 0 ] && grep -q "^layers: 1$" "$T/out" \
    && grep -q "^bytes_per_expert: 99090432$" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" synth --preset tiny --out "$T/m" --seed 3 >"$T/out" 2>&1; rc=$?
check cli_synth_tiny $([ $rc -eq 0 ] && [ -f "$T/m/model.safetensors" ] && [ -f "$T/m/config.json" ] \
    && grep -q "layer 4/4" "$T/out" && grep -q "MB/s" "$T/out" && grep -q "ETA" "$T/out" \
    && [ -z "$(ls -d "$T"/m.lazymoe-* 2>/dev/null)" ]; echo $?) "rc=$rc $(tail -3 "$T/out")"

"$BIN" info "$T/m" >"$T/out" 2>&1; rc=$?
check cli_synth_info $([ $rc -eq 0 ] && grep -q "qwen3_moe" "$T/out" && grep -q "top-4" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" logits "$T/m" --ids 1,2,3 --out "$T/l.npy" --threads 1 >"$T/out" 2>&1; rc=$?
check cli_synth_logits $([ $rc -eq 0 ] && [ -s "$T/l.npy" ]; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" synth --preset tiny --out "$T/m" >"$T/out" 2>&1; rc=$?
check cli_synth_refuses_nonempty $([ $rc -eq 1 ] && grep -q -- "--force" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" synth --preset tiny --out "$T/m" --force --quiet --layers 2 >"$T/out" 2>&1; rc=$?
check cli_synth_force $([ $rc -eq 0 ] && [ ! -s "$T/out" ] && grep -q '"num_hidden_layers": 2' "$T/m/config.json"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" synth --preset qwen3-30b-a3b --out "$T/big" --assume-free-bytes 1000000 >"$T/out" 2>&1; rc=$?
check cli_synth_disk_space $([ $rc -eq 1 ] && grep -q "needs 17.19 GB, 0.00 GB free" "$T/out" && [ ! -e "$T/big" ] \
    && [ -z "$(ls -d "$T"/big.lazymoe-* 2>/dev/null)" ]; echo $?) "rc=$rc $(cat "$T/out")"
