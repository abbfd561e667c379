#!/usr/bin/env python3
"""Writes two tiny gpt_oss checkpoints of ONE random model (pure Python, deterministic):

  tests/fixtures/gpt_oss/float  Hugging Face float layout: every tensor BF16, experts
                                transposed as transformers stores them (gate_up_proj
                                [E, H, 2I] with gate/up interleaved, down_proj [E, I, H]),
                                layer_types given
  tests/fixtures/gpt_oss/mxfp4  the released layout: experts as MXFP4 (NAME_blocks uint8
                                [E, out, in/32, 16], low nibble = even value; NAME_scales
                                uint8 e8m0 [E, out, in/32]), the rest BF16,
                                quantization_config {quant_method: mxfp4}, no layer_types
                                (GptOssConfig's default alternation)

The float experts are the MXFP4 values exactly (e2m1 * 2^k fits bf16), so the two must
give the same logits up to float summation order (tests/test_gpt_oss.c). Vocabulary 336:
the harmony server fixture (tests/fixtures/server_harmony) adds harmony's special tokens
to the textgen tokenizer's 320. These fixtures check binding, lazy == resident and the
two layouts against each other; the comparison with transformers itself is
tools/make_golden.py's gpt_oss cases (run on the GPU box).

Usage: tools/make_gpt_oss_fixture.py [OUT_DIR]   (default tests/fixtures/gpt_oss)
"""
import json, math, os, random, struct, sys

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "gpt_oss")
V, H, I, L, NH, NKV, HD, E, K = 336, 64, 64, 3, 4, 2, 16, 4, 2
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
rnd = random.Random(20261206)


def bf16_bits(x):
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    u += 0x7FFF + ((u >> 16) & 1)  # round to nearest even (no NaNs here)
    return (u >> 16) & 0xFFFF


def bf16_bytes(vals):
    return struct.pack("<%dH" % len(vals), *[bf16_bits(v) for v in vals])


def gauss(n, std):
    return [rnd.gauss(0.0, std) for _ in range(n)]


def config(layer_types, mxfp4):
    c = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "vocab_size": V, "hidden_size": H,
         "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": NKV,
         "head_dim": HD, "num_local_experts": E, "num_experts_per_tok": K, "experts_per_token": K,
         "sliding_window": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "attention_bias": True,
         "hidden_act": "silu", "swiglu_limit": 7.0, "tie_word_embeddings": False, "eos_token_id": 319,
         "pad_token_id": 317, "initial_context_length": 64, "torch_dtype": "bfloat16",
         "rope_scaling": {"rope_type": "yarn", "factor": 8.0, "beta_fast": 32.0, "beta_slow": 1.0,
                          "original_max_position_embeddings": 64, "truncate": False},
         "rope_theta": 150000.0}
    if layer_types:
        c["layer_types"] = ["sliding_attention" if l % 2 == 0 else "full_attention" for l in range(L)]
    if mxfp4:
        c["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    return c


def write_safetensors(path, tensors):
    hdr, blobs, off = {}, [], 0
    for name, (dtype, shape, data) in tensors.items():
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def mxfp4_stack(out_dim, in_dim):
    """Random codes and scales [E, out, in/32(, 16)] and the values [E][out][in]."""
    blocks, scales, vals = bytearray(), bytearray(), []
    for e in range(E):
        ve = []
        for r in range(out_dim):
            row = []
            for g in range(in_dim // 32):
                s = rnd.randint(121, 125)
                scales.append(s)
                for j in range(16):
                    lo, hi = rnd.randrange(16), rnd.randrange(16)
                    blocks.append(lo | hi << 4)
                    row += [E2M1[lo] * 2.0 ** (s - 127), E2M1[hi] * 2.0 ** (s - 127)]
            ve.append(row)
        vals.append(ve)
    return bytes(blocks), bytes(scales), vals


def main():
    common = {}  # name -> (shape, values): everything but the expert matrices
    common["model.embed_tokens.weight"] = ([V, H], gauss(V * H, 1.0))
    common["lm_head.weight"] = ([V, H], gauss(V * H, H ** -0.5))
    common["model.norm.weight"] = ([H], [1 + x for x in gauss(H, 0.2)])
    experts = {}
    for l in range(L):
        p = "model.layers.%d." % l
        common[p + "input_layernorm.weight"] = ([H], [1 + x for x in gauss(H, 0.2)])
        common[p + "post_attention_layernorm.weight"] = ([H], [1 + x for x in gauss(H, 0.2)])
        for n, o in (("q", NH * HD), ("k", NKV * HD), ("v", NKV * HD)):
            common[p + "self_attn.%s_proj.weight" % n] = ([o, H], gauss(o * H, H ** -0.5))
            common[p + "self_attn.%s_proj.bias" % n] = ([o], gauss(o, 0.1))
        common[p + "self_attn.o_proj.weight"] = ([H, NH * HD], gauss(H * NH * HD, (NH * HD) ** -0.5))
        common[p + "self_attn.o_proj.bias"] = ([H], gauss(H, 0.1))
        common[p + "self_attn.sinks"] = ([NH], gauss(NH, 1.5))
        common[p + "mlp.router.weight"] = ([E, H], gauss(E * H, 4 * H ** -0.5))
        common[p + "mlp.router.bias"] = ([E], gauss(E, 0.1))
        common[p + "mlp.experts.gate_up_proj_bias"] = ([E, 2 * I], gauss(E * 2 * I, 0.1))
        common[p + "mlp.experts.down_proj_bias"] = ([E, H], gauss(E * H, 0.1))
        experts[p + "mlp.experts.gate_up_proj"] = mxfp4_stack(2 * I, H)
        experts[p + "mlp.experts.down_proj"] = mxfp4_stack(H, I)
    for kind in ("float", "mxfp4"):
        d = os.path.join(OUT, kind)
        os.makedirs(d, exist_ok=True)
        t = {n: ("BF16", s, bf16_bytes(v)) for n, (s, v) in common.items()}
        for n, (blocks, scales, vals) in experts.items():
            out_dim, in_dim = len(vals[0]), len(vals[0][0])
            if kind == "mxfp4":
                t[n + "_blocks"] = ("U8", [E, out_dim, in_dim // 32, 16], blocks)
                t[n + "_scales"] = ("U8", [E, out_dim, in_dim // 32], scales)
            else:  # transposed: [E, in, out]
                flat = [vals[e][o][i] for e in range(E) for i in range(in_dim) for o in range(out_dim)]
                t[n] = ("BF16", [E, in_dim, out_dim], bf16_bytes(flat))
        write_safetensors(os.path.join(d, "model.safetensors"), dict(sorted(t.items())))
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config(kind == "float", kind == "mxfp4"), f, indent=1, sort_keys=True)
            f.write("\n")
        with open(os.path.join(d, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": [324, 325, 317], "pad_token_id": 317}, f)
            f.write("\n")


if __name__ == "__main__":
    main()
