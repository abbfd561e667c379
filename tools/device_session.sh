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
#   cudabench[:LAYERS]      tools/cuda_bench.sh: the expert tiers' speed on a synthetic
#                           Qwen3-30B-A3B-shaped model of LAYERS layers (default 48)
#   cudaab[:LAYERS]         tools/cuda_ab.sh: the carried CUDA CLI against the carried base
#                           build (lazymoe-base), alternating, on LAYERS layers (default 6),
#                           after test_cuda and memcheck; an nsys kernel summary of decode
#   llamacpp[:LAYERS]       tools/llamacpp_cuda.sh: llama.cpp built with CUDA there from the
#                           carried source (build/llamacpp-carry, --pack it here) against
#                           lazymoe's CUDA backend on the same Q4_0 GGUF
#   llamacpu[:LAYERS]       the same script with MODE=cpu: both engines on the CPU, every
#                           thread (issue 15's 16-thread figures); reuses llamacpp's build
#   routing:SECONDS         tools/train_routing_model.py trained for SECONDS
#   fuzz:SECONDS:T1,T2,...  libFuzzer campaigns (-fork) of the carried fuzz targets,
#                           the spare cores split between them, for SECONDS each;
#                           T*K gives target T K workers instead of an even share
# A job written with a trailing '&' (quote it) runs in the background beside the next
# ones; the archive is packed again when every background job has ended.
#
# Carry build/device-carry.tar.xz (made here by `tools/device_session.sh --pack`): the
# CUDA fallback binaries (build/cuda-carry), the fuzz targets built with libFuzzer and
# the shared libraries they and the carried CLI need that the box may lack.
#
# Example (what the session after the CUDA backend landed runs first):
#   bash tools/device_session.sh golden:qwen3_5_moe_vl_f32 cuda
# and unpacks files_at/device.tgz here: goldens go to tests/fixtures/golden/.
set -u
cd "$(dirname "$0")/.."
FUZZ_CARRY=build/fuzz-carry
if [ "${1:-}" = "--pack" ]; then
    # Everything must fit beside the tracked tree in the 64 MiB a call ships (counted in
    # 4 KB blocks): xz it, and pack only what the call needs.
    #   PACK_FUZZ="T ..."  fuzz targets to carry (default: tokenizer chat_template server_responses)
    #   PACK_CUDA=0        leave out the CUDA binaries (build/cuda-carry)
    pack_fuzz=${PACK_FUZZ-tokenizer chat_template server_responses}
    pack_paths=""
    if [ "${PACK_CUDA:-1}" != 0 ]; then
        bash tools/cuda_check.sh --pack >/dev/null || exit 1
        pack_paths=build/cuda-carry
    fi
    rm -rf $FUZZ_CARRY && mkdir -p $FUZZ_CARRY/libs
    if [ -n "$pack_fuzz" ]; then
        make -j2 fuzz >/dev/null || exit 1
        # an archive of the objects lets the linker take only what each target uses
        ar rcs $FUZZ_CARRY/libfz.a $(find build/fuzz/obj/src -name '*.o') || exit 1
        for t in $pack_fuzz; do
            clang -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -O1 -fsanitize=fuzzer,address,undefined \
                -o $FUZZ_CARRY/fuzz_$t fuzz/fuzz_$t.c $FUZZ_CARRY/libfz.a -Wl,--as-needed \
                -Wl,-Bstatic -ljansson -lpcre2-8 -Wl,-Bdynamic -lmicrohttpd -lpthread -lm && strip $FUZZ_CARRY/fuzz_$t || exit 1
        done
        rm $FUZZ_CARRY/libfz.a
    fi
    # the shared libraries the carried binaries need beyond the C runtime
    for l in $(ldd $FUZZ_CARRY/fuzz_* ${pack_paths:+build/cuda-carry/lazymoe} 2>/dev/null | awk '/=>/ {print $3}' | sort -u); do
        case $(basename "$l") in libc.so*|libm.so*|libstdc++*|libgcc_s*|libpthread*|libdl*|librt*) ;; *) cp -L "$l" $FUZZ_CARRY/libs/ ;; esac
    done
    XZ_OPT=${XZ_OPT:--9e} tar cJf build/device-carry.tar.xz $pack_paths $FUZZ_CARRY || exit 1
    ls -la build/device-carry.tar.xz
    echo 'carry ["build/device-carry.tar.xz"] in the device call'
    exit 0
fi
[ -f build/device-carry.tar.xz ] && tar xJf build/device-carry.tar.xz
OUT=${OUT:?run this through the device tool: \$OUT is where results go}
STAGE=$(mktemp -d)
# background jobs pack too: one packer at a time
pack() { ( flock 9; tar czf "$OUT/device.tgz.tmp" -C "$STAGE" . && mv "$OUT/device.tgz.tmp" "$OUT/device.tgz" ) 9>"$STAGE.lock"; }
status=0
run_job() {
    local job=$1 name=${1%%:*} arg rc
    arg=${job#*:}
    arg=${job#*:}
    [ "$arg" = "$job" ] && arg=""
    local dir="$STAGE/${name}" start=$SECONDS
    mkdir -p "$dir"
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
            OUT="$dir" LD_LIBRARY_PATH="$PWD/$FUZZ_CARRY/libs" bash tools/cuda_check.sh >"$dir/log.txt" 2>&1
            rc=$?
        else
            echo "tools/cuda_check.sh is missing" >"$dir/log.txt"; rc=1
        fi
        ;;
    cudabench)
        # bounded so that a call of 10 minutes still packs what it measured
        OUT="$dir" LAYERS="${arg:-48}" LD_LIBRARY_PATH="$PWD/$FUZZ_CARRY/libs" timeout "${CUDABENCH_SECONDS:-450}" \
            bash tools/cuda_bench.sh >"$dir/log.txt" 2>&1
        rc=$?
        rm -rf /tmp/lazymoe-bench
        ;;
    cudaab)
        OUT="$dir" LAYERS="${arg:-6}" LD_LIBRARY_PATH="$PWD/$FUZZ_CARRY/libs" timeout "${CUDAAB_SECONDS:-400}" \
            bash tools/cuda_ab.sh >"$dir/log.txt" 2>&1
        rc=$?
        ;;
    llamacpp)
        OUT="$dir" LAYERS="${arg:-48}" LD_LIBRARY_PATH="$PWD/$FUZZ_CARRY/libs" timeout "${LLAMACPP_SECONDS:-560}" \
            bash tools/llamacpp_cuda.sh >"$dir/log.txt" 2>&1
        rc=$?
        ;;
    llamacpu)
        OUT="$dir" LAYERS="${arg:-24}" MODE=cpu LD_LIBRARY_PATH="$PWD/$FUZZ_CARRY/libs" timeout "${LLAMACPP_SECONDS:-560}" \
            bash tools/llamacpp_cuda.sh >"$dir/log.txt" 2>&1
        rc=$?
        ;;
    routing)
        secs=${arg:-330}
        python3 tools/train_routing_model.py "$dir" --train-seconds "$secs" --deadline $((secs + 140)) \
            >"$dir/train_log.txt" 2>&1
        rc=$?
        ;;
    fuzz)
        local secs=${arg%%:*} targets=${arg#*:} t n k pids=""
        n=$(echo "$targets" | tr ',' '\n' | wc -l)
        k=$(( ($(nproc) - 2) / n )); [ "$k" -lt 1 ] && k=1
        for t in ${targets//,/ }; do
            local kt=$k
            case $t in *'*'*) kt=${t#*\*}; t=${t%%\**} ;; esac
            mkdir -p "$dir/$t" "/tmp/corpus-$t"
            # a campaign resumes from the corpus an earlier call brought back, when carried
            [ -f "build/fuzz-corpus/$t.tar.xz" ] && tar xJf "build/fuzz-corpus/$t.tar.xz" -C "/tmp/corpus-$t"
            # from the repository root: the server targets read tests/fixtures/server
            ( LD_LIBRARY_PATH="$PWD/$FUZZ_CARRY/libs" nice -n 5 timeout $((secs + 60)) \
                "$FUZZ_CARRY/fuzz_$t" -fork="$kt" -max_total_time="$secs" -max_len="${FUZZ_MAX_LEN:-16384}" -timeout=30 \
                -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$dir/$t/" \
                "/tmp/corpus-$t" "fuzz/corpus/$t" >"$dir/$t/log.txt" 2>&1
              echo "exit $?" >>"$dir/$t/log.txt" ) &
            pids="$pids $!"
        done
        rc=0
        for p in $pids; do wait "$p" || rc=1; done
        for t in ${targets//,/ }; do
            t=${t%%\**}
            grep -E '^#[0-9]+' "$dir/$t/log.txt" | tail -1 | sed "s/^/$t: /" >>"$dir/summary.txt"
            tail -n 3 "$dir/$t/log.txt" >>"$dir/summary.txt"
            grep -q '^exit 0' "$dir/$t/log.txt" || rc=1
            tar cJf "$dir/$t/corpus.tar.xz" -C "/tmp/corpus-$t" .
        done
        ;;
    *)
        echo "unknown job '$job' (golden:NAMES, cuda, cudabench[:LAYERS], cudaab[:LAYERS], llamacpp[:LAYERS], llamacpu[:LAYERS], routing:SECONDS, fuzz:SECONDS:TARGETS)" | tee "$dir/log.txt"; rc=2
        ;;
    esac
    echo "$job: exit $rc after $((SECONDS - start)) s" | tee -a "$STAGE/summary.txt"
    tail -n 5 "$dir"/*.txt 2>/dev/null
    pack
    return "$rc"
}
bg=""
for job in "$@"; do
    case "$job" in
    *'&') run_job "${job%&}" & bg="$bg $!" ;;
    *) run_job "$job" || status=1 ;;
    esac
done
for p in $bg; do wait "$p" || status=1; done
pack
rm -rf "$STAGE"
exit $status
