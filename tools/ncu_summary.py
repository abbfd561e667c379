#!/usr/bin/env python3
"""Per-kernel summary of an ncu CSV (`ncu --csv --page raw --metrics ...`) of a decode run:
the kernels of each decode step (a step starts at k_embed), grouped by name, block and grid,
with their time, DRAM bytes read and bandwidth, largest first.

On the GPU box (bench/cuda/profile.sh does both):
  ncu --csv --page raw --cache-control none --clock-control none --launch-count 330 \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed \
      lazymoe bench MODEL --backend cuda --prompt-tokens 1 --gen-tokens 3 > ncu.csv
  python3 tools/ncu_summary.py ncu.csv
"""
import collections
import csv
import sys


def number(x):
    return float(x.replace(",", "")) if x else 0.0


def main(path):
    rows = list(csv.reader(open(path)))
    head = [k for k, r in enumerate(rows) if r and r[0] == "ID"]
    if not head:
        sys.exit("%s: no ncu table (was ncu run with --csv --page raw?)" % path)
    h = rows[head[0]]
    names = ["gpu__time_duration.sum", "dram__bytes_read.sum",
             "sm__warps_active.avg.pct_of_peak_sustained_active",
             "dram__throughput.avg.pct_of_peak_sustained_elapsed"]
    missing = [n for n in names if n not in h]
    if missing:
        sys.exit("%s: metrics missing: %s" % (path, ", ".join(missing)))
    idx = [h.index(n) for n in names]
    kname, block, grid = h.index("Kernel Name"), h.index("Block Size"), h.index("Grid Size")
    steps, cur = [], []
    for r in rows[head[0] + 2:]:
        if len(r) < len(h):
            continue
        name = r[kname].split("(")[0]
        if name == "k_embed" and cur:
            steps.append(cur)
            cur = []
        cur.append((name, r[block], r[grid], [number(r[j]) for j in idx]))
    steps.append(cur)
    for s in steps[1:]:  # the first is the prompt's
        print("step: %d kernels, %.1f us" % (len(s), sum(k[3][0] for k in s) / 1e3))
        agg = collections.OrderedDict()
        for name, b, g, m in s:
            a = agg.setdefault((name, b, g), [0, 0.0, 0.0, 0.0, 0.0])
            a[0] += 1
            for i in range(4):
                a[i + 1] += m[i]
        for (name, b, g), a in sorted(agg.items(), key=lambda kv: -kv[1][1]):
            n = a[0]
            print("  %-30s %-12s %-15s x%-3d %8.1f us %8.2f MB %7.0f GB/s  warps %5.1f%%  dram %5.1f%%" % (
                name[:30], b, g, n, a[1] / n / 1e3, a[2] / n / 1e6, a[2] / a[1] if a[1] else 0, a[3] / n, a[4] / n))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: ncu_summary.py NCU.csv")
    main(sys.argv[1])
