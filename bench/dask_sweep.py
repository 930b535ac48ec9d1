"""Benchmark: a sweep serially and on 2 local Dask workers (issue 19), wall time ratio.

The same 4-point grid (``SEED=0,1`` x ``RATIO=0.25,0.5``) over lesson 00 in quick mode, run twice
back to back in this process with :func:`pruninglib.run.run_notebooks`: once with ``jobs=1``
(one notebook after the other, in this process) and once with ``jobs=2`` (a Dask
``LocalCluster`` of two worker processes, cluster start-up included in its wall time). Each run
writes into a fresh temporary folder, so nothing is resumed. ``--quick`` runs a 2-point grid over
a throwaway notebook that does a second of NumPy work instead of lesson 00: a smoke test of this
code, whose ratio says little.

On a 2-core machine the ratio can approach 2x only when each notebook keeps one core busy; kernel
start-up, the cluster's own start and the other users of a shared machine pull it down. The two
runs are sequential (not interleaved), so a load change between them enters the ratio; the section
says so when the notebooks themselves ran at different speeds in the two runs.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import md_table

__all__ = ["GRID", "QUICK_GRID", "run"]

#: The grid over lesson 00 (it declares SEED and RATIO).
GRID: dict[str, list[Any]] = {"SEED": [0, 1], "RATIO": [0.25, 0.5]}

#: The grid of the smoke test (``--quick``) over the throwaway notebook.
QUICK_GRID: dict[str, list[Any]] = {"SEED": [0, 1]}

_QUICK_CELL = ("import time\nimport numpy as np\nrng = np.random.default_rng(SEED)\n"
               "a = rng.standard_normal((300, 300))\nt0 = time.perf_counter()\nn = 0\n"
               "while time.perf_counter() - t0 < 1.0:\n    a = np.tanh(a @ a / 300)\n    n += 1\n"
               "from pruninglib import record\nrecord('matmuls', n)")


def _quick_notebook(folder: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('MODE = "quick"\nSEED = 0', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(_QUICK_CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "00_bench_sweep.ipynb"
    nbformat.write(nb, str(path))
    return path


def _timed(notebook: Path, grid: dict[str, list[Any]], jobs: int, out: Path) -> tuple[float, list[Any]]:
    from pruninglib.run import run_notebooks

    t0 = time.perf_counter()
    results = run_notebooks([notebook], grid=grid, jobs=jobs, out=out, progress=False, resume=False)
    return time.perf_counter() - t0, results


def run(quick: bool = False) -> dict:
    """Time the grid with ``jobs=1`` and ``jobs=2``; the serial-to-parallel wall time ratio.

    Returns:
        ``{"markdown", "serial_s", "parallel_s", "ratio", "points", "all_ok"}``.
    """
    from pruninglib.run import ROOT

    os.environ.setdefault("PRUNINGLIB_STATIC", "1")
    with tempfile.TemporaryDirectory(prefix="pruning-bench-dask-") as tmp:
        folder = Path(tmp)
        notebook = _quick_notebook(folder) if quick else ROOT / "notebooks" / "00_tour.ipynb"
        grid = QUICK_GRID if quick else GRID
        serial_s, serial = _timed(notebook, grid, 1, folder / "serial")
        parallel_s, parallel = _timed(notebook, grid, 2, folder / "parallel")
    points = len(serial)
    all_ok = all(r.ok for r in serial + parallel)
    ratio = serial_s / parallel_s if parallel_s > 0 else float("nan")
    rows = [["serial (jobs 1, in process)", points, serial_s, sum(r.seconds for r in serial),
             f"{sum(r.ok for r in serial)}/{points}"],
            ["2 Dask workers (jobs 2, LocalCluster)", points, parallel_s, sum(r.seconds for r in parallel),
             f"{sum(r.ok for r in parallel)}/{points}"]]
    what = ("a throwaway notebook doing 1 s of NumPy work per point (`--quick`: a smoke test, the ratio says "
            "little)" if quick else "lesson 00 (`notebooks/00_tour.ipynb`) in quick mode")
    grid_text = " x ".join(f"{k}={','.join(map(str, v))}" for k, v in grid.items())
    md = [f"The grid {grid_text} ({points} points) over {what}, run serially and then on a Dask LocalCluster "
          f"of 2 worker processes, back to back in one process on {os.cpu_count()} CPU core(s). Wall time "
          "of the whole `run_notebooks` call (cluster start-up included); the notebook column sums each "
          "execution's own wall time (kernel start included).", "",
          md_table(["run", "points", "wall s", "sum of notebook s", "ok"], rows), "",
          f"Serial / parallel wall time: **{ratio:.2f}x**."]
    mean_serial = sum(r.seconds for r in serial) / max(1, points)
    mean_parallel = sum(r.seconds for r in parallel) / max(1, points)
    if ratio > 2:
        md += ["", f"More than 2 workers can give: each notebook itself ran faster in the parallel run "
               f"({mean_parallel:.0f} s against {mean_serial:.0f} s on average), so the ratio is not parallelism "
               "alone. The two runs are sequential, not interleaved, so a change of load on a shared machine "
               "between them enters the ratio; and each LocalCluster worker caps its kernel to "
               f"{max(1, (os.cpu_count() or 1) // 2)} BLAS/OpenMP thread(s) (`OMP_NUM_THREADS`, what `--jobs 2` "
               "does), while the serial run leaves torch's default, which oversubscribes a loaded machine."]
    else:
        md += ["", "Two workers can give at most 2x; kernel and cluster start-up, and other load on a shared "
               f"machine, pull it down (mean notebook wall time {mean_serial:.0f} s serially, "
               f"{mean_parallel:.0f} s on the workers)."]
    if not all_ok:
        md += ["", "Some executions FAILED: " + "; ".join(f"{r.notebook} {r.combo}: {r.error}"
                                                         for r in serial + parallel if not r.ok)]
    return {"markdown": "\n".join(md), "serial_s": serial_s, "parallel_s": parallel_s, "ratio": ratio,
            "points": points, "all_ok": all_ok}
