#!/usr/bin/env bash
# A GGUF model inside a cgroup v1 memory cgroup (page cache included) capped at 50% of
# the file's size: greedy ids must equal the uncapped resident run's, with no OOM kill.
# The model is the demo model written as an F32 GGUF by build/gguf_export.
#
# usage: bench/gguf_cgroup.sh [PERCENT=50] [GEN=64]        (needs root: cgroup, drop_caches)
set -euo pipefail
cd "$(dirname "$0")/.."
PCT=${1:-50}
GEN=${2:-64}
make -j2 build/lazymoe build/gguf_export >/dev/null
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
G=$T/demo.gguf
build/gguf_export models/demo-coder "$G" f32
SIZE=$(stat -c %s "$G")
LIMIT=$((SIZE * PCT / 100))
IDS=$(build/lazymoe tokenize "$G" --text "def quicksort(arr):" | tr -d '[]')
build/lazymoe run "$G" --ids "$IDS" -n "$GEN" --temp 0 --print-ids --ignore-eos --ctx 256 --resident > "$T/uncapped.txt"
CGROOT=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
CG=/sys/fs/cgroup/memory${CGROOT%/}/lazymoe-gguf-$$
mkdir -p "$CG"
echo "$LIMIT" > "$CG/memory.limit_in_bytes"
sync
echo 3 > /proc/sys/vm/drop_caches
# --capacity: the automatic budget reserves 64 MiB of overhead, more than half of this
# small model; 8 of 32 experts per layer are cached
bash -c "echo \$\$ > $CG/cgroup.procs; exec build/lazymoe run '$G' --ids '$IDS' -n $GEN --temp 0 --print-ids --ignore-eos --ctx 256 --capacity 8" > "$T/capped.txt"
echo "file $SIZE bytes, cgroup limit $LIMIT ($PCT%), cgroup peak $(cat "$CG/memory.max_usage_in_bytes"), OOM kills $(awk '$1=="oom_kill"{print $2}' "$CG/memory.oom_control")"
rmdir "$CG"
if cmp -s "$T/uncapped.txt" "$T/capped.txt" && [ -s "$T/capped.txt" ]; then
    echo "greedy ids identical to the uncapped run ($GEN tokens)"
else
    echo "greedy ids DIFFER"; exit 1
fi
