"""``run_notebooks``: a whole batch run, from the checks to the summaries.

Part of the batch runner (``python -m pruninglib.run``). One path runs a sweep in parallel: Dask
futures, on a ``LocalCluster`` for ``jobs > 1`` or on the cluster of ``scheduler``
(:mod:`pruninglib.run.cluster`); ``jobs=1`` without a scheduler runs the notebooks one after the
other in this process. Either way the points already ``ok`` in ``out`` are kept
(:mod:`pruninglib.run.resume`).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from pruninglib.run.execute import _execute, _not_started, _unfinished
from pruninglib.run.kernels import _release_kernels
from pruninglib.run.notebooks import _validate
from pruninglib.run.outdir import _default_out, _locked_output
from pruninglib.run.reports import _progress_line, write_grid, write_summary
from pruninglib.run.results import RunInterrupted, RunRefused, RunResult
from pruninglib.run.resume import _split_done
from pruninglib.run.stopping import _STOP, _stopping_on_signals
from pruninglib.run.tasks import _make_tasks, _modes, _Task

__all__ = ["run_notebooks"]


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
    scheduler: str | None = None,
    gpus_per_task: int | None = None,
    resume: bool = True,
) -> list[RunResult]:
    """Execute notebooks with papermill and write the run summaries.

    Part of the batch runner (``python -m pruninglib.run``).

    Args:
        notebooks: the notebooks to run.
        mode: the ``MODE`` injected into every notebook (one of :data:`~pruninglib.run.results.MODES`).
        params: further parameters to inject (every selected notebook must assign them in
            its ``parameters`` cell; ``MODE`` is set with ``mode``).
        grid: ``name -> values``; every combination is run for every notebook.
        jobs: Dask worker processes of a ``LocalCluster`` on this machine (1 without
            ``scheduler`` or ``gpus_per_task``: serially, in this process).
        out: output folder (default ``<repository>/runs/<YYYYmmdd-HHMMSS>``); locked for the run.
        html: also export each executed notebook as standalone HTML.
        timeout: per-cell execution timeout in seconds (``None``: no limit).
        kernel: Jupyter kernel name (default: :func:`~pruninglib.run.notebooks.default_kernel`,
            chosen where the notebook runs).
        progress: print a header line, a tqdm bar and one line per finished notebook.
        scheduler: address of a Dask scheduler (``tcp://HOST:8786``) whose workers run the tasks.
        gpus_per_task: run each task on this many GPUs (the Dask resource ``GPU``; each notebook
            sees only its own devices through ``CUDA_VISIBLE_DEVICES``).
        resume: keep the grid points already ``ok`` in ``out`` (same notebook, mode and
            parameters, executed notebook still there) and run only the others.

    Returns:
        One :class:`~pruninglib.run.results.RunResult` per (notebook, combination), in notebook order.

    Raises:
        RunRefused: (a ``ValueError``) before anything ran: unknown mode or parameter, ``MODE``
            in ``params``, a parameter a notebook does not declare, no notebook, ``jobs < 1``,
            an empty grid axis, an output folder that cannot be written, a scheduler that does
            not answer (:class:`~pruninglib.run.results.SchedulerUnreachable`).
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
    if gpus_per_task is not None and gpus_per_task < 1:
        raise RunRefused(f"gpus_per_task (--gpus-per-task) must be >= 1, got {gpus_per_task}")
    if any(not v for v in grid.values()):
        raise RunRefused("every --grid axis needs at least one value")
    _validate(notebooks, mode, params, grid)

    # Absolute: papermill changes the working directory while a notebook runs.
    out_dir = Path(out).absolute() if out is not None else _default_out()
    tasks = _make_tasks(notebooks, mode, params, grid, out_dir, kernel, timeout, html)
    with contextlib.ExitStack() as stack:
        remote = None
        if scheduler:
            from pruninglib.run.cluster import check_gpu_workers, connect

            remote = stack.enter_context(contextlib.closing(connect(scheduler)))  # fails fast, nothing written
            if gpus_per_task:
                check_gpu_workers(remote, gpus_per_task, scheduler)
        stack.enter_context(_locked_output(out_dir))
        kept, todo = _split_done(tasks, out_dir) if resume else ({}, list(tasks))
        how = _how(todo, jobs, scheduler, gpus_per_task)
        if progress:
            print(f"Running {len(todo)} notebook execution(s), mode {_modes(tasks)}, {how} -> {out_dir}", flush=True)
            if kept:
                print(f"Resuming: {len(kept)} of {len(tasks)} already ok in {out_dir}, not rerun", flush=True)
        results, stopped = _run_and_summarise(tasks, kept, todo, jobs, remote, scheduler, gpus_per_task,
                                              progress, out_dir, list(grid))
    if stopped is not None:
        raise RunInterrupted(results, out_dir, stopped)
    return results


def _how(todo: list[_Task], jobs: int, scheduler: str | None, gpus: int | None) -> str:
    if scheduler:
        return f"on the Dask cluster at {scheduler}"
    if _parallel(todo, jobs, gpus):
        return f"jobs {jobs} (Dask LocalCluster)"
    return "jobs 1"


def _parallel(todo: list[_Task], jobs: int, gpus: int | None) -> bool:
    """Whether the tasks go to a LocalCluster (several workers, or GPUs to hand out)."""
    return bool(todo) and (gpus is not None or (jobs > 1 and len(todo) > 1))


def _run_and_summarise(tasks: list[_Task], kept: dict[int, RunResult], todo: list[_Task], jobs: int,
                       remote: Any, scheduler: str | None, gpus: int | None, progress: bool, out_dir: Path,
                       grid_keys: list[str]) -> tuple[list[RunResult], str | None]:
    """Execute the tasks still to run and write the summaries of all, stopping cleanly on
    SIGINT/SIGTERM; ``(results, name of the stop signal or None)``."""
    with _stopping_on_signals():
        done: list[RunResult] | None = None
        try:
            if remote is not None and todo:
                from pruninglib.run.cluster import announce, run_futures

                if progress:
                    announce(remote, f"scheduler {scheduler}")
                done = run_futures(todo, remote, progress, gpus)
            elif _parallel(todo, jobs, gpus):
                from pruninglib.run.cluster import announce, local_cluster, run_futures

                with local_cluster(min(jobs, len(todo)), gpus) as client:
                    if progress:
                        announce(client, "LocalCluster on 127.0.0.1")
                    done = run_futures(todo, client, progress, gpus)
            else:
                done = _run_serial(todo, progress)
        except KeyboardInterrupt:  # while a cluster started or closed
            if done is None:  # nothing was submitted yet
                done = [_not_started(t) for t in todo]
        _STOP.raise_when_idle = False  # a stop signal from here on is only noted: the summaries get written
        by_index = {**kept, **{t.index: r for t, r in zip(todo, done)}}
        results = [by_index[t.index] for t in tasks]
        write_summary(results, out_dir, mode=_modes(tasks))
        if grid_keys:
            write_grid(results, out_dir, grid_keys)
        return results, _STOP.signal


def _run_serial(tasks: list[_Task], progress: bool) -> list[RunResult]:
    """Execute the tasks one after the other in this process; after a stop request the rest
    come back ``not started``."""
    from tqdm.auto import tqdm

    results: list[RunResult] = []
    bar = tqdm(total=len(tasks), unit="notebook", desc="notebooks", disable=not progress or len(tasks) < 2)
    try:
        for t in tasks:
            results.append(_execute(t))
            bar.update(1)
            if progress:
                bar.write(_progress_line(len(results), len(tasks), results[-1]))
    except KeyboardInterrupt:  # the stop request landed outside papermill
        _release_kernels(kill=True)
    finally:
        bar.close()
    if len(results) < len(tasks):
        results.append(_unfinished(tasks[len(results)]))
    return results + [_not_started(t) for t in tasks[len(results):]]
