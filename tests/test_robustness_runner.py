"""Robustness of the batch runner ``python -m pruninglib.run`` (issue 14, items 10-13; issue 16, items 6, 8).

Tiny throwaway notebooks as in ``tests/test_run.py``. The checks that refuse a command line
start no kernel; the interrupt and lock tests start the runner as a subprocess on a notebook
whose cell sleeps (every wait is bounded); one grid run (two kernels) serves the console,
file-name and nested-record tests.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

import pruninglib.run as runner
from pruninglib.run import (
    RunResult,
    main,
    run_notebooks,
    select_notebooks,
    discover_notebooks,
    write_grid,
    write_summary,
)
from pruninglib.run.runner import ROOT

START_WAIT_S = 180  # torch import of the runner + kernel start on a busy machine
STOP_WAIT_S = 90


def _notebook(path: Path, params: str, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def plain(tmp_path: Path) -> Path:
    """01 declares EXTRA, 02 does not; neither imports anything (a kernel start only)."""
    d = tmp_path / "nbs"
    d.mkdir()
    _notebook(d / "01_extra.ipynb", 'MODE = "quick"\nEXTRA = 0', "x = EXTRA + 1")
    _notebook(d / "02_plain.ipynb", 'MODE = "quick"\nSEED = 0', "x = SEED + 1")
    return d


# ------------------------------------------------------- refused before anything runs (13, 12)


def test_param_mode_is_refused(plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["--notebooks", str(plain), "--only", "02", "--mode", "quick", "-p", "MODE", "paper", "--out", str(out),
            "--timeout", "60"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--mode paper" in err and "-p MODE" in err
    assert not out.exists()
    with pytest.raises(ValueError, match=r"mode='paper'"):
        run_notebooks([plain / "02_plain.ipynb"], mode="quick", params={"MODE": "paper"}, out=out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("only", [",", " , ", ""])
def test_empty_only_is_refused(plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], only: str) -> None:
    out = tmp_path / "out"
    assert main(["--notebooks", str(plain), "--only", only, "--out", str(out), "--timeout", "60"]) == 2
    err = capsys.readouterr().err
    assert "--only" in err and "01 (01_extra)" in err and "02 (02_plain)" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="--only 01"):
        select_notebooks(discover_notebooks(plain), only)


@pytest.mark.parametrize("flag", [["-p", "EXTRA", "3"], ["--grid", "EXTRA=1,2"]])
def test_param_not_declared_by_a_selected_notebook(plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   flag: list[str]) -> None:
    out = tmp_path / "out"
    assert main(["--notebooks", str(plain), *flag, "--out", str(out), "--timeout", "60"]) == 2
    err = capsys.readouterr().err
    assert "EXTRA" in err and "02_plain" in err and "--only 01" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="02_plain"):
        run_notebooks(discover_notebooks(plain), params={"EXTRA": 3}, out=out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("where", ["below a file", "a file"])
def test_unwritable_out_is_refused(plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    out = blocker / "run" if where == "below a file" else blocker
    before = _snapshot(tmp_path)
    assert main(["--notebooks", str(plain), "--only", "02", "--out", str(out), "--timeout", "60"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--out" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="writable"):
        run_notebooks([plain / "02_plain.ipynb"], out=out, progress=False)
    assert _snapshot(tmp_path) == before


# ------------------------------------------------------------------------ atomic writes


def _results() -> list[RunResult]:
    return [RunResult(notebook="01_x", params={"MODE": "quick", "SEED": s}, status="ok", seconds=1.0,
                      records={"acc": 0.5 + s / 10, "by": {"a": s}}, combo={"SEED": s}) for s in (1, 2)]


@pytest.mark.parametrize("writer", ["summary", "grid"])
def test_reports_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str) -> None:
    write = (lambda: write_summary(_results(), tmp_path, mode="quick")) if writer == "summary" else \
        (lambda: write_grid(_results(), tmp_path, ["SEED"]))
    written = write()
    before = _snapshot(tmp_path)
    assert before and all(Path(p).stat().st_size > 0 for p in ([written] if writer == "summary" else written))

    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="simulated"):
        write()
    assert _snapshot(tmp_path) == before  # old files intact, no temporary file left behind


# --------------------------------------------------------- a running batch: lock and interrupt (11, 10)

SLEEP_PARAMS = 'MODE = "quick"\nMARK = ""'
SLEEP_CELL = "import os, pathlib, time\npathlib.Path(MARK).write_text(str(os.getpid()))\ntime.sleep(300)"


def _start_batch(tmp_path: Path, sleepers: int = 1, jobs: int = 1) -> tuple[subprocess.Popen, Path, Path]:
    """Start ``python -m pruninglib.run`` on ``sleepers`` notebooks whose cell sleeps and one more
    (``02_next`` after one sleeper); return once every sleeping cell runs (its kernel wrote ``<mark>NN``)."""
    d = tmp_path / "nbs"
    d.mkdir()
    for i in range(1, sleepers + 1):
        _notebook(d / f"{i:02d}_sleep.ipynb", SLEEP_PARAMS, SLEEP_CELL.replace("(MARK)", f"(MARK + '{i:02d}')"),
                  "after = 1")
    _notebook(d / f"{sleepers + 1:02d}_next.ipynb", SLEEP_PARAMS, "x = 2")
    out, mark = tmp_path / "out", tmp_path / "kernel.pid"
    marks = [Path(f"{mark}{i:02d}") for i in range(1, sleepers + 1)]
    log = open(tmp_path / "runner.log", "wb")
    argv = ["--notebooks", str(d), "--out", str(out), "-p", "MARK", str(mark), "--jobs", str(jobs)]
    proc = subprocess.Popen([sys.executable, "-m", "pruninglib.run", *argv], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_WAIT_S

    def started() -> bool:
        return all(m.exists() and m.read_text() for m in marks)

    while not started() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not started():
        proc.kill()
        proc.wait()
        pytest.fail(f"the runner did not start the sleeping cell(s): {(tmp_path / 'runner.log').read_text()}")
    return proc, out, mark


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the runner did not stop within {STOP_WAIT_S} s of {signal.Signals(sig).name}")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def test_second_run_into_same_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc, out, mark = _start_batch(tmp_path)
    try:
        lock_files = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith(".")}
        argv = ["--notebooks", str(tmp_path / "nbs"), "--out", str(out), "-p", "MARK", str(tmp_path / "second"),
                "--timeout", "20"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"PID {proc.pid}" in err and "wait" in err and "--out" in err
        assert not (tmp_path / "second01").exists()  # nothing ran
        assert not (out / "summary.md").exists() and not (out / "summary.json").exists()
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith(".")} == lock_files
        with pytest.raises(runner.OutputFolderBusy, match=str(proc.pid)):
            run_notebooks([tmp_path / "nbs" / "02_next.ipynb"], params={"MARK": ""}, out=out, progress=False)
    finally:
        _stop(proc)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_writes_summary_and_stops_kernels(tmp_path: Path, sig: int) -> None:
    proc, out, mark = _start_batch(tmp_path)
    kernel_pid = int(Path(f"{mark}01").read_text())
    assert _alive(kernel_pid)
    code = _stop(proc, sig)
    log = (tmp_path / "runner.log").read_text()
    assert code == 130, log
    assert not _alive(kernel_pid), "the kernel outlived the runner"
    first, second = json.loads((out / "summary.json").read_text())
    assert (first["notebook"], first["status"]) == ("01_sleep", "interrupted")
    assert signal.Signals(sig).name in first["error"]
    assert (second["notebook"], second["status"]) == ("02_next", "not started")
    md = (out / "summary.md").read_text()
    assert "interrupted" in md and "not started" in md
    # The executed notebook tells where it stopped: not "completed".
    nb = nbformat.read(str(out / "01_sleep.ipynb"), as_version=4)
    sleeping = next(c for c in nb.cells if "time.sleep" in c.source)
    assert sleeping.metadata.papermill["status"] == "failed"
    assert any(o.get("ename") == "KeyboardInterrupt" for o in sleeping.outputs)
    after = next(c for c in nb.cells if c.source == "after = 1")
    assert after.metadata.papermill["status"] == "pending"
    assert not (out / "02_next.ipynb").exists()
    assert "Interrupted" in log and str(out / "summary.md") in log


# ------------------------------------------------ one grid run: console, file names, nested records


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``--grid "RATIO=0.25,'0.25'"`` on a notebook that records a nested dict; (out, console output)."""
    d = tmp_path_factory.mktemp("nested")
    _notebook(d / "03_nested.ipynb", 'MODE = "quick"\nRATIO = 0.5',
              "from pruninglib import record\n"
              'record("xor_fraction_correct", {"obs": 0.88, "obd": 0.5, "deep": {"x": 1}})\n'
              'record("ratio", RATIO)\nrecord("curve", [1, 2, 3])')
    out = d / "out"
    proc = subprocess.run([sys.executable, "-m", "pruninglib.run", "--notebooks", str(d), "--out", str(out),
                           "--grid", "RATIO=0.25,'0.25'", "--timeout", "300"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console
    return out, console


def test_console_has_no_tcp_warning(grid_run: tuple[Path, str]) -> None:
    out, console = grid_run
    assert "03_nested" in console and str(out / "summary.md") in console
    assert "without encryption" not in console and "[IPKernelApp] WARNING" not in console


def test_grid_values_that_print_alike_get_their_own_files(grid_run: tuple[Path, str]) -> None:
    out, _ = grid_run
    files = sorted(out.glob("03_nested*.ipynb"))
    assert len(files) == 2
    injected = []
    for f in files:
        nb = nbformat.read(str(f), as_version=4)
        injected.append(next(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])))
    assert sorted("RATIO = 0.25" in s for s in injected) == [False, True]
    assert sorted('RATIO = "0.25"' in s for s in injected) == [False, True]
    rows = json.loads((out / "summary.json").read_text())
    assert sorted(repr(r["records"]["ratio"]) for r in rows) == ["'0.25'", "0.25"]


def test_nested_records_are_flattened(grid_run: tuple[Path, str]) -> None:
    out, _ = grid_run
    md = (out / "summary.md").read_text()
    assert "NotebookNode" not in md
    assert "xor_fraction_correct.obs=0.88" in md and "xor_fraction_correct.deep.x=1" in md
    assert "curve=<list of 3>" in md
    row = json.loads((out / "summary.json").read_text())[0]
    assert row["records"]["xor_fraction_correct.obs"] == 0.88
    assert row["records"]["xor_fraction_correct.deep.x"] == 1
    assert row["records"]["xor_fraction_correct"] == {"obs": 0.88, "obd": 0.5, "deep": {"x": 1}}
    with open(out / "grid.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [float(r["xor_fraction_correct.obs"]) for r in table] == [0.88, 0.88]
    assert "xor_fraction_correct.obd" in (out / "grid.md").read_text()
    assert (out / "grid_xor_fraction_correct.obs.png").read_bytes()[:4] == b"\x89PNG"


def test_interrupt_stops_a_parallel_run(tmp_path: Path) -> None:
    """``--jobs 2``: both workers' kernels stop, the queued notebook is reported "not started"."""
    proc, out, mark = _start_batch(tmp_path, sleepers=2, jobs=2)
    kernels = [int(Path(f"{mark}{i:02d}").read_text()) for i in (1, 2)]
    code = _stop(proc)
    log = (tmp_path / "runner.log").read_text()
    assert code == 130, log
    assert not any(_alive(pid) for pid in kernels), "a kernel outlived the runner"
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["notebook"], r["status"]) for r in rows] == [
        ("01_sleep", "interrupted"), ("02_sleep", "interrupted"), ("03_next", "not started")]
    assert all("SIGINT" in r["error"] for r in rows)
    for name in ("01_sleep", "02_sleep"):
        nb = nbformat.read(str(out / f"{name}.ipynb"), as_version=4)
        assert next(c for c in nb.cells if "time.sleep" in c.source).metadata.papermill["status"] == "failed"
