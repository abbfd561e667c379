#!/usr/bin/env python3
"""Writes a worst-case routing trace: every token picks top_k distinct experts uniformly at
random in every layer (no popularity, no reuse beyond chance), in lazymoe's trace format
(src/experts/trace.h), for `lazymoe bench --routing-trace`.

Usage: bench/uniform_trace.py OUT --layers 48 --experts 128 --top-k 8 [--tokens 64] [--seed 0]
"""
import argparse, random

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--layers", type=int, required=True)
ap.add_argument("--experts", type=int, required=True)
ap.add_argument("--top-k", type=int, required=True)
ap.add_argument("--tokens", type=int, default=64)
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
rng = random.Random(a.seed)
with open(a.out, "w") as f:
    f.write(f"lazymoe-routing-trace v1 layers={a.layers} experts={a.experts} top_k={a.top_k}\n")
    for _ in range(a.tokens):
        f.write("|".join(" ".join(map(str, sorted(rng.sample(range(a.experts), a.top_k))))
                         for _ in range(a.layers)) + "\n")
