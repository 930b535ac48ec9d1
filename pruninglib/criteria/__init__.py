"""Importance criteria: one module per family, one registry for all.

A *unit criterion* has the signature ``fn(model, batches, loss_fn=F.cross_entropy, **kw)``
and returns :data:`Scores`, ``{layer name: 1-D tensor with one score per unit}``; higher means
more important. ``batches`` is any iterable of ``(x, y)``. Criteria register themselves with
:func:`register`; every module in this package is imported here, so the registry is complete.

>>> from pruninglib.criteria import get_criterion, list_criteria
>>> scores = get_criterion("weight_l1")(model, batches)
"""
from __future__ import annotations

import importlib
import pkgutil

from pruninglib.criteria.base import (CRITERIA, Scores, check_ratio, get_criterion, list_criteria,
                                      lowest_per_layer, lowest_units, normalize_per_layer, register)

__all__ = ["CRITERIA", "Scores", "check_ratio", "get_criterion", "list_criteria", "lowest_per_layer",
           "lowest_units", "normalize_per_layer", "register"]

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")
