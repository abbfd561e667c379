#!/usr/bin/env bash
# Drives the lazymoe CLI the way the external checks do (logits / run / info),
# plus its error paths. Prints "ok NAME" / "FAIL NAME: why" per case.
set -u
cd "$(dirname "$0")/../.."
BIN=${LAZYMOE_BIN:-build/asan/lazymoe}
G=tests/fixtures/golden
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
ok() { echo "ok $1"; }
bad() { echo "FAIL $1: $2"; fail=1; }

# logits: .npy float32 [n, vocab]; identical bytes whatever the thread count.
ids=$(cat $G/qwen3_moe_f32/input_ids.txt)
n=$(echo "$ids" | tr ',' '\n' | wc -l)
if $BIN logits $G/qwen3_moe_f32 --ids "$ids" --out $T/a.npy --threads 1 &&
   $BIN logits $G/qwen3_moe_f32 --ids "$ids" --out $T/b.npy --threads 2; then
    hdr=$(head -c 128 $T/a.npy | tr -d '\0' | tr -cd '[:print:]')
    size=$(stat -c %s $T/a.npy)
    if [[ "$hdr" == *"'descr': '<f4'"* && "$hdr" == *"'shape': ($n, 320)"* ]] && [ "$size" -eq $((128 + n * 320 * 4)) ] && cmp -s $T/a.npy $T/b.npy; then
        ok cli_logits_npy
    else
        bad cli_logits_npy "header '$hdr' size $size"
    fi
else
    bad cli_logits_npy "command failed"
fi

# run --print-ids: greedy ids through the KV cache equal transformers' generate().
for c in qwen3_moe_f32 olmoe_f32 qwen3_moe_sharded_f32; do
    want=$(cat $G/$c/greedy.txt)
    got=$($BIN run $G/$c --ids "$(cat $G/$c/input_ids.txt)" -n "$(echo $want | wc -w)" --temp 0 --print-ids)
    [ "$got" = "$want" ] && ok "cli_run_greedy_$c" || bad "cli_run_greedy_$c" "got '$got' want '$want'"
done

# Stops after an EOS id (mixtral_window_f32's eos is 2) unless --ignore-eos.
out=$($BIN run $G/qwen3_moe_f32 --ids 1,2,3 -n 5 --temp 0.8 --seed 7 --print-ids)
out2=$($BIN run $G/qwen3_moe_f32 --ids 1,2,3 -n 5 --temp 0.8 --seed 7 --print-ids)
[ "$out" = "$out2" ] && [ "$(echo $out | wc -w)" -ge 1 ] && ok cli_run_sampling_seeded || bad cli_run_sampling_seeded "'$out' vs '$out2'"

# info
info=$($BIN info $G/qwen3_moe_f32)
if [[ "$info" == *"qwen3_moe"* && "$info" == *"3 (2 MoE, 1 dense)"* && "$info" == *"8 per MoE layer, top-2"* && "$info" == *"resident"* ]]; then
    ok cli_info
else
    bad cli_info "$info"
fi
json=$($BIN info $G/mixtral_f32 --json)
[[ "$json" == *'"experts": 4'* && "$json" == *'"bytes_per_expert": 55296'* ]] && ok cli_info_json || bad cli_info_json "$json"

# bench --json: the keys external checks read; a small cache really misses.
json=$($BIN bench $G/qwen3_moe_long_f32 --json --capacity 4 --prompt-tokens 40 --gen-tokens 6)
ok_keys=1
for k in prefill_tok_s decode_tok_s hit_rate bytes_read peak_rss_bytes; do [[ "$json" == *"\"$k\": "* ]] || ok_keys=0; done
if [ $ok_keys = 1 ] && [[ "$json" == *'"capacity": 4'* && "$json" != *'"bytes_read": 0,'* ]]; then ok cli_bench_json; else bad cli_bench_json "$json"; fi
# bench --repeat: the repeats' mean and spread added; the first run's routing and ids as
# without it (the repeats' tokens follow in the trace and are left out of its statistics).
one=$($BIN bench $G/qwen3_moe_long_f32 --json --prompt-tokens 20 --gen-tokens 4 2>/dev/null)
rep=$($BIN bench $G/qwen3_moe_long_f32 --json --prompt-tokens 20 --gen-tokens 4 --repeat 3 2>/dev/null)
strip() { echo "$1" | grep -o '"routing": {[^}]*}, .*"generated_ids": \[[^]]*\]' | sed 's/"repeats".*"generated_ids"/"generated_ids"/'; }
if [[ "$rep" == *'"repeats": 2, "prefill_tok_s_repeats": '* && "$rep" != *'"prefill_tok_s_repeats": 0.000'* ]] &&
   [ -n "$(strip "$one")" ] && [ "$(strip "$one")" = "$(strip "$rep")" ]; then
    ok cli_bench_repeat
else
    bad cli_bench_repeat "$one VS $rep"
fi
# bench replays a recorded routing trace; run --trace-routing records one.
$BIN run $G/qwen3_moe_long_f32 --ids 1,2,3,4,5 -n 6 --trace-routing $T/trace.txt --print-ids >/dev/null
lines=$(wc -l < $T/trace.txt)
replay=$($BIN bench $G/qwen3_moe_long_f32 --routing-trace $T/trace.txt --capacity 4 --prompt-tokens 5 --gen-tokens 5)
[ "$lines" -eq 11 ] && [[ "$replay" == *"distinct experts per layer"* ]] && ok cli_trace_record_and_replay || bad cli_trace_record_and_replay "lines=$lines $replay"

# Errors: clear message, non-zero status, no crash.
check_err() { # name, expected substring, command...
    local name=$1 want=$2; shift 2
    local msg
    msg=$("$@" 2>&1 >/dev/null); local rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [[ "$msg" == *"$want"* ]]; then ok "$name"; else bad "$name" "rc=$rc msg='$msg'"; fi
}
check_err cli_err_bad_ids "expected comma-separated" $BIN logits $G/olmoe_f32 --ids 1,x --out $T/c.npy
check_err cli_err_id_range "outside the vocabulary" $BIN logits $G/olmoe_f32 --ids 1,99999 --out $T/c.npy
check_err cli_err_no_model "cannot read" $BIN run /nonexistent --ids 1
check_err cli_err_unknown_opt "unknown option --bogus" $BIN run $G/olmoe_f32 --ids 1 --bogus
check_err cli_err_unknown_cmd "unknown command" $BIN frobnicate
check_err cli_err_out_dir "cannot create" $BIN logits $G/olmoe_f32 --ids 1 --out /nonexistent/dir/x.npy
check_err cli_err_budget "memory budget 0.00 GB is too small" $BIN logits $G/olmoe_f32 --ids 1 --out $T/c.npy --memory 1M
check_err cli_err_size "expects a size" $BIN run $G/olmoe_f32 --ids 1 --memory lots
check_err cli_err_trace "is for 2 layers x 16 experts top-4" $BIN bench $G/olmoe_f32 --routing-trace $T/trace.txt
check_err cli_err_kv_bits "--kv-bits expects 8, 16 or 32" $BIN run $G/olmoe_f32 --ids 1 --kv-bits 12
# bench's temporary routing trace goes to $TMPDIR and is gone afterwards, also when
# the model does not open; an unwritable TMPDIR is a clear error.
mkdir -p $T/tmpdir
TMPDIR=$T/tmpdir $BIN bench /nonexistent >/dev/null 2>&1
TMPDIR=$T/tmpdir $BIN bench $G/olmoe_f32 --prompt-tokens 3 --gen-tokens 2 >/dev/null 2>&1; rc=$?
left=$(ls -A $T/tmpdir)
[ $rc -eq 0 ] && [ -z "$left" ] && ok cli_bench_trace_cleaned || bad cli_bench_trace_cleaned "rc=$rc left: $left"
check_err cli_err_bench_tmpdir "set TMPDIR" env TMPDIR=/nonexistent/dir $BIN bench $G/olmoe_f32
# Each KV cache precision runs; f32 and f16 caches give different bytes, int8 differs again.
if $BIN logits $G/olmoe_f32 --ids 1,2,3,4,5 --out $T/k32.npy --kv-bits 32 &&
   $BIN logits $G/olmoe_f32 --ids 1,2,3,4,5 --out $T/k16.npy &&
   $BIN logits $G/olmoe_f32 --ids 1,2,3,4,5 --out $T/k8.npy --kv-bits 8 &&
   ! cmp -s $T/k32.npy $T/k16.npy && ! cmp -s $T/k16.npy $T/k8.npy; then
    ok cli_kv_bits
else
    bad cli_kv_bits "runs failed or the caches gave identical logits"
fi
check_err cli_err_help_unknown "no help for unknown command 'nope'" $BIN help nope
# `lazymoe help COMMAND` is that command's own --help.
if out=$($BIN help bench) && [[ "$out" == *"usage: lazymoe bench MODEL"* ]] &&
   [ "$out" = "$($BIN bench --help)" ]; then
    ok cli_help_command
else
    bad cli_help_command "help bench did not print bench's usage"
fi
check_err cli_err_act_bits "--act-bits expects 8 or 32" $BIN run $G/olmoe_f32 --ids 1 --act-bits 16
check_err cli_err_cpu_experts "--cpu-experts expects an integer" $BIN run $G/olmoe_f32 --ids 1 --cpu-experts some
# --cpu-experts auto on the CPU backend with the GPU tier kept in RAM (--gpu-memory): the
# split's costs in bench's report, the same greedy ids as uploading every miss.
if a=$($BIN bench models/demo-coder --ctx 256 --gpu-memory 12M --cpu-experts auto --prompt-tokens 16 --gen-tokens 8 --json 2>/dev/null) &&
   u=$($BIN bench models/demo-coder --ctx 256 --gpu-memory 12M --prompt-tokens 16 --gen-tokens 8 --json 2>/dev/null) &&
   [[ "$a" == *'"miss_costs_us": {"upload": '* ]] && [[ "$u" != *miss_costs_us* ]] &&
   [ "$(echo "$a" | grep -o '"generated_ids": \[[^]]*\]')" = "$(echo "$u" | grep -o '"generated_ids": \[[^]]*\]')" ]; then
    ok cli_cpu_experts_auto
else
    bad cli_cpu_experts_auto "$a VS $u"
fi
# Int8 activations change the logits of a quantized model, and leave a float model's
# alone; they are the default for quantized weights (--act-bits 32 is the reference).
if $BIN logits models/demo-coder --ids 1,2,3,4,5 --out $T/a32.npy --act-bits 32 &&
   $BIN logits models/demo-coder --ids 1,2,3,4,5 --out $T/a8.npy --act-bits 8 &&
   $BIN logits models/demo-coder --ids 1,2,3,4,5 --out $T/adef.npy &&
   $BIN logits $G/olmoe_f32 --ids 1,2,3 --out $T/f32.npy --act-bits 32 &&
   $BIN logits $G/olmoe_f32 --ids 1,2,3 --out $T/f8.npy --act-bits 8 &&
   $BIN logits $G/olmoe_f32 --ids 1,2,3 --out $T/fdef.npy &&
   ! cmp -s $T/a32.npy $T/a8.npy && cmp -s $T/a8.npy $T/adef.npy && cmp -s $T/f32.npy $T/f8.npy &&
   cmp -s $T/f32.npy $T/fdef.npy; then
    ok cli_act_bits
else
    bad cli_act_bits "runs failed, or int8 activations did not apply to exactly the quantized model, or are not its default"
fi
# perplexity: the shipped demo model scores held-out Python far better than chance (a
# vocabulary of 4160 tokens), and the window size changes the result only a little.
D=models/demo-coder
head -c 3000 $D/heldout.txt >$T/ho.txt
if p1=$($BIN perplexity $D --text $T/ho.txt --json 2>$T/ppl.err) &&
   p2=$($BIN perplexity $D --text $T/ho.txt --window 256 --json 2>>$T/ppl.err); then
    v1=$(echo "$p1" | sed -n 's/.*"perplexity": \([0-9.]*\).*/\1/p')
    v2=$(echo "$p2" | sed -n 's/.*"perplexity": \([0-9.]*\).*/\1/p')
    if awk -v a="$v1" -v b="$v2" 'BEGIN { exit !(a > 1 && a < 40 && b > 1 && b < 60 && b >= a * 0.9) }'; then
        ok cli_perplexity
    else
        bad cli_perplexity "perplexities $v1 (1024) $v2 (256)"
    fi
else
    bad cli_perplexity "command failed: $(cat $T/ppl.err)"
fi
if out=$($BIN perplexity $D --text $T/missing.txt 2>&1); then
    bad cli_perplexity_missing_file "exit status 0"
elif [[ "$out" == *"cannot open"*"missing.txt"* ]]; then
    ok cli_perplexity_missing_file
else
    bad cli_perplexity_missing_file "message: $out"
fi

exit $fail
