"""Run the lesson notebooks in batch and summarise what they recorded.

::

    python -m pruninglib.run [--mode quick|laptop|paper] [--only 01,03]
                             [-p NAME VALUE ...] [--grid NAME=v1,v2 ...] [--jobs N]
                             [--html] [--out DIR] [--timeout SECONDS] [--list]

Each selected notebook is executed with papermill (``MODE`` and the ``-p`` values are
injected after its cell tagged ``parameters``) into ``runs/<timestamp>/``. The runner
then writes ``summary.md`` and ``summary.json`` with the status, wall time and the
numbers each notebook stored with :func:`pruninglib.run.record.record` (a recorded dict's
numbers under dotted names, ``xor_fraction_correct.obs``). With ``--grid`` every
combination of grid values is run for every notebook, and ``grid.csv``, ``grid.md`` and
one ``grid_<key>.png`` figure per recorded number compare the combinations.

A failing notebook does not stop the others; the summary names the failing cell and
its error, and the exit status is 1. Bad command lines (unknown notebook, mode or
parameter name, ``-p MODE``, a parameter that a selected notebook does not declare, an
output folder that cannot be written or that another run is using) exit with status 2
before anything runs, and say what to do instead. Ctrl-C (SIGINT) or SIGTERM stops the
kernels, marks the interrupted notebook and the ones not started, writes the summaries
and exits with status 130.

Kernels talk to the runner over local IPC sockets (POSIX), not TCP, so ipykernel has no
"running over TCP without encryption" warning to print.

The same runner is available from Python::

    from pruninglib.run import run_notebooks, discover_notebooks
    results = run_notebooks(discover_notebooks()[:1], mode="quick", params={"SEED": 1})
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import contextlib
import csv
import datetime as _dt
import functools
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from pruninglib.run.record import flatten_records
from pruninglib.atomic import atomic_write
from pruninglib.tables import markdown_table

__all__ = [
    "MODES",
    "ROOT",
    "INTERRUPTED_EXIT",
    "RunResult",
    "RunRefused",
    "OutputFolderBusy",
    "RunInterrupted",
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

#: Exit status of ``python -m pruninglib.run`` stopped by SIGINT or SIGTERM (128 + SIGINT).
INTERRUPTED_EXIT = 130

_LESSON_GLOB = "[0-9][0-9]_*.ipynb"
_SUMMARY_KEYS = ("notebook", "params", "status", "seconds", "records", "error")
_OK, _FAILED, _INTERRUPTED, _NOT_STARTED = "ok", "FAILED", "interrupted", "not started"
_LOCK_NAME = ".pruninglib-run.lock"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STOP_WAIT_S = 60.0  # how long an interrupted pool may take to stop its kernels and report


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """The outcome of one notebook execution. Part of the batch runner.

    Attributes:
        notebook: the notebook's stem (``01_obd_obs_hessian``; ``solutions/…`` for solutions).
        params: every parameter injected, ``MODE`` included.
        status: ``"ok"``, ``"FAILED"``, ``"interrupted"`` (stopped by SIGINT/SIGTERM while it
            ran) or ``"not started"`` (the run was stopped before it).
        seconds: wall time of the execution, kernel start-up included.
        records: ``name -> value`` stored with :func:`pruninglib.run.record.record`.
        error: ``"cell N: EName: message"`` for a failure (``"cell N: interrupted (SIGINT)"``), else ``None``.
        input_path: the source notebook.
        output_path: the executed notebook (empty when none was written).
        html_path: the HTML export, when asked for.
        combo: the grid combination of this run (empty without a grid).
        failed_source: the source of the failing (or interrupted) cell, when known.
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
        return self.status == _OK

    def summary(self) -> dict[str, Any]:
        """The JSON-ready record written to ``summary.json``.

        Its ``records`` hold every value under its recorded name and, for a recorded dict,
        also each of its values under the dotted name the summaries show (``acc.obs``).
        """
        d = asdict(self)
        d["records"] = _with_flat_names(self.records)
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


class RunRefused(ValueError):
    """A batch run refused before anything ran; the message says what to do instead.

    Part of the batch runner: unknown mode or parameter, ``-p MODE``, a parameter that a
    selected notebook does not declare, no notebook selected, an output folder that cannot
    be written.
    """


class OutputFolderBusy(RuntimeError):
    """Another batch run holds the output folder; the message names its PID. Part of the batch runner.
    """


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a batch run after its summaries were written. Part of the batch runner.

    Attributes:
        results: one :class:`RunResult` per execution (``interrupted`` / ``not started`` included).
        out_dir: the run folder holding ``summary.md`` and ``summary.json``.
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
    """

    def __init__(self, results: list[RunResult], out_dir: Path, signal_name: str) -> None:
        super().__init__(f"batch run stopped by {signal_name}; summary in {out_dir / 'summary.md'}")
        self.results, self.out_dir, self.signal_name = results, out_dir, signal_name


# ---------------------------------------------------------------- discovery & params


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


# ------------------------------------------------------------------------- execution


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _combo_label(combo: dict[str, Any], sep: str = ", ") -> str:
    """``RATIO=0.25, OPT='adam'``: values as Python literals, so ``0.25`` and ``'0.25'`` differ."""
    return sep.join(f"{k}={v!r}" for k, v in combo.items())


def _safe(text: str) -> str:
    return re.sub(r"[^\w.=+-]+", "-", text).strip("-") or "x"


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


def _limit_threads(n: int) -> None:
    """Cap the BLAS/OpenMP threads of this process and of the kernels it starts."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


# ---------------------------------------------------------------- stopping (SIGINT/SIGTERM)


class _StopState:
    """What SIGINT/SIGTERM asked of this process (one per process: the runner, each pool worker)."""

    def __init__(self) -> None:
        self.signal: str | None = None  # name of the first stop signal, None while running on
        self.busy = False  # a notebook is executing in this process
        self.raise_when_idle = True  # the runner stops whatever it does; a worker only a notebook

    @property
    def requested(self) -> bool:
        """Whether SIGINT or SIGTERM asked this process to stop."""
        return self.signal is not None


_STOP = _StopState()


def _on_stop_signal(signum: int, frame: Any) -> None:
    """The first SIGINT/SIGTERM becomes one KeyboardInterrupt; later ones are ignored so that the
    clean-up (kernels, summaries) runs to the end."""
    if _STOP.requested:
        return
    _STOP.signal = signal.Signals(signum).name
    if _STOP.busy or _STOP.raise_when_idle:
        raise KeyboardInterrupt(_STOP.signal)


@contextlib.contextmanager
def _stopping_on_signals() -> Iterator[None]:
    """Handle SIGINT and SIGTERM with :func:`_on_stop_signal` (main thread only), then restore."""
    _STOP.signal, _STOP.raise_when_idle = None, True
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
    for s in _STOP_SIGNALS:
        signal.signal(s, _on_stop_signal)
    try:
        yield
    finally:
        _STOP.raise_when_idle = True
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _init_worker(threads: int, stop: Any, signum: Any) -> None:
    """Process-pool initializer: cap the threads; stop the running notebook on SIGINT/SIGTERM or
    when the runner sets ``stop`` (a ``multiprocessing.Event``; ``signum``, a shared integer, says
    which signal the runner got)."""
    _limit_threads(threads)
    _STOP.raise_when_idle = False
    for s in _STOP_SIGNALS:
        signal.signal(s, _on_stop_signal)
    main_thread = threading.main_thread().ident
    threading.Thread(target=_forward_stop, args=(stop, signum, main_thread), daemon=True).start()


def _forward_stop(stop: Any, signum: Any, main_thread: int | None) -> None:
    """Wait for the runner's stop request and deliver its signal to this worker's main thread."""
    stop.wait()
    sig = signum.value or signal.SIGTERM
    if hasattr(signal, "pthread_kill") and main_thread is not None:
        signal.pthread_kill(main_thread, sig)
    else:  # pragma: no cover - Windows
        import _thread

        _thread.interrupt_main(sig)


# -------------------------------------------------------------------------- kernels

_KERNELS: weakref.WeakSet = weakref.WeakSet()  # kernel managers this process created


@functools.lru_cache(maxsize=None)
def _kernel_manager_class() -> type:
    """The kernel manager papermill/nbclient start each kernel with (built on first use, so that
    importing the runner does not import jupyter_client)."""
    from jupyter_client import AsyncKernelManager

    class BatchKernelManager(AsyncKernelManager):
        """IPC transport in a private temporary folder on POSIX (no TCP port, hence no ipykernel
        warning about unencrypted TCP), and registered so an interrupted run can kill it."""

        def __init__(self, **kwargs: Any) -> None:
            ipc_dir = None
            if os.name == "posix" and "transport" not in kwargs:
                ipc_dir = tempfile.mkdtemp(prefix="pruninglib-kernel-")
                kwargs.update(transport="ipc", ip=os.path.join(ipc_dir, "kernel"))
            super().__init__(**kwargs)
            # Removes the socket folder when called (see _release_kernels), else at exit.
            self.remove_ipc_dir = weakref.finalize(self, shutil.rmtree, ipc_dir, True) if ipc_dir else None
            _KERNELS.add(self)

        async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
            """After a stop request, kill the kernel at once: a graceful shutdown of an
            interrupted cell only makes the kernel print a traceback."""
            await super().shutdown_kernel(now=now or _STOP.requested, restart=restart)

    return BatchKernelManager


def _release_kernels(kill: bool = False) -> None:
    """Remove the socket folders of the kernels this process started that have ended; with
    ``kill`` (after an interrupt) first kill those that still run."""
    for km in list(_KERNELS):
        proc = getattr(getattr(km, "provisioner", None), "process", None)
        if proc is not None and proc.poll() is None:
            if not kill:
                continue
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if getattr(km, "remove_ipc_dir", None) is not None:
            km.remove_ipc_dir()
        _KERNELS.discard(km)


class _CellTracker:
    """Which cells nbclient started and finished (its ``on_cell_start``/``on_cell_executed`` hooks),
    so an interrupted notebook can be marked where it stopped."""

    def __init__(self) -> None:
        self.running: int | None = None
        self.done: set[int] = set()

    def start(self, cell: Any, cell_index: int, **_: Any) -> None:
        """nbclient's ``on_cell_start`` hook."""
        if cell.get("cell_type") == "code" and str(cell.get("source", "")).strip():
            self.running = cell_index
        else:  # nbclient skips these: no "executed" hook follows
            self.done.add(cell_index)

    def executed(self, cell: Any, cell_index: int, **_: Any) -> None:
        """nbclient's ``on_cell_executed`` hook (the kernel replied)."""
        self.done.add(cell_index)
        self.running = None


# ------------------------------------------------------------------- one notebook


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
            kernel_name=task.kernel,
            language="python",  # lessons are Python; needed when a notebook lacks kernelspec metadata
            cwd=str(Path(task.input_path).parent),
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
    """Execute one notebook (in this process or a pool worker) and never raise.

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


# ------------------------------------------------------------------------- many notebooks


def _default_out() -> Path:
    base = ROOT / "runs" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _progress(i: int, total: int, r: RunResult) -> None:
    scalars = {k: v for k, v in flatten_records(r.records).items() if _as_number(v) is not None}
    shown = ", ".join(f"{k}={_fmt_value(v)}" for k, v in list(scalars.items())[:4])
    what = r.notebook + (f" [{_combo_label(r.combo)}]" if r.combo else "")
    tail = f"  {r.error}" if r.error else (f"  {shown}" if shown else "")
    print(f"[{i}/{total}] {r.status:<6} {what} ({r.seconds:.1f} s){tail}", flush=True)


def _make_tasks(notebooks: list[Path], mode: str, params: dict[str, Any], grid: dict[str, list[Any]],
                out_dir: Path, kernel: str, timeout: float | None, html: bool) -> list[_Task]:
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


def _run_serial(tasks: list[_Task], progress: bool) -> list[RunResult]:
    """Execute the tasks one after the other in this process; after a stop request the rest
    come back ``not started``."""
    results: list[RunResult] = []
    try:
        for t in tasks:
            results.append(_execute(t))
            if progress:
                _progress(len(results), len(tasks), results[-1])
    except KeyboardInterrupt:  # the stop request landed outside papermill
        _release_kernels(kill=True)
    if len(results) < len(tasks):
        results.append(_unfinished(tasks[len(results)]))
    return results + [_not_started(t) for t in tasks[len(results):]]


def _collect(fut: cf.Future, t: _Task) -> RunResult:
    """The result of a pool task, whatever became of it."""
    if fut.cancelled():
        return _not_started(t)
    if not fut.done():
        return _unfinished(t)
    try:
        return fut.result()
    except BaseException as exc:  # worker crash (or a stop that cut the worker short): keep the others
        return _unfinished(t) if _STOP.requested or isinstance(exc, KeyboardInterrupt) else _crashed(t, exc)


def _stop_workers(futures: dict[cf.Future, _Task], stop: Any, signum: Any) -> bool:
    """Ask every worker to stop its notebook, cancel the queued tasks and wait (bounded) for the
    reports; whether every task reported."""
    signum.value = int(signal.Signals[_STOP.signal or "SIGINT"])
    stop.set()
    for fut in futures:
        fut.cancel()
    _, not_done = cf.wait(futures, timeout=_STOP_WAIT_S)
    return not not_done


def _run_pool(tasks: list[_Task], jobs: int, progress: bool) -> list[RunResult]:
    """Execute the tasks in ``jobs`` worker processes (spawned: no fork of live ZMQ/asyncio state),
    each limited to its share of the CPU threads; results come back in task order."""
    ctx = multiprocessing.get_context("spawn")
    stop, signum = ctx.Event(), ctx.Value("i", 0)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    futures: dict[cf.Future, _Task] = {}
    results: dict[int, RunResult] = {}
    pool, clean = None, True
    try:
        pool = cf.ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx, initializer=_init_worker,
                                      initargs=(threads, stop, signum))
        for t in tasks:
            futures[pool.submit(_execute, t)] = t
        for fut in cf.as_completed(futures):
            t = futures[fut]
            results[t.index] = _collect(fut, t)
            if progress:
                _progress(len(results), len(tasks), results[t.index])
            if _STOP.requested:
                raise KeyboardInterrupt(_STOP.signal)
    except KeyboardInterrupt:
        clean = _stop_workers(futures, stop, signum)
        for fut, t in futures.items():
            if t.index not in results:
                results[t.index] = _collect(fut, t)
                if progress:
                    _progress(len(results), len(tasks), results[t.index])
    finally:
        if pool is not None:
            pool.shutdown(wait=clean, cancel_futures=True)
    return [results.get(t.index) or _not_started(t) for t in tasks]


# ----------------------------------------------------------------- output folder


def _write_atomic(path: Path, data: str | bytes) -> Path:
    """Write a report atomically and read it back (:func:`pruninglib.atomic.atomic_write`)."""
    return atomic_write(path, [data.encode("utf-8") if isinstance(data, str) else data], verify=True)


def _open_lock(out_dir: Path) -> int:
    """Create ``out_dir`` and open its lock file; :class:`RunRefused` when that is not possible."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return os.open(out_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunRefused(f"cannot write to the output folder {out_dir} ({exc.strerror or exc}): "
                         f"choose a writable folder with --out DIR (run_notebooks(out=...))") from exc


def _try_lock(fd: int) -> bool:
    """Take the lock on ``fd`` without waiting; ``False`` when another process holds it."""
    try:
        if os.name == "posix":
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _busy(fd: int, out_dir: Path) -> OutputFolderBusy:
    """The error naming the run that holds the lock of ``out_dir``."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except (OSError, AttributeError):  # Windows: the locked byte cannot be read
        text = ""
    info = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    who = f"PID {info['pid']}" if "pid" in info else "PID unknown"
    since = f", started {info['started']}" if "started" in info else ""
    return OutputFolderBusy(f"another batch run ({who}{since}) is writing to {out_dir}: wait for it to finish, "
                            f"or choose another folder with --out DIR (run_notebooks(out=...))")


def _acquire_lock(out_dir: Path) -> int:
    """Lock ``out_dir`` for this run; the open, locked lock file (see :func:`_locked_output`)."""
    path = out_dir / _LOCK_NAME
    for _ in range(3):
        fd = _open_lock(out_dir)
        if not _try_lock(fd):
            err = _busy(fd, out_dir)
            os.close(fd)
            raise err
        try:
            same = os.name != "posix" or os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}\nstarted {_dt.datetime.now():%Y-%m-%d %H:%M:%S}\n".encode())
            return fd
        os.close(fd)  # the previous run removed the file we locked: lock its successor
    raise OutputFolderBusy(f"could not lock {path}: other runs keep starting there; "
                           f"choose another folder with --out DIR")


@contextlib.contextmanager
def _locked_output(out_dir: Path) -> Iterator[None]:
    """Hold ``<out_dir>/.pruninglib-run.lock`` (created with the folder) for the run.

    The lock is an OS file lock, released when this process ends however it ends; the file
    names the holder's PID for the message a second run gets.

    Raises:
        RunRefused: the folder cannot be created or written.
        OutputFolderBusy: another run holds it.
    """
    fd = _acquire_lock(out_dir)
    try:
        yield
    finally:
        try:
            if os.name == "posix":
                (out_dir / _LOCK_NAME).unlink(missing_ok=True)
        finally:
            os.close(fd)


def _modes(tasks: Sequence[_Task]) -> str:
    """The modes the tasks run in (one, unless ``MODE`` is a grid axis)."""
    return ", ".join(dict.fromkeys(str(t.parameters.get("MODE")) for t in tasks))


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

    Part of the batch runner (``python -m pruninglib.run``).

    Args:
        notebooks: the notebooks to run.
        mode: the ``MODE`` injected into every notebook (one of :data:`MODES`).
        params: further parameters to inject (every selected notebook must assign them in
            its ``parameters`` cell; ``MODE`` is set with ``mode``).
        grid: ``name -> values``; every combination is run for every notebook.
        jobs: worker processes (1 runs serially in this process).
        out: output folder (default ``<repository>/runs/<YYYYmmdd-HHMMSS>``); locked for the run.
        html: also export each executed notebook as standalone HTML.
        timeout: per-cell execution timeout in seconds (``None``: no limit).
        kernel: Jupyter kernel name (default: :func:`default_kernel`).
        progress: print a header line and one line per finished notebook.

    Returns:
        One :class:`RunResult` per (notebook, combination), in notebook order.

    Raises:
        RunRefused: (a ``ValueError``) before anything ran: unknown mode or parameter, ``MODE``
            in ``params``, a parameter a notebook does not declare, no notebook, ``jobs < 1``,
            an empty grid axis, an output folder that cannot be written.
        OutputFolderBusy: another run is writing to ``out``.
        RunInterrupted: SIGINT/SIGTERM stopped the run; the summaries are written, and the
            exception holds the results.
    """
    os.environ.setdefault("PRUNINGLIB_STATIC", "1")  # no widget front end in a batch run
    notebooks = [Path(nb).resolve() for nb in notebooks]
    params = dict(params or {})
    grid = {k: list(v) for k, v in (grid or {}).items()}
    if jobs < 1:
        raise RunRefused(f"jobs must be >= 1, got {jobs}")
    if any(not v for v in grid.values()):
        raise RunRefused("every --grid axis needs at least one value")
    _validate(notebooks, mode, params, grid)

    # Absolute: papermill changes the working directory while a notebook runs.
    out_dir = Path(out).absolute() if out is not None else _default_out()
    tasks = _make_tasks(notebooks, mode, params, grid, out_dir, kernel or default_kernel(), timeout, html)
    with _locked_output(out_dir):
        if progress:
            print(f"Running {len(tasks)} notebook execution(s), mode {_modes(tasks)}, jobs {jobs} -> {out_dir}",
                  flush=True)
        results, stopped = _run_and_summarise(tasks, jobs, progress, out_dir, list(grid))
    if stopped is not None:
        raise RunInterrupted(results, out_dir, stopped)
    return results


def _run_and_summarise(tasks: list[_Task], jobs: int, progress: bool, out_dir: Path,
                       grid_keys: list[str]) -> tuple[list[RunResult], str | None]:
    """Execute the tasks and write the summaries, stopping cleanly on SIGINT/SIGTERM;
    ``(results, name of the stop signal or None)``."""
    with _stopping_on_signals():
        if jobs == 1 or len(tasks) <= 1:
            results = _run_serial(tasks, progress)
        else:
            results = _run_pool(tasks, jobs, progress)
        _STOP.raise_when_idle = False  # a stop signal from here on is only noted: the summaries get written
        write_summary(results, out_dir, mode=_modes(tasks))
        if grid_keys:
            write_grid(results, out_dir, grid_keys)
        return results, _STOP.signal


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


def _with_flat_names(records: Mapping[str, Any]) -> dict[str, Any]:
    """Every record under its name, followed (for a dict) by its values under dotted names."""
    out: dict[str, Any] = {}
    for k, v in records.items():
        out[k] = v
        if isinstance(v, Mapping):
            for name, value in flatten_records({k: v}).items():
                out.setdefault(name, value)
    return out


def _records_text(records: dict[str, Any]) -> str:
    parts = []
    for k, v in flatten_records(records).items():
        if _as_number(v) is not None or isinstance(v, bool):
            parts.append(f"{k}={_fmt_value(v)}")
        elif isinstance(v, str):
            parts.append(f"{k}={v if len(v) <= 30 else v[:27] + '...'}")
        elif isinstance(v, (list, Mapping)):
            parts.append(f"{k}=<{'list' if isinstance(v, list) else 'dict'} of {len(v)}>")
    return ", ".join(parts)


def _counts(results: Sequence[RunResult]) -> str:
    """``3/4 ok`` plus how many were interrupted or not started."""
    text = f"{sum(r.ok for r in results)}/{len(results)} ok"
    for status in (_INTERRUPTED, _NOT_STARTED):
        n = sum(r.status == status for r in results)
        text += f", {n} {status}" if n else ""
    return text


def _problem_lines(title: str, results: Sequence[RunResult]) -> list[str]:
    """A ``## Failures``/``## Interrupted`` section: error, executed notebook, cell source."""
    lines = ["", f"## {title}", ""]
    for r in results:
        what = r.notebook + (f" ({_combo_label(r.combo)})" if r.combo else "")
        lines += [f"### {what}", "", f"- {r.error}"]
        if r.output_path and Path(r.output_path).exists():
            lines.append(f"- executed notebook: `{r.output_path}`")
        if r.failed_source:
            lines += ["", "```python", str(r.failed_source).rstrip(), "```"]
        lines.append("")
    return lines


def write_summary(results: Sequence[RunResult], out_dir: str | Path, mode: str | None = None) -> Path:
    """Write ``summary.md`` and ``summary.json`` for a run, each atomically.

    Part of the batch runner. A recorded dict shows as its numbers under dotted names
    (``xor_fraction_correct.obs=0.88``); ``summary.json`` keeps the dict as well.

    Args:
        results: the run results.
        out_dir: the run folder.
        mode: the run mode, shown in the Markdown header.

    Returns:
        The path of ``summary.md``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "summary.json",
                  json.dumps([r.summary() for r in results], indent=2, default=str) + "\n")
    lines = [
        "# Run summary",
        "",
        _counts(results) + (f", mode `{mode}`" if mode else "") + f", written {_dt.datetime.now():%Y-%m-%d %H:%M:%S}.",
        "",
    ]
    rows = []
    for r in results:
        shown = {k: v for k, v in r.params.items() if k != "MODE"}
        p = ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in shown.items())
        rows.append([r.notebook, p or "-", r.status, f"{r.seconds:.1f}", _records_text(r.records) or "-"])
    lines.append(markdown_table(rows, headers=["notebook", "parameters", "status", "seconds", "records"],
                                align=["l", "l", "l", "r", "l"], fmt=str))
    failures = [r for r in results if r.status == _FAILED]
    interrupted = [r for r in results if r.status == _INTERRUPTED]
    if failures:
        lines += _problem_lines("Failures", failures)
    if interrupted:
        lines += _problem_lines("Interrupted", interrupted)
    return _write_atomic(out_dir / "summary.md", "\n".join(lines).rstrip() + "\n")


def _grid_rows(results: Sequence[RunResult], grid_keys: Sequence[str]) -> tuple[list[str], list[str], list[dict]]:
    """``(recorded number names, header, rows)`` of the grid table; nested records flattened."""
    flat = [flatten_records(r.records) for r in results]
    keys: list[str] = []
    for rec in flat:
        for k, v in rec.items():
            if _as_number(v) is not None and k not in keys:
                keys.append(k)
    header = ["notebook", *grid_keys, "status", "seconds", *keys]
    rows = []
    for r, rec in zip(results, flat):
        row = {"notebook": r.notebook, "status": r.status, "seconds": r.seconds}
        row.update({k: r.combo.get(k, r.params.get(k, "")) for k in grid_keys})
        row.update({k: rec.get(k, "") if _as_number(rec.get(k)) is not None else "" for k in keys})
        rows.append(row)
    return keys, header, rows


def _grid_figure(results: Sequence[RunResult], grid_keys: Sequence[str], key: str) -> bytes:
    """PNG bytes of one recorded number against the grid combinations, one line per notebook."""
    # No pyplot, so the caller's backend and global state stay untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(_combo_label(r.combo, sep="\n") for r in results))
    names = list(dict.fromkeys(r.notebook for r in results))
    fig = Figure(figsize=(max(5.0, 0.9 * len(labels) + 2), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name in names:
        ys = [math.nan] * len(labels)
        for r in results:
            v = _as_number(flatten_records(r.records).get(key)) if r.notebook == name else None
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_grid(results: Sequence[RunResult], out_dir: str | Path, grid_keys: Sequence[str]) -> list[Path]:
    """Write ``grid.csv``, ``grid.md`` and one ``grid_<key>.png`` per recorded number, each atomically.

    Part of the batch runner. Numbers inside recorded dicts get their dotted names
    (``xor_fraction_correct.obs``) as columns and figures.

    Args:
        results: the results of a grid run.
        out_dir: the run folder.
        grid_keys: the grid parameter names, in order.

    Returns:
        The paths written.
    """
    out_dir = Path(out_dir)
    keys, header, rows = _grid_rows(results, grid_keys)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=header)
    w.writeheader()
    w.writerows(rows)
    written = [_write_atomic(out_dir / "grid.csv", text.getvalue()),
               _write_atomic(out_dir / "grid.md", "# Grid\n\n" + markdown_table(rows, header, fmt=_fmt_value) + "\n")]
    for key in keys:
        written.append(_write_atomic(out_dir / f"grid_{_safe(key)}.png", _grid_figure(results, grid_keys, key)))
    return written


# ------------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pruninglib.run",
        description="Execute the lesson notebooks with papermill and summarise their recorded numbers.",
    )
    p.add_argument("--mode", default=None, choices=MODES, help="run size injected as MODE (default: quick)")
    p.add_argument("--smoke", action="store_true",
                   help="run paper mode's code path with every loop capped and a few examples (injects "
                        "MODE='paper', SMOKE=True): checks a paper run before it costs GPU hours")
    p.add_argument("--only", metavar="01,03", help="comma-separated prefixes or stems of the notebooks to run")
    p.add_argument(
        "-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="inject a parameter (value parsed as a Python literal, else a string); repeatable; "
             "every selected notebook must declare NAME; MODE is set with --mode",
    )
    p.add_argument("--grid", action="append", default=[], metavar="NAME=v1,v2",
                   help="run every combination of these values; repeatable")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="parallel worker processes (default 1)")
    p.add_argument("--html", action="store_true", help="also export each executed notebook as HTML")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<YYYYmmdd-HHMMSS>), locked for the run")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="per-cell execution timeout")
    p.add_argument("--list", action="store_true", help="list the notebooks and their parameters, then exit")
    p.add_argument("--notebooks", metavar="DIR", help="folder of the notebooks (default <repository>/notebooks)")
    p.add_argument("--solutions", action="store_true", help="include notebooks/solutions/NN_*.ipynb")
    p.add_argument("--kernel", help="Jupyter kernel (default: 'pruning' if installed, else 'python3')")
    return p


def _select(args: argparse.Namespace) -> list[Path]:
    """The notebooks the command line selects; ``ValueError`` (message for the user) otherwise."""
    all_nbs = discover_notebooks(args.notebooks, solutions=args.solutions)
    if not all_nbs:
        raise ValueError(f"no notebooks matching {_LESSON_GLOB} in {args.notebooks or ROOT / 'notebooks'}")
    return select_notebooks(all_nbs, args.only)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point. Part of the batch runner.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        0 when every notebook ran, 1 when any failed, 2 for a bad command line (nothing ran),
        130 (:data:`INTERRUPTED_EXIT`) when SIGINT or SIGTERM stopped the run.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return int(exc.code) if isinstance(exc.code, int) else 2
    if args.jobs < 1:
        print(f"error: --jobs must be >= 1 (got {args.jobs})", file=sys.stderr)
        return 2
    if args.smoke and args.mode not in (None, "paper"):
        print(f"error: --smoke runs paper mode's code path; drop --mode {args.mode} (or say --mode paper)",
              file=sys.stderr)
        return 2
    args.mode = "paper" if args.smoke else (args.mode or "quick")
    try:
        selected = _select(args)
        params = {name: parse_value(value) for name, value in args.param}
        if args.smoke:
            if "SMOKE" in params:
                raise ValueError("--smoke sets SMOKE; do not also pass -p SMOKE")
            params["SMOKE"] = True
        grid = parse_grid(args.grid)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.list:
        base = Path(args.notebooks) if args.notebooks else ROOT / "notebooks"
        for nb in selected:
            shown = ", ".join(f"{k} = {v}" for k, v in notebook_parameters(nb).items()) or "(no parameters cell)"
            print(f"{_label(nb, base)}: {shown}")
        return 0

    out = Path(args.out) if args.out else _default_out()
    try:
        results = run_notebooks(selected, mode=args.mode, params=params, grid=grid or None, jobs=args.jobs,
                                out=out, html=args.html, timeout=args.timeout, kernel=args.kernel)
    except (RunRefused, OutputFolderBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        print(f"Interrupted ({exc.signal_name}): {_counts(exc.results)}. Summary: {out / 'summary.md'}", flush=True)
        return INTERRUPTED_EXIT
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} ok. Summary: {out / 'summary.md'}")
    if grid:
        print(f"Grid: {out / 'grid.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
