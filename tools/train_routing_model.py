#!/usr/bin/env python3
"""Train lazymoe's routing model: Qwen3-30B-A3B's routing topology at toy width.

qwen3_moe with 48 layers of 128 experts, top-8, renormalised (Qwen3-30B-A3B's router), but
hidden 192 and expert width 64, so that one GPU-box call (at most ten minutes, nothing
survives between calls) trains it. It exists to record routing learned from data at real
depth and expert count -- the expert cache's eviction, lookahead and pinning are studied on
its traces -- not to write good code.

  1. Corpus and tokenizer: the demo model's (tools/lm_training.py): every .py file of the
     Python installation that runs this script, the same held-out rule (sha1 of the path),
     the demo model's tokenizer (models/demo-coder/tokenizer.json), one training document
     in eight wrapped as a chat turn.
  2. Training: bf16 autocast, AdamW, per-layer Switch load balancing as for the demo model,
     sized by wall clock (--train-seconds, cut short by --deadline).
  3. Results written to OUT as they come (so a run cut short still returns something):
     train_log.txt is the caller's tee; loss.tsv every 25 steps; report.json (training
     facts, config, held-out perplexity at f32 in SEQ-token windows); four routing traces
     in src/experts/trace.c's format over held-out code, two disjoint sets of held-out files
     (`tune`: the even-numbered held-out files, to choose policy parameters on; `heldout`:
     the odd-numbered ones, to report on):
       <set>.trace            the experts each token's router picked in each layer (top-8,
                              best first), f32 weights, teacher-forced SEQ-token windows
       <set>.lookahead.trace  per token and layer, the 16 experts that layer L's router
                              picks from the residual before layer L's attention (normalised
                              with layer L's post-attention norm), best first: what router
                              lookahead can know once layer L-1 is done
     The weights (about 230 M parameters, ~130 MB at 4 bits) are not returned: rerun this
     script to reproduce a similar model.

Usage: train_routing_model.py OUT [--work DIR] [--train-seconds 330] [--deadline 470] [--smoke]
"""
import argparse, json, math, os, random, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_training as lt  # noqa: E402

T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--work", default="/tmp/routing-model", help="scratch folder (manifest, exported weights)")
ap.add_argument("--tokenizer", default="models/demo-coder/tokenizer.json")
ap.add_argument("--train-seconds", type=float, default=330)
ap.add_argument("--deadline", type=float, default=0,
                help="seconds from start by which everything must be done (training is shortened)")
ap.add_argument("--max-train-mb", type=float, default=150, help="training text kept, subsampled by path hash")
ap.add_argument("--layers", type=int, default=48)
ap.add_argument("--experts", type=int, default=128)
ap.add_argument("--top-k", type=int, default=8)
ap.add_argument("--hidden", type=int, default=192)
ap.add_argument("--moe-intermediate", type=int, default=64)
ap.add_argument("--heads", type=int, default=3)
ap.add_argument("--kv-heads", type=int, default=1)
ap.add_argument("--seq", type=int, default=512)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--lr", type=float, default=8e-4)
ap.add_argument("--trace-tokens", type=int, default=2048, help="tokens per routing trace")
ap.add_argument("--predict", type=int, default=16, help="lookahead candidates recorded per layer")
ap.add_argument("--experts-impl", choices=("auto", "padded", "hf"), default="auto",
                help="training's MoE block: transformers' own (hf), padded per-expert bmm's, or the faster (auto)")
ap.add_argument("--save-weights", action="store_true", help="save_pretrained (f32) under --work/hf")
ap.add_argument("--smoke", action="store_true", help="tiny corpus and model, to test the pipeline")
args = ap.parse_args()
if args.smoke:
    args.layers, args.experts, args.seq, args.batch, args.trace_tokens = 4, 16, 128, 4, 256
OUT, WORK = args.out, args.work
os.makedirs(OUT, exist_ok=True)
os.makedirs(WORK, exist_ok=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
import transformers  # noqa: E402
from transformers import Qwen3MoeConfig  # noqa: E402

torch.manual_seed(1234)
random.seed(1234)
dev = "cuda"
log(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")

report = {"script": "tools/train_routing_model.py", "argv": sys.argv[1:]}


def save_report():
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump(report, f, indent=2)


# ---------------------------------------------------------------- corpus, tokenizer
roots = lt.python_roots()
train_docs, held_docs = lt.collect_corpus(roots, os.path.join(OUT, "manifest.tsv.gz"), smoke=args.smoke,
                                          max_train_mb=args.max_train_mb)
log(f"corpus: {len(train_docs)} train files ({sum(len(t) for _, t in train_docs) / 1e6:.1f} MB), "
    f"{len(held_docs)} held out ({sum(len(t) for _, t in held_docs) / 1e6:.1f} MB)")
tk = Tokenizer.from_file(args.tokenizer)
EOT, IM_START, IM_END = (tk.token_to_id(s) for s in lt.SPECIALS)
n_vocab = tk.get_vocab_size()
rng = random.Random(7)
order = list(range(len(train_docs)))
rng.shuffle(order)
train_ids = np.array(lt.encode_docs(tk, [train_docs[i] for i in order], EOT, wrap_every=8), dtype=np.int32)
held_ids = lt.encode_docs(tk, held_docs, EOT)
# Two disjoint sets of held-out files for the traces: choose on one, report on the other.
trace_sets = {"tune": lt.encode_docs(tk, held_docs[0::2], EOT), "heldout": lt.encode_docs(tk, held_docs[1::2], EOT)}
log(f"tokens: train {len(train_ids) / 1e6:.1f} M, held out {len(held_ids) / 1e6:.2f} M; "
    f"tokenizer {n_vocab} tokens")
report.update({"train_files": len(train_docs), "heldout_files": len(held_docs),
               "train_tokens_available": int(len(train_ids)), "heldout_tokens": len(held_ids),
               "trace_files": {"tune": "even-numbered held-out files (path order)",
                               "heldout": "odd-numbered held-out files"}})

# ---------------------------------------------------------------- model
SEQ, BATCH = args.seq, args.batch
cfg = Qwen3MoeConfig(
    vocab_size=((n_vocab + 63) // 64) * 64, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
    moe_intermediate_size=args.moe_intermediate, num_hidden_layers=args.layers,
    num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=64,
    num_experts=args.experts, num_experts_per_tok=args.top_k, decoder_sparse_step=1, norm_topk_prob=True,
    max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    router_aux_loss_coef=0.0, output_router_logits=True, bos_token_id=None, eos_token_id=IM_END,
    pad_token_id=EOT)
model, experts_impl = lt.build_model(cfg, log)
# Depth-scaled init of the projections that write into the residual stream (GPT-2's
# 1/sqrt(2 x layers)): 48 layers at transformers' flat 0.02 let the residual grow until a
# first run (lr 1.5e-3, no z-loss) went to NaN at step ~90.
with torch.no_grad():
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.mul_(1 / math.sqrt(2 * args.layers))
        for name, prm in layer.mlp.experts.named_parameters():
            if "down" in name:
                prm.mul_(1 / math.sqrt(2 * args.layers))
model.to(dev)
n_params = sum(p.numel() for p in model.parameters())
K, E, L = cfg.num_experts_per_tok, cfg.num_experts, cfg.num_hidden_layers
log(f"model: {n_params / 1e6:.1f} M parameters, experts implementation {experts_impl}")
report.update({"parameters": n_params, "experts_impl": experts_impl, "hf_config": json.loads(cfg.to_json_string()),
               "torch": torch.__version__, "transformers": transformers.__version__,
               "gpu": torch.cuda.get_device_name()})
save_report()

# ---------------------------------------------------------------- fast experts for training
# transformers' MoE block trained at only 12-25 k tokens/s on the H100 (session 9): the
# experts are tiny (192 -> 64) and many (128 x 48 layers), so the step is bound by
# per-expert bookkeeping, not arithmetic. Training may instead run the same block as two
# batched matmuls over per-expert token lists padded into slots ("padded"). The block's parameters
# stay the model's own (only their forward is replaced), so evaluation, the traces and
# save_pretrained run transformers' own code. The layout of the fused expert weights is
# not assumed: every candidate reading is compared with transformers' block on the same
# input at f32, and the fastest implementation that matches is used (--experts-impl).
ROUTER_LOGITS = []  # filled by the padded forward, one [tokens, E] tensor per layer


def expert_layouts(experts, E, I, H):
    """Candidate readings of the experts' weights as (w_gate_up [E, H, 2I], w_down [E, I, H],
    interleaved), as differentiable views of the parameters where the layout allows."""
    if isinstance(experts, torch.nn.ModuleList):  # one module per expert (older transformers)
        def stacked():
            g = torch.stack([e.gate_proj.weight for e in experts])  # [E, I, H]
            u = torch.stack([e.up_proj.weight for e in experts])
            d = torch.stack([e.down_proj.weight for e in experts])  # [E, H, I]
            return torch.cat([g, u], 1).transpose(1, 2), d.transpose(1, 2)
        return [("modulelist", stacked, False)]
    p3 = {n: q for n, q in experts.named_parameters() if q.dim() == 3}
    gu = next((q for n, q in p3.items() if "gate" in n and "up" in n), None)
    dn = next((q for n, q in p3.items() if "down" in n), None)
    if gu is None or dn is None:
        return []
    out = []
    for gu_t in (False, True):          # [E, 2I, H] (as nn.Linear) or [E, H, 2I]
        for dn_t in (False, True):      # [E, H, I] or [E, I, H]
            if (gu.shape[1:] != ((H, 2 * I) if gu_t else (2 * I, H))) or \
               (dn.shape[1:] != ((I, H) if dn_t else (H, I))):
                continue
            for inter in (False, True):
                def views(gu_t=gu_t, dn_t=dn_t):
                    return (gu if gu_t else gu.transpose(1, 2)), (dn if dn_t else dn.transpose(1, 2))
                out.append((f"gate_up {'HxI' if gu_t else 'IxH'}, down {'IxH' if dn_t else 'HxI'}"
                            f"{', interleaved' if inter else ''}", views, inter))
    return out


def amp_dtype(t):
    """The dtype autocast gives matmuls now (bf16 in training), else t's own."""
    try:
        return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else t.dtype
    except (TypeError, AttributeError):
        return t.dtype


def padded_moe(x, router_w, w_gu, w_d, k, norm, interleaved):
    """The MoE block over x [N, H]: each expert's routed tokens gathered into slots of C
    rows (an expert with more than C tokens takes several slots, each with its expert's
    weights), two bmm's over the slots, weighted and summed back per token. Padding to
    the busiest expert instead ran out of the H100's 80 GB in the first steps, where one
    expert of a layer takes most tokens until the balancing loss spreads them; slots bound
    the memory by the routes' count whatever their balance. Returns (out [N, H], router
    logits [N, E])."""
    n, h = x.shape
    e = router_w.shape[0]
    logits = F.linear(x, router_w)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float)
    topv, topi = torch.topk(probs, k, dim=-1)
    if norm:
        topv = topv / topv.sum(dim=-1, keepdim=True)
    flat = topi.reshape(-1)
    order = torch.argsort(flat, stable=True)
    e_sorted = flat[order]
    counts = torch.bincount(flat, minlength=e)
    share = -(-2 * n * k // e)  # twice a balanced expert's share, rounded up
    rows = max(64, -(-share // 64) * 64)
    slots_of = (counts + rows - 1) // rows
    n_slots = int(slots_of.sum())  # one host sync per layer
    pos = torch.arange(n * k, device=x.device) - (torch.cumsum(counts, 0) - counts)[e_sorted]
    slot = (torch.cumsum(slots_of, 0) - slots_of)[e_sorted] + pos // rows
    row = pos % rows
    slot_expert = torch.repeat_interleave(torch.arange(e, device=x.device), slots_of, output_size=n_slots)
    tok = order // k
    dt = amp_dtype(x)
    xin = x.new_zeros(n_slots, rows, h, dtype=dt).index_put((slot, row), x[tok].to(dt))
    gu = torch.bmm(xin, w_gu[slot_expert].to(dt))
    if interleaved:
        g, u = gu[..., 0::2], gu[..., 1::2]
    else:
        g, u = gu.chunk(2, dim=-1)
    y = torch.bmm(F.silu(g) * u, w_d[slot_expert].to(dt))
    yk = y[slot, row].float() * topv.reshape(-1)[order, None]
    out = torch.zeros(n, h, device=x.device, dtype=torch.float).index_add(0, tok, yk)
    return out.to(x.dtype), logits


def install_padded(mlp, views, interleaved, returns_tuple):
    k, norm = cfg.num_experts_per_tok, cfg.norm_topk_prob

    def forward(hidden_states, *a, **kw):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        w_gu, w_d = views()
        out, logits = padded_moe(x, mlp.gate.weight, w_gu, w_d, k, norm, interleaved)
        ROUTER_LOGITS.append(logits)
        out = out.reshape(shape)
        return (out, logits) if returns_tuple else out
    mlp.forward = forward


def choose_experts_impl(model):
    """Returns the name of the implementation training uses; installs it."""
    if args.experts_impl == "hf":
        return "transformers"
    H, I = cfg.hidden_size, cfg.moe_intermediate_size
    mlp0 = model.model.layers[0].mlp
    x = torch.randn(96, H, device=dev)
    with torch.no_grad():
        ref = mlp0(x[None])
        returns_tuple = isinstance(ref, tuple)
        ref = (ref[0] if returns_tuple else ref).reshape(-1, H).float()
        scale = ref.abs().max().item()
        match = None
        for name, views, inter in expert_layouts(mlp0.experts, E, I, H):
            w_gu, w_d = views()
            got, _ = padded_moe(x, mlp0.gate.weight, w_gu, w_d, K, cfg.norm_topk_prob, inter)
            err = (got.float() - ref).abs().max().item() / max(scale, 1e-30)
            log(f"experts layout '{name}': max |padded - transformers| / max|out| = {err:.2e}")
            if err < 1e-4 and match is None:
                match = (name, inter)
    if match is None:
        log("no reading of the expert weights reproduces transformers' block: training with transformers' own")
        report["experts_layout_check"] = "no match"
        return "transformers"
    report["experts_layout"] = match[0]

    def timed_steps(n=3):
        times = []
        for i in range(n + 1):
            torch.cuda.synchronize()
            t = time.time()
            step_loss(model, sample_batch())[2].backward()
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if i:
                times.append(time.time() - t)
        ROUTER_LOGITS.clear()
        return min(times)

    t_hf = timed_steps()
    for layer in model.model.layers:
        views = dict((n, (v, i)) for n, v, i in expert_layouts(layer.mlp.experts, E, I, H))[match[0]]
        install_padded(layer.mlp, views[0], views[1], returns_tuple)
    t_pad = timed_steps()
    log(f"one training step of {BATCH} x {SEQ} tokens: transformers' experts {t_hf * 1e3:.0f} ms, "
        f"padded {t_pad * 1e3:.0f} ms")
    report["step_ms"] = {"transformers": t_hf * 1e3, "padded": t_pad * 1e3}
    if args.experts_impl == "auto" and t_hf <= t_pad:
        uninstall_padded(model)
        return "transformers"
    return "padded"


def uninstall_padded(model):
    """Back to transformers' own forward (the class's: install_padded set an instance one)."""
    for layer in model.model.layers:
        layer.mlp.__dict__.pop("forward", None)


def padded_installed(model):
    return "forward" in model.model.layers[0].mlp.__dict__

opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
data = torch.from_numpy(train_ids).to(dev)
WARMUP = 200
AUX_COEF = 0.02
Z_COEF = 1e-3  # router z-loss (ST-MoE): keeps router logits small, a known MoE stabiliser


def router_z_loss(router_logits):
    return sum(torch.logsumexp(lg.float(), dim=-1).square().mean() for lg in router_logits) / len(router_logits)


def sample_batch():
    """BATCH windows of SEQ training tokens at random places."""
    starts = torch.randint(0, len(data) - SEQ, (BATCH,), device=dev)
    return data[starts[:, None] + torch.arange(SEQ, device=dev)[None, :]].long()


def step_loss(model, chunk):
    """Forward of one batch: (output, balance loss, total loss). The router logits come
    from the padded forward when it is installed, else from transformers' output."""
    own = padded_installed(model)
    ROUTER_LOGITS.clear()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        # labels = inputs: transformers shifts them by one itself.
        out = model(input_ids=chunk, labels=chunk, output_router_logits=not own)
        router_logits = ROUTER_LOGITS if own else out.router_logits
        aux = lt.layer_balance_loss(router_logits, E, K)
    total = out.loss + AUX_COEF * aux + Z_COEF * router_z_loss(router_logits)
    ROUTER_LOGITS.clear()
    return out, aux, total


try:
    train_impl = choose_experts_impl(model)
except Exception as ex:  # the padded path is an optimisation: say why it is off, train anyway
    import traceback
    log("padded experts failed, training with transformers' own:", repr(ex))
    traceback.print_exc()
    report["padded_error"] = repr(ex)
    uninstall_padded(model)
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    train_impl = "transformers"
report["train_experts_impl"] = train_impl
log(f"training with {train_impl} experts")
if args.deadline:
    # Leave time for evaluation and the traces (about a minute at full size).
    args.train_seconds = max(10.0, min(args.train_seconds, args.deadline - (time.time() - T0) - 75))
# Warm-up over a tenth of the steps the clock allows (at most 200): at 12 k tokens/s, a fixed
# 200 of 288 steps kept the second run's learning rate low for most of its training.
step_s = report.get("step_ms", {}).get("padded" if train_impl == "padded" else "transformers", 0) / 1e3
if step_s > 0:
    WARMUP = max(20, min(200, int(0.1 * args.train_seconds / step_s)))
report["warmup_steps"] = WARMUP
log(f"training for {args.train_seconds:.0f} s, warm-up {WARMUP} steps")
step, t_start, skipped = 0, time.time(), 0
loss_log = open(os.path.join(OUT, "loss.tsv"), "w")
loss_log.write("step\tseconds\ttokens\tloss\taux_loss\tlr\n")
model.train()
while True:
    frac = (time.time() - t_start) / args.train_seconds
    if frac >= 1:
        break
    lr = args.lr * min(1.0, (step + 1) / WARMUP) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
    for g in opt.param_groups:
        g["lr"] = lr
    chunk = sample_batch()
    opt.zero_grad(set_to_none=True)
    try:
        out, aux, total = step_loss(model, chunk)
        total.backward()
    except torch.OutOfMemoryError:
        if train_impl != "padded":
            raise
        # the padded experts' memory follows the routes: say so and go on with transformers'
        log(f"step {step}: out of GPU memory with padded experts; transformers' block from here")
        report["padded_oom_at_step"] = step
        out = aux = total = None
        ROUTER_LOGITS.clear()
        opt.zero_grad(set_to_none=True)
        uninstall_padded(model)
        train_impl = report["train_experts_impl"] = "transformers"
        torch.cuda.empty_cache()
        continue
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if not (torch.isfinite(total) and torch.isfinite(gnorm)):
        # One bad batch must not poison the weights: skip it, and halve the learning rate
        # for good if it keeps happening.
        skipped += 1
        opt.zero_grad(set_to_none=True)
        log(f"step {step}: non-finite loss {total.item()} / gradient norm {gnorm.item()}: skipped ({skipped})")
        if skipped % 5 == 0:
            args.lr /= 2
        if skipped > 50:
            raise SystemExit("training diverged: 50 non-finite steps")
        continue
    opt.step()
    step += 1
    if step % 25 == 0:
        a, l = float(aux.item()), out.loss.item()
        loss_log.write(f"{step}\t{time.time() - t_start:.1f}\t{step * BATCH * SEQ}\t{l:.4f}\t{a:.4f}\t{lr:.2e}\n")
        loss_log.flush()
        if step % 200 == 0:
            log(f"step {step} loss {l:.3f} aux {a:.3f} lr {lr:.2e} "
                f"{step * BATCH * SEQ / (time.time() - t_start) / 1e3:.0f}k tok/s")
loss_log.close()
train_seconds = time.time() - t_start
log(f"trained {step} steps, {step * BATCH * SEQ / 1e6:.1f} M tokens in {train_seconds:.0f} s")
report.update({"steps": step, "skipped_steps": skipped, "z_coef": Z_COEF, "batch": BATCH, "seq": SEQ, "tokens_seen": step * BATCH * SEQ,
               "train_seconds": train_seconds, "lr": args.lr, "aux_coef": AUX_COEF})
save_report()

# ---------------------------------------------------------------- held-out perplexity (f32)
# evaluation and the traces run transformers' own MoE block
uninstall_padded(model)
ROUTER_LOGITS.clear()
model.eval()
model.float()


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


N_EVAL = min(len(held_ids) // SEQ, 8 if args.smoke else 96) * SEQ
ppl, n_scored = perplexity(model, held_ids[:N_EVAL], SEQ)
log(f"held-out perplexity f32: {ppl:.3f} over {n_scored} tokens ({SEQ}-token windows)")
report.update({"ppl_f32": ppl, "eval_tokens_scored": n_scored, "eval_window": SEQ})
save_report()

# ---------------------------------------------------------------- routing traces
caught = {}
hooks = []
for li, layer in enumerate(model.model.layers):
    def hook(mod, inp, out, li=li):
        # Logits recomputed from the router's input and weight: the router module's own
        # return value differs between transformers versions.
        x = inp[0].detach().reshape(-1, inp[0].shape[-1])
        caught[li] = F.linear(x.float(), mod.weight.float())
    hooks.append(layer.mlp.gate.register_forward_hook(hook))
    # The residual after layer li's attention (the input of its post-attention norm): one
    # sublayer before layer li+1's input, where the engine's lookahead predicted layer li+1's
    # experts until session 17 (it now predicts from layer li+1's input, lookahead.trace).
    def mid_hook(mod, inp, li=li):
        x = inp[0].detach()
        caught[("mid", li)] = x.reshape(-1, x.shape[-1])
    hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(mid_hook))

P = min(args.predict, E)
recall = {m: [0.0] * L for m in (K, 2 * K) if m <= P}
recall_early = [0.0] * L
n_traced = 0
with torch.no_grad():
    for name, ids in trace_sets.items():
        T = min(args.trace_tokens, len(ids))
        routes, preds, epreds = [], [], []  # [T][L][K], [T][L][P], [T][L][P]
        for s in range(0, T, SEQ):
            w = torch.tensor([ids[s:min(s + SEQ, T)]], device=dev)
            caught.clear()
            o = model(input_ids=w, use_cache=False, output_hidden_states=True)
            hs = o.hidden_states  # hs[l] = layer l's input residual
            r_layers, p_layers, e_layers = [], [], []
            for li, layer in enumerate(model.model.layers):
                r_layers.append(torch.topk(caught[li], K, dim=-1).indices.cpu())
                x = layer.post_attention_layernorm(hs[li][0])
                pl = F.linear(x.float(), layer.mlp.gate.weight.float())
                top = torch.topk(pl, P, dim=-1).indices
                p_layers.append(top.cpu())
                actual = torch.zeros(top.shape[0], E, device=dev).scatter_(1, caught[li].topk(K, dim=-1).indices, 1.0)
                for m in recall:
                    hit = torch.zeros_like(actual).scatter_(1, top[:, :m], 1.0)
                    recall[m][li] += (hit * actual).sum().item() / K
                # one sublayer earlier: layer li's norm and router on the residual after layer
                # li-1's attention (the embeddings for layer 0)
                src = hs[0].reshape(-1, hs[0].shape[-1]) if li == 0 else caught[("mid", li - 1)]
                el = F.linear(layer.post_attention_layernorm(src).float(), layer.mlp.gate.weight.float())
                etop = torch.topk(el, P, dim=-1).indices
                e_layers.append(etop.cpu())
                hit = torch.zeros_like(actual).scatter_(1, etop[:, :K], 1.0)
                recall_early[li] += (hit * actual).sum().item() / K
            for t in range(w.shape[1]):
                routes.append([r_layers[li][t].tolist() for li in range(L)])
                preds.append([p_layers[li][t].tolist() for li in range(L)])
                epreds.append([e_layers[li][t].tolist() for li in range(L)])
        n_traced += T
        lt.write_trace(os.path.join(OUT, f"{name}.trace"), routes, L, E, K)
        lt.write_trace(os.path.join(OUT, f"{name}.lookahead.trace"), preds, L, E, P,
                       note="lookahead: layer L's router on the residual before layer L's attention, best first")
        lt.write_trace(os.path.join(OUT, f"{name}.early-lookahead.trace"), epreds, L, E, P,
                       note="early lookahead: layer L's router on the residual after layer L-1's attention, best first")
        log(f"{name}: {T} tokens traced")
for h in hooks:
    h.remove()
report["lookahead_recall"] = {f"at_{m}": [v / n_traced for v in recall[m]] for m in recall}
log("lookahead recall@8 per layer:", " ".join(f"{v / n_traced:.2f}" for v in recall[K]))
report["early_lookahead_recall_at_k"] = [v / n_traced for v in recall_early]
log("early lookahead recall@8 per layer:", " ".join(f"{v / n_traced:.2f}" for v in recall_early))
save_report()

if args.save_weights:
    model.config.output_router_logits = False
    model.save_pretrained(os.path.join(WORK, "hf"))
log("done")
