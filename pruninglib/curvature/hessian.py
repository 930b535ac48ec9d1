r"""Curvature of the loss over the flattened parameters of a (small) model, with ``torch.func``.

Every pruning criterion of Lesson 01 starts from the second-order Taylor expansion of the
loss around trained weights :math:`\theta` (LeCun, Denker & Solla 1990, Eq. 1; Hassibi &
Stork 1993, Eq. 1):

.. math::
    \delta L = g^\top \delta\theta + \tfrac12\, \delta\theta^\top H\, \delta\theta
               + O(\lVert\delta\theta\rVert^3), \qquad
    g = \nabla_\theta L, \quad H = \nabla^2_\theta L .

This module builds the matrices that play the part of :math:`H`, all as dense
``P x P`` tensors over one flat parameter vector (so only for models with a few thousand
parameters):

* :func:`exact_hessian` -- :math:`H = \frac1N \sum_n \nabla^2_\theta \ell(f(x_n;\theta), y_n)`
  by ``torch.func`` (reverse-over-reverse ``jacrev``, chunked; or ``torch.func.hessian``).
* :func:`gauss_newton` -- :math:`G = \frac1N \sum_n J_n^\top \Lambda_n J_n` with
  :math:`J_n = \partial f(x_n)/\partial\theta` and :math:`\Lambda_n = \nabla^2_f \ell` (Schraudolph
  2002, Eq. 7; Martens & Grosse 2015, Sec. 9.1). It drops the term
  :math:`\sum_c \partial\ell/\partial f_c \, \nabla^2_\theta f_c` of :math:`H`; for softmax
  cross-entropy it equals the (true) Fisher.
* the empirical Fisher is in :mod:`pruninglib.curvature.fisher`, K-FAC in
  :mod:`pruninglib.curvature.kfac`.

:class:`~pruninglib.curvature.params.ParamSpec` maps between the flat vector and the model's named parameters, so that
per-weight criteria can return dicts shaped like the parameters. :func:`minimize_full_batch`
trains a small model to a stationary point (where :math:`g = 0`, so the first term of the
expansion drops), which the criteria assume.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import grad, hessian, jacrev, vmap
from tqdm.auto import tqdm

from pruninglib.curvature.params import (Batches, EvalMode, as_batches, cast_input, check_size, flat_loss_fn,
                                         output_fn, quiet_jit_deprecation, setup_flat)

__all__ = ["loss_at", "losses_at", "gradient", "exact_hessian", "gauss_newton", "relative_frobenius_error",
           "minimize_full_batch"]


def loss_at(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
            loss_fn: Callable = F.cross_entropy, theta: torch.Tensor | None = None,
            params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64) -> float:
    """Mean loss over all samples of ``batches`` at ``theta`` (default: the model's weights).

    No lesson calls it directly (its tests do).
    """
    flat, spec, device = setup_flat(model, params, theta, dtype)
    f = flat_loss_fn(model, spec, loss_fn, dtype)
    total, n = 0.0, 0
    with EvalMode(model), torch.no_grad():
        for x, y in as_batches(batches):
            total += float(f(flat, cast_input(x, dtype, device), y.to(device))) * len(y)
            n += len(y)
    return total / n


def losses_at(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor], thetas: torch.Tensor,
              loss_fn: Callable = F.cross_entropy, params: Sequence[str] | None = None,
              dtype: torch.dtype = torch.float64, chunk_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Mean loss at each row of ``thetas`` (``[K, P]``), vectorised with ``torch.func.vmap``.

    Used to measure the *actual* loss change of deleting each weight in turn.

    Used in lesson 01.
    """
    _, spec, device = setup_flat(model, params, None, dtype)
    if thetas.dim() != 2 or thetas.shape[1] != spec.numel:
        raise ValueError(f"thetas must be [K, {spec.numel}], got {tuple(thetas.shape)}")
    f = flat_loss_fn(model, spec, loss_fn, dtype)
    batches = [(cast_input(x, dtype, device), y.to(device)) for x, y in as_batches(batches)]
    n = sum(len(y) for _, y in batches)
    out = torch.zeros(len(thetas), dtype=dtype)
    with EvalMode(model), torch.no_grad():
        for i in tqdm(range(0, len(thetas), chunk_size), desc="losses", disable=not progress, leave=False):
            th = thetas[i:i + chunk_size].to(device=device, dtype=dtype)
            acc = torch.zeros(len(th), dtype=dtype, device=device)
            for x, y in batches:
                acc += vmap(f, in_dims=(0, None, None))(th, x, y) * len(y)
            out[i:i + chunk_size] = (acc / n).cpu()
    return out


def gradient(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
             loss_fn: Callable = F.cross_entropy, theta: torch.Tensor | None = None,
             params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""The flat gradient :math:`g = \nabla_\theta L` of the mean loss (``torch.func.grad``). Used in lesson 01."""
    flat, spec, device = setup_flat(model, params, theta, dtype)
    f = flat_loss_fn(model, spec, loss_fn, dtype)
    g, n = torch.zeros_like(flat), 0
    with EvalMode(model):
        for x, y in as_batches(batches):
            g += grad(f)(flat, cast_input(x, dtype, device), y.to(device)) * len(y)
            n += len(y)
    return g / n


def exact_hessian(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
                  loss_fn: Callable = F.cross_entropy, theta: torch.Tensor | None = None,
                  params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64,
                  damping: float = 0.0, chunk_size: int | None = 256, max_params: int = 20_000,
                  progress: bool = False) -> torch.Tensor:
    r"""The exact Hessian :math:`H = \nabla^2_\theta L` of the mean loss over all samples.

    Hassibi & Stork 1993, Eq. (1): the matrix of the quadratic term of the expansion. Computed
    per batch with ``torch.func`` and averaged with the batch sizes as weights:
    ``jacrev(jacrev(f), chunk_size=chunk_size)`` (reverse-over-reverse, ``chunk_size`` rows at
    a time, the fastest on a CPU for a few thousand parameters), or ``torch.func.hessian``
    (forward-over-reverse, all rows at once) when ``chunk_size`` is None.

    Args:
        model: the network (run in eval mode; its weights are not changed).
        batches: one ``(x, y)`` pair or an iterable of pairs (the loss is the mean over all samples).
        loss_fn: a mean-reduced loss ``loss_fn(output, y)``.
        theta: evaluate at this flat vector instead of the model's weights.
        params: names of the parameters to differentiate (default: all trainable ones).
        dtype: computation dtype (float64 by default: the inverse of ``H`` needs it).
        damping: :math:`\lambda` added to the diagonal, :math:`H + \lambda I` (the Hessian of
            :math:`L + \frac{\lambda}{2}\lVert\theta\rVert^2`).
        chunk_size: Hessian rows per vectorised pass; lower it if memory runs short.
        max_params: refuse larger models (the dense matrix needs ``P**2 * 8`` bytes).
        progress: a progress bar over batches.

    Returns:
        ``[P, P]`` tensor, ``P`` = number of flattened parameters (order of :func:`param_spec`).

    Raises:
        ValueError: for too many parameters or a negative damping.

    Used in lesson 01.
    """
    flat, spec, device = setup_flat(model, params, theta, dtype)
    check_size(spec.numel, max_params)
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    f = flat_loss_fn(model, spec, loss_fn, dtype)
    H, n = torch.zeros(spec.numel, spec.numel, dtype=dtype, device=device), 0
    with EvalMode(model):
        for x, y in tqdm(as_batches(batches), desc="Hessian", disable=not progress, leave=False):
            x, y = cast_input(x, dtype, device), y.to(device)
            fb = lambda t: f(t, x, y)  # noqa: E731
            with quiet_jit_deprecation():
                Hb = hessian(fb)(flat) if chunk_size is None else jacrev(jacrev(fb), chunk_size=chunk_size)(flat)
            H.add_(Hb.detach(), alpha=len(y))
            del Hb
            n += len(y)
    H /= n
    _symmetrize_(H)  # exact in exact arithmetic; removes rounding asymmetry
    H.diagonal().add_(damping)
    return H


def gauss_newton(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
                 loss_fn: Callable = F.cross_entropy, theta: torch.Tensor | None = None,
                 params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64,
                 damping: float = 0.0, sample_chunk: int = 256, max_params: int = 20_000,
                 progress: bool = False) -> torch.Tensor:
    r"""The generalised Gauss-Newton matrix :math:`G = \frac1N\sum_n J_n^\top \Lambda_n J_n`.

    Schraudolph 2002, Eq. (7); Martens & Grosse 2015, Sec. 9.1. :math:`J_n` is the Jacobian of
    the network output for sample :math:`n` (``vmap(jacrev(...))``) and
    :math:`\Lambda_n = \nabla^2_f \ell(f, y_n)` the Hessian of the loss with respect to the
    output (``vmap(hessian(...))``). :math:`G` is positive semi-definite whenever the loss is
    convex in the output; for softmax cross-entropy :math:`\Lambda_n = \mathrm{diag}(p_n) - p_n p_n^\top`
    and :math:`G` is the Fisher information.

    Args:
        sample_chunk: samples per vectorised Jacobian (memory ``chunk x outputs x P``).
        (others as in :func:`exact_hessian`.)

    Used in lesson 01.
    """
    flat, spec, device = setup_flat(model, params, theta, dtype)
    check_size(spec.numel, max_params)
    out_fn = output_fn(model, spec, dtype)
    per_out = lambda o, y: loss_fn(o.unsqueeze(0), y.unsqueeze(0))  # noqa: E731
    G, n = torch.zeros(spec.numel, spec.numel, dtype=dtype, device=device), 0
    with EvalMode(model):
        for x, y in tqdm(as_batches(batches), desc="Gauss-Newton", disable=not progress, leave=False):
            x, y = cast_input(x, dtype, device), y.to(device)
            for i in range(0, len(y), sample_chunk):
                xs, ys = x[i:i + sample_chunk], y[i:i + sample_chunk]
                J = vmap(jacrev(out_fn), in_dims=(None, 0))(flat, xs.unsqueeze(1)).flatten(1, -2)  # [n, C, P]
                with torch.no_grad():
                    outs = out_fn(flat, xs)
                Lam = vmap(hessian(per_out))(outs.reshape(len(ys), -1), ys)  # [n, C, C]
                LJ = torch.einsum("ncd,ndp->ncp", Lam, J)
                G += J.reshape(-1, spec.numel).T @ LJ.reshape(-1, spec.numel)
            n += len(y)
    G /= n
    _symmetrize_(G)
    G.diagonal().add_(damping)
    return G


def _symmetrize_(M: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """``M <- (M + M^T) / 2`` in place, block by block (no second ``P x P`` matrix in memory)."""
    p = M.shape[0]
    for i in range(0, p, block):
        for j in range(i, p, block):
            a = M[i:i + block, j:j + block]
            b = M[j:j + block, i:i + block]
            mean = 0.5 * (a + b.T)
            a.copy_(mean)
            b.copy_(mean.T)
    return M


def relative_frobenius_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    r""":math:`\lVert \tilde H - H\rVert_F / \lVert H \rVert_F`. Used in lesson 01."""
    if approx.shape != exact.shape:
        raise ValueError(f"shapes differ: {tuple(approx.shape)} vs {tuple(exact.shape)}")
    return float(torch.linalg.matrix_norm(approx - exact) / torch.linalg.matrix_norm(exact))


def minimize_full_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        loss_fn: Callable = F.cross_entropy, weight_decay: float = 0.0,
                        max_iter: int = 500, tol: float = 1e-8, progress: bool = False) -> dict[str, float]:
    r"""Train ``model`` in place to a stationary point of
    :math:`L(\theta) = \mathrm{loss}(\theta) + \frac{\lambda}{2}\lVert\theta\rVert^2` with full-batch
    L-BFGS (strong-Wolfe line search).

    The Taylor argument of OBD/OBS drops :math:`g^\top\delta\theta` because training ends at a
    minimum (LeCun et al. 1990, Sec. 3; Hassibi & Stork 1993, after Eq. 1). Minibatch SGD stops
    near one; full-batch L-BFGS gets :math:`\lVert g\rVert` down to ``tol``, so the assumption holds
    and the weight decay :math:`\lambda` makes the minimum strict (the Hessian of :math:`L` is
    that of the loss plus :math:`\lambda I`).

    Args:
        model: the network; use ``model.double()`` for a tight minimum.
        x, y: the whole training set as tensors.
        weight_decay: :math:`\lambda`.
        max_iter: L-BFGS iterations (in chunks of 50 with a progress bar).
        tol: stop when the gradient's max-norm is below this.

    Returns:
        ``{"loss": data loss, "objective": loss + decay, "grad_norm": ||g||_2, "iterations"}``.

    Used in lesson 01.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    dtype = params[0].dtype
    x = x.to(dtype) if x.is_floating_point() else x
    opt = torch.optim.LBFGS(params, lr=1, max_iter=50, history_size=50, tolerance_grad=tol,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        loss = loss_fn(model(x), y)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * sum(p.pow(2).sum() for p in params)
        return loss

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    was = model.training
    model.train()
    done = 0
    for _ in tqdm(range(0, max_iter, 50), desc="L-BFGS", disable=not progress, leave=False):
        opt.step(closure)
        state = opt.state[params[0]]
        done = state.get("n_iter", done)
        gmax = max(float(p.grad.abs().max()) for p in params)
        if gmax <= tol:
            break
    model.zero_grad()
    model.train(was)
    obj = objective()
    obj.backward()
    gnorm = float(torch.sqrt(sum(p.grad.pow(2).sum() for p in params)))
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        data_loss = float(loss_fn(model(x), y))
    return {"loss": data_loss, "objective": float(obj.detach()), "grad_norm": gnorm, "iterations": int(done)}

