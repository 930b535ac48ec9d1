"""Lesson timings taken from run summaries, never guessed.

Every lesson's first Markdown cell carries a line ``**Time on a 2-core CPU.** ...``.
``python -m pruninglib.run.lesson_times`` rewrites that line from the newest successful run of each
lesson in each mode found in ``runs/*/summary.json`` (written by :mod:`pruninglib.run`),
naming the run it came from.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat

__all__ = ["latest_timings", "timing_line", "update_notebooks", "main"]

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\*\*Time on a 2-core CPU\.\*\*.*$", re.M)
ENTRY = re.compile(r"\b(quick|laptop|paper) ([0-9.]+) min \(run ([^)\s]+)\)")


def parse_line(line: str) -> dict[str, tuple[float, str]]:
    """The measured entries of an existing timing line, ``{mode: (seconds, run)}`` (inverse of
    :func:`timing_line`), so a run folder that is gone does not erase what it measured."""
    return {m: (float(v) * 60, run) for m, v, run in ENTRY.findall(line)}


def latest_timings(runs: Path = ROOT / "runs") -> dict[str, dict[str, tuple[float, str]]]:
    """``{notebook stem: {mode: (seconds, run folder name)}}`` from the newest ok, un-gridded runs.

    Part of the batch runner (``python -m pruninglib.run``); no lesson calls it.
    """
    out: dict[str, dict[str, tuple[float, str]]] = {}
    for summary in sorted(runs.glob("*/summary.json")):  # folder names sort by time stamp
        for r in json.loads(summary.read_text()):
            params = r.get("params", {})
            if r.get("status") != "ok" or set(params) - {"MODE"}:
                continue
            out.setdefault(r["notebook"], {})[params.get("MODE", "quick")] = (float(r["seconds"]), summary.parent.name)
    return out


def timing_line(t: dict[str, tuple[float, str]]) -> str:
    """The Markdown line for one lesson's timings.

    Part of the batch runner (``python -m pruninglib.run``); no lesson calls it.
    """
    parts = []
    for mode in ("quick", "laptop", "paper"):
        if mode in t:
            sec, run = t[mode]
            parts.append(f"{mode} {sec / 60:.1f} min (run {run})")
        elif mode != "paper":
            parts.append(f"{mode}: not measured yet")
    return "**Time on a 2-core CPU.** " + "; ".join(parts) + ". Measured by `python -m pruninglib.run`."


def update_notebooks(notebooks: Path = ROOT / "notebooks", runs: Path = ROOT / "runs") -> list[str]:
    """Rewrite the timing line of every lesson that has one; return the stems changed.

    Part of the batch runner (``python -m pruninglib.run``); no lesson calls it.
    """
    timings = latest_timings(runs)
    changed = []
    for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        t = timings.get(path.stem)
        if not t:
            continue
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            found = LINE.search(cell.source) if cell.cell_type == "markdown" else None
            if found:
                new = LINE.sub(timing_line({**parse_line(found.group(0)), **t}), cell.source, count=1)
                if new != cell.source:
                    cell.source = new
                    nbformat.write(nb, path)
                    changed.append(path.stem)
                break
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m pruninglib.run.lesson_times``: rewrite every lesson's "Time on a 2-core CPU" line from runs/. Part of the batch runner."""
    ap = argparse.ArgumentParser(prog="python -m pruninglib.run.lesson_times", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "runs")
    ap.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    a = ap.parse_args(argv)
    changed = update_notebooks(a.notebooks, a.runs)
    print("updated:", ", ".join(changed) if changed else "nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
