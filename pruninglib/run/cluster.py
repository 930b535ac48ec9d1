"""Running a sweep's tasks as Dask futures: on a ``LocalCluster`` (``--jobs N``) or an existing
cluster (``--scheduler tcp://HOST:8786`` / ``PRUNINGLIB_SCHEDULER``).

Part of the batch runner (``python -m pruninglib.run``). The client (this process) ships each
notebook's content and parameters (:func:`pruninglib.run.worker.run_task`) and writes everything
that comes back (executed notebooks, HTML, later the summary and the grid) into the output
folder, so workers need no shared filesystem. A task whose worker is lost is run again elsewhere
(``retries=1``, and Dask reschedules it); a failing notebook fails only its own task. On
SIGINT/SIGTERM the queued futures are cancelled and the running notebooks interrupted; what they
had done comes back marked. ``distributed`` is imported only here, on first use.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from pruninglib.run.execute import _crashed, _not_started, _unfinished
from pruninglib.run.outdir import _write_atomic
from pruninglib.run.reports import _progress_line
from pruninglib.run.results import _FAILED, _INTERRUPTED, _NOT_STARTED, RunResult, SchedulerUnreachable
from pruninglib.run.stopping import _STOP, _STOP_WAIT_S
from pruninglib.run.tasks import _Task
from pruninglib.run.worker import LOCAL_GPUS_ENV, run_task

__all__ = ["SCHEDULER_ENV", "CONNECT_TIMEOUT_S", "connect", "check_gpu_workers", "local_cluster", "announce",
           "run_futures"]

#: Environment variable naming the scheduler when ``--scheduler`` is not given.
SCHEDULER_ENV = "PRUNINGLIB_SCHEDULER"

#: How long the client tries to reach a scheduler before it gives up with a clear message.
CONNECT_TIMEOUT_S = 10.0


def _unreachable(address: str, exc: BaseException, timeout: float) -> SchedulerUnreachable:
    return SchedulerUnreachable(
        f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({type(exc).__name__}: {exc}). "
        f"Start one there with `dask scheduler` and workers with `dask worker {address} --nworkers 1 "
        f"--nthreads 1`, check the address (tcp://HOST:8786), or drop --scheduler (and unset {SCHEDULER_ENV}) "
        f"to run on this machine with --jobs N")


def connect(address: str, timeout: float | None = None) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address``. Part of the batch runner (``--scheduler``).

    Args:
        address: ``tcp://HOST:8786``.
        timeout: seconds to try (default :data:`CONNECT_TIMEOUT_S`).

    Raises:
        SchedulerUnreachable: (a ``RunRefused``) no scheduler answered within ``timeout`` seconds,
            or the address is malformed; the message says how to start one.
    """
    from distributed import Client

    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except Exception as exc:  # OSError/TimeoutError for nobody there, ValueError for a bad address
        raise _unreachable(address, exc, timeout) from exc


def check_gpu_workers(client: Any, gpus: int, address: str) -> None:
    """Refuse GPU tasks that no worker of ``client`` could ever take (they would wait forever).

    Part of the batch runner (``--gpus-per-task`` with ``--scheduler``).

    Raises:
        SchedulerUnreachable: workers are there, and none offers the resource ``GPU=gpus``.
    """
    workers = client.scheduler_info().get("workers", {})
    if workers and not any(float(w.get("resources", {}).get("GPU", 0)) >= gpus for w in workers.values()):
        raise SchedulerUnreachable(
            f"--gpus-per-task {gpus}: none of the {len(workers)} worker(s) of {address} offers GPU={gpus}. "
            f"Start the workers with `dask worker {address} --nworkers 1 --nthreads 1 --resources GPU=1` "
            f"(one per GPU), or drop --gpus-per-task")


@contextlib.contextmanager
def local_cluster(jobs: int, gpus: int | None = None) -> Iterator[Any]:
    """A client of a fresh ``LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True)``
    on 127.0.0.1, closed (its workers and their notebooks stopped) on exit. Part of the batch runner.

    Each worker gets its share of the CPU threads (``OMP_NUM_THREADS``); with ``gpus``, the
    resource ``GPU=gpus`` and its own devices.
    """
    from distributed import Client, LocalCluster

    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    kwargs: dict[str, Any] = {}
    if gpus:
        env[LOCAL_GPUS_ENV] = str(gpus)
        kwargs["resources"] = {"GPU": gpus}
    cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR, env=env, **kwargs)
    try:
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def announce(client: Any, where: str) -> None:
    """Print the scheduler, its workers and the dashboard address (the Dask dashboard needs bokeh)."""
    import importlib.util

    info = client.scheduler_info()
    n = len(info.get("workers", {}))
    link = client.dashboard_link
    hint = "" if importlib.util.find_spec("bokeh") else " (the page needs `pip install bokeh` where the scheduler runs)"
    print(f"Dask: {where}, {n} worker(s); dashboard {link}{hint}", flush=True)


def _payload(t: _Task, gpus: int | None, stop_event: str, stop_signal: str) -> dict[str, Any]:
    return {"name": t.name, "file_name": Path(t.output_path).name,
            "notebook": Path(t.input_path).read_text(encoding="utf-8"), "parameters": dict(t.parameters),
            "kernel": t.kernel, "timeout": t.timeout, "html": t.html, "cwd": str(Path(t.input_path).parent),
            "gpus": gpus or 0, "stop_event": stop_event, "stop_signal": stop_signal}


def _receive(fut: Any, t: _Task) -> RunResult:
    """The result of one future, its executed notebook (and HTML) written into the output folder."""
    if fut.cancelled():
        return _not_started(t)
    if not fut.done():
        return _unfinished(t)
    try:
        got = fut.result()
    except BaseException as exc:  # lost twice, or the task itself broke: only this task fails
        return _unfinished(t) if _STOP.requested else _crashed(t, exc)
    host, worker = got.get("host"), got.get("worker")
    if got.get("status") == _NOT_STARTED and "result" not in got:
        res = _not_started(t)
    elif "result" not in got:  # the notebook process died without a report
        res = _unfinished(t) if got.get("status") == _INTERRUPTED else RunResult(
            notebook=t.name, params=dict(t.parameters), status=_FAILED, seconds=0.0, error=got.get("error"),
            input_path=t.input_path, combo=dict(t.combo))
    else:
        r = got["result"]
        res = RunResult(notebook=t.name, params=dict(t.parameters), status=r["status"], seconds=r["seconds"],
                        records=r.get("records") or {}, error=r.get("error"), input_path=t.input_path,
                        combo=dict(t.combo), failed_source=r.get("failed_source"))
        if res.status == _NOT_STARTED:
            res = _not_started(t)
        if got.get("notebook") is not None:
            res.output_path = str(_write_atomic(Path(t.output_path), got["notebook"]))
        if got.get("html") is not None:
            res.html_path = str(_write_atomic(Path(t.output_path).with_suffix(".html"), got["html"]))
    res.host, res.worker = host, worker
    return res


def run_futures(tasks: list[_Task], client: Any, progress: bool, gpus: int | None = None) -> list[RunResult]:
    """Execute the tasks as Dask futures; results in task order, whatever became of each.

    After a stop request (SIGINT/SIGTERM, a ``KeyboardInterrupt`` here) the queued futures are
    cancelled (``not started``), the running notebooks are interrupted through the run's stop
    event and their reports awaited (bounded), the rest come back ``interrupted``.
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    run_id = uuid.uuid4().hex[:12]
    stop_event, stop_signal = f"pruninglib-stop-{run_id}", f"pruninglib-signal-{run_id}"
    futures: dict[str, tuple[Any, _Task]] = {}  # by key: Dask futures are not meant as dict keys
    results: dict[int, RunResult] = {}
    bar = tqdm(total=len(tasks), unit="notebook", desc="notebooks", disable=not progress)

    def take(fut: Any) -> None:
        t = futures[fut.key][1]
        if t.index in results:
            return
        results[t.index] = _receive(fut, t)
        bar.update(1)
        if progress:
            bar.write(_progress_line(len(results), len(tasks), results[t.index]))

    try:
        for t in tasks:
            fut = client.submit(run_task, _payload(t, gpus, stop_event, stop_signal), pure=False, retries=1,
                                key=f"pruninglib-{run_id}-{t.index}", resources={"GPU": gpus} if gpus else None)
            futures[fut.key] = (fut, t)
        for fut in as_completed([f for f, _ in futures.values()], loop=client.loop):
            take(fut)
            if _STOP.requested:
                raise KeyboardInterrupt(_STOP.signal)
    except KeyboardInterrupt:
        _stop_futures(client, [f for f, _ in futures.values()], stop_event, stop_signal)
        for fut, _ in futures.values():
            take(fut)
    finally:
        bar.close()
    return [results.get(t.index) or _not_started(t) for t in tasks]


def _stop_futures(client: Any, futures: list[Any], stop_event: str, stop_signal: str) -> None:
    """Cancel what has not started, interrupt what runs, and wait (bounded) for the reports."""
    from distributed import Event, Variable

    with contextlib.suppress(Exception):
        Variable(stop_signal, client=client).set(_STOP.signal or "SIGINT")
        Event(stop_event, client=client).set()
    try:
        running = {key for keys in client.processing().values() for key in keys}
    except Exception:
        running = set()
    pending = [f for f in futures if not f.done()]
    queued = [f for f in pending if f.key not in running]
    with contextlib.suppress(Exception):
        client.cancel(queued)
    rest = [f for f in pending if f.key in running]
    deadline = time.monotonic() + _STOP_WAIT_S
    while time.monotonic() < deadline and not all(f.done() for f in rest):
        time.sleep(0.2)
    with contextlib.suppress(Exception):  # what still runs on a remote cluster: let it go
        client.cancel([f for f in rest if not f.done()])
