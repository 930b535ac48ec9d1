"""Atomic file writes: a reader sees the previous file or the new one, never half of one.

Every write goes to a temporary file in the same folder (``.<name>.<8 random>.tmp``, created with
the user's umask and locked while it is written), is fsynced, renamed over the target
(``os.replace``, the only rename), and the folder is fsynced. Orphan temporary files of killed
writes are removed by the next write to the same folder (a locked one, a write in progress, stays).
Used by :mod:`pruninglib.checkpoint` (checkpoints and the result cache) and by the batch runner's
reports; it imports no torch, so the runner stays light.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path
from typing import Iterable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; an open file cannot be deleted there anyway
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_write", "atomic_write_bytes", "ORPHAN_PATTERN"]

#: Names of our temporary files, and of those of pruninglib < 0.2 (mkstemp).
ORPHAN_PATTERN = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def _lock(fd: int, blocking: bool) -> bool | None:
    """Take an exclusive advisory lock: True taken, False held by a live writer, None unsupported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError:  # e.g. a file system without locks
        return None


def _remove_orphans(folder: Path) -> None:
    """Delete the temporary files of killed writes in ``folder``; a locked one (a write in progress) stays."""
    with os.scandir(folder) as it:
        names = [e.name for e in it if ORPHAN_PATTERN.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
    for name in names:
        if fcntl is None:  # Windows refuses to delete a file its writer still has open
            _unlink_quietly(folder / name)
            continue
        try:
            fd = os.open(folder / name, os.O_RDONLY)
        except OSError:  # renamed by its writer meanwhile, or not ours to read
            continue
        try:
            if _lock(fd, blocking=False):  # False: a live writer holds it; None: cannot tell, keep it
                _unlink_quietly(folder / name)
        finally:
            os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:  # removed meanwhile, or in use
        pass


def _create_tmp(path: Path) -> tuple[int, Path]:
    """A new, locked temporary file beside ``path``, mode ``0o666`` less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        _lock(fd, blocking=True)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return fd, tmp
        except FileNotFoundError:  # a cleaner took it for an orphan before it was locked
            pass
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened or fsynced)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES, errno.EPERM):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, parts: Iterable[bytes | memoryview], verify: bool = False) -> Path:
    """Write ``parts`` (one after the other) to ``path`` atomically: orphans of killed writes out, a
    locked temporary file beside it, fsync, the one ``os.replace``, fsync of the folder. With
    ``verify`` the file is read back and compared. Part of the checkpoint, cache and batch-runner
    machinery; no lesson calls it directly.

    Raises:
        OSError: the write failed (the previous file is left as it was), or ``verify`` found other bytes.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    path = Path(path)
    parts = list(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path.parent)
    fd, tmp = _create_tmp(path)
    try:
        with os.fdopen(fd, "wb") as f:  # closing releases the lock
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
            if os.name != "nt":  # Windows cannot rename an open file
                os.replace(tmp, path)
        if os.name == "nt":
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    if verify and path.read_bytes() != b"".join(bytes(p) for p in parts):
        raise OSError(f"{path} does not hold what was just written to it: check the disk and write again")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temporary file, fsync, ``os.replace``, fsync of the folder.

    The bytes are written as they are: readers of a killed write see the previous file or the
    new one. The file gets mode ``0o666`` less the umask. No lesson calls it directly (its tests do).

    No lesson calls it directly (its tests do).
    """
    return atomic_write(path, [data])
