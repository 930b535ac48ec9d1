"""Lesson 08's protocol: pruning the networks people use (residual adds, depthwise convs, concatenations).

What is here, so that the notebook and its solutions share one copy:

- the tiny teaching networks of Section 1 (:class:`TinyResidual`, :class:`TinyDepthwise`,
  :class:`TinyConcat`, :class:`TinyFlatten`) and the by-hand slicing helpers;
- the adapters of torchvision's ResNet-18 and MobileNetV2 to small grey or colour images
  (:func:`tv_resnet18`, :func:`tv_mobilenet_v2`, registered in :data:`pruninglib.models.MODELS`
  so :mod:`pruninglib.checkpoint` can rebuild them after pruning);
- data, training (cached) and evaluation helpers;
- the per-layer sensitivity scan of Li et al. 2017 (Sec. 3.2, Fig. 2) on dependency groups;
- allocations at a MACs budget: uniform ratios, sensitivity-guided ratios, one global ranking;
- one pruning run (criterion -> group scores -> plan -> Torch-Pruning surgery -> fine-tuning).

Used in lesson 08.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pruninglib import groups as G
from pruninglib.core.metrics import count_macs, count_parameters

__all__ = ["TinyBlock", "TinyResidual", "TinyDepthwise", "TinyConcat", "TinyFlatten", "slice_conv", "slice_bn",
           "slice_linear", "hand_prune_stream", "tv_resnet18", "tv_mobilenet_v2", "load_data", "train_model",
           "accuracy", "sensitivity_scan", "sensitive_groups", "pruned_copy", "macs_fraction", "plan_for_budget",
           "global_plan", "prune_and_finetune", "channel_cost", "stage_of"]


# ------------------------------------------------------------------ Section 1: tiny networks


class TinyBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU: the residual add couples ``conv2``'s
    output channels with the block's input channels. Used in lesson 08."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(x + out)


class TinyResidual(nn.Module):
    """A stem conv and two residual blocks of the same width, average pool, a Linear head.

    Three dependency groups: each block's inner conv (``block{1,2}.conv1``), and the residual
    stream (``stem``, ``block1.conv2``, ``block2.conv2`` lose the same channels). Used in lesson 08.
    """

    def __init__(self, in_channels: int = 1, width: int = 6, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.block1, self.block2 = TinyBlock(width), TinyBlock(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(F.relu(self.bn(self.stem(x)))))
        return self.head(x.mean((2, 3)))


class TinyDepthwise(nn.Module):
    """conv -> depthwise conv (``groups == channels``) -> pointwise conv: the depthwise conv's input
    and output channels are one, so it and its producer form one group. Used in lesson 08."""

    def __init__(self, in_channels: int = 1, width: int = 8, out: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(width, width, 3, 1, 1, groups=width, bias=False)
        self.dw_bn = nn.BatchNorm2d(width)
        self.pw = nn.Conv2d(width, out, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(out)
        self.head = nn.Linear(out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu(self.dw_bn(self.dw(x)))
        x = F.relu(self.pw_bn(self.pw(x)))
        return self.head(x.mean((2, 3)))


class TinyConcat(nn.Module):
    """Two branches concatenated along channels: channel ``c`` of branch ``b`` is input
    ``c + 4`` of the conv after the concatenation (the offset). Used in lesson 08."""

    def __init__(self, in_channels: int = 1, a: int = 4, b: int = 6, out: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.a = nn.Conv2d(in_channels, a, 3, 1, 1)
        self.b = nn.Conv2d(in_channels, b, 5, 1, 2)
        self.fuse = nn.Conv2d(a + b, out, 1)
        self.head = nn.Linear(out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        return self.head(F.relu(self.fuse(x)).mean((2, 3)))


class TinyFlatten(nn.Module):
    """conv -> max-pool -> flatten -> Linear: channel ``c`` feeds the ``H W`` inputs
    ``c H W .. c H W + H W - 1`` of the Linear (the expansion). Used in lesson 08."""

    def __init__(self, in_channels: int = 1, width: int = 4, side: int = 8, hidden: int = 16,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1)
        self.fc1 = nn.Linear(width * (side // 2) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def _keep(n: int, remove: Iterable[int]) -> torch.Tensor:
    gone = set(int(i) for i in remove)
    return torch.tensor([i for i in range(n) if i not in gone], dtype=torch.long)


def slice_conv(conv: nn.Conv2d, keep_out: torch.Tensor | None = None, keep_in: torch.Tensor | None = None) -> None:
    """Keep output filters ``keep_out`` and input channels ``keep_in`` of a (groups=1) conv, in place.
    Used in lesson 08."""
    w = conv.weight.detach()
    if keep_out is not None:
        w = w[keep_out]
        conv.out_channels = len(keep_out)
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.detach()[keep_out].clone())
    if keep_in is not None:
        w = w[:, keep_in]
        conv.in_channels = len(keep_in)
    conv.weight = nn.Parameter(w.clone())


def slice_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    """Keep channels ``keep`` of a BatchNorm (scale, shift, running statistics), in place. Used in lesson 08."""
    bn.weight = nn.Parameter(bn.weight.detach()[keep].clone())
    bn.bias = nn.Parameter(bn.bias.detach()[keep].clone())
    bn.running_mean, bn.running_var = bn.running_mean[keep].clone(), bn.running_var[keep].clone()
    bn.num_features = len(keep)


def slice_linear(lin: nn.Linear, keep_in: torch.Tensor) -> None:
    """Keep input features ``keep_in`` of a Linear, in place. Used in lesson 08."""
    lin.weight = nn.Parameter(lin.weight.detach()[:, keep_in].clone())
    lin.in_features = len(keep_in)


def hand_prune_stream(net: TinyResidual, remove: Sequence[int]) -> TinyResidual:
    """Remove residual-stream channels ``remove`` of :class:`TinyResidual` by hand: the nine
    tensors the add couples (stem, its BN, both blocks' conv1 inputs, conv2 outputs and BNs, the head).
    Used in lesson 08."""
    keep = _keep(net.stem.out_channels, remove)
    slice_conv(net.stem, keep_out=keep)
    slice_bn(net.bn, keep)
    for block in (net.block1, net.block2):
        slice_conv(block.conv1, keep_in=keep)     # reads the stream
        slice_conv(block.conv2, keep_out=keep)    # writes into the add
        slice_bn(block.bn2, keep)
    slice_linear(net.head, keep)
    return net


# ------------------------------------------------------------------ adapters of torchvision models


def _shrink(model: nn.Module, width: float, example: torch.Tensor) -> None:
    """Keep the first ``ceil(width * C)`` channels of every dependency group (a narrow copy of the
    architecture, same layer names), via Torch-Pruning."""
    if not 0 < width <= 1:
        raise ValueError(f"width must be in (0, 1], got {width}")
    if width == 1:
        return
    mg = G.find_groups(model, example)
    G.prune_groups(mg, {g.index: list(range(max(1, math.ceil(width * g.num_channels)), g.num_channels))
                        for g in mg})


def tv_resnet18(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, stem_stride: int = 2,
                maxpool: bool = True, side: int = 28) -> nn.Module:
    """torchvision's ResNet-18 (randomly initialised) adapted to small images.

    The ImageNet stem (7x7 conv, stride 2, then a 3x3 max-pool: 224 -> 56) would leave a 28x28 image
    at 7x7 before the first block and at 1x1 long before the last. The adapter swaps the stem for a
    3x3 conv with ``in_channels`` inputs and stride ``stem_stride`` and keeps the max-pool or not
    (``stem_stride=1, maxpool=False`` is the usual CIFAR variant). ``width < 1`` keeps that fraction
    of every dependency group's channels (same layer names; used by quick mode). Used in lesson 08.
    """
    m = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    m.conv1 = nn.Conv2d(in_channels, 64, 3, stem_stride, 1, bias=False)
    nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
    if not maxpool:
        m.maxpool = nn.Identity()
    _shrink(m, width, torch.zeros(1, in_channels, side, side))
    return m


def tv_mobilenet_v2(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0,
                    stem_stride: int = 1) -> nn.Module:
    """torchvision's MobileNetV2 (randomly initialised) with a ``in_channels``-input stem of stride
    ``stem_stride`` (1 for 28x28 or 32x32 images: the network still downsamples 16x after it).
    ``width_mult`` is torchvision's own width multiplier. Used in lesson 08."""
    m = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult)
    c = m.features[0][0]
    m.features[0][0] = nn.Conv2d(in_channels, c.out_channels, 3, stem_stride, 1, bias=False)
    nn.init.kaiming_normal_(m.features[0][0].weight, mode="fan_out")
    return m


def _register() -> None:
    from pruninglib import models

    models.MODELS.setdefault("tv_resnet18", tv_resnet18)
    models.MODELS.setdefault("tv_mobilenet_v2", tv_mobilenet_v2)


_register()


def stage_of(layer: str) -> str:
    """The stage a ResNet / MobileNetV2 layer belongs to (``"layer2"``, ``"features.5"``, ``"stem"``). Used in lesson 08."""
    parts = layer.split(".")
    if parts[0].startswith("layer"):
        return parts[0]
    if parts[0] == "features":
        return f"features.{parts[1]}"
    return "stem" if parts[0] in ("conv1", "bn1") else parts[0]


# ------------------------------------------------------------------ data, training, evaluation


def load_data(cfg: Mapping[str, Any], seed: int = 0) -> tuple[Dataset, Dataset, int, int]:
    """The lesson's training and test sets, and (channels, side) of the images.

    Fashion-MNIST is read with :func:`pruninglib.data.load_tensors` (``n_train`` / ``n_test`` examples
    per class, normalised); CIFAR-10 with :func:`pruninglib.data.load_dataset` and lesson 06's
    transforms (random crops and flips for training). Used in lesson 08.
    """
    from pruninglib import data
    from pruninglib.lessons.channel_selection import transforms_for

    name = cfg["dataset"]
    if name == "fashion_mnist":
        train = data.load_tensors(name, "train", n_per_class=cfg.get("n_train"), seed=seed)
        test = data.load_tensors(name, "test", n_per_class=cfg.get("n_test"), seed=seed)
        return train, test, 1, 28
    train_tf, plain_tf, channels, side = transforms_for(name)
    train = data.load_dataset(name, "train", train_tf)
    test = data.load_dataset(name, "test", plain_tf)
    if cfg.get("n_train"):
        train = data.subset_per_class(train, cfg["n_train"], seed)
    if cfg.get("n_test"):
        test = data.subset_per_class(test, cfg["n_test"], seed)
    return train, test, channels, side


def train_model(model: nn.Module, train_ds: Dataset, epochs: int, lr: float, batch: int, seed: int = 0,
                weight_decay: float = 5e-4, max_steps: int | None = None, desc: str = "train",
                ckpt_path: Any = None, signature: Mapping[str, Any] | None = None) -> list[dict]:
    """SGD with momentum 0.9 and a cosine learning-rate schedule for ``epochs`` epochs (at most
    ``max_steps`` steps per epoch: smoke runs). With ``ckpt_path``, a checkpoint after every epoch
    (:func:`pruninglib.checkpoint.fit_resumable`: a killed run resumes where it stopped). Returns
    :func:`pruninglib.train.fit`'s history. Used in lesson 08."""
    from pruninglib.checkpoint import fit_resumable
    from pruninglib.train import make_loader

    loader = make_loader(train_ds, batch, shuffle=True, seed=seed, drop_last=len(train_ds) > batch)
    if max_steps is not None:
        loader = _capped(loader, max_steps)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    return fit_resumable(model, loader, epochs, ckpt_path=ckpt_path, signature=dict(signature or {}), optimizer=opt,
                         scheduler=sched, progress=True)


class _capped:
    def __init__(self, loader: Iterable, n: int) -> None:
        self.loader, self.n = loader, n
        self.generator = getattr(loader, "generator", None)  # the shuffling state, saved by fit_resumable

    def __iter__(self):
        for i, b in enumerate(self.loader):
            if i >= self.n:
                return
            yield b

    def __len__(self) -> int:
        return min(self.n, len(self.loader))


@torch.no_grad()
def accuracy(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on a list of ``(x, y)`` batches. Used in lesson 08."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    right = total = 0
    for x, y in batches:
        right += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += len(y)
    model.train(was)
    return right / max(total, 1)


# ------------------------------------------------------------------ Section 3: how many per layer


def sensitivity_scan(mg: G.ModelGroups, group_scores: Mapping[int, torch.Tensor], batches: Sequence,
                     ratios: Sequence[float], progress: bool = True, limit: int | None = None) -> dict[int, list[float]]:
    """Li et al. 2017, Sec. 3.2 and Fig. 2: prune each group *alone* by its lowest-scoring channels at
    each ratio and measure accuracy without retraining.

    Zeroing the member units (:func:`pruninglib.groups.zero_channels`) computes exactly what removing
    them computes, so no copy and no surgery is needed. Returns ``{group index: accuracy per ratio}``;
    ``limit`` scans only the first ``limit`` groups (smoke runs). Used in lesson 08.
    """
    out: dict[int, list[float]] = {}
    for gi in tqdm(list(group_scores)[:limit], desc="sensitivity scan", disable=not progress):
        row = []
        for r in ratios:
            plan = G.lowest_channels({gi: group_scores[gi]}, {gi: r})
            with G.zero_channels(mg, plan):
                row.append(accuracy(mg.model, batches))
        out[gi] = row
    return out


def sensitive_groups(scan: Mapping[int, Sequence[float]], base_acc: float, ratios: Sequence[float],
                     at: float = 0.5, share: float = 0.25) -> list[int]:
    """The ``share`` of groups that lose most accuracy when pruned alone at ratio ``at`` (Li et al. 2017,
    Sec. 3.2 and 4.2: sensitive layers are pruned less, or skipped). Used in lesson 08."""
    k = min(range(len(ratios)), key=lambda i: abs(ratios[i] - at))
    drops = sorted(scan, key=lambda g: base_acc - scan[g][k], reverse=True)
    return sorted(drops[:max(1, round(share * len(drops)))])


def pruned_copy(model: nn.Module, example: torch.Tensor, plan: Mapping[int, Sequence[int]],
                ignored: Sequence[str] = ()) -> nn.Module:
    """A deep copy of ``model`` with the group channels of ``plan`` removed (Torch-Pruning). Used in lesson 08."""
    m = copy.deepcopy(model)
    G.prune_groups(G.find_groups(m, example, ignored), plan)
    return m


def macs_fraction(model: nn.Module, example: torch.Tensor, plan: Mapping[int, Sequence[int]],
                  base_macs: int | None = None, ignored: Sequence[str] = ()) -> float:
    """MACs of the pruned network over MACs of ``model``. Used in lesson 08."""
    base = base_macs or count_macs(model, example=example)
    return count_macs(pruned_copy(model, example, plan, ignored), example=example) / base


def _bisect(plan_of: Callable[[float], dict], frac_of: Callable[[dict], float], budget: float,
            hi: float, steps: int = 12) -> tuple[dict, float]:
    """The plan for the smallest parameter in [0, hi] whose MACs fraction is at most ``budget``."""
    lo, best = 0.0, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = plan_of(mid)
        f = frac_of(plan)
        if f <= budget:
            hi, best = mid, (plan, f)
        else:
            lo = mid
    if best is None:
        plan = plan_of(hi)
        best = (plan, frac_of(plan))
    return best


def plan_for_budget(mg: G.ModelGroups, group_scores: Mapping[int, torch.Tensor], budget: float,
                    weights: Mapping[int, float] | None = None, max_ratio: float = 0.9,
                    ignored: Sequence[str] = (), steps: int = 12) -> tuple[dict[int, list[int]], dict[int, float], float]:
    """Per-group ratios ``min(max_ratio, s * w_g)`` with one ``s`` found by bisection so the pruned
    network keeps at most ``budget`` of the MACs; the lowest-scoring channels of each group go.

    ``weights=None`` is the uniform allocation (every group loses the same share); a weight of 0
    skips a group (the sensitive ones of :func:`sensitive_groups`). ``steps``: bisection steps (each
    prunes a copy and counts its MACs).

    Returns:
        ``(plan, ratios, MACs fraction)``.

    Used in lesson 08.
    """
    w = {g: (1.0 if weights is None else float(weights.get(g, 1.0))) for g in group_scores}
    base = count_macs(mg.model, example=mg.example)

    def ratios(s: float) -> dict[int, float]:
        return {g: min(max_ratio, s * w[g]) for g in w}

    plan, frac = _bisect(lambda s: G.lowest_channels(group_scores, ratios(s)),
                         lambda p: macs_fraction(mg.model, mg.example, p, base, ignored), budget,
                         hi=max_ratio / max(min(v for v in w.values() if v > 0), 1e-6), steps=steps)
    got = {g: len(plan.get(g, [])) / len(group_scores[g]) for g in group_scores}
    return plan, got, frac


def global_plan(mg: G.ModelGroups, group_scores: Mapping[int, torch.Tensor], budget: float,
                max_ratio: float = 0.9, ignored: Sequence[str] = (),
                steps: int = 12) -> tuple[dict[int, list[int]], dict[int, float], float]:
    """One global ranking: every group's scores divided by their mean (so groups of different sizes
    and scales compare), the globally lowest channels removed until the MACs fit ``budget`` (at most
    ``max_ratio`` of any group). Returns ``(plan, ratios, MACs fraction)``. Used in lesson 08."""
    norm = {g: s / s.mean().clamp_min(1e-12) for g, s in group_scores.items()}
    allv = torch.cat(list(norm.values())).sort().values
    base = count_macs(mg.model, example=mg.example)

    def plan_of(q: float) -> dict[int, list[int]]:
        t = allv[min(len(allv) - 1, int(q * len(allv)))] if q > 0 else -math.inf
        plan = {}
        for g, s in norm.items():
            cap = min(int(max_ratio * len(s)), len(s) - 1)
            idx = [int(i) for i in torch.argsort(s, stable=True) if s[i] < t][:cap]
            if idx:
                plan[g] = idx
        return plan

    plan, frac = _bisect(plan_of, lambda p: macs_fraction(mg.model, mg.example, p, base, ignored), budget, hi=1.0,
                         steps=steps)
    got = {g: len(plan.get(g, [])) / len(group_scores[g]) for g in group_scores}
    return plan, got, frac


# ------------------------------------------------------------------ Section 4: one pruning run


def prune_and_finetune(model: nn.Module, example: torch.Tensor, plan: Mapping[int, Sequence[int]],
                       train_ds: Dataset, test_batches: Sequence, ft: Mapping[str, Any], seed: int = 0,
                       ignored: Sequence[str] = ()) -> tuple[nn.Module, dict[str, float]]:
    """Remove the planned channels from a copy of ``model``, measure accuracy, fine-tune, measure again.

    ``ft`` holds ``epochs``, ``lr``, ``batch`` and optionally ``max_steps`` and ``resume`` (what the data are,
    JSON-like): with ``resume``, the fine-tune checkpoints after every epoch under that key and the pruned
    weights, kept when done, so a rerun after a kill reloads the finished fine-tunes and continues the
    interrupted one (the lesson removes them at its end: :func:`pruninglib.cache.clear_work_paths`
    ``("l08_finetune")``). Returns the pruned, fine-tuned model and ``{"pruned": accuracy before fine-tuning,
    "fine-tuned": after, "params", "MACs"}``. Used in lesson 08.
    """
    from pruninglib.cache import state_fingerprint, work_path

    m = pruned_copy(model, example, plan, ignored)
    row = {"pruned": accuracy(m, test_batches)}
    if ft["epochs"] > 0:
        key = None
        if ft.get("resume") is not None:
            key = {**dict(ft["resume"]), **{k: ft.get(k) for k in ("epochs", "lr", "batch", "max_steps")},
                   "seed": seed, "start": state_fingerprint(m)}
        train_model(m, train_ds, ft["epochs"], ft["lr"], ft["batch"], seed, max_steps=ft.get("max_steps"),
                    desc="fine-tune", ckpt_path=work_path("l08_finetune", key) if key else None, signature=key)
    row.update({"fine-tuned": accuracy(m, test_batches), "params": count_parameters(m),
                "MACs": count_macs(m, example=example)})
    return m, row


def channel_cost(mg: G.ModelGroups, group: int, channel: int = 0) -> dict[str, int]:
    """What removing ONE channel of a group saves: parameters and MACs (measured on a pruned copy).
    Used in lesson 08's explorer."""
    base_p, base_m = count_parameters(mg.model), count_macs(mg.model, example=mg.example)
    m = pruned_copy(mg.model, mg.example, {group: [channel]}, mg.ignored)
    return {"params": base_p - count_parameters(m), "MACs": base_m - count_macs(m, example=mg.example)}


# ------------------------------------------------------------------ models of a mode, trained once


def ignored_for(name: str, model: nn.Module) -> list[str]:
    """Layers kept whole for a model: for the CIFAR ResNets (option-A shortcuts, He et al. 2016) the
    stem and every block's ``conv2``. Their zero-padding shortcut is a ``F.pad`` along channels, which
    Torch-Pruning does not map index by index, so the residual stream is left alone and only the inner
    conv of each block is pruned (as Li et al. 2017 do for ResNet-56, Sec. 4.2). Used in lesson 08."""
    if name in ("resnet20", "resnet56", "cifar_resnet"):
        return ["conv1"] + [f"{n}.conv2" for n, _ in model.blocks()]
    return []


def build_trained(label: str, name: str, kwargs: Mapping[str, Any], train_ds: Dataset, cfg: Mapping[str, Any],
                  seed: int, data_key: str, device: torch.device | str = "cpu") -> tuple[nn.Module, list[dict]]:
    """Build ``name`` with :func:`pruninglib.models.build_model` and train it (cached by
    :func:`pruninglib.cache.cached` on everything the result depends on). Returns the model (eval
    mode, on ``device``) and its training history. Used in lesson 08."""
    from pruninglib.cache import cached, work_path
    from pruninglib.models import build_model
    from pruninglib.utils import set_seed

    params = {"name": name, "kwargs": dict(kwargs), "epochs": cfg["epochs"], "lr": cfg["lr"], "batch": cfg["batch"],
              "max_steps": cfg.get("max_steps"), "seed": seed, "data": data_key, "recipe": 1}

    def compute() -> dict:
        set_seed(seed)
        m = build_model(name, **kwargs).to(device)
        hist = train_model(m, train_ds, cfg["epochs"], cfg["lr"], cfg["batch"], seed, max_steps=cfg.get("max_steps"),
                           desc=label, ckpt_path=work_path(f"lesson08-{name}", params), signature=params)
        return {"state_dict": {k: v.cpu() for k, v in m.state_dict().items()}, "history": hist}

    res = cached(f"lesson08-{name}", params, compute)
    model = build_model(name, **kwargs)
    model.load_state_dict(res["state_dict"])
    return model.to(device).eval(), res["history"]


# ------------------------------------------------------------------ figures


def plot_group_sizes(all_groups: Mapping[str, G.ModelGroups]) -> None:
    """Channels and member layers of every group, one panel per model. Used in lesson 08."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_groups), figsize=(5.2 * len(all_groups), 3.2), squeeze=False)
    for ax, (label, mg) in zip(axes[0], all_groups.items()):
        n = [len(g.producers) for g in mg]
        colors = ["tab:orange" if k > 1 else "tab:blue" for k in n]
        ax.bar(range(len(mg)), [g.num_channels for g in mg], color=colors)
        for i, k in enumerate(n):
            if k > 1:
                ax.text(i, mg[i].num_channels, str(k), ha="center", va="bottom", fontsize=7)
        ax.set_xlabel("group (orange: several producers, count on top)")
        ax.set_ylabel("coupled channels")
        ax.set_title(f"{label}: {len(mg)} dependency groups")
    plt.tight_layout()
    plt.show()


def plot_sensitivity(scan: Mapping[int, Sequence[float]], mg: G.ModelGroups, ratios: Sequence[float],
                     base_acc: float, sensitive: Sequence[int] = (), title: str = "") -> None:
    """Li et al. 2017, Fig. 2: accuracy (no retraining) against the share of one group's channels
    pruned, one curve per group, coloured by stage; the sensitive groups dashed. Used in lesson 08."""
    import matplotlib.pyplot as plt

    stages = sorted({stage_of(mg[g].root) for g in scan})
    cmap = plt.get_cmap("viridis", max(2, len(stages)))
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for g, accs in scan.items():
        st = stage_of(mg[g].root)
        ax.plot([r * 100 for r in ratios], accs, "--" if g in sensitive else "-", marker="o", ms=3,
                color=cmap(stages.index(st)), label=f"{g}: {mg[g].root}")
    ax.axhline(base_acc, color="k", lw=0.8, ls=":", label="unpruned")
    ax.set_xlabel("channels of the group pruned (%), the lowest L1 first")
    ax.set_ylabel("test accuracy, no retraining")
    ax.set_title(title or "per-group sensitivity (dashed: the most sensitive)")
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    plt.tight_layout()
    plt.show()


def member_costs(mg: G.ModelGroups, group: int) -> list[tuple[str, str, int]]:
    """``(layer, "output"|"input", weights lost)`` for removing ONE channel of ``group``: a producer
    loses a filter (and its BatchNorm two parameters), a consumer the input slice that read it. Used in lesson 08."""
    g = mg[group]
    rows = []
    for name in g.producers:
        w = mg.model.get_submodule(name).weight
        rows.append((name, "output", w[0].numel() + (2 if name in g.norms else 0)))
    for name, idx in g.consumers.items():
        m = mg.model.get_submodule(name)
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels and m.groups > 1:
            continue  # a depthwise conv is already listed as a producer
        rows.append((name, "input", m.weight[:, 0].numel() * len(idx[0])))
    return rows


def draw_block(mg: G.ModelGroups, block: str) -> None:
    """The explorer's figure: the two groups a ResNet block's channel 0 belongs to (its inner conv's,
    and the residual stream its ``conv2`` writes into), the layers in each and what removing that one
    channel costs. Used in lesson 08."""
    import matplotlib.pyplot as plt

    picks = [("inner conv " + f"{block}.conv1",) + mg.group_of(f"{block}.conv1", 0),
             ("residual stream via " + f"{block}.conv2",) + mg.group_of(f"{block}.conv2", 0)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, (what, g, c) in zip(axes, picks):
        rows = member_costs(mg, g.index)
        cost = channel_cost(mg, g.index, c)
        ax.barh(range(len(rows)), [r[2] for r in rows],
                color=["tab:orange" if r[1] == "output" else "tab:blue" for r in rows])
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{r[0]} ({r[1]})" for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("weights removed with this channel")
        ax.set_title(f"group {g.index} ({what}): {g.num_channels} channels\none channel = "
                     f"{cost['params']:,} params, {cost['MACs'] / 1e3:,.1f} kMACs", fontsize=8)
    plt.tight_layout()
    plt.show()


__all__ += ["ignored_for", "build_trained", "plot_group_sizes", "plot_sensitivity", "member_costs", "draw_block"]


# ------------------------------------------------------------------ paper-mode cost, said before the run


def paper_phases(settings: Mapping[str, Any], macs_budget: float, device: Any = None,
                 n_train: int = 50_000) -> list:
    """Lesson 08's long steps at paper settings as :class:`pruninglib.estimate.Phase` units (issue 18): each
    model's training and its fine-tunes (4 criteria, plus the 3 allocations of Section 3 for ResNet-18, at
    ``macs_budget`` of its cost), and the sensitivity scan's forward passes. Timed on a few images on a CPU
    (:func:`pruninglib.estimate.timing_batch`). Used in lesson 08."""
    from pruninglib.estimate import Phase, forward_step, sgd_step, timing_batch, training_flops
    from pruninglib.models import build_model

    b = int(settings["batch"])
    n = n_train if settings["n_train"] is None else 10 * settings["n_train"]
    steps = -(-n // b)
    bt, fb = timing_batch(b, device), timing_batch(500, device)
    phases = []
    for label, (name, kw) in settings["models"].items():
        m = build_model(name, **kw)
        macs = count_macs(m, (1, 3, 32, 32))
        n_ft = 4 + (3 if label == "ResNet-18" else 0)
        phases.append(Phase(f"{label} SGD step, batch {b} (training, and {n_ft} fine-tunes at {macs_budget:.0%} of its cost)",
                            sgd_step(m, (bt, 3, 32, 32), 10, device),
                            steps * (settings["epochs"] + macs_budget * n_ft * settings["ft_epochs"]),
                            training_flops(macs, b), per_call=bt / b))
        if label == "ResNet-18":
            groups = len(G.find_groups(m, torch.zeros(1, 3, 32, 32)))
            evals = groups * len(settings["scan_ratios"]) * settings["scan_images"]
            phases.append(Phase("ResNet-18 forward pass, 500 images (the sensitivity scan)",
                                forward_step(m.to(device or "cpu"), (fb, 3, 32, 32), device), evals / 500,
                                2.0 * macs * 500, per_call=fb / 500))
    return phases


__all__ += ["paper_phases"]
