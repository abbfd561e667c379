#!/usr/bin/env bash
# GGUF files from the command line: a model directory written to GGUF
# (build/gguf_export) runs, chats, benches and prints logits exactly as the directory
# does, and Hugging Face cache ids with a quant tag (ORG/NAME-GGUF:Q4_K_M) resolve to
# the right file, split files included, with clear errors when the tag is missing,
# unknown or ambiguous.
set -u
cd "$(dirname "$0")/../.."
BIN=${LAZYMOE_BIN:-build/asan/lazymoe}
EXPORT=build/gguf_export
M=tests/fixtures/textgen
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
ok() { echo "ok $1"; }
bad() { echo "FAIL $1: $2"; fail=1; }

$EXPORT $M $T/m.gguf || { bad gguf_export "exit $?"; exit 1; }
G=$T/m.gguf
export XDG_CACHE_HOME=$T/xdg

a=$($BIN run $M "hello world, the experts" -n 16 --temp 0 --ignore-eos --no-stats 2>&1)
b=$($BIN run $G "hello world, the experts" -n 16 --temp 0 --ignore-eos --no-stats 2>&1)
[ -n "$a" ] && [ "$a" = "$b" ] && ok gguf_cli_run_text || bad gguf_cli_run_text "'$b' vs '$a'"
a=$(printf 'hi there\n/exit\n' | $BIN chat $M -n 8 --temp 0 2>/dev/null | tr -d '\0')
b=$(printf 'hi there\n/exit\n' | $BIN chat $G -n 8 --temp 0 2>/dev/null | tr -d '\0')
[ -n "$a" ] && [ "$a" = "$b" ] && ok gguf_cli_chat || bad gguf_cli_chat "'$b' vs '$a'"
gen_ids() { grep -o '"generated_ids": \[[^]]*\]'; }
a=$($BIN bench $M --prompt-tokens 5 --gen-tokens 4 --json 2>&1 | gen_ids)
b=$($BIN bench $G --prompt-tokens 5 --gen-tokens 4 --json 2>&1 | gen_ids)
[ -n "$a" ] && [ "$a" = "$b" ] && ok gguf_cli_bench || bad gguf_cli_bench "'$b' vs '$a'"
$BIN logits $M --ids 3,14,15,92 --out $T/a.npy >/dev/null 2>&1
$BIN logits $G --ids 3,14,15,92 --out $T/b.npy >/dev/null 2>&1
[ -s $T/a.npy ] && cmp -s $T/a.npy $T/b.npy && ok gguf_cli_logits || bad gguf_cli_logits "logits differ"
a=$($BIN info $G 2>&1)
[[ "$a" == *"architecture   qwen3_moe"* ]] && ok gguf_cli_info || bad gguf_cli_info "$a"
[[ "$a" == *"quantization   none (F32)"* ]] && ok gguf_cli_info_float || bad gguf_cli_info_float "$a"
# A quantized GGUF: info names its tensors per stored type, which an independent
# reader of the file's tensor infos (below, Python) must count the same.
$EXPORT $M $T/q8.gguf q8_0 || bad gguf_export_q8_0 "exit $?"
a=$($BIN info $T/q8.gguf 2>&1)
want=$(python3 - "$T/q8.gguf" <<'EOF2'
import struct, sys
f = open(sys.argv[1], 'rb')
def u(fmt): return struct.unpack('<' + fmt, f.read(struct.calcsize(fmt)))[0]
def s(): return f.read(u('Q')).decode()
size = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
def skip(t):
    if t == 8: s()
    elif t == 9:
        et, n = u('I'), u('Q')
        for _ in range(n): skip(et)
    else: f.read(size[t])
assert f.read(4) == b'GGUF' and u('I') == 3
nt, nkv = u('Q'), u('Q')
for _ in range(nkv): s(); skip(u('I'))
names = {0: 'F32', 1: 'F16', 8: 'Q8_0', 30: 'BF16'}
count = {}
for _ in range(nt):
    s(); nd = u('I'); f.read(8 * nd); t = names[u('I')]; u('Q')
    count[t] = count.get(t, 0) + 1
print(', '.join('%s x %d' % kv for kv in sorted(count.items())))
EOF2
)
got=$(sed -n 's/^quantization   ggml blocks; tensors per type: //p' <<<"$a" | tr ',' '\n' | sed "s/^ //" | LC_ALL=C sort | paste -sd, | sed 's/,/, /g')
[ -n "$want" ] && [[ "$want" == *"Q8_0 x "* ]] && [ "$got" = "$want" ] && ok gguf_cli_info_tensor_types || bad gguf_cli_info_tensor_types "'$got' vs file '$want': $a"
a=$($BIN tokenize $M --text "hello world"); b=$($BIN tokenize $G --text "hello world")
[ -n "$a" ] && [ "$a" = "$b" ] && ok gguf_cli_tokenize || bad gguf_cli_tokenize "'$b' vs '$a'"

# A fake Hugging Face cache: one GGUF repo with several quants, one of them split in a folder.
S=$T/hf/hub/models--org--M-GGUF/snapshots/c0ffee
mkdir -p $S/Q6_K $T/hf/hub/models--org--M-GGUF/refs
echo c0ffee > $T/hf/hub/models--org--M-GGUF/refs/main
ln -s $G $S/M-Q4_K_M.gguf
ln -s $G $S/M-Q4_K_S.gguf
ln -s $G $S/mmproj-M-F16.gguf
printf 'x' > $S/Q6_K/M-Q6_K-00001-of-00002.gguf
printf 'x' > $S/Q6_K/M-Q6_K-00002-of-00002.gguf
hf() { HF_HOME=$T/hf HF_HUB_CACHE= "$@"; }
a=$(hf $BIN run org/M-GGUF:q4_k_m "hello world, the experts" -n 16 --temp 0 --ignore-eos --no-stats 2>&1)
b=$($BIN run $G "hello world, the experts" -n 16 --temp 0 --ignore-eos --no-stats 2>&1)
[ "$a" = "$b" ] && ok gguf_hf_quant_tag || bad gguf_hf_quant_tag "'$a' vs '$b'"
# the tag names a split model: part 1 is opened (these parts are not GGUF: the error names it)
a=$(hf $BIN info org/M-GGUF:Q6_K 2>&1)
[[ "$a" == *"Q6_K/M-Q6_K-00001-of-00002.gguf"* ]] && ok gguf_hf_split_part1 || bad gguf_hf_split_part1 "$a"
check_err() { # name, expected substring, command...
    local name=$1 want=$2; shift 2
    local out; out=$("$@" 2>&1)
    [[ "$out" == *"$want"* ]] && ok "$name" || bad "$name" "$out"
}
check_err gguf_hf_ambiguous "org/M-GGUF:M matches several GGUF files (" hf $BIN info org/M-GGUF:M
check_err gguf_hf_no_tag "name one quant, e.g. org/M-GGUF:Q4_K_M" hf $BIN info org/M-GGUF
check_err gguf_hf_unknown_tag "no GGUF file for quant 'Q2_K'" hf $BIN info org/M-GGUF:Q2_K
check_err gguf_hf_not_word "no GGUF file for quant 'Q4_K'" hf $BIN info org/M-GGUF:Q4_K
exit $fail
