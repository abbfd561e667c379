#!/usr/bin/env bash
# Runs every test program and every node test, then prints the summary line
# "N passed, N failed" that CI reads. A test program reports one line per case:
# "ok NAME" or "FAIL NAME: reason"; a program that crashes or exits non-zero
# without printing a FAIL line counts as one failed case of its own.
set -u
cd "$(dirname "$0")/.."
SAN=build/asan
export LAZYMOE_BIN="$PWD/$SAN/lazymoe"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
passed=0; failed=0; skipped=""
log=$(mktemp -d)
# Runs of lazymoe keep expert popularity under XDG_CACHE_HOME: keep the suite's out of ~/.cache.
export XDG_CACHE_HOME="$log/xdg-cache"

run_one() { # name, command...
    local name=$1; shift
    local out="$log/$name.log"
    local start=$SECONDS
    "$@" >"$out" 2>&1
    local rc=$?
    local ok fail skip
    ok=$(grep -c '^ok ' "$out")
    fail=$(grep -c '^FAIL ' "$out")
    # "skip NAME: why" -- a case that could not run here (a missing tool); listed
    # at the end, never counted as passed
    skip=$(grep -c '^skip ' "$out")
    skipped="$skipped$(grep '^skip ' "$out" | sed 's/^/  /')"$'\n'
    if [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then fail=1; echo "FAIL $name: exited with status $rc" >>"$out"; fi
    if [ "$ok" -eq 0 ] && [ "$fail" -eq 0 ] && [ "$skip" -eq 0 ]; then fail=1; echo "FAIL $name: ran no test case" >>"$out"; fi
    passed=$((passed + ok)); failed=$((failed + fail))
    printf '%-40s %3d ok %3d failed  (%ds)%s\n' "$name" "$ok" "$fail" $((SECONDS - start)) \
        "$([ "$skip" -gt 0 ] && echo "  $skip skipped")"
    if [ "$fail" -ne 0 ]; then grep -E '^FAIL ' "$out" | head -20; tail -30 "$out"; fi
}

# Static analysis (tests/cli/lint.sh) takes minutes of CPU and asserts nothing about
# time: it runs beside the other tests at a lower priority from the start, and its
# result is counted at the end.
lint_start=$SECONDS
( nice -n 10 bash tests/cli/lint.sh >"$log/lint.out" 2>&1; echo $? >"$log/lint.rc" ) &
lint_pid=$!

for t in $SAN/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "$(basename "$t")" "$t"
done
for e in $SAN/examples/*; do
    [ -x "$e" ] || continue
    run_one "example_$(basename "$e")" "$e"
done
# Node-driven tests compare against reference implementations from npm.
if [ -d tests/node/node_modules ]; then
    for t in tests/node/*.test.mjs; do
        [ -f "$t" ] || continue
        run_one "$(basename "$t" .test.mjs)" node "$t"
    done
else
    echo "tests/node/node_modules missing: run tools/install-deps.sh"; failed=$((failed + 1))
fi
for t in tests/cli/*.sh; do
    [ -f "$t" ] || continue
    [ "$t" = tests/cli/lint.sh ] && continue # running since the start
    run_one "$(basename "$t" .sh)" bash "$t"
done
wait "$lint_pid"
run_one lint bash -c 'cat "$1"; exit "$(cat "$2")"' lint "$log/lint.out" "$log/lint.rc"
echo "  (lint ran beside the tests: $((SECONDS - lint_start)) s since the start)"
rm -rf "$log"
if [ -n "$(echo "$skipped" | tr -d '[:space:]')" ]; then echo "skipped (not run, not counted):"; echo "$skipped" | grep -v '^$'; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
