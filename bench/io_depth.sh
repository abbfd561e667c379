#!/usr/bin/env bash
# Reader threads (queue depth) and request size for expert reads on this disk, in one run:
#   1. fio: O_DIRECT random 1 MiB reads at QD 1 / 8 / 32 (the disk's own figures),
#   2. build/expert_read_layout --batch: the expert cache's pattern (a decode step misses
#      M experts of a layer at once; their parts, split into requests of at most CHUNK KiB,
#      go to THREADS reader threads; the next step starts when all are read), for every
#      combination of M, THREADS and CHUNK below; plus, per M, the cache's read path before
#      it read into its slots (8 threads, whole parts, through a bounce buffer + memcpy).
# Each round runs fio and then every combination in a random order; the summary gives the
# median and the best of the rounds per combination (the disk and the CPUs are shared:
# single runs swing by 2x). Qwen3-30B-A3B 4-bit expert parts on a scratch file of GB
# gigabytes under DIR, deleted at the end.
#
# usage: [BATCHES="1 2 8"] [THREADS="8 16 32"] [CHUNKS="0 512 256"] [ROUNDS=5] [SECS=2]
#        bench/io_depth.sh DIR [GB=3]
# (CHUNK 0 = one request per part, as before chunking.) Output: bench/out/io-depth-*.txt
# (summary) and .txt.raw (every run).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: bench/io_depth.sh DIR [GB]}
GB=${2:-3}
BATCHES=${BATCHES:-"1 2 8"}
THREADS=${THREADS:-"8 16 32"}
CHUNKS=${CHUNKS:-"0 512 256"}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-2}
mkdir -p build bench/out
cc -O2 -o build/expert_read_layout bench/expert_read_layout.c -lpthread
SCRATCH="$DIR/lazymoe-io-depth-$$.bin"
trap 'rm -f "$SCRATCH"' EXIT
OUT=bench/out/io-depth-$(date +%Y%m%d-%H%M%S).txt
{
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg)"
df -h "$DIR" | tail -1
build/expert_read_layout "$SCRATCH" "$GB" 1 0.1 --batch 1 >/dev/null # creates the file
echo "scratch file $SCRATCH: $(($(stat -c %s "$SCRATCH") / 1000000)) MB"
combos=$(for m in $BATCHES; do
    echo "$m 8 0 --bounce"
    for t in $THREADS; do for c in $CHUNKS; do echo "$m $t $c"; done; done
done)
for round in $(seq 1 "$ROUNDS"); do
    echo "# round $round, load $(cut -d' ' -f1 /proc/loadavg)"
    for qd in 1 8 32; do
        bw=$(fio --name=r --filename="$SCRATCH" --rw=randread --bs=1M --direct=1 --ioengine=psync \
            --numjobs="$qd" --group_reporting --time_based --runtime=4 --readonly --output-format=terse 2>/dev/null |
            awk -F';' '{printf "%d", $7 * 1024}')
        echo "fio QD $qd: $((bw / 1000000)) MB/s"
    done
    echo "$combos" | shuf | while read -r m t c how; do
        # shellcheck disable=SC2086
        build/expert_read_layout "$SCRATCH" "$GB" "$t" "$SECS" --batch "$m" --chunk "$c" $how
    done
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT.raw"
python3 - "$OUT.raw" <<'PY' | tee "$OUT"
import re, statistics, sys
fio, runs = {}, {}
for line in open(sys.argv[1]):
    m = re.match(r"fio QD (\d+): (\d+) MB/s", line)
    if m: fio.setdefault(int(m[1]), []).append(int(m[2]))
    m = re.match(r"batch\s+(\d+) experts\s+chunk\s+(\d+) KiB\s+threads\s+(\d+)( bounce)?\s+([\d.]+) MB/s\s+([\d.]+) ms", line)
    if m: runs.setdefault((int(m[1]), int(m[3]), int(m[2]), bool(m[4])), []).append((float(m[5]), float(m[6])))
print(open(sys.argv[1]).readline().strip())
for qd, v in sorted(fio.items()):
    print(f"fio O_DIRECT random 1 MiB reads, QD {qd:2d}: median {statistics.median(v):6.0f} MB/s, best {max(v):6.0f} ({len(v)} runs)")
print(f"{'misses/step':>11} {'threads':>7} {'chunk KiB':>9} {'into':>6} {'median MB/s':>11} {'best MB/s':>9} {'median ms/step':>14}")
for (b, t, c, bn), v in sorted(runs.items(), key=lambda kv: (kv[0][0], not kv[0][3], kv[0][1], kv[0][2])):
    print(f"{b:11d} {t:7d} {c if c else 'whole':>9} {'bounce' if bn else 'slot':>6} {statistics.median(x[0] for x in v):11.0f} "
          f"{max(x[0] for x in v):9.0f} {statistics.median(x[1] for x in v):14.2f}")
PY
echo "runs: $OUT.raw"
