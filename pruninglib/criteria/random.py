"""The random baseline: i.i.d. uniform scores (Molchanov et al. 2017, Table 1: correlation 0)."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn as nn

from pruninglib.criteria.base import Scores, register
from pruninglib.core.graph import prunable_layers

__all__ = ["random_scores"]


@register("random")
def random_scores(model: nn.Module, batches: Iterable | None = None, loss_fn: Any = None,
                  seed: int = 0, kinds: tuple[str, ...] = ("conv", "linear"), **_: Any) -> Scores:
    """Uniform random scores from a generator seeded with ``seed`` (reproducible). Used in lessons 00, 03 and 06."""
    g = torch.Generator().manual_seed(seed)
    return {pl.name: torch.rand(pl.num_units, generator=g) for pl in prunable_layers(model, kinds)}
