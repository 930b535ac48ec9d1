"""Network Slimming (Liu et al. 2017): sparse BatchNorm scales, one global threshold.

Liu, Li, Shen, Huang, Yan, Zhang, *Learning Efficient Convolutional Networks through
Network Slimming*, ICCV 2017. Every channel has a BatchNorm scale :math:`\\gamma`; training
adds an L1 penalty on all of them, Eq. (1):

.. math:: L = \\sum_{(x, y)} l(f(x, W), y) + \\lambda \\sum_{\\gamma \\in \\Gamma} g(\\gamma),
   \\qquad g(s) = |s|,

optimised with the subgradient :math:`\\lambda\\,\\mathrm{sign}(\\gamma)` added to
:math:`\\partial l / \\partial \\gamma` (:func:`bn_l1_subgradient`, used as
``after_backward`` of :func:`pruninglib.train.fit`; :math:`\\lambda` is called ``s`` in the
paper's code: 1e-4 for VGG, 1e-5 for ResNet and DenseNet). Then, Sec. 3.3, the channels whose
:math:`|\\gamma|` falls below **one global threshold** -- the ``ratio`` percentile of all
scales -- are removed (:func:`slimming_plan`), and the slim network is fine-tuned.

A known failure of the original code: with a high ratio every scale of some layer can fall
below the global threshold, the layer is emptied, and the "pruned" network outputs a
constant (0 % accuracy, or a crash). Here every layer keeps at least ``min_keep`` channels
(its largest-:math:`|\\gamma|` ones); ``min_keep=0`` reproduces the failure, which
:func:`pruninglib.core.surgery.prune_channels` then refuses with an error naming the layer.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from pruninglib.criteria.base import check_ratio
from pruninglib.core.graph import prunable_layers
from pruninglib.core.surgery import prune_channels

__all__ = ["bn_l1_subgradient", "bn_l1_penalty", "bn_scales", "slimming_threshold", "slimming_plan",
           "threshold_from_scales", "plan_from_scales", "emptied_layers", "slim", "vgg_cfg_of", "vgg_param_count", "uniform_vgg_cfg"]


def _bn_modules(model: nn.Module, scope: str) -> list[nn.Module]:
    if scope == "all":
        return [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine]
    if scope == "prunable":
        out = [pl.norm for pl in prunable_layers(model, ("conv",)) if pl.norm is not None]
        if not out:
            raise ValueError("the model has no BatchNorm after its prunable convs, so Network Slimming has "
                             "no scales to penalise; build it with batch_norm=True")
        return out
    raise ValueError(f"scope must be 'prunable' or 'all', got {scope!r}")


def bn_l1_subgradient(s: float, scope: str = "prunable") -> Callable[[nn.Module], None]:
    """The ``after_backward`` hook of Network Slimming: ``gamma.grad += s * sign(gamma)``.

    Liu et al. 2017, Eq. (1) with :math:`g(\\gamma) = |\\gamma|`; the subgradient of
    :math:`s|\\gamma|` is :math:`s\\,\\mathrm{sign}(\\gamma)` (0 at 0).

    Args:
        s: the sparsity strength :math:`\\lambda` (paper: 1e-4 VGG, 1e-5 ResNet).
        scope: ``"prunable"`` (the BatchNorms of the prunable convs: every BN of a VGG, each
            block's ``bn1`` of a CIFAR ResNet) or ``"all"`` (every BatchNorm, as the original code).

    Returns:
        A function ``hook(model)`` to pass as ``after_backward``.

    Used in lesson 05.
    """
    if not (isinstance(s, (int, float)) and s >= 0 and math.isfinite(s)):
        raise ValueError(f"sparsity strength s must be a finite number >= 0, got {s!r}")
    if scope not in ("prunable", "all"):
        raise ValueError(f"scope must be 'prunable' or 'all', got {scope!r}")
    # Keyed by the model itself, weakly: an ``id()`` of a freed model can be reused by a new one.
    cache: weakref.WeakKeyDictionary[nn.Module, list[nn.Module]] = weakref.WeakKeyDictionary()

    def hook(model: nn.Module) -> None:
        mods = cache.get(model)
        if mods is None:
            mods = cache[model] = _bn_modules(model, scope)
        for bn in mods:
            if bn.weight.grad is not None:
                bn.weight.grad.add_(torch.sign(bn.weight.detach()), alpha=s)

    return hook


def bn_l1_penalty(model: nn.Module, scope: str = "prunable") -> torch.Tensor:
    """:math:`\\sum_{\\gamma} |\\gamma|`, the penalty of Eq. (1) (for logging; training uses the hook).

    No lesson calls it directly (its tests do).
    """
    return sum(bn.weight.abs().sum() for bn in _bn_modules(model, scope))


def bn_scales(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{prunable conv: |gamma| of its BatchNorm}`` (the ``"bn_scale"`` criterion's scores). Used in lesson 05."""
    return {pl.name: pl.norm.weight.detach().abs().cpu().clone()
            for pl in prunable_layers(model, ("conv",)) if pl.norm is not None}



def threshold_from_scales(scales: Mapping[str, torch.Tensor], ratio: float) -> float:
    """The global threshold on :math:`|\\gamma|` for ``ratio``, from ``{layer: |gamma|}`` (see
    :func:`slimming_threshold`).

    Used in lesson 05.
    """
    r = check_ratio(ratio)
    allg = torch.cat([torch.as_tensor(v, dtype=torch.float32).flatten() for v in scales.values()]) \
        if scales else torch.empty(0)
    if allg.numel() == 0:
        raise ValueError("no BatchNorm scales found; Network Slimming needs batch_norm=True")
    y = torch.sort(allg).values
    return float(y[min(int(allg.numel() * r), allg.numel() - 1)])


def slimming_threshold(model: nn.Module, ratio: float) -> float:
    """The global threshold on :math:`|\\gamma|`: the ``ratio`` quantile of all scales.

    As in the paper's code: sort all :math:`|\\gamma|` of the prunable layers and take the value
    at index ``int(total * ratio)``; channels *strictly below* it are pruned, so exactly
    ``int(total * ratio)`` channels fall below it when the scales are distinct.

    Used in lesson 05.
    """
    return threshold_from_scales(bn_scales(model), ratio)


def plan_from_scales(scales: Mapping[str, torch.Tensor], ratio: float, min_keep: int = 1) -> dict[str, list[int]]:
    """:func:`slimming_plan` computed from ``{layer: |gamma|}`` alone (no model needed). Used in lesson 05."""
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}")
    thr = threshold_from_scales(scales, ratio)
    plan = {}
    for name, g in scales.items():
        g = torch.as_tensor(g, dtype=torch.float32).flatten()
        below = (g < thr).nonzero().flatten()
        keep_at_least = min(min_keep, len(g))
        if len(g) - len(below) < keep_at_least:
            order = torch.argsort(g, descending=True, stable=True)
            protected = set(order[:keep_at_least].tolist())
            below = torch.tensor([i for i in below.tolist() if i not in protected], dtype=torch.long)
        if len(below):
            plan[name] = sorted(below.tolist())
    return plan


def emptied_layers(scales: Mapping[str, torch.Tensor], ratio: float) -> list[str]:
    """The layers the *original* rule (no minimum per layer) would empty at ``ratio``:
    every one of their :math:`|\\gamma|` is below the global threshold.

    Used in lesson 05.
    """
    thr = threshold_from_scales(scales, ratio)
    return [n for n, g in scales.items() if bool((torch.as_tensor(g) < thr).all())]


def slimming_plan(model: nn.Module, ratio: float, min_keep: int = 1) -> dict[str, list[int]]:
    """Channels to remove: :math:`|\\gamma|` below the global threshold (Liu et al. 2017, Sec. 3.3).

    A layer whose scales *all* fall below the threshold keeps its ``min_keep`` largest ones
    (the fix for the emptied-layer failure); with ``min_keep=0`` the plan may empty a layer.

    Returns:
        ``{layer: [indices to remove]}`` for :func:`pruninglib.core.surgery.prune_channels`.

    Used in lesson 05.
    """
    return plan_from_scales(bn_scales(model), ratio, min_keep)


def slim(model: nn.Module, ratio: float, min_keep: int = 1) -> dict[str, Any]:
    """Prune ``model`` in place with :func:`slimming_plan` and report what happened.

    Returns:
        ``{"threshold", "removed", "total", "removed_frac", "widths_before", "widths_after"}``.

    Used in lesson 05.
    """
    before = {pl.name: pl.num_units for pl in prunable_layers(model, ("conv",))}
    thr = slimming_threshold(model, ratio)
    plan = slimming_plan(model, ratio, min_keep)
    prune_channels(model, plan)
    after = {pl.name: pl.num_units for pl in prunable_layers(model, ("conv",))}
    removed = sum(len(v) for v in plan.values())
    total = sum(before.values())
    return {"threshold": thr, "removed": removed, "total": total, "removed_frac": removed / total,
            "widths_before": before, "widths_after": after}


# ----------------------------------------------------------------------- architecture search


def vgg_cfg_of(model: nn.Module) -> list[int | str]:
    """The channel list (with ``"M"``) of a (possibly pruned) :class:`~pruninglib.models.CifarVGG`,
    so the found architecture can be rebuilt from scratch with ``CifarVGG(cfg, width=1.0)``.

    Used in lesson 05.
    """
    from pruninglib.models import CifarVGG

    if not isinstance(model, CifarVGG):
        raise TypeError(f"vgg_cfg_of needs a CifarVGG, got {type(model).__name__}")
    out: list[int | str] = []
    for m in model.features:
        if isinstance(m, nn.MaxPool2d):
            out.append("M")
        elif isinstance(m, nn.Conv2d):
            out.append(int(m.out_channels))
    return out


def vgg_param_count(cfg: Sequence[int | str], in_channels: int = 3, num_classes: int = 10,
                    batch_norm: bool = True) -> int:
    """Parameters of ``CifarVGG(cfg, in_channels, num_classes, batch_norm, width=1.0)``, in closed form:
    each conv :math:`9\\,c_{in} c_{out}` (+ :math:`2 c_{out}` BatchNorm, or :math:`c_{out}` bias),
    plus the classifier :math:`c_{last} K + K`.

    Used in lesson 05.
    """
    total, prev = 0, in_channels
    for v in cfg:
        if v == "M":
            continue
        c = int(v)
        total += 9 * prev * c + (2 * c if batch_norm else c)
        prev = c
    return total + prev * num_classes + num_classes


def uniform_vgg_cfg(cfg: Sequence[int | str], target_params: int, in_channels: int = 3,
                    num_classes: int = 10, batch_norm: bool = True) -> tuple[list[int | str], float]:
    """A uniformly thinned copy of ``cfg`` (every conv times one factor) with about ``target_params``.

    The baseline of Liu et al. 2019, Sec. 5 / Fig. 3: the architecture found by pruning
    against a uniformly pruned one of the same size, both trained from scratch. The factor is
    found by bisection; widths are rounded and at least 1.

    Returns:
        ``(cfg, factor)``.

    Used in lesson 05.
    """
    full = vgg_param_count(cfg, in_channels, num_classes, batch_norm)
    if target_params <= 0:
        raise ValueError(f"target_params must be positive, got {target_params}")
    if target_params > full:
        raise ValueError(f"target of {target_params} parameters exceeds the full model's {full}")

    def scaled(f: float) -> list[int | str]:
        return [v if v == "M" else max(1, int(round(int(v) * f))) for v in cfg]

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if vgg_param_count(scaled(mid), in_channels, num_classes, batch_norm) < target_params:
            lo = mid
        else:
            hi = mid
    cands = [scaled(lo), scaled(hi)]
    best = min(cands, key=lambda c: abs(vgg_param_count(c, in_channels, num_classes, batch_norm) - target_params))
    return best, (lo + hi) / 2
