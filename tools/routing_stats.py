#!/usr/bin/env python3
"""Per-layer routing statistics of a lazymoe routing trace (and of its lookahead trace).

For each MoE layer: the share of picks taken by the most used 8 / 16 / 32 experts, experts
never picked and under 1% of picks, the fraction of a token's experts the previous token
(or one of the 8 previous tokens) also used, and, with --lookahead F, the fraction of a
token's experts found among the first k lookahead predictions (recall@k). Prints a
Markdown table, then the averages over layers.

Usage: tools/routing_stats.py TRACE [--lookahead F] [--every N]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_training as lt  # noqa: E402


def layer_stats(picks, l, n_experts, top_k, pred=None):
    seq = [set(tok[l]) for tok in picks]
    counts = [0] * n_experts
    for s in seq:
        for e in s:
            counts[e] += 1
    total = sum(counts)
    if not total:
        return None
    ranked = sorted(counts, reverse=True)
    out = {f"top{n}": sum(ranked[:n]) / total for n in (8, 16, 32) if n < n_experts}
    out["never"] = sum(c == 0 for c in counts)
    out["under1pct"] = sum(c < 0.01 * total for c in counts)
    out["reuse1"] = sum(len(seq[t] & seq[t - 1]) for t in range(1, len(seq))) / sum(len(s) for s in seq[1:])
    w8 = 0
    for t in range(8, len(seq)):
        w8 += len(seq[t] & set().union(*seq[t - 8:t]))
    out["reuse8"] = w8 / sum(len(s) for s in seq[8:]) if len(seq) > 8 else float("nan")
    if pred is not None:
        for k in (top_k, 2 * top_k):
            if k <= len(pred[0][l]):
                hit = sum(len(seq[t] & set(pred[t][l][:k])) for t in range(len(seq)))
                out[f"recall{k}"] = hit / sum(len(s) for s in seq)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--lookahead")
    ap.add_argument("--every", type=int, default=1, help="print every N-th layer (averages use all)")
    a = ap.parse_args()
    f, picks = lt.read_trace(a.trace)
    pred = None
    if a.lookahead:
        pf, pred = lt.read_trace(a.lookahead)
        if pf["layers"] != f["layers"] or len(pred) < len(picks):
            raise SystemExit(f"{a.lookahead} does not match {a.trace}")
    L, E, K = f["layers"], f["experts"], f["top_k"]
    rows = [(l, layer_stats(picks, l, E, K, pred)) for l in range(L)]
    rows = [(l, r) for l, r in rows if r]
    keys = [k for k in rows[0][1]]
    pct = {k for k in keys if k not in ("never", "under1pct")}
    print(f"{a.trace}: {len(picks)} tokens, {L} layers, {E} experts, top-{K}\n")
    print("| layer | " + " | ".join(keys) + " |")
    print("|---:|" + "---:|" * len(keys))
    for l, r in rows:
        if l % a.every == 0 or l == L - 1:
            print(f"| {l} | " + " | ".join(f"{100 * r[k]:.1f}%" if k in pct else str(r[k]) for k in keys) + " |")
    mean = {k: sum(r[k] for _, r in rows) / len(rows) for k in keys}
    print(f"| mean | " + " | ".join(f"{100 * mean[k]:.1f}%" if k in pct else f"{mean[k]:.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
