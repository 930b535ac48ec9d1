"""Benchmark 6: what the whole collection costs, read from the latest batch run.

``python -m pruninglib.run`` (``make run``) executes every lesson notebook and writes
``runs/<timestamp>/summary.json``: one record per notebook execution with its ``notebook``,
``params`` (``MODE`` included), ``status``, ``seconds`` (wall time, kernel start included),
``records`` and ``error``. This benchmark runs nothing itself: it finds the newest summary of a
quick-mode run and tabulates the wall time of each notebook and the total against the CI budget.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from bench.common import md_table

__all__ = ["RUNS_DIR", "CI_BUDGET_S", "NO_RUNS_MESSAGE", "find_summaries", "latest_summary", "run"]

#: Where ``make run`` writes its run folders.
RUNS_DIR: Path = Path(__file__).resolve().parent.parent / "runs"

#: CI runs every notebook in quick mode and must stay under 25 minutes.
CI_BUDGET_S: float = 25 * 60

#: Shown when there is no run to read.
NO_RUNS_MESSAGE = "No notebook run found: run `make run` first (it writes runs/<timestamp>/summary.json)."


def find_summaries(runs_dir: str | Path | None = None) -> list[Path]:
    """Every readable ``<runs_dir>/*/summary.json``, newest first (by modification time)."""
    folder = Path(runs_dir) if runs_dir is not None else RUNS_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("*/summary.json") if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _load(path: Path) -> list[dict[str, Any]] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, list) or not all(isinstance(r, dict) and "notebook" in r for r in data):
        return None
    return data


def _mode(records: list[dict[str, Any]]) -> str:
    modes = {str((r.get("params") or {}).get("MODE", "?")) for r in records}
    return modes.pop() if len(modes) == 1 else "mixed"


def latest_summary(runs_dir: str | Path | None = None, mode: str = "quick"
                   ) -> tuple[Path | None, list[dict[str, Any]], Path | None]:
    """The newest summary whose runs are all in ``mode``.

    Returns:
        ``(path, records, newest_path_of_any_mode)``; ``(None, [], ...)`` when no summary of
        that mode exists.
    """
    newest_any = None
    for path in find_summaries(runs_dir):
        recs = _load(path)
        if recs is None:
            continue
        newest_any = newest_any or path
        if recs and _mode(recs) == mode:
            return path, recs, newest_any
    return None, [], newest_any


def run(quick: bool = False, *, runs_dir: str | Path | None = None, mode: str = "quick") -> dict:
    """Tabulate the wall time of each notebook of the latest ``mode`` run.

    Args:
        quick: accepted for the common interface; reading a file costs nothing either way.
        runs_dir: the folder of run folders (default ``<repository>/runs``).
        mode: which run mode to report (the brief asks for quick mode, what CI runs).

    Returns:
        ``{"markdown", "found", "path", "rows", "total_s"}``.
    """
    path, recs, newest_any = latest_summary(runs_dir, mode)
    if path is None:
        msg = NO_RUNS_MESSAGE
        if newest_any is not None:
            msg = (f"No {mode}-mode notebook run found (newest run: `{newest_any.parent.name}`, "
                   f"mode {_mode(_load(newest_any) or [])}): run `make run` first (MODE={mode}).")
        return {"markdown": msg, "found": False, "path": None, "rows": [], "total_s": None}

    extra_params = any(set((r.get("params") or {})) - {"MODE"} for r in recs)
    headers = ["notebook"] + (["parameters"] if extra_params else []) + ["status", "wall s", "error"]
    rows = []
    for r in recs:
        params = ", ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items() if k != "MODE")
        err = r.get("error") or ""
        err = err if len(err) <= 80 else err[:77] + "..."
        rows.append([r["notebook"]] + ([params or "-"] if extra_params else [])
                    + [r.get("status", "?"), float(r.get("seconds", 0.0)), err or "-"])
    total = sum(float(r.get("seconds", 0.0)) for r in recs)
    n_ok = sum(r.get("status") == "ok" for r in recs)
    when = _dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
    totals = [["**total**"] + ([""] if extra_params else [])
              + [f"{n_ok}/{len(recs)} ok", total, "-"]]
    md = [f"Read from `{path.parent.name}/summary.json` (written {when}; mode {mode}): wall time of "
          "each notebook execution, kernel start included, as measured by `python -m pruninglib.run` "
          "on the machine that ran it (not re-measured here).", "",
          md_table(headers, rows + totals), "",
          f"Total {total:.0f} s = {total / 60:.1f} min against the CI budget of "
          f"{CI_BUDGET_S / 60:.0f} min for every notebook in quick mode "
          f"({'within' if total <= CI_BUDGET_S else 'OVER'} budget)."]
    return {"markdown": "\n".join(md), "found": True, "path": str(path), "rows": recs,
            "total_s": total}
