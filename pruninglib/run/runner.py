"""Run the lesson notebooks in batch and summarise what they recorded.

::

    python -m pruninglib.run [--mode quick|laptop|paper] [--smoke] [--only 01,03]
                             [-p NAME VALUE ...] [--grid NAME=v1,v2 ...] [--jobs N]
                             [--scheduler tcp://HOST:8786] [--gpus-per-task K]
                             [--html] [--out DIR] [--timeout SECONDS] [--list]

Each selected notebook is executed with papermill (``MODE`` and the ``-p`` values are
injected after its cell tagged ``parameters``) into ``runs/<timestamp>/``. The runner
then writes ``summary.md`` and ``summary.json`` with the status, wall time and the
numbers each notebook stored with :func:`pruninglib.run.record.record` (a recorded dict's
numbers under dotted names, ``xor_fraction_correct.obs``). With ``--grid`` every
combination of grid values is run for every notebook, and ``grid.csv``, ``grid.md`` and
one ``grid_<key>.png`` figure per recorded number compare the combinations.

Sweeps in parallel run as Dask futures, one task per notebook execution: ``--jobs N`` on a
``LocalCluster`` of N worker processes, ``--scheduler`` (or ``PRUNINGLIB_SCHEDULER``) on an
existing cluster, ``--gpus-per-task K`` with the Dask resource ``GPU=K``. Tasks ship the
notebook and its parameters and return the executed notebook and its records; this process
writes every output. ``--jobs 1`` without a scheduler runs the notebooks in this process.
Rerunning into the same ``--out`` skips the grid points already ``ok`` there.

A failing notebook does not stop the others; the summary names the failing cell and
its error (and, on Dask, the host that ran it), and the exit status is 1. Bad command lines
(unknown notebook, mode or parameter name, ``-p MODE``, a parameter that a selected notebook
does not declare, an output folder that cannot be written or that another run is using, a
scheduler that does not answer) exit with status 2 before anything runs, and say what to do
instead. Ctrl-C (SIGINT) or SIGTERM stops the kernels (cancels the futures), marks the
interrupted notebooks and the ones not started, writes the summaries and exits with status 130.

The runner is split into small modules, one job each: :mod:`~pruninglib.run.results` (what a
run gives back), :mod:`~pruninglib.run.notebooks` (discovery and parameters),
:mod:`~pruninglib.run.tasks` (one execution per grid point), :mod:`~pruninglib.run.stopping`
(SIGINT/SIGTERM), :mod:`~pruninglib.run.kernels` and :mod:`~pruninglib.run.execute` (papermill),
:mod:`~pruninglib.run.outdir` (the output folder and its lock), :mod:`~pruninglib.run.reports`
(summary and grid), :mod:`~pruninglib.run.resume`, :mod:`~pruninglib.run.cluster` and
:mod:`~pruninglib.run.worker` (Dask), :mod:`~pruninglib.run.api` (``run_notebooks``) and
:mod:`~pruninglib.run.cli` (``main``). This module gathers their public names.

The same runner is available from Python::

    from pruninglib.run import run_notebooks, discover_notebooks
    results = run_notebooks(discover_notebooks()[:1], mode="quick", params={"SEED": 1})
"""
from __future__ import annotations

import sys

from pruninglib.run.api import run_notebooks
from pruninglib.run.cli import main
from pruninglib.run.cluster import SCHEDULER_ENV
from pruninglib.run.notebooks import (default_kernel, discover_notebooks, notebook_parameters, parse_grid,
                                      parse_value, select_notebooks)
from pruninglib.run.reports import write_grid, write_summary
from pruninglib.run.results import (INTERRUPTED_EXIT, MODES, ROOT, OutputFolderBusy, RunInterrupted, RunRefused,
                                    RunResult, SchedulerUnreachable)
from pruninglib.run.tasks import task_key

__all__ = [
    "MODES",
    "ROOT",
    "INTERRUPTED_EXIT",
    "SCHEDULER_ENV",
    "RunResult",
    "RunRefused",
    "SchedulerUnreachable",
    "OutputFolderBusy",
    "RunInterrupted",
    "discover_notebooks",
    "select_notebooks",
    "notebook_parameters",
    "parse_value",
    "parse_grid",
    "default_kernel",
    "task_key",
    "run_notebooks",
    "write_summary",
    "write_grid",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())
