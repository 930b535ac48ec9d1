"""Run the lesson notebooks in batch and summarise what they recorded.

::

    python -m pruninglib.run [--mode quick|laptop|paper] [--only 01,03]
                             [-p NAME VALUE ...] [--grid NAME=v1,v2 ...] [--jobs N]
                             [--html] [--out DIR] [--timeout SECONDS] [--list]

Each selected notebook is executed with papermill (``MODE`` and the ``-p`` values are
injected after its cell tagged ``parameters``) into ``runs/<timestamp>/``. The runner
then writes ``summary.md`` and ``summary.json`` with the status, wall time and the
numbers each notebook stored with :func:`pruninglib.run.record.record`. With ``--grid`` every
combination of grid values is run for every notebook, and ``grid.csv``, ``grid.md`` and
one ``grid_<key>.png`` figure per recorded number compare the combinations.

A failing notebook does not stop the others; the summary names the failing cell and
its error, and the exit status is 1. Bad command lines (unknown notebook, mode or
parameter name) exit with status 2 and list the valid choices.

The same runner is available from Python::

    from pruninglib.run import run_notebooks, discover_notebooks
    results = run_notebooks(discover_notebooks()[:1], mode="quick", params={"SEED": 1})
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import csv
import datetime as _dt
import itertools
import json
import math
import multiprocessing
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from pruninglib.tables import markdown_table

__all__ = [
    "MODES",
    "ROOT",
    "RunResult",
    "discover_notebooks",
    "select_notebooks",
    "notebook_parameters",
    "parse_value",
    "parse_grid",
    "default_kernel",
    "run_notebooks",
    "write_summary",
    "write_grid",
    "main",
]

#: Run modes every lesson understands (its ``MODE`` parameter).
MODES: tuple[str, ...] = ("quick", "laptop", "paper")

#: Repository root (the folder holding ``pruninglib/`` and ``notebooks/``).
ROOT: Path = Path(__file__).resolve().parents[2]

_LESSON_GLOB = "[0-9][0-9]_*.ipynb"
_SUMMARY_KEYS = ("notebook", "params", "status", "seconds", "records", "error")


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """The outcome of one notebook execution.

    Attributes:
        notebook: the notebook's stem (``01_obd_obs_hessian``; ``solutions/…`` for solutions).
        params: every parameter injected, ``MODE`` included.
        status: ``"ok"`` or ``"FAILED"``.
        seconds: wall time of the execution, kernel start-up included.
        records: ``name -> value`` stored with :func:`pruninglib.run.record.record`.
        error: ``"cell N: EName: message"`` for a failure, else ``None``.
        input_path: the source notebook.
        output_path: the executed notebook.
        html_path: the HTML export, when asked for.
        combo: the grid combination of this run (empty without a grid).
        failed_source: the source of the failing cell, when known.
    """

    notebook: str
    params: dict[str, Any]
    status: str
    seconds: float
    records: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    input_path: str = ""
    output_path: str = ""
    html_path: str | None = None
    combo: dict[str, Any] = field(default_factory=dict)
    failed_source: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the notebook ran to the end without an error."""
        return self.status == "ok"

    def summary(self) -> dict[str, Any]:
        """The JSON-ready record written to ``summary.json``."""
        d = asdict(self)
        return {k: d[k] for k in _SUMMARY_KEYS}


@dataclass
class _Task:
    index: int
    input_path: str
    output_path: str
    name: str
    parameters: dict[str, Any]
    combo: dict[str, Any]
    kernel: str
    timeout: float | None
    html: bool


# ---------------------------------------------------------------- discovery & params


def discover_notebooks(notebooks_dir: str | Path | None = None, solutions: bool = False) -> list[Path]:
    """List the lesson notebooks ``NN_*.ipynb`` in order.

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

    Args:
        notebooks: the candidates (from :func:`discover_notebooks`).
        only: comma-separated string or iterable of selectors; ``None`` keeps all.

    Returns:
        The selected notebooks, in the order of ``notebooks``.

    Raises:
        ValueError: a selector matches no notebook (the message lists the valid ones).
    """
    if only is None:
        return list(notebooks)
    tokens = [t.strip() for t in (only.split(",") if isinstance(only, str) else only)]
    tokens = [t for t in tokens if t]
    chosen: set[Path] = set()
    unknown = []
    for tok in tokens:
        stem = Path(tok).name.removesuffix(".ipynb")
        hits = [nb for nb in notebooks if nb.stem == stem or nb.stem.split("_", 1)[0] == stem]
        if not hits:
            unknown.append(tok)
        chosen.update(hits)
    if unknown:
        valid = ", ".join(f"{nb.stem[:2]} ({nb.stem})" for nb in notebooks) or "(none found)"
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
    """Parse a command-line value as a Python literal, else keep the string.

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
    """Parse ``NAME=v1,v2`` grid specifications.

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
    """``"pruning"`` when that Jupyter kernel is installed (``make install``), else ``"python3"``."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        return "pruning" if "pruning" in KernelSpecManager().find_kernel_specs() else "python3"
    except Exception:  # pragma: no cover - broken Jupyter installation
        return "python3"


def _validate(notebooks: Sequence[Path], mode: str, params: dict[str, Any], grid: dict[str, list[Any]]) -> None:
    names = [*params, *grid]
    modes = [mode, *([params["MODE"]] if "MODE" in params else []), *grid.get("MODE", [])]
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}. Valid modes: {', '.join(MODES)}")
    declared: dict[str, str] = {}
    for nb in notebooks:
        for k, v in notebook_parameters(nb).items():
            declared.setdefault(k, v)
    unknown = [n for n in names if n not in declared]
    if unknown:
        valid = ", ".join(f"{k} = {v}" for k, v in declared.items()) or "(none)"
        raise ValueError(
            f"unknown parameter(s): {', '.join(unknown)}. "
            f"Valid parameters of the selected notebooks: {valid}"
        )


# ------------------------------------------------------------------------- execution


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _combo_label(combo: dict[str, Any], sep: str = ", ") -> str:
    return sep.join(f"{k}={_fmt_value(v)}" for k, v in combo.items())


def _safe(text: str) -> str:
    return re.sub(r"[^\w.=+-]+", "-", text).strip("-") or "x"


def _output_name(name: str, combo: dict[str, Any]) -> str:
    if not combo:
        return f"{name}.ipynb"
    parts = "_".join(f"{_safe(str(k))}={_safe(str(v))}" for k, v in combo.items())
    return f"{name}__{parts}.ipynb"


def _limit_threads(n: int) -> None:
    """Process-pool initializer: cap the BLAS/OpenMP threads of the worker and its kernels."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def _failed_cell(nb: Any) -> tuple[int | None, dict | None]:
    """Index and node of the cell where execution stopped.

    Papermill marks a failing cell ``failed``; an execution cut short otherwise (a
    timeout, a dead kernel) leaves the cell ``running`` or, after clean-up, the last
    cell with an error output or an execution count.
    """
    cells = list(enumerate(nb.get("cells", [])))
    for wanted in ("failed", "running"):
        for i, cell in cells:
            if cell.get("metadata", {}).get("papermill", {}).get("status") == wanted:
                return i, cell
    for test in (
        lambda c: any(o.get("output_type") == "error" for o in c.get("outputs", [])),
        lambda c: c.get("cell_type") == "code" and c.get("execution_count") is not None,
    ):
        for i, cell in reversed(cells):
            if test(cell):
                return i, cell
    return None, None


def _first_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""


def _execute(task: _Task) -> RunResult:
    """Execute one notebook (runs in the worker process) and never raise."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from pruninglib.run.record import read_records

    out = Path(task.output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    error: str | None = None
    source: str | None = None
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            task.input_path,
            str(out),
            parameters=task.parameters,
            kernel_name=task.kernel,
            language="python",  # lessons are Python; needed when a notebook lacks kernelspec metadata
            cwd=str(Path(task.input_path).parent),
            progress_bar=False,
            log_output=False,
            execution_timeout=task.timeout,
        )
    except PapermillExecutionError as exc:
        error = f"cell {exc.exec_count}: {exc.ename}: {_first_line(exc.evalue) or exc.evalue}"
        source = exc.source
    except Exception as exc:  # timeouts, dead kernels, missing kernels, unreadable files
        error = f"{type(exc).__name__}: {_first_line(str(exc))}"
    seconds = time.perf_counter() - start

    records: dict[str, Any] = {}
    nb = None
    if out.exists():
        try:
            nb = nbformat.read(str(out), as_version=4)
            records = read_records(nb)
        except Exception:  # pragma: no cover - half-written output
            nb = None
    if error is not None and nb is not None and source is None:
        # Not a cell error papermill could attribute (e.g. a timeout): name the cell
        # where the saved output notebook stopped.
        idx, cell = _failed_cell(nb)
        if cell is not None:
            count = cell.get("execution_count")
            error = f"cell {count if count is not None else f'index {idx}'}: {error}"
            source = cell.get("source")

    html_path = None
    if task.html and nb is not None:
        try:
            from nbconvert import HTMLExporter

            body, _ = HTMLExporter().from_notebook_node(nb)
            html = out.with_suffix(".html")
            html.write_text(body, encoding="utf-8")
            html_path = str(html)
        except Exception as exc:  # pragma: no cover - exporter problems should not hide results
            print(f"warning: HTML export of {out.name} failed: {exc}", file=sys.stderr)

    return RunResult(
        notebook=task.name,
        params=dict(task.parameters),
        status="ok" if error is None else "FAILED",
        seconds=round(seconds, 2),
        records=records,
        error=error,
        input_path=task.input_path,
        output_path=str(out),
        html_path=html_path,
        combo=dict(task.combo),
        failed_source=source,
    )


def _default_out() -> Path:
    base = ROOT / "runs" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _progress(i: int, total: int, r: RunResult) -> None:
    scalars = {k: v for k, v in r.records.items() if _as_number(v) is not None}
    shown = ", ".join(f"{k}={_fmt_value(v)}" for k, v in list(scalars.items())[:4])
    what = r.notebook + (f" [{_combo_label(r.combo)}]" if r.combo else "")
    tail = f"  {r.error}" if r.error else (f"  {shown}" if shown else "")
    print(f"[{i}/{total}] {r.status:<6} {what} ({r.seconds:.1f} s){tail}", flush=True)


def _make_tasks(notebooks: list[Path], mode: str, params: dict[str, Any], grid: dict[str, list[Any]],
                out_dir: Path, kernel: str, timeout: float | None, html: bool) -> list[_Task]:
    """One task per (notebook, grid combination), in notebook order."""
    base = os.path.commonpath([str(nb.parent) for nb in notebooks]) if notebooks else None
    # Lessons sit in notebooks/, solutions one level down: keep the two apart.
    base_path = Path(base) if base else None
    if base_path is not None and base_path.name == "solutions":
        base_path = base_path.parent
    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    tasks: list[_Task] = []
    for nb in notebooks:
        name = _label(nb, base_path)
        for combo in combos:
            tasks.append(_Task(index=len(tasks), input_path=str(nb), output_path=str(out_dir / _output_name(name, combo)),
                               name=name, parameters={"MODE": mode, **params, **combo}, combo=combo, kernel=kernel,
                               timeout=timeout, html=html))
    return tasks


def _run_serial(tasks: list[_Task], progress: bool) -> list[RunResult]:
    """Execute the tasks one after the other in this process."""
    results = []
    for t in tasks:
        results.append(_execute(t))
        if progress:
            _progress(len(results), len(tasks), results[-1])
    return results


def _crashed(t: _Task, exc: BaseException) -> RunResult:
    """The result of a task whose worker process died."""
    return RunResult(notebook=t.name, params=dict(t.parameters), status="FAILED", seconds=0.0,
                     error=f"{type(exc).__name__}: {_first_line(str(exc))}", input_path=t.input_path,
                     output_path=t.output_path, combo=dict(t.combo))


def _run_pool(tasks: list[_Task], jobs: int, progress: bool) -> list[RunResult]:
    """Execute the tasks in ``jobs`` worker processes (spawned: no fork of live ZMQ/asyncio state),
    each limited to its share of the CPU threads; results come back in task order."""
    results: list[RunResult | None] = [None] * len(tasks)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx, initializer=_limit_threads,
                                initargs=(threads,)) as pool:
        futures = {pool.submit(_execute, t): t for t in tasks}
        for done, fut in enumerate(cf.as_completed(futures), 1):
            t = futures[fut]
            try:
                r = fut.result()
            except Exception as exc:  # worker crash: keep the others going
                r = _crashed(t, exc)
            results[t.index] = r
            if progress:
                _progress(done, len(tasks), r)
    return [r for r in results if r is not None]


def run_notebooks(
    notebooks: list[Path],
    mode: str = "quick",
    params: dict[str, Any] | None = None,
    grid: dict[str, list[Any]] | None = None,
    jobs: int = 1,
    out: str | Path | None = None,
    html: bool = False,
    timeout: float | None = None,
    *,
    kernel: str | None = None,
    progress: bool = True,
) -> list[RunResult]:
    """Execute notebooks with papermill and write the run summaries.

    Args:
        notebooks: the notebooks to run.
        mode: the ``MODE`` injected into every notebook (one of :data:`MODES`).
        params: further parameters to inject (names must be assigned in the
            notebooks' ``parameters`` cell).
        grid: ``name -> values``; every combination is run for every notebook.
        jobs: worker processes (1 runs serially in this process).
        out: output folder (default ``<repository>/runs/<YYYYmmdd-HHMMSS>``).
        html: also export each executed notebook as standalone HTML.
        timeout: per-cell execution timeout in seconds (``None``: no limit).
        kernel: Jupyter kernel name (default: :func:`default_kernel`).
        progress: print one line per finished notebook.

    Returns:
        One :class:`RunResult` per (notebook, combination), in notebook order.

    Raises:
        ValueError: unknown mode or parameter name, or ``jobs < 1``.
    """
    os.environ.setdefault("PRUNINGLIB_STATIC", "1")  # no widget front end in a batch run
    notebooks = [Path(nb).resolve() for nb in notebooks]
    params = dict(params or {})
    grid = {k: list(v) for k, v in (grid or {}).items()}
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if any(not v for v in grid.values()):
        raise ValueError("every --grid axis needs at least one value")
    _validate(notebooks, mode, params, grid)

    out_dir = Path(out) if out is not None else _default_out()
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = _make_tasks(notebooks, mode, params, grid, out_dir, kernel or default_kernel(), timeout, html)
    if jobs == 1 or len(tasks) <= 1:
        results = _run_serial(tasks, progress)
    else:
        results = _run_pool(tasks, jobs, progress)

    write_summary(results, out_dir, mode=mode)
    if grid:
        write_grid(results, out_dir, list(grid))
    return results


# --------------------------------------------------------------------------- reports


def _as_number(v: Any) -> float | None:
    """A recorded value as a float when it is a scalar number (``"nan"``/``"inf"`` too)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "+inf"):
        return float(v)
    return None


def _records_text(records: dict[str, Any]) -> str:
    parts = []
    for k, v in records.items():
        if _as_number(v) is not None or isinstance(v, bool):
            parts.append(f"{k}={_fmt_value(v)}")
        elif isinstance(v, str):
            parts.append(f"{k}={v if len(v) <= 30 else v[:27] + '...'}")
        elif isinstance(v, (list, dict)):
            parts.append(f"{k}=<{type(v).__name__} of {len(v)}>")
    return ", ".join(parts)


def write_summary(results: Sequence[RunResult], out_dir: str | Path, mode: str | None = None) -> Path:
    """Write ``summary.md`` and ``summary.json`` for a run.

    Args:
        results: the run results.
        out_dir: the run folder.
        mode: the run mode, shown in the Markdown header.

    Returns:
        The path of ``summary.md``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(
        json.dumps([r.summary() for r in results], indent=2, default=str) + "\n", encoding="utf-8"
    )
    n_ok = sum(r.ok for r in results)
    lines = [
        "# Run summary",
        "",
        f"{n_ok}/{len(results)} ok" + (f", mode `{mode}`" if mode else "") + f", written {_dt.datetime.now():%Y-%m-%d %H:%M:%S}.",
        "",
    ]
    rows = []
    for r in results:
        shown = {k: v for k, v in r.params.items() if k != "MODE"}
        p = ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in shown.items())
        rows.append([r.notebook, p or "-", r.status, f"{r.seconds:.1f}", _records_text(r.records) or "-"])
    lines.append(markdown_table(rows, headers=["notebook", "parameters", "status", "seconds", "records"],
                                align=["l", "l", "l", "r", "l"], fmt=str))
    failures = [r for r in results if not r.ok]
    if failures:
        lines += ["", "## Failures", ""]
        for r in failures:
            what = r.notebook + (f" ({_combo_label(r.combo)})" if r.combo else "")
            lines += [f"### {what}", "", f"- {r.error}"]
            if r.output_path and Path(r.output_path).exists():
                lines.append(f"- executed notebook: `{r.output_path}`")
            if r.failed_source:
                lines += ["", "```python", str(r.failed_source).rstrip(), "```"]
            lines.append("")
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


def write_grid(results: Sequence[RunResult], out_dir: str | Path, grid_keys: Sequence[str]) -> list[Path]:
    """Write ``grid.csv``, ``grid.md`` and one ``grid_<key>.png`` per recorded number.

    Args:
        results: the results of a grid run.
        out_dir: the run folder.
        grid_keys: the grid parameter names, in order.

    Returns:
        The paths written.
    """
    out_dir = Path(out_dir)
    keys: list[str] = []
    for r in results:
        for k, v in r.records.items():
            if _as_number(v) is not None and k not in keys:
                keys.append(k)
    header = ["notebook", *grid_keys, "status", "seconds", *keys]
    rows = []
    for r in results:
        row = {"notebook": r.notebook, "status": r.status, "seconds": r.seconds}
        row.update({k: r.combo.get(k, r.params.get(k, "")) for k in grid_keys})
        row.update({k: r.records.get(k, "") if _as_number(r.records.get(k)) is not None else "" for k in keys})
        rows.append(row)

    written = []
    csv_path = out_dir / "grid.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    written.append(csv_path)

    md_path = out_dir / "grid.md"
    md_path.write_text("# Grid\n\n" + markdown_table(rows, header, fmt=_fmt_value) + "\n", encoding="utf-8")
    written.append(md_path)

    # Figures: no pyplot, so the caller's backend and global state stay untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels: list[str] = []
    for r in results:
        lab = _combo_label(r.combo, sep="\n")
        if lab not in labels:
            labels.append(lab)
    names = list(dict.fromkeys(r.notebook for r in results))
    for key in keys:
        fig = Figure(figsize=(max(5.0, 0.9 * len(labels) + 2), 3.6), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for name in names:
            ys = [math.nan] * len(labels)
            for r in results:
                if r.notebook == name:
                    v = _as_number(r.records.get(key))
                    if v is not None:
                        ys[labels.index(_combo_label(r.combo, sep="\n"))] = v
            if any(not math.isnan(y) for y in ys):
                ax.plot(range(len(labels)), ys, "o-", label=name)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel(" x ".join(grid_keys))
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=8)
        path = out_dir / f"grid_{_safe(key)}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


# ------------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pruninglib.run",
        description="Execute the lesson notebooks with papermill and summarise their recorded numbers.",
    )
    p.add_argument("--mode", default="quick", choices=MODES, help="run size injected as MODE (default: quick)")
    p.add_argument("--only", metavar="01,03", help="comma-separated prefixes or stems of the notebooks to run")
    p.add_argument(
        "-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="inject a parameter (value parsed as a Python literal, else a string); repeatable",
    )
    p.add_argument("--grid", action="append", default=[], metavar="NAME=v1,v2",
                   help="run every combination of these values; repeatable")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="parallel worker processes (default 1)")
    p.add_argument("--html", action="store_true", help="also export each executed notebook as HTML")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<YYYYmmdd-HHMMSS>)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="per-cell execution timeout")
    p.add_argument("--list", action="store_true", help="list the notebooks and their parameters, then exit")
    p.add_argument("--notebooks", metavar="DIR", help="folder of the notebooks (default <repository>/notebooks)")
    p.add_argument("--solutions", action="store_true", help="include notebooks/solutions/NN_*.ipynb")
    p.add_argument("--kernel", help="Jupyter kernel (default: 'pruning' if installed, else 'python3')")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        0 when every notebook ran, 1 when any failed, 2 for a bad command line.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return int(exc.code) if isinstance(exc.code, int) else 2
    if args.jobs < 1:
        print(f"error: --jobs must be >= 1 (got {args.jobs})", file=sys.stderr)
        return 2

    all_nbs = discover_notebooks(args.notebooks, solutions=args.solutions)
    if not all_nbs:
        where = args.notebooks or ROOT / "notebooks"
        print(f"error: no notebooks matching {_LESSON_GLOB} in {where}", file=sys.stderr)
        return 2
    try:
        selected = select_notebooks(all_nbs, args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = Path(args.notebooks) if args.notebooks else ROOT / "notebooks"

    if args.list:
        for nb in selected:
            params = notebook_parameters(nb)
            shown = ", ".join(f"{k} = {v}" for k, v in params.items()) or "(no parameters cell)"
            print(f"{_label(nb, base)}: {shown}")
        return 0

    try:
        params = {name: parse_value(value) for name, value in args.param}
        grid = parse_grid(args.grid)
        _validate(selected, args.mode, params, grid)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    out = Path(args.out) if args.out else _default_out()
    n = len(selected) * math.prod(len(v) for v in grid.values())
    print(f"Running {n} notebook execution(s), mode {args.mode}, jobs {args.jobs} -> {out}", flush=True)
    results = run_notebooks(
        selected,
        mode=args.mode,
        params=params,
        grid=grid or None,
        jobs=args.jobs,
        out=out,
        html=args.html,
        timeout=args.timeout,
        kernel=args.kernel,
    )
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} ok. Summary: {out / 'summary.md'}")
    if grid:
        print(f"Grid: {out / 'grid.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
