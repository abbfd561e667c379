#!/usr/bin/env bash
# lazymoe next to llama.cpp on ONE gpt-oss GGUF (issue 17): gpt-oss-120b shapes with fewer
# layers (`lazymoe synth --preset gpt-oss-120b --layers N`, the released layout: MXFP4
# experts, bf16 elsewhere), written to GGUF by build/gguf_export the way llama.cpp's
# converter writes gpt-oss (experts as ggml MXFP4 blocks, bit for bit). Same prompt ids,
# lengths and threads on both sides, in one run:
#   1. resident: `lazymoe bench --resident` and llama.cpp (bench/llamacpp_bench.mjs, the
#      weights read into memory at load, no mmap);
#   2. capped: both inside a cgroup v1 memory cgroup (page cache included) of PCT% of the
#      file: lazymoe with lazy experts (its default), llama.cpp with mmap (its default;
#      the only way it runs a model larger than memory), cut off after CAP_TIMEOUT s.
# Prints each run's prefill and decode tok/s, the ratios lazymoe / llama.cpp, capped /
# resident, and whether the greedy ids agree. One run of each, so read the ratios within
# the run on a shared machine.
#
# LLAMACPP_PCTS="75 100" adds llama.cpp capped runs at those percentages of the file (to
# find the cap under which it still runs), each reported like the PCT one.
#
# usage: bench/gpt_oss_llamacpp.sh MODEL.gguf [PCT=50] [PROMPT=32] [GEN=16] [THREADS=2]
#   MODEL.gguf from: build/lazymoe synth --preset gpt-oss-120b --layers 4 --out DIR &&
#                    build/gguf_export DIR MODEL.gguf bf16 --placeholder-vocab
# Needs root (cgroup, drop_caches) and node-llama-cpp in tests/node (npm ci there).
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF=${1:?usage: bench/gpt_oss_llamacpp.sh MODEL.gguf [PCT] [PROMPT] [GEN] [THREADS]}
PCT=${2:-50}
PROMPT=${3:-32}
GEN=${4:-16}
THREADS=${5:-2}
CAP_TIMEOUT=${CAP_TIMEOUT:-900}
NM=tests/node/node_modules
[ -d "$NM/node-llama-cpp" ] || { echo "node-llama-cpp missing: npm ci in tests/node"; exit 1; }
make -j2 build/lazymoe >/dev/null
cc -O2 -std=c11 -Wall -Wextra -Werror bench/bench_prompt_ids.c -o build/bench_prompt_ids
T=$(mktemp -d)
CG=
cleanup() { [ -n "$CG" ] && [ -d "$CG" ] && rmdir "$CG" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
VOCAB=$(build/lazymoe info "$GGUF" | sed -n 's/.*vocab \([0-9]*\).*/\1/p')
build/bench_prompt_ids "$PROMPT" "$VOCAB" 1 > "$T/ids.txt"
size=$(stat -c %s "$GGUF")
limit=$((size * PCT / 100))
echo "model $GGUF: $size bytes; cgroup limit $limit ($PCT%); prompt $PROMPT, gen $GEN, threads $THREADS"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM, load $(cut -d' ' -f1-3 /proc/loadavg)"
build/lazymoe info "$GGUF" | sed -n 's/^quantization   /tensor types: /p'
CGROOT=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
CG=/sys/fs/cgroup/memory${CGROOT%/}/lazymoe-gptoss-llc-$$
mkdir -p "$CG"
echo "$limit" > "$CG/memory.limit_in_bytes"
incg() { bash -c "echo \$\$ > $CG/cgroup.procs; exec \"\$@\"" incg "$@"; }
fresh() { sync; echo 3 > /proc/sys/vm/drop_caches; }
lm() { # name, prefix, extra options
    local name=$1 pre=$2; shift 2
    fresh
    echo "run $name (load $(cut -d' ' -f1 /proc/loadavg))"
    # shellcheck disable=SC2086
    $pre build/lazymoe bench "$GGUF" --json --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --threads "$THREADS" \
        --seed 1 --no-warm-start "$@" > "$T/$name.json"
}
llc() { # name, prefix, [mmap]
    local name=$1 pre=$2
    fresh
    echo "run $name (load $(cut -d' ' -f1 /proc/loadavg))"
    # shellcheck disable=SC2086
    $pre timeout "$CAP_TIMEOUT" node bench/llamacpp_bench.mjs "$NM" "$GGUF" "$T/ids.txt" "$GEN" "$THREADS" 1 ${3:-} \
        > "$T/$name.json" || echo "$name: exit $? (124 = cut off after $CAP_TIMEOUT s)"
}
lm lazymoe_resident env --resident
llc llamacpp_resident env
echo 0 > "$CG/memory.max_usage_in_bytes"
lm lazymoe_capped incg
echo "lazymoe capped: cgroup peak $(cat "$CG/memory.max_usage_in_bytes") bytes, OOM kills $(awk '$1=="oom_kill"{print $2}' "$CG/memory.oom_control")"
echo 0 > "$CG/memory.max_usage_in_bytes"
llc llamacpp_capped incg mmap
echo "llama.cpp capped: cgroup peak $(cat "$CG/memory.max_usage_in_bytes") bytes, OOM kills $(awk '$1=="oom_kill"{print $2}' "$CG/memory.oom_control")"
for p in ${LLAMACPP_PCTS:-}; do
    echo $((size * p / 100)) > "$CG/memory.limit_in_bytes"
    echo 0 > "$CG/memory.max_usage_in_bytes"
    kills=$(awk '$1=="oom_kill"{print $2}' "$CG/memory.oom_control")
    llc "llamacpp_capped_$p" incg mmap
    echo "llama.cpp capped at $p% ($((size * p / 100)) bytes): cgroup peak $(cat "$CG/memory.max_usage_in_bytes") bytes," \
         "OOM kills $(( $(awk '$1=="oom_kill"{print $2}' "$CG/memory.oom_control") - kills ))"
done
python3 - "$T" <<'PY'
import json, os, sys
t = sys.argv[1]
runs = {}
more = sorted(f[:-5] for f in os.listdir(t) if f.startswith("llamacpp_capped_") and f.endswith(".json"))
for n in ["lazymoe_resident", "llamacpp_resident", "lazymoe_capped", "llamacpp_capped"] + more:
    p = os.path.join(t, n + ".json")
    if os.path.exists(p) and os.path.getsize(p) > 0:
        runs[n] = json.loads(open(p).read().strip().splitlines()[-1])
print("%-18s %10s %10s" % ("run", "prefill", "decode"))
for n, j in runs.items():
    extra = ""
    if n.startswith("lazymoe"):
        extra = "  hit %.1f%%, resident %s, peak RSS %.2f GB" % (100 * j["hit_rate"], j["resident"], j["peak_rss_bytes"] / 1e9)
    print("%-18s %10.2f %10.2f%s" % (n, j["prefill_tok_s"], j["decode_tok_s"], extra))
def ratio(a, b, what):
    if a in runs and b in runs:
        print("%s / %s: prefill %.2fx, decode %.2fx" % (a, b, runs[a]["prefill_tok_s"] / runs[b]["prefill_tok_s"],
              runs[a]["decode_tok_s"] / runs[b]["decode_tok_s"]))
ratio("lazymoe_resident", "llamacpp_resident", "")
ratio("lazymoe_capped", "llamacpp_capped", "")
ratio("lazymoe_capped", "lazymoe_resident", "")
ratio("llamacpp_capped", "llamacpp_resident", "")
for n in more:
    ratio("lazymoe_capped", n, "")
    ratio(n, "llamacpp_resident", "")
ref = runs["lazymoe_resident"]["generated_ids"]
for n, j in runs.items():
    if n != "lazymoe_resident":
        same = sum(a == b for a, b in zip(ref, j["generated_ids"]))
        print("greedy ids %s vs lazymoe_resident: %d/%d equal" % (n, same, len(ref)))
ok = runs.get("lazymoe_capped", {}).get("generated_ids") == ref and not runs["lazymoe_capped"]["resident"]
print("lazymoe capped ids identical to resident, experts lazy:", ok)
sys.exit(0 if ok else 1)
PY
