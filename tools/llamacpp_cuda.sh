#!/usr/bin/env bash
# llama.cpp's CUDA build on the GPU box, for issue 18's speed comparison: built there
# from source for the benchmark only (nothing of it is vendored or committed), against
# lazymoe's CUDA backend on the SAME Q4_0 GGUF of a synthetic Qwen3-30B-A3B-shaped model.
#
# Here (this machine, which has the source that npm's node-llama-cpp ships as a git
# bundle, and nvcc):
#   tools/llamacpp_cuda.sh --pack
#     -> build/llamacpp-carry/llama-src.tar.xz: the parts of llama.cpp llama-bench and
#        llama-quantize need (ggml core, CPU and CUDA backends, src, common, vendor json
#        and httplib), about 1.7 MB; tools/ and vendor/ CMakeLists cut down to them;
#     -> build/llamacpp-carry/gguf_from_mlx: bench/gguf_from_mlx.c linked statically (the
#        box has no jansson headers), MLX 4-bit group 32 -> the same weights as Q4_1 GGUF.
# On the box (tools/device_session.sh jobs `llamacpp[:LAYERS]` and `llamacpu[:LAYERS]`,
# carry build/llamacpp-carry and the CUDA CLI of build/cuda-carry):
#   1. builds llama-bench and llama-quantize with CUDA (sm_90) in the background, once:
#      under build/llamacpp-work, which a later call on the same held machine reuses;
#   2. meanwhile: lazymoe synth (group 32) -> gguf_from_mlx -> Q4_1 GGUF (exact), then
#      llama-quantize -> Q4_0 (--pure, 4.5 bits) and Q4_K_M; Q4_1 deleted (disk);
#   3. MODE=cuda (job llamacpp): llama-bench -p 512 -n 64 with -ngl 99 and with
#      --n-cpu-moe (3/4 of the layers: 36 of 48, the issue's split; all threads), and
#      lazymoe bench on the same Q4_0 file: every expert in GPU memory, a GPU budget for
#      25% of them (uploads), and the same with --cpu-experts 4;
#      MODE=cpu (job llamacpu, issue 15): both engines on the CPU only with every thread,
#      default flags, on Q4_0, Q4_K_M (and lazymoe on the MLX directory);
#   4. summary.txt: tok/s of each and the ratios the issues ask for; with BASE_CLI=PATH,
#      that build's lazymoe runs too, alternating with CLI's, and their new/base ratios.
set -u
cd "$(dirname "$0")/.."
CARRY=build/llamacpp-carry

if [ "${1:-}" = "--pack" ]; then
    BUNDLE=tests/node/node_modules/node-llama-cpp/llama/gitRelease.bundle
    [ -f "$BUNDLE" ] || { echo "no $BUNDLE (npm ci in tests/node)"; exit 1; }
    T=$(mktemp -d)
    git clone -q "$BUNDLE" "$T/src" 2>/dev/null || { echo "cannot clone $BUNDLE"; exit 1; }
    S=$T/src D=$T/llama.cpp
    mkdir -p "$D/ggml/src" "$D/vendor" "$D/tools"
    cp -r "$S"/CMakeLists.txt "$S"/LICENSE "$S"/cmake "$S"/include "$S"/src "$S"/common "$D"/
    cp -r "$S"/ggml/CMakeLists.txt "$S"/ggml/cmake "$S"/ggml/include "$D"/ggml/
    cp "$S"/ggml/src/*.c "$S"/ggml/src/*.cpp "$S"/ggml/src/*.h "$S"/ggml/src/*.in "$S"/ggml/src/CMakeLists.txt "$D"/ggml/src/
    cp -r "$S"/ggml/src/ggml-cpu "$S"/ggml/src/ggml-cuda "$D"/ggml/src/
    cp -r "$S"/vendor/cpp-httplib "$S"/vendor/nlohmann "$S"/vendor/sheredom "$D"/vendor/
    cp -r "$S"/tools/llama-bench "$S"/tools/quantize "$D"/tools/
    printf 'add_subdirectory(nlohmann)\nadd_subdirectory(sheredom)\nif (LLAMA_BUILD_COMMON)\n    add_subdirectory(cpp-httplib)\nendif()\n' \
        >"$D/vendor/CMakeLists.txt"
    printf 'find_package(Threads REQUIRED)\nllama_add_compile_flags()\nadd_subdirectory(llama-bench)\nadd_subdirectory(quantize)\n' \
        >"$D/tools/CMakeLists.txt"
    (cd "$S" && git log -1 --format='%H %s' >"$D/SOURCE_COMMIT.txt")
    mkdir -p $CARRY
    tar cJf $CARRY/llama-src.tar.xz -C "$T" llama.cpp || exit 1
    rm -rf "$T"
    make -j2 build/liblazymoe.a >/dev/null || exit 1
    cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Iinclude -Isrc bench/gguf_from_mlx.c build/liblazymoe.a \
        -Wl,-Bstatic -ljansson -lpcre2-8 -Wl,-Bdynamic -lpthread -lm -o $CARRY/gguf_from_mlx && strip $CARRY/gguf_from_mlx || exit 1
    ls -la $CARRY
    echo "carry $CARRY (with build/cuda-carry) in the device call: bash tools/device_session.sh llamacpp"
    exit 0
fi

OUT=${OUT:-/tmp/llamacpp_out}
mkdir -p "$OUT"
CLI=${CLI:-build/cuda-carry/lazymoe}
[ -x build/cuda/lazymoe ] && CLI=build/cuda/lazymoe
LAYERS=${LAYERS:-48}
MODE=${MODE:-cuda}
# Under the repository's build/ (ignored): the device tool keeps it between calls on a
# machine still held, so a second call (MODE=cpu after MODE=cuda) reuses the llama.cpp
# build and the model files instead of making them again.
W=${LLAMACPP_WORK:-$PWD/build/llamacpp-work}
mkdir -p "$W"
export XDG_CACHE_HOME="$W/xdg"
start=$SECONDS
step() { echo "== $* ($((SECONDS - start)) s)" | tee -a "$OUT/summary.txt"; }
B=$W/build/bin
build_pid=""
if [ ! -x "$B/llama-bench" ] || [ ! -x "$B/llama-quantize" ]; then
    step "llama.cpp: configure and build (background)"
    # extracted once: a new extraction would touch every source and rebuild everything
    [ -d "$W/llama.cpp" ] || tar xJf $CARRY/llama-src.tar.xz -C "$W" || exit 1
    (
        cmake -S "$W/llama.cpp" -B "$W/build" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON \
            -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
            -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release &&
            cmake --build "$W/build" -j "$(nproc)" --target llama-bench llama-quantize
    ) >>"$OUT/llama_build.txt" 2>&1 &
    build_pid=$!
fi
tee -a "$OUT/summary.txt" <"$W/llama.cpp/SOURCE_COMMIT.txt"
df -h "$W" | tail -1 | tee -a "$OUT/summary.txt"

# the model: MLX 4-bit group 32 (kept: the CPU comparison runs lazymoe on it too) ->
# the same weights as an exact Q4_1 GGUF -> llama.cpp's quantizer makes Q4_0 (--pure:
# every matrix Q4_0, the CUDA comparison's file) and Q4_K_M (its default mix: Q4_K
# experts, Q6_K output); Q4_1 is deleted once both exist (disk)
M=$W/mlx-$LAYERS Q41=$W/q4_1-$LAYERS.gguf Q40=$W/q4_0-$LAYERS.gguf QK=$W/q4_k_m-$LAYERS.gguf
if [ ! -f "$M/config.json" ]; then
    step "model: synth $LAYERS layers (MLX 4-bit group 32)"
    "$CLI" synth --preset qwen3-30b-a3b --layers "$LAYERS" --bits 4 --group-size 32 --out "$M" --threads 8 --quiet \
        >"$OUT/synth.txt" 2>&1 || { echo "synth failed"; tail -3 "$OUT/synth.txt"; }
fi
if { [ ! -f "$Q40" ] || [ ! -f "$QK" ]; } && [ ! -f "$Q41" ]; then
    step "model: MLX -> Q4_1 GGUF"
    $CARRY/gguf_from_mlx "$M" "$Q41" >"$OUT/gguf_from_mlx.txt" 2>&1 || { echo "gguf_from_mlx failed"; tail -3 "$OUT/gguf_from_mlx.txt"; }
fi
if [ -n "$build_pid" ]; then
    step "waiting for the llama.cpp build"
    wait $build_pid
    echo "build exit $?" | tee -a "$OUT/summary.txt"
    tail -3 "$OUT/llama_build.txt"
fi
if [ -x "$B/llama-quantize" ] && [ -f "$Q41" ]; then
    if [ ! -f "$Q40" ]; then
        step "llama-quantize Q4_1 -> Q4_0 (--pure)"
        # --pure: the default puts output.weight in Q6_K, which the cuda backend has no
        # kernel for; the F32 routers and norms stay F32
        "$B/llama-quantize" --pure --allow-requantize "$Q41" "$Q40" q4_0 "$(nproc)" >"$OUT/quantize_q4_0.txt" 2>&1
        rc=$?
        # a failed run leaves a partial file that would pass for the model in a later call
        [ $rc = 0 ] || rm -f "$Q40"
        echo "quantize exit $rc" | tee -a "$OUT/summary.txt"
    fi
    if [ ! -f "$QK" ]; then
        step "llama-quantize Q4_1 -> Q4_K_M"
        "$B/llama-quantize" --allow-requantize "$Q41" "$QK" q4_k_m "$(nproc)" >"$OUT/quantize_q4_k_m.txt" 2>&1
        rc=$?
        [ $rc = 0 ] || rm -f "$QK"
        echo "quantize exit $rc" | tee -a "$OUT/summary.txt"
    fi
    [ -f "$Q40" ] && [ -f "$QK" ] && rm -f "$Q41"
fi
ls -la "$W" | tee -a "$OUT/summary.txt"

# summary.txt's ratios, mode cpu or cuda: llama-bench's JSON rows and lazymoe bench's
# JSON, read by one set of functions for both modes
summarize() {
    python3 - "$OUT" "$1" <<'EOF' | tee -a "$OUT/summary.txt"
import json, os, sys
d, mode = sys.argv[1], sys.argv[2]
def llama(name):
    try:
        rows = json.load(open(os.path.join(d, "llama_%s.json" % name)))
    except Exception:
        return None, None
    pp = [r["avg_ts"] for r in rows if r.get("n_prompt", 0) > 0]
    tg = [r["avg_ts"] for r in rows if r.get("n_gen", 0) > 0]
    return (pp[0] if pp else None), (tg[0] if tg else None)
def lz(name):
    try:
        j = json.load(open(os.path.join(d, "lazymoe_%s.json" % name)))
        return j["prefill_tok_s"], j["decode_tok_s"]
    except Exception:
        return None, None
ratio = lambda a, b: ("%.2fx" % (a / b)) if a and b else "-"
if mode == "cpu":
    ref = {f: llama("cpu_" + f) for f in ("q4_0", "q4_k_m")}
    for f, (p, t) in ref.items():
        print("llama.cpp CPU %-7s prefill %s decode %s" % (f, p, t))
    best_p = max([p for p, _ in ref.values() if p] or [0]) or None
    best_t = max([t for _, t in ref.values() if t] or [0]) or None
    for f in ("q4_0", "q4_k_m", "mlx"):
        p, t = lz("cpu_" + f)
        print("lazymoe CPU %-7s prefill %s decode %s  vs llama.cpp's best file: prefill %s decode %s" % (
            f, p, t, ratio(p, best_p), ratio(t, best_t)))
else:
    ref = {"ngl99": llama("ngl99"), "ncmoe36": llama("ncmoe36")}
    for k, (p, t) in ref.items():
        print("llama.cpp %-8s prefill %s decode %s" % (k, p, t))
    pairs = {"vram_all": "ngl99", "vram_25": "ncmoe36", "vram_25_cpu": "ncmoe36"}
    for name, against in pairs.items():
        p, t = lz(name)
        rp, rt = ref[against]
        print("lazymoe %-11s prefill %s decode %s  vs llama.cpp %s: prefill %s decode %s" % (
            name, p, t, against, ratio(p, rp), ratio(t, rt)))
    for name in ("vram_all", "vram_25"):
        bp, bt = lz("base_" + name)
        if bp is None:
            continue
        runs = [r for r in (lz(name), lz(name + "_again")) if r[0]]
        for p, t in runs:
            print("new/base %-8s prefill %s decode %s (base %s / %s)" % (name, ratio(p, bp), ratio(t, bt), bp, bt))
EOF
}

if [ "$MODE" = cpu ]; then
    # issue 15's 16-thread figures: both engines on the CPU only, every thread, default
    # flags; llama.cpp's CUDA build with no device visible is its CPU backend (built
    # -march=native, Q4_0 repacked as its prebuilt CPU library does)
    T=$(nproc)
    for f in q4_0 q4_k_m; do
        F=$W/$f-$LAYERS.gguf
        [ -f "$F" ] || continue
        step "llama-bench CPU $f, $T threads"
        CUDA_VISIBLE_DEVICES="" timeout 200 "$B/llama-bench" -m "$F" -ngl 0 -t "$T" -p 512 -n 64 -r 2 -o json \
            >"$OUT/llama_cpu_$f.json" 2>"$OUT/llama_cpu_$f.err"
    done
    for f in q4_0 q4_k_m mlx; do
        F=$W/$f-$LAYERS.gguf
        [ "$f" = mlx ] && F=$M
        [ -e "$F" ] || continue
        step "lazymoe CPU $f, $T threads, default flags"
        timeout 200 "$CLI" bench "$F" --backend cpu --threads "$T" --prompt-tokens 512 --gen-tokens 64 --no-warm-start \
            --json >"$OUT/lazymoe_cpu_$f.json" 2>"$OUT/lazymoe_cpu_$f.err"
    done
    summarize cpu
    step "done"
    exit 0
fi

if [ -x "$B/llama-bench" ] && [ -f "$Q40" ]; then
    step "llama-bench -ngl 99"
    timeout 150 "$B/llama-bench" -m "$Q40" -ngl 99 -p 512 -n 64 -r 2 -o json >"$OUT/llama_ngl99.json" 2>"$OUT/llama_ngl99.err"
    # experts of 3/4 of the layers on the CPU, as the issue's --n-cpu-moe 36 of 48
    step "llama-bench --n-cpu-moe $((LAYERS * 3 / 4))"
    timeout 200 "$B/llama-bench" -m "$Q40" -ngl 99 -ncmoe $((LAYERS * 3 / 4)) -t "$(nproc)" -p 512 -n 64 -r 1 -o json \
        >"$OUT/llama_ncmoe36.json" 2>"$OUT/llama_ncmoe36.err"
fi
lm() { # name, options...
    local name=$1
    shift
    step "lazymoe $name: $*"
    timeout 150 "$CLI" bench "$Q40" --backend cuda --ctx 4096 --prompt-tokens 512 --gen-tokens 64 --no-warm-start --json \
        -v "$@" >"$OUT/lazymoe_$name.json" 2>"$OUT/lazymoe_$name.err"
}
if [ -f "$Q40" ]; then
    lm vram_all
    B25=$(python3 -c "
import json
g = json.load(open('$OUT/lazymoe_vram_all.json'))['gpu']
print(int(g['resident_bytes'] + g['expert_bytes'] // 4))" 2>/dev/null)
    if [ -n "$B25" ]; then
        lm vram_25 --gpu-memory "$B25"
        lm vram_25_cpu --gpu-memory "$B25" --cpu-experts 4
    fi
    # BASE_CLI: an older build measured in the same call, alternating with this one, so a
    # change of the CUDA backend is a same-run ratio (summary's "new/base" lines)
    if [ -n "${BASE_CLI:-}" ] && [ -x "$BASE_CLI" ]; then
        CLI=$BASE_CLI lm base_vram_all
        lm vram_all_again
        if [ -n "$B25" ]; then
            CLI=$BASE_CLI lm base_vram_25 --gpu-memory "$B25"
            lm vram_25_again --gpu-memory "$B25"
        fi
    fi
fi
summarize cuda
step "done"
