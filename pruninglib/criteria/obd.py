r"""Optimal Brain Damage (LeCun, Denker & Solla 1990): saliency from the Hessian's diagonal.

LeCun et al. 1990, Eq. (1): a perturbation :math:`\delta\theta` changes the objective by

.. math::
    \delta L = \sum_i g_i\,\delta\theta_i + \tfrac12 \sum_i h_{ii}\,\delta\theta_i^2
               + \tfrac12 \sum_{i\neq j} h_{ij}\,\delta\theta_i\,\delta\theta_j + O(\lVert\delta\theta\rVert^3).

At a minimum :math:`g = 0`; assuming the loss is quadratic and the Hessian diagonal, Eq. (2)
keeps only :math:`\delta L = \frac12\sum_i h_{ii}\delta\theta_i^2`. Deleting weight :math:`q`
(:math:`\delta\theta_q = -\theta_q`, the others unchanged) costs its *saliency*

.. math::
    s_q = \tfrac12\, h_{qq}\, \theta_q^2 .

Structured OBD (a whole unit, i.e. the group :math:`Q` of weights that read it): the diagonal
model adds the saliencies, :math:`s_Q = \frac12\sum_{q\in Q} h_{qq}\theta_q^2`; with
``block=True`` the exact quadratic without compensation, :math:`\frac12 \theta_Q^\top H_{QQ}\theta_Q`.

Per-weight functions work on flat tensors (:func:`obd_saliency`) or return dicts shaped like the
parameters (:func:`obd_weight_scores`). The unit criterion ``"obd_unit"`` is registered for the
later lessons; it needs a dense curvature matrix, so it is for small models only.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib.criteria.base import Scores, register
from pruninglib.core.graph import prunable_layers
from pruninglib.curvature.hessian import exact_hessian, gauss_newton
from pruninglib.curvature.params import ParamSpec, flatten_params

__all__ = ["obd_saliency", "magnitude_saliency", "obd_weight_scores", "zero_lowest_weights",
           "unit_groups", "group_obd_saliency", "curvature", "CURVATURES", "obd_unit"]

CURVATURES = ("exact", "gauss_newton", "fisher", "kfac")


def _diag(curv: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(curv) if curv.dim() == 2 else curv


def obd_saliency(theta: torch.Tensor, curv: torch.Tensor) -> torch.Tensor:
    r""":math:`s_q = \frac12 h_{qq}\theta_q^2` for every entry (LeCun et al. 1990, Eq. 2 with
    :math:`\delta\theta_q = -\theta_q`).

    Args:
        theta: flat weights ``[P]``.
        curv: the Hessian ``[P, P]`` (or any stand-in) or just its diagonal ``[P]``.

    Used in lesson 01.
    """
    d = _diag(curv)
    if d.shape != theta.shape:
        raise ValueError(f"curvature diagonal has shape {tuple(d.shape)}, theta {tuple(theta.shape)}")
    return 0.5 * d * theta.pow(2)


def magnitude_saliency(theta: torch.Tensor) -> torch.Tensor:
    r"""The magnitude baseline :math:`|\theta_q|` (LeCun et al. 1990 and Hassibi & Stork 1993
    compare against it).

    Used in lesson 01.
    """
    return theta.abs()


def obd_weight_scores(theta: torch.Tensor, curv: torch.Tensor, spec: ParamSpec) -> dict[str, torch.Tensor]:
    """OBD saliencies as ``{parameter name: tensor shaped like the parameter}``.

    No lesson calls it directly (its tests do).
    """
    return {k: v.clone() for k, v in spec.unflatten(obd_saliency(theta, curv)).items()}


def zero_lowest_weights(theta: torch.Tensor, scores: torch.Tensor, prunable: torch.Tensor,
                 sparsity: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the ``sparsity`` fraction of prunable entries with the lowest scores (one shot,
    no compensation).

    Args:
        theta: flat weights ``[P]``.
        scores: ``[P]``, higher = keep.
        prunable: boolean ``[P]``: which entries may be removed (e.g. weights, not biases).
        sparsity: fraction of the prunable entries to remove, in ``[0, 1]``.

    Returns:
        ``(pruned theta, kept mask)`` (the mask is True on kept entries, including non-prunable ones).

    Used in lesson 01.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if prunable.dtype != torch.bool or prunable.shape != theta.shape:
        raise ValueError("prunable must be a boolean tensor shaped like theta")
    idx = torch.nonzero(prunable).flatten()
    k = int(round(sparsity * len(idx)))
    order = torch.argsort(scores[idx], stable=True)
    keep = torch.ones_like(prunable)
    keep[idx[order[:k]]] = False
    return theta * keep, keep


def unit_groups(model: nn.Module, spec: ParamSpec,
                kinds: tuple[str, ...] = ("linear", "conv")) -> dict[str, list[torch.Tensor]]:
    """For every prunable layer, the flat indices of the weights that *read* each of its units.

    Removing unit :math:`j` of a producer is the same as zeroing column :math:`j` of its
    consumer's weight (all of the :math:`j`-th input block after a conv -> flatten); that column
    is the group :math:`Q` of structured OBD/OBS. Its incoming weights then have no effect.

    Returns:
        ``{producer name: [LongTensor of flat indices, one per unit]}``.

    Raises:
        ValueError: when a consumer's weight is not in ``spec``.

    Used in lesson 01.
    """
    out: dict[str, list[torch.Tensor]] = {}
    for pl in prunable_layers(model, kinds):
        wname = f"{pl.consumer_name}.weight"
        if wname not in spec.names:
            raise ValueError(f"{wname} (the consumer of {pl.name}) is not in the ParamSpec; include it")
        s = spec.slice(wname)
        w = pl.consumer.weight
        idx = torch.arange(s.start, s.stop).view(w.shape)
        sf = pl.spatial_factor()
        groups = []
        for j in range(pl.num_units):
            cols = idx[:, j * sf:(j + 1) * sf] if isinstance(pl.consumer, nn.Linear) else idx[:, j]
            groups.append(cols.reshape(-1).clone())
        out[pl.name] = groups
    return out


def group_obd_saliency(theta: torch.Tensor, curv: torch.Tensor, groups: list[torch.Tensor],
                       block: bool = False) -> torch.Tensor:
    r"""Structured OBD: :math:`s_Q = \frac12\sum_{q\in Q} h_{qq}\theta_q^2` per group
    (``block=True``: :math:`\frac12\theta_Q^\top H_{QQ}\theta_Q`, needs the full matrix).

    Used in lesson 01.
    """
    if block:
        if curv.dim() != 2:
            raise ValueError("block=True needs the full curvature matrix, not its diagonal")
        return torch.stack([0.5 * theta[q] @ curv[q][:, q] @ theta[q] for q in groups])
    s = obd_saliency(theta, curv)
    return torch.stack([s[q].sum() for q in groups])


def curvature(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
              kind: str = "exact", damping: float = 0.0, dtype: torch.dtype = torch.float64,
              **kw: Any) -> torch.Tensor:
    r"""A dense ``[P, P]`` stand-in for the Hessian, over all trainable parameters.

    Args:
        kind: ``"exact"`` (:func:`~pruninglib.curvature.hessian.exact_hessian`), ``"gauss_newton"``
            (:func:`~pruninglib.curvature.hessian.gauss_newton`), ``"fisher"`` (empirical Fisher,
            :func:`~pruninglib.curvature.fisher.empirical_fisher`) or ``"kfac"``
            (:func:`~pruninglib.curvature.kfac.kfac_matrix`, Linear layers only).
        damping: :math:`\lambda` added to the diagonal.

    Used in lesson 01.
    """
    if kind == "exact":
        return exact_hessian(model, batches, loss_fn, dtype=dtype, damping=damping, **kw)
    if kind == "gauss_newton":
        return gauss_newton(model, batches, loss_fn, dtype=dtype, damping=damping, **kw)
    if kind == "fisher":
        from pruninglib.curvature.fisher import empirical_fisher
        return empirical_fisher(model, batches, loss_fn, dtype=dtype, damping=damping, **kw)
    if kind == "kfac":
        from pruninglib.curvature.kfac import kfac_factors, kfac_matrix
        _, spec = flatten_params(model)
        fac = kfac_factors(model, batches, loss_fn, dtype=dtype, **kw)
        return kfac_matrix(fac, spec, damping)
    raise ValueError(f"unknown curvature {kind!r}; choose one of {CURVATURES}")


@register("obd_unit")
def obd_unit(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
             curvature_kind: str = "exact", damping: float = 0.0, hessian: torch.Tensor | None = None,
             block: bool = False, kinds: tuple[str, ...] = ("linear", "conv"), **_: Any) -> Scores:
    r"""Structured OBD per unit: :math:`\frac12\sum_{q\in Q} h_{qq}\theta_q^2` over the consumer
    weights that read the unit (LeCun et al. 1990, Eq. 2, summed over the group).

    Args:
        model: a small chain model (the dense curvature must fit: a few thousand parameters).
        batches: iterable of ``(x, y)`` (ignored when ``hessian`` is given).
        curvature_kind: see :func:`curvature`.
        damping: :math:`\lambda` added to the curvature's diagonal.
        hessian: a precomputed ``[P, P]`` curvature over all trainable parameters (skips the computation).
        block: use :math:`\frac12\theta_Q^\top H_{QQ}\theta_Q` instead of the diagonal sum.

    Returns:
        :data:`~pruninglib.criteria.base.Scores` (higher = more important).

    Used in lesson 01.
    """
    theta, spec = flatten_params(model)
    H = hessian if hessian is not None else curvature(model, batches, loss_fn, curvature_kind, damping)
    if H.shape[0] != spec.numel:
        raise ValueError(f"hessian is {tuple(H.shape)} but the model has {spec.numel} trainable parameters")
    groups = unit_groups(model, spec, kinds)
    return {name: group_obd_saliency(theta.to(H.dtype), H, g, block=block).cpu()
            for name, g in groups.items()}
