r"""Optimal Brain Surgeon (Hassibi & Stork 1993): delete a weight and correct all the others.

Hassibi & Stork 1993, Eq. (1)-(5). At a minimum (:math:`g = 0`) and for a quadratic loss,
deleting weight :math:`q` means the constraint :math:`e_q^\top\delta\theta + \theta_q = 0`
(Eq. 2); minimising :math:`\frac12\delta\theta^\top H\delta\theta` under it (Lagrangian, Eq. 4) gives

.. math::
    \delta\theta = -\frac{\theta_q}{[H^{-1}]_{qq}}\, H^{-1} e_q, \qquad
    L_q = \frac12\,\frac{\theta_q^2}{[H^{-1}]_{qq}}                                  \quad (5)

(the update of every other weight, and the saliency: the loss increase after that update).
OBS deletes the weight of least :math:`L_q`, applies :math:`\delta\theta`, and repeats.

After deleting :math:`q`, the inverse Hessian of the remaining weights is the rank-one
(Sherman-Morrison) downdate

.. math::
    H^{-1} \leftarrow H^{-1} - \frac{H^{-1} e_q\, e_q^\top H^{-1}}{[H^{-1}]_{qq}},

whose row and column :math:`q` are zero: it is the inverse of :math:`H` restricted to the other
weights (the Schur complement identity), without a new :math:`O(P^3)` inversion.

Structured OBS removes a group :math:`Q` at once (a unit's outgoing weights): with
:math:`E_Q^\top\delta\theta + \theta_Q = 0` the same Lagrangian gives

.. math::
    \delta\theta = -H^{-1}E_Q\,([H^{-1}]_{QQ})^{-1}\theta_Q, \qquad
    L_Q = \tfrac12\,\theta_Q^\top ([H^{-1}]_{QQ})^{-1}\theta_Q,

and the inverse is downdated by the Woodbury formula
:math:`H^{-1} \leftarrow H^{-1} - H^{-1}E_Q([H^{-1}]_{QQ})^{-1}E_Q^\top H^{-1}` (the block form
used by Kurtic et al. 2022, "The Optimal BERT Surgeon", and Frantar & Alistarh 2022, OBC).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from pruninglib.criteria.base import Scores, register
from pruninglib.criteria.obd import curvature, unit_groups
from pruninglib.curvature.params import flatten_params

__all__ = ["inverse_hessian", "obs_saliency", "obs_update", "sherman_morrison_remove", "obs_prune",
           "OBSPath", "group_obs_saliency", "group_obs_update", "woodbury_remove", "obs_prune_groups",
           "GroupPath", "obs_unit"]


def inverse_hessian(H: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    r""":math:`(H + \lambda I)^{-1}` by a Cholesky factorisation (float64 recommended).

    Raises:
        ValueError: when :math:`H + \lambda I` is not positive definite (OBS needs a minimum);
            the message gives the smallest eigenvalue and the damping that would fix it.

    Used in lesson 01.
    """
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be a square matrix, got shape {tuple(H.shape)}")
    if damping:
        M = H.clone()
        M.diagonal().add_(damping)
    else:
        M = H
    L, info = torch.linalg.cholesky_ex(M)
    if int(info) != 0:
        lam = float(torch.linalg.eigvalsh(M)[0])
        raise ValueError(f"H + {damping} I is not positive definite (smallest eigenvalue {lam:.3g}); "
                         f"OBS needs a minimum: pass damping > {max(-lam, 0) + float(damping):.3g} "
                         "or train closer to a minimum")
    del M
    return torch.cholesky_inverse(L)


def obs_saliency(theta: torch.Tensor, H_inv: torch.Tensor) -> torch.Tensor:
    r""":math:`L_q = \frac12\theta_q^2/[H^{-1}]_{qq}` for every entry (Hassibi & Stork 1993, Eq. 5).

    Args:
        theta: flat weights ``[P]``.
        H_inv: the inverse Hessian ``[P, P]`` (or its diagonal ``[P]``).

    Used in lesson 01.
    """
    d = torch.diagonal(H_inv) if H_inv.dim() == 2 else H_inv
    if d.shape != theta.shape:
        raise ValueError(f"H_inv diagonal has shape {tuple(d.shape)}, theta {tuple(theta.shape)}")
    return 0.5 * theta.pow(2) / d


def obs_update(theta: torch.Tensor, H_inv: torch.Tensor, q: int) -> torch.Tensor:
    r"""The correction :math:`\delta\theta = -\theta_q/[H^{-1}]_{qq}\,H^{-1}e_q` (Eq. 5); after it
    :math:`(\theta+\delta\theta)_q = 0` exactly (set it to 0 to remove rounding).

    Used in lesson 01.
    """
    return -(theta[q] / H_inv[q, q]) * H_inv[:, q]


def sherman_morrison_remove(H_inv: torch.Tensor, q: int, inplace: bool = False) -> torch.Tensor:
    r""":math:`H^{-1} - H^{-1}e_q e_q^\top H^{-1}/[H^{-1}]_{qq}`: the inverse Hessian of the weights
    left after deleting ``q`` (row and column ``q`` become zero). ``H_inv`` must be symmetric.

    No lesson calls it directly (its tests do).
    """
    out = H_inv if inplace else H_inv.clone()
    col = out[:, q].clone()
    out.addr_(col, col, alpha=-1.0 / float(col[q]))
    out[q, :] = 0
    out[:, q] = 0
    return out


@dataclass
class OBSPath:
    """What :func:`obs_prune` did.

    Attributes:
        thetas: ``{sparsity: flat weights}`` at each requested sparsity.
        order: flat indices in the order they were deleted.
        saliency: the saliency :math:`L_q` of each deletion when it was made; their running sum
            is the loss increase the quadratic model predicts (exact for a quadratic loss).
        counts: ``{sparsity: number of deletions made}``.

    Used in lesson 01.
    """

    thetas: dict[float, torch.Tensor] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    saliency: list[float] = field(default_factory=list)
    counts: dict[float, int] = field(default_factory=dict)

    def mask(self, sparsity: float, numel: int) -> torch.Tensor:
        """Boolean ``[numel]`` mask (True = kept) at one of the requested sparsities."""
        keep = torch.ones(numel, dtype=torch.bool)
        keep[torch.tensor(self.order[:self.counts[sparsity]], dtype=torch.long)] = False
        return keep


def obs_prune(theta: torch.Tensor, H_inv: torch.Tensor, prunable: torch.Tensor,
              sparsities: Sequence[float], update: bool = True, progress: bool = False,
              compact_below: float = 0.75) -> OBSPath:
    r"""Iterative OBS: delete the weight of least :math:`L_q`, apply :math:`\delta\theta`, downdate
    :math:`H^{-1}` (Sherman-Morrison), repeat until each sparsity in ``sparsities`` is reached.

    Args:
        theta: flat weights ``[P]`` at the minimum.
        H_inv: :math:`H^{-1}` ``[P, P]`` over the same entries (e.g. :func:`inverse_hessian`).
        prunable: boolean ``[P]``: entries that may be deleted (non-prunable ones, e.g. biases,
            are still corrected by :math:`\delta\theta`).
        sparsities: fractions of the prunable entries to delete, e.g. ``[0.5, 0.7, 0.9]``.
        update: apply :math:`\delta\theta` (False: only choose by :math:`L_q` and zero the weight).
        progress: progress bar over deletions.
        compact_below: drop deleted rows/columns from the working :math:`H^{-1}` whenever fewer
            than this fraction of its rows are still alive (exact; only saves time).

    Returns:
        :class:`OBSPath`.

    Used in lesson 01.
    """
    if prunable.dtype != torch.bool or prunable.shape != theta.shape:
        raise ValueError("prunable must be a boolean tensor shaped like theta")
    if H_inv.shape != (theta.numel(), theta.numel()):
        raise ValueError(f"H_inv must be [{theta.numel()}, {theta.numel()}], got {tuple(H_inv.shape)}")
    if any(not 0 <= s <= 1 for s in sparsities):
        raise ValueError(f"sparsities must lie in [0, 1], got {list(sparsities)}")
    theta = theta.clone()
    Hi = H_inv.clone()
    alive = torch.arange(theta.numel(), device=theta.device)  # original index of each working row of Hi
    can = prunable.clone()                     # still deletable (original indexing)
    n_prunable = int(prunable.sum())
    targets = sorted((float(s), int(round(s * n_prunable))) for s in sparsities)
    path = OBSPath()
    done = 0
    bar = tqdm(total=targets[-1][1] if targets else 0, desc="OBS", disable=not progress, leave=False)
    for s, n_target in targets:
        while done < n_target:
            d = torch.diagonal(Hi)
            th = theta[alive]
            sal = 0.5 * th.pow(2) / d
            sal = torch.where(can[alive], sal, torch.full_like(sal, float("inf")))
            j = int(torch.argmin(sal))
            q = int(alive[j])
            if update:
                theta[alive] -= (th[j] / d[j]) * Hi[:, j]
            theta[q] = 0.0
            col = Hi[:, j].clone()
            Hi.addr_(col, col, alpha=-1.0 / float(col[j]))
            Hi[j, :] = 0.0  # exactly zero (not rounding noise), so later updates leave theta_q = 0
            Hi[:, j] = 0.0
            can[q] = False
            path.order.append(q)
            path.saliency.append(float(sal[j]))
            done += 1
            bar.update(1)
            keep = can[alive] | ~prunable[alive]
            if int(keep.sum()) < compact_below * len(alive):
                Hi = Hi[keep][:, keep].contiguous()
                alive = alive[keep]
        path.thetas[s] = theta.clone()
        path.counts[s] = done
    bar.close()
    return path


def group_obs_saliency(theta: torch.Tensor, H_inv: torch.Tensor, groups: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Structured OBS: :math:`L_Q = \frac12\theta_Q^\top([H^{-1}]_{QQ})^{-1}\theta_Q` for each group.

    Used in lesson 01.
    """
    out = []
    for Q in groups:
        Q = Q.to(theta.device)
        tq = theta[Q]
        out.append(0.5 * tq @ torch.linalg.solve(H_inv[Q][:, Q], tq))
    return torch.stack(out)


def group_obs_update(theta: torch.Tensor, H_inv: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    r""":math:`\delta\theta = -H^{-1}E_Q([H^{-1}]_{QQ})^{-1}\theta_Q`; afterwards :math:`\theta_Q = 0`.

    Used in lesson 01.
    """
    return -H_inv[:, Q] @ torch.linalg.solve(H_inv[Q][:, Q], theta[Q])


def woodbury_remove(H_inv: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    r""":math:`H^{-1} - H^{-1}E_Q([H^{-1}]_{QQ})^{-1}E_Q^\top H^{-1}`: the inverse over the weights
    left after deleting the group ``Q`` (its rows and columns become zero).

    Used in lesson 01.
    """
    C = H_inv[:, Q]
    out = H_inv - C @ torch.linalg.solve(H_inv[Q][:, Q], C.T)
    out[Q, :] = 0
    out[:, Q] = 0
    return 0.5 * (out + out.T)


@dataclass
class GroupPath:
    """What :func:`obs_prune_groups` did.

    Attributes:
        order: index (into ``groups``) of each removed group, in order.
        thetas: flat weights after each removal (``thetas[k]`` after ``k+1`` removals).
        saliency: :math:`L_Q` of each removal when it was made.

    Used in lesson 01.
    """

    order: list[int] = field(default_factory=list)
    thetas: list[torch.Tensor] = field(default_factory=list)
    saliency: list[float] = field(default_factory=list)


def obs_prune_groups(theta: torch.Tensor, H_inv: torch.Tensor, groups: Sequence[torch.Tensor],
                     n_remove: int, update: bool = True, progress: bool = False) -> GroupPath:
    r"""Iterative structured OBS: remove the group of least :math:`L_Q`, apply
    :math:`\delta\theta`, downdate :math:`H^{-1}` (Woodbury), ``n_remove`` times.

    Raises:
        ValueError: ``n_remove`` larger than the number of groups.

    Used in lesson 01.
    """
    if not 0 <= n_remove <= len(groups):
        raise ValueError(f"n_remove must be in [0, {len(groups)}], got {n_remove}")
    theta, Hi = theta.clone(), H_inv.clone()
    left = list(range(len(groups)))
    path = GroupPath()
    for _ in tqdm(range(n_remove), desc="group OBS", disable=not progress, leave=False):
        sal = group_obs_saliency(theta, Hi, [groups[g] for g in left])
        k = int(torch.argmin(sal))
        g = left.pop(k)
        Q = groups[g].to(theta.device)
        if update:
            theta = theta + group_obs_update(theta, Hi, Q)
        theta[Q] = 0.0
        Hi = woodbury_remove(Hi, Q)
        path.order.append(g)
        path.thetas.append(theta.clone())
        path.saliency.append(float(sal[k]))
    return path


@register("obs_unit")
def obs_unit(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
             curvature_kind: str = "exact", damping: float = 1e-4, hessian: torch.Tensor | None = None,
             h_inv: torch.Tensor | None = None, kinds: tuple[str, ...] = ("linear", "conv"),
             **_: Any) -> Scores:
    r"""Structured OBS per unit: :math:`L_Q = \frac12\theta_Q^\top([H^{-1}]_{QQ})^{-1}\theta_Q` over the
    consumer weights that read the unit: the loss increase after removing it *and* correcting
    all other weights optimally (Hassibi & Stork 1993, Eq. 5, for a group).

    Args:
        model: a small chain model (dense curvature: a few thousand parameters).
        batches: iterable of ``(x, y)`` (ignored when ``hessian`` or ``h_inv`` is given).
        curvature_kind: ``"exact"``, ``"gauss_newton"``, ``"fisher"`` or ``"kfac"``.
        damping: :math:`\lambda` added before inverting (needed where :math:`H` is singular).
        hessian: a precomputed curvature ``[P, P]`` (damping is still added).
        h_inv: a precomputed inverse (used as is).

    Returns:
        :data:`~pruninglib.criteria.base.Scores` (higher = more important).

    Used in lesson 01.
    """
    theta, spec = flatten_params(model)
    if h_inv is None:
        H = hessian if hessian is not None else curvature(model, batches, loss_fn, curvature_kind)
        h_inv = inverse_hessian(H, damping)
    if h_inv.shape[0] != spec.numel:
        raise ValueError(f"inverse is {tuple(h_inv.shape)} but the model has {spec.numel} trainable parameters")
    groups = unit_groups(model, spec, kinds)
    return {name: group_obs_saliency(theta.to(h_inv.dtype), h_inv, g).cpu() for name, g in groups.items()}
