#!/usr/bin/env python3
"""Synthetic routing traces shaped like a deep MoE's, with lookahead predictions.

A stand-in for real 48-layer traces until tools/train_routing_model.py's model exists:
its statistics are chosen, not learned, so results on it say how policies react to a
routing of this shape, not how a real model routes. Per layer, independently:

  - popularity: a Zipf-like weight per expert (exponent --zipf), re-drawn for a quarter of
    the experts at every document boundary (every --doc tokens on average), so popularity
    drifts with the text as on the demo model;
  - each of a token's top_k experts is, with probability --reuse, one of the previous
    token's; else with probability --window one of the 7 tokens before that; else drawn
    by popularity (distinct experts in every case);
  - the lookahead trace lists --predict experts best first: each true expert is among the
    first top_k with probability --recall, else placed after them or left out; the other
    places are filled by popularity.

Defaults give roughly the demo model's measured shape scaled to 128 experts (see
tools/routing_stats.py on the output). Two seeds give two independent traces: choose on
one, report on the other.

Usage: bench/synth_routing_trace.py OUT.trace OUT.lookahead.trace [--tokens 2048] [--seed 1]
"""
import argparse
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import lm_training as lt  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("trace")
ap.add_argument("lookahead")
ap.add_argument("--tokens", type=int, default=2048)
ap.add_argument("--layers", type=int, default=48)
ap.add_argument("--experts", type=int, default=128)
ap.add_argument("--top-k", type=int, default=8)
ap.add_argument("--predict", type=int, default=16)
ap.add_argument("--zipf", type=float, default=0.8)
ap.add_argument("--reuse", type=float, default=0.3)
ap.add_argument("--window", type=float, default=0.3)
ap.add_argument("--recall", type=float, default=0.85)
ap.add_argument("--doc", type=int, default=400)
ap.add_argument("--seed", type=int, default=1)
a = ap.parse_args()
rng = random.Random(a.seed)
E, K, L, P = a.experts, a.top_k, a.layers, a.predict


def draw(weights, exclude, n):
    """n distinct experts by weight, none of `exclude`."""
    out = []
    while len(out) < n:
        e = rng.choices(range(E), weights)[0]
        if e not in exclude and e not in out:
            out.append(e)
    return out


pop = []
for _ in range(L):
    ranks = list(range(E))
    rng.shuffle(ranks)
    pop.append([1.0 / (1 + ranks[e]) ** a.zipf for e in range(E)])
routes = [[None] * L for _ in range(a.tokens)]
preds = [[None] * L for _ in range(a.tokens)]
for t in range(a.tokens):
    new_doc = rng.random() < 1.0 / a.doc
    for l in range(L):
        if new_doc:
            for e in rng.sample(range(E), E // 4):
                pop[l][e] = 1.0 / (1 + rng.randrange(E)) ** a.zipf
        chosen = []
        prev = routes[t - 1][l] if t else []
        recent = sorted({e for s in range(max(0, t - 8), max(0, t - 1)) for e in routes[s][l]})
        for _ in range(K):
            u = rng.random()
            pool = prev if u < a.reuse else recent if u < a.reuse + a.window else None
            pool = [e for e in pool if e not in chosen] if pool else None
            if pool:
                chosen.append(rng.choice(pool))
            else:
                chosen += draw(pop[l], chosen, 1)
        routes[t][l] = chosen
        front = [e for e in chosen if rng.random() < a.recall]
        back = [e for e in chosen if e not in front and rng.random() < 0.5]
        fill = draw(pop[l], chosen, P - len(front) - len(back))
        head = front + fill[:K - len(front)]
        rng.shuffle(head)
        tail = back + fill[K - len(front):]
        rng.shuffle(tail)
        preds[t][l] = (head + tail)[:P]
lt.write_trace(a.trace, routes, L, E, K)
lt.write_trace(a.lookahead, preds, L, E, P, note="lookahead: synthetic (bench/synth_routing_trace.py)")
