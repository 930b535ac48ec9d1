"""pruninglib: the small helper package behind the Pruning Notebooks.

Every lesson in ``notebooks/`` imports it; the notebooks show only what teaches. What a lesson
needs first is here: :func:`setup` (settings of the mode, threads, seeds, device, banner),
:func:`record` (hand a number to the batch runner), :func:`show_table` and :func:`get_device`.
The rest is organised by what it holds:

- :mod:`pruninglib.core`: model-agnostic machinery (graph, gates, surgery, metrics);
- :mod:`pruninglib.curvature`: the Hessian and its stand-ins (Gauss-Newton, Fisher, K-FAC);
- :mod:`pruninglib.criteria`: one importance score per unit, one registry;
- :mod:`pruninglib.methods`: criteria + surgery -> a pruned network, one paper each;
- :mod:`pruninglib.lessons`: one lesson's experimental protocol each;
- :mod:`pruninglib.run`: the batch runner (``python -m pruninglib.run``).

The names below are loaded on first use, so that ``python -m pruninglib.run --list`` does not
import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["setup", "record", "show_table", "get_device", "set_seed", "choose_mode", "describe_device",
           "__version__"]

_HOME = {"setup": "pruninglib.utils", "get_device": "pruninglib.utils", "set_seed": "pruninglib.utils",
         "choose_mode": "pruninglib.utils", "describe_device": "pruninglib.utils",
         "record": "pruninglib.run.record", "show_table": "pruninglib.tables"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pruninglib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
