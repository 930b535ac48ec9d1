"""Lesson 07's protocol: structured OBD/OBS with K-FAC, and EigenDamage, against the usual baselines.

One trained network, one set of Fisher statistics over the training set (computed in batches with a
progress bar and cached through :mod:`pruninglib.cache`), then every method prunes it to the same
**parameter budget**: global thresholding of the method's scores over all layers with the per-layer
cap ``prune_ratio_limit`` (0.95, EigenDamage's one-pass value), the ratio found by bisection so that
every method keeps the same number of parameters. The last classifier's outputs are never pruned
(filter methods prune the producers of :func:`pruninglib.core.graph.prunable_layers`; EigenDamage
leaves the classifier as it is). One-pass and iterative schedules; fine-tuning reports both the
last epoch's and the best epoch's test accuracy (the authors' ``fine_tune_model`` keeps the best
over epochs, selected on the test set).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from pruninglib.cache import cached, state_fingerprint
from pruninglib.core.eigenbasis import bottlenecks
from pruninglib.core.graph import prunable_layers
from pruninglib.core.metrics import count_macs, count_parameters
from pruninglib.core.surgery import prune_channels
from pruninglib.criteria.base import Scores, get_criterion, normalize_per_layer
from pruninglib.criteria.eigendamage import apply_eigendamage, collect_bases, eigen_plan, eigen_plan_params, eigen_targets, global_removal
from pruninglib.criteria.kron import apply_kron_obs, fisher_diagonal, kron_criterion_scores
from pruninglib.curvature.kfac import kfac_factors
from pruninglib.train import evaluate

__all__ = ["METHODS", "FILTER_METHODS", "weights_fingerprint", "fisher_statistics", "method_scores", "filter_plan",
           "pruned_by_filters", "prune_to_budget", "finetune", "iterative_prune", "kept_widths", "size_of",
           "oracle_spearman", "lesson_data", "build_net", "least_squares_layer", "one_pass", "latency_ratios", "trained", "plan_param_count", "slug"]

#: Every method of experiment 2, in the order of the tables.
METHODS = ("C-OBD", "C-OBS", "Kron-OBD", "Kron-OBS", "EigenDamage", "Network Slimming (BN scale)", "L1 norm",
           "Taylor FO (2019)")
#: The methods that remove whole filters (all but EigenDamage).
FILTER_METHODS = tuple(m for m in METHODS if m != "EigenDamage")
_KRON = {"C-OBD": "c_obd", "C-OBS": "c_obs", "Kron-OBD": "kron_obd", "Kron-OBS": "kron_obs"}


#: A short hash of a model's parameters and buffers (a cache key part). Used in lesson 07.
weights_fingerprint = state_fingerprint


def fisher_statistics(model: nn.Module, loader: Iterable, fisher: str = "sampled", seed: int = 0,
                      key: Mapping[str, Any] | None = None, name: str = "l07_fisher", progress: bool = True,
                      max_batches: int | None = None, patch: bool = True, parts: Sequence[str] = ("filters", "eigen"),
                      compute_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The Fisher statistics of every method, over ``loader`` in batches (a tqdm bar each), cached under ``key``
    and the weights' hash:

    * ``"factors"``: K-FAC factors (unfolded patches) of the prunable producers (Kron-OBD/OBS, C-OBS);
    * ``"diag"``: the diagonal Fisher of the producers (C-OBD);
    * ``"eigen"``: K-FAC factors of every EigenDamage target (``patch=True``: the authors' channel factor).

    ``parts`` picks ``"filters"`` (the first two) and/or ``"eigen"``; ``compute_dtype`` is the dtype of each batch's
    products (float64 sums; see :func:`~pruninglib.curvature.kfac.kfac_factors`). Everything is on the CPU. Used in
    lesson 07.
    """
    targets = [f"{n}.core" if n in bottlenecks(model) else n for n in eigen_targets(model)]
    producers = [pl.name for pl in prunable_layers(model)] if not bottlenecks(model) else []
    label = "sampled" if fisher != "empirical" else "empirical"

    def cpu(fac: dict) -> dict:
        for f in fac.values():
            f.A, f.G = f.A.cpu(), f.G.cpu()
        return fac

    def compute() -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "filters" in parts and producers:
            out["factors"] = cpu(kfac_factors(model, loader, fisher=fisher, layers=producers, progress=progress,
                                              seed=seed, max_batches=max_batches, compute_dtype=compute_dtype))
            out["diag"] = {k: v.cpu() for k, v in fisher_diagonal(model, loader, producers, label, seed=seed,
                                                                  progress=progress, max_batches=max_batches,
                                                                  compute_dtype=compute_dtype).items()}
        if "eigen" in parts:
            out["eigen"] = cpu(kfac_factors(model, loader, fisher=fisher, layers=targets, progress=progress, seed=seed,
                                            max_batches=max_batches, patch=patch, compute_dtype=compute_dtype))
        return out

    params = {**dict(key or {}), "fisher": fisher, "seed": seed, "weights": weights_fingerprint(model),
              "targets": targets, "producers": producers, "max_batches": max_batches, "patch": patch,
              "parts": sorted(parts), **({"compute_dtype": str(compute_dtype)} if compute_dtype is not None else {})}
    return cached(name, params, compute)


def method_scores(method: str, model: nn.Module, stats: Mapping[str, Any], batches: Sequence, damping: float = 1e-3) -> Scores:
    """Filter scores of a method of :data:`FILTER_METHODS` (higher = keep). Used in lesson 07.

    L1 norms are normalised per layer (Molchanov et al. 2017, Eq. 8) so that one global threshold can
    compare layers; the other scores are used as they are (estimates of the loss change, or BN scales
    as Network Slimming thresholds them).

    Raises:
        ValueError: an unknown method.
    """
    dev = next(model.parameters()).device
    if method in _KRON:
        memo = stats.setdefault("memo", {}) if isinstance(stats, dict) else None  # factor inverses, kept with them
        s = kron_criterion_scores(_KRON[method], model, stats["factors"], stats["diag"], damping=damping, memo=memo)
    elif method == "Network Slimming (BN scale)":
        s = get_criterion("bn_scale")(model)
    elif method == "L1 norm":
        s = normalize_per_layer(get_criterion("weight_l1")(model))
    elif method == "Taylor FO (2019)":
        s = get_criterion("taylor_fo_gate")(model, [(x.to(dev), y.to(dev)) for x, y in batches])
    else:
        raise ValueError(f"unknown filter method {method!r}; choose one of {FILTER_METHODS}")
    return {k: v.detach().double().cpu() for k, v in s.items()}


def filter_plan(scores: Scores, ratio: float, limit: float = 0.95) -> dict[str, list[int]]:
    """Global thresholding with the per-layer cap (:func:`~pruninglib.criteria.eigendamage.global_removal`). Used in lesson 07."""
    return {k: v.tolist() for k, v in global_removal(scores, ratio, limit).items()}


def pruned_by_filters(model: nn.Module, method: str, plan: Mapping[str, Sequence[int]], stats: Mapping[str, Any] | None = None,
                      damping: float = 1e-3, joint: bool = True) -> nn.Module:
    """A pruned copy: Kron-OBS first updates the remaining filters (:func:`~pruninglib.criteria.kron.apply_kron_obs`),
    then the surgery removes the filters. Used in lesson 07."""
    net = copy.deepcopy(model)
    if method == "Kron-OBS":
        apply_kron_obs(net, plan, stats["factors"], damping, joint)
    return prune_channels(net, {k: v for k, v in plan.items() if v})


def plan_param_count(model: nn.Module, plan: Mapping[str, Sequence[int]]) -> int:
    """Parameters of ``model`` after :func:`~pruninglib.core.surgery.prune_channels` with ``plan``, counted
    without copying the model (bisection calls it often). Used in lesson 07."""
    layers = prunable_layers(model)
    rem_out: dict[int, int] = {}
    rem_in: dict[int, int] = {}
    mods: dict[int, nn.Module] = {}
    total = count_parameters(model)
    for pl in layers:
        r = len(plan.get(pl.name, ()))
        rem_out[id(pl.module)] = rem_out.get(id(pl.module), 0) + r
        rem_in[id(pl.consumer)] = rem_in.get(id(pl.consumer), 0) + r * pl.spatial_factor()
        mods[id(pl.module)], mods[id(pl.consumer)] = pl.module, pl.consumer
        if pl.norm is not None and pl.norm.affine:
            total -= 2 * r
    for key, m in mods.items():
        o, i = m.weight.shape[0], m.weight.shape[1]
        k = m.weight[0, 0].numel()
        bias = m.bias is not None
        new_o, new_i = o - rem_out.get(key, 0), i - rem_in.get(key, 0)
        total += new_o * new_i * k + new_o * bias - (o * i * k + o * bias)
    return total


def _bisect(count: Callable[[float], int], target: int, steps: int = 14, hi: float = 0.995) -> float:
    """The smallest ratio whose parameter count is at most ``target`` (the largest ratio tried if none)."""
    lo_r, hi_r = 0.0, hi
    if count(hi_r) > target:
        return hi_r
    for _ in range(steps):
        mid = 0.5 * (lo_r + hi_r)
        if count(mid) > target:
            lo_r = mid
        else:
            hi_r = mid
    return hi_r


def prune_to_budget(model: nn.Module, method: str, stats: Mapping[str, Any], budget: float, batches: Sequence,
                    limit: float = 0.95, damping: float = 1e-3, normalize: bool = False,
                    scores: Scores | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a copy of ``model`` with ``method`` until at most ``1 - budget`` of its parameters remain.

    Returns the pruned model and ``{"ratio": global ratio found, "params": fraction kept}``. Used in lesson 07.
    """
    total = count_parameters(model)
    target = int((1 - budget) * total)
    if method == "EigenDamage":
        bases = collect_bases(model, None, factors=stats["eigen"], patch=any(f.patch for f in stats["eigen"].values()))
        ratio = _bisect(lambda r: eigen_plan_params(model, eigen_plan(bases, r, limit, normalize), bases), target)
        net = copy.deepcopy(model)
        apply_eigendamage(net, bases, eigen_plan(bases, ratio, limit, normalize))
    else:
        scores = scores if scores is not None else method_scores(method, model, stats, batches, damping)
        ratio = _bisect(lambda r: plan_param_count(model, filter_plan(scores, r, limit)), target)
        net = pruned_by_filters(model, method, filter_plan(scores, ratio, limit), stats, damping)
    return net, {"ratio": ratio, "params": count_parameters(net) / total}


def finetune(model: nn.Module, train_loader: Iterable, test_loader: Iterable, epochs: int, lr: float,
             weight_decay: float = 5e-4, progress: bool = False,
             resume_key: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune a copy (SGD, momentum 0.9, cosine schedule); test accuracy after the **last** epoch and the
    **best** over epochs (selected on the test set, as the authors' ``fine_tune_model`` does). Used in lesson 07.

    ``resume_key`` (what the data and settings are): checkpoint after every epoch under that key and the starting
    weights (:func:`pruninglib.checkpoint.fit_resumable`), kept when done, so a rerun after a kill reloads the
    finished fine-tunes and continues the interrupted one; the lesson removes them at its end
    (:func:`pruninglib.cache.clear_work_paths` ``("l07_finetune")``).
    """
    from pruninglib.cache import work_path
    from pruninglib.checkpoint import fit_resumable

    net = copy.deepcopy(model).train()
    if epochs <= 0:
        acc = evaluate(net, test_loader)["accuracy"]
        return {"model": net.eval(), "last": acc, "best": acc, "history": []}
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    key = None if resume_key is None else {**dict(resume_key), "start": state_fingerprint(net), "lr": lr,
                                           "weight_decay": weight_decay}
    hist = fit_resumable(net, train_loader, epochs, ckpt_path=work_path("l07_finetune", key) if key else None,
                         signature=key, optimizer=opt, val_loader=test_loader, progress=progress,
                         scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs))
    accs = [h["val_accuracy"] for h in hist]
    return {"model": net.eval(), "last": accs[-1], "best": max(accs), "history": accs}


def iterative_prune(model: nn.Module, method: str, budget: float, steps: int, stats_fn: Callable[[nn.Module], Mapping],
                    tune: Callable[[nn.Module], nn.Module], batches: Sequence, limit: float = 0.95,
                    damping: float = 1e-3) -> tuple[nn.Module, list[dict[str, float]]]:
    """Reach ``budget`` in ``steps`` rounds of (statistics, prune, fine-tune), keeping a geometric share of the
    parameters each round, :math:`(1-b)^{k/n}` of the original after round :math:`k`. Returns the last model and
    one row per round. Used in lesson 07."""
    total = count_parameters(model)
    net, rows = model, []
    for k in range(1, steps + 1):
        keep = (1 - budget) ** (k / steps)
        now = count_parameters(net)
        step_budget = max(0.0, 1 - keep * total / now)
        net, info = prune_to_budget(net, method, stats_fn(net), step_budget, batches, limit, damping)
        net = tune(net)
        rows.append({"round": k, "params": count_parameters(net) / total})
    return net, rows


def kept_widths(model: nn.Module, base: nn.Module) -> dict[str, float]:
    """Per layer of ``base`` (every Conv2d/Linear but the classifier), the fraction of its output kept: output
    channels for a thinned layer, output directions (the rank ``r_out`` of :math:`Q_S`) for an EigenDamage
    bottleneck, 1 for a layer left as it was. Used in lesson 07."""
    named = dict(model.named_modules())
    out = {}
    for n, m in eigen_targets(base).items():
        width = m.weight.shape[0]
        now = named.get(n)
        if now is None:
            continue
        out[n] = (now.spec["r_out"] if n in bottlenecks(model) else now.weight.shape[0]) / width
    return out


def size_of(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """``{"params": .., "macs": ..}`` of a model (MACs of one example). Used in lesson 07."""
    return {"params": count_parameters(model), "macs": count_macs(model, example=example)}


def oracle_spearman(scores: Mapping[str, Scores], oracle: Scores) -> dict[str, float]:
    """Spearman's rank correlation of each method's filter scores with the oracle's :math:`|\\Delta L|`, over all
    filters of all layers pooled (``scipy.stats.spearmanr``). Used in lesson 07."""
    from scipy.stats import spearmanr

    names = list(oracle)
    ref = torch.cat([oracle[n].detach().abs().double().cpu() for n in names]).numpy()
    return {m: float(spearmanr(torch.cat([s[n].double().cpu() for n in names]).numpy(), ref)[0])
            for m, s in scores.items()}


# ----------------------------------------------------------------------------- the lesson's data and models


def lesson_data(dataset: str, n_train: int | None, n_test: int | None, seed: int = 0) -> dict[str, Any]:
    """Training (augmented for CIFAR), un-augmented training and test sets, ``n_*`` images per class (None: all).

    Grey datasets are read into memory with :func:`pruninglib.data.load_tensors`; CIFAR-10/100 through
    :func:`pruninglib.data.load_dataset` with a random crop and flip for training. Returns
    ``{"train", "plain", "test", "channels", "side", "classes"}``. Used in lesson 07.
    """
    from torch.utils.data import Subset
    import torchvision.transforms as T

    from pruninglib import data

    if dataset.startswith("cifar"):
        norm = data.DATASET_STATS[dataset]
        aug = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(*norm)])
        plain_tf = T.Compose([T.ToTensor(), T.Normalize(*norm)])
        tr_aug, tr_plain = data.load_dataset(dataset, "train", aug), data.load_dataset(dataset, "train", plain_tf)
        te = data.load_dataset(dataset, "test", plain_tf)
        idx = data.subset_per_class(tr_plain, n_train, seed).indices if n_train else None
        out = {"train": Subset(tr_aug, idx) if idx else tr_aug, "plain": Subset(tr_plain, idx) if idx else tr_plain,
               "test": data.subset_per_class(te, n_test, seed) if n_test else te, "channels": 3, "side": 32}
    else:
        tr = data.load_tensors(dataset, "train", n_train, seed)
        out = {"train": tr, "plain": tr, "test": data.load_tensors(dataset, "test", n_test, seed), "channels": 1,
               "side": 28}
    out["classes"] = int(max(data.targets_of(out["test"]).max(), data.targets_of(out["plain"]).max())) + 1
    return out


def build_net(kind: str, cfg: Mapping[str, Any], channels: int, classes: int) -> nn.Module:
    """The lesson's CIFAR-style VGG with BatchNorm (``kind="vgg"``) or CIFAR ResNet (``"resnet"``). Used in lesson 07."""
    from pruninglib.models import build_model

    if kind == "vgg":
        return build_model("cifar_vgg", cfg=cfg["vgg"], in_channels=channels, num_classes=classes, width=cfg["vgg_width"])
    if kind == "resnet":
        return build_model("cifar_resnet", depth=cfg["res_depth"], in_channels=channels, num_classes=classes,
                           widths=list(cfg["res_widths"]))
    raise ValueError(f"kind must be 'vgg' or 'resnet', got {kind!r}")


def least_squares_layer(seed: int = 0, n: int = 200, d_in: int = 6, d_out: int = 5) -> dict[str, Any]:
    r"""A linear layer under a weighted squared error :math:`L(W) = \frac{1}{2N}\sum_n (Wx_n-y_n)^\top M (Wx_n-y_n)`,
    whose Hessian is exactly :math:`S\otimes A` with :math:`S = M`, :math:`A = \frac1N X^\top X`; at its minimum
    :math:`W_0`. Returns ``{"loss", "W0", "A", "S"}`` (float64). Used in lesson 07."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(d_in, d_out, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, d_out, generator=g,
                                                                                           dtype=torch.float64)
    R = torch.randn(d_out, d_out, generator=g, dtype=torch.float64)
    M = R @ R.T + 0.5 * torch.eye(d_out, dtype=torch.float64)
    A = X.T @ X / n

    def loss(W: torch.Tensor) -> float:
        E = X @ W.T - Y
        return float(0.5 * ((E @ M) * E).sum() / n)

    return {"loss": loss, "W0": torch.linalg.solve(A, X.T @ Y / n).T, "A": A, "S": M}


def one_pass(base: nn.Module, stats: Mapping[str, Any], methods: Sequence[str], budgets: Sequence[float],
             batches: Sequence, tune: Callable[[nn.Module], Mapping[str, Any]], evaluate_fn: Callable[[nn.Module], float],
             example: torch.Tensor, limit: float = 0.95, damping: float = 1e-3, label: str = "") -> tuple[list[dict], dict]:
    """Experiment 2: every method at every parameter budget, one pass; accuracy before and after fine-tuning
    (``tune`` returns ``{"last", "best", "model"}``), parameter and FLOPs reduction. Returns the table rows and
    ``{(method, budget): fine-tuned model}``. Used in lesson 07."""
    from tqdm.auto import tqdm

    full = size_of(base, example)
    rows, nets = [], {}
    scores = {m: method_scores(m, base, stats, batches, damping) for m in methods if m != "EigenDamage"}
    bar = tqdm([(m, b) for b in budgets for m in methods], desc=f"prune + fine-tune {label}".strip())
    for m, b in bar:
        net, info = prune_to_budget(base, m, stats, b, batches, limit, damping, scores=scores.get(m))
        sz = size_of(net, example)
        ft = tune(net)
        nets[(m, b)] = ft["model"]
        rows.append({"network": label, "method": m, "budget": b, "params kept": sz["params"] / full["params"],
                     "FLOPs reduction": full["macs"] / sz["macs"], "acc pruned": evaluate_fn(net),
                     "acc FT last": ft["last"], "acc FT best": ft["best"], "global ratio": info["ratio"]})
    return rows, nets


def latency_ratios(base: nn.Module, models: Mapping[str, nn.Module], example: torch.Tensor, rounds: int = 5,
                   repeats: int = 3, threads: int | None = 1) -> dict[str, float]:
    """Median CPU latency of each model over the unpruned one's, measured interleaved in one run
    (:func:`pruninglib.core.metrics.interleaved_latency`). Used in lesson 07."""
    from pruninglib.core.metrics import interleaved_latency

    cpu = {k: copy.deepcopy(v).cpu().eval() for k, v in {"unpruned": base, **models}.items()}
    t = interleaved_latency(cpu, example.cpu(), rounds=rounds, repeats=repeats, warmup=2, rewarm=1, threads=threads)
    return {k: t[k].median_s / t["unpruned"].median_s for k in models}


def trained(kind: str, cfg: Mapping[str, Any], ds: Mapping[str, Any], seed: int, device: torch.device) -> nn.Module:
    """The lesson's base network, trained once (SGD, momentum 0.9, weight decay 5e-4, cosine schedule) and cached
    through :func:`pruninglib.cache.cached`; checkpointed after every epoch (:func:`pruninglib.checkpoint.fit_resumable`),
    so a killed run resumes where it stopped. Used in lesson 07."""
    from pruninglib.cache import work_path
    from pruninglib.checkpoint import fit_resumable
    from pruninglib.train import make_loader
    from pruninglib.utils import set_seed

    def train() -> dict[str, torch.Tensor]:
        set_seed(seed)
        net = build_net(kind, cfg, ds["channels"], ds["classes"]).to(device)
        opt = torch.optim.SGD(net.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=5e-4)
        fit_resumable(net, make_loader(ds["train"], cfg["batch"], shuffle=True, seed=seed), cfg["epochs"],
                      ckpt_path=work_path(f"l07_{kind}", key), signature=key, optimizer=opt,
                      scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["epochs"]))
        return {k: v.cpu() for k, v in net.state_dict().items()}

    arch = {k: cfg[k] for k in (("vgg", "vgg_width") if kind == "vgg" else ("res_depth", "res_widths"))}
    key = {"kind": kind, **arch, **{k: cfg[k] for k in ("dataset", "n_train", "epochs", "lr", "batch")}, "seed": seed}
    net = build_net(kind, cfg, ds["channels"], ds["classes"])
    net.load_state_dict(cached(f"l07_{kind}", key, train))
    return net.to(device).eval()


def slug(label: str) -> str:
    """``"Taylor FO (2019)"`` -> ``"taylor_fo_2019"``: a label as a :func:`~pruninglib.record` name. Used in lesson 07."""
    import re

    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
