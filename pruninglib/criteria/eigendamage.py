r"""EigenDamage (Wang, Grosse, Fidler & Zhang, ICML 2019): structured pruning in the Kronecker-factored eigenbasis.

With :math:`F \approx S\otimes A` and the eigendecompositions :math:`A = Q_A\,\mathrm{diag}(d_A)\,Q_A^\top`,
:math:`S = Q_S\,\mathrm{diag}(d_S)\,Q_S^\top`, the Fisher is diagonal in the basis
:math:`W^* = Q_S^\top W Q_A` (Sec. 3.3, Eq. 10-11), with diagonal :math:`d_S d_A^\top`. OBD there is
exact for the K-FAC model (no off-diagonal terms to drop), and the per-weight saliency is

.. math:: \Delta L_{ij} = \tfrac12\,(W^*_{ij})^2\,[d_S]_i\,[d_A]_j .

Summing over a row gives the score of output direction :math:`i` (a row of :math:`W^*`, a column of
:math:`Q_S`), over a column the score of input direction :math:`j` (a column of :math:`Q_A`). All scores of
all layers are thresholded globally (:func:`global_removal`, with the per-layer cap
``prune_ratio_limit`` of the authors' code), and every layer is rebuilt as the bottleneck of
:mod:`pruninglib.core.eigenbasis` with the kept directions. As in the authors' code
(``pruner/kfac_eigen_pruner.py``): eigenvalues :math:`\le 10^{-10}` are set to zero and no damping
is added; the last classifier is not reparameterised; a layer whose bottleneck would have more
parameters than the layer itself stays as it is. Iterated, a bottleneck's core is decomposed again
and the rotations merged (:func:`apply_eigendamage`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from pruninglib.core.eigenbasis import (EigenBottleneck, bottleneck_matrices, bottleneck_param_count, layer_param_count,
                                        make_bottleneck, patch_matrix, replace_module, set_bottleneck_matrices)
from pruninglib.curvature.kfac import kfac_factors, layer_matrix

__all__ = ["EigenBasis", "eigenbasis", "eigen_saliency", "eigen_unit_scores", "eigen_targets", "collect_bases",
           "global_removal", "eigen_plan", "eigen_plan_params", "apply_eigendamage", "full_plan"]


@dataclass
class EigenBasis:
    r"""One layer in its Kronecker-factored eigenbasis.

    Attributes:
        Q_A, d_A: eigenvectors (columns) and clipped eigenvalues of :math:`A`.
        Q_S, d_S: the same for :math:`S`.
        W_star: :math:`Q_S^\top W Q_A`.
        target: ``"layer"`` (a Conv2d/Linear) or ``"core"`` (the core of an existing bottleneck).

    Used in lesson 07.
    """

    Q_A: torch.Tensor
    d_A: torch.Tensor
    Q_S: torch.Tensor
    d_S: torch.Tensor
    W_star: torch.Tensor
    target: str = "layer"


def eigenbasis(W: torch.Tensor, A: torch.Tensor, S: torch.Tensor, eps: float = 1e-10, damping: float = 0.0) -> EigenBasis:
    r""":math:`W^* = Q_S^\top W Q_A` with eigenvalues :math:`\le` ``eps`` set to 0 (the authors' only guard).

    ``W`` is ``[out, n]``, or ``[out, K, in]`` in the patch form (then :math:`W^*_k = Q_S^\top W_k Q_A` for
    every kernel offset :math:`k`). ``damping`` adds :math:`\lambda` to every eigenvalue (not in the authors'
    code). Used in lesson 07.
    """
    d_A, Q_A = torch.linalg.eigh(0.5 * (A + A.T))
    d_S, Q_S = torch.linalg.eigh(0.5 * (S + S.T))
    d_A, d_S = d_A * (d_A > eps) + damping, d_S * (d_S > eps) + damping
    W_star = torch.einsum("os,skc,cd->okd", Q_S.T, W, Q_A) if W.dim() == 3 else Q_S.T @ W @ Q_A
    return EigenBasis(Q_A, d_A, Q_S, d_S, W_star)


def eigen_saliency(eb: EigenBasis) -> torch.Tensor:
    r""":math:`\tfrac12 (W^*)^2 \circ (d_S d_A^\top)`, ``[out, n]`` (EigenDamage, Sec. 3.3); in the patch form
    summed over the kernel offsets, as the authors' code does. Used in lesson 07."""
    if eb.W_star.dim() == 3:
        return 0.5 * (eb.W_star.pow(2) * eb.d_S[:, None, None] * eb.d_A[None, None, :]).sum(1)
    return 0.5 * eb.W_star.pow(2) * torch.outer(eb.d_S, eb.d_A)


def eigen_unit_scores(eb: EigenBasis, normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input-direction scores, output-direction scores)``: column and row sums of the saliency.

    ``normalize=True`` divides each side by its sum (an option of the authors' code, which notes that
    it mostly hurts). Used in lesson 07.
    """
    s = eigen_saliency(eb)
    i, o = s.sum(0), s.sum(1)
    if normalize:
        i, o = i / i.sum().clamp_min(1e-30), o / o.sum().clamp_min(1e-30)
    return i, o


def eigen_targets(model: nn.Module) -> dict[str, nn.Module]:
    """What EigenDamage reparameterises: every Conv2d/Linear except the last one (the classifier), or the
    core of a bottleneck already there. ``{name: module}`` (the bottleneck's name for a core). Used in lesson 07."""
    out: dict[str, nn.Module] = {}
    inside: set[str] = set()
    for n, m in model.named_modules():
        if isinstance(m, EigenBottleneck):
            out[n] = m
            inside |= {f"{n}.{c}" for c in ("rotate_in", "core", "rotate_out")}
        elif type(m) in (nn.Conv2d, nn.Linear) and n not in inside:
            out[n] = m
    last = list(out)[-1]
    if isinstance(out[last], (nn.Conv2d, nn.Linear)):
        out.pop(last)
    return out


def collect_bases(model: nn.Module, batches: Iterable, fisher: str = "sampled", eps: float = 1e-10,
                  damping: float = 0.0, progress: bool = False, seed: int = 0,
                  factors: Mapping | None = None, patch: bool = True) -> dict[str, EigenBasis]:
    """K-FAC factors of every target of :func:`eigen_targets` (a bottleneck's core for one already there) and
    their eigenbases. ``factors`` may be given (as from :func:`kfac_factors` over the same layer names, with the
    same ``patch``). ``patch=True`` is the authors' default form for convolutions (see
    :mod:`pruninglib.core.eigenbasis`). Used in lesson 07."""
    targets = eigen_targets(model)
    names = {n: (f"{n}.core" if isinstance(m, EigenBottleneck) else n) for n, m in targets.items()}
    if factors is None:
        factors = kfac_factors(model, batches, fisher=fisher, layers=list(names.values()), progress=progress, seed=seed,
                               patch=patch)
    named = dict(model.named_modules())
    out = {}
    for n, layer in names.items():
        f = factors[layer]
        if f.patch != (patch and isinstance(named[layer], nn.Conv2d)):
            raise ValueError(f"the factors of {layer!r} were collected with patch={f.patch}; pass the same patch=")
        W = (patch_matrix(named[layer]) if f.patch else layer_matrix(named[layer])).to(f.A)
        eb = eigenbasis(W, f.A, f.S, eps, damping)
        eb.target = "core" if layer != n else "layer"
        out[n] = eb
    return out


def global_removal(scores: Mapping[str, torch.Tensor], ratio: float, limit: float = 0.95,
                   min_keep: int = 1) -> dict[str, torch.Tensor]:
    """Global thresholding with a per-layer cap: the ``int(ratio * N)`` lowest of all ``N`` scores go,
    but no entry loses more than ``floor(limit * n)`` of its ``n`` units (EigenDamage's ``prune_ratio_limit``)
    nor all but ``min_keep``. Returns ``{name: removed indices}`` (sorted). Used in lesson 07.

    Raises:
        ValueError: ``ratio`` outside [0, 1) or ``limit`` outside (0, 1].
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1) (the fraction of all units to remove), got {ratio}")
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"limit (prune_ratio_limit) must be in (0, 1], got {limit}")
    names = list(scores)
    flat = torch.cat([scores[n].detach().double().cpu().flatten() for n in names])
    owner = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
    index = torch.cat([torch.arange(scores[n].numel()) for n in names])
    k = int(ratio * len(flat))
    order = torch.argsort(flat, stable=True)[:k]
    removed: dict[str, list[int]] = {n: [] for n in names}
    for j in order.tolist():
        n = names[int(owner[j])]
        size = scores[n].numel()
        if len(removed[n]) < min(int(limit * size), size - min_keep):
            removed[n].append(int(index[j]))
    return {n: torch.tensor(sorted(v), dtype=torch.long) for n, v in removed.items()}


def eigen_plan(bases: Mapping[str, EigenBasis], ratio: float, limit: float = 0.95,
               normalize: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer: (kept input directions, kept output directions)}`` by :func:`global_removal` over the
    input and output scores of all layers (each side capped on its own). Used in lesson 07."""
    scores = {}
    for n, eb in bases.items():
        i, o = eigen_unit_scores(eb, normalize)
        scores[(n, "in")], scores[(n, "out")] = i, o
    removed = global_removal(scores, ratio, limit)
    plan = {}
    for n, eb in bases.items():
        keep = []
        for side, size in (("in", eb.W_star.shape[-1]), ("out", eb.W_star.shape[0])):
            mask = torch.ones(size, dtype=torch.bool)
            mask[removed[(n, side)]] = False
            keep.append(torch.nonzero(mask).flatten())
        plan[n] = (keep[0], keep[1])
    return plan


def eigen_plan_params(model: nn.Module, plan: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                      bases: Mapping[str, EigenBasis] | None = None) -> int:
    """Parameters of ``model`` after :func:`apply_eigendamage` with ``plan`` (without building it). Used in lesson 07."""
    total = sum(p.numel() for p in model.parameters())
    named = dict(model.named_modules())
    for n, (ki, ko) in plan.items():
        m = named[n]
        before = layer_param_count(m)
        patch = bases is not None and bases[n].W_star.dim() == 3
        after = bottleneck_param_count(m, len(ki), len(ko), patch)
        if not isinstance(m, EigenBottleneck):
            after = min(after, before)
        total += after - before
    return total


def apply_eigendamage(model: nn.Module, bases: Mapping[str, EigenBasis],
                      plan: Mapping[str, tuple[torch.Tensor, torch.Tensor]], force: bool = False) -> dict[str, str]:
    """Rebuild every layer of ``plan`` in place: a layer becomes a bottleneck (unless that would have more
    parameters, as in the authors' code), a bottleneck's rotations absorb its core's new eigenbasis
    (:math:`Q_A \\leftarrow Q_A Q_{A,core}[:,C]`, :math:`Q_S \\leftarrow Q_S Q_{S,core}[:,R]`). Returns
    ``{layer: "bottleneck" | "kept" | "merged"}``. ``force=True`` builds every bottleneck (the exact
    reparameterisation check). Used in lesson 07."""
    named = dict(model.named_modules())
    what = {}
    for n, (ki, ko) in plan.items():
        m, eb = named[n], bases[n]
        if isinstance(m, EigenBottleneck):
            qa, _, qs = bottleneck_matrices(m)
            dt = eb.Q_A.dtype
            set_bottleneck_matrices(m, qa.to(dt) @ eb.Q_A[:, ki], eb.W_star[ko][..., ki], qs.to(dt) @ eb.Q_S[:, ko])
            what[n] = "merged"
        elif not force and bottleneck_param_count(m, len(ki), len(ko), eb.W_star.dim() == 3) > layer_param_count(m):
            what[n] = "kept"
        else:
            replace_module(model, n, make_bottleneck(m, eb.Q_A, eb.Q_S, eb.W_star, ki, ko))
            what[n] = "bottleneck"
    return what


def full_plan(bases: Mapping[str, EigenBasis]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Keep every direction (the exact reparameterisation). Used in lesson 07."""
    return {n: (torch.arange(eb.W_star.shape[-1]), torch.arange(eb.W_star.shape[0])) for n, eb in bases.items()}

