#!/usr/bin/env bash
# Time to first token from process start, cold and warm (issue 20, item 4).
#
# Each run is a whole `lazymoe run MODEL --ids ... -n 1` process (start, weights, plan, the
# prompt's prefill with its expert reads, the first token, exit), timed from outside, with
# the page cache dropped before it and the process inside a cgroup v1 memory limit of CAP
# percent of the model (page cache included), so it is a machine smaller than the model
# whose disk holds nothing warm:
#   first      no popularity history yet (a model's first run)
#   (a 64-token run then records the history, as any earlier session would)
#   warm       the second run: the warm start reads the history's most used experts
#   no-warm    the same run with --no-warm-start (the history ignored)
# warm and no-warm alternate ROUNDS times. Prints one line per run.
#
# usage: [CAP=50] [ROUNDS=3] [PROMPT=8] [BIN=build/lazymoe] bench/warm_start_ttft.sh MODEL
# Each run is verbose (-v): its line ends with the resident load's time and rate.
# Needs root (cgroup, drop_caches).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bench/warm_start_ttft.sh MODEL}
CAP=${CAP:-50}
ROUNDS=${ROUNDS:-3}
PROMPT=${PROMPT:-8}
BIN=${BIN:-build/lazymoe}
size=$(du -sb --apparent-size "$MODEL" | cut -f1)
limit=$((size * CAP / 100))
ids=$(seq -s, 11 $((10 + PROMPT)))
XDG=$(mktemp -d)
export XDG_CACHE_HOME=$XDG # the popularity history of these runs only
CGROOT=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
CG=/sys/fs/cgroup/memory${CGROOT%/}/lazymoe-ttft-$$
mkdir -p "$CG"
echo "$limit" >"$CG/memory.limit_in_bytes"
trap 'rmdir "$CG" 2>/dev/null; rm -rf "$XDG"' EXIT
echo "model $MODEL: $((size / 1000000)) MB; cap $CAP% = $((limit / 1000000)) MB; prompt $PROMPT tokens;" \
    "$(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"

timed() { # name, extra args: prints seconds from exec to exit of a 1-token run
    local name=$1 t0 t1
    shift
    sync
    echo 3 >/proc/sys/vm/drop_caches
    t0=$(date +%s.%N)
    # shellcheck disable=SC2068
    bash -c "echo \$\$ > $CG/cgroup.procs; exec $BIN run '$MODEL' --ids $ids -n 1 --temp 0 --print-ids --ignore-eos -v $*" \
        >/tmp/ttft-$$.out 2>/tmp/ttft-$$.err
    t1=$(date +%s.%N)
    printf '%-8s %6.2f s to the first token (%s)  %s  %s\n' "$name" "$(echo "$t1 - $t0" | bc)" \
        "$(tr -d '\n' </tmp/ttft-$$.out)" "$(grep -o 'prompt .*' /tmp/ttft-$$.err | head -1)" "$(grep -o 'resident weights: .*' /tmp/ttft-$$.err | head -1)"
}

timed first
sync
echo 3 >/proc/sys/vm/drop_caches
bash -c "echo \$\$ > $CG/cgroup.procs; exec $BIN run '$MODEL' --ids $ids -n 64 --temp 0 --ignore-eos --print-ids" >/dev/null 2>&1
echo "history  recorded by a 64-token run ($(find "$XDG" -type f | wc -l) file(s) under XDG_CACHE_HOME)"
for _ in $(seq "$ROUNDS"); do
    timed warm
    timed no-warm --no-warm-start
done
rm -f /tmp/ttft-$$.out /tmp/ttft-$$.err
