"""Weight-magnitude criteria: filter norms (Li et al. 2017) and BatchNorm scales (Liu et al. 2017).

* L1 norm of a filter, Li et al. 2017, Sec. 3.1: :math:`s_j = \\sum |\\mathcal{F}_{i,j}|`
  (the sum of absolute kernel weights of output channel :math:`j`).
* L2 norm of a filter (the "weight" baseline of Molchanov et al. 2017, Table 1).
* BatchNorm scale, Liu et al. 2017 (Network Slimming), Eq. (1): :math:`|\\gamma_j|`.

These need no data; ``batches`` is accepted (and ignored) to share the interface.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch.nn as nn

from pruninglib.criteria.base import Scores, register
from pruninglib.core.graph import prunable_layers

__all__ = ["weight_l1", "weight_l2", "bn_scale"]


def _norm(model: nn.Module, p: int, kinds: tuple[str, ...]) -> Scores:
    out = {}
    for pl in prunable_layers(model, kinds):
        w = pl.module.weight.detach()
        out[pl.name] = w.abs().flatten(1).sum(1) if p == 1 else w.flatten(1).norm(dim=1)
    return out


@register("weight_l1")
def weight_l1(model: nn.Module, batches: Iterable | None = None, loss_fn: Any = None,
              kinds: tuple[str, ...] = ("conv", "linear"), **_: Any) -> Scores:
    """L1 norm of each unit's incoming weights (Li et al. 2017, Sec. 3.1). Used in lessons 00, 04 and 06."""
    return _norm(model, 1, kinds)


@register("weight_l2")
def weight_l2(model: nn.Module, batches: Iterable | None = None, loss_fn: Any = None,
              kinds: tuple[str, ...] = ("conv", "linear"), **_: Any) -> Scores:
    """L2 norm of each unit's incoming weights (Molchanov et al. 2017, "weight"). Used in lessons 01, 02 and 03."""
    return _norm(model, 2, kinds)


@register("bn_scale")
def bn_scale(model: nn.Module, batches: Iterable | None = None, loss_fn: Any = None,
             **_: Any) -> Scores:
    """|gamma| of the BatchNorm after each conv (Liu et al. 2017, Network Slimming, Eq. 1).

    Raises:
        ValueError: for a layer without BatchNorm.

    Used in lesson 03.
    """
    out = {}
    for pl in prunable_layers(model, ("conv",)):
        if pl.norm is None:
            raise ValueError(f"layer {pl.name!r} has no BatchNorm, so bn_scale has no gamma to read; "
                             "use a model with batch_norm=True or another criterion")
        out[pl.name] = pl.norm.weight.detach().abs().clone()
    return out
