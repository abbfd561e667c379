"""Pieces shared by the project's training scripts (train_demo.py, train_routing_model.py).

The corpus (every .py file of the Python installation that runs the script), its held-out
rule, the demo tokenizer's recipe, document encoding, the per-layer load-balancing loss,
the model builder, and the writer of lazymoe routing traces. Nothing here imports torch,
numpy or tokenizers at module level, so the corpus and trace parts run (and are tested)
on a machine without them.
"""
import gzip
import hashlib
import os
import sysconfig


def python_roots():
    """The stdlib and site-packages folders of this interpreter, each once."""
    roots = []
    for key in ("stdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p and os.path.isdir(p) and p not in roots:
            roots.append(p)
    return roots


def is_heldout(tag):
    """A file is held out when the first byte of sha1("<root>/<relative path>") is < 5 (~2%)."""
    return hashlib.sha1(tag.encode()).digest()[0] < 5


def collect_corpus(roots, manifest_path, smoke=False, max_train_mb=500.0):
    """Python files of 256 B .. 256 KiB that decode as UTF-8, sorted by path, duplicates (same
    content) dropped, split by is_heldout. Writes manifest_path (gzip TSV: path, bytes,
    sha256 prefix, split). Returns (train_docs, held_docs), lists of (tag, text)."""
    files = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            # A nested site-packages inside stdlib is covered by its own root.
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in roots]
            for fn in sorted(filenames):
                if fn.endswith(".py"):
                    files.append((root, os.path.relpath(os.path.join(dirpath, fn), root)))
    seen = set()
    train_docs, held_docs, manifest = [], [], []
    for root, rel in files:
        full = os.path.join(root, rel)
        try:
            size = os.path.getsize(full)
            if size < 256 or size > 256 * 1024:
                continue
            with open(full, "rb") as f:
                raw = f.read()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "\x00" in text:
            continue
        digest = hashlib.sha256(raw).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        tag = os.path.basename(root) + "/" + rel
        held = is_heldout(tag)
        manifest.append(f"{tag}\t{size}\t{digest[:16]}\t{'heldout' if held else 'train'}")
        (held_docs if held else train_docs).append((tag, text))
    if smoke:
        train_docs, held_docs = train_docs[:3000], held_docs[:60]
    total = sum(len(t) for _, t in train_docs)
    if total > max_train_mb * 1e6:
        # Keep a hash-chosen subset so every package stays represented.
        keep_frac = max_train_mb * 1e6 / total
        kept = {tag for tag, _ in train_docs if hashlib.sha1(tag.encode()).digest()[1] < 256 * keep_frac}
        train_docs = [d for d in train_docs if d[0] in kept]
        manifest = [m if m.split("\t", 1)[0] in kept or m.endswith("heldout") else m[:m.rindex("\t")] + "\tunused"
                    for m in manifest]
    with gzip.open(manifest_path, "wt") as f:
        f.write("# path\tbytes\tsha256_16\tsplit  (roots: " + " ".join(roots) + ")\n")
        f.write("\n".join(manifest) + "\n")
    return train_docs, held_docs


SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(train_docs, vocab_size=4096):
    """Byte-level BPE (Qwen2 pre-tokenizer regex, NFC) learned on up to 60 MB of every third
    training file; specials SPECIALS plus <think> </think> <tool_call> </tool_call> as added
    (non-special) tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    budget, sample = 0, []
    for _, t in train_docs[::3]:  # every third file, up to 60 MB: enough for 4k merges
        sample.append(t)
        budget += len(t)
        if budget > 60e6:
            break
    tk.train_from_iterator(sample, trainer)
    tk.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t in ("<think>", "</think>", "<tool_call>", "</tool_call>")])
    return tk


def chat_wrap(tag, text):
    name = tag.split("/", 1)[1]
    return (f"<|im_start|>user\nWrite the Python module `{name}`.<|im_end|>\n"
            f"<|im_start|>assistant\n{text}<|im_end|>\n")


def encode_docs(tk, docs, eot, wrap_every=0):
    """Token ids of the documents joined by eot (after each); with wrap_every = n, every n-th
    document is wrapped as a chat turn (chat_wrap). Returns a list of ints."""
    texts = []
    for i, (tag, text) in enumerate(docs):
        texts.append(chat_wrap(tag, text) if wrap_every and i % wrap_every == 0 else text)
    out = []
    for i in range(0, len(texts), 2000):
        for enc in tk.encode_batch(texts[i:i + 2000], add_special_tokens=False):
            out.extend(enc.ids)
            out.append(eot)
    return out


def layer_balance_loss(router_logits, n_experts, top_k):
    """Switch-Transformer load balancing, computed per layer and averaged (1.0 = balanced).

    transformers' own auxiliary loss pools the tokens of all layers before balancing, so
    it cannot see one layer favouring a few experts (a first demo model trained with it
    left 1-9 of 32 experts per layer unused); production MoEs balance each layer."""
    import torch
    total = 0.0
    for lg in router_logits:
        p = torch.softmax(lg.float(), dim=-1)                      # [tokens, E]
        top = torch.topk(p, top_k, dim=-1).indices
        frac = torch.zeros_like(p).scatter_(1, top, 1.0).mean(0)   # share of tokens routed to e
        total = total + n_experts * (frac * p.mean(0)).sum() / top_k
    return total / len(router_logits)


def build_model(cfg, log, **kw):
    """Qwen3Moe (or any causal LM config) from scratch, grouped_mm experts when transformers
    offers them. Returns (model, experts implementation name)."""
    from transformers import AutoModelForCausalLM
    for impl in ("grouped_mm", None):
        try:
            if impl:
                return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa",
                                                        experts_implementation=impl, **kw), impl
            return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", **kw), "eager"
        except (TypeError, ValueError) as e:
            log("experts implementation", impl, "refused:", e)
    raise SystemExit("no model")


def write_trace(path, picks, n_layers, n_experts, top_k, note=""):
    """Writes a routing trace in src/experts/trace.c's format: a header line, then one line
    per token, the layers' expert lists separated by '|', ids by spaces. picks[t][l] is a
    sequence of at most top_k expert ids (empty for a dense layer). `note` is appended to the
    header after a space (trace.c reads the three numbers and ignores the rest)."""
    for t, tok in enumerate(picks):
        if len(tok) != n_layers:
            raise ValueError(f"{path}: token {t} has {len(tok)} layers, expected {n_layers}")
        for group in tok:
            if len(group) > top_k or any(not 0 <= int(e) < n_experts for e in group):
                raise ValueError(f"{path}: token {t}: bad expert list {list(group)}")
    with open(path, "w") as f:
        f.write(f"lazymoe-routing-trace v1 layers={n_layers} experts={n_experts} top_k={top_k}"
                + (" " + note if note else "") + "\n")
        for tok in picks:
            f.write("|".join(" ".join(str(int(e)) for e in group) for group in tok) + "\n")


def read_trace(path):
    """Reads a routing trace: (header fields dict, picks[t][l] as lists of ints in file order)."""
    with open(path) as f:
        header = f.readline().split()
        if header[:2] != ["lazymoe-routing-trace", "v1"]:
            raise ValueError(f"{path}: not a lazymoe routing trace")
        fields = {k: v for k, v in (kv.split("=", 1) for kv in header[2:] if "=" in kv)}
        for k in ("layers", "experts", "top_k"):
            fields[k] = int(fields[k])
        picks = [[[int(x) for x in g.split()] for g in line.rstrip("\n").split("|")] for line in f if line.strip()]
    for t, tok in enumerate(picks):
        if len(tok) != fields["layers"]:
            raise ValueError(f"{path}: token {t + 1} has {len(tok)} layers")
    return fields, picks
