"""The criterion interface: scores per unit, a registry by name, normalisation, ranking."""
from __future__ import annotations

import numbers
from typing import Callable, Mapping

import torch

__all__ = ["Scores", "CRITERIA", "register", "get_criterion", "list_criteria",
           "normalize_per_layer", "lowest_units", "check_ratio", "lowest_per_layer", "ScoreAverage"]

Scores = dict[str, torch.Tensor]
"""``{layer name: 1-D tensor of per-unit importance}`` (higher = keep)."""

CRITERIA: dict[str, Callable[..., Scores]] = {}


def register(name: str) -> Callable[[Callable[..., Scores]], Callable[..., Scores]]:
    """Decorator: add a unit criterion to :data:`CRITERIA` under ``name``. Used in lessons 00, 01, 02, 03, 04 and 06."""
    def deco(fn: Callable[..., Scores]) -> Callable[..., Scores]:
        if name in CRITERIA and CRITERIA[name] is not fn:
            raise ValueError(f"criterion {name!r} registered twice")
        CRITERIA[name] = fn
        return fn
    return deco


def get_criterion(name: str) -> Callable[..., Scores]:
    """The criterion registered as ``name``; unknown names list the valid ones.

    Used in lessons 00, 01, 03, 04, 05 and 06.
    """
    if name not in CRITERIA:
        raise KeyError(f"unknown criterion {name!r}; registered: {sorted(CRITERIA)}")
    return CRITERIA[name]


def list_criteria() -> list[str]:
    """Names of all registered criteria. Used in lesson 06."""
    return sorted(CRITERIA)


def normalize_per_layer(scores: Scores, eps: float = 1e-12) -> Scores:
    r"""Layer-wise L2 normalisation, Molchanov et al. 2017, Eq. (8):
    :math:`\hat\Theta(z_l^{(k)}) = \Theta(z_l^{(k)}) / \sqrt{\sum_j \Theta(z_l^{(j)})^2}`.

    Used in lessons 02, 03, 04 and 06.
    """
    return {k: v / (v.pow(2).sum().sqrt() + eps) for k, v in scores.items()}


def lowest_units(scores: Scores, n: int, min_keep: int = 1,
                 alive: Mapping[str, torch.Tensor] | None = None) -> list[tuple[str, int]]:
    """The ``n`` globally least important units, never leaving a layer with fewer than
    ``min_keep`` units (ties broken by layer order, then index).

    Args:
        scores: importance per layer (lower = remove first).
        n: how many units to pick.
        min_keep: units every layer keeps.
        alive: optional bool mask per layer of the units still in (units already removed are
            neither picked nor counted toward ``min_keep``); default: all units are in.

    Raises:
        TypeError: ``n`` is not an integer (2.5, NaN, a bool).
        ValueError: ``n`` is negative, or more units are asked for than can go.

    Used in lessons 02, 03 and 04.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n, the number of units to remove, must be an integer, got {n!r} "
                        f"({type(n).__name__}); round it first, e.g. int(ratio * total)")
    n = int(n)
    if n < 0:
        raise ValueError(f"n, the number of units to remove, must be >= 0, got {n}")
    left = {name: (int(alive[name].sum()) if alive is not None else len(v)) for name, v in scores.items()}
    removable = sum(max(0, c - min_keep) for c in left.values())
    if n > removable:
        raise ValueError(f"asked to remove {n} units but only {removable} can go while keeping "
                         f"{min_keep} per layer; lower the pruning amount")
    flat = [(float(s), li, i, name) for li, (name, v) in enumerate(scores.items())
            for i, s in enumerate(v.detach().cpu().tolist()) if alive is None or bool(alive[name][i])]
    flat.sort()
    out: list[tuple[str, int]] = []
    for _, _, i, name in flat:
        if len(out) == n:
            break
        if left[name] > min_keep:
            out.append((name, i))
            left[name] -= 1
    return out


def check_ratio(ratio: float, name: str = "ratio") -> float:
    """Validate a pruning ratio: the fraction of units to remove, in [0, 1).

    Raises:
        ValueError: naming the fix, e.g. for 1.2 ("a ratio is a fraction: use 0.2 to remove 20%").

    Used in lessons 00 and 05.
    """
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {ratio!r}") from None
    if not 0.0 <= r < 1.0:
        hint = f"; did you mean {r / 100:g} ({r:g}%)?" if 1.0 < r <= 100.0 else ""
        raise ValueError(f"{name} must be in [0, 1) (the fraction of units to remove; 1.0 would remove "
                         f"every unit of a layer), got {ratio!r}{hint}")
    return r


def lowest_per_layer(scores: Scores, ratio: float, min_keep: int = 1) -> dict[str, list[int]]:
    """A uniform plan: in every layer, the ``floor(ratio * n)`` least important units
    (capped so that ``min_keep`` units stay), as ``{layer: [indices]}`` for
    :func:`pruninglib.core.surgery.prune_channels`.

    Used in lesson 00.
    """
    r = check_ratio(ratio)
    plan = {}
    for name, v in scores.items():
        k = min(int(r * len(v)), len(v) - min_keep)
        plan[name] = v.argsort()[:max(k, 0)].tolist()
    return plan


class ScoreAverage:
    r"""The average of per-unit scores over minibatches: the mean, or an exponential moving average.

    With ``momentum=None`` :meth:`result` is :math:`\frac1B \sum_b s_b`; with ``momentum`` :math:`\mu`
    in ``[0, 1)`` it is :math:`v_B` with :math:`v_1 = s_1`, :math:`v_b = \mu v_{b-1} + (1-\mu) s_b`
    (the authors' configs of Molchanov et al. 2019 use 0.9). Sums are kept in float64 on the
    scores' device. Used by the Taylor criteria (lessons 02-04) and the iterative schedule (02).
    """

    def __init__(self, momentum: float | None = None) -> None:
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1) or None, got {momentum}")
        self.momentum = momentum
        self._acc: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, scores: Mapping[str, torch.Tensor]) -> None:
        """Take one minibatch's scores."""
        for k, v in scores.items():
            v = v.detach().double()
            if k not in self._acc:
                self._acc[k] = v.clone()
            elif self.momentum is None:
                self._acc[k] = self._acc[k] + v
            else:
                self._acc[k] = self.momentum * self._acc[k] + (1 - self.momentum) * v
        self.count += 1

    def result(self, dtype: torch.dtype = torch.float32) -> Scores:
        """The average so far, on the CPU, as ``dtype``.

        Raises:
            ValueError: nothing was added.
        """
        if self.count == 0:
            raise ValueError("no scores were added: pass at least one minibatch")
        div = self.count if self.momentum is None else 1
        return {k: (v.cpu() / div).to(dtype) for k, v in self._acc.items()}
