#!/usr/bin/env bash
# Broken or hostile model files (issue 22): each is refused with a message that names
# the problem; none runs silently wrong, hangs, or exits without saying why. Every
# command runs under `timeout`, so a hang fails its case instead of the suite.
set -u
cd "$(dirname "$0")/../.."
BIN=${LAZYMOE_BIN:-build/asan/lazymoe}
G=tests/fixtures/golden
M=$G/qwen3_moe_f32
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
ok() { echo "ok $1"; }
bad() { echo "FAIL $1: $2"; fail=1; }

check_err() { # name, expected substring, command...
    local name=$1 want=$2; shift 2
    local msg
    msg=$(timeout "${HOSTILE_TIMEOUT:-60}" "$@" 2>&1 >/dev/null); local rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 124 ] && [[ "$msg" == *"$want"* ]]; then ok "$name"; else bad "$name" "rc=$rc msg='$msg'"; fi
}

# A copy of the fixture whose config.json a Python statement on `c` edits; the weights
# are a symbolic link to the fixture's.
variant() { # dir name, python statement
    local d=$T/$1
    mkdir -p "$d"
    cp $M/config.json $M/generation_config.json "$d/"
    ln -s "$PWD/$M/model.safetensors" "$d/model.safetensors"
    python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); $2; json.dump(c, open(p, 'w'))" "$d/config.json"
    echo "$d"
}

# rms_norm_eps -1 gave NaN logits, and `run --print-ids` printed "0 0 0 0" with exit 0.
d=$(variant eps 'c["rms_norm_eps"] = -1')
check_err hostile_negative_eps "rms_norm_eps must be a positive finite number" $BIN run "$d" --ids 1,2,3 -n 4 --temp 0 --print-ids
# 2^40 was truncated to token 0, a valid id.
d=$(variant eos 'c["eos_token_id"] = 2**40')
check_err hostile_eos_outside_int32 "eos_token_id 1099511627776 is outside the vocabulary" $BIN run "$d" --ids 1,2,3 -n 2 --print-ids
d=$(variant bos 'c["bos_token_id"] = 2**40')
check_err hostile_bos_outside_vocab "bos_token_id 1099511627776 is outside the vocabulary" $BIN run "$d" --ids 1,2,3 -n 2 --print-ids
# Fewer layers in config.json than in the weights ran the first two layers silently.
d=$(variant layers 'c["num_hidden_layers"] = 2')
check_err hostile_layer_count "num_hidden_layers is 2" $BIN run "$d" --ids 1,2,3 -n 2 --print-ids

# NaN in the weights: every path that computes logits fails instead of printing garbage.
d=$T/nan
mkdir -p $d
cp $M/config.json $M/generation_config.json $M/model.safetensors $d/
python3 - "$d/model.safetensors" <<'EOF'
import json, struct, sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
begin, end = json.loads(b[8:8 + n])['model.norm.weight']['data_offsets']
b[8 + n + begin:8 + n + end] = struct.pack('<f', float('nan')) * ((end - begin) // 4)
open(p, 'wb').write(b)
EOF
check_err hostile_nan_logits_run "non-finite logit" $BIN run $d --ids 1,2,3 -n 4 --temp 0 --print-ids
check_err hostile_nan_logits_logits "non-finite logit" $BIN logits $d --ids 1,2,3 --out $T/nan.npy
check_err hostile_nan_logits_bench "non-finite logit" $BIN bench $d --prompt-tokens 3 --gen-tokens 2

# Sizes that overflow exited 1 with no message.
check_err hostile_memory_inf "is too large" $BIN run $M --ids 1 --memory inf
check_err hostile_memory_1e30 "is too large" $BIN run $M --ids 1 --memory 1e30

# A FIFO in place of a model file blocked forever at open().
d=$(variant fifo_config 'pass')
rm "$d/config.json" && mkfifo "$d/config.json"
check_err hostile_fifo_config "config.json is not a regular file" $BIN info "$d"
d=$(variant fifo_weights 'pass')
rm "$d/model.safetensors" && mkfifo "$d/model.safetensors"
check_err hostile_fifo_weights "model.safetensors is not a regular file" $BIN info "$d"
d=$(variant fifo_index 'pass')
mkfifo "$d/model.safetensors.index.json"
check_err hostile_fifo_index "index.json is not a regular file" $BIN info "$d"

# 100k shard names in an index: the duplicate check was quadratic (16 s). The first
# shard is missing, so a linear check fails at once naming it.
d=$(variant shards 'pass')
rm "$d/model.safetensors"
python3 -c "import json,sys; json.dump({'weight_map': {'t%d' % i: 'shard-%06d.safetensors' % i for i in range(100000)}}, open(sys.argv[1], 'w'))" \
    "$d/model.safetensors.index.json"
start=$(date +%s)
check_err hostile_many_shards "shard-000000.safetensors" $BIN info "$d"
took=$(($(date +%s) - start))
[ $took -le 10 ] && ok hostile_many_shards_fast || bad hostile_many_shards_fast "took $took s"

exit $fail
