"""The reports of a batch run: ``summary.md``/``summary.json`` and the grid (``grid.csv``,
``grid.md``, one ``grid_<key>.png`` per recorded number), each written atomically.

Part of the batch runner (``python -m pruninglib.run``).
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from pruninglib.run.outdir import _write_atomic
from pruninglib.run.record import flatten_records
from pruninglib.run.results import (_FAILED, _INTERRUPTED, _NOT_STARTED, RunResult, _combo_label, _fmt_value,
                                    _safe)
from pruninglib.tables import markdown_table

__all__ = ["write_summary", "write_grid"]


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
        if r.host:
            lines.append(f"- ran on host `{r.host}` (Dask worker {r.worker})")
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
    hosts = any(r.host for r in results)  # a run on Dask workers says which host ran what
    rows = []
    for r in results:
        shown = {k: v for k, v in r.params.items() if k != "MODE"}
        p = ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in shown.items())
        status = r.status + (" (earlier run)" if r.resumed else "")
        row = [r.notebook, p or "-", status, f"{r.seconds:.1f}"] + ([r.host or "-"] if hosts else [])
        rows.append(row + [_records_text(r.records) or "-"])
    headers = ["notebook", "parameters", "status", "seconds"] + (["host"] if hosts else []) + ["records"]
    lines.append(markdown_table(rows, headers=headers, align=["l", "l", "l", "r"] + (["l"] if hosts else []) + ["l"],
                                fmt=str))
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


def _progress_line(i: int, total: int, r: RunResult) -> str:
    """``[3/4] ok     01_x [SEED=1] (12.3 s)  acc=0.9``: one finished execution, for the console."""
    scalars = {k: v for k, v in flatten_records(r.records).items() if _as_number(v) is not None}
    shown = ", ".join(f"{k}={_fmt_value(v)}" for k, v in list(scalars.items())[:4])
    what = r.notebook + (f" [{_combo_label(r.combo)}]" if r.combo else "")
    tail = f"  {r.error}" if r.error else (f"  {shown}" if shown else "")
    where = f" on {r.host}" if r.host else ""
    done = " (ok in an earlier run)" if r.resumed else f" ({r.seconds:.1f} s{where})"
    return f"[{i}/{total}] {r.status:<6} {what}{done}{tail}"
