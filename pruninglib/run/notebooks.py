"""Which notebooks a batch run executes and with which parameters: discovery, ``--only``, the
``parameters`` cell, ``-p``/``--grid`` values and the checks made before anything runs.

Part of the batch runner (``python -m pruninglib.run``).
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from pruninglib.run.results import MODES, ROOT, RunRefused

__all__ = [
    "discover_notebooks",
    "select_notebooks",
    "notebook_parameters",
    "parse_value",
    "parse_grid",
    "default_kernel",
]

_LESSON_GLOB = "[0-9][0-9]_*.ipynb"


def discover_notebooks(notebooks_dir: str | Path | None = None, solutions: bool = False) -> list[Path]:
    """List the lesson notebooks ``NN_*.ipynb`` in order. Part of the batch runner.

    Args:
        notebooks_dir: the folder to search (default ``<repository>/notebooks``).
        solutions: also include ``solutions/NN_*.ipynb`` (after the lessons).

    Returns:
        The notebook paths, sorted by file name.
    """
    folder = Path(notebooks_dir) if notebooks_dir is not None else ROOT / "notebooks"
    found = sorted(folder.glob(_LESSON_GLOB))
    if solutions:
        found += sorted((folder / "solutions").glob(_LESSON_GLOB))
    return found


def _label(nb: Path, base: Path | None = None) -> str:
    """``01_x`` for a lesson, ``solutions/01_x`` for a notebook one folder down."""
    if base is not None:
        try:
            return nb.relative_to(base).with_suffix("").as_posix()
        except ValueError:
            pass
    return nb.stem


def select_notebooks(notebooks: Sequence[Path], only: str | Iterable[str] | None) -> list[Path]:
    """Pick notebooks by two-digit prefix (``01``) or full stem (``01_obd_obs_hessian``).

    Part of the batch runner (``--only``).

    Args:
        notebooks: the candidates (from :func:`discover_notebooks`).
        only: comma-separated string or iterable of selectors; ``None`` keeps all.

    Returns:
        The selected notebooks, in the order of ``notebooks``.

    Raises:
        ValueError: a selector matches no notebook, or ``only`` names none (``","``, ``""``);
            the message lists the valid ones.
    """
    if only is None:
        return list(notebooks)
    tokens = [t.strip() for t in (only.split(",") if isinstance(only, str) else only)]
    tokens = [t for t in tokens if t]
    valid = ", ".join(f"{nb.stem[:2]} ({nb.stem})" for nb in notebooks) or "(none found)"
    if not tokens:
        example = ",".join(nb.stem[:2] for nb in notebooks[:2]) or "01,03"
        raise ValueError(f"--only {only!r} names no notebook: give prefixes or stems separated by commas, "
                         f"e.g. --only {example}, or leave --only out to run all. Valid: {valid}")
    chosen: set[Path] = set()
    unknown = []
    for tok in tokens:
        stem = Path(tok).name.removesuffix(".ipynb")
        hits = [nb for nb in notebooks if nb.stem == stem or nb.stem.split("_", 1)[0] == stem]
        if not hits:
            unknown.append(tok)
        chosen.update(hits)
    if unknown:
        raise ValueError(f"unknown notebook(s): {', '.join(unknown)}. Valid: {valid}")
    return [nb for nb in notebooks if nb in chosen]


def _parameters_source(nb: Any) -> str | None:
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell.get("source", "")
            return "".join(src) if isinstance(src, list) else src
    return None


def notebook_parameters(path: str | Path) -> dict[str, str]:
    """Read the names and default values assigned in a notebook's ``parameters`` cell.

    Part of the batch runner (``--list``, and the check of ``-p``/``--grid`` names).

    Args:
        path: the ``.ipynb`` file.

    Returns:
        ``name -> default value source`` for every top-level assignment, in order
        (empty when the notebook has no cell tagged ``parameters``).
    """
    with open(path, encoding="utf-8") as fh:
        nb = json.load(fh)
    src = _parameters_source(nb)
    if src is None:
        return {}
    out: dict[str, str] = {}
    try:
        tree = ast.parse(src)
    except SyntaxError:  # IPython magics and the like: fall back to a line scan
        for line in src.splitlines():
            m = re.match(r"^([A-Za-z_]\w*)\s*(?::[^=]+)?=(?!=)\s*(.*?)\s*(?:#.*)?$", line)
            if m:
                out[m.group(1)] = m.group(2)
        return out
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = []
            for t in node.targets:
                targets += t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]
            value = node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        text = ast.get_source_segment(src, value) or ""
        for t in targets:
            if isinstance(t, ast.Name):
                out[t.id] = text
    return out


def parse_value(text: str) -> Any:
    """Parse a command-line value as a Python literal, else keep the string. Part of the batch runner.

    Args:
        text: e.g. ``"3"``, ``"0.5"``, ``"[1, 2]"``, ``"True"``, ``"adam"``.

    Returns:
        ``ast.literal_eval(text)``, or ``text`` itself when that fails.
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_grid(specs: Iterable[str]) -> dict[str, list[Any]]:
    """Parse ``NAME=v1,v2`` grid specifications. Part of the batch runner.

    Args:
        specs: one string per grid axis.

    Returns:
        ``name -> list of values`` (values parsed with :func:`parse_value`).

    Raises:
        ValueError: a specification has no ``=``, no name or no values.
    """
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not vals:
            raise ValueError(f"bad --grid {spec!r}: expected NAME=v1,v2,...")
        grid[name] = [parse_value(v) for v in vals]
    return grid


def default_kernel() -> str:
    """``"pruning"`` when that Jupyter kernel is installed (``make install``), else ``"python3"``.

    Part of the batch runner.
    """
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        return "pruning" if "pruning" in KernelSpecManager().find_kernel_specs() else "python3"
    except Exception:  # pragma: no cover - broken Jupyter installation
        return "python3"


def _validate(notebooks: Sequence[Path], mode: str, params: dict[str, Any], grid: dict[str, list[Any]]) -> None:
    """Refuse (:class:`RunRefused`) what papermill would run wrongly or not at all."""
    if not notebooks:
        raise RunRefused("no notebook to run: pass at least one (python -m pruninglib.run --list shows them)")
    if "MODE" in params:
        m = params["MODE"]
        raise RunRefused(f"MODE is not a -p parameter: the run mode has its own option. Use --mode {m} "
                         f"(run_notebooks(mode={m!r})) instead of -p MODE {m}.")
    for m in [mode, *grid.get("MODE", [])]:
        if m not in MODES:
            raise RunRefused(f"unknown mode {m!r}. Valid modes: {', '.join(MODES)}")
    declared = {nb: notebook_parameters(nb) for nb in notebooks}
    known: dict[str, str] = {}
    for names in declared.values():
        for k, v in names.items():
            known.setdefault(k, v)
    wanted = [*params, *grid]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        valid = ", ".join(f"{k} = {v}" for k, v in known.items()) or "(none)"
        raise RunRefused(
            f"unknown parameter(s): {', '.join(unknown)}. "
            f"Valid parameters of the selected notebooks: {valid}"
        )
    lacking = {nb: [n for n in wanted if n not in names] for nb, names in declared.items()}
    lacking = {nb: missing for nb, missing in lacking.items() if missing}
    if lacking:
        what = "; ".join(f"{nb.stem} does not declare {', '.join(missing)} (its parameters: "
                         f"{', '.join(declared[nb]) or 'none'})" for nb, missing in lacking.items())
        having = [nb.stem for nb in notebooks if nb not in lacking]
        fix = (f"select only the notebooks that declare them: --only {','.join(having)}" if having
               else "run the notebooks separately, each with its own parameters")
        raise RunRefused(f"{what}. Papermill would inject the value anyway and the notebook would ignore it: "
                         f"drop the parameter, or {fix}.")
