"""One notebook execution with papermill, in this process: :func:`_execute` never raises, and a
stop request leaves the executed notebook marked where it stopped.

Part of the batch runner (``python -m pruninglib.run``): the serial run calls it directly, a
Dask worker calls it in a process of its own (:mod:`pruninglib.run.worker`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from pruninglib.run.notebooks import default_kernel
from pruninglib.run.kernels import _CellTracker, _kernel_manager_class, _release_kernels
from pruninglib.run.outdir import _write_atomic
from pruninglib.run.results import _FAILED, _INTERRUPTED, _NOT_STARTED, _OK, RunResult, _first_line
from pruninglib.run.stopping import _STOP
from pruninglib.run.tasks import _Task

__all__: list[str] = []


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


def _papermill(task: _Task, tracker: _CellTracker) -> tuple[str | None, str | None, bool]:
    """Run papermill on the task; ``(error, failing cell source, interrupted)``, never raising."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    _STOP.busy = True
    try:
        if _STOP.requested:  # asked (while idle) just before this notebook: do not start it
            raise KeyboardInterrupt(_STOP.signal)
        papermill.execute_notebook(
            task.input_path,
            task.output_path,
            parameters=task.parameters,
            kernel_name=task.kernel or default_kernel(),
            language="python",  # lessons are Python; needed when a notebook lacks kernelspec metadata
            cwd=task.cwd or str(Path(task.input_path).parent),
            progress_bar=False,
            log_output=False,
            execution_timeout=task.timeout,
            kernel_manager_class=_kernel_manager_class(),
            on_cell_start=tracker.start,
            on_cell_executed=tracker.executed,
        )
    except KeyboardInterrupt:  # SIGINT/SIGTERM: nbclient has shut the kernel down on the way out
        return None, None, True
    except PapermillExecutionError as exc:
        return f"cell {exc.exec_count}: {exc.ename}: {_first_line(exc.evalue) or exc.evalue}", exc.source, False
    except Exception as exc:  # timeouts, dead kernels, missing kernels, unreadable files
        return f"{type(exc).__name__}: {_first_line(str(exc))}", None, False
    finally:
        _STOP.busy = False
    return None, None, False


def _read_output(out: Path) -> tuple[Any, dict[str, Any]]:
    """The executed notebook and its records; ``(None, {})`` when missing or unreadable."""
    import nbformat

    from pruninglib.run.record import read_records

    if not out.exists():
        return None, {}
    try:
        nb = nbformat.read(str(out), as_version=4)
        return nb, read_records(nb)
    except Exception:  # pragma: no cover - half-written output
        return None, {}


def _locate_error(nb: Any, error: str) -> tuple[str, str | None]:
    """Prefix an error papermill could not attribute (e.g. a timeout) with the cell where the
    saved notebook stopped."""
    idx, cell = _failed_cell(nb)
    if cell is None:
        return error, None
    count = cell.get("execution_count")
    return f"cell {count if count is not None else f'index {idx}'}: {error}", cell.get("source")


def _mark_interrupted(out: Path, tracker: _CellTracker) -> None:
    """Papermill's clean-up marks every cell of an interrupted notebook "completed": mark the
    running cell "failed" with a KeyboardInterrupt output and the cells after it "pending"."""
    import nbformat

    try:
        nb = nbformat.read(str(out), as_version=4)
    except Exception as exc:  # pragma: no cover - half-written output: the summary still tells
        print(f"warning: could not mark {out.name} as interrupted: {exc}", file=sys.stderr)
        return
    why = f"the batch run was stopped ({_STOP.signal or 'SIGINT'})"
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("papermill")
        if meta is None:
            continue
        if i == tracker.running:
            meta.update(status="failed", exception=True)
            cell.outputs.append(nbformat.v4.new_output("error", ename="KeyboardInterrupt", evalue=why,
                                                       traceback=[f"KeyboardInterrupt: {why}"]))
        elif i not in tracker.done:
            meta.update(status="pending", start_time=None, end_time=None, duration=None)
    nb.metadata.setdefault("papermill", {})["exception"] = True
    _write_atomic(out, nbformat.writes(nb))


def _interrupted_error(nb: Any, tracker: _CellTracker) -> tuple[str, str | None]:
    sig = _STOP.signal or "SIGINT"
    if nb is None or tracker.running is None or tracker.running >= len(nb.cells):
        return f"interrupted ({sig}) {'between cells' if tracker.done else 'before its first cell'}", None
    cell = nb.cells[tracker.running]
    count = cell.get("execution_count")
    return f"cell {count if count is not None else f'index {tracker.running}'}: interrupted ({sig})", cell.source


def _export_html(nb: Any, out: Path) -> str | None:
    try:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(nb)
        return str(_write_atomic(out.with_suffix(".html"), body))
    except Exception as exc:  # pragma: no cover - exporter problems should not hide results
        print(f"warning: HTML export of {out.name} failed: {exc}", file=sys.stderr)
        return None


def _execute(task: _Task) -> RunResult:
    """Execute one notebook in this process (the runner's, or the one a Dask worker starts for it) and never raise.

    After a stop request it returns at once with status ``not started``; a notebook that a stop
    request cuts short is marked where it stopped and returned as ``interrupted``.
    """
    if _STOP.requested:
        return _not_started(task)
    out = Path(task.output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tracker = _CellTracker()
    started_at, start = time.time(), time.perf_counter()
    error, source, interrupted = _papermill(task, tracker)
    seconds = time.perf_counter() - start
    _release_kernels(kill=interrupted)
    # An output file older than this execution is a previous run's: papermill never got to write.
    fresh = out.exists() and out.stat().st_mtime >= started_at - 1.0
    if interrupted and not fresh:
        return _not_started(task)
    if interrupted:
        _mark_interrupted(out, tracker)
    nb, records = _read_output(out) if fresh else (None, {})
    if interrupted:
        error, source = _interrupted_error(nb, tracker)
    elif error is not None and nb is not None and source is None:
        error, source = _locate_error(nb, error)
    html_path = _export_html(nb, out) if task.html and nb is not None else None
    return RunResult(
        notebook=task.name,
        params=dict(task.parameters),
        status=_INTERRUPTED if interrupted else (_OK if error is None else _FAILED),
        seconds=round(seconds, 2),
        records=records,
        error=error,
        input_path=task.input_path,
        output_path=str(out) if fresh else "",
        html_path=html_path,
        combo=dict(task.combo),
        failed_source=source,
    )


def _not_started(t: _Task) -> RunResult:
    """The result of a task the stopped run never began."""
    return RunResult(notebook=t.name, params=dict(t.parameters), status=_NOT_STARTED, seconds=0.0,
                     error=f"not started: the run was stopped ({_STOP.signal or 'SIGINT'})",
                     input_path=t.input_path, combo=dict(t.combo))


def _unfinished(t: _Task) -> RunResult:
    """The result of a task a stop request cut short outside papermill (or whose worker did not report)."""
    out = Path(t.output_path)
    return RunResult(notebook=t.name, params=dict(t.parameters), status=_INTERRUPTED, seconds=0.0,
                     error=f"interrupted ({_STOP.signal or 'SIGINT'})", input_path=t.input_path,
                     output_path=str(out) if out.exists() else "", combo=dict(t.combo))


def _crashed(t: _Task, exc: BaseException) -> RunResult:
    """The result of a task whose worker process died."""
    return RunResult(notebook=t.name, params=dict(t.parameters), status=_FAILED, seconds=0.0,
                     error=f"{type(exc).__name__}: {_first_line(str(exc))}", input_path=t.input_path,
                     output_path=t.output_path, combo=dict(t.combo))
