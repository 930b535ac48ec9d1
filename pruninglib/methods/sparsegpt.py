r"""SparseGPT: OBS for a whole layer at once, fast enough for 175B parameters (Frantar & Alistarh
2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", ICML, Sec. 3,
Algorithm 1; the authors' code is ``IST-DASLab/sparsegpt``, file ``sparsegpt.py``, ``fasterprune``).

OBC (:mod:`pruninglib.methods.obc`) needs a separate :math:`H^{-1}` per row because each row
removes different weights. SparseGPT processes the *columns* left to right and updates only the
columns not yet processed, :math:`F_j = \{j,\dots,d-1\}`; then every row needs the same sequence
of inverses :math:`(H_{F_jF_j})^{-1}`, and all of them sit in one upper Cholesky factor
:math:`U` of the damped :math:`H^{-1} = U^\top U` (Sec. 3): row :math:`j` of :math:`U` is
:math:`[(H_{F_jF_j})^{-1}]_{0,:}/\sqrt{[(H_{F_jF_j})^{-1}]_{00}}`. So column :math:`j` is removed by

.. math::
    E_{:,j} = \frac{W_{:,j} \odot M_{:,j}}{U_{jj}}, \qquad
    W_{:,j:} \leftarrow W_{:,j:} - E_{:,j}\, U_{j,j:} ,

the OBS update of every row at once. The mask is chosen per block of ``blocksize`` columns
("adaptive mask selection", Sec. 3) by the OBS saliency :math:`w^2/[H^{-1}]_{cc}` with the
diagonal of the Cholesky factor, :math:`w_{rc}^2/U_{cc}^2`, on the weights as updated so far;
for N:M the smallest N of every group of M (Sec. 3, semi-structured sparsity). Updates within a block are applied at
once, to the columns right of the block only after it (lazy batch updates).
Damping: :math:`H + \lambda I`, :math:`\lambda` = 1% of the mean diagonal (``percdamp=0.01``).
"""
from __future__ import annotations

import torch

from pruninglib.methods.obc import damped

__all__ = ["inverse_cholesky", "sparsegpt_prune"]


def inverse_cholesky(h: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    r"""The upper Cholesky factor :math:`U` of the damped :math:`H^{-1} = U^\top U`
    (SparseGPT, Sec. 3). Used in lesson 09.

    Raises:
        torch.linalg.LinAlgError: :math:`H` is not positive definite after damping (raise ``percdamp``).
    """
    l = torch.linalg.cholesky(damped(h, percdamp))
    return torch.linalg.cholesky(torch.cholesky_inverse(l), upper=True)


@torch.no_grad()
def sparsegpt_prune(w: torch.Tensor, h: torch.Tensor, sparsity: float = 0.5, prunen: int = 0, prunem: int = 0,
                    blocksize: int = 128, percdamp: float = 0.01, mask: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    r"""SparseGPT's Algorithm 1 on one weight matrix ``w`` (``(rows, d)``) with Hessian ``h``.

    Args:
        w: the weights, ``(rows, d)``.
        h: :math:`H = \tfrac2n X^\top X`, ``(d, d)`` (:func:`pruninglib.methods.obc.layer_hessian`).
        sparsity: fraction removed in every block of columns (unstructured).
        prunen, prunem: N:M sparsity instead (e.g. 2, 4); ``prunen=0``: unstructured.
        blocksize: columns per block (mask selection and lazy updates); 128 in the paper.
        percdamp: damping, a fraction of the mean diagonal of ``h``.
        mask: use this mask instead of choosing one (``True`` = remove).
        dtype: arithmetic precision (float64 for exact comparisons in tests).

    Returns:
        ``(pruned weight in w's dtype, mask)``. Inputs that never fired (zero diagonal of ``h``)
        get weight 0 and a unit diagonal, as in the authors' code; within a block the number of
        weights removed is exact (``int(sparsity * numel)``, ties broken by index).

    Used in lesson 09.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if prunen and (prunem <= 0 or not 0 < prunen <= prunem or blocksize % prunem):
        raise ValueError(f"N:M needs 0 < N <= M and a blocksize divisible by M; got {prunen}:{prunem}, "
                         f"blocksize {blocksize}")
    rows, d = w.shape
    if prunen and d % prunem:
        raise ValueError(f"{d} columns are not a multiple of M={prunem}")
    W = w.detach().to(dtype).clone()
    H = h.detach().to(dtype).clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U = inverse_cholesky(H, percdamp)
    M = torch.zeros(rows, d, dtype=torch.bool, device=W.device)
    for i1 in range(0, d, blocksize):
        i2 = min(i1 + blocksize, d)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Q1, E1 = torch.zeros_like(W1), torch.zeros_like(W1)
        if mask is not None:
            M1 = mask[:, i1:i2].to(W.device).clone()
        else:
            M1 = torch.zeros_like(W1, dtype=torch.bool)
            if not prunen:
                score = W1 ** 2 / U1.diagonal()[None, :] ** 2          # w^2 / [H^-1]_cc
                k = int(score.numel() * sparsity)
                if k:
                    M1.view(-1)[score.flatten().topk(k, largest=False).indices] = True
        for i in range(i2 - i1):
            if prunen and mask is None and i % prunem == 0:
                score = W1[:, i:i + prunem] ** 2 / U1.diagonal()[i:i + prunem][None, :] ** 2
                M1.scatter_(1, i + score.topk(prunen, dim=1, largest=False).indices, True)
            col = W1[:, i]
            q = torch.where(M1[:, i], torch.zeros_like(col), col)
            err = (col - q) / U1[i, i]                                  # E_{:,j}
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]              # OBS update, columns F_j
            Q1[:, i], E1[:, i] = q, err
        W[:, i1:i2], M[:, i1:i2] = Q1, M1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]                                 # lazy batch update
    return W.to(w.dtype), M
