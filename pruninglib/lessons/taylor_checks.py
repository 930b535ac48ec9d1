"""Lesson 02's bookkeeping (Taylor criteria): the globally lowest units, how many of them each
layer holds, and a loader that repeats one shuffled order on every pass.

The criteria themselves are in :mod:`pruninglib.criteria.taylor`, the iterative schedule in
:mod:`pruninglib.methods.schedule`; what is here only counts and feeds. Used in lesson 02.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from pruninglib.criteria.base import Scores
from pruninglib.methods.schedule import select_lowest
from pruninglib.train import make_loader

__all__ = ["lowest_of_all", "units_per_layer", "SameOrderLoader"]

Unit = tuple[str, int]


def lowest_of_all(scores: Scores, n: int, min_keep: int = 1) -> list[Unit]:
    """The ``n`` units with the lowest scores over all layers, every unit still in the network
    (:func:`~pruninglib.methods.schedule.select_lowest` with an all-true ``alive`` mask): fewer
    than ``n`` when the ``min_keep`` units every layer keeps leave fewer to pick. Used in lesson 02.

    Args:
        scores: importance per layer (lower = remove first).
        n: how many units to pick.
        min_keep: units every layer keeps.

    Returns:
        ``[(layer name, unit index), ...]``, lowest first.
    """
    alive = {k: torch.ones(len(v), dtype=torch.bool) for k, v in scores.items()}
    return select_lowest(scores, alive, n, min_keep)


def units_per_layer(units: Sequence[Unit], layers: Sequence[str]) -> dict[str, int]:
    """How many of ``units`` sit in each of ``layers`` (``{layer: count}``, in the order of
    ``layers``; a layer without any is 0). Used in lesson 02."""
    return {k: sum(1 for name, _ in units if name == k) for k in layers}


class SameOrderLoader:
    """Minibatches of ``dataset`` shuffled with ``seed``, in the same order on every pass.

    Each pass builds a fresh ``make_loader(dataset, batch_size, shuffle=True, seed=seed)``, so
    every pass sees the first pass's order (one ``make_loader`` reused across passes would draw a
    new order each time: its generator moves on). Lesson 02's solutions fine-tune this way while
    pruning, passed to :func:`~pruninglib.methods.schedule.prune_while_finetuning`. Used in lesson 02.

    Raises:
        ValueError: a non-positive ``batch_size``.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(make_loader(self.dataset, self.batch_size, shuffle=True, seed=self.seed))

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)  # type: ignore[arg-type]
