r"""Activation statistics as criteria (the baselines of Molchanov et al. 2017, Sec. 2.2 and Table 1).

For a feature map :math:`z_l^{(k)}` with :math:`M` positions, over the examples of a data set:

* mean activation: :math:`\Theta_{MA}(z) = \frac1M \sum_m z_m`, averaged over examples
  (feature maps after the nonlinearity, so low means "rarely on");
* standard deviation of the activation: :math:`\Theta_{std}(z) = \mathrm{std}(z_m)`
  over examples and positions;
* APoZ (Hu et al. 2016): the average percentage of zeros; a unit that is mostly zero is
  unimportant, so the score is :math:`1 - \mathrm{APoZ}` (higher = keep).

The statistics are taken where the next layer reads the unit: at the input of its consumer
(after ReLU and pooling; for a conv feeding a Linear, over the block of inputs it feeds).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from pruninglib.criteria.base import Scores, register
from pruninglib.core.graph import PrunableLayer, prunable_layers

__all__ = ["activation_statistics", "activation_mean", "activation_std", "activation_apoz"]


@torch.no_grad()
def activation_statistics(model: nn.Module, batches: Iterable, kinds: tuple[str, ...] = ("conv", "linear"),
                          zero_tol: float = 0.0, device: torch.device | None = None
                          ) -> dict[str, Scores]:
    """Mean, standard deviation and fraction of zeros of every unit's output, as its consumer
    sees it, over all examples and positions of ``batches`` (eval mode).

    Returns:
        ``{"mean": Scores, "std": Scores, "apoz": Scores}``.

    Raises:
        ValueError: for empty ``batches``.

    Used in lesson 03.
    """
    layers = prunable_layers(model, kinds)
    named = dict(model.named_modules())
    device = device or next(model.parameters()).device
    s1 = {pl.name: torch.zeros(pl.num_units, dtype=torch.float64) for pl in layers}
    s2 = {k: v.clone() for k, v in s1.items()}
    z = {k: v.clone() for k, v in s1.items()}
    count = {pl.name: 0 for pl in layers}

    def hook_for(pl: PrunableLayer) -> Callable:
        def hook(mod: nn.Module, inp: tuple) -> None:
            a = inp[0].detach()
            a = a.reshape(a.shape[0], pl.num_units, -1).transpose(0, 1).reshape(pl.num_units, -1).double()
            s1[pl.name] += a.sum(1).cpu()
            s2[pl.name] += a.pow(2).sum(1).cpu()
            z[pl.name] += (a.abs() <= zero_tol).sum(1).double().cpu()
            count[pl.name] += a.shape[1]
        return hook

    handles = [named[pl.consumer_name].register_forward_pre_hook(hook_for(pl)) for pl in layers]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for x, _ in batches:
            model(x.to(device))
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("batches is empty: pass an iterable of (x, y) with at least one batch")
    mean = {k: s1[k] / count[k] for k in s1}
    var = {k: (s2[k] / count[k] - mean[k].pow(2)).clamp_min(0) for k in s1}
    return {"mean": {k: v.float() for k, v in mean.items()},
            "std": {k: v.sqrt().float() for k, v in var.items()},
            "apoz": {k: (z[k] / count[k]).float() for k in s1}}


@register("activation_mean")
def activation_mean(model: nn.Module, batches: Iterable, loss_fn: Any = None,
                    kinds: tuple[str, ...] = ("conv", "linear"), **_: Any) -> Scores:
    r"""Mean activation :math:`\Theta_{MA}` (Molchanov et al. 2017, Sec. 2.2).

    No lesson calls it directly (its tests do).
    """
    return activation_statistics(model, batches, kinds)["mean"]


@register("activation_std")
def activation_std(model: nn.Module, batches: Iterable, loss_fn: Any = None,
                   kinds: tuple[str, ...] = ("conv", "linear"), **_: Any) -> Scores:
    r"""Standard deviation of the activation :math:`\Theta_{std}` (Molchanov et al. 2017, Sec. 2.2).

    No lesson calls it directly (its tests do).
    """
    return activation_statistics(model, batches, kinds)["std"]


@register("activation_apoz")
def activation_apoz(model: nn.Module, batches: Iterable, loss_fn: Any = None,
                    kinds: tuple[str, ...] = ("conv", "linear"), **_: Any) -> Scores:
    r""":math:`1 - \mathrm{APoZ}` (Hu et al. 2016; a baseline of Molchanov et al. 2017): the fraction of
    non-zero outputs after the nonlinearity (higher = keep).

    No lesson calls it directly (its tests do).
    """
    return {k: 1.0 - v for k, v in activation_statistics(model, batches, kinds)["apoz"].items()}
