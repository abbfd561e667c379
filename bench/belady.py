#!/usr/bin/env python3
"""Offline ceiling for expert-cache hit rates: Belady's MIN on a routing trace.

For each MoE layer separately, with `capacity` slots: the experts a token needs must all be
resident while it runs; on a miss, evict the cached expert (not needed by this token) whose
next use is furthest in the future. No online policy can hit more often. The first token is
excluded (bench reports decode hit rates after a 1-token prompt).

Usage: bench/belady.py TRACE [--tokens N] [--capacity C ...]
"""
import argparse

ap = argparse.ArgumentParser()
ap.add_argument("trace")
ap.add_argument("--tokens", type=int, default=3001)
ap.add_argument("--capacity", type=int, nargs="+", default=[4, 8, 12, 16])
a = ap.parse_args()
with open(a.trace) as f:
    header = f.readline().split()
    fields = dict(kv.split("=") for kv in header[2:])
    toks = [[set(map(int, g.split())) for g in line.rstrip("\n").split("|")] for line in f if line.strip()]
toks = toks[: a.tokens]
n_layers, n_experts = int(fields["layers"]), int(fields["experts"])
for cap in a.capacity:
    hits = total = 0
    for layer in range(n_layers):
        seq = [t[layer] for t in toks]
        if not any(seq):
            continue  # dense layer
        next_use = [None] * len(seq)  # next_use[t][e]: first index > t where e is used
        upcoming = {}
        for t in range(len(seq) - 1, -1, -1):
            next_use[t] = dict(upcoming)
            for e in seq[t]:
                upcoming[e] = t
        cache = set()
        for t, need in enumerate(seq):
            if t > 0:
                hits += len(need & cache)
                total += len(need)
            for e in need - cache:
                if len(cache) >= cap:
                    victim = max((c for c in cache if c not in need), key=lambda c: next_use[t].get(c, 1 << 60))
                    cache.remove(victim)
                cache.add(e)
    print(f"capacity {cap}: Belady MIN decode hit rate {100 * hits / total:.1f}% over {len(toks)} tokens")
