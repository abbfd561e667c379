#!/usr/bin/env bash
# Compares lazymoe binaries / options on one model in one session, runs interleaved
# (round 1: every variant in a random order, round 2: every variant, ...) so a noisy
# machine hits all of them alike; prints each run, then the median and best decode tok/s
# and decode miss bandwidth per variant (ratios against the first variant's median).
#
# usage: bench/ab_bench.sh MODEL ROUNDS VARIANTS_FILE -- BENCH_ARGS...
# VARIANTS_FILE: one variant per line, "label|binary|extra bench args".
# example:
#   printf 'main|/tmp/lazymoe-main|\nnew|build/lazymoe|\nnew-16|build/lazymoe|--io-threads 16\n' > /tmp/v.txt
#   bench/ab_bench.sh /work/synth30b-12 6 /tmp/v.txt -- --routing-trace /tmp/u12.txt --capacity 20 \
#       --prompt-tokens 8 --gen-tokens 16 --no-warm-start
set -euo pipefail
MODEL=${1:?usage: bench/ab_bench.sh MODEL ROUNDS VARIANTS_FILE -- BENCH_ARGS...}
ROUNDS=${2:?rounds}
VARIANTS=${3:?variants file}
shift 3
[ "${1:-}" = "--" ] && shift
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); model $MODEL; bench args: $*"
for round in $(seq 1 "$ROUNDS"); do
    while IFS='|' read -r label bin extra; do
        [ -z "$label" ] && continue
        # shellcheck disable=SC2086
        j=$("$bin" bench "$MODEL" --json "$@" $extra </dev/null)
        echo "$round|$label|$j" >>"$OUT"
        python3 -c 'import json,sys; j=json.loads(sys.argv[3]); print("round %s %-12s decode %6.2f tok/s  miss %7.1f MB/s  prefill %6.2f tok/s  hit %.3f  wait %.2f s  planned %.3f GB  peak RSS %.3f GB" % (sys.argv[1], sys.argv[2], j["decode_tok_s"], j["decode_miss_bandwidth"]/1e6, j["prefill_tok_s"], j["hit_rate"], j["wait_s"], j["planned_bytes"]/1e9, j["peak_rss_bytes"]/1e9))' "$round" "$label" "$j"
    done < <(grep -v '^$' "$VARIANTS" | shuf)
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" "$VARIANTS" <<'PY'
import json, statistics, sys
runs = {}
order = [line.split("|", 1)[0] for line in open(sys.argv[2]) if line.strip()]
for line in open(sys.argv[1]):
    r, label, j = line.split("|", 2)
    runs.setdefault(label, []).append(json.loads(j))
base = statistics.median(j["decode_tok_s"] for j in runs[order[0]])
print(f"{'variant':12} {'median tok/s':>12} {'best tok/s':>10} {'vs ' + order[0]:>10} {'median miss MB/s':>16} {'best miss MB/s':>14} {'ids':>10}")
ids0 = runs[order[0]][0]["generated_ids"]
for label in order:
    v = runs[label]
    med = statistics.median(j["decode_tok_s"] for j in v)
    same = all(j["generated_ids"] == ids0 for j in v)
    print(f"{label:12} {med:12.2f} {max(j['decode_tok_s'] for j in v):10.2f} {med / base:9.2f}x "
          f"{statistics.median(j['decode_miss_bandwidth'] for j in v) / 1e6:16.1f} {max(j['decode_miss_bandwidth'] for j in v) / 1e6:14.1f} "
          f"{'same' if same else 'DIFFER':>10}")
PY
