r"""Structured OBD and OBS with Kronecker-factored curvature: filter scores and the OBS update.

Write a layer's weight as a matrix :math:`W` (``[out, in*kh*kw (+1)]``, row :math:`i` = filter
:math:`\theta_i`, :func:`pruninglib.curvature.kfac.layer_matrix`) and its Fisher block as
:math:`F \approx S \otimes A` (:func:`pruninglib.curvature.kfac.kfac_factors`: :math:`A` from the
input patches, :math:`S` from the output gradients). Removing filter :math:`i` means the
perturbation :math:`\Delta W = -e_i\theta_i^\top`; at a minimum the second-order change of the loss is
:math:`\tfrac12\,\mathrm{vec}(\Delta W)^\top F\,\mathrm{vec}(\Delta W)`. Following Wang, Grosse, Fidler & Zhang
2019 (EigenDamage, ICML), Sec. 3.1-3.2:

* **Kron-OBD** (no update of the other filters):

  .. math:: \Delta L_i = \tfrac12\, S_{ii}\, \theta_i^\top A\, \theta_i .

* **Kron-OBS** (the other filters of the layer compensate; minimise the quadratic under the
  constraint :math:`W_{i,:} = 0`, with :math:`F^{-1} = S^{-1}\otimes A^{-1}`):

  .. math:: \Delta L_i = \frac{\theta_i^\top A\, \theta_i}{2\,[S^{-1}]_{ii}}, \qquad
            \Delta W = -S^{-1}_{:,i}\, \frac{\theta_i^\top}{[S^{-1}]_{ii}} .

  For a set :math:`P` the exact joint update is :math:`\Delta W = -S^{-1}_{:,P}\,([S^{-1}]_{PP})^{-1} W_P`
  with :math:`\Delta L = \tfrac12\,\mathrm{tr}\big(W_P^\top ([S^{-1}]_{PP})^{-1} W_P A\big)`; the EigenDamage
  paper (and the issue this lesson answers) apply the filters' single updates together,
  :math:`\Delta W = -S^{-1}_{:,P}\,\mathrm{diag}(1/[S^{-1}]_{PP})\, W_P`, which equals the joint one
  when :math:`S^{-1}_{PP}` is diagonal. :func:`kron_obs_update` computes both (``joint=``).

* **C-OBD** and **C-OBS**, the baselines of the EigenDamage paper (Sec. 4): the per-weight OBD and
  OBS saliencies summed over a filter, with the diagonal Fisher (C-OBD; the exact diagonal from
  per-example gradients, as the authors' ``fisher_diag_pruner.py``) and with the full K-FAC
  factors (C-OBS: :math:`[F^{-1}]_{(i,j),(i,j)} = [S^{-1}]_{ii}[A^{-1}]_{jj}`):

  .. math:: s^{\mathrm{C\text{-}OBD}}_i = \tfrac12 \sum_j F_{(i,j),(i,j)}\, W_{ij}^2, \qquad
            s^{\mathrm{C\text{-}OBS}}_i = \tfrac12 \sum_j \frac{W_{ij}^2}{[S^{-1}]_{ii}\,[A^{-1}]_{jj}} .

The scores model *zeroing* a filter's weights (and its bias); with a BatchNorm after the conv the
removed channel is a constant, not a zero, which the surgery removes as well. Damping: the
inverses use :math:`M + \lambda\,\overline{\mathrm{diag}\,M}\, I` (``damping`` = :math:`\lambda`,
relative to the mean diagonal); the EigenDamage code uses none and only clips eigenvalues below
:math:`10^{-10}` in its eigenbasis (:mod:`pruninglib.criteria.eigendamage`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from pruninglib.core.graph import prunable_layers
from pruninglib.criteria.base import Scores, register
from pruninglib.curvature.kfac import KFACFactors, kfac_factors, layer_matrix, set_layer_matrix

__all__ = ["damped_inverse", "filter_quadratic", "kron_obd_scores", "kron_obs_scores", "kron_obs_update",
           "kron_obs_loss_change", "c_obd_scores", "c_obs_scores", "c_obs_inverse_diagonals", "fisher_diagonal",
           "producer_factors", "kron_criterion_scores", "apply_kron_obs", "KRON_METHODS"]

#: The four criteria of this module, by registry name.
KRON_METHODS = ("c_obd", "c_obs", "kron_obd", "kron_obs")


def damped_inverse(M: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    r""":math:`(M + \lambda\,\overline{\mathrm{diag}\,M}\,I)^{-1}` of a symmetric PSD factor.

    Raises:
        ValueError: ``damping`` < 0, or a singular matrix with ``damping = 0`` (the message says to damp).

    Used in lesson 07.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    M = 0.5 * (M + M.T)
    if damping:
        M = M + damping * torch.diagonal(M).mean().clamp_min(1e-30) * torch.eye(len(M), dtype=M.dtype, device=M.device)
    L, info = torch.linalg.cholesky_ex(M)  # a third of an eigendecomposition's cost (4608x4608 factors in VGG19)
    if info != 0 or torch.diagonal(L).min() <= 1e-6 * torch.diagonal(L).max().clamp_min(1e-30):
        raise ValueError("the factor is singular (a dead unit or too few samples); pass damping > 0, e.g. 1e-3")
    return torch.cholesky_inverse(L)


def filter_quadratic(W: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    r""":math:`\theta_i^\top A\,\theta_i` for every row :math:`\theta_i` of ``W``. Used in lesson 07."""
    return ((W @ A) * W).sum(1)


def kron_obd_scores(W: torch.Tensor, A: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    r"""Kron-OBD (EigenDamage, Sec. 3.1): :math:`\Delta L_i = \tfrac12 S_{ii}\,\theta_i^\top A\theta_i`. Used in lesson 07."""
    return 0.5 * torch.diagonal(S) * filter_quadratic(W, A)


def kron_obs_scores(W: torch.Tensor, A: torch.Tensor, S: torch.Tensor, damping: float = 0.0,
                    S_inv: torch.Tensor | None = None) -> torch.Tensor:
    r"""Kron-OBS (EigenDamage, Sec. 3.2): :math:`\Delta L_i = \theta_i^\top A\theta_i / (2[S^{-1}]_{ii})`. Used in lesson 07."""
    S_inv = damped_inverse(S, damping) if S_inv is None else S_inv
    return 0.5 * filter_quadratic(W, A) / torch.diagonal(S_inv)


def kron_obs_update(W: torch.Tensor, S: torch.Tensor, P: Sequence[int], damping: float = 0.0,
                    joint: bool = True, S_inv: torch.Tensor | None = None) -> torch.Tensor:
    r"""The Kron-OBS change :math:`\Delta W` of all filters when the filters ``P`` are removed.

    ``joint=True``: :math:`\Delta W = -S^{-1}_{:,P}([S^{-1}]_{PP})^{-1}W_P` (exact minimiser of the
    quadratic model; rows ``P`` become exactly zero). ``joint=False``: the EigenDamage paper's
    :math:`-S^{-1}_{:,P}\,\mathrm{diag}(1/[S^{-1}]_{PP})\,W_P`, the single-filter updates added up.

    Used in lesson 07.
    """
    P = torch.as_tensor(list(P), dtype=torch.long, device=W.device)
    if len(P) == 0:
        return torch.zeros_like(W)
    S_inv = damped_inverse(S, damping) if S_inv is None else S_inv
    cols = S_inv[:, P]
    if joint:
        return -cols @ torch.linalg.solve(S_inv[P][:, P], W[P])
    return -cols @ (W[P] / torch.diagonal(S_inv)[P, None])


def kron_obs_loss_change(W: torch.Tensor, A: torch.Tensor, S: torch.Tensor, P: Sequence[int],
                         damping: float = 0.0) -> float:
    r"""Predicted :math:`\Delta L = \tfrac12\mathrm{tr}(W_P^\top([S^{-1}]_{PP})^{-1}W_PA)` of the joint update. Used in lesson 07."""
    P = torch.as_tensor(list(P), dtype=torch.long, device=W.device)
    S_inv = damped_inverse(S, damping)
    X = torch.linalg.solve(S_inv[P][:, P], W[P])
    return float(0.5 * ((W[P] @ A) * X).sum())


def c_obd_scores(W: torch.Tensor, F_diag: torch.Tensor) -> torch.Tensor:
    r"""C-OBD: :math:`\tfrac12\sum_j F_{(i,j),(i,j)}W_{ij}^2` with the diagonal Fisher ``F_diag`` (``W``'s shape). Used in lesson 07."""
    return 0.5 * (F_diag * W.pow(2)).sum(1)


def c_obs_scores(W: torch.Tensor, A: torch.Tensor, S: torch.Tensor, damping: float = 0.0,
                 inverse_diagonals: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    r"""C-OBS: :math:`\tfrac12\sum_j W_{ij}^2 / ([S^{-1}]_{ii}[A^{-1}]_{jj})`. Used in lesson 07.

    ``inverse_diagonals``: :math:`(\mathrm{diag}\,S^{-1}, \mathrm{diag}\,A^{-1})` computed before (with the same
    damping); inverting a 4608 x 4608 factor of VGG19 takes seconds, and the lesson scores the same factors
    several times.
    """
    s_inv, a_inv = inverse_diagonals if inverse_diagonals is not None else c_obs_inverse_diagonals(A, S, damping)
    return 0.5 * (W.pow(2) / (s_inv[:, None] * a_inv[None, :])).sum(1)


def c_obs_inverse_diagonals(A: torch.Tensor, S: torch.Tensor, damping: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`(\mathrm{diag}\,(S + \lambda I)^{-1}, \mathrm{diag}\,(A + \lambda I)^{-1})`, what :func:`c_obs_scores` needs
    (:func:`damped_inverse`). Used in lesson 07."""
    return torch.diagonal(damped_inverse(S, damping)).clone(), torch.diagonal(damped_inverse(A, damping)).clone()


def fisher_diagonal(model: nn.Module, batches: Iterable, layers: Sequence[str], fisher: str = "sampled",
                    seed: int = 0, dtype: torch.dtype = torch.float64, progress: bool = False,
                    max_batches: int | None = None, compute_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    r"""The exact diagonal of the Fisher of each layer's weight matrix, :math:`E_x[g_x^2]`, ``[out, in*kh*kw (+1)]``.

    :math:`g_x` is one example's gradient (a sum over output positions), with labels drawn from
    the model (``"sampled"``) or the observed ones (``"empirical"``), as in the EigenDamage
    authors' C-OBD (``pruner/fisher_diag_pruner.py``). ``compute_dtype`` (default ``dtype``) is the dtype of the
    per-example products; their sums are kept in ``dtype``.

    Used in lesson 07.
    """
    if fisher not in ("sampled", "empirical"):
        raise ValueError(f"fisher must be 'sampled' or 'empirical' for the diagonal, got {fisher!r}")
    named = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}
    outs: dict[str, torch.Tensor] = {}
    diag = {n: None for n in layers}

    def fwd(name: str) -> Callable:
        def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            acts[name] = inp[0].detach()
            out.retain_grad()
            outs[name] = out
        return hook

    handles = [named[n].register_forward_hook(fwd(n)) for n in layers]
    was = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    count = 0
    try:
        for step, (x, y) in enumerate(tqdm(batches, desc="diagonal Fisher", disable=not progress, leave=False)):
            if max_batches is not None and step >= max_batches:
                break
            dev = next(model.parameters()).device
            x, y = x.to(dev), y.to(dev)
            model.zero_grad(set_to_none=True)
            out = model(x)
            if fisher == "sampled":
                y = torch.multinomial(out.detach().float().softmax(-1).cpu(), 1, generator=gen).squeeze(1).to(dev)
            (F.cross_entropy(out, y) * len(y)).backward()
            for n in layers:
                m, a, g = named[n], acts[n], outs[n].grad
                if isinstance(m, nn.Conv2d):
                    p = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
                    if m.bias is not None:
                        p = torch.cat([p, torch.ones_like(p[:, :1])], 1)
                    g_, eq = g.flatten(2), "bot,bjt->boj"
                else:
                    p = a.reshape(len(x), -1, a.shape[-1])
                    if m.bias is not None:
                        p = torch.cat([p, torch.ones_like(p[..., :1])], -1)
                    g_, eq = g.reshape(len(x), -1, g.shape[-1]), "bto,btj->boj"
                step_n = max(1, (1 << 24) // (g_.shape[1 if eq[1] == "o" else 2] * p.shape[1 if eq[5] == "j" else 2]))
                for i in range(0, len(x), step_n):  # per-example gradients in chunks (memory)
                    cd = compute_dtype or dtype
                    per = torch.einsum(eq, g_[i:i + step_n].to(cd), p[i:i + step_n].to(cd))
                    d = per.pow(2).sum(0).to(dtype)
                    diag[n] = d if diag[n] is None else diag[n] + d
            count += len(x)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was)
    return {n: v / count for n, v in diag.items()}


def producer_factors(model: nn.Module, batches: Iterable, fisher: str = "sampled", kinds: tuple[str, ...] = ("conv", "linear"),
                     **kw: Any) -> dict[str, KFACFactors]:
    """K-FAC factors of the prunable producers of ``model`` (the layers whose filters go). Used in lesson 07."""
    names = [pl.name for pl in prunable_layers(model, kinds)]
    return kfac_factors(model, batches, fisher=fisher, layers=names, **kw)


def kron_criterion_scores(method: str, model: nn.Module, factors: Mapping[str, KFACFactors] | None = None,
                          diag: Mapping[str, torch.Tensor] | None = None, damping: float = 1e-3,
                          kinds: tuple[str, ...] = ("conv", "linear"),
                          memo: dict[Any, Any] | None = None) -> Scores:
    """One of :data:`KRON_METHODS` for every prunable producer, from precomputed factors (or diagonal).

    ``memo``: a dict kept with ``factors`` (and only with them) where C-OBS keeps the diagonals of the damped
    inverses it computed, so scoring other weights with the same factors does not invert them again.

    Raises:
        ValueError: an unknown method, or the statistics it needs are missing.

    Used in lesson 07.
    """
    if method not in KRON_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {KRON_METHODS}")
    need = diag if method == "c_obd" else factors
    if need is None:
        raise ValueError(f"{method} needs {'diag= (fisher_diagonal)' if method == 'c_obd' else 'factors= (producer_factors)'}")
    out: Scores = {}
    for pl in prunable_layers(model, kinds):
        if pl.name not in need:
            raise ValueError(f"no statistics for layer {pl.name!r}; collect them for every prunable producer")
        W = layer_matrix(pl.module).to(torch.float64)
        if method == "c_obd":
            out[pl.name] = c_obd_scores(W, diag[pl.name].to(W))
            continue
        f = factors[pl.name]
        A, S = f.A.to(W), f.S.to(W)
        if method == "kron_obd":
            out[pl.name] = kron_obd_scores(W, A, S)
        elif method == "kron_obs":
            out[pl.name] = kron_obs_scores(W, A, S, damping)
        else:
            key = ("c_obs_inverse_diagonals", pl.name, float(damping))
            inv = memo.get(key) if memo is not None else None
            if inv is None:
                inv = c_obs_inverse_diagonals(A, S, damping)
                if memo is not None:
                    memo[key] = inv
            out[pl.name] = c_obs_scores(W, A, S, damping, inverse_diagonals=inv)
    return {k: v.float() for k, v in out.items()}


def _registered(method: str) -> Callable[..., Scores]:
    def fn(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy, fisher: str = "sampled",
           damping: float = 1e-3, kinds: tuple[str, ...] = ("conv", "linear"), **_: Any) -> Scores:
        names = [pl.name for pl in prunable_layers(model, kinds)]
        if method == "c_obd":
            return kron_criterion_scores(method, model, diag=fisher_diagonal(model, batches, names, fisher), kinds=kinds)
        fac = kfac_factors(model, batches, loss_fn, fisher=fisher, layers=names)
        return kron_criterion_scores(method, model, fac, damping=damping, kinds=kinds)
    fn.__name__ = method
    fn.__doc__ = f"The {method} filter score (see :mod:`pruninglib.criteria.kron`). Used in lesson 07."
    return fn


for _m in KRON_METHODS:
    register(_m)(_registered(_m))


def apply_kron_obs(model: nn.Module, plan: Mapping[str, Sequence[int]], factors: Mapping[str, KFACFactors],
                   damping: float = 1e-3, joint: bool = True) -> nn.Module:
    """Apply the Kron-OBS update of every layer in ``plan`` to its remaining filters, in place (then remove
    the filters with :func:`pruninglib.core.surgery.prune_channels`). Used in lesson 07."""
    named = dict(model.named_modules())
    for name, P in plan.items():
        if len(P) == 0:
            continue
        m = named[name]
        W = layer_matrix(m).to(torch.float64)
        dW = kron_obs_update(W, factors[name].S.to(W), P, damping, joint)
        W_new = W + dW
        W_new[list(P)] = 0.0
        set_layer_matrix(m, W_new)
    return model
