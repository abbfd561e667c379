#!/usr/bin/env bash
# `lazymoe replay` from the command line: usage, bad arguments and traces, the policy table
# on a small hand-made trace (Belady's MIN 2 of 6 where LRU hits nothing; see
# tests/test_policy.c for the arithmetic), lookahead and pin options, JSON lines.
# Prints "ok NAME" / "FAIL NAME: reason" lines for tests/run.sh.
set -u
BIN=${LAZYMOE_BIN:-build/asan/lazymoe}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

check() { # name, condition-result(0/1), reason
    if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "FAIL $1: $3"; fi
}

printf 'lazymoe-routing-trace v1 layers=1 experts=4 top_k=1\n0\n1\n2\n0\n1\n2\n' >"$T/cycle.trace"
printf 'lazymoe-routing-trace v1 layers=1 experts=4 top_k=1 lookahead\n0\n1\n2\n0\n1\n2\n' >"$T/cycle.pred"

"$BIN" replay >"$T/out" 2>&1; rc=$?
check cli_replay_usage $([ $rc -eq 2 ] && grep -q "usage: lazymoe replay" "$T/out"; echo $?) "rc=$rc $(head -c 200 "$T/out")"

"$BIN" replay "$T/cycle.trace" --policy mru >"$T/out" 2>&1; rc=$?
check cli_replay_bad_policy $([ $rc -eq 2 ] && grep -q "unknown policy mru" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" replay "$T/nope.trace" >"$T/out" 2>&1; rc=$?
check cli_replay_missing_trace $([ $rc -eq 1 ] && grep -q "nope.trace" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" replay "$T/cycle.trace" --lookahead 1 >"$T/out" 2>&1; rc=$?
check cli_replay_lookahead_needs_trace $([ $rc -eq 2 ] && grep -q -- "--lookahead-trace" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" replay "$T/cycle.trace" --capacity 2 --skip 0 >"$T/out" 2>&1; rc=$?
check cli_replay_table $([ $rc -eq 0 ] && grep -Eq "lru .*hit rate +0.00% +\(0 of 6\)" "$T/out" \
    && grep -Eq "belady .*hit rate +33.33% +\(2 of 6\)" "$T/out" && [ "$(grep -c '^capacity' "$T/out")" -eq 6 ]; echo $?) \
    "rc=$rc $(cat "$T/out")"

"$BIN" replay "$T/cycle.trace" --capacity 1 --skip 0 --policy lcp --lookahead-trace "$T/cycle.pred" --lookahead 1 \
    --json >"$T/out" 2>&1; rc=$?
check cli_replay_lookahead_json $([ $rc -eq 0 ] && grep -q '"hits":6,"misses":0' "$T/out" \
    && grep -q '"prefetched":6,"prefetch_used":6' "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" replay "$T/cycle.trace" --capacity 2 --history "$T/cycle.trace" --pin 2 >"$T/out" 2>&1; rc=$?
check cli_replay_pin_too_many $([ $rc -eq 1 ] && grep -q "free slots" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

"$BIN" replay "$T/cycle.trace" --capacity 50% --first 6 >"$T/out" 2>&1; rc=$?
check cli_replay_first_past_end $([ $rc -eq 1 ] && grep -q "past the trace" "$T/out"; echo $?) "rc=$rc $(cat "$T/out")"

# The engine replays recorded predictions too: with the routing trace as its own lookahead
# trace (exact predictions), every decode step's experts were read ahead: a 100% hit rate
# at 8 of 32 slots, where lookahead 0 gets about half.
DEMO=models/demo-coder
head -41 "$DEMO/routing/heldout.trace" >"$T/demo.trace"
XDG_CACHE_HOME="$T/xdg" "$BIN" bench "$DEMO" --routing-trace "$T/demo.trace" --lookahead-trace "$T/demo.trace" \
    --lookahead 4 --lookahead-gate 0 --capacity 8 --prompt-tokens 1 --gen-tokens 24 --no-warm-start --json >"$T/out" 2>"$T/err"; rc=$?
check cli_bench_lookahead_trace $([ $rc -eq 0 ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); \
sys.exit(0 if d['hit_rate'] == 1.0 and d['prefetched'] > 0 and d['prefetch_used'] == d['prefetched'] else 1)" "$T/out"; echo $?) \
    "rc=$rc $(head -c 300 "$T/out") $(tail -2 "$T/err")"
# With the default gate each layer first measures its held-back predictions for 10 steps,
# then reads them (they are exact): fewer hits than ungated, every read used.
XDG_CACHE_HOME="$T/xdg" "$BIN" bench "$DEMO" --routing-trace "$T/demo.trace" --lookahead-trace "$T/demo.trace" \
    --lookahead 4 --capacity 8 --prompt-tokens 1 --gen-tokens 24 --no-warm-start --json >"$T/out" 2>"$T/err"; rc=$?
check cli_bench_lookahead_trace_gated $([ $rc -eq 0 ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); \
sys.exit(0 if d['hit_rate'] < 1.0 and d['prefetched'] > 0 and d['prefetch_used'] == d['prefetched'] else 1)" "$T/out"; echo $?) \
    "rc=$rc $(head -c 300 "$T/out") $(tail -2 "$T/err")"

"$BIN" bench "$DEMO" --lookahead-trace "$T/demo.trace" --lookahead 4 --capacity 8 --gen-tokens 1 --no-warm-start \
    >"$T/out" 2>&1; rc=$?
check cli_bench_lookahead_trace_needs_routing $([ $rc -ne 0 ] && grep -q "only with a routing trace" "$T/out"; echo $?) \
    "rc=$rc $(tail -2 "$T/out")"
