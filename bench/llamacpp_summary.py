"""Summary of a lazymoe-vs-llama.cpp log (bench/llamacpp_compare_gguf.sh,
bench/long_context_compare.sh): lines `ENGINE {json}` where ENGINE is lazymoe-X or
llamacpp-X (X the file: q4km, q40, mlx) and the json is `lazymoe bench --json` or
bench/llamacpp_bench.mjs output. Prints the best of the rounds per engine and file,
llama.cpp's best (the faster of its files, prefill and decode apart), the ratios of each
lazymoe run against that and against llama.cpp on the same file, and whether the greedy
ids agree. usage: python3 bench/llamacpp_summary.py LOG"""
import json
import re
import sys

best, ids, order = {}, {}, []
for line in open(sys.argv[1]):
    m = re.match(r"((?:lazymoe|llamacpp)-[a-z0-9]+) (\{.*)$", line)
    if not m:
        continue
    eng, d = m.group(1), json.loads(m.group(2))
    if eng not in best:
        order.append(eng)
        best[eng] = {"prefill": 0.0, "decode": 0.0}
    best[eng]["prefill"] = max(best[eng]["prefill"], d["prefill_tok_s"])
    best[eng]["decode"] = max(best[eng]["decode"], d["decode_tok_s"])
    ids[eng] = d["generated_ids"]
print("best of rounds          prefill tok/s   decode tok/s")
for eng in order:
    print(f"{eng:22s}  {best[eng]['prefill']:13.2f}   {best[eng]['decode']:12.2f}")
llc = [e for e in order if e.startswith("llamacpp-")]
if not llc:
    sys.exit(0)
lcb = {k: max(best[e][k] for e in llc) for k in ("prefill", "decode")}
print(f"llama.cpp best: prefill {lcb['prefill']:.2f}, decode {lcb['decode']:.2f}")
for eng in (e for e in order if e.startswith("lazymoe-")):
    r, same = best[eng], "llamacpp-" + eng.split("-", 1)[1]
    s = f"ratio {eng}: vs llama.cpp best prefill {r['prefill'] / lcb['prefill']:.2f}x decode {r['decode'] / lcb['decode']:.2f}x"
    if same in best:
        s += f"; vs llama.cpp on the same file prefill {r['prefill'] / best[same]['prefill']:.2f}x decode {r['decode'] / best[same]['decode']:.2f}x"
    print(s)
for eng in (e for e in order if e.startswith("lazymoe-")):
    other = "llamacpp-" + eng.split("-", 1)[1]
    if other in ids:
        x, y = ids[eng], ids[other]
        same = sum(p == q for p, q in zip(x, y))
        print(f"greedy ids {eng} vs {other}: {same}/{len(x)} equal")
