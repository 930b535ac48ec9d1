r"""How well a criterion ranks units like the oracle does (lesson 03; lesson 02 uses it too).

Molchanov et al. 2017, Table 1: compute every criterion and the oracle
(:math:`|\Delta C|`, :mod:`pruninglib.criteria.oracle`) for all units, then report the rank
correlation (Spearman's :math:`\rho`, Kendall's :math:`\tau`, ``scipy.stats``)

* *per layer*: within each layer, averaged over layers;
* *all layers*: over all units of the network at once (a criterion whose scale differs between
  layers ranks badly here);
* *all layers, L2-normalised*: the same after the per-layer normalisation of the criterion
  (:func:`~pruninglib.criteria.base.normalize_per_layer`), the oracle left as it is.

The LeNet3 that lessons 02 and 03 share is trained by :mod:`pruninglib.lessons.lenet3`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy import stats

from pruninglib.criteria.base import Scores, normalize_per_layer

__all__ = ["rank_correlation", "oracle_correlations", "correlation_table", "units_before_rise"]

_METHODS = ("spearman", "kendall")


def rank_correlation(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                     method: str = "spearman") -> float:
    """Spearman's rho or Kendall's tau (``scipy.stats``) of two score vectors; NaN when either is
    constant (the rank correlation is undefined then).

    Raises:
        ValueError: for an unknown method or vectors of different lengths.

    Used in lessons 02 and 03.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    a = np.asarray(a.detach().cpu() if torch.is_tensor(a) else a, dtype=np.float64).ravel()
    b = np.asarray(b.detach().cpu() if torch.is_tensor(b) else b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"score vectors differ in length: {a.shape[0]} vs {b.shape[0]}")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    r = stats.spearmanr(a, b).statistic if method == "spearman" else stats.kendalltau(a, b).statistic
    return float(r)


def oracle_correlations(scores: Scores, oracle: Scores, method: str = "spearman") -> dict[str, float]:
    """Rank correlation of a criterion with the oracle: per layer (mean over layers), across all
    layers, and across all layers after per-layer L2 normalisation of the criterion.

    Raises:
        ValueError: when the two do not cover the same layers.

    Used in lesson 03.
    """
    if set(scores) != set(oracle):
        raise ValueError(f"criterion and oracle cover different layers: {sorted(scores)} vs {sorted(oracle)}")
    keys = list(oracle)
    per = [rank_correlation(scores[k], oracle[k], method) for k in keys]
    per = [p for p in per if not math.isnan(p)]
    cat = lambda d: torch.cat([d[k].detach().float().cpu().ravel() for k in keys])  # noqa: E731
    return {"per_layer": float(np.mean(per)) if per else math.nan,
            "all_layers": rank_correlation(cat(scores), cat(oracle), method),
            "all_layers_l2": rank_correlation(cat(normalize_per_layer(scores)), cat(oracle), method)}


def correlation_table(criteria: Mapping[str, Scores], oracle: Scores,
                      methods: Sequence[str] = _METHODS) -> list[dict[str, Any]]:
    """One row per criterion: ``{"criterion", "<method>_per_layer", "<method>_all_layers",
    "<method>_all_layers_l2", ...}``.

    Used in lesson 03.
    """
    rows = []
    for name, sc in criteria.items():
        row: dict[str, Any] = {"criterion": name}
        for m in methods:
            for k, v in oracle_correlations(sc, oracle, m).items():
                row[f"{m}_{k}"] = v
        rows.append(row)
    return rows


def units_before_rise(result: Any, threshold: float) -> int:
    """Units a greedy run (:class:`~pruninglib.methods.schedule.GreedyResult`) removed before its
    loss curve first rose by more than ``threshold`` above the unpruned loss (its first point).

    The greedy run itself does not depend on the threshold, so one run answers every threshold up
    to the one it stopped at (``result.count`` is this count for ``result.threshold``).
    Used in lesson 03 (solutions, exercise 1).

    Raises:
        ValueError: for a result without a recorded curve.
    """
    if not result.losses or len(result.losses) != len(result.units_removed):
        raise ValueError("the greedy result has no loss curve (units_removed and losses must match and be non-empty)")
    count = 0
    for units, loss in zip(result.units_removed, result.losses):
        if loss > result.losses[0] + threshold:
            break
        count = units
    return count
