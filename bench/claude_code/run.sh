#!/usr/bin/env bash
# Claude Code (npm @anthropic-ai/claude-code, non-interactive `claude -p`) against
# `lazymoe serve` on the demo model with no --ctx and no --max-tokens: the defaults must
# take Claude Code's ~30k-token first request and its max_tokens as they are. Two sessions
# against one server (the second reuses the prompt prefix from memory), then a third after
# a restart on the same --prompt-cache-dir (the prefix comes from disk). The demo model
# cannot drive an agent (it writes Python-ish text): what is checked is the protocol --
# every request answered 200 with a complete event stream, no "Prompt is too long", no
# continuation requests, a result message from Claude Code -- and the cached tokens.
#   bench/claude_code/run.sh    (CLAUDE=path to a claude binary; default: npm install into a temp dir)
#   MAX_OUTPUT=N sets CLAUDE_CODE_MAX_OUTPUT_TOKENS (the client's own limit; default: unset)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LAZYMOE=${LAZYMOE:-$ROOT/build/lazymoe}
work=$(mktemp -d "${TMPDIR:-/tmp}/lazymoe-claude.XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
if [ -z "${CLAUDE:-}" ]; then
    (cd "$work" && npm init -y >/dev/null && npm install --no-audit --no-fund @anthropic-ai/claude-code >/dev/null)
    CLAUDE=$work/node_modules/.bin/claude
fi
mkdir -p "$work/home" "$work/project" "$work/pcache"
export HOME=$work/home   # an isolated HOME: no login, settings or history of the user's
"$CLAUDE" --version

serve() { # log file
    "$LAZYMOE" serve "$ROOT/models/demo-coder" --port 0 --no-warm-start --prompt-cache-dir "$work/pcache" 2>"$1" &
    pid=$!
    for _ in $(seq 300); do grep -q 'listening on' "$1" && break; sleep 0.2; done
    url=$(grep -o 'http://[0-9.:]*' "$1" | head -1)
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
session() { # name
    local t0=$SECONDS
    (cd "$work/project" && env ANTHROPIC_BASE_URL="$url" ANTHROPIC_API_KEY=unused CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
        DISABLE_AUTOUPDATER=1 ${MAX_OUTPUT:+CLAUDE_CODE_MAX_OUTPUT_TOKENS=$MAX_OUTPUT} \
        timeout "${SESSION_TIMEOUT:-1200}" "$CLAUDE" -p "Write a Python function that reverses a string." \
        --max-turns 1 --output-format json) >"$work/$1.json" 2>"$work/$1.err" || echo "claude exited $? ($1)"
    echo "--- $1: $((SECONDS - t0)) s"
    head -c 1500 "$work/$1.json"; echo; cat "$work/$1.err"
}

serve "$work/server1.log"
echo "server: $(grep -m1 -i 'context' "$work/server1.log" || true)"
session first
session second
stop
serve "$work/server2.log"
session restarted
stop
for l in server1 server2; do echo "--- lazymoe serve log ($l)"; cat "$work/$l.log"; done

fail=0
check() { if eval "$2"; then echo "ok $1"; else echo "FAIL $1"; fail=1; fi; }
for s in first second restarted; do
    check "claude_${s}_result" "grep -q '\"type\":\"result\"' '$work/$s.json'"
    check "claude_${s}_no_api_error" "! grep -q '\"is_error\":true' '$work/$s.json'"
done
check no_prompt_too_long "! grep -qi 'too long' '$work'/*.json '$work'/*.err '$work'/server*.log"
check no_failed_requests "! grep -E 'POST /v1/messages[^ ]* [45][0-9][0-9]' '$work'/server*.log"
check second_session_cached "grep -E 'cached=[1-9][0-9]{3,}' '$work/server1.log' | grep -q ."
check restarted_session_cached "grep -E 'cached=[1-9][0-9]{3,}' '$work/server2.log' | grep -q ."
exit $fail
