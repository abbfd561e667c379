#!/usr/bin/env bash
# Decode speed with router lookahead under memory caps, on recorded routing: one uncapped
# (resident) run, then for each cap (percent of the model's size, cgroup v1 memory limit,
# page cache included) and each lookahead N, `lazymoe bench` replaying a routing trace and
# its lookahead predictions (--routing-trace / --lookahead-trace). Each run starts after
# dropping the page cache. Prints one line per run; JSON in bench/out/la-*.json.
#
# usage: [CAPS="50 25"] [LOOKAHEADS="0 4 8"] [BENCH_ARGS=...] bench/lookahead_caps.sh MODEL TRACE LOOKAHEAD_TRACE [PROMPT] [GEN]
# Needs root (cgroup, drop_caches).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bench/lookahead_caps.sh MODEL TRACE LOOKAHEAD_TRACE [PROMPT] [GEN]}
TRACE=${2:?trace}
PRED=${3:?lookahead trace}
PROMPT=${4:-1}
GEN=${5:-32}
CAPS=${CAPS:-"50 25"}
LOOKAHEADS=${LOOKAHEADS:-"0 4 8"}
BENCH_ARGS=${BENCH_ARGS:-}
BIN=${BIN:-build/lazymoe}
OUT=bench/out
mkdir -p "$OUT"
size=$(du -sb --apparent-size "$MODEL" | cut -f1)
echo "model $MODEL: $((size / 1000000)) MB; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
CGROOT=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
CG=/sys/fs/cgroup/memory${CGROOT%/}/lazymoe-la-$$
run() { # name, limit bytes (0 = none), extra args
    local name=$1 limit=$2
    shift 2
    sync; echo 3 > /proc/sys/vm/drop_caches
    # shellcheck disable=SC2086
    local cmd="$BIN bench '$MODEL' --json --no-warm-start --prompt-tokens $PROMPT --gen-tokens $GEN --routing-trace '$TRACE' $BENCH_ARGS $*"
    if [ "$limit" -gt 0 ]; then
        mkdir -p "$CG"
        echo "$limit" > "$CG/memory.limit_in_bytes"
        bash -c "echo \$\$ > $CG/cgroup.procs; exec $cmd" > "$OUT/la-$name.json"
        rmdir "$CG"
    else
        bash -c "exec $cmd" > "$OUT/la-$name.json"
    fi
    python3 - "$OUT/la-$name.json" "$name" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print("%-14s decode %6.2f tok/s  hit %5.1f%%  read early %6d used %6d  peak RSS %5.2f GB" % (sys.argv[2],
      j["decode_tok_s"], 100 * j["hit_rate"], j.get("prefetched", 0), j.get("prefetch_used", 0), j["peak_rss_bytes"] / 1e9))
PY
}
run uncapped 0
for c in $CAPS; do
    for la in $LOOKAHEADS; do
        run "cap$c-la$la" $((size * c / 100)) --lookahead "$la" --lookahead-trace "'$PRED'"
    done
done
echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
