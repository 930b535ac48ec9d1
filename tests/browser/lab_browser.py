"""Headless Chromium under Selenium, from Debian's ``chromium`` and ``chromium-driver`` (nothing is
downloaded), stopped by its process ids whatever happened.

Part of the browser check (``make test-browser``, tests/browser/check_lessons.py).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from lab_server import descendants, stop_pids

__all__ = ["CHROMIUM", "CHROMEDRIVER", "INSTALL_HINT", "Browser", "missing_browser"]

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL_HINT = ("install them with\n"
                "    sudo apt-get update && sudo apt-get install -y chromium chromium-driver\n"
                "(Debian/Ubuntu; elsewhere install Chromium and its chromedriver and set CHROMIUM=/path/to/chromium "
                "CHROMEDRIVER=/path/to/chromedriver), and the Python driver with\n"
                "    .venv/bin/pip install -e '.[browser]'   (make test-browser does this)")


def missing_browser() -> list[str]:
    """What the browser check lacks to run: the Chromium binary, its driver, Selenium (empty when all is there)."""
    missing = [f"{what} ({path})" for what, path in (("Chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER))
               if not (path.is_file() and os.access(path, os.X_OK))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the Python package selenium")
    return missing


class Browser:
    """A headless Chromium window of ``width`` x ``height`` pixels, its console log kept.

    Use as a context manager: chromedriver and every Chromium process under it are stopped by their
    ids on the way out, also when start-up or a check failed.
    """

    def __init__(self, profile: Path, log: Path, width: int = 1400, height: int = 1600) -> None:
        self.profile, self.log_path, self.size = profile, log, (width, height)
        self.driver: Any = None
        self._service: Any = None

    def __enter__(self) -> "Browser":
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1",
                    f"--window-size={self.size[0]},{self.size[1]}", f"--user-data-dir={self.profile}"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._service = Service(executable_path=str(CHROMEDRIVER), log_output=str(self.log_path),
                                service_args=["--log-level=WARNING"])
        try:
            self.driver = webdriver.Chrome(service=self._service, options=opts)
        except BaseException:
            self.stop()
            raise
        self.driver.set_script_timeout(60)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def console_errors(self) -> list[str]:
        """The browser console's errors since the last call (each message once)."""
        entries = self.driver.get_log("browser")
        return list(dict.fromkeys(e["message"] for e in entries if e.get("level") == "SEVERE"))

    def stop(self) -> list[int]:
        """Quit Chromium and chromedriver, then stop by id whatever of them is left; the ids killed."""
        proc = getattr(self._service, "process", None)
        pids = ([proc.pid] + descendants(proc.pid)) if proc is not None else []
        driver, self.driver = self.driver, None
        if driver is not None:
            try:
                driver.quit()
            except Exception:  # the browser may be gone already; its ids are stopped below
                pass
        killed = stop_pids(pids, grace=10.0, reap=proc) if pids else []
        shutil.rmtree(self.profile, ignore_errors=True)
        return killed
