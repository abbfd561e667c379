#!/usr/bin/env bash
# Concurrent requests (serve --parallel 4) on a model larger than its memory: the server
# runs inside a cgroup v1 memory cgroup (page cache included) capped at PERCENT of the
# model's size, and bench/parallel_decode.mjs sends K = 1, 2, 4 requests at once, each
# decoding TOKENS forced tokens (every one evaluated by the model); it prints aggregate
# tok/s against one client and K requests' time against one request's, in the same run.
# lazymoe picks its memory budget from the cgroup limit. The page cache is dropped first.
#
# usage: bench/parallel_cgroup.sh MODEL [PERCENT=50] [TOKENS=32] [extra serve args...]
# Needs root (cgroup, drop_caches). Model: e.g. `lazymoe synth --preset qwen3-30b-a3b
# --layers 24 --out DIR` (Qwen3-30B-A3B shapes, 24 of 48 layers, 8.8 GB) with the demo
# model's tokenizer.json, tokenizer_config.json and chat_template.jinja copied in (the
# same Qwen vocabulary; the server needs a tokenizer and a template).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bench/parallel_cgroup.sh MODEL [PERCENT] [TOKENS] [serve args...]}
PCT=${2:-50}
TOKENS=${3:-32}
shift $(($# < 3 ? $# : 3))
make -j2 build/lazymoe >/dev/null
SIZE=$(du -sb --apparent-size "$MODEL" | cut -f1)
LIMIT=$((SIZE * PCT / 100))
CGROOT=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
CG=/sys/fs/cgroup/memory${CGROOT%/}/lazymoe-par-$$
T=$(mktemp -d)
cleanup() { rmdir "$CG" 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
mkdir -p "$CG"
echo "$LIMIT" > "$CG/memory.limit_in_bytes"
# the server (and only the server) joins the cgroup before it starts
cat > "$T/lazymoe-in-cgroup" <<WRAP
#!/usr/bin/env bash
echo \$\$ > $CG/cgroup.procs
exec $PWD/build/lazymoe "\$@"
WRAP
chmod +x "$T/lazymoe-in-cgroup"
echo "model $MODEL: $SIZE bytes; cgroup limit $LIMIT ($PCT%); $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
sync
echo 3 > /proc/sys/vm/drop_caches
LAZYMOE_BIN="$T/lazymoe-in-cgroup" node bench/parallel_decode.mjs "$MODEL" "$TOKENS" --ctx 1024 -v "$@"
echo "cgroup peak $(cat "$CG/memory.max_usage_in_bytes"), OOM kills $(awk '$1=="oom_kill"{print $2}' "$CG/memory.oom_control"); load average $(cut -d' ' -f1-3 /proc/loadavg)"
