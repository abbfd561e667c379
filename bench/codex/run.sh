#!/usr/bin/env bash
# Codex CLI (npm @openai/codex, Responses API) against `lazymoe serve` on the demo model.
# The demo model cannot drive an agent, so director.mjs (a proxy in between) picks each
# turn's answer through the test-only lazymoe_forced_output: a shell command with
# Codex's exec_command tool, then an edit with its freeform apply_patch tool, then a
# final message. Codex runs both; the script checks the file they produced, that
# each request carried the previous tool result, and prints the server's log.
#   bench/codex/run.sh            (installs @openai/codex into a temp dir; CODEX=path to reuse one)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LAZYMOE=${LAZYMOE:-$ROOT/build/lazymoe}
work=$(mktemp -d "${TMPDIR:-/tmp}/lazymoe-codex.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
if [ -z "${CODEX:-}" ]; then
    (cd "$work" && npm init -y >/dev/null && npm install --no-audit --no-fund @openai/codex@0.171.0 >/dev/null)
    CODEX=$work/node_modules/.bin/codex
fi
"$CODEX" --version

"$LAZYMOE" serve "$ROOT/models/demo-coder" --port 0 --ctx 32768 --allow-forced-output --no-warm-start 2>"$work/server.log" &
pids+=($!)
for _ in $(seq 100); do grep -q 'listening on' "$work/server.log" && break; sleep 0.2; done
upstream=$(grep -o 'http://[0-9.:]*' "$work/server.log" | head -1)
node "$ROOT/bench/codex/director.mjs" "$upstream" "$work/port" "$work/director.log" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done

# The Codex configuration a user writes for lazymoe (README, "Codex CLI"), plus a model
# catalog entry so that Codex offers its freeform apply_patch tool to this model.
mkdir -p "$work/home" "$work/project"
sed "s|@BASE_URL@|http://127.0.0.1:$(cat "$work/port")/v1|; s|@CATALOG@|$work/home/models.json|" \
    "$ROOT/bench/codex/config.toml" >"$work/home/config.toml"
cp "$ROOT/bench/codex/models.json" "$work/home/models.json"

cd "$work/project"
CODEX_HOME=$work/home LAZYMOE_API_KEY=unused timeout 600 "$CODEX" exec --skip-git-repo-check \
    --dangerously-bypass-approvals-and-sandbox "Create hello.txt, then change its text." 2>&1 | tee "$work/codex.log"

echo "--- lazymoe serve log"; cat "$work/server.log"
echo "--- requests Codex sent (through the director)"; cat "$work/director.log"
fail=0
check() { if eval "$2"; then echo "ok $1"; else echo "FAIL $1"; fail=1; fi; }
check codex_file_patched '[ "$(cat hello.txt 2>/dev/null)" = "hello from codex and lazymoe" ]'
check codex_shell_output_sent_back 'grep -q "\"turn\":1.*hello from lazymoe" "$work/director.log"'
check codex_reasoning_sent_back 'grep -q "\"turn\":1,.*\"reasoning\",\"function_call\",\"function_call_output\"" "$work/director.log"'
check codex_three_turns '[ "$(grep -c "\"status\":200" "$work/director.log")" -ge 3 ]'
check codex_final_message 'grep -q "edited with apply_patch" "$work/codex.log"'
exit $fail
