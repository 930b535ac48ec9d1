"""Resuming a sweep: rerun into the same ``--out``, and the grid points already ``ok`` there are kept.

Part of the batch runner (``python -m pruninglib.run``). A point is matched by notebook, mode and
every parameter (:func:`pruninglib.run.tasks.task_key`) against the ``summary.json`` the earlier
run left in the folder, and only when its executed notebook is still there; everything else
(failed, interrupted, not started, new points) runs again.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pruninglib.run.results import _OK, RunResult, _without_flat_names
from pruninglib.run.tasks import _Task, task_key

__all__: list[str] = []


def _earlier_ok(out_dir: Path) -> dict[str, dict[str, Any]]:
    """``task_key -> summary.json row`` of the points ``ok`` in the earlier run into ``out_dir``."""
    path = out_dir / "summary.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(rows, list):
        return {}
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        if isinstance(row, dict) and row.get("status") == _OK and isinstance(row.get("params"), dict):
            found[task_key(str(row.get("notebook")), row["params"])] = row
    return found


def _split_done(tasks: list[_Task], out_dir: Path) -> tuple[dict[int, RunResult], list[_Task]]:
    """``(results kept from the earlier run by task index, tasks still to run)``."""
    earlier = _earlier_ok(out_dir)
    kept: dict[int, RunResult] = {}
    todo: list[_Task] = []
    for t in tasks:
        row = earlier.get(task_key(t.name, t.parameters))
        if row is None or not Path(t.output_path).is_file():
            todo.append(t)
            continue
        kept[t.index] = RunResult(
            notebook=t.name, params=dict(t.parameters), status=_OK, seconds=float(row.get("seconds") or 0.0),
            records=_without_flat_names(row.get("records") or {}), input_path=t.input_path,
            output_path=t.output_path, combo=dict(t.combo), host=row.get("host"), worker=row.get("worker"),
            resumed=True)
        html = Path(t.output_path).with_suffix(".html")
        kept[t.index].html_path = str(html) if html.is_file() else None
    return kept, todo
