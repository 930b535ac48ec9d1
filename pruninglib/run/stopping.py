"""Stopping a batch run cleanly on SIGINT (Ctrl-C) or SIGTERM.

Part of the batch runner (``python -m pruninglib.run``). The first stop signal becomes one
``KeyboardInterrupt`` (in papermill while a notebook runs, or wherever the runner is); later
ones are only noted, so that stopping the kernels and writing the summaries run to the end.
Each process has its own :data:`_STOP`: the runner, and each notebook execution on a Dask worker.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

__all__: list[str] = []

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STOP_WAIT_S = 60.0  # how long interrupted workers may take to stop their kernels and report


class _StopState:
    """What SIGINT/SIGTERM asked of this process."""

    def __init__(self) -> None:
        self.signal: str | None = None  # name of the first stop signal, None while running on
        self.busy = False  # a notebook is executing in this process
        self.raise_when_idle = True  # the runner stops whatever it does; a task process only its notebook

    @property
    def requested(self) -> bool:
        """Whether SIGINT or SIGTERM asked this process to stop."""
        return self.signal is not None


_STOP = _StopState()


def _on_stop_signal(signum: int, frame: Any) -> None:
    """The first SIGINT/SIGTERM becomes one KeyboardInterrupt; later ones are ignored so that the
    clean-up (kernels, summaries) runs to the end."""
    if _STOP.requested:
        return
    _STOP.signal = signal.Signals(signum).name
    if _STOP.busy or _STOP.raise_when_idle:
        raise KeyboardInterrupt(_STOP.signal)


@contextlib.contextmanager
def _stopping_on_signals() -> Iterator[None]:
    """Handle SIGINT and SIGTERM with :func:`_on_stop_signal` (main thread only), then restore."""
    _STOP.signal, _STOP.raise_when_idle = None, True
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
    for s in _STOP_SIGNALS:
        signal.signal(s, _on_stop_signal)
    try:
        yield
    finally:
        _STOP.raise_when_idle = True
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _stop_only_notebooks() -> None:
    """In a process that executes one notebook for a worker: a stop signal stops that notebook
    (and its kernel), and the process then reports instead of dying."""
    _STOP.raise_when_idle = False
    for s in _STOP_SIGNALS:
        signal.signal(s, _on_stop_signal)
