#!/usr/bin/env python3
"""Derives a qwen3_5_moe fixture (the vision-language wrapper layout) from the
transformers golden fixture qwen3_next_f32, with no torch or numpy.

Qwen3.5-MoE's text model is qwen3_next's with the Gated DeltaNet projections stored
separately (transformers' Qwen3_5GatedDeltaNet: in_proj_qkv = all q rows, all k rows,
all v rows -- the conv1d channel order, which qwen3_next builds from its fused
per-key-head in_proj_qkvz the same way -- in_proj_z, in_proj_b, in_proj_a), a router
that always renormalises (qwen3_next_f32 has norm_topk_prob true) and an interleaved
multimodal RoPE that text-only positions make plain RoPE. So the same weights laid out
the Qwen3.5 way compute what transformers computed for qwen3_next_f32: the derived
fixture reuses its input ids, logits and greedy ids. It is written as the released
checkpoints are: config under text_config, weights under model.language_model., a
(tiny) vision tower under model.visual. and a multi-token-prediction head mtp.* filled
with NaN, neither of which the engine may read.

Usage: derive_qwen3_5_fixture.py   (from the repository root; rewrites the fixture)
"""
import json, os, shutil, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests/fixtures/golden/qwen3_next_f32")
DST = os.path.join(ROOT, "tests/fixtures/golden/qwen3_5_moe_from_next_f32")


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", name
        a, b = t["data_offsets"]
        out[name] = (t["shape"], data[a:b])
    return out


def write_st(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        shape, blob = tensors[name]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def rows(blob, width, a, b):
    return blob[a * width * 4:b * width * 4]


def main():
    cfg = json.load(open(os.path.join(SRC, "config.json")))
    H = cfg["hidden_size"]
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    r = nv // nk
    per_k = 2 * dk + 2 * r * dv
    src = read_st(os.path.join(SRC, "model.safetensors"))
    out = {}
    for name, (shape, blob) in src.items():
        new = "model.language_model." + name[len("model."):] if name.startswith("model.") else name
        if name.endswith("linear_attn.in_proj_qkvz.weight"):
            base = new[: -len("in_proj_qkvz.weight")]
            q = b"".join(rows(blob, H, g * per_k, g * per_k + dk) for g in range(nk))
            k = b"".join(rows(blob, H, g * per_k + dk, g * per_k + 2 * dk) for g in range(nk))
            v = b"".join(rows(blob, H, g * per_k + 2 * dk, g * per_k + 2 * dk + r * dv) for g in range(nk))
            z = b"".join(rows(blob, H, g * per_k + 2 * dk + r * dv, (g + 1) * per_k) for g in range(nk))
            out[base + "in_proj_qkv.weight"] = ([2 * nk * dk + nv * dv, H], q + k + v)
            out[base + "in_proj_z.weight"] = ([nv * dv, H], z)
        elif name.endswith("linear_attn.in_proj_ba.weight"):
            base = new[: -len("in_proj_ba.weight")]
            b = b"".join(rows(blob, H, g * 2 * r, g * 2 * r + r) for g in range(nk))
            a = b"".join(rows(blob, H, g * 2 * r + r, (g + 1) * 2 * r) for g in range(nk))
            out[base + "in_proj_b.weight"] = ([nv, H], b)
            out[base + "in_proj_a.weight"] = ([nv, H], a)
        else:
            out[new] = (shape, blob)
    zeros = lambda n: struct.pack("<%df" % n, *([0.0] * n))
    nan = lambda n: struct.pack("<%df" % n, *([float("nan")] * n))
    out["model.visual.patch_embed.proj.weight"] = ([32, 3, 2, 4, 4], zeros(32 * 3 * 2 * 4 * 4))
    out["model.visual.merger.linear_fc2.weight"] = ([H, 128], zeros(H * 128))
    out["mtp.fc.weight"] = ([H, 2 * H], nan(H * 2 * H))
    out["mtp.layers.0.mlp.gate.weight"] = ([cfg["num_experts"], H], nan(cfg["num_experts"] * H))
    out["mtp.norm.weight"] = ([H], nan(H))

    text = {k: v for k, v in cfg.items() if k not in (
        "architectures", "norm_topk_prob", "mlp_only_layers", "decoder_sparse_step", "intermediate_size",
        "tie_word_embeddings", "transformers_version", "partial_rotary_factor")}
    text["model_type"] = "qwen3_5_moe_text"
    half = int(cfg["head_dim"] * cfg["rope_parameters"]["partial_rotary_factor"]) // 2
    sec = [half - 2 * (half // 3), half // 3, half // 3]
    text["rope_parameters"] = dict(cfg["rope_parameters"], mrope_section=sec, mrope_interleaved=True)
    wrapper = {"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
               "text_config": text, "tie_word_embeddings": False,
               "vision_config": {"model_type": "qwen3_5_moe", "depth": 1, "hidden_size": 32, "num_heads": 2,
                                 "patch_size": 4, "temporal_patch_size": 2, "out_hidden_size": H},
               "image_token_id": 316, "video_token_id": 317, "derived_from": "qwen3_next_f32 (tools/derive_qwen3_5_fixture.py)"}
    if os.path.exists(DST):
        shutil.rmtree(DST)
    os.makedirs(DST)
    json.dump(wrapper, open(os.path.join(DST, "config.json"), "w"), indent=2)
    for f in ("generation_config.json", "input_ids.txt", "logits.npy", "greedy.txt", "greedy_logits.npy"):
        shutil.copy(os.path.join(SRC, f), DST)
    write_st(os.path.join(DST, "model.safetensors"), out)
    print("wrote", DST, len(out), "tensors")


if __name__ == "__main__":
    main()
