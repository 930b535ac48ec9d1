"""The batch runner on Dask distributed (issue 19): ``--jobs N`` on a LocalCluster, ``--scheduler``.

Tiny throwaway notebooks as in ``tests/test_run.py`` (a kernel start each, no torch). No timed
assert: every wait is bounded and only fails a test that would otherwise hang.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from pruninglib.run import SchedulerUnreachable, main, run_notebooks
from pruninglib.run import cluster as dask_cluster
from pruninglib.run.results import ROOT
from pruninglib.run.worker import _claim_gpus, _release_gpus, _worker_devices

WAIT_S = 240  # a kernel start on a busy 2-core machine, twice over

PARAMS = 'MODE = "quick"\nSEED = 0\nMARK = ""'
RECORD = 'from pruninglib import record\nrecord("double_seed", SEED * 2)\nrecord("seed_name", f"s{SEED}")'


def _write(path: Path, *sources: str, params: str = PARAMS) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def _summary(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())


def _grid(out: Path) -> list[dict]:
    with open(out / "grid.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ LocalCluster == serial


def test_local_cluster_gives_what_the_serial_run_gives(tmp_path: Path) -> None:
    d = tmp_path / "nbs"
    d.mkdir()
    _write(d / "01_a.ipynb", RECORD)
    _write(d / "02_b.ipynb", RECORD, 'record("triple_seed", SEED * 3)')
    nbs = [d / "01_a.ipynb", d / "02_b.ipynb"]
    serial = run_notebooks(nbs, grid={"SEED": [1, 2]}, jobs=1, out=tmp_path / "serial", progress=False)
    dask = run_notebooks(nbs, grid={"SEED": [1, 2]}, jobs=2, out=tmp_path / "dask", progress=False)
    assert [r.status for r in dask] == ["ok"] * 4
    assert [(r.notebook, r.params, r.records) for r in dask] == [(r.notebook, r.params, r.records) for r in serial]
    assert all(r.host == socket.gethostname() and r.worker.startswith("tcp://127.0.0.1:") for r in dask)
    assert all(r.host is None for r in serial)

    def rows(out: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in ("seconds", "host", "worker")} for row in _summary(out)]

    assert rows(tmp_path / "dask") == rows(tmp_path / "serial")
    drop_seconds = [{k: v for k, v in row.items() if k != "seconds"} for row in _grid(tmp_path / "dask")]
    assert drop_seconds == [{k: v for k, v in row.items() if k != "seconds"} for row in _grid(tmp_path / "serial")]
    assert "| host |" in (tmp_path / "dask" / "summary.md").read_text()
    # The client wrote every executed notebook (workers share no folder with it).
    for r in dask:
        nb = nbformat.read(r.output_path, as_version=4)
        assert Path(r.output_path).parent == tmp_path / "dask"
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)


# ------------------------------------------------------------------ a worker dies mid-task

KILL_ME = ("import os, pathlib, time\n"
           "try:\n"
           "    with open(MARK, 'x') as fh:\n"  # only the first execution of all sleeps
           "        fh.write(str(os.getpid()))\n"
           "    time.sleep(300)\n"
           "except FileExistsError:\n"
           "    pass")
WHO = "import psutil\nrecord('worker_pid', psutil.Process(os.getppid()).ppid())"  # kernel -> task process -> worker


def test_a_lost_worker_task_is_retried_on_another(tmp_path: Path) -> None:
    d = tmp_path / "nbs"
    d.mkdir()
    _write(d / "01_kill.ipynb", KILL_ME, RECORD, WHO)
    mark = tmp_path / "kernel.pid"
    killed: list[int] = []

    def kill_the_worker() -> None:
        deadline = time.monotonic() + WAIT_S
        while not (mark.exists() and mark.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        if mark.exists() and mark.read_text():
            worker = psutil.Process(int(mark.read_text())).parent().parent()
            killed.append(worker.pid)
            worker.kill()

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    results = run_notebooks([d / "01_kill.ipynb"], grid={"SEED": [1, 2]}, params={"MARK": str(mark)}, jobs=2,
                            out=tmp_path / "out", progress=False)
    killer.join(timeout=5)
    assert killed, "the sleeping cell never started"
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    assert [r.records["double_seed"] for r in results] == [2, 4]
    assert all(r.records["worker_pid"] != killed[0] for r in results)  # the lost task ran again elsewhere
    assert [row["status"] for row in _summary(tmp_path / "out")] == ["ok", "ok"]


# ------------------------------------------------------------------ Ctrl-C, then resume

COUNT = ("import os, pathlib, time\n"
         "with open(MARK + '.started', 'a') as fh:\n"
         "    fh.write(f'{SEED}\\n')\n"
         "while SEED == 0 and os.path.exists(MARK + '.block'):\n"
         "    time.sleep(0.2)")


def test_interrupted_sweep_resumes_with_only_the_missing_points(tmp_path: Path) -> None:
    d = tmp_path / "nbs"
    d.mkdir()
    _write(d / "01_count.ipynb", COUNT, RECORD)
    mark, out = tmp_path / "mark", tmp_path / "out"
    started, block = Path(f"{mark}.started"), Path(f"{mark}.block")
    block.write_text("")
    log_path = tmp_path / "runner.log"
    argv = ["--notebooks", str(d), "--grid", "SEED=0,1,2", "-p", "MARK", str(mark), "--jobs", "2", "--out", str(out)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pruninglib.run", *argv], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 2 * WAIT_S
    while "[2/3]" not in log_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
    if "[2/3]" not in log_path.read_text():
        proc.kill()
        proc.wait()
        pytest.fail(f"two of the three points did not finish: {log_path.read_text()[-3000:]}")
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the runner did not stop after SIGINT")
    assert code == 130, log_path.read_text()[-3000:]
    rows = _summary(out)
    assert [(r["params"]["SEED"], r["status"]) for r in rows] == [(0, "interrupted"), (1, "ok"), (2, "ok")]
    assert "SIGINT" in rows[0]["error"]
    assert sorted(started.read_text().split()) == ["0", "1", "2"]

    block.unlink()
    results = run_notebooks([d / "01_count.ipynb"], grid={"SEED": [0, 1, 2]}, params={"MARK": str(mark)},
                            jobs=2, out=out, progress=False)
    assert sorted(started.read_text().split()) == ["0", "0", "1", "2"]  # only SEED=0 ran again
    assert [(r.status, r.resumed) for r in results] == [("ok", False), ("ok", True), ("ok", True)]
    assert [r.records["double_seed"] for r in results] == [0, 2, 4]
    assert [row["status"] for row in _summary(out)] == ["ok"] * 3
    assert [row["double_seed"] for row in _grid(out)] == ["0", "2", "4"]


# ------------------------------------------------------------------ --scheduler


@pytest.fixture()
def scheduler() -> str:
    """A scheduler on 127.0.0.1 with one worker process offering GPU=2 (devices "5,7", none real)."""
    import logging

    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR, resources={"GPU": 2},
                      env={"CUDA_VISIBLE_DEVICES": "5,7"}) as cluster:
        yield cluster.scheduler_address


def test_scheduler_runs_the_tasks_and_hands_out_gpus(scheduler: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "nbs"
    d.mkdir()
    _write(d / "01_gpu.ipynb", RECORD, "import os\nrecord('cuda', os.environ.get('CUDA_VISIBLE_DEVICES', ''))")
    out = tmp_path / "out"
    monkeypatch.setenv("PRUNINGLIB_SCHEDULER", scheduler)  # the environment names the scheduler
    assert main(["--notebooks", str(d), "--grid", "SEED=1,2", "--gpus-per-task", "1", "--out", str(out)]) == 0
    console = capsys.readouterr().out
    assert scheduler in console and "dashboard http" in console
    rows = _summary(out)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["records"]["cuda"] in ("5", "7") for r in rows)  # one of the worker's devices each
    assert all(r["worker"].startswith("tcp://127.0.0.1:") and r["host"] for r in rows)
    assert (out / "01_gpu__SEED=2.ipynb").is_file() and (out / "grid.md").is_file()
    # More GPUs than any worker has: refused before anything runs.
    assert main(["--notebooks", str(d), "--scheduler", scheduler, "--gpus-per-task", "3",
                 "--out", str(tmp_path / "none")]) == 2
    assert "GPU=3" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_unreachable_scheduler_fails_fast_and_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "nbs"
    d.mkdir()
    _write(d / "01_x.ipynb", RECORD)
    monkeypatch.setattr(dask_cluster, "CONNECT_TIMEOUT_S", 3.0)
    address = f"tcp://127.0.0.1:{_free_port()}"
    out = tmp_path / "out"
    assert main(["--notebooks", str(d), "--scheduler", address, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Dask scheduler at {address}" in err and "dask scheduler" in err
    assert "Traceback" not in err and not out.exists()
    with pytest.raises(SchedulerUnreachable, match="tcp://HOST:8786"):
        run_notebooks([d / "01_x.ipynb"], scheduler="no-such-protocol://x", out=out, progress=False)
    assert not out.exists()


# ------------------------------------------------------------------ GPU claims (no cluster)


class _FakeWorker:
    def __init__(self, gpus: int, name: object = "w", address: str = "tcp://w:1") -> None:
        self.state = type("S", (), {"total_resources": {"GPU": gpus}})()
        self.name, self.address = name, address


def test_gpu_claims_hand_out_each_device_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("PRUNINGLIB_LOCAL_GPUS_PER_WORKER", raising=False)
    w = _FakeWorker(2)
    assert _worker_devices(w) == ["0", "1"]
    a, b = _claim_gpus(1, w), _claim_gpus(1, w)
    assert sorted(a + b) == ["0", "1"]
    with pytest.raises(RuntimeError, match="GPU"):
        _claim_gpus(1, w)
    _release_gpus(a)
    assert _claim_gpus(1, w) == a
    _release_gpus(a + b)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,6")
    assert _worker_devices(w) == ["3", "6"]
    # The runner's own LocalCluster: worker i of K GPUs each gets devices i*K .. i*K+K-1.
    monkeypatch.setenv("PRUNINGLIB_LOCAL_GPUS_PER_WORKER", "1")
    assert _worker_devices(_FakeWorker(1, name=1)) == ["6"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _worker_devices(_FakeWorker(2, name=1)) == ["1"]
