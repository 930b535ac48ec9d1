"""What one notebook execution gives back: :class:`RunResult`, the statuses, the run's errors.

Part of the batch runner (``python -m pruninglib.run``); the other modules of
:mod:`pruninglib.run` build, execute and report these.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pruninglib.run.record import flatten_records

__all__ = [
    "MODES",
    "ROOT",
    "INTERRUPTED_EXIT",
    "RunResult",
    "RunRefused",
    "OutputFolderBusy",
    "RunInterrupted",
    "SchedulerUnreachable",
]

#: Run modes every lesson understands (its ``MODE`` parameter).
MODES: tuple[str, ...] = ("quick", "laptop", "paper")

#: Repository root (the folder holding ``pruninglib/`` and ``notebooks/``).
ROOT: Path = Path(__file__).resolve().parents[2]

#: Exit status of ``python -m pruninglib.run`` stopped by SIGINT or SIGTERM (128 + SIGINT).
INTERRUPTED_EXIT = 130

_OK, _FAILED, _INTERRUPTED, _NOT_STARTED = "ok", "FAILED", "interrupted", "not started"
_SUMMARY_KEYS = ("notebook", "params", "status", "seconds", "records", "error")


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
        host: the machine (host name) that executed it, when it ran on a Dask worker.
        worker: the Dask worker's address, when it ran on one.
        resumed: ``True`` when an earlier run into the same folder had it ``ok`` and it was not rerun.
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
    host: str | None = None
    worker: str | None = None
    resumed: bool = False

    @property
    def ok(self) -> bool:
        """Whether the notebook ran to the end without an error."""
        return self.status == _OK

    def summary(self) -> dict[str, Any]:
        """The JSON-ready record written to ``summary.json``.

        Its ``records`` hold every value under its recorded name and, for a recorded dict,
        also each of its values under the dotted name the summaries show (``acc.obs``). A run
        on Dask workers adds ``host`` and ``worker`` (who ran it).
        """
        d = asdict(self)
        d["records"] = _with_flat_names(self.records)
        out = {k: d[k] for k in _SUMMARY_KEYS}
        if self.host is not None or self.worker is not None:
            out.update(host=self.host, worker=self.worker)
        return out


class RunRefused(ValueError):
    """A batch run refused before anything ran; the message says what to do instead.

    Part of the batch runner: unknown mode or parameter, ``-p MODE``, a parameter that a
    selected notebook does not declare, no notebook selected, an output folder that cannot
    be written.
    """


class SchedulerUnreachable(RunRefused):
    """The Dask scheduler named by ``--scheduler`` (or ``PRUNINGLIB_SCHEDULER``) did not answer.

    Part of the batch runner; raised before anything ran or was written.
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


# ------------------------------------------------------------------ small shared helpers


def _with_flat_names(records: Mapping[str, Any]) -> dict[str, Any]:
    """Every record under its name, followed (for a dict) by its values under dotted names."""
    out: dict[str, Any] = {}
    for k, v in records.items():
        out[k] = v
        if isinstance(v, Mapping):
            for name, value in flatten_records({k: v}).items():
                out.setdefault(name, value)
    return out


def _without_flat_names(records: Mapping[str, Any]) -> dict[str, Any]:
    """Undo :func:`_with_flat_names` (the records of a ``summary.json`` row, as recorded)."""
    flat: set[str] = set()
    for k, v in records.items():
        if isinstance(v, Mapping):
            flat.update(name for name in flatten_records({k: v}) if name != k)
    return {k: v for k, v in records.items() if k not in flat}


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _combo_label(combo: dict[str, Any], sep: str = ", ") -> str:
    """``RATIO=0.25, OPT='adam'``: values as Python literals, so ``0.25`` and ``'0.25'`` differ."""
    return sep.join(f"{k}={v!r}" for k, v in combo.items())


def _safe(text: str) -> str:
    return re.sub(r"[^\w.=+-]+", "-", text).strip("-") or "x"


def _first_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""
