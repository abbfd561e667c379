#!/usr/bin/env bash
# One call's worth of GPU-box work, in the order given, with everything it makes packed
# into ONE archive under $OUT (a device call returns at most 8 files). The archive is
# rewritten after every job, so a call cut off at its time limit still returns what
# the finished jobs made.
#
#   bash tools/device_session.sh JOB...
#
# Jobs:
#   golden:NAME[,NAME...]   tools/make_golden.py for those cases (transformers goldens)
#   cuda                    tools/cuda_check.sh (build with nvcc, make test-cuda)
#   routing:SECONDS         tools/train_routing_model.py trained for SECONDS
#
# Example (what the session after the CUDA backend landed runs first):
#   bash tools/device_session.sh golden:qwen3_5_moe_vl_f32 cuda
# and unpacks files_at/device.tgz here: goldens go to tests/fixtures/golden/.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?run this through the device tool: \$OUT is where results go}
STAGE=$(mktemp -d)
pack() { tar czf "$OUT/device.tgz.tmp" -C "$STAGE" . && mv "$OUT/device.tgz.tmp" "$OUT/device.tgz"; }
status=0
for job in "$@"; do
    name=${job%%:*}
    arg=${job#*:}
    [ "$arg" = "$job" ] && arg=""
    dir="$STAGE/${name}"
    mkdir -p "$dir"
    start=$SECONDS
    echo "== $job ($(date -u +%T))"
    case "$name" in
    golden)
        # shellcheck disable=SC2086
        python3 tools/make_golden.py "$dir" ${arg//,/ } >"$dir/log.txt" 2>&1
        rc=$?
        # make_golden prints [FAIL] per case and carries on: a failed case fails the job
        grep -q '^\[FAIL\]' "$dir/log.txt" && rc=1
        ;;
    cuda)
        if [ -f tools/cuda_check.sh ]; then
            OUT="$dir" bash tools/cuda_check.sh >"$dir/log.txt" 2>&1
            rc=$?
        else
            echo "tools/cuda_check.sh is missing" >"$dir/log.txt"; rc=1
        fi
        ;;
    routing)
        secs=${arg:-330}
        python3 tools/train_routing_model.py "$dir" --train-seconds "$secs" --deadline $((secs + 140)) \
            >"$dir/train_log.txt" 2>&1
        rc=$?
        ;;
    *)
        echo "unknown job '$job' (golden:NAMES, cuda, routing:SECONDS)" | tee "$dir/log.txt"; rc=2
        ;;
    esac
    echo "$job: exit $rc after $((SECONDS - start)) s" | tee -a "$STAGE/summary.txt"
    [ "$rc" -ne 0 ] && status=1
    tail -n 5 "$dir"/*.txt 2>/dev/null
    pack
done
pack
rm -rf "$STAGE"
exit $status
