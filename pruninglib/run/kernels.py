"""The Jupyter kernels of a batch run: started over IPC sockets, killed when a run is stopped,
and a record of which cell each one was running.

Part of the batch runner (``python -m pruninglib.run``). Kernels talk to the runner over local
IPC sockets (POSIX), not TCP, so ipykernel has no "running over TCP without encryption"
warning to print.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import weakref
from typing import Any

from pruninglib.run.stopping import _STOP

__all__: list[str] = []

_KERNELS: weakref.WeakSet = weakref.WeakSet()  # kernel managers this process created


@functools.lru_cache(maxsize=None)
def _kernel_manager_class() -> type:
    """The kernel manager papermill/nbclient start each kernel with (built on first use, so that
    importing the runner does not import jupyter_client)."""
    from jupyter_client import AsyncKernelManager

    class BatchKernelManager(AsyncKernelManager):
        """IPC transport in a private temporary folder on POSIX (no TCP port, hence no ipykernel
        warning about unencrypted TCP), and registered so an interrupted run can kill it."""

        def __init__(self, **kwargs: Any) -> None:
            ipc_dir = None
            if os.name == "posix" and "transport" not in kwargs:
                ipc_dir = tempfile.mkdtemp(prefix="pruninglib-kernel-")
                kwargs.update(transport="ipc", ip=os.path.join(ipc_dir, "kernel"))
            super().__init__(**kwargs)
            # Removes the socket folder when called (see _release_kernels), else at exit.
            self.remove_ipc_dir = weakref.finalize(self, shutil.rmtree, ipc_dir, True) if ipc_dir else None
            _KERNELS.add(self)

        async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
            """After a stop request, kill the kernel at once: a graceful shutdown of an
            interrupted cell only makes the kernel print a traceback."""
            await super().shutdown_kernel(now=now or _STOP.requested, restart=restart)

    return BatchKernelManager


def _release_kernels(kill: bool = False) -> None:
    """Remove the socket folders of the kernels this process started that have ended; with
    ``kill`` (after an interrupt) first kill those that still run."""
    for km in list(_KERNELS):
        proc = getattr(getattr(km, "provisioner", None), "process", None)
        if proc is not None and proc.poll() is None:
            if not kill:
                continue
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if getattr(km, "remove_ipc_dir", None) is not None:
            km.remove_ipc_dir()
        _KERNELS.discard(km)


class _CellTracker:
    """Which cells nbclient started and finished (its ``on_cell_start``/``on_cell_executed`` hooks),
    so an interrupted notebook can be marked where it stopped."""

    def __init__(self) -> None:
        self.running: int | None = None
        self.done: set[int] = set()

    def start(self, cell: Any, cell_index: int, **_: Any) -> None:
        """nbclient's ``on_cell_start`` hook."""
        if cell.get("cell_type") == "code" and str(cell.get("source", "")).strip():
            self.running = cell_index
        else:  # nbclient skips these: no "executed" hook follows
            self.done.add(cell_index)

    def executed(self, cell: Any, cell_index: int, **_: Any) -> None:
        """nbclient's ``on_cell_executed`` hook (the kernel replied)."""
        self.done.add(cell_index)
        self.running = None
