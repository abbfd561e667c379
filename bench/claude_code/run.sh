#!/usr/bin/env bash
# Claude Code (npm @anthropic-ai/claude-code, non-interactive `claude -p`) against
# `lazymoe serve` on the demo model with no --ctx and no --max-tokens: the defaults must
# take Claude Code's ~30k-token first request and its max_tokens (64000) as they are, and
# each turn must complete: exit 0, a "success" result, one request per turn (no
# continuation requests), no "Prompt is too long".
#
# The demo model (trained on 1,024-token windows of Python files) does not end its answer
# by itself after Claude Code's 30k-token system prompt: it writes until the context is
# full (~11k tokens; the stop is then `model_context_window_exceeded`, and Claude Code
# asks for a continuation). What ends each turn here is said per session:
#   default    Claude Code as installed (system prompt, all tools: ~29.8k tokens), plus
#              `stop_sequences` in the request body (CLAUDE_CODE_EXTRA_BODY, Claude Code's
#              own way to add request fields; default ["\n\n"]: the first blank line of
#              the answer ends it, stop_reason stop_sequence). Run on a fresh server, then
#              again after a restart on the same --prompt-cache-dir (the prefix comes
#              from disk).
#   short      --system-prompt and --tools "" (a ~190-token prompt, inside the model's
#              training window) and temperature 0 in the body: the model ends its turn
#              itself (<|im_end|>, stop_reason end_turn).
#   bench/claude_code/run.sh   (CLAUDE=path to a claude binary; default: npm install into a temp dir)
#   PCACHE=DIR keeps the prompt cache between invocations (the cold 30k-token prefill is
#   paid once); STOP='["..."]' the stop sequences of the default sessions.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LAZYMOE=${LAZYMOE:-$ROOT/build/lazymoe}
STOP=${STOP:-'["\n\n"]'}
work=$(mktemp -d "${TMPDIR:-/tmp}/lazymoe-claude.XXXXXX")
pcache=${PCACHE:-$work/pcache}
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
if [ -z "${CLAUDE:-}" ]; then
    (cd "$work" && npm init -y >/dev/null && npm install --no-audit --no-fund @anthropic-ai/claude-code >/dev/null)
    CLAUDE=$work/node_modules/.bin/claude
fi
# An isolated HOME (no login, settings or history of the user's) and a fixed project
# directory: Claude Code's system prompt names both, and the cached prefix must match.
home=${PCACHE:+$pcache/home}; home=${home:-$work/home}
mkdir -p "$home/project" "$pcache"
export HOME=$home
"$CLAUDE" --version

serve() { # log file
    "$LAZYMOE" serve "$ROOT/models/demo-coder" --port 0 --no-warm-start --prompt-cache-dir "$pcache" 2>"$1" &
    pid=$!
    for _ in $(seq 300); do grep -q 'listening on' "$1" && break; sleep 0.2; done
    url=$(grep -o 'http://[0-9.:]*' "$1" | head -1)
    log=$1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
fail=0
check() { if eval "$2"; then echo "ok $1"; else echo "FAIL $1"; fail=1; fi; }
session() { # name body-json expected-stop-reason claude-args...
    local name=$1 body=$2 want=$3 rc=0 posts
    shift 3
    posts=$(grep -c 'POST /v1/messages' "$log" || true)
    local t0=$SECONDS
    (cd "$home/project" && env ANTHROPIC_BASE_URL="$url" ANTHROPIC_API_KEY=unused CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
        DISABLE_AUTOUPDATER=1 CLAUDE_CODE_EXTRA_BODY="$body" \
        timeout "${SESSION_TIMEOUT:-1200}" "$CLAUDE" -p "Write a Python function that reverses a string." \
        --max-turns 1 --output-format json "$@") >"$work/$name.json" 2>"$work/$name.err" || rc=$?
    posts=$(( $(grep -c 'POST /v1/messages' "$log" || true) - posts ))
    echo "--- $name: exit $rc after $((SECONDS - t0)) s, $posts request(s); CLAUDE_CODE_EXTRA_BODY=$body $*"
    head -c 2000 "$work/$name.json"; echo; cat "$work/$name.err"
    check "claude_${name}_exit_0" "[ $rc -eq 0 ]"
    check "claude_${name}_success" "grep -q '\"subtype\":\"success\",\"is_error\":false' '$work/$name.json'"
    check "claude_${name}_one_turn_one_request" "grep -q '\"num_turns\":1,' '$work/$name.json' && [ $posts -eq 1 ]"
    check "claude_${name}_stop_reason_$want" "grep -q '\"stop_reason\":\"$want\"' '$work/$name.json'"
}

serve "$work/server1.log"
session default "{\"stop_sequences\":$STOP}" stop_sequence
session short '{"temperature":0}' end_turn --system-prompt "You are a coding assistant. Answer with Python code." --tools ""
stop
serve "$work/server2.log"
session restarted "{\"stop_sequences\":$STOP}" stop_sequence
stop
for l in server1 server2; do echo "--- lazymoe serve log ($l)"; cat "$work/$l.log"; done

check no_prompt_too_long "! grep -qi 'too long' '$work'/*.json '$work'/*.err '$work'/server*.log"
check no_failed_requests "! grep -E 'POST /v1/messages[^ ]* [45][0-9][0-9]' '$work'/server*.log"
check restarted_session_cached "grep -E 'cached=[1-9][0-9]{4,}' '$work/server2.log' | grep -q ."
exit $fail
