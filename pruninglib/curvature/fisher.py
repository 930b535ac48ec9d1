r"""The empirical Fisher: curvature from per-sample gradients alone.

With per-sample gradients :math:`g_n = \nabla_\theta \ell(f(x_n;\theta), y_n)` (computed with
``torch.func.vmap(torch.func.grad(...))``), the empirical Fisher is

.. math::
    \hat F = \frac1N \sum_{n=1}^N g_n g_n^\top .

Hassibi & Stork 1993, Sec. 3, use this outer-product form (for a squared error near a
zero-residual minimum, where it coincides with the Gauss-Newton matrix and the Hessian) and
build its inverse recursively, one sample at a time. It needs only first derivatives, but it is not the
Fisher: it uses the observed labels instead of labels drawn from the model, and it is a poor
stand-in for the Hessian when the model fits the data badly (Kunstner, Balles & Hennig 2019,
Sec. 3). Lesson 01 measures how far it is from the exact Hessian.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import grad, vmap
from tqdm.auto import tqdm

from pruninglib.curvature.params import (Batches, EvalMode, add_damping, as_batches, cast_input, check_size,
                                         flat_loss_fn, setup_flat)

__all__ = ["per_sample_grads", "empirical_fisher", "empirical_fisher_diag"]


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     loss_fn: Callable = F.cross_entropy, theta: torch.Tensor | None = None,
                     params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""``[N, P]``: row :math:`n` is :math:`\nabla_\theta \ell(f(x_n), y_n)` (``vmap`` over ``grad``).

    Args:
        loss_fn: a mean-reduced loss; it is applied to one sample at a time.

    Used in lesson 01.
    """
    flat, spec, device = setup_flat(model, params, theta, dtype)
    f = flat_loss_fn(model, spec, loss_fn, dtype)
    one = lambda t, xi, yi: f(t, xi.unsqueeze(0), yi.unsqueeze(0))  # noqa: E731
    with EvalMode(model):
        return vmap(grad(one), in_dims=(None, 0, 0))(flat, cast_input(x, dtype, device), y.to(device))


def empirical_fisher(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
                     loss_fn: Callable = F.cross_entropy, theta: torch.Tensor | None = None,
                     params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64,
                     damping: float = 0.0, sample_chunk: int = 1024, max_params: int = 20_000,
                     progress: bool = False) -> torch.Tensor:
    r"""The empirical Fisher :math:`\hat F = \frac1N\sum_n g_n g_n^\top` (+ :math:`\lambda I`), ``[P, P]``.

    Args:
        batches: one ``(x, y)`` pair or an iterable of pairs.
        damping: :math:`\lambda`.
        sample_chunk: samples per ``vmap`` call.
        (others as in :func:`pruninglib.curvature.hessian.exact_hessian`.)

    Used in lesson 01.
    """
    flat, spec, device = setup_flat(model, params, theta, dtype)
    check_size(spec.numel, max_params)
    F_, n = torch.zeros(spec.numel, spec.numel, dtype=dtype, device=device), 0
    for x, y in tqdm(as_batches(batches), desc="Fisher", disable=not progress, leave=False):
        for i in range(0, len(y), sample_chunk):
            G = per_sample_grads(model, x[i:i + sample_chunk], y[i:i + sample_chunk], loss_fn, flat,
                                 params, dtype)
            F_ += G.T @ G
        n += len(y)
    return add_damping(F_ / n, damping)


def empirical_fisher_diag(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
                          loss_fn: Callable = F.cross_entropy, theta: torch.Tensor | None = None,
                          params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64,
                          sample_chunk: int = 1024) -> torch.Tensor:
    r"""Only the diagonal :math:`\frac1N\sum_n g_n^2` (``[P]``): what OBD needs, for any model size.

    No lesson calls it directly (its tests do).
    """
    flat, spec, device = setup_flat(model, params, theta, dtype)
    d, n = torch.zeros(spec.numel, dtype=dtype, device=device), 0
    for x, y in as_batches(batches):
        for i in range(0, len(y), sample_chunk):
            G = per_sample_grads(model, x[i:i + sample_chunk], y[i:i + sample_chunk], loss_fn, flat,
                                 params, dtype)
            d += G.pow(2).sum(0)
        n += len(y)
    return d / n
