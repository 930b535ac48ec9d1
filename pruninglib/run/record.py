"""Record a notebook's key numbers so the batch runner can read them back.

``record("test_accuracy", 0.91)`` displays the value and stores it in the cell's
output under a private MIME type. :mod:`pruninglib.run` reads those outputs from the
executed notebook, so summaries never parse printed text (the idea of
nteract's *scrapbook*, in twenty lines).
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

__all__ = ["MIME_TYPE", "record", "read_records", "flatten_records", "to_jsonable"]

MIME_TYPE = "application/vnd.pruninglib.run.record+json"


def to_jsonable(value: Any) -> Any:
    """Turn tensors, NumPy scalars/arrays, tuples and dicts into JSON values.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def record(name: str, value: Any, display_value: bool = True) -> None:
    """Record ``value`` under ``name`` in the running notebook's output.

    Args:
        name: key of the number in the run summary (``snake_case``).
        value: a number, string, list or dict (tensors and NumPy values are converted).
        display_value: also show ``name = value`` as text.

    Returns:
        ``None``, so a cell that ends with ``record(...)`` echoes nothing more.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    value = to_jsonable(value)
    json.dumps(value)  # fail early on values the summary could not store
    payload = {MIME_TYPE: {"name": name, "value": value}}
    payload["text/plain"] = f"{name} = {value!r}" if display_value else ""
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(payload, raw=True)
            return None
    except ImportError:  # pragma: no cover
        pass
    if display_value:
        print(payload["text/plain"])
    return None


def read_records(nb: Any) -> dict[str, Any]:
    """Collect every recorded ``name -> value`` from an executed notebook (nbformat node or dict).

    Part of the batch runner (``python -m pruninglib.run``); no lesson calls it.
    """
    out: dict[str, Any] = {}
    for cell in nb["cells"]:
        for o in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = o.get("data", {})
            if MIME_TYPE in data:
                rec = data[MIME_TYPE]
                if isinstance(rec, str):
                    rec = json.loads(rec)
                out[rec["name"]] = rec["value"]
    return out


def flatten_records(records: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Name every number of nested records: ``{"acc": {"obs": 0.88}}`` -> ``{"acc.obs": 0.88}``.

    Part of the batch runner: its summaries and grid tables show recorded dicts (lesson 01's
    ``xor_fraction_correct``, lesson 03's ``curvature_comparison``) as these dotted names.

    Args:
        records: ``name -> value`` as :func:`read_records` returns them.
        prefix: put before every name (used by the recursion).

    Returns:
        ``dotted name -> value`` in the order recorded; lists, strings and numbers are kept as
        they are, and an empty dict keeps its own name.
    """
    out: dict[str, Any] = {}
    for key, value in records.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_records(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out
