"""Surgery: physically remove channels, so the pruned model is smaller and faster.

Removing output channel :math:`c` of a producer means deleting row :math:`c` of its weight
(and bias), entry :math:`c` of its BatchNorm (weight, bias, running statistics) and the
matching inputs of the consumer: column :math:`c` of the next conv's weight, or, after a
flatten, the block of :math:`H W` columns of the first Linear that channel :math:`c` feeds.
The result computes exactly what the gated model computes with those gates set to zero
(``tests/test_surgery.py`` checks it to 1e-5 for every model family).

Modules are edited in place (parameters are replaced by smaller ones), so hooks and
gates stay attached. Create optimizers *after* surgery.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from pruninglib.core.graph import PrunableLayer, prunable_layers

__all__ = ["prune_channels", "prune_units", "channel_counts", "units_to_plan"]


def _keep_index(pl: PrunableLayer, remove: Sequence[int]) -> torch.Tensor:
    n = pl.num_units
    remove_set = set(int(i) for i in remove)
    bad = [i for i in remove_set if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer {pl.name!r} has {n} channels; cannot remove indices {sorted(bad)[:5]}")
    if len(remove_set) >= n:
        raise ValueError(
            f"pruning all {n} channels of layer {pl.name!r} would disconnect the network; "
            "keep at least one channel in every layer (lower the ratio for this layer or skip it)")
    return torch.tensor([i for i in range(n) if i not in remove_set], dtype=torch.long)


def _take(p: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``p`` restricted to ``index`` along ``dim`` (a new tensor; index_select is much faster
    than advanced indexing for large weights)."""
    return torch.index_select(p.detach(), dim, index.to(p.device))


def _param(p: nn.Parameter, dim: int, index: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(_take(p, dim, index), requires_grad=p.requires_grad)


def _shrink_out(m: nn.Module, keep: torch.Tensor) -> None:
    m.weight = _param(m.weight, 0, keep)
    if getattr(m, "bias", None) is not None:
        m.bias = _param(m.bias, 0, keep)
    if isinstance(m, nn.Conv2d):
        m.out_channels = len(keep)
    else:
        m.out_features = len(keep)


def _shrink_norm(bn: nn.Module, keep: torch.Tensor) -> None:
    if bn.affine:
        bn.weight = _param(bn.weight, 0, keep)
        bn.bias = _param(bn.bias, 0, keep)
    if bn.running_mean is not None:
        bn.running_mean = _take(bn.running_mean, 0, keep)
        bn.running_var = _take(bn.running_var, 0, keep)
    bn.num_features = len(keep)


def _shrink_in(pl: PrunableLayer, keep: torch.Tensor) -> None:
    c = pl.consumer
    if isinstance(c, nn.Conv2d):
        cols = keep
    else:
        f = pl.spatial_factor()
        cols = (keep[:, None] * f + torch.arange(f)[None, :]).reshape(-1)
    c.weight = _param(c.weight, 1, cols)
    if isinstance(c, nn.Conv2d):
        c.in_channels = len(keep)
    else:
        c.in_features = len(cols)


def _shrink_gate(pl: PrunableLayer, keep: torch.Tensor) -> None:
    host = pl.gate_host
    if hasattr(host, "pl_gate"):
        host.pl_gate.weight = _param(host.pl_gate.weight, 0, keep)


def prune_channels(model: nn.Module, plan: Mapping[str, Sequence[int]]) -> nn.Module:
    """Remove output channels from the layers named in ``plan``, in place.

    Args:
        model: a model :func:`~pruninglib.core.graph.prunable_layers` understands.
        plan: ``{producer name: indices to remove}``; indices refer to the layer's current
            channels. Layers not named keep all their channels.

    Returns:
        ``model`` (pruned in place).

    Raises:
        ValueError: a name that is not a prunable layer, an index out of range, or a plan
            that removes every channel of a layer (the message names the layer).
    """
    layers = {pl.name: pl for pl in prunable_layers(model)}
    unknown = [n for n in plan if n not in layers]
    if unknown:
        raise ValueError(f"not prunable layers: {unknown}; prunable layers are {list(layers)}")
    keeps = {name: _keep_index(layers[name], idx) for name, idx in plan.items() if len(idx)}
    for name, keep in keeps.items():
        pl = layers[name]
        _shrink_in(pl, keep)  # before the producer: spatial_factor reads its current width
        _shrink_out(pl.module, keep)
        if pl.norm is not None:
            _shrink_norm(pl.norm, keep)
        _shrink_gate(pl, keep)
    return model


def units_to_plan(units: Iterable[tuple[str, int]]) -> dict[str, list[int]]:
    """Group ``(layer, index)`` units into a ``{layer: [indices]}`` plan."""
    plan: dict[str, list[int]] = {}
    for name, idx in units:
        plan.setdefault(name, []).append(int(idx))
    return plan


def prune_units(model: nn.Module, units: Iterable[tuple[str, int]]) -> nn.Module:
    """Remove the given ``(layer name, index)`` units physically (see :func:`prune_channels`)."""
    return prune_channels(model, units_to_plan(units))


def channel_counts(model: nn.Module) -> dict[str, int]:
    """``{producer name: channels}`` for every prunable layer (the bar chart of a pruned net)."""
    return {pl.name: pl.num_units for pl in prunable_layers(model)}
