"""What a Dask worker does with one task of a batch run: :func:`run_task`.

Part of the batch runner (``python -m pruninglib.run --jobs N`` / ``--scheduler``). The task
carries the notebook's content and parameters, so the worker needs no copy of the repository:
only the package installed and the data on its own ``PRUNINGLIB_DATA``. The worker writes the
notebook into a private temporary folder, executes it with papermill in a process of its own
(``python -m pruninglib.run._child``, which stops its kernel on SIGINT/SIGTERM and dies with the
worker), and sends back the executed notebook, its HTML export and its
:class:`~pruninglib.run.results.RunResult` as a plain dict. While it runs, the task watches the
run's stop event: when the client asks the sweep to stop, the notebook is interrupted and
reported as such.

GPUs: a task submitted with the Dask resource ``{"GPU": K}`` claims K of the worker's devices
(its own ``CUDA_VISIBLE_DEVICES``, else ``0 .. GPU-1`` of its ``--resources GPU=n``) and its
notebook sees only those through ``CUDA_VISIBLE_DEVICES``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from pruninglib.run.stopping import _STOP_WAIT_S

__all__ = ["run_task"]

#: Set by the runner's own LocalCluster: the GPUs of worker ``i`` are ``i*K .. i*K+K-1`` of the machine's.
LOCAL_GPUS_ENV = "PRUNINGLIB_LOCAL_GPUS_PER_WORKER"

_GPU_LOCK = threading.Lock()
_GPUS_IN_USE: set[str] = set()
_POLL_S = 1.0


def _worker_devices(worker: Any) -> list[str]:
    """The GPU ids this worker may hand out (as ``CUDA_VISIBLE_DEVICES`` spells them)."""
    resources = getattr(getattr(worker, "state", None), "total_resources", None)
    if resources is None:
        resources = getattr(worker, "total_resources", {}) or {}
    total = int(resources.get("GPU", 0))
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    per_worker = os.environ.get(LOCAL_GPUS_ENV)
    if per_worker and isinstance(getattr(worker, "name", None), int):
        k, i = int(per_worker), int(worker.name)
        ids = visible or [str(n) for n in range(k * (i + 1))]
        return ids[i * k:(i + 1) * k]
    return visible[:total] if visible else [str(n) for n in range(total)]


def _claim_gpus(k: int, worker: Any) -> list[str]:
    """Take ``k`` free devices of this worker for one task (release with :func:`_release_gpus`)."""
    with _GPU_LOCK:
        free = [d for d in _worker_devices(worker) if d not in _GPUS_IN_USE]
        if len(free) < k:
            raise RuntimeError(f"worker {getattr(worker, 'address', '?')} on {socket.gethostname()} has no {k} free "
                               f"GPU(s) (its devices: {_worker_devices(worker) or 'none'}): start it with "
                               f"--resources GPU=n and CUDA_VISIBLE_DEVICES listing n devices")
        claimed = free[:k]
        _GPUS_IN_USE.update(claimed)
        return claimed


def _release_gpus(claimed: list[str]) -> None:
    with _GPU_LOCK:
        _GPUS_IN_USE.difference_update(claimed)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the notebook process gets SIGTERM (stops its kernel, then ends) when the worker dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _package_root() -> str:
    import pruninglib

    return str(Path(pruninglib.__file__).resolve().parents[1])


def _stop_objects(payload: dict[str, Any]) -> tuple[Any, Any]:
    """The run's stop event and the variable naming the stop signal (``None`` outside a worker)."""
    try:
        from distributed import Event, Variable, get_client

        client = get_client()
        return Event(payload["stop_event"], client=client), Variable(payload["stop_signal"], client=client)
    except Exception:
        return None, None


def _signal_to_send(var: Any) -> int:
    try:
        name = var.get(timeout=5) if var is not None else "SIGINT"
        return int(signal.Signals[str(name)])
    except Exception:
        return int(signal.SIGINT)


def _wait(proc: subprocess.Popen, event: Any) -> bool:
    """Wait for the notebook process; on the run's stop request, interrupt it. Whether it was stopped."""
    while proc.poll() is None:
        stopped = False
        if event is not None:
            try:
                stopped = event.wait(timeout=_POLL_S)
            except Exception:  # the scheduler is gone: the notebook runs on, the client decides
                event = None
        else:
            try:
                proc.wait(timeout=_POLL_S)
            except subprocess.TimeoutExpired:
                pass
        if stopped:
            return True
    return False


def _interrupt(proc: subprocess.Popen, sig: int) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Execute one notebook on this Dask worker and return what the client writes. Part of the batch runner.

    Args:
        payload: ``name``, ``file_name``, ``notebook`` (the ``.ipynb`` text), ``parameters``,
            ``kernel``, ``timeout``, ``html``, ``cwd`` (the notebook's folder on the client; used
            when this machine has it), ``gpus`` and the names ``stop_event``/``stop_signal`` of
            the run's stop objects.

    Returns:
        ``status`` (``"not started"`` when the run was stopped before this task), ``host``,
        ``worker``, and for an execution ``result`` (the fields of a
        :class:`~pruninglib.run.results.RunResult`), ``notebook`` (the executed notebook's text,
        ``None`` when none was written) and ``html``.
    """
    host = socket.gethostname()
    try:
        from distributed import get_worker

        worker = get_worker()
    except Exception:  # called outside a worker (tests, debugging)
        worker = None
    base = {"host": host, "worker": getattr(worker, "address", None)}
    event, signal_var = _stop_objects(payload)
    if event is not None and event.is_set():
        return {**base, "status": "not started"}
    gpus = _claim_gpus(int(payload["gpus"]), worker) if payload.get("gpus") else []
    try:
        with tempfile.TemporaryDirectory(prefix="pruninglib-task-") as tmp:
            return {**base, **_run_child(payload, Path(tmp), gpus, event, signal_var)}
    finally:
        _release_gpus(gpus)


def _run_child(payload: dict[str, Any], tmp: Path, gpus: list[str], event: Any, signal_var: Any) -> dict[str, Any]:
    src = tmp / payload["file_name"]
    src.write_text(payload["notebook"], encoding="utf-8")
    out = tmp / "out" / payload["file_name"]
    cwd = payload.get("cwd")
    task = {"index": 0, "input_path": str(src), "output_path": str(out), "name": payload["name"],
            "parameters": payload["parameters"], "combo": {}, "kernel": payload.get("kernel"),
            "timeout": payload.get("timeout"), "html": bool(payload.get("html")),
            "cwd": cwd if cwd and Path(cwd).is_dir() else str(tmp)}
    task_file, result_file, log_file = tmp / "task.json", tmp / "result.json", tmp / "child.log"
    task_file.write_text(json.dumps(task), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pruninglib.run._child", str(task_file), str(result_file)],
                                cwd=str(tmp), env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent if os.name == "posix" else None)
        try:
            stopped = _wait(proc, event)
        except BaseException:
            _interrupt(proc, int(signal.SIGTERM))
            raise
        if stopped:
            _interrupt(proc, _signal_to_send(signal_var))
    if not result_file.is_file():
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        why = f"the notebook process on {socket.gethostname()} ended (exit status {proc.returncode}) without a " \
              f"report" + (f": {' | '.join(tail)}" if tail else "")
        return {"status": "interrupted" if stopped else "FAILED", "error": why}
    result = json.loads(result_file.read_text(encoding="utf-8"))
    notebook = out.read_text(encoding="utf-8") if result.get("output_path") and out.is_file() else None
    html_file = out.with_suffix(".html")
    html = html_file.read_text(encoding="utf-8") if result.get("html_path") and html_file.is_file() else None
    return {"status": result["status"], "result": result, "notebook": notebook, "html": html}
