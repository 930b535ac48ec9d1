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

__all__ = ["rank_correlation", "oracle_correlations", "correlation_table", "units_before_rise", "pick_units",
           "paper_phases", "VGG_SGD", "VGG_PAPER", "SMOKE_CAPS"]

#: SGD settings of lesson 03's BatchNorm VGG study (every mode).
VGG_SGD: dict[str, Any] = {"model": "cifar_vgg", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "seed": 0}
#: Paper mode's VGG study: CIFAR VGG-16 at full width on CIFAR-10, 30 epochs.
VGG_PAPER: dict[str, Any] = {**VGG_SGD, "model_kwargs": {"cfg": "vgg16", "in_channels": 3, "width": 1.0,
                                                         "batch_norm": True},
                             "dataset": "cifar10", "n_per_class": None, "epochs": 30, "batch_size": 128}
#: Lesson 03's ``--smoke`` caps (issue 18): paper mode's loops capped -- a few images per class, coarse greedy
#: steps, one random seed, the VGG oracle on every 64th unit -- with the same models and methods.
SMOKE_CAPS: dict[str, Any] = {
    "correlation_per_class": 10, "naive_every_nth_unit": 32, "greedy_per_class": 10, "greedy_step": 16,
    "random_seeds": 1, "vgg_correlation_per_class": 1, "vgg_oracle_every_nth_unit": 64,
    "vgg_training": {**VGG_PAPER, "n_per_class": 2, "epochs": 1}}

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


def pick_units(scores: Scores, units: Mapping[str, Sequence[int]]) -> Scores:
    """The scores of the chosen units only, ``{layer: scores[layer][units[layer]]}``: what the oracle
    scored when it ran on a subset of the units (``oracle_loss_change(..., units=...)``). Used in lesson 03."""
    return {k: v[torch.as_tensor(list(units[k]), dtype=torch.long)] for k, v in scores.items() if k in units}


def paper_phases(settings: Mapping[str, Any], device: torch.device | None = None, greedy_stop: int = 145) -> list:
    """Lesson 03's long steps at paper settings as :class:`pruninglib.estimate.Phase` units, for the time
    estimate printed before a paper run (issue 18): the LeNet3 training and its forward passes (the
    correlation oracle, and the greedy runs: the two oracle scorers re-score every remaining unit on the
    whole loss set after every step, until about ``greedy_stop`` units are gone -- Molchanov et al. 2019,
    Sec. 4.1, report 145), the VGG training, and the VGG oracle (one forward pass per unit and image, timed
    as a full forward pass: an upper bound, the oracle reruns only the layers after the unit). Used in lesson 03.
    """
    from pruninglib.core.graph import prunable_layers
    from pruninglib.core.metrics import count_macs
    from pruninglib.estimate import Phase, forward_step, sgd_step, steps_per_epoch, timing_batch, training_flops
    from pruninglib.lessons.lenet3 import lenet3_phases
    from pruninglib.models import build_model

    lt, vt = settings["lenet3_training"], settings["vgg_training"]
    n_loss = 60_000 if settings["greedy_per_class"] is None else 10 * settings["greedy_per_class"]
    step = int(settings["greedy_step"])
    greedy = 2 * sum(252 - k for k in range(0, greedy_stop + 1, step)) * n_loss  # the two oracle scorers
    others = (3 + settings["random_seeds"]) * (greedy_stop // step + 1) * n_loss  # loss evaluations of the rest
    corr = 252 * 10 * settings["correlation_per_class"]
    phases = lenet3_phases(lt, oracle_images=greedy + others + corr, device=device)
    vgg = build_model(vt["model"], **vt["model_kwargs"])
    macs = count_macs(vgg, (1, 3, 32, 32))
    b = int(vt["batch_size"])
    units = sum(pl.num_units for pl in prunable_layers(vgg))
    bt, ft = timing_batch(b, device), timing_batch(256, device)
    phases += [Phase(f"CIFAR VGG SGD step, batch {b}", sgd_step(vgg, (bt, 3, 32, 32), 10, device),
                     vt["epochs"] * steps_per_epoch(vt["dataset"], b, vt["n_per_class"]), training_flops(macs, b),
                     per_call=bt / b),
               Phase("CIFAR VGG forward pass, 256 images", forward_step(vgg.to(device or "cpu"), (ft, 3, 32, 32), device),
                     units * 10 * settings["vgg_correlation_per_class"] / 256, 2.0 * macs * 256, per_call=ft / 256)]
    return phases
