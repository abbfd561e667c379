#!/usr/bin/env bash
# The CUDA backend's expert tiers at the issue's shapes, on the GPU box (issue 18):
# a synthetic Qwen3-30B-A3B-shaped MLX 4-bit model (48 layers unless LAYERS says
# otherwise) made there with `lazymoe synth`, then `lazymoe bench --json` (prompt 512,
# 64 generated tokens) with
#   vram_all    every expert in GPU memory (the default budget: what is free);
#   vram_all_host  the same with the routes downloaded every layer (LAZYMOE_CUDA_ROUTED=0);
#   vram_25     --gpu-memory for the resident part and 25% of the experts, the rest
#               uploaded from host RAM (all experts resident there);
#   vram_25_cpu the same, with decode steps computing the experts not in GPU memory
#               on the CPU (--cpu-experts 4; its ids may differ within tolerance);
#   ssd         the same GPU budget and host RAM capped too (--memory), so experts
#               come from the disk through the host cache;
#   cpu         the CPU backend (default flags), for reference;
# then two runs with LAZYMOE_CUDA_TIMING=1 (per-kernel GPU milliseconds, decode-heavy
# and prefill-only) and one with the reference kernels (LAZYMOE_CUDA_KERNELS=simple).
# The GPU runs compute every expert on the GPU, so their generated ids must be
# identical (checked here, "ids:" in summary.txt). A first look at speed on phase-1
# kernels, not the issue's benchmark (llama.cpp is not built here).
#   OUT=dir CLI=build/cuda-carry/lazymoe bash tools/cuda_bench.sh
# (tools/device_session.sh job `cudabench`; run after the `cuda` job, whose
# carried CLI it uses.)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/cuda_bench_out}
mkdir -p "$OUT"
CLI=${CLI:-build/cuda-carry/lazymoe}
[ -x build/cuda/lazymoe ] && CLI=build/cuda/lazymoe
LAYERS=${LAYERS:-48}
W=/tmp/lazymoe-bench
M=$W/q30b-$LAYERS
mkdir -p "$W"
export XDG_CACHE_HOME="$W/xdg"
start=$SECONDS
step() { echo "== $* ($((SECONDS - start)) s)" | tee -a "$OUT/summary.txt"; }

step "synth qwen3-30b-a3b, $LAYERS layers"
if [ ! -f "$M/config.json" ]; then
    timeout 240 "$CLI" synth --preset qwen3-30b-a3b --layers "$LAYERS" --out "$M" --threads "$(nproc)" --quiet \
        >"$OUT/synth.txt" 2>&1 || { echo "synth failed: $(tail -3 "$OUT/synth.txt")" | tee -a "$OUT/summary.txt"; exit 1; }
fi
du -sh "$M" | tee -a "$OUT/summary.txt"
"$CLI" info "$M" --backend "${BACKEND:-cuda}" >"$OUT/info.txt" 2>&1
cat "$OUT/info.txt"

bench() { # name, options...
    local name=$1
    shift
    step "bench $name: $*"
    timeout 120 "$CLI" bench "$M" --prompt-tokens 512 --gen-tokens 64 --no-warm-start --json -v "$@" \
        >"$OUT/bench_$name.json" 2>"$OUT/bench_$name.err"
    echo "exit $?" >>"$OUT/bench_$name.err"
    python3 - "$OUT/bench_$name.json" "$name" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
try:
    d = json.loads(open(sys.argv[1]).read())
except Exception as e:
    print(sys.argv[2], "no result:", e); sys.exit(0)
g = d.get("gpu", {})
print("%-11s prefill %8.1f tok/s  decode %7.2f tok/s  gpu capacity %s  uploads %s (%.2f GB, decode %.2f GB)  "
      "cpu experts %s  vram peak %.2f GB of %.2f GB  host hit rate %.3f  read %.2f GB" % (
      sys.argv[2], d["prefill_tok_s"], d["decode_tok_s"], g.get("capacity", "-"), g.get("uploads", "-"),
      g.get("upload_bytes", 0) / 1e9, g.get("decode_upload_bytes", 0) / 1e9, g.get("cpu_computed_experts", "-"),
      g.get("vram_peak_bytes", 0) / 1e9,
      g.get("budget", 0) / 1e9, d["hit_rate"], d["bytes_read"] / 1e9))
EOF
}

# BACKEND=cpu ALL_GPU_MEMORY=SIZE: the same runs with the tier in RAM (a check of
# this script where there is no GPU)
BE=${BACKEND:-cuda}
bench vram_all --backend "$BE" --ctx 4096 ${ALL_GPU_MEMORY:+--gpu-memory "$ALL_GPU_MEMORY"}
# the same with every layer routed on the host (LAZYMOE_CUDA_ROUTED=0: a download of the
# routes and a wait per layer), for the routed path's gain; its ids must be the same
[ "$BE" = cuda ] && LAZYMOE_CUDA_ROUTED=0 bench vram_all_host --backend "$BE" --ctx 4096
# the budget for the resident part and a quarter of the experts, from the plan above
B25=$(python3 -c "
import json
g = json.load(open('$OUT/bench_vram_all.json'))['gpu']
print(int(g['resident_bytes'] + g['expert_bytes'] // 4))" 2>/dev/null)
if [ -n "$B25" ]; then
    bench vram_25 --backend "$BE" --ctx 4096 --gpu-memory "$B25"
    # decode steps compute the experts not in GPU memory on the CPU (prefill uploads)
    bench vram_25_cpu --backend "$BE" --ctx 4096 --gpu-memory "$B25" --cpu-experts 4
    # host RAM: the non-expert weights and about a quarter of the experts
    M25=$(python3 -c "
import json
d = json.load(open('$OUT/bench_vram_all.json'))['gpu']
print(int(d['resident_bytes'] + d['expert_bytes'] // 4 + 2 * 2**30))")
    bench ssd --backend "$BE" --ctx 4096 --gpu-memory "$B25" --memory "$M25"
fi
bench cpu --backend cpu --ctx 4096
# A/B against a base build when one is carried (build/cuda-carry/lazymoe-base): the same
# all-in-VRAM bench alternated twice, and the demo model's logits on the GPU from both,
# which must be byte-identical when the change is meant to keep every number
BASE=build/cuda-carry/lazymoe-base
if [ "$BE" = cuda ] && [ -x "$BASE" ]; then
    for round in 1 2; do
        CLI=$BASE bench base_$round --backend cuda --ctx 4096
        bench new_$round --backend cuda --ctx 4096
    done
    ids=$(seq -s, 1 67 4100 | head -c 400 | sed 's/,[0-9]*$//')
    "$BASE" logits models/demo-coder --backend cuda --ids "$ids" --out "$OUT/ab_base.npy" >"$OUT/ab.err" 2>&1
    "$CLI" logits models/demo-coder --backend cuda --ids "$ids" --out "$OUT/ab_new.npy" >>"$OUT/ab.err" 2>&1
    if cmp -s "$OUT/ab_base.npy" "$OUT/ab_new.npy"; then r=identical; else r=DIFFERENT; fi
    echo "a/b demo-coder cuda logits ($(echo "$ids" | tr ',' '\n' | wc -l) ids): $r" | tee -a "$OUT/summary.txt"
    python3 - "$OUT" <<'PYEOF' | tee -a "$OUT/summary.txt"
import json, os, sys
d = sys.argv[1]
r = {}
for n in ("base_1", "new_1", "base_2", "new_2"):
    try: r[n] = json.load(open(os.path.join(d, "bench_%s.json" % n)))
    except Exception: pass
if len(r) == 4:
    for k in ("prefill_tok_s", "decode_tok_s"):
        b = [r["base_1"][k], r["base_2"][k]]; n = [r["new_1"][k], r["new_2"][k]]
        print("a/b %s: base %s new %s, new/base %.3f" % (k, b, n, max(n) / max(b)))
    print("a/b ids: %s" % ("identical" if all(v["generated_ids"] == r["base_1"]["generated_ids"] for v in r.values()) else "DIFFERENT"))
PYEOF
fi
# the CPU backend's decode by op at every thread and at 4 (LAZYMOE_OP_TIMING=1: wall
# time per call site of the forward pass), for its thread scaling (issue 15)
for t in "$(nproc)" 4; do
    step "op timing: cpu, $t threads, prompt 16, generated 64"
    LAZYMOE_OP_TIMING=1 timeout 120 "$CLI" bench "$M" --backend cpu --threads "$t" --ctx 4096 --prompt-tokens 16 \
        --gen-tokens 64 --no-warm-start --json >"$OUT/optiming_cpu_$t.json" 2>"$OUT/optiming_cpu_$t.err"
    python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
print('  prefill %.1f tok/s  decode %.2f tok/s' % (d['prefill_tok_s'], d['decode_tok_s']))" "$OUT/optiming_cpu_$t.json" \
        2>&1 | tee -a "$OUT/summary.txt"
    grep 'op timing' "$OUT/optiming_cpu_$t.err" | head -16 | tee -a "$OUT/summary.txt"
done

# Where the time goes (LAZYMOE_CUDA_TIMING=1: each kernel between two events, summed
# per kernel, and the host's waits for the GPU), for a decode-heavy run (16 prompt
# tokens, 64 generated) and a prefill-only one (512 prompt tokens, 1 generated); and
# the phase-1 reference kernels (LAZYMOE_CUDA_KERNELS=simple) for the speed-up.
if [ "$BE" = cuda ]; then
    timing() { # name, prompt tokens, generated tokens
        step "timing $1: prompt $2, generated $3"
        LAZYMOE_CUDA_TIMING=1 timeout 120 "$CLI" bench "$M" --backend cuda --ctx 4096 --prompt-tokens "$2" \
            --gen-tokens "$3" --no-warm-start --json >"$OUT/timing_$1.json" 2>"$OUT/timing_$1.err"
        python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
print('  prefill %.1f tok/s  decode %.2f tok/s' % (d['prefill_tok_s'], d['decode_tok_s']))" "$OUT/timing_$1.json" \
            2>&1 | tee -a "$OUT/summary.txt"
        grep 'cuda timing' "$OUT/timing_$1.err" | head -60 | tee -a "$OUT/summary.txt"
    }
    timing decode 16 64
    timing prefill 512 1
    step "bench simple_kernels: LAZYMOE_CUDA_KERNELS=simple, 128 prompt tokens, 16 generated"
    LAZYMOE_CUDA_KERNELS=simple timeout 120 "$CLI" bench "$M" --backend cuda --ctx 4096 --prompt-tokens 128 \
        --gen-tokens 16 --no-warm-start --json >"$OUT/bench_simple.json" 2>"$OUT/bench_simple.err"
    python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
print('simple      prefill %8.1f tok/s  decode %7.2f tok/s' % (d['prefill_tok_s'], d['decode_tok_s']))" \
        "$OUT/bench_simple.json" 2>&1 | tee -a "$OUT/summary.txt"
fi

python3 - "$OUT" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys, os
ids = {}
for n in ("vram_all", "vram_all_host", "vram_25", "ssd"):
    p = os.path.join(sys.argv[1], "bench_%s.json" % n)
    try: ids[n] = json.load(open(p))["generated_ids"]
    except Exception: pass
if len(ids) < 2: print("ids: fewer than two GPU runs finished"); sys.exit(0)
ref = ids.get("vram_all")
same = all(v == ref for v in ids.values())
print("ids: %s across %s" % ("identical" if same else "DIFFERENT", ", ".join(ids)))
EOF
step "done"
