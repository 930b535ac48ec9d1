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

import numbers
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from pruninglib.core.graph import PrunableLayer, prunable_layers

__all__ = ["prune_channels", "prune_units", "channel_counts", "units_to_plan"]


def _indices(name: str, width: int, remove: object) -> list[int]:
    """The channel indices of a plan entry: Python/NumPy ints, an integer tensor, or a bool mask
    of exactly the layer's width (True = remove).

    Raises:
        TypeError: anything else (floats, bools that are not a full mask, a bare number), naming the layer.
    """
    def refuse(why: str) -> TypeError:
        return TypeError(f"plan[{name!r}] must be a collection of integer channel indices (or a bool mask of "
                         f"the layer's {width} channels); {why}")

    if isinstance(remove, (str, bytes, numbers.Number)) or (torch.is_tensor(remove) and remove.dim() == 0):
        raise refuse(f"got the single value {remove!r}: write [{remove!r}] for one channel")
    if torch.is_tensor(remove) or isinstance(remove, np.ndarray):
        arr = remove.detach().cpu().numpy() if torch.is_tensor(remove) else remove
        if arr.ndim != 1:
            raise refuse(f"got an array of shape {tuple(arr.shape)}")
        if arr.dtype == np.bool_:
            if len(arr) != width:
                raise refuse(f"a bool mask must have {width} entries, got {len(arr)}")
            return [int(i) for i in np.flatnonzero(arr)]
        if not np.issubdtype(arr.dtype, np.integer):
            raise refuse(f"got a {arr.dtype} array; channel indices are integers")
        return [int(i) for i in arr.tolist()]
    try:
        items = list(remove)  # type: ignore[call-overload]
    except TypeError:
        raise refuse(f"got {type(remove).__name__} {remove!r}") from None
    if items and all(isinstance(i, (bool, np.bool_)) for i in items):
        if len(items) != width:
            raise refuse(f"a bool mask must have {width} entries, got {len(items)}")
        return [k for k, b in enumerate(items) if b]
    out = []
    for i in items:
        if torch.is_tensor(i) and i.dim() == 0 and not i.is_floating_point() and i.dtype != torch.bool:
            i = int(i)
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (numbers.Integral, np.integer)):
            raise refuse(f"{i!r} ({type(i).__name__}) is not an integer index")
        out.append(int(i))
    return out


def _keep_index(pl: PrunableLayer, remove: Sequence[int]) -> torch.Tensor:
    n = pl.num_units
    remove_set = set(remove)
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

    The whole plan is checked before anything changes, and the surgery is all-or-nothing: if
    any step fails, every module is restored to exactly what it was.

    Raises:
        TypeError: ``plan`` is not a mapping, or an entry is not a collection of integer indices.
        ValueError: a name that is not a prunable layer, an index out of range, or a plan
            that removes every channel of a layer (the message names the layer).

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    if not isinstance(plan, Mapping):
        raise TypeError(f"plan must be a mapping {{layer name: indices to remove}}, got {type(plan).__name__}")
    layers = {pl.name: pl for pl in prunable_layers(model)}
    unknown = [n for n in plan if n not in layers]
    if unknown:
        raise ValueError(f"not prunable layers: {unknown}; prunable layers are {list(layers)}")
    keeps = {}
    for name, idx in plan.items():
        remove = _indices(name, layers[name].num_units, idx)
        if remove:
            keeps[name] = _keep_index(layers[name], remove)
    for name in keeps:
        layers[name].spatial_factor()  # raises for a consumer whose inputs do not match the channels
    saved = _snapshot([layers[name] for name in keeps])
    try:
        for name, keep in keeps.items():
            pl = layers[name]
            _shrink_in(pl, keep)  # before the producer: spatial_factor reads its current width
            _shrink_out(pl.module, keep)
            if pl.norm is not None:
                _shrink_norm(pl.norm, keep)
            _shrink_gate(pl, keep)
    except BaseException:
        _restore(saved)
        raise
    return model


_STATE = ("weight", "bias", "running_mean", "running_var", "in_channels", "out_channels", "in_features",
          "out_features", "num_features")


def _snapshot(layers: Sequence[PrunableLayer]) -> list[tuple[nn.Module, dict[str, object]]]:
    """What the surgery may change in the modules of ``layers`` (the objects themselves, not copies:
    the surgery replaces parameters instead of editing them)."""
    mods: dict[int, nn.Module] = {}
    for pl in layers:
        for m in (pl.module, pl.norm, pl.consumer, getattr(pl.gate_host, "pl_gate", None)):
            if m is not None:
                mods[id(m)] = m
    return [(m, {a: getattr(m, a) for a in _STATE if hasattr(m, a)}) for m in mods.values()]


def _restore(saved: list[tuple[nn.Module, dict[str, object]]]) -> None:
    for m, state in saved:
        for a, v in state.items():
            setattr(m, a, v)


def units_to_plan(units: Iterable[tuple[str, int]]) -> dict[str, list[int]]:
    """Group ``(layer, index)`` units into a ``{layer: [indices]}`` plan. Used in lessons 01, 02, 03 and 04."""
    plan: dict[str, list[int]] = {}
    for name, idx in units:
        plan.setdefault(name, []).append(idx)  # checked by prune_channels: integers only
    return plan


def prune_units(model: nn.Module, units: Iterable[tuple[str, int]]) -> nn.Module:
    """Remove the given ``(layer name, index)`` units physically (see :func:`prune_channels`).

    Used in lessons 01, 02, 03 and 04.
    """
    return prune_channels(model, units_to_plan(units))


def channel_counts(model: nn.Module) -> dict[str, int]:
    """``{producer name: channels}`` for every prunable layer (the bar chart of a pruned net). Used in lesson 00."""
    return {pl.name: pl.num_units for pl in prunable_layers(model)}
