"""Processes of the browser check: a JupyterLab server from the project's venv, and stopping
what was started by its process ids, whatever happened.

Part of the browser check (``make test-browser``, tests/browser/check_lessons.py).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

__all__ = ["LabServer", "descendants", "free_port", "lab_env", "stop_pids"]

#: Variables that would make the lessons draw static figures instead of live widgets
#: (pruninglib.widgets.is_interactive) or stop matplotlib from drawing inline.
STATIC_VARS = ("PRUNINGLIB_STATIC", "CI", "MPLBACKEND")

#: JupyterLab settings for the check: every cell in the page (no windowing, so every output is in
#: the DOM), no news or update pop-ups over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_env(root: Path, state: Path) -> dict[str, str]:
    """The server's environment: live widgets (no PRUNINGLIB_STATIC, no CI), datasets along
    PRUNINGLIB_DATA (default ``./data`` and ``../shared/data``, as the Makefile has it), and Jupyter
    config, data, settings and runtime files in ``state``, so a user's own JupyterLab state plays no
    part and the kernels come from the venv (``sys.prefix/share/jupyter``)."""
    env = {k: v for k, v in os.environ.items() if k not in STATIC_VARS}
    env.setdefault("PRUNINGLIB_DATA", os.pathsep.join([str(root / "data"), str(root.parent / "shared" / "data")]))
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTER_DATA_DIR", "data")):
        (state / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(state / sub)
    for name, value in LAB_SETTINGS.items():
        path = state / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    return env


def descendants(pid: int) -> list[int]:
    """Process ids of every live descendant of ``pid`` (read from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process took the id
        return False
    try:  # a zombie has ended; only its parent's wait is missing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop_pids(pids: Iterable[int], grace: float = 10.0, reap: subprocess.Popen | None = None) -> list[int]:
    """SIGTERM each of ``pids``, wait up to ``grace`` seconds, SIGKILL those still alive; return the
    ids that had to be killed. ``reap`` (a Popen among them) is waited for, so it leaves no zombie."""
    pids = [p for p in dict.fromkeys(pids) if p > 1 and p != os.getpid()]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        if reap is not None:
            reap.poll()
        time.sleep(0.2)
    killed = [p for p in pids if _alive(p)]
    for pid in killed:
        _signal(pid, signal.SIGKILL)
    if reap is not None:
        try:
            reap.wait(timeout=grace)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass
    return killed


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class LabServer:
    """JupyterLab on 127.0.0.1 with a random token and a free port, serving ``notebooks``.

    Use as a context manager: the server and every process under it (the kernels) are stopped by
    their ids on the way out, also after an error.
    """

    def __init__(self, python: Path, notebooks: Path, state: Path, log: Path, root: Path) -> None:
        self.python, self.notebooks, self.state, self.log_path, self.root = python, notebooks, state, log, root
        self.token = secrets.token_urlsafe(24)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LabServer":
        self.port = free_port()
        cmd = [str(self.python), "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.notebooks}", "--LabApp.expose_app_in_browser=True",
               "--ServerApp.terminals_enabled=False"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI and containers run as root
            cmd.append("--allow-root")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=lab_env(self.root, self.state), cwd=self.notebooks,
                                         start_new_session=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the server answers; raise RuntimeError (pointing at its log) if it ends or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab ended at start-up (exit {self.proc and self.proc.returncode}); "
                                   f"see {self.log_path}")
            try:
                self.api("GET", "/api/status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer on {self.url} within {timeout:.0f} s; see {self.log_path}")

    def api(self, method: str, path: str) -> Any:
        """One REST call to the server; the decoded JSON answer (None when empty)."""
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_sessions(self) -> None:
        """Shut every notebook session's kernel down (between lessons, so they do not add up)."""
        for s in self.api("GET", "/api/sessions") or []:
            self.api("DELETE", f"/api/sessions/{s['id']}")

    def stop(self) -> list[int]:
        """Stop the server and its kernels by their process ids; the ids that needed SIGKILL."""
        if self.proc is None:
            return []
        proc, self.proc = self.proc, None
        pids = descendants(proc.pid)  # the kernels, taken before the server goes
        killed = stop_pids([proc.pid], grace=20.0, reap=proc)
        return killed + stop_pids(pids, grace=5.0)
