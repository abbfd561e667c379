# shellcheck shell=bash
# Sourced (not run) by bench/llamacpp_compare_gguf.sh and bench/long_context_compare.sh:
# the parts they share, so both use the same files under bench/out/ and either reuses
# what the other made.
#   - NM: node_modules holding node-llama-cpp 3.22.1 (tests/node's, else installed into
#     bench/out/llamacpp-npm), LIB: its prebuilt CPU libllama directory;
#   - builds build/lazymoe, build/gguf_from_mlx, build/bench_prompt_ids, build/llamacpp_quantize;
#   - MODEL (synthetic Qwen3-30B-A3B-shaped, MLX 4-bit group 32, LAYERS layers), Q41 (the
#     same weights as an exact Q4_1 GGUF), QK and Q40 (Q41 requantized by llama.cpp's own
#     quantizer to Q4_K_M and Q4_0), each made only when missing; FILES (default
#     "q4km q40") names the requantized files wanted, so a run on one of them skips the other;
#   - VOCAB, and IDS: the file of the PROMPT ids `lazymoe bench --seed 1` draws;
#   - machine_line: one line describing the machine and its load.
# Needs LAYERS, PROMPT and THREADS set, and the repository root as the working directory.
OUT=bench/out
mkdir -p "$OUT"
NM=tests/node/node_modules
if [ ! -d "$NM/node-llama-cpp" ]; then
    NM=$OUT/llamacpp-npm/node_modules
    if [ ! -d "$NM/node-llama-cpp" ]; then
        mkdir -p "$OUT/llamacpp-npm"
        (cd "$OUT/llamacpp-npm" && npm init -y >/dev/null &&
            npm install --no-audit --no-fund --ignore-scripts node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1 >/dev/null)
    fi
fi
LIB=$NM/@node-llama-cpp/linux-x64/bins/linux-x64
make -j2 build/lazymoe build/liblazymoe.a >/dev/null
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Iinclude -Isrc bench/gguf_from_mlx.c \
    build/liblazymoe.a -ljansson -lpcre2-8 -lpthread -lm -o build/gguf_from_mlx
cc -O2 -std=c11 -Wall -Wextra -Werror bench/bench_prompt_ids.c -o build/bench_prompt_ids
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror bench/llamacpp_quantize.c -ldl -o build/llamacpp_quantize
MODEL=$OUT/llc-synth$LAYERS
Q41=$OUT/llc-synth$LAYERS.gguf
QK=$OUT/llc-synth$LAYERS-Q4_K_M.gguf
Q40=$OUT/llc-synth$LAYERS-Q4_0.gguf
if [ ! -d "$MODEL" ]; then
    need=$((LAYERS * 1600 + 4000))
    free_mb=$(df -Pm "$OUT" | awk 'NR==2{print $4}')
    [ "$free_mb" -gt $((need + 4000)) ] || { echo "not enough disk for $LAYERS layers ($need MB)"; exit 1; }
    build/lazymoe synth --preset qwen3-30b-a3b --layers "$LAYERS" --bits 4 --group-size 32 --out "$MODEL" --quiet
fi
[ -f "$Q41" ] || build/gguf_from_mlx "$MODEL" "$Q41"
FILES=${FILES:-q4km q40}
case " $FILES " in *" q4km "*) [ -f "$QK" ] || build/llamacpp_quantize "$LIB" "$Q41" "$QK" q4_k_m "$THREADS" 2>&1 | grep -E "model size|quant size|WARNING" || true ;; esac
case " $FILES " in *" q40 "*) [ -f "$Q40" ] || build/llamacpp_quantize "$LIB" "$Q41" "$Q40" q4_0 "$THREADS" 2>&1 | grep -E "model size|quant size|WARNING" || true ;; esac
VOCAB=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$MODEL/config.json")
IDS=$OUT/llc-prompt-$PROMPT.txt
build/bench_prompt_ids "$PROMPT" "$VOCAB" 1 > "$IDS"
machine_line() {
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM; load $(cut -d' ' -f1-3 /proc/loadavg)"
}
