#!/usr/bin/env bash
# gpt-oss-120b shapes (synth preset, released MXFP4 layout, fewer layers) resident and
# inside a cgroup v1 memory cgroup (page cache included) capped at PCT% of the model's
# size: `lazymoe bench` in both, greedy ids and routing of the capped run compared with
# the uncapped one, the cgroup's peak and OOM kills reported. One run of each, so
# ratios within the run are what to read on a shared machine.
#
# usage: bench/gpt_oss_cgroup.sh MODEL_DIR [PCT=50] [PROMPT_TOKENS=32] [GEN_TOKENS=16]
#   MODEL_DIR from: build/lazymoe synth --preset gpt-oss-120b --layers 4 --out MODEL_DIR
# BENCH_ARGS are passed to every `lazymoe bench` run. Needs root (cgroup, drop_caches).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bench/gpt_oss_cgroup.sh MODEL_DIR [PCT] [PROMPT_TOKENS] [GEN_TOKENS]}
PCT=${2:-50}
PROMPT=${3:-32}
GEN=${4:-16}
BENCH_ARGS=${BENCH_ARGS:-}
BIN=${LAZYMOE_BIN:-build/lazymoe}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
size=$(du -sb --apparent-size "$MODEL" | cut -f1)
limit=$((size * PCT / 100))
echo "model $MODEL: $size bytes; cgroup limit $limit ($PCT%)"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, load $(cut -d' ' -f1-3 /proc/loadavg)"
bench() { # name, command prefix (env / incg), extra bench options
    local name=$1 pre=$2; shift 2
    sync; echo 3 > /proc/sys/vm/drop_caches
    # shellcheck disable=SC2086
    $pre "$BIN" bench "$MODEL" --json --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --no-warm-start \
        --trace-routing "$T/trace-$name.txt" "$@" $BENCH_ARGS > "$T/$name.json"
}
bench resident env --resident
bench resident_f32 env --resident --act-bits 32
CGROOT=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
CG=/sys/fs/cgroup/memory${CGROOT%/}/lazymoe-gptoss-$$
mkdir -p "$CG"
echo "$limit" > "$CG/memory.limit_in_bytes"
incg() { bash -c "echo \$\$ > $CG/cgroup.procs; exec \"\$@\"" incg "$@"; }
bench capped incg
echo "capped: cgroup peak $(cat "$CG/memory.max_usage_in_bytes") bytes, OOM kills $(awk '$1=="oom_kill"{print $2}' "$CG/memory.oom_control")"
rmdir "$CG"
printf '%-12s %8s %9s %9s %8s %10s %8s\n' run act_bits prefill decode hit% peakRSS_GB resident
for r in resident resident_f32 capped; do
    [ -s "$T/$r.json" ] || continue
    python3 - "$T/$r.json" "$r" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print("%-12s %8d %9.2f %9.2f %8.1f %10.2f %8s" % (sys.argv[2], j["act_bits"], j["prefill_tok_s"], j["decode_tok_s"],
      100 * j["hit_rate"], j["peak_rss_bytes"] / 1e9, j["resident"]))
PY
done
python3 - "$T/resident.json" "$T/capped.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
print("capped / resident: prefill %.2fx, decode %.2fx" % (b["prefill_tok_s"] / a["prefill_tok_s"], b["decode_tok_s"] / a["decode_tok_s"]))
same = a["generated_ids"] == b["generated_ids"]
print("capped ids identical to resident:", same, "(%d tokens); capped run resident: %s, capacity %d of %d experts" %
      (len(a["generated_ids"]), b["resident"], b["capacity"], b["experts"]))
sys.exit(0 if same and not b["resident"] else 1)
PY
if cmp -s "$T/trace-resident.txt" "$T/trace-capped.txt"; then echo "routing identical"; else echo "routing DIFFERS"; exit 1; fi
