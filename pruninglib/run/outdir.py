"""The output folder of a batch run: its default name, its lock, and atomic writes into it.

Part of the batch runner (``python -m pruninglib.run``). Only the runner's own process (the Dask
client, for a distributed run) writes here: workers send their notebooks back.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
from pathlib import Path
from typing import Iterator

from pruninglib.atomic import atomic_write
from pruninglib.run.results import ROOT, OutputFolderBusy, RunRefused

__all__: list[str] = []

_LOCK_NAME = ".pruninglib-run.lock"


def _default_out() -> Path:
    base = ROOT / "runs" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _write_atomic(path: Path, data: str | bytes) -> Path:
    """Write a report atomically and read it back (:func:`pruninglib.atomic.atomic_write`)."""
    return atomic_write(path, [data.encode("utf-8") if isinstance(data, str) else data], verify=True)


def _open_lock(out_dir: Path) -> int:
    """Create ``out_dir`` and open its lock file; :class:`RunRefused` when that is not possible."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return os.open(out_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunRefused(f"cannot write to the output folder {out_dir} ({exc.strerror or exc}): "
                         f"choose a writable folder with --out DIR (run_notebooks(out=...))") from exc


def _try_lock(fd: int) -> bool:
    """Take the lock on ``fd`` without waiting; ``False`` when another process holds it."""
    try:
        if os.name == "posix":
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _busy(fd: int, out_dir: Path) -> OutputFolderBusy:
    """The error naming the run that holds the lock of ``out_dir``."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except (OSError, AttributeError):  # Windows: the locked byte cannot be read
        text = ""
    info = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    who = f"PID {info['pid']}" if "pid" in info else "PID unknown"
    since = f", started {info['started']}" if "started" in info else ""
    return OutputFolderBusy(f"another batch run ({who}{since}) is writing to {out_dir}: wait for it to finish, "
                            f"or choose another folder with --out DIR (run_notebooks(out=...))")


def _acquire_lock(out_dir: Path) -> int:
    """Lock ``out_dir`` for this run; the open, locked lock file (see :func:`_locked_output`)."""
    path = out_dir / _LOCK_NAME
    for _ in range(3):
        fd = _open_lock(out_dir)
        if not _try_lock(fd):
            err = _busy(fd, out_dir)
            os.close(fd)
            raise err
        try:
            same = os.name != "posix" or os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}\nstarted {_dt.datetime.now():%Y-%m-%d %H:%M:%S}\n".encode())
            return fd
        os.close(fd)  # the previous run removed the file we locked: lock its successor
    raise OutputFolderBusy(f"could not lock {path}: other runs keep starting there; "
                           f"choose another folder with --out DIR")


@contextlib.contextmanager
def _locked_output(out_dir: Path) -> Iterator[None]:
    """Hold ``<out_dir>/.pruninglib-run.lock`` (created with the folder) for the run.

    The lock is an OS file lock, released when this process ends however it ends; the file
    names the holder's PID for the message a second run gets.

    Raises:
        RunRefused: the folder cannot be created or written.
        OutputFolderBusy: another run holds it.
    """
    fd = _acquire_lock(out_dir)
    try:
        yield
    finally:
        try:
            if os.name == "posix":
                (out_dir / _LOCK_NAME).unlink(missing_ok=True)
        finally:
            os.close(fd)
