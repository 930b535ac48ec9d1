r"""Optimal Brain Compression / ExactOBS: lesson 01's OBS applied row by row to a layer's
reconstruction problem (Frantar & Alistarh 2022, "Optimal Brain Compression", NeurIPS; the ExactOBS algorithm).

A Linear layer :math:`y = W x` (``W`` of shape ``(rows, d)``) is pruned so that its outputs on
calibration inputs :math:`X` (``n`` rows of ``d`` features) change as little as possible:

.. math::
    \min_{\hat W} \lVert W X^\top - \hat W X^\top \rVert_F^2 ,\qquad H = \tfrac{2}{n} X^\top X .

The objective is a sum over rows, and every row is a quadratic with the *same* Hessian
:math:`H`, so each row is exactly one OBS problem (Hassibi & Stork 1993, lesson 01): removing
weight :math:`q` of row :math:`w` costs and updates

.. math::
    \delta L_q = \frac{w_q^2}{2\,[H^{-1}]_{qq}}, \qquad
    \delta w = -\frac{w_q}{[H^{-1}]_{qq}}\, H^{-1}_{:,q},

and the inverse Hessian of the remaining weights follows by one step of Gaussian elimination,
:math:`H^{-1} \leftarrow H^{-1} - H^{-1}_{:,q} H^{-1}_{q,:} / [H^{-1}]_{qq}` (the ExactOBS step).
OBC repeats this greedily in every row. Here every row loses the same number of weights;
the paper also spreads a layer's budget unevenly over rows from the recorded losses.

Errors are :math:`\tfrac12 \operatorname{tr}\big((W-\hat W) H (W-\hat W)^\top\big)`, which equals
the mean over samples of :math:`\lVert (W-\hat W)x\rVert^2` for :math:`H = \tfrac{2}{n}X^\top X`.
"""
from __future__ import annotations

import itertools

import torch

from pruninglib.methods.reconstruction import least_squares_fit

__all__ = ["layer_hessian", "damped", "reconstruction_error", "obc_prune", "masked_optimum",
           "brute_force_prune", "obs_column_loop"]


def layer_hessian(x: torch.Tensor) -> torch.Tensor:
    r""":math:`H = \tfrac{2}{n} X^\top X` of the layer-wise problem from ``x`` of shape ``(..., d)``.

    The factor 2 and the mean over samples follow the SparseGPT code (``add_batch``).
    Used in lesson 09.
    """
    x = x.reshape(-1, x.shape[-1]).double()
    return 2.0 * x.T @ x / x.shape[0]


def damped(h: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    r""":math:`H + \lambda I` with :math:`\lambda` = ``percdamp`` times the mean diagonal of :math:`H`
    (SparseGPT's code, ``percdamp``). Used in lesson 09.

    Raises:
        ValueError: for a negative ``percdamp``.
    """
    if percdamp < 0:
        raise ValueError(f"percdamp must be >= 0, got {percdamp}")
    h = h.clone()
    h.diagonal().add_(percdamp * float(h.diagonal().mean()))
    return h


def reconstruction_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    r""":math:`\tfrac12 \operatorname{tr}\big((W-\hat W) H (W-\hat W)^\top\big)`: the layer-wise
    objective (mean squared output change per sample when :math:`H = \tfrac2n X^\top X`). Used in lesson 09."""
    d = (w.double() - w_hat.double())
    return float(0.5 * torch.einsum("ri,ij,rj->", d, h.double(), d))


@torch.no_grad()
def obc_prune(w: torch.Tensor, h: torch.Tensor, sparsity: float, percdamp: float = 0.0,
              chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""ExactOBS (OBC, Frantar & Alistarh 2022): greedy OBS in each row with updates.

    Each row loses ``round(sparsity * d)`` weights, one at a time, the one with the smallest
    :math:`w_q^2/[H^{-1}]_{qq}`; the others are updated by :math:`\delta w` and :math:`H^{-1}` is
    downdated (module docstring). Rows are processed ``chunk`` at a time (each needs its own
    ``d x d`` inverse), in float64.

    Returns:
        ``(pruned weight, mask)``, the mask ``True`` where a weight was removed.

    Used in lesson 09.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    rows, d = w.shape
    k = int(round(sparsity * d))
    hinv0 = torch.linalg.inv(damped(h.double(), percdamp) if percdamp else h.double())
    out, mask = w.double().clone(), torch.zeros(rows, d, dtype=torch.bool)
    for r0 in range(0, rows, chunk):
        wr = out[r0:r0 + chunk]
        n = wr.shape[0]
        hinv = hinv0.expand(n, d, d).clone()
        gone = torch.zeros(n, d, dtype=torch.bool)
        idx = torch.arange(n)
        for _ in range(k):
            diag = hinv.diagonal(dim1=1, dim2=2)
            score = wr ** 2 / diag                                  # w_q^2 / [H^-1]_qq
            score[gone] = float("inf")
            q = score.argmin(1)
            hq = hinv[idx, :, q]                                    # H^-1_{:,q}, (n, d)
            wr -= (wr[idx, q] / hq[idx, q])[:, None] * hq           # delta w
            gone[idx, q] = True
            wr[gone] = 0.0                                          # exact zeros (no round-off residue)
            hinv -= hq[:, :, None] * hq[:, None, :] / hq[idx, q][:, None, None]
        out[r0:r0 + chunk], mask[r0:r0 + chunk] = wr, gone
    return out.to(w.dtype), mask


def masked_optimum(w: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""The best weights for a *given* mask: per row, least squares over the kept inputs,
    :math:`\min_{\hat w_{\bar M}} \lVert X w^\top - X_{\bar M} \hat w_{\bar M}^\top\rVert^2`,
    solved by :func:`pruninglib.methods.reconstruction.least_squares_fit` (He et al. 2017, Eq. (4)).
    No method with this mask can reconstruct better. Used in lesson 09.
    """
    x = x.reshape(-1, x.shape[-1]).double()
    target = x @ w.double().T
    out = torch.zeros_like(w, dtype=torch.float64)
    for r in range(w.shape[0]):
        keep = ~mask[r]
        if keep.any():
            sol, _ = least_squares_fit(x[:, keep], target[:, r:r + 1])
            out[r, keep] = sol[0]
    return out.to(w.dtype)


def brute_force_prune(w: torch.Tensor, h: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    r"""The optimal mask with ``k`` zeros per row, by trying every one (tiny layers only).

    For a mask :math:`M` the best update leaves the error
    :math:`\tfrac12 w_M^\top \big([H^{-1}]_{MM}\big)^{-1} w_M` (OBS for several weights at once,
    Hassibi & Stork 1993, generalised to a set of weights). Returns ``(mask, total error)``. Used in lesson 09.
    """
    rows, d = w.shape
    if d > 16:
        raise ValueError(f"brute force over all masks is for d <= 16 inputs, got {d}")
    hinv = torch.linalg.inv(h.double())
    mask = torch.zeros(rows, d, dtype=torch.bool)
    total = 0.0
    for r in range(rows):
        wr = w[r].double()
        best, best_m = float("inf"), None
        for m in itertools.combinations(range(d), k):
            m = list(m)
            e = float(0.5 * wr[m] @ torch.linalg.solve(hinv[m][:, m], wr[m])) if m else 0.0
            if e < best:
                best, best_m = e, m
        mask[r, best_m] = True
        total += best
    return mask, total


@torch.no_grad()
def obs_column_loop(w: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""The straightforward OBS loop that SparseGPT makes fast (Frantar & Alistarh 2023, Sec. 3):
    columns left to right; column :math:`j`'s masked weights are removed with the OBS update
    restricted to the columns not yet processed, :math:`F_j = \{j, \dots, d-1\}`, using an
    explicitly inverted :math:`(H_{F_j F_j})^{-1}`:

    .. math::
        W_{:,F_j} \leftarrow W_{:,F_j} - \frac{W_{:,j} \odot M_{:,j}}{[(H_{F_jF_j})^{-1}]_{00}}\,
        \big[(H_{F_jF_j})^{-1}\big]_{0,:} .

    One matrix inverse per column: :math:`O(d^4)`, a reference for tests only. ``h`` is used as
    given (damp it first to match SparseGPT). Used in lesson 09.
    """
    out = w.double().clone()
    h = h.double()
    d = w.shape[1]
    for j in range(d):
        hinv = torch.linalg.inv(h[j:, j:])
        err = out[:, j] * mask[:, j] / hinv[0, 0]
        out[:, j:] -= err[:, None] * hinv[0][None, :]
        out[mask[:, j], j] = 0.0
    return out.to(w.dtype)
