r"""Lesson 09's protocol: a character GPT on Tiny Shakespeare (trained and cached), calibration
inputs propagated through the blocks already pruned, validation loss and perplexity, sampling,
ShortGPT's Block Influence, and paper mode's OPT / WikiText-2 / C4 loading.

The pruning itself is in :mod:`pruninglib.methods` (``obc``, ``sparsegpt``, ``wanda``,
``nm_sparsity``). What is here is the *sequential* procedure of SparseGPT's and Wanda's code
(Frantar & Alistarh 2023, their ``opt.py``, ``opt_sequential``; Sun et al. 2023, ``prune_wanda``):
the calibration sequences are run up to the first block and caught there; then, block by block,
every Linear of the block gets its Hessian :math:`H = \tfrac2n X^\top X` (and its input norms) from
the block's inputs, all of them are pruned, and the block -- now pruned -- is run again to give the
next block's inputs. Errors of earlier blocks are thereby seen (and partly compensated) by later ones.

Paper mode (:func:`load_opt`, :func:`load_wikitext2`, :func:`load_c4`): a local copy on the data
search path in the Hugging Face Hub's own layout is used when there is one
(``<root>/hf/facebook/opt-125m/`` as written by ``huggingface-cli download facebook/opt-125m
--local-dir ...``; ``<root>/hf/Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet``;
``<root>/hf/allenai/c4/en/c4-train.00000-of-01024.json.gz``), read by ``from_pretrained`` and
``datasets.load_dataset`` as usual; otherwise the same calls name the Hub ids and download.
``transformers`` and ``datasets`` are imported only there (the optional extra ``llm``).
"""
from __future__ import annotations

import copy
import math
import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib.methods.nm_sparsity import apply_mask
from pruninglib.methods.sparsegpt import sparsegpt_prune
from pruninglib.methods.wanda import magnitude_mask, wanda_mask

__all__ = ["METHODS", "PAPER_OPT125M", "char_data", "train_char_gpt", "char_gpt", "val_loss", "sample_text",
           "calibration_windows", "blocks_of", "compare", "capture_block_inputs", "layer_inputs", "run_block", "prune_sequential",
           "weight_sparsity", "block_influence", "drop_blocks", "find_hf_copy", "load_opt", "load_wikitext2",
           "load_c4", "c4_calibration", "perplexity", "semi_structured_speed", "pattern_label"]

#: The methods compared in lesson 09 (name -> what it is).
METHODS = {"magnitude": "|W|, one threshold per layer (Han et al. 2015)",
           "magnitude_row": "|W|, the same fraction in every output row",
           "wanda": "|W| * ||X_j||, per output row, no update (Sun et al. 2023)",
           "sparsegpt": "OBS mask + update, column by column (Frantar & Alistarh 2023)"}

#: OPT-125M, raw WikiText-2 perplexity at 50% unstructured sparsity: Frantar & Alistarh 2023
#: (SparseGPT), Table 1 (dense 27.66, magnitude 193., SparseGPT 36.85).
PAPER_OPT125M = {"dense": 27.66, "magnitude": 193.0, "sparsegpt": 36.85}


# ---------------------------------------------------------------------------- data and the char GPT
def char_data(block_size: int) -> tuple[Any, Any]:
    """Tiny Shakespeare's training (first 90%) and validation (last 10%) splits as
    :class:`pruninglib.data.CharText` with context ``block_size``. Used in lesson 09."""
    from pruninglib.data import load_dataset

    train, val = load_dataset("tinyshakespeare", "train"), load_dataset("tinyshakespeare", "test")
    train.block_size = val.block_size = block_size
    return train, val


def _lr(it: int, iters: int, lr: float, warmup: int, min_lr: float) -> float:
    """nanoGPT's schedule: linear warm-up, then cosine decay to ``min_lr``."""
    if it < warmup:
        return lr * (it + 1) / warmup
    ratio = (it - warmup) / max(1, iters - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, ratio))) * (lr - min_lr)


def train_char_gpt(model: nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor, iters: int, batch: int,
                   lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100, weight_decay: float = 0.1,
                   eval_every: int = 250, eval_windows: int = 64, seed: int = 0, progress: bool = True,
                   ckpt_path: Any = None, signature: dict | None = None) -> list[dict]:
    """Train a :class:`pruninglib.models.CharGPT` on random windows (AdamW, betas (0.9, 0.99),
    gradient clipping at 1, nanoGPT's ``train_shakespeare_char.py`` settings). Returns the history
    ``[{"iter", "train_loss", "val_loss"}]``. With ``ckpt_path``, a checkpoint after every evaluation
    (:class:`pruninglib.checkpoint.Resumable`: model, AdamW, the window sampler's generator, the random
    states, the history): run again after a kill with the same ``signature``, it continues from there,
    bit-identically on the CPU. Used in lesson 09."""
    from tqdm.auto import tqdm

    from pruninglib.checkpoint import Resumable

    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    block = model.block_size
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    sig = {**(signature or {}), "iters": iters, "batch": batch, "lr": lr, "min_lr": min_lr, "warmup": warmup,
           "weight_decay": weight_decay, "eval_every": eval_every, "eval_windows": eval_windows, "seed": seed}
    state = Resumable(ckpt_path, sig, model=model, optimizer=opt)
    start, history = state.resume(g)
    run = history[-1]["train_loss"] if history else 0.0  # the running loss at the last checkpoint
    if start:
        print(f"[resume] {Path(ckpt_path).name}: continuing after iteration {start} of {iters}")
    bar = tqdm(range(start, iters), desc="training the char GPT", disable=not progress)
    for it in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(it, iters, lr, min(warmup, iters // 10 + 1), min_lr)
        ix = torch.randint(len(train_ids) - block - 1, (batch,), generator=g)
        x = torch.stack([train_ids[i:i + block] for i in ix]).to(dev)
        y = torch.stack([train_ids[i + 1:i + block + 1] for i in ix]).to(dev)
        model.train()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run = loss.item() if it == 0 else 0.9 * run + 0.1 * loss.item()
        if (it + 1) % eval_every == 0 or it + 1 == iters:
            history.append({"iter": it + 1, "train_loss": run, "val_loss": val_loss(model, val_ids, eval_windows)})
            bar.set_postfix(val_loss=f"{history[-1]['val_loss']:.3f}")
            state.save(it + 1, history, g)
    model.eval()
    return history


def char_gpt(settings: dict, train: Any, val: Any, seed: int = 0, device: torch.device | str = "cpu") -> tuple[nn.Module, list[dict]]:
    """The lesson's trained char GPT, from the cache when these settings were trained before
    (:func:`pruninglib.cache.cached`). ``settings`` holds ``n_layer, n_head, n_embd, block_size,
    iters, batch, lr`` and ``eval_windows``. Returns ``(model in eval mode, history)``. Used in lesson 09."""
    from pruninglib.cache import cached, work_path
    from pruninglib.models import build_model

    arch = dict(vocab_size=len(train.chars), block_size=settings["block_size"], n_layer=settings["n_layer"],
                n_head=settings["n_head"], n_embd=settings["n_embd"])
    params = {**arch, "iters": settings["iters"], "batch": settings["batch"], "lr": settings["lr"], "seed": seed,
              "corpus": f"{len(train.text)}:{hash_text(train.text)}", "device": str(torch.device(device).type)}

    def compute() -> dict:
        torch.manual_seed(seed)
        model = build_model("char_gpt", **arch).to(device)
        hist = train_char_gpt(model, train.data, val.data, settings["iters"], settings["batch"], settings["lr"],
                              eval_every=max(1, settings["iters"] // 8), eval_windows=settings["eval_windows"],
                              seed=seed, ckpt_path=work_path("char_gpt", params), signature=params)
        return {"state": {k: v.cpu() for k, v in model.state_dict().items()}, "history": hist}

    out = cached("char_gpt", params, compute)
    model = build_model("char_gpt", **arch)
    model.load_state_dict(out["state"])
    return model.to(device).eval(), out["history"]


def hash_text(text: str) -> str:
    """A short SHA-256 of a text (cache keys). Used in lesson 09."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@torch.no_grad()
def val_loss(model: nn.Module, ids: torch.Tensor, max_windows: int | None = None, batch: int = 32) -> float:
    """Mean next-character cross-entropy (nats) over consecutive non-overlapping windows of the
    model's context (the first ``max_windows`` of them, or all). ``exp`` of it is the
    perplexity per character. Used in lesson 09."""
    block = model.block_size
    n = (len(ids) - 1) // block
    n = n if max_windows is None else min(n, max_windows)
    if n < 1:
        raise ValueError(f"{len(ids)} characters hold no window of {block + 1}")
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, n, batch):
        starts = range(s * block, min(n, s + batch) * block, block)
        x = torch.stack([ids[i:i + block] for i in starts]).to(dev)
        y = torch.stack([ids[i + 1:i + block + 1] for i in starts]).to(dev)
        total += float(F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    model.train(was)
    return total / count


@torch.no_grad()
def sample_text(model: nn.Module, data: Any, prompt: str = "\n", length: int = 200, temperature: float = 0.8,
                seed: int = 0) -> str:
    """``length`` characters sampled after ``prompt`` (temperature sampling, a seeded generator,
    so dense and pruned models draw the same random numbers). Used in lesson 09."""
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    idx = data.encode(prompt)[None].to(dev)
    for _ in range(length):
        logits = model(idx[:, -model.block_size:])[:, -1] / temperature
        nxt = torch.multinomial(F.softmax(logits.float().cpu(), -1), 1, generator=g).to(dev)
        idx = torch.cat([idx, nxt], 1)
    return data.decode(idx[0, len(prompt):].tolist())


def calibration_windows(ids: torch.Tensor, n: int, block: int, seed: int = 0) -> torch.Tensor:
    """``n`` random training windows of ``block`` ids, ``(n, block)`` (SparseGPT's and Wanda's
    calibration: random segments of the training text). Used in lesson 09."""
    g = torch.Generator().manual_seed(seed)
    ix = torch.randint(len(ids) - block, (n,), generator=g)
    return torch.stack([ids[i:i + block] for i in ix])


# ---------------------------------------------------------------------------- sequential pruning
def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks: ``model.blocks`` (CharGPT) or ``model.model.decoder.layers`` (OPT).
    Used in lesson 09."""
    if hasattr(model, "blocks"):
        return model.blocks
    try:
        return model.model.decoder.layers
    except AttributeError:
        raise TypeError(f"{type(model).__name__}: no .blocks and no .model.decoder.layers; "
                        "pass a CharGPT or an OPTForCausalLM") from None


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_block_inputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, dict]]:
    """The first block's input (and its keyword arguments: attention mask, positions) for each
    batch of token ids, caught by a pre-hook that stops the forward pass there (the ``Catcher``
    of SparseGPT's ``opt_sequential``). Used in lesson 09."""
    first = blocks_of(model)[0]
    dev = next(model.parameters()).device
    caught: list[tuple[torch.Tensor, dict]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.pop("hidden_states")
        kept = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values", "past_key_value", "cache")}
        caught.append((x.detach(), kept))
        raise _Stop

    h = first.register_forward_pre_hook(hook, with_kwargs=True)
    extra = {"use_cache": False} if hasattr(model, "config") else {}  # a transformers model: no KV cache
    try:
        for b in batches:
            try:
                model(b.to(dev), **extra)
            except _Stop:
                pass
    finally:
        h.remove()
    return caught


@torch.no_grad()
def layer_inputs(model: nn.Module, calib: Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """The inputs of submodule ``name`` (e.g. ``"blocks.0.fc"``) on the calibration batches, one
    row per token, ``(tokens, in_features)``. Used in lesson 09."""
    module = dict(model.named_modules())[name]
    got: list[torch.Tensor] = []
    h = module.register_forward_hook(lambda mod, args, out: got.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    try:
        for b in calib:
            model(b.to(next(model.parameters()).device))
    finally:
        h.remove()
    return torch.cat(got)


def run_block(block: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """One block's output (the first element when the block returns a tuple). Used in lesson 09."""
    out = block(x, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}


def pattern_label(sparsity: float, n: int = 0, m: int = 0) -> str:
    """``"50%"`` or ``"2:4"``: how a sparsity pattern is named in tables. Used in lesson 09."""
    return f"{n}:{m}" if n else f"{round(100 * sparsity)}%"


@torch.no_grad()
def prune_sequential(model: nn.Module, calib: Sequence[torch.Tensor], method: str | Callable, sparsity: float = 0.5,
                     n: int = 0, m: int = 0, blocksize: int = 128, percdamp: float = 0.01, inplace: bool = False,
                     progress: bool = False, propagate: bool = True) -> nn.Module:
    r"""Prune every Linear inside the transformer blocks with ``method`` (one of :data:`METHODS`),
    block by block, the calibration inputs propagated through the blocks already pruned.

    Args:
        model: a CharGPT or an OPTForCausalLM.
        calib: batches of token ids, ``(B, T)`` each.
        method: ``"magnitude"``, ``"magnitude_row"``, ``"wanda"`` or ``"sparsegpt"``; or a function
            ``(weight, {"h": H, "norms": input norms}) -> mask`` (``True`` = remove), applied without update.
        sparsity: the fraction removed (unstructured); ignored when ``n`` is set.
        n, m: N:M sparsity (2, 4 or 4, 8), 0: unstructured.
        blocksize, percdamp: SparseGPT's block size and damping (1% of the mean Hessian diagonal).
        inplace: prune ``model`` itself instead of a copy.
        propagate: the next block's calibration inputs come from the block *as pruned* (the papers);
            ``False``: from the dense block (every block sees the dense model's inputs).

    Returns:
        The pruned model. Embeddings, the final LayerNorm and the head stay dense, as in the papers.

    Used in lesson 09.
    """
    if not callable(method) and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)} (or pass a function)")
    from tqdm.auto import tqdm

    model = model if inplace else copy.deepcopy(model)
    model.eval()
    blocks = blocks_of(model)
    if isinstance(method, str) and method.startswith("magnitude"):  # no data needed
        for blk in blocks:
            for lin in _linears(blk).values():
                mask = magnitude_mask(lin.weight, sparsity, "row" if method == "magnitude_row" else "layer", n, m)
                apply_mask(lin, mask)
        return model
    inputs = capture_block_inputs(model, calib)
    acc = torch.float32 if inputs[0][0].device.type != "cpu" else torch.float64
    name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
    for blk in tqdm(blocks, desc=f"{name} {pattern_label(sparsity, n, m)}", disable=not progress):
        lins = _linears(blk)
        stats = {k: {"h": None, "sq": None, "rows": 0} for k in lins}

        def make_hook(key: str) -> Callable:
            def hook(mod: nn.Module, args: tuple, out: Any) -> None:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).to(acc)
                s = stats[key]
                s["h"] = (x.T @ x) if s["h"] is None else s["h"].addmm_(x.T, x)
                s["sq"] = x.pow(2).sum(0) if s["sq"] is None else s["sq"] + x.pow(2).sum(0)
                s["rows"] += x.shape[0]
            return hook

        handles = [lin.register_forward_hook(make_hook(k)) for k, lin in lins.items()]
        try:
            dense_out = [(run_block(blk, x, kw), kw) for x, kw in inputs]
        finally:
            for h in handles:
                h.remove()
        for key, lin in lins.items():
            s = stats[key]
            if callable(method):
                apply_mask(lin, method(lin.weight.detach(), {"h": 2.0 * s["h"] / s["rows"], "norms": s["sq"].sqrt()}))
            elif method == "wanda":
                apply_mask(lin, wanda_mask(lin.weight, s["sq"].sqrt(), sparsity, n, m))
            else:
                w, _ = sparsegpt_prune(lin.weight.data, 2.0 * s["h"] / s["rows"], sparsity, n, m, blocksize,
                                       percdamp, dtype=acc)
                lin.weight.data.copy_(w)
        inputs = [(run_block(blk, x, kw), kw) for x, kw in inputs] if propagate else dense_out
    return model


def compare(model: nn.Module, calib: Sequence[torch.Tensor], methods: Sequence[str],
            patterns: Sequence[tuple[float, int, int]], evaluate: Callable[[nn.Module], float],
            keep: Callable[[str, str], bool] = lambda method, label: False, progress: bool = True,
            **kw: Any) -> tuple[list[dict], dict[tuple[str, str], nn.Module]]:
    """Prune ``model`` with every method at every ``(sparsity, n, m)`` pattern and evaluate each.

    Returns ``(rows, kept)``: one row ``{"method", "pattern", "sparsity", "value"}`` per pair
    (``sparsity`` measured on the pruned weights), and the pruned models for which
    ``keep(method, label)`` is true. ``kw`` goes to :func:`prune_sequential`. Used in lesson 09.
    """
    from tqdm.auto import tqdm

    rows, kept = [], {}
    pairs = [(meth, pat) for pat in patterns for meth in methods]
    for meth, (s, n, m) in tqdm(pairs, desc="pruning and evaluating", disable=not progress):
        pruned = prune_sequential(model, calib, meth, s, n, m, **kw)
        label = pattern_label(s, n, m)
        rows.append({"method": meth, "pattern": label, "sparsity": weight_sparsity(pruned), "value": evaluate(pruned)})
        if keep(meth, label):
            kept[(meth, label)] = pruned
    return rows, kept


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zeros among the weights of the Linears inside the blocks. Used in lesson 09."""
    ws = [lin.weight for blk in blocks_of(model) for lin in _linears(blk).values()]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


# ---------------------------------------------------------------------------- ShortGPT
@torch.no_grad()
def block_influence(model: nn.Module, calib: Sequence[torch.Tensor]) -> list[float]:
    r"""ShortGPT's Block Influence of every block (Men et al. 2024, "ShortGPT: Layers in Large
    Language Models are More Redundant Than You Expect", its Block Influence metric):

    .. math::
        \mathrm{BI}_i = 1 - \mathbb{E}_{X,t}\, \frac{X_{i,t}^\top X_{i+1,t}}{\lVert X_{i,t}\rVert\,\lVert X_{i+1,t}\rVert},

    one minus the mean cosine similarity of a block's input and output hidden state over all
    calibration tokens. A block that barely turns the residual stream has a low BI. Used in lesson 09.
    """
    inputs = capture_block_inputs(model, calib)
    out = []
    for blk in blocks_of(model):
        cos, count = 0.0, 0
        nxt = []
        for x, kw in inputs:
            y = run_block(blk, x, kw)
            c = F.cosine_similarity(x.flatten(0, -2).double(), y.flatten(0, -2).double(), dim=-1)
            cos, count = cos + float(c.sum()), count + c.numel()
            nxt.append((y, kw))
        out.append(1.0 - cos / count)
        inputs = nxt
    return out


def drop_blocks(model: nn.Module, which: Sequence[int]) -> nn.Module:
    """A copy of a CharGPT with blocks ``which`` replaced by the identity (the residual stream
    passes through unchanged; the depth shrinks). Used in lesson 09."""
    if not hasattr(model, "blocks"):
        raise TypeError("drop_blocks works on a CharGPT (model.blocks)")
    out = copy.deepcopy(model)
    for i in which:
        out.blocks[i] = nn.Identity()
    return out


# ---------------------------------------------------------------------------- paper mode: OPT, WikiText-2, C4
HF_FOLDER = "hf"
WIKITEXT2_TEST = "Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet"
C4_TRAIN = "allenai/c4/en/c4-train.00000-of-01024.json.gz"


def find_hf_copy(relative: str) -> Path | None:
    """``<root>/hf/<relative>`` in the first data search-path folder that has it, else ``None``.
    Used in lesson 09."""
    from pruninglib.data import search_path

    for root in search_path():
        p = root / HF_FOLDER / relative
        if p.exists():
            return p
    return None


def _offline_fix(relative: str, repo_type: str) -> RuntimeError:
    """The error for a paper-mode download that is neither on the search path nor allowed."""
    from pruninglib.data import search_path

    repo = "/".join(relative.split("/")[:2])
    where = ", ".join(str((r / HF_FOLDER / relative).resolve()) for r in search_path())
    return RuntimeError(f"{relative} is not on the data search path (looked for {where}) and the Hugging Face "
                        f"Hub is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE). Download it once with "
                        f"`huggingface-cli download {repo} --repo-type {repo_type} --local-dir "
                        f"data/{HF_FOLDER}/{repo}` (or point PRUNINGLIB_DATA at a folder holding {HF_FOLDER}/{repo}), "
                        "or unset the offline variables.")


def _hub_offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_opt(name: str = "facebook/opt-125m", device: torch.device | str = "cpu") -> tuple[nn.Module, Any, str]:
    """OPT and its tokenizer with ``transformers``' ``from_pretrained``: from ``<root>/hf/<name>/``
    when a copy is on the search path (what ``huggingface-cli download --local-dir`` writes),
    else from the Hub. Returns ``(model in eval mode, tokenizer, where it came from)``.

    Raises:
        ImportError: ``transformers`` is missing (``pip install -e '.[llm]'``).
        RuntimeError: no local copy and the Hub is offline (naming the download command).

    Used in lesson 09.
    """
    try:
        from transformers import AutoTokenizer, OPTForCausalLM
    except ImportError as e:  # pragma: no cover
        raise ImportError("paper mode needs Hugging Face transformers: pip install -e '.[llm]'") from e
    local = find_hf_copy(name)
    if local is None and _hub_offline():
        raise _offline_fix(name, "model")
    src = str(local) if local is not None else name
    model = OPTForCausalLM.from_pretrained(src, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src)
    return model.to(device).eval(), tok, src


def _load_text_dataset(kind: str, relative: str, hub: Callable[[], Any]) -> Any:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover
        raise ImportError("paper mode needs Hugging Face datasets: pip install -e '.[llm]'") from e
    local = find_hf_copy(relative)
    if local is not None:
        return datasets.load_dataset(kind, data_files={"train": str(local)}, split="train")
    if _hub_offline():
        raise _offline_fix(relative, "dataset")
    return hub()


def load_wikitext2() -> Any:
    """WikiText-2 (raw) test split with ``datasets.load_dataset``: the local parquet file of the Hub
    repository ``Salesforce/wikitext`` when on the search path, else the Hub. Used in lesson 09."""
    import_hub = lambda: __import__("datasets").load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")  # noqa: E731
    return _load_text_dataset("parquet", WIKITEXT2_TEST, import_hub)


def load_c4() -> Any:
    """The first C4 training shard (``en/c4-train.00000-of-01024.json.gz``, as in SparseGPT's
    ``datautils.py``) with ``datasets.load_dataset``, local copy first. Used in lesson 09."""
    import_hub = lambda: __import__("datasets").load_dataset(  # noqa: E731
        "allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"}, split="train")
    return _load_text_dataset("json", C4_TRAIN, import_hub)


def c4_calibration(tokenizer: Any, docs: Any, n: int = 128, seqlen: int = 2048, seed: int = 0) -> list[torch.Tensor]:
    """``n`` random segments of ``seqlen`` tokens from random C4 documents longer than ``seqlen``
    (SparseGPT's ``get_c4``). Each is a ``(1, seqlen)`` batch. Used in lesson 09.

    Raises:
        ValueError: no document is longer than ``seqlen`` tokens.
    """
    rng = random.Random(seed)
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"no C4 document longer than {seqlen} tokens after {tries} tries")
        ids = tokenizer(docs[rng.randrange(len(docs))]["text"], return_tensors="pt").input_ids
        if ids.shape[1] <= seqlen:
            continue
        i = rng.randrange(ids.shape[1] - seqlen)
        out.append(ids[:, i:i + seqlen])
    return out


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, seqlen: int = 2048, max_segments: int | None = None) -> float:
    """Perplexity on consecutive segments of ``seqlen`` tokens of ``ids`` (``(1, N)``; WikiText-2's
    test text joined with ``"\\n\\n"``), as in SparseGPT's ``opt_eval``: ``exp`` of the mean
    next-token loss. Used in lesson 09."""
    dev = next(model.parameters()).device
    n = ids.shape[1] // seqlen
    n = n if max_segments is None else min(n, max_segments)
    if n < 1:
        raise ValueError(f"{ids.shape[1]} tokens hold no segment of {seqlen}")
    nll = 0.0
    for i in range(n):
        x = ids[:, i * seqlen:(i + 1) * seqlen].to(dev)
        logits = model(x, use_cache=False).logits.float()
        nll += float(F.cross_entropy(logits[0, :-1], x[0, 1:]))
    return math.exp(nll / n)


def semi_structured_speed(rows: int = 3072, cols: int = 768, tokens: int = 2048, repeats: int = 50) -> dict | None:
    """Speed of a 2:4 matrix multiply with ``torch.sparse.to_sparse_semi_structured`` against the
    dense one (fp16, CUDA events), as a ratio measured in one run; ``None`` without a capable GPU
    (there is no CPU kernel). Used in lesson 09."""
    from pruninglib.methods.nm_sparsity import nm_mask, semi_structured_available

    ok, _ = semi_structured_available()
    if not ok:
        return None
    w = torch.randn(rows, cols, device="cuda", dtype=torch.float16)
    w[nm_mask(w.abs().float().cpu(), 2, 4).cuda()] = 0
    x = torch.randn(cols, tokens, device="cuda", dtype=torch.float16)
    ws = torch.sparse.to_sparse_semi_structured(w)

    def time_it(a: Any) -> float:
        for _ in range(5):
            a @ x
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            a @ x
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / repeats

    dense_ms, sparse_ms = time_it(w), time_it(ws)
    return {"dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
            "max_abs_diff": float((w @ x - ws @ x).abs().max())}
