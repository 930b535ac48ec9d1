"""The command line of the batch runner: ``python -m pruninglib.run`` (see :mod:`pruninglib.run.runner`).

Part of the batch runner. Exit status: 0 when every notebook ran, 1 when any failed, 2 for a bad
command line (nothing ran), 130 when SIGINT or SIGTERM stopped the run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from pruninglib.run.api import run_notebooks
from pruninglib.run.cluster import SCHEDULER_ENV
from pruninglib.run.notebooks import _LESSON_GLOB, _label, discover_notebooks, notebook_parameters, parse_grid, \
    parse_value, select_notebooks
from pruninglib.run.outdir import _default_out
from pruninglib.run.reports import _counts
from pruninglib.run.results import INTERRUPTED_EXIT, MODES, ROOT, OutputFolderBusy, RunInterrupted, RunRefused

__all__ = ["main"]


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
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="Dask worker processes on this machine (a LocalCluster); 1 (the default) runs the "
                        "notebooks one after the other in this process")
    p.add_argument("--scheduler", metavar="tcp://HOST:8786",
                   help=f"run the tasks on the workers of this Dask scheduler (default: ${SCHEDULER_ENV} when set)")
    p.add_argument("--gpus-per-task", type=int, metavar="K",
                   help="give each notebook K GPUs: Dask resource GPU=K (start workers with --resources GPU=1), "
                        "the notebook sees only its devices through CUDA_VISIBLE_DEVICES")
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
    if args.gpus_per_task is not None and args.gpus_per_task < 1:
        print(f"error: --gpus-per-task must be >= 1 (got {args.gpus_per_task})", file=sys.stderr)
        return 2
    scheduler = args.scheduler or os.environ.get(SCHEDULER_ENV) or None
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
                                out=out, html=args.html, timeout=args.timeout, kernel=args.kernel,
                                scheduler=scheduler, gpus_per_task=args.gpus_per_task)
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
