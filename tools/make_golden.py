#!/usr/bin/env python3
"""Build tiny random MoE models with Hugging Face transformers and record their outputs.

Run on the GPU box (it has torch + transformers); the results are committed under
tests/fixtures/golden/ and every C test compares against them.

For each case we write a directory with:
  config.json, generation_config.json, model.safetensors (or shards + index)  -- save_pretrained
  input_ids.txt      one line of comma-separated prompt ids
  logits.npy         float32 [T, vocab], logits of one forward pass over the prompt
  logits_f32.npy     (bf16 cases) logits of the same bf16 weights computed in float32
  greedy.txt         prompt + greedy continuation from model.generate(do_sample=False)
  manifest.json      transformers/torch versions, seed, the tensor names and shapes

Weights are redrawn with a realistic spread (unit-variance activations, routers wide enough
that routing varies between tokens) because the library's default init (std 0.02) makes every
layer nearly the identity and would hide mistakes.

Usage: make_golden.py OUT_DIR
"""
import json, math, os, sys, traceback

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

OUT = sys.argv[1] if len(sys.argv) > 1 else "golden"
torch.set_num_threads(8)


def spread_init(model, seed, zero_centred_norms=False):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if p.dim() == 1:
                if "norm" in name:
                    base = 0.0 if zero_centred_norms else 1.0
                    v = base + 0.2 * torch.randn(shape, generator=gen)
                elif name.endswith("A_log"):
                    v = torch.log(torch.rand(shape, generator=gen) * 8 + 1)
                elif name.endswith("sinks"):  # around the attention scores, so they matter
                    v = 1.5 * torch.randn(shape, generator=gen)
                else:  # biases, dt_bias
                    v = 0.1 * torch.randn(shape, generator=gen)
            elif p.dim() == 2 and name.endswith("_bias"):  # gpt-oss expert biases [E, n]
                v = 0.1 * torch.randn(shape, generator=gen)
            if p.dim() == 1 or (p.dim() == 2 and name.endswith("_bias")):
                pass
            else:
                fan_in = shape[-1]
                cfg = model.config.get_text_config()  # the VL wrapper keeps its sizes in text_config
                # gpt-oss stores its experts [E, in, out] (x @ W): the fan-in is the
                # hidden size for gate_up_proj and the expert width for down_proj
                # whichever way round the tensor is.
                if p.dim() == 3 and name.endswith("experts.gate_up_proj"):
                    fan_in = cfg.hidden_size
                elif p.dim() == 3 and name.endswith("experts.down_proj"):
                    fan_in = getattr(cfg, "moe_intermediate_size", None) or cfg.intermediate_size
                std = 1.0 / math.sqrt(fan_in)
                if "embed_tokens" in name:
                    std = 1.0
                if name.endswith("mlp.gate.weight") or name.endswith("block_sparse_moe.gate.weight") \
                        or name.endswith("shared_expert_gate.weight") or name.endswith("mlp.router.weight"):
                    std *= 4.0
                if cfg.model_type == "gpt_oss" and name.endswith("experts.gate_up_proj"):
                    std *= 3.0  # some gate/up values pass the SwiGLU clamp (7)
                v = torch.randn(shape, generator=gen) * std
            p.copy_(v.to(p.dtype))


def greedy(model, ids, n):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                         pad_token_id=0, top_k=None, top_p=None, temperature=None)
    return out[0].tolist()


def greedy_nocache(model, ids, n, eos):
    seq = list(ids)
    for _ in range(n):
        with torch.no_grad():
            lg = model(torch.tensor([seq]), use_cache=False).logits[0, -1]
        t = int(torch.argmax(lg))
        seq.append(t)
        if t in eos:
            break
    return seq


def spread_buffers(model, seed):
    """The sigmoid routers' e_score_correction_bias is a buffer that from_config leaves at
    zero: give it non-negative values of the size of the sigmoid scores' spread, so it
    changes which experts are chosen (and the scores a group-limited router masks to 0
    stay below every allowed one, as in trained checkpoints)."""
    gen = torch.Generator().manual_seed(seed + 77)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_((0.4 * torch.rand(b.shape, generator=gen)).to(b.dtype))


def add_unread_tensors(path, names_shapes):
    """Appends NaN tensors the engine must never read (multi-token-prediction layers
    and heads of real checkpoints that transformers' model does not build): if any
    were read into the forward pass the logits would be NaN."""
    from safetensors.torch import load_file, save_file
    f = os.path.join(path, "model.safetensors")
    sd = load_file(f)
    for n, shp in names_shapes:
        sd[n] = torch.full(shp, float("nan"), dtype=torch.float32)
    save_file(sd, f, metadata={"format": "pt"})


def mrope_check(model, path, T=24):
    """cos of Qwen3.5's interleaved multimodal RoPE (the model's own rotary_emb) for
    text-only positions (three equal streams) and for unequal streams, so a test can
    show the first equals plain RoPE and the second does not."""
    lm = model.model.language_model if hasattr(model.model, "language_model") else model.model
    x = torch.zeros(1, T, model.config.get_text_config().hidden_size)
    pos = torch.arange(T)[None, :]
    with torch.no_grad():
        eq = lm.rotary_emb(x, pos[None].expand(3, 1, T))[0][0].float().numpy()
        uneq_pos = torch.stack([pos, pos + 5, pos * 2 + 1])
        ne = lm.rotary_emb(x, uneq_pos)[0][0].float().numpy()
    np.save(os.path.join(path, "mrope_cos_text.npy"), eq.astype(np.float32))
    np.save(os.path.join(path, "mrope_cos_unequal.npy"), ne.astype(np.float32))


def make_case(name, config, dtype="float32", seed=0, prompt_len=11, gen_len=20, shard=None,
              zero_centred_norms=False, model_cls=None, unread=None, mrope=False):
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(seed)
    if callable(config) and not hasattr(config, "to_dict"):
        config = config()
    cls = model_cls or AutoModelForCausalLM
    model = cls.from_config(config, attn_implementation="eager") if cls is AutoModelForCausalLM \
        else cls._from_config(config, attn_implementation="eager")
    model.eval()
    spread_init(model, seed, zero_centred_norms)
    spread_buffers(model, seed)
    text_cfg = config.get_text_config()
    if getattr(config, "eos_token_id", None) is None:
        try:
            config.eos_token_id = text_cfg.eos_token_id
        except Exception:
            traceback.print_exc()
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = getattr(config, "eos_token_id", None) or text_cfg.eos_token_id
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kw)
    if mrope:
        mrope_check(model, path)
    if unread:
        add_unread_tensors(path, unread)

    rng = np.random.default_rng(seed + 1000)
    ids = [int(x) for x in rng.integers(0, text_cfg.vocab_size, size=prompt_len)]
    with open(os.path.join(path, "input_ids.txt"), "w") as f:
        f.write(",".join(map(str, ids)) + "\n")
    # Reference runs reload the saved files, as a user would: from_pretrained in the
    # stored dtype (native) and in float32 (same weights, f32 arithmetic).
    del model
    eos_id = getattr(config, "eos_token_id", None) or text_cfg.eos_token_id
    eos = eos_id if isinstance(eos_id, list) else [eos_id]
    runs = [("", dtype)] + ([("_f32", "float32")] if dtype != "float32" else [])
    for suffix, run_dtype in runs:
        model = cls.from_pretrained(path, dtype=getattr(torch, run_dtype), attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            logits = model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
        np.save(os.path.join(path, f"logits{suffix}.npy"), logits.astype(np.float32))
        g = greedy(model, ids, gen_len)
        g2 = greedy_nocache(model, ids, gen_len, eos)
        with open(os.path.join(path, f"greedy{suffix}.txt"), "w") as f:
            f.write(" ".join(map(str, g[len(ids):])) + "\n")
        # Logits over prompt + continuation in one pass: lets a test tell a near-tie
        # (where any correct engine may pick either token) from a real mismatch.
        with torch.no_grad():
            gl = model(torch.tensor([g]), use_cache=False).logits[0].float().numpy()
        np.save(os.path.join(path, f"greedy_logits{suffix}.npy"), gl.astype(np.float32))
    sd = {k: list(v.shape) for k, v in model.state_dict().items()}
    manifest = {
        "case": name, "dtype": dtype, "seed": seed,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "greedy_cache_equals_nocache": g == g2,  # of the last run
        "tensors": sd,
    }
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"[ok] {name}: {len(sd)} tensors, files {sorted(os.listdir(path))}, "
          f"greedy cache==nocache {g == g2}", flush=True)


def gpt_oss_config(**kw):
    """A GptOssConfig with YaRN RoPE, passed the way this transformers takes it
    (rope_parameters in 5.x, rope_scaling before)."""
    import inspect
    from transformers import GptOssConfig
    rope = kw.pop("rope")
    theta = kw.pop("rope_theta")
    if "rope_parameters" in inspect.signature(GptOssConfig.__init__).parameters:
        kw["rope_parameters"] = dict(rope, rope_theta=theta)
    else:
        kw["rope_scaling"] = rope
        kw["rope_theta"] = theta
    cfg = GptOssConfig(**kw)
    got = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    assert got and got.get("rope_type", got.get("type")) == "yarn", got
    return cfg


def gpt_oss_cases():
    C = []
    # alternating sliding (layer 0, 2) / full layers, a window of 4 under an 11-token
    # prompt, YaRN with truncate false (as the released checkpoints)
    # vocab 336: the server's harmony fixture (tests/fixtures/server_harmony) puts the
    # textgen tokenizer's 320 tokens and harmony's special tokens on these weights
    C.append(("gpt_oss_f32", gpt_oss_config(
        vocab_size=336, hidden_size=64, intermediate_size=48, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=8,
        num_experts_per_tok=2, sliding_window=4, max_position_embeddings=256,
        rope_theta=10000.0, rope=dict(rope_type="yarn", factor=4.0, beta_fast=32.0, beta_slow=1.0,
                                      original_max_position_embeddings=32, truncate=False),
        rms_norm_eps=1e-5, tie_word_embeddings=False, eos_token_id=319, pad_token_id=318),
        dict(seed=21)))
    # another shape: 3 query heads on one kv head, head_dim 32, explicit layer_types with
    # a full first layer, truncated YaRN bounds, 40-token prompt over a window of 7
    C.append(("gpt_oss_yarn_f32", gpt_oss_config(
        vocab_size=288, hidden_size=96, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=3, num_key_value_heads=1, head_dim=32, num_local_experts=6,
        num_experts_per_tok=3, sliding_window=7, max_position_embeddings=512,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"],
        rope_theta=50000.0, rope=dict(rope_type="yarn", factor=8.0, beta_fast=16.0, beta_slow=2.0,
                                      original_max_position_embeddings=64, truncate=True),
        rms_norm_eps=1e-5, tie_word_embeddings=False, eos_token_id=287, pad_token_id=0),
        dict(seed=22, prompt_len=40, gen_len=12)))
    C.append(("gpt_oss_bf16", gpt_oss_config(
        vocab_size=300, hidden_size=64, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, num_local_experts=4,
        num_experts_per_tok=2, sliding_window=5, max_position_embeddings=256,
        rope_theta=10000.0, rope=dict(rope_type="yarn", factor=2.0, beta_fast=32.0, beta_slow=1.0,
                                      original_max_position_embeddings=64, truncate=False),
        rms_norm_eps=1e-5, tie_word_embeddings=False, eos_token_id=299, pad_token_id=0),
        dict(seed=23, dtype="bfloat16")))
    return C


def mxfp4_config():
    return gpt_oss_config(
        vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
        num_experts_per_tok=2, sliding_window=5, max_position_embeddings=256,
        rope_theta=10000.0, rope=dict(rope_type="yarn", factor=4.0, beta_fast=32.0, beta_slow=1.0,
                                      original_max_position_embeddings=32, truncate=False),
        rms_norm_eps=1e-5, tie_word_embeddings=False, eos_token_id=255, pad_token_id=0)


def make_mxfp4_case(name="gpt_oss_mxfp4", seed=24, prompt_len=16, gen_len=12):
    """A gpt-oss checkpoint laid out like the released ones: experts as MXFP4
    (NAME_blocks uint8 [E, out, in/32, 16], two e2m1 codes a byte, low nibble first;
    NAME_scales uint8 [E, out, in/32], e8m0 exponents biased by 127), every other tensor
    bf16, quantization_config {quant_method: mxfp4}. The codes and scales are drawn at
    random (a few scales of 0, the smallest exponent); the reference is transformers'
    own dequantization (integrations.mxfp4.convert_moe_packed_tensors) loaded into the
    float32 model, and from_pretrained with Mxfp4Config(dequantize=True) is run too as a
    cross-check of the file layout."""
    from safetensors.torch import save_file
    from transformers.integrations import mxfp4 as hf_mxfp4
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    config = mxfp4_config()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.eval()
    spread_init(model, seed)
    gen = torch.Generator().manual_seed(seed + 7)
    E, H, I = config.num_local_experts, config.hidden_size, config.intermediate_size
    tensors, note = {}, {}
    with torch.no_grad():
        sd = model.state_dict()
        for k, v in sd.items():
            if ".experts.gate_up_proj" in k and not k.endswith("_bias") or \
                    k.endswith(".experts.down_proj"):
                out_dim, in_dim = (2 * I, H) if "gate_up" in k else (H, I)
                blocks = torch.randint(0, 256, (E, out_dim, in_dim // 32, 16), generator=gen,
                                       dtype=torch.int32).to(torch.uint8)
                scales = torch.randint(121, 126, (E, out_dim, in_dim // 32), generator=gen,
                                       dtype=torch.int32).to(torch.uint8)
                scales[:, 0, 0] = 0  # 2^-127: a subnormal float32 scale
                tensors[k + "_blocks"] = blocks.contiguous()
                tensors[k + "_scales"] = scales.contiguous()
                deq = hf_mxfp4.convert_moe_packed_tensors(blocks.clone(), scales.clone(),
                                                          dtype=torch.float32).cpu()
                if deq.shape != v.shape:  # [E, in, out] from the helper; the model's other way round
                    deq = deq.transpose(1, 2).contiguous()
                assert deq.shape == v.shape, (k, deq.shape, v.shape)
                v.copy_(deq)
                note[k] = list(deq.shape)
            else:
                b = v.to(torch.bfloat16)
                tensors[k] = b.contiguous()
                v.copy_(b.float())
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cj = config.to_dict()
    cj["architectures"] = ["GptOssForCausalLM"]
    cj["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    cj["torch_dtype"] = "bfloat16"
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cj, f, indent=2, sort_keys=True)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": config.eos_token_id, "pad_token_id": 0}, f)
    rng = np.random.default_rng(seed + 1000)
    ids = [int(x) for x in rng.integers(0, config.vocab_size, size=prompt_len)]
    with open(os.path.join(path, "input_ids.txt"), "w") as f:
        f.write(",".join(map(str, ids)) + "\n")
    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
    np.save(os.path.join(path, "logits.npy"), logits.astype(np.float32))
    g = greedy(model, ids, gen_len)
    with open(os.path.join(path, "greedy.txt"), "w") as f:
        f.write(" ".join(map(str, g[len(ids):])) + "\n")
    with torch.no_grad():
        gl = model(torch.tensor([g]), use_cache=False).logits[0].float().numpy()
    np.save(os.path.join(path, "greedy_logits.npy"), gl.astype(np.float32))
    cross = None
    try:  # the file read back by transformers' MXFP4 loader, dequantizing
        from transformers import Mxfp4Config
        m2 = AutoModelForCausalLM.from_pretrained(path, quantization_config=Mxfp4Config(dequantize=True),
                                                  dtype=torch.float32, attn_implementation="eager")
        m2.eval()
        with torch.no_grad():
            l2 = m2(torch.tensor([ids]), use_cache=False).logits[0].float().cpu().numpy()
        cross = float(np.abs(l2 - logits).max() / np.abs(logits).max())
    except Exception as e:
        traceback.print_exc()
        cross = "failed: " + repr(e)[:300]
    manifest = {"case": name, "dtype": "mxfp4+bfloat16 (reference in float32)", "seed": seed,
                "transformers": transformers.__version__, "torch": torch.__version__,
                "reference": "integrations.mxfp4.convert_moe_packed_tensors into the float32 model",
                "from_pretrained_mxfp4_dequantize_rel_diff": cross,
                "dequantized_shapes": note,
                "tensors": {k: [str(v.dtype)] + list(v.shape) for k, v in tensors.items()}}
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"[ok] {name}: {len(tensors)} tensors, from_pretrained cross-check {cross}", flush=True)


def cases():
    from transformers import Qwen3MoeConfig, MixtralConfig, OlmoeConfig
    C = []
    C.append(("qwen3_moe_f32", Qwen3MoeConfig(
        vocab_size=320, hidden_size=64, intermediate_size=96, moe_intermediate_size=48,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[1], max_position_embeddings=512, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=319, bos_token_id=318),
        dict(seed=1)))
    C.append(("qwen3_moe_tied_bf16", Qwen3MoeConfig(
        vocab_size=300, hidden_size=64, intermediate_size=80, moe_intermediate_size=32,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
        num_experts=6, num_experts_per_tok=3, norm_topk_prob=False, decoder_sparse_step=2,
        mlp_only_layers=[], max_position_embeddings=512, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=299, bos_token_id=298),
        dict(seed=2, dtype="bfloat16")))
    C.append(("qwen3_moe_sharded_f32", Qwen3MoeConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, moe_intermediate_size=24,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
        max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
        eos_token_id=255), dict(seed=3, shard="100KB")))
    C.append(("mixtral_f32", MixtralConfig(
        vocab_size=288, hidden_size=64, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=512, rope_theta=1000000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=None,
        eos_token_id=2, bos_token_id=1), dict(seed=4)))
    C.append(("mixtral_bf16", MixtralConfig(
        vocab_size=288, hidden_size=64, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, num_local_experts=8,
        num_experts_per_tok=2, max_position_embeddings=512, rope_theta=10000.0,
        tie_word_embeddings=False, eos_token_id=2, bos_token_id=1),
        dict(seed=5, dtype="bfloat16")))
    C.append(("olmoe_f32", OlmoeConfig(
        vocab_size=304, hidden_size=64, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=False, max_position_embeddings=512, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, eos_token_id=303, bos_token_id=None,
        pad_token_id=1), dict(seed=6)))
    C.append(("olmoe_clip_bf16", OlmoeConfig(
        vocab_size=304, hidden_size=64, intermediate_size=40, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, num_experts=6, num_experts_per_tok=3,
        norm_topk_prob=True, clip_qkv=2.0, max_position_embeddings=512, rope_theta=10000.0,
        tie_word_embeddings=False, eos_token_id=303, pad_token_id=1),
        dict(seed=7, dtype="bfloat16")))
    C.append(("qwen3_moe_long_f32", Qwen3MoeConfig(
        vocab_size=512, hidden_size=48, intermediate_size=64, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1, head_dim=16,
        num_experts=16, num_experts_per_tok=4, norm_topk_prob=True,
        max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=False,
        eos_token_id=511), dict(seed=9, prompt_len=300, gen_len=8)))
    C.append(("mixtral_window_f32", MixtralConfig(
        vocab_size=200, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=256, rope_theta=10000.0,
        sliding_window=6, tie_word_embeddings=False, eos_token_id=2),
        dict(seed=10, prompt_len=20, gen_len=12)))
    C.extend(gpt_oss_cases())
    try:
        from transformers import Qwen3NextConfig
        C.append(("qwen3_next_f32", Qwen3NextConfig(
            vocab_size=320, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
            shared_expert_intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, linear_conv_kernel_dim=4,
            linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
            linear_num_value_heads=4, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
            full_attention_interval=4, partial_rotary_factor=0.25, rope_theta=10000.0,
            max_position_embeddings=512, tie_word_embeddings=False, eos_token_id=319),
            dict(seed=8, zero_centred_norms=True, prompt_len=37)))
    except Exception:
        traceback.print_exc()
    C += family_cases()
    return C


def mk(cls, **kw):
    """cls(**kw), dropping (and saying so) any keyword this transformers version rejects,
    so a renamed key costs that key, not the whole run; the C tests then show what the
    saved config.json lacks."""
    import re
    for _ in range(len(kw) + 1):
        try:
            return cls(**kw)
        except TypeError as e:
            m = re.search(r"unexpected keyword argument '([^']+)'", str(e)) or \
                re.search(r"[Uu]nexpected.*?'([^']+)'", str(e))
            if not m or m.group(1) not in kw:
                raise
            print(f"[note] {cls.__name__} rejects {m.group(1)}: dropped", flush=True)
            kw.pop(m.group(1))
    return cls(**kw)


def family_cases():
    """issue 16: minimax_m2, glm4_moe, qwen3_5_moe (+ its text-only type). Configs are
    built lazily (a callable), so one that this transformers rejects fails its case only."""
    import transformers as T
    C = []
    # minimax_m2: q/k norm over the whole projection, partial RoPE, sigmoid router with
    # correction bias; head_dim 32 != hidden / heads = 16, GQA 4:2.
    C.append(("minimax_m2_f32", lambda: mk(T.MiniMaxM2Config, 
        vocab_size=320, hidden_size=64, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_local_experts=8,
        num_experts_per_tok=2, max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        tie_word_embeddings=False, eos_token_id=319, bos_token_id=318), dict(seed=21)))
    # MQA (one kv head), 16 experts top-4, a quarter of each head rotated.
    C.append(("minimax_m2_mqa_f32", lambda: mk(T.MiniMaxM2Config, 
        vocab_size=288, hidden_size=48, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=1, head_dim=16, num_local_experts=16,
        num_experts_per_tok=4, max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "partial_rotary_factor": 0.25},
        tie_word_embeddings=False, eos_token_id=287), dict(seed=22, prompt_len=17)))
    # glm4_moe: a dense first layer, 16 experts in 4 groups (2 kept), top-4, one shared
    # expert, routed_scaling_factor 2.5, q/k/v biases, half of each head rotated, and an
    # MTP layer (num_nextn_predict_layers) stored after the last layer that must not be read.
    glm_a = dict(
        vocab_size=320, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1,
        first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True,
        partial_rotary_factor=0.5, attention_bias=True, use_qk_norm=False,
        num_nextn_predict_layers=1, max_position_embeddings=512, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        tie_word_embeddings=False, eos_token_id=[318, 319], pad_token_id=0)
    C.append(("glm4_moe_f32", lambda: mk(T.Glm4MoeConfig, **glm_a),
              dict(seed=23, unread=[("model.layers.3.eh_proj.weight", (64, 128)),
                                    ("model.layers.3.enorm.weight", (64,)),
                                    ("model.layers.3.mlp.gate.weight", (16, 64))])))
    # per-head q/k norm, MQA-ish 6:1 with head_dim 16 != 64 / 6, two dense layers, one
    # group, no renormalisation, two shared experts.
    glm_b = dict(
        vocab_size=256, hidden_size=64, intermediate_size=80, moe_intermediate_size=24,
        num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=1, head_dim=16,
        n_routed_experts=8, num_experts_per_tok=3, n_group=1, topk_group=1, n_shared_experts=2,
        first_k_dense_replace=2, routed_scaling_factor=1.0, norm_topk_prob=False,
        partial_rotary_factor=0.5, attention_bias=True, use_qk_norm=True,
        num_nextn_predict_layers=0, max_position_embeddings=512, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "partial_rotary_factor": 0.5},
        tie_word_embeddings=False, eos_token_id=255, pad_token_id=0)
    C.append(("glm4_moe_qknorm_f32", lambda: mk(T.Glm4MoeConfig, **glm_b), dict(seed=24, prompt_len=19)))

    def q35_text(**over):
        kw = dict(
            vocab_size=320, hidden_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=48,
            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
            linear_num_key_heads=2, linear_num_value_heads=4, num_experts=8, num_experts_per_tok=2,
            layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                             "mrope_section": [3, 3, 2], "mrope_interleaved": True},
            max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=319)
        kw.update(over)
        return kw

    def q35_vl():
        text = q35_text()
        vision = dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=4,
                      temporal_patch_size=2, spatial_merge_size=2, in_channels=3, out_hidden_size=64,
                      num_position_embeddings=16)
        return mk(T.Qwen3_5MoeConfig, text_config=text, vision_config=vision, tie_word_embeddings=False)
    # The released layout: the vision-language wrapper (config under text_config, weights
    # under model.language_model., a vision tower and an MTP head that must not be read).
    C.append(("qwen3_5_moe_vl_f32", q35_vl,
              dict(seed=25, zero_centred_norms=True, prompt_len=37, mrope=True,
                   model_cls=getattr(T, "Qwen3_5MoeForConditionalGeneration", None),
                   unread=[("mtp.fc.weight", (64, 128)), ("mtp.layers.0.mlp.gate.weight", (8, 64)),
                           ("mtp.norm.weight", (64,))])))
    # The text-only type: other layer order, GQA 4:1, head_dim 16 != 64 / 4, 4 key heads
    # with 8 value heads.
    C.append(("qwen3_5_moe_text_f32", lambda: mk(T.Qwen3_5MoeTextConfig, **q35_text(
        num_hidden_layers=4, num_key_value_heads=1, head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=8, linear_key_head_dim=8, linear_value_head_dim=8, num_experts=12,
        num_experts_per_tok=3,
        layer_types=["full_attention", "linear_attention", "linear_attention", "full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "partial_rotary_factor": 0.5,
                         "mrope_section": [2, 1, 1], "mrope_interleaved": True})),
        dict(seed=26, zero_centred_norms=True, prompt_len=70,
             model_cls=getattr(T, "Qwen3_5MoeForCausalLM", None))))
    return C


if __name__ == "__main__":
    print("transformers", transformers.__version__, "torch", torch.__version__, flush=True)
    only = set(sys.argv[2:])
    if not only or "gpt_oss_mxfp4" in only:
        try:
            make_mxfp4_case()
        except Exception:
            print("[FAIL] gpt_oss_mxfp4", flush=True)
            traceback.print_exc()
    for name, cfg, kw in cases():
        if only and name not in only:
            continue
        try:
            make_case(name, cfg, **kw)
        except Exception:
            print(f"[FAIL] {name}", flush=True)
            traceback.print_exc()
