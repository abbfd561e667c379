#!/usr/bin/env bash
# Text generation from the command line: run with a prompt (streamed text, stats on
# stderr), run --chat, the chat REPL driven through stdin, Hugging Face cache ids.
# The model is tests/fixtures/textgen (random weights, tiny tokenizer): the text is
# gibberish, so the checks compare mechanisms, not wording.
set -u
cd "$(dirname "$0")/../.."
BIN=${LAZYMOE_BIN:-build/asan/lazymoe}
M=tests/fixtures/textgen
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
ok() { echo "ok $1"; }
bad() { echo "FAIL $1: $2"; fail=1; }

# Greedy text equals the decode of the --ids path's greedy ids (EOS skipped as text).
ids=$($BIN tokenize $M --text "hello world, the experts" | tr -d '[]')
gen=$($BIN run $M --ids "$ids" -n 24 --temp 0 --print-ids --ignore-eos)
want=$(printf '{"id":1,"ids":[%s]}\n' "$(echo $gen | tr ' ' ',')" | $BIN tokenize $M --decode --skip-special --jsonl - |
       python3 -c 'import json,sys; sys.stdout.write(json.loads(sys.stdin.read())["text"])')
got=$($BIN run $M "hello world, the experts" -n 24 --temp 0 --ignore-eos 2>$T/stats)
if [ "$got" = "$want" ] && [ -n "$got" ]; then ok cli_run_text_greedy_equals_ids; else bad cli_run_text_greedy_equals_ids "got '$got' want '$want'"; fi
st=$(cat $T/stats)
np=$(echo "$ids" | tr ',' '\n' | wc -l)
[[ "$st" == *"prompt $np tokens"*"tok/s prefill"*"24 tokens"*"tok/s decode"*"peak memory"*"finish length"* ]] &&
    ok cli_run_stats_line || bad cli_run_stats_line "$st"

# Seeded sampling is reproducible; --no-stats silences stderr; the prompt may come from stdin.
a=$($BIN run $M "the quick" -n 16 --temp 0.9 --top-k 40 --top-p 0.95 --min-p 0.01 --repeat-penalty 1.1 \
    --presence-penalty 0.2 --frequency-penalty 0.1 --seed 5 --no-stats 2>$T/err)
b=$(echo -n "the quick" | $BIN run $M - -n 16 --temp 0.9 --top-k 40 --top-p 0.95 --min-p 0.01 --repeat-penalty 1.1 \
    --presence-penalty 0.2 --frequency-penalty 0.1 --seed 5 --no-stats)
[ "$a" = "$b" ] && [ -n "$a" ] && [ ! -s $T/err ] && ok cli_run_sampling_seeded_text || bad cli_run_sampling_seeded_text "'$a' vs '$b'"

# --stop: the answer ends before the stop string, which is not printed.
full=$($BIN run $M "hello" -n 30 --temp 0 --ignore-eos --no-stats)
stop=$(python3 -c 'import sys; t=sys.argv[1]; print(t[len(t)//2:len(t)//2+2], end="")' "$full")
cut=$($BIN run $M "hello" -n 30 --temp 0 --ignore-eos --no-stats --stop "$stop")
exp=$(python3 -c 'import sys; t,s=sys.argv[1],sys.argv[2]; print(t[:t.find(s)], end="")' "$full" "$stop")
[ "$cut" = "$exp" ] && ok cli_run_stop_string || bad cli_run_stop_string "stop '$stop': '$cut' vs '$exp'"

# --chat applies the template (the rendered prompt is longer than the raw one).
$BIN run $M "hello" --chat --system "Be brief." --no-think -n 4 --temp 0 >/dev/null 2>$T/chat || bad cli_run_chat "failed: $(cat $T/chat)"
$BIN run $M "hello" -n 4 --temp 0 >/dev/null 2>$T/raw
pc=$(sed -n 's/.*prompt \([0-9]*\) tokens.*/\1/p' $T/chat); pr=$(sed -n 's/.*prompt \([0-9]*\) tokens.*/\1/p' $T/raw)
[ -n "$pc" ] && [ -n "$pr" ] && [ "$pc" -gt $((pr + 10)) ] && ok cli_run_chat || bad cli_run_chat "$(cat $T/chat) vs $(cat $T/raw)"

# chat REPL through a pipe: turns keep the context (second turn reuses the first),
# /stats, /reset.
out=$(printf 'hello\n/stats\nthe quick brown fox\n/stats\n/reset\n/stats\n/exit\n' | $BIN chat $M -n 6 --temp 0 2>$T/err | tr -d '\0'; exit "${PIPESTATUS[1]}")
rc=$?
s1=$(echo "$out" | grep '^context' | sed -n 1p)
s2=$(echo "$out" | grep '^context' | sed -n 2p)
s3=$(echo "$out" | grep '^context' | sed -n 3p)
c2=$(echo "$s2" | sed -n 's/.*(\([0-9]*\) cached).*/\1/p')
p1=$(echo "$s1" | sed -n 's/.*prompt \([0-9]*\) tokens.*/\1/p')
if [ $rc -eq 0 ] && [[ "$s1" == *"(0 cached)"* ]] && [ -n "$c2" ] && [ "$c2" -ge "$p1" ] && [ "$s3" = "context 0 tokens" ] &&
   [[ "$out" == *"(conversation cleared)"* ]]; then
    ok cli_chat_repl_prefix_reuse
else
    bad cli_chat_repl_prefix_reuse "rc=$rc out='$out' err='$(cat $T/err)'"
fi
out=$(printf 'hi\n' | $BIN chat $M -n 3 --temp 0 2>&1 | tr -d '\0'; exit "${PIPESTATUS[1]}") && ok cli_chat_eof_exits || bad cli_chat_eof_exits "$out"

# Hugging Face cache: models--ORG--NAME/snapshots/<refs/main>/
H=$T/hf/hub/models--tiny-org--tiny-moe
mkdir -p $H/refs $H/snapshots/0123abc $H/snapshots/old
echo -n 0123abc >$H/refs/main
for f in config.json model.safetensors generation_config.json tokenizer.json tokenizer_config.json; do
    ln -s "$PWD/$M/$f" $H/snapshots/0123abc/$f
done
a=$(HF_HOME=$T/hf HF_HUB_CACHE= $BIN run tiny-org/tiny-moe "hello" -n 5 --temp 0 --no-stats 2>&1 | tr -d "\0")
b=$(HF_HUB_CACHE=$T/hf/hub $BIN run tiny-org/tiny-moe "hello" -n 5 --temp 0 --no-stats 2>&1 | tr -d "\0")
c=$($BIN run $M "hello" -n 5 --temp 0 --no-stats 2>&1 | tr -d "\0")
[ "$a" = "$c" ] && [ "$b" = "$c" ] && ok cli_hf_cache_repo_id || bad cli_hf_cache_repo_id "'$a' / '$b' vs '$c'"
# Every command that takes MODEL resolves a repo id through the same parser and open
# as run does: bench, info, logits, perplexity and serve answer as they do for the directory.
hf() { HF_HOME=$T/hf HF_HUB_CACHE= XDG_CACHE_HOME=$T/xdg "$@"; }
gen_ids() { grep -o '"generated_ids": \[[^]]*\]'; }
a=$(hf $BIN bench tiny-org/tiny-moe --prompt-tokens 5 --gen-tokens 4 --json 2>&1 | gen_ids)
b=$(XDG_CACHE_HOME=$T/xdg $BIN bench $M --prompt-tokens 5 --gen-tokens 4 --json 2>&1 | gen_ids)
[ -n "$a" ] && [ "$a" = "$b" ] && ok cli_hf_cache_bench || bad cli_hf_cache_bench "'$a' vs '$b'"
a=$(hf $BIN info tiny-org/tiny-moe --json 2>&1); b=$($BIN info $M --json 2>&1)
[[ "$a" == *'"experts"'* ]] && [ "$a" = "$b" ] && ok cli_hf_cache_info || bad cli_hf_cache_info "'$a' vs '$b'"
hf $BIN logits tiny-org/tiny-moe --ids 3,14,15 --out $T/hf.npy >/dev/null 2>&1
XDG_CACHE_HOME=$T/xdg $BIN logits $M --ids 3,14,15 --out $T/dir.npy >/dev/null 2>&1
[ -s $T/hf.npy ] && cmp -s $T/hf.npy $T/dir.npy && ok cli_hf_cache_logits || bad cli_hf_cache_logits "logits differ or missing"
printf 'the quick brown fox jumps over the lazy dog, again and again.\n' >$T/ppl.txt
a=$(hf $BIN perplexity tiny-org/tiny-moe --text $T/ppl.txt --json 2>&1)
b=$(XDG_CACHE_HOME=$T/xdg $BIN perplexity $M --text $T/ppl.txt --json 2>&1)
[[ "$a" == *'"perplexity"'* ]] && [ "$a" = "$b" ] && ok cli_hf_cache_perplexity || bad cli_hf_cache_perplexity "'$a' vs '$b'"
# exec: $! must be the server itself (a backgrounded shell function would leave it running).
(HF_HOME=$T/hf HF_HUB_CACHE= XDG_CACHE_HOME=$T/xdg exec $BIN serve tiny-org/tiny-moe --port 0 --ctx 64 >$T/serve.log 2>&1) &
spid=$!
port=
for _ in $(seq 1 300); do
    port=$(sed -n 's/.*listening on http:.*:\([0-9][0-9]*\) (model.*/\1/p' $T/serve.log)
    [ -n "$port" ] && break
    kill -0 $spid 2>/dev/null || break
    sleep 0.1
done
models=$([ -n "$port" ] && curl -s http://127.0.0.1:$port/v1/models)
kill $spid 2>/dev/null; wait $spid 2>/dev/null
[[ "$models" == *'"id":"tiny-org/tiny-moe"'* || "$models" == *'"id": "tiny-org/tiny-moe"'* ]] && ok cli_hf_cache_serve ||
    bad cli_hf_cache_serve "port '$port' models '$models' log '$(cat $T/serve.log)'"
msg=$(HF_HUB_CACHE=$T/nowhere HF_HOME=$T/hf2 HOME=$T/home $BIN run nobody/missing-model "hi" 2>&1 >/dev/null); rc=$?
if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [[ "$msg" == *"nobody/missing-model"* && "$msg" == *"$T/nowhere"* &&
      "$msg" == *"$T/hf2/hub"* && "$msg" == *"$T/home/.cache/huggingface/hub"* ]]; then
    ok cli_hf_cache_missing_lists_places
else
    bad cli_hf_cache_missing_lists_places "rc=$rc msg='$msg'"
fi

# Errors: a model without a tokenizer, no prompt, bad sampling values.
check_err() { # name, expected substring, command...
    local name=$1 want=$2; shift 2
    local msg
    msg=$("$@" 2>&1 >/dev/null); local rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [[ "$msg" == *"$want"* ]]; then ok "$name"; else bad "$name" "rc=$rc msg='$msg'"; fi
}
check_err cli_run_no_tokenizer "no tokenizer.json" $BIN run tests/fixtures/golden/olmoe_f32 "hi"
check_err cli_run_no_prompt "needs a prompt" $BIN run $M
check_err cli_run_bad_top_p "--top-p expects" $BIN run $M "hi" --top-p 0
check_err cli_chat_extra_arg "unexpected argument" $BIN chat $M "hello"
exit $fail
