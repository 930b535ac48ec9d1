r"""Masks from scores: per layer, per output row, and N:M semi-structured sparsity.

Every method of lesson 09 scores the weights of a Linear layer and removes the lowest ones;
they differ in *where* the lowest are compared:

- per layer: one threshold over the whole matrix (Han et al. 2015's magnitude pruning);
- per row: the same fraction in every output row (Wanda, Sun et al. 2023, Sec. 3, "per output");
- N:M: exactly N zeros in every group of M consecutive inputs of a row (Mishra et al. 2021,
  "Accelerating Sparse Deep Neural Networks"; 2:4 is what NVIDIA's sparse tensor cores
  run twice as fast for the matrix multiply):

.. math::
    M_{r,\,gM:(g+1)M} = \text{the } N \text{ smallest of } S_{r,\,gM:(g+1)M}.

Speed from 2:4 needs a CUDA GPU with sparse tensor cores (Ampere or newer):
``torch.sparse.to_sparse_semi_structured`` packs a 2:4 matrix for them. There is no CPU kernel,
so on a CPU the N:M masks are *masks only* (zeros in a dense matrix, no speed-up).
"""
from __future__ import annotations

import torch

__all__ = ["layer_mask", "row_mask", "nm_mask", "nm_problems", "apply_mask", "semi_structured_available"]


def _check(sparsity: float) -> None:
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``True`` at the ``int(sparsity * numel)`` lowest scores of the whole matrix. Used in lesson 09."""
    _check(sparsity)
    k = int(scores.numel() * sparsity)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if k:
        mask[scores.flatten().topk(k, largest=False).indices] = True
    return mask.view_as(scores)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``True`` at the ``int(sparsity * columns)`` lowest scores of every row (Wanda's per-output
    comparison). Used in lesson 09."""
    _check(sparsity)
    k = int(scores.shape[1] * sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.topk(k, dim=1, largest=False).indices, True)
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """``True`` at the ``n`` lowest scores of every group of ``m`` consecutive columns.

    Raises:
        ValueError: ``n`` not in ``[0, m]``, or a column count not divisible by ``m``.

    Used in lesson 09.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 <= n <= m and m > 0):
        raise ValueError(f"N:M needs integers 0 <= N <= M, M > 0; got {n}:{m}")
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{cols} columns are not a multiple of M={m}: choose M dividing {cols}")
    groups = scores.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    if n:
        mask.scatter_(2, groups.topk(n, dim=2, largest=False).indices, True)
    return mask.reshape(rows, cols)


def nm_problems(weight: torch.Tensor, n: int, m: int) -> list[str]:
    """Groups of ``m`` that hold fewer than ``n`` zeros (empty list: the matrix is N:M sparse).
    Used in lesson 09."""
    rows, cols = weight.shape
    if cols % m:
        return [f"{cols} columns are not a multiple of {m}"]
    zeros = (weight.reshape(rows, cols // m, m) == 0).sum(2)
    bad = (zeros < n).nonzero().tolist()
    return [f"row {r}, group {g}: {int(zeros[r, g])} zeros, need {n}" for r, g in bad[:10]]


@torch.no_grad()
def apply_mask(linear: torch.nn.Module, mask: torch.Tensor) -> None:
    """Set ``linear.weight`` to zero where ``mask`` is ``True`` (in place). Used in lesson 09."""
    linear.weight[mask.to(linear.weight.device)] = 0.0


def semi_structured_available() -> tuple[bool, str]:
    """Whether ``torch.sparse.to_sparse_semi_structured`` can run here, and why not.

    Needs a CUDA device of compute capability 8.0 or newer. Used in lesson 09.
    """
    if not torch.cuda.is_available():
        return False, "no CUDA device: torch.sparse.to_sparse_semi_structured has no CPU kernel (masks only)"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return False, f"CUDA compute capability {major}.x < 8.0: no sparse tensor cores"
    return True, f"CUDA {torch.cuda.get_device_name()} (sparse tensor cores)"
