r"""Wanda: pruning by weights and activations, no weight update (Sun, Liu, Bair & Kolter 2023,
"A Simple and Effective Pruning Approach for Large Language Models", Sec. 3, Eq. (1)):

.. math::
    S_{ij} = |W_{ij}| \cdot \lVert X_j \rVert_2 ,

where :math:`\lVert X_j\rVert_2` is the norm of input feature :math:`j` over all calibration tokens.
The lowest scores are removed *within each output row* (their "per output" comparison group,
Sec. 3), and the remaining weights are left as they are. Wanda is SparseGPT's saliency
:math:`w^2/[H^{-1}]_{jj}` with :math:`H^{-1}` replaced by the inverse of :math:`H`'s diagonal
(as the Wanda paper notes), the square root taken: :math:`[H]_{jj} = \tfrac2n\lVert X_j\rVert^2`.
"""
from __future__ import annotations

import torch

from pruninglib.methods.nm_sparsity import nm_mask, row_mask

__all__ = ["input_norms", "wanda_scores", "wanda_mask", "magnitude_mask"]


def input_norms(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\lVert X_j\rVert_2` of every input feature of ``x`` (``(..., d)``; all tokens). Used in lesson 09."""
    return x.reshape(-1, x.shape[-1]).double().pow(2).sum(0).sqrt()


def wanda_scores(w: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    r""":math:`S_{ij} = |W_{ij}|\,\lVert X_j\rVert_2` (Wanda, Eq. (1)). Used in lesson 09."""
    if norms.shape != (w.shape[1],):
        raise ValueError(f"need one input norm per column: weight {tuple(w.shape)}, norms {tuple(norms.shape)}")
    return w.abs().double() * norms.double()[None, :]


def wanda_mask(w: torch.Tensor, norms: torch.Tensor, sparsity: float = 0.5, n: int = 0, m: int = 0) -> torch.Tensor:
    """Wanda's mask: the lowest scores per output row (or N:M within each row when ``n``).
    Used in lesson 09."""
    s = wanda_scores(w, norms)
    return nm_mask(s, n, m) if n else row_mask(s, sparsity)


def magnitude_mask(w: torch.Tensor, sparsity: float = 0.5, scope: str = "layer", n: int = 0, m: int = 0) -> torch.Tensor:
    """Magnitude pruning's mask (Han et al. 2015): the smallest :math:`|W_{ij}|` per ``"layer"``
    or per ``"row"`` (or N:M). Used in lesson 09."""
    from pruninglib.methods.nm_sparsity import layer_mask

    s = w.abs()
    if n:
        return nm_mask(s, n, m)
    if scope not in ("layer", "row"):
        raise ValueError(f"scope must be 'layer' or 'row', got {scope!r}")
    return layer_mask(s, sparsity) if scope == "layer" else row_mask(s, sparsity)
