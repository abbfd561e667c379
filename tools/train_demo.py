#!/usr/bin/env python3
"""Train lazymoe's embedded demo model: a small qwen3_moe that writes Python.

Runs on the GPU box (PyTorch, transformers, tokenizers), in one call of at most ten
minutes, because nothing survives between calls there: the run is sized by wall clock
(--train-seconds), not by steps.

  1. Corpus: every .py file of the Python installation that runs this script (standard
     library + site-packages), sorted by path; files of 256 B .. 256 KiB that decode as
     UTF-8, duplicates (same content) dropped. A file is held out when the first byte of
     sha1(relative path) is < 5 (about 2%). manifest.tsv.gz lists every file used: relative
     path, bytes, sha256 prefix, split.
  2. Tokenizer: byte-level BPE (Qwen2-style pre-tokenizer regex) trained with `tokenizers`
     on the training split only; specials <|endoftext|> <|im_start|> <|im_end|>, plus
     <think> </think> <tool_call> </tool_call> as added (non-special) tokens; the Qwen3-Coder
     chat template (tools rendered in its XML form).
  3. Model: Qwen3MoeForCausalLM from scratch. Documents are joined with <|endoftext|>;
     about one in eight is wrapped as a chat turn ("Write the Python module X.") so the
     chat template leads to code too.
  4. After training: held-out perplexity at f32 (transformers); save_pretrained (f32);
     `lazymoe convert` to MLX 4-bit (binary carried to the box); the 4-bit weights
     dequantized back into a transformers model give the golden logits for the shipped
     file and the 4-bit perplexity as transformers computes it; routing statistics on
     held-out code, including how well layer L's input predicts layer L+1's experts.

Usage: train_demo.py OUT_DIR --lazymoe PATH [--train-seconds 360] [--smoke]
"""
import argparse, json, math, os, random, subprocess, sys, time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_training as lt  # noqa: E402  (corpus, tokenizer, balance loss: shared with train_routing_model.py)

T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--lazymoe", required=True)
ap.add_argument("--train-seconds", type=float, default=360)
ap.add_argument("--deadline", type=float, default=0,
                help="seconds from start by which everything must be done (training is shortened)")
ap.add_argument("--max-train-mb", type=float, default=500, help="training text kept, subsampled by path hash")
ap.add_argument("--smoke", action="store_true", help="tiny corpus and model, to test the pipeline")
ap.add_argument("--template", default="tests/fixtures/templates/models/qwen3-coder/chat_template.jinja")
args = ap.parse_args()
OUT = args.out
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(1234)
random.seed(1234)
dev = "cuda"

# ---------------------------------------------------------------- corpus
roots = lt.python_roots()
train_docs, held_docs = lt.collect_corpus(roots, os.path.join(OUT, "manifest.tsv.gz"), smoke=args.smoke,
                                          max_train_mb=args.max_train_mb)
log(f"corpus: {len(train_docs)} train files ({sum(len(t) for _, t in train_docs) / 1e6:.1f} MB), "
    f"{len(held_docs)} held out ({sum(len(t) for _, t in held_docs) / 1e6:.1f} MB)")

# ---------------------------------------------------------------- tokenizer
from transformers import PreTrainedTokenizerFast

tk = lt.train_tokenizer(train_docs)
with open(args.template) as f:
    template = f.read()
hf_tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 model_max_length=4096, clean_up_tokenization_spaces=False)
hf_tok.chat_template = template
tok_dir = os.path.join(OUT, "hf")
hf_tok.save_pretrained(tok_dir)
EOT, IM_START, IM_END = (tk.token_to_id(s) for s in lt.SPECIALS)
n_vocab = tk.get_vocab_size()
log(f"tokenizer: {n_vocab} tokens")


def encode_docs(docs, wrap_every=0):
    return np.array(lt.encode_docs(tk, docs, EOT, wrap_every), dtype=np.int32)


rng = random.Random(7)
order = list(range(len(train_docs)))
rng.shuffle(order)
train_ids = encode_docs([train_docs[i] for i in order], wrap_every=8)
held_ids = encode_docs(held_docs)
log(f"tokens: train {len(train_ids) / 1e6:.1f} M, held out {len(held_ids) / 1e6:.2f} M "
    f"({sum(len(t) for _, t in train_docs) / len(train_ids):.2f} bytes/token)")

# ---------------------------------------------------------------- model
from transformers import AutoModelForCausalLM, Qwen3MoeConfig  # noqa: E402

SEQ = 256 if args.smoke else 1024
cfg = Qwen3MoeConfig(
    vocab_size=((n_vocab + 63) // 64) * 64, hidden_size=256, intermediate_size=768,
    moe_intermediate_size=192, num_hidden_layers=2 if args.smoke else 8, num_attention_heads=4,
    num_key_value_heads=2, head_dim=64, num_experts=32, num_experts_per_tok=4,
    decoder_sparse_step=1, norm_topk_prob=True, max_position_embeddings=4096,
    rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    router_aux_loss_coef=0.0, output_router_logits=True,
    bos_token_id=None, eos_token_id=IM_END, pad_token_id=EOT)


model, experts_impl = lt.build_model(cfg, log)
model.to(dev)
n_params = sum(p.numel() for p in model.parameters())
log(f"model: {n_params / 1e6:.2f} M parameters, experts implementation {experts_impl}")

BATCH = 8 if args.smoke else 32
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
data = torch.from_numpy(train_ids).to(dev)
WARMUP = 200
AUX_COEF = 0.02


if args.deadline:
    args.train_seconds = max(10.0, min(args.train_seconds, args.deadline - (time.time() - T0) - 100))
    log(f"training for {args.train_seconds:.0f} s")
step, t_start, losses = 0, time.time(), []
loss_log = open(os.path.join(OUT, "loss.tsv"), "w")
loss_log.write("step\tseconds\ttokens\tloss\taux_loss\tlr\n")
while True:
    frac = (time.time() - t_start) / args.train_seconds
    if frac >= 1:
        break
    lr = 2e-3 * min(1.0, (step + 1) / WARMUP) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
    for g in opt.param_groups:
        g["lr"] = lr
    starts = torch.randint(0, len(data) - SEQ, (BATCH,), device=dev)
    chunk = data[starts[:, None] + torch.arange(SEQ, device=dev)[None, :]].long()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        # labels = inputs: transformers shifts them by one itself.
        out = model(input_ids=chunk, labels=chunk, output_router_logits=True)
        aux = lt.layer_balance_loss(out.router_logits, cfg.num_experts, cfg.num_experts_per_tok)
    opt.zero_grad(set_to_none=True)
    (out.loss + AUX_COEF * aux).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    step += 1
    if step % 25 == 0:
        a = float(aux.item())  # 1.0 = perfectly balanced
        l = out.loss.item()    # cross-entropy alone (transformers' own aux coefficient is 0)
        loss_log.write(f"{step}\t{time.time() - t_start:.1f}\t{step * BATCH * SEQ}\t{l:.4f}\t{a:.4f}\t{lr:.2e}\n")
        loss_log.flush()
        if step % 200 == 0:
            log(f"step {step} loss {l:.3f} aux {a:.3f} lr {lr:.2e} "
                f"{step * BATCH * SEQ / (time.time() - t_start) / 1e3:.0f}k tok/s")
loss_log.close()
train_tokens = step * BATCH * SEQ
log(f"trained {step} steps, {train_tokens / 1e6:.1f} M tokens")

# ---------------------------------------------------------------- held-out perplexity (f32)
model.eval()
model.float()
N_EVAL = min(len(held_ids) // SEQ, 8 if args.smoke else 48) * SEQ
# The evaluation text is re-tokenized from text, as lazymoe perplexity will read it.
eval_text = tk.decode(held_ids[:N_EVAL].tolist(), skip_special_tokens=False)
with open(os.path.join(OUT, "heldout.txt"), "w") as f:
    f.write(eval_text)
eval_ids = tk.encode(eval_text, add_special_tokens=False).ids
log(f"held-out eval text: {len(eval_text)} chars, {len(eval_ids)} tokens (sliced {N_EVAL})")


@torch.no_grad()
def perplexity(m, ids, window):
    """Non-overlapping windows of `window` tokens; each scores its tokens 1..window-1."""
    nll, n = 0.0, 0
    for s in range(0, len(ids) - 1, window):
        w = torch.tensor([ids[s:s + window]], device=dev)
        if w.shape[1] < 2:
            break
        lg = m(input_ids=w, use_cache=False).logits[0, :-1].float()
        nll += F.cross_entropy(lg, w[0, 1:], reduction="sum").item()
        n += w.shape[1] - 1
    return math.exp(nll / n), n


ppl_f32, n_scored = perplexity(model, eval_ids, SEQ)
log(f"held-out perplexity f32: {ppl_f32:.3f} over {n_scored} tokens")

# ---------------------------------------------------------------- export, convert
hf_dir = os.path.join(OUT, "hf")
model.config.output_router_logits = False
model.config.torch_dtype = "float32"
model.save_pretrained(hf_dir)
model.generation_config.eos_token_id = [IM_END, EOT]
model.generation_config.pad_token_id = EOT
model.generation_config.do_sample = True
model.generation_config.temperature = 0.7
model.generation_config.top_p = 0.95
model.generation_config.top_k = 40
model.generation_config.save_pretrained(hf_dir)
mlx_dir = os.path.join(OUT, "mlx4")
subprocess.run([args.lazymoe, "convert", hf_dir, mlx_dir, "--bits", "4", "--group-size", "64",
                "--dtype", "bf16", "--force", "--quiet"], check=True)
for fn in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    with open(os.path.join(hf_dir, fn), "rb") as a, open(os.path.join(mlx_dir, fn), "wb") as b:
        b.write(a.read())
log("converted:", {f: os.path.getsize(os.path.join(mlx_dir, f)) for f in os.listdir(mlx_dir)})

# ---------------------------------------------------------------- 4-bit weights back into transformers
from safetensors.torch import save_file

with open(os.path.join(mlx_dir, "config.json")) as f:
    q = json.load(f)["quantization"]
deq = {}
from safetensors import safe_open
for fn in sorted(os.listdir(mlx_dir)):
    if not fn.endswith(".safetensors"):
        continue
    with safe_open(os.path.join(mlx_dir, fn), framework="pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            if name.endswith(".scales") or name.endswith(".biases"):
                continue
            base = name[:-len(".weight")] if name.endswith(".weight") else None
            if base is not None and base + ".scales" in f.keys():
                ov = q.get(base, {})
                bits, g = ov.get("bits", q["bits"]), ov.get("group_size", q["group_size"])
                per = 32 // bits
                words = t.to(torch.int64) & 0xFFFFFFFF
                shifts = torch.arange(per, dtype=torch.int64) * bits
                qv = ((words[..., None] >> shifts) & ((1 << bits) - 1)).reshape(*t.shape[:-1], t.shape[-1] * per)
                sc = f.get_tensor(base + ".scales").float()
                bi = f.get_tensor(base + ".biases").float()
                qv = qv.reshape(*qv.shape[:-1], qv.shape[-1] // g, g).float()
                w = (qv * sc[..., None] + bi[..., None]).reshape(*t.shape[:-1], t.shape[-1] * per)
            else:
                w = t.float()
            if ".switch_mlp." in name:
                pre, proj = name.split(".switch_mlp.")
                for e in range(w.shape[0]):
                    deq[f"{pre}.experts.{e}.{proj}"] = w[e].contiguous()
            else:
                deq[name] = w.contiguous()
deq_dir = os.path.join(OUT, "deq")
os.makedirs(deq_dir, exist_ok=True)
save_file(deq, os.path.join(deq_dir, "model.safetensors"), metadata={"format": "pt"})
with open(os.path.join(hf_dir, "config.json")) as f:
    dcfg = json.load(f)
with open(os.path.join(deq_dir, "config.json"), "w") as f:
    json.dump(dcfg, f, indent=2)
qmodel = AutoModelForCausalLM.from_pretrained(deq_dir, dtype=torch.float32, attn_implementation="eager").to(dev).eval()
missing = [k for k in model.state_dict() if k not in qmodel.state_dict()]
assert not missing, missing
ppl_q4, _ = perplexity(qmodel, eval_ids, SEQ)
log(f"held-out perplexity 4-bit (dequantized into transformers): {ppl_q4:.3f} "
    f"({100 * (ppl_q4 / ppl_f32 - 1):+.2f}% vs f32)")

# ---------------------------------------------------------------- golden logits
prompt = eval_ids[SEQ // 2: SEQ // 2 + 64]
gold = os.path.join(OUT, "golden")
os.makedirs(gold, exist_ok=True)
with open(os.path.join(gold, "input_ids.txt"), "w") as f:
    f.write(",".join(map(str, prompt)) + "\n")
with torch.no_grad():
    ref_q4 = qmodel(input_ids=torch.tensor([prompt], device=dev), use_cache=False).logits[0].float().cpu().numpy()
    ref_f32 = model(input_ids=torch.tensor([prompt], device=dev), use_cache=False).logits[0].float().cpu().numpy()
    gen = qmodel.generate(torch.tensor([prompt], device=dev), max_new_tokens=32, do_sample=False,
                          top_k=None, top_p=None, temperature=None, eos_token_id=None, pad_token_id=EOT)
np.save(os.path.join(gold, "logits.npy"), ref_q4.astype(np.float32))
with open(os.path.join(gold, "greedy.txt"), "w") as f:
    f.write(",".join(map(str, gen[0].tolist())) + "\n")
report = {"train_files": len(train_docs), "heldout_files": len(held_docs),
          "train_tokens_available": int(len(train_ids)), "heldout_tokens": int(len(held_ids)),
          "steps": step, "batch": BATCH, "seq": SEQ, "tokens_seen": train_tokens,
          "train_seconds": args.train_seconds, "parameters": n_params, "experts_impl": experts_impl,
          "ppl_f32": ppl_f32, "ppl_q4_transformers": ppl_q4, "eval_tokens_scored": n_scored,
          "torch": torch.__version__, "transformers": __import__("transformers").__version__,
          "tokenizers": __import__("tokenizers").__version__, "gpu": torch.cuda.get_device_name()}
# lazymoe on the f32 export and on the 4-bit file, against transformers.
for tag, mdir, ref in (("f32", hf_dir, ref_f32), ("q4", mlx_dir, ref_q4)):
    npy = os.path.join(OUT, f"lazymoe_{tag}.npy")
    subprocess.run([args.lazymoe, "logits", mdir, "--ids", ",".join(map(str, prompt)), "--out", npy,
                    "--no-warm-start"], check=True)
    got = np.load(npy)
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    report[f"lazymoe_vs_transformers_{tag}_rel"] = rel
    log(f"lazymoe {tag} logits vs transformers: max|diff|/max|ref| = {rel:.3g}")
    os.remove(npy)

# ---------------------------------------------------------------- routing on held-out code
caught = {}
hooks = []
for li, layer in enumerate(model.model.layers):
    def hook(mod, inp, out, li=li):
        # Logits recomputed from the router's input and weight: the router module's own
        # return value differs between transformers versions.
        x = inp[0].detach().reshape(-1, inp[0].shape[-1])
        caught[li] = (x, F.linear(x.float(), mod.weight.float()))
    hooks.append(layer.mlp.gate.register_forward_hook(hook))
K, E, L = cfg.num_experts_per_tok, cfg.num_experts, cfg.num_hidden_layers
stats = {"layers": []}
with torch.no_grad():
    ids = torch.tensor([eval_ids[:8 * SEQ]], device=dev)
    routes, inputs = [], []
    for s in range(0, ids.shape[1], SEQ):
        caught.clear()
        o = model(input_ids=ids[:, s:s + SEQ], use_cache=False, output_hidden_states=True)
        hs = o.hidden_states
        for li in range(L):
            x, logits = caught[li]
            top = torch.topk(torch.softmax(logits.float(), -1), K, dim=-1).indices
            if s == 0:
                routes.append([top])
                inputs.append([hs[li][0]])
            else:
                routes[li].append(top)
                inputs[li].append(hs[li][0])
    for h in hooks:
        h.remove()
    routes = [torch.cat(r) for r in routes]
    resid = [torch.cat(r) for r in inputs]
    T = routes[0].shape[0]
    for li in range(L):
        r = routes[li]
        onehot = torch.zeros(T, E, device=dev)
        onehot.scatter_(1, r, 1.0)
        counts = onehot.sum(0)
        share = torch.sort(counts, descending=True).values / counts.sum()
        reuse1 = (onehot[1:] * onehot[:-1]).sum(1).mean().item() / K
        window = torch.stack([onehot[i:T - 8 + i] for i in range(8)]).amax(0)  # experts of the 8 previous tokens
        reuse8 = (window * onehot[8:]).sum(1).mean().item() / K
        entry = {"layer": li, "top4_share": share[:4].sum().item(), "top8_share": share[:8].sum().item(),
                 "min_share": share[-1].item(), "reuse_prev_token": reuse1, "reuse_within_8": reuse8}
        if li + 1 < L:
            nxt = model.model.layers[li + 1]
            # Predict layer li+1's experts before its attention runs: its router applied to
            # its own input residual (normalised with its post-attention norm).
            x = resid[li + 1]
            pred = F.linear(nxt.post_attention_layernorm(x).float(), nxt.mlp.gate.weight.float())
            actual = torch.zeros(T, E, device=dev)
            actual.scatter_(1, routes[li + 1], 1.0)
            for m in (K, 2 * K):
                p = torch.zeros(T, E, device=dev)
                p.scatter_(1, torch.topk(pred.float(), m, dim=-1).indices, 1.0)
                entry[f"lookahead_recall_at_{m}"] = (p * actual).sum(1).mean().item() / K
        stats["layers"].append(entry)
        log(json.dumps(entry))
report["routing"] = stats
with open(os.path.join(OUT, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
log("done")
