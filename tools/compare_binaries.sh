#!/usr/bin/env bash
# Compares two lazymoe binaries on every golden fixture and the demo model: the
# logits (.npy bytes) and greedy ids must be identical. Used to prove that a
# refactoring changed no number:
#   tools/compare_binaries.sh OLD_BINARY NEW_BINARY
# Each case runs resident and lazy (capacity 1 and top_k), f16/f32/int8 KV, and
# int8 activations on quantized models, with 1 and 2 threads. The activation
# precision is always named (--act-bits 32, the reference, or 8), so binaries from
# before and after int8 became the default for quantized models compare alike.
set -u
cd "$(dirname "$0")/.."
old=$1; new=$2
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export XDG_CACHE_HOME="$work/xdg"
pass=0; fail=0
compare() { # label, args...
    local label=$1; shift
    "$old" "$@" --out "$work/a.npy" >"$work/a.log" 2>&1; local ra=$?
    "$new" "$@" --out "$work/b.npy" >"$work/b.log" 2>&1; local rb=$?
    if [ $ra -ne 0 ] || [ $rb -ne 0 ]; then
        echo "FAIL $label: exit $ra / $rb"; tail -2 "$work/a.log" "$work/b.log"; fail=$((fail + 1)); return
    fi
    if cmp -s "$work/a.npy" "$work/b.npy"; then pass=$((pass + 1)); else echo "FAIL $label: logits differ"; fail=$((fail + 1)); fi
}
compare_ids() { # label, args...
    local label=$1; shift
    local a b
    a=$("$old" "$@" 2>/dev/null); b=$("$new" "$@" 2>/dev/null)
    if [ -n "$a" ] && [ "$a" = "$b" ]; then pass=$((pass + 1)); else echo "FAIL $label: ids differ or empty ($a | $b)"; fail=$((fail + 1)); fi
}
models=(tests/fixtures/golden/* models/demo-coder)
for m in "${models[@]}"; do
    [ -f "$m/config.json" ] || continue
    name=$(basename "$m")
    # A model the old binary cannot open at all (a family added since) has nothing to
    # compare against; it is named, not counted. The new binary must open it.
    if ! "$old" info "$m" >/dev/null 2>&1; then
        if "$new" info "$m" >/dev/null 2>&1; then echo "skip $name: the old binary cannot open it"; continue; fi
        echo "FAIL $name: neither binary opens it"; fail=$((fail + 1)); continue
    fi
    if [ -f "$m/input_ids.txt" ]; then ids=$(tr -s ' \n' ',' <"$m/input_ids.txt" | sed 's/^,//; s/,$//'); else ids=3,14,15,92,65,35,89,79; fi
    topk=$(sed -n 's/.*"num_experts_per_tok": *\([0-9]*\).*/\1/p' "$m/config.json" | head -1); topk=${topk:-2}
    for threads in 1 2; do
        compare "$name resident t$threads" logits "$m" --ids "$ids" --act-bits 32 --resident --threads $threads --no-warm-start
        compare "$name cap1 t$threads" logits "$m" --ids "$ids" --act-bits 32 --capacity 1 --threads $threads --no-warm-start
    done
    compare "$name cap$topk" logits "$m" --ids "$ids" --act-bits 32 --capacity "$topk" --no-warm-start
    for kv in 8 32; do compare "$name kv$kv" logits "$m" --ids "$ids" --act-bits 32 --kv-bits $kv --no-warm-start; done
    compare "$name act8" logits "$m" --ids "$ids" --act-bits 8 --no-warm-start
    compare_ids "$name greedy act8" run "$m" --ids "$ids" --act-bits 8 -n 16 --temp 0 --print-ids --no-warm-start
    compare_ids "$name greedy" run "$m" --ids "$ids" --act-bits 32 -n 16 --temp 0 --print-ids --no-warm-start
    compare_ids "$name greedy cap1" run "$m" --ids "$ids" --act-bits 32 -n 16 --temp 0 --print-ids --capacity 1 --no-warm-start
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
