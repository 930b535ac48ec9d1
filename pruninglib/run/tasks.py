"""The unit of work of a batch run: one notebook execution at one grid point (:class:`_Task`).

Part of the batch runner (``python -m pruninglib.run``): every (notebook, grid combination) gets
its own output file name and a key (:func:`task_key`) that a resumed run matches against the
``summary.json`` already in the output folder.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pruninglib.run.notebooks import _label
from pruninglib.run.results import _safe

__all__ = ["task_key"]


@dataclass
class _Task:
    index: int
    input_path: str
    output_path: str
    name: str
    parameters: dict[str, Any]
    combo: dict[str, Any]
    kernel: str | None
    timeout: float | None
    html: bool
    cwd: str | None = None  # the kernel's working folder (default: the notebook's folder)


def task_key(notebook: str, params: Mapping[str, Any]) -> str:
    """The identity of a grid point: notebook, mode and every parameter (``0.25`` and ``'0.25'`` differ).

    Part of the batch runner (resume: a rerun skips the keys already ``ok`` in its output folder).

    Args:
        notebook: the notebook's label (``00_tour``, ``solutions/01_x``).
        params: every injected parameter, ``MODE`` included.

    Returns:
        A JSON string, the same for the same point in this run and in ``summary.json``.
    """
    return json.dumps([notebook, {str(k): params[k] for k in sorted(params, key=str)}], default=str,
                      sort_keys=False)


def _output_name(name: str, combo: dict[str, Any]) -> str:
    if not combo:
        return f"{name}.ipynb"
    parts = "_".join(f"{_safe(str(k))}={_safe(str(v))}" for k, v in combo.items())
    return f"{name}__{parts}.ipynb"


def _unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``<stem>__2.ipynb``, ... when an earlier task has it (case-insensitively:
    grid values that print alike, ``0.25`` and ``'0.25'``, must not share a file)."""
    stem, candidate, n = name.removesuffix(".ipynb"), name, 1
    while candidate.casefold() in taken:
        n += 1
        candidate = f"{stem}__{n}.ipynb"
    taken.add(candidate.casefold())
    return candidate


def _make_tasks(notebooks: list[Path], mode: str, params: dict[str, Any], grid: dict[str, list[Any]],
                out_dir: Path, kernel: str | None, timeout: float | None, html: bool) -> list[_Task]:
    """One task per (notebook, grid combination), in notebook order, each with its own output file."""
    base = os.path.commonpath([str(nb.parent) for nb in notebooks]) if notebooks else None
    # Lessons sit in notebooks/, solutions one level down: keep the two apart.
    base_path = Path(base) if base else None
    if base_path is not None and base_path.name == "solutions":
        base_path = base_path.parent
    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    tasks: list[_Task] = []
    taken: set[str] = set()
    for nb in notebooks:
        name = _label(nb, base_path)
        for combo in combos:
            file = _unique_name(_output_name(name, combo), taken)
            tasks.append(_Task(index=len(tasks), input_path=str(nb), output_path=str(out_dir / file),
                               name=name, parameters={"MODE": mode, **params, **combo}, combo=combo, kernel=kernel,
                               timeout=timeout, html=html))
    return tasks


def _modes(tasks: Sequence[_Task]) -> str:
    """The modes the tasks run in (one, unless ``MODE`` is a grid axis)."""
    return ", ".join(dict.fromkeys(str(t.parameters.get("MODE")) for t in tasks))
