#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/fuzz_*.c; `make test` has built them already) and
# runs each briefly (8 s) from its seed corpus (fuzz/corpus/NAME): every seed is replayed,
# then mutated a little. A crash, leak or sanitizer report fails the case.
# Long campaigns are run by hand: build/fuzz/fuzz_NAME -max_total_time=3600 DIR fuzz/corpus/NAME
set -u
cd "$(dirname "$0")/../.."
SECS=${FUZZ_SECONDS:-8}
if ! make -s fuzz >/tmp/lazymoe-fuzz-build.log 2>&1; then
    echo "FAIL fuzz_build: $(tail -5 /tmp/lazymoe-fuzz-build.log)"
    exit 1
fi
fail=0
for bin in build/fuzz/fuzz_*; do
    name=$(basename "$bin"); name=${name#fuzz_}
    work=$(mktemp -d)
    if "$bin" -max_total_time="$SECS" -max_len=16384 -artifact_prefix="$work/" "$work" "fuzz/corpus/$name" >"$work/log" 2>&1; then
        echo "ok fuzz_$name ($(grep -o 'Done [0-9]* runs' "$work/log"))"
    else
        echo "FAIL fuzz_$name: $(grep -m1 -E 'ERROR|SUMMARY' "$work/log")"
        ls "$work"/crash-* "$work"/leak-* 2>/dev/null
        fail=1
    fi
    rm -rf "$work"
done
exit $fail
