#!/usr/bin/env bash
# The lazy-experts story end to end, on one machine in one run:
#   1. the disk's own direct-read bandwidth (fio, O_DIRECT random reads at QD 1 / 8 / 32),
#   2. `lazymoe bench` on a model uncapped, then inside a cgroup v1 memory cgroup (page
#      cache included) capped at 50% and 25% (or $CAPS percent) of the model's size,
# printing for each run decode tok/s, hit rate, routing statistics, peak RSS, and the
# achieved miss bandwidth as a fraction of the disk's bandwidth (the best of the queue
# depths fio measured in this run: the I/O bound); greedy ids of every capped run are
# compared with the uncapped run's.
#
# usage: [CAPS="50 25"] [BENCH_ARGS="--lookahead 8"] bench/lazy_story.sh MODEL_DIR [PROMPT_TOKENS] [GEN_TOKENS]
# CAPS lists the cgroup limits as percentages of the model's size (default 50 and 25);
# BENCH_ARGS are passed to every `lazymoe bench` run.
# Needs root (cgroup, drop_caches). Writes its JSON and a table to bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bench/lazy_story.sh MODEL_DIR [PROMPT_TOKENS] [GEN_TOKENS]}
PROMPT=${2:-64}
GEN=${3:-32}
CAPS=${CAPS:-"50 25"}
BENCH_ARGS=${BENCH_ARGS:-}
CAPPED=$(for c in $CAPS; do printf 'cap%s ' "$c"; done)
BIN=build/lazymoe
OUT=bench/out
mkdir -p "$OUT"
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio >/dev/null; }
[ -x "$BIN" ] || make -j"$(nproc)" >/dev/null

size=$(du -sb --apparent-size "$MODEL" | cut -f1)
echo "model $MODEL: $((size / 1000000)) MB on disk"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r)"

# 1. Disk bandwidth: random direct reads of 1 MiB over the model's largest file.
big=$(ls -S "$MODEL"/*.safetensors | head -1)
declare -A BW
for qd in 1 8 32; do
    BW[$qd]=$(fio --name=r --filename="$big" --rw=randread --bs=1M --direct=1 --ioengine=psync \
        --numjobs="$qd" --group_reporting --time_based --runtime=8 --readonly --output-format=terse 2>/dev/null |
        awk -F';' '{printf "%d", $7 * 1024}')
    echo "disk direct random 1 MiB reads at QD $qd: $((${BW[$qd]} / 1000000)) MB/s"
done
# The I/O bound is the best the disk did at any depth in this run.
BEST_QD=1
for qd in 8 32; do
    if [ "${BW[$qd]}" -gt "${BW[$BEST_QD]}" ]; then BEST_QD=$qd; fi
done
DISK=${BW[$BEST_QD]}
echo "I/O bound: $((DISK / 1000000)) MB/s, the best of the three, at QD $BEST_QD"

CGROOT=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
CG=/sys/fs/cgroup/memory${CGROOT%/}/lazymoe-bench-$$
run() { # name, limit bytes (0 = none)
    local name=$1 limit=$2
    sync; echo 3 > /proc/sys/vm/drop_caches
    if [ "$limit" -gt 0 ]; then
        mkdir -p "$CG"
        echo "$limit" > "$CG/memory.limit_in_bytes"
        bash -c "echo \$\$ > $CG/cgroup.procs; exec $BIN bench '$MODEL' --json --prompt-tokens $PROMPT --gen-tokens $GEN $BENCH_ARGS --trace-routing $OUT/trace-$name.txt" > "$OUT/$name.json"
        echo "$name: cgroup peak $(cat $CG/memory.max_usage_in_bytes) bytes, OOM kills $(awk '$1=="oom_kill"{print $2}' $CG/memory.oom_control)" >&2
        rmdir "$CG"
    else
        # shellcheck disable=SC2086
        $BIN bench "$MODEL" --json --prompt-tokens $PROMPT --gen-tokens $GEN $BENCH_ARGS --trace-routing "$OUT/trace-$name.txt" > "$OUT/$name.json"
    fi
}
run uncapped 0
for c in $CAPS; do run "cap$c" $((size * c / 100)); done

printf '\n%-9s %9s %9s %8s %9s %8s %8s %10s %11s %8s\n' run prefill decode hit% distinct reuse% top16% peakRSS_GB missBW_MB/s "%QD$BEST_QD"
for r in uncapped $CAPPED; do
    python3 - "$OUT/$r.json" "$DISK" "$r" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); disk = float(sys.argv[2]); r = j["routing"]
print("%-9s %9.2f %9.2f %8.1f %9.1f %8.1f %8.1f %10.2f %11.1f %8.1f" % (sys.argv[3], j["prefill_tok_s"], j["decode_tok_s"],
      100 * j["hit_rate"], r["decode_distinct_experts"], 100 * r["decode_consecutive_reuse"], 100 * r["decode_top16_share"],
      j["peak_rss_bytes"] / 1e9, j["decode_miss_bandwidth"] / 1e6, 100 * j["decode_miss_bandwidth"] / disk))
PY
done
# Lossless: every capped run must produce exactly the uncapped run's tokens and routing.
for r in $CAPPED; do
    same_ids=$(python3 -c "import json,sys; a=json.load(open('$OUT/uncapped.json')); b=json.load(open('$OUT/$r.json')); print(a['generated_ids']==b['generated_ids'])")
    same_routing=no; cmp -s "$OUT/trace-uncapped.txt" "$OUT/trace-$r.txt" && same_routing=yes
    echo "$r: generated ids identical to uncapped: $same_ids; routing identical: $same_routing"
done
