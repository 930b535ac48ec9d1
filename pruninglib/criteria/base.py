"""The criterion interface: scores per unit, a registry by name, normalisation, ranking."""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["Scores", "CRITERIA", "register", "get_criterion", "list_criteria",
           "normalize_per_layer", "lowest_units"]

Scores = dict[str, torch.Tensor]
"""``{layer name: 1-D tensor of per-unit importance}`` (higher = keep)."""

CRITERIA: dict[str, Callable[..., Scores]] = {}


def register(name: str) -> Callable[[Callable[..., Scores]], Callable[..., Scores]]:
    """Decorator: add a unit criterion to :data:`CRITERIA` under ``name``."""
    def deco(fn: Callable[..., Scores]) -> Callable[..., Scores]:
        if name in CRITERIA and CRITERIA[name] is not fn:
            raise ValueError(f"criterion {name!r} registered twice")
        CRITERIA[name] = fn
        return fn
    return deco


def get_criterion(name: str) -> Callable[..., Scores]:
    """The criterion registered as ``name``; unknown names list the valid ones."""
    if name not in CRITERIA:
        raise KeyError(f"unknown criterion {name!r}; registered: {sorted(CRITERIA)}")
    return CRITERIA[name]


def list_criteria() -> list[str]:
    """Names of all registered criteria."""
    return sorted(CRITERIA)


def normalize_per_layer(scores: Scores, eps: float = 1e-12) -> Scores:
    r"""Layer-wise L2 normalisation, Molchanov et al. 2017, Eq. (8):
    :math:`\hat\Theta(z_l^{(k)}) = \Theta(z_l^{(k)}) / \sqrt{\sum_j \Theta(z_l^{(j)})^2}`."""
    return {k: v / (v.pow(2).sum().sqrt() + eps) for k, v in scores.items()}


def lowest_units(scores: Scores, n: int, min_keep: int = 1) -> list[tuple[str, int]]:
    """The ``n`` globally least important units, never leaving a layer with fewer than
    ``min_keep`` units (ties broken by layer order, then index).

    Raises:
        ValueError: if ``n`` is negative or more units are asked for than can go.
    """
    if n < 0:
        raise ValueError(f"number of units to remove must be >= 0, got {n}")
    removable = sum(max(0, len(v) - min_keep) for v in scores.values())
    if n > removable:
        raise ValueError(f"asked to remove {n} units but only {removable} can go while keeping "
                         f"{min_keep} per layer; lower the pruning amount")
    flat = [(float(s), li, i, name) for li, (name, v) in enumerate(scores.items())
            for i, s in enumerate(v.detach().cpu().tolist())]
    flat.sort()
    left = {name: len(v) for name, v in scores.items()}
    out: list[tuple[str, int]] = []
    for _, _, i, name in flat:
        if len(out) == n:
            break
        if left[name] > min_keep:
            out.append((name, i))
            left[name] -= 1
    return out
