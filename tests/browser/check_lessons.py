"""The lessons as a learner sees them: JupyterLab in headless Chromium, live widgets, quick mode.

``make test-browser`` runs this. It starts JupyterLab from the project's venv on 127.0.0.1 (random
token, free port) over a temporary copy of the lessons (the committed notebooks are never touched),
drives Debian's headless Chromium with Selenium, and for each lesson (default 00, 01 and 04):

- runs all cells and waits until they finished and the kernel is idle;
- fails on any error output, "Math input error" (or any MathJax error), "Error displaying widget",
  widget shown as its text repr, red (danger) progress bar, or browser console error;
- moves each slider one step with the keyboard and checks that the figure it drives changed;
- saves a screenshot and the executed notebook under ``runs/browser/`` and prints where.

A canary notebook with one of each defect planted is checked first: the check fails when it stops
seeing any of them. Without Chromium it says how to install it and exits 2; it never skips. The
server and the browser are stopped by their process ids in every case.

Usage: ``.venv/bin/python tests/browser/check_lessons.py [--lessons 00 01 04] [--timeout S]``.
Part of the browser check.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import canary  # noqa: E402
import lab_page  # noqa: E402
from lab_browser import INSTALL_HINT, Browser, missing_browser  # noqa: E402
from lab_page import Defect  # noqa: E402
from lab_server import LabServer  # noqa: E402

__all__ = ["Result", "check_notebook", "lesson_paths", "main"]

ROOT = Path(__file__).resolve().parents[2]
KERNEL, KERNEL_NAME = "pruning", "Python (pruning)"
DEFAULT_LESSONS = ["00", "01", "04"]


@dataclass
class Result:
    """What the check found in one notebook."""

    name: str
    defects: list[Defect] = field(default_factory=list)
    seconds: float = 0.0
    sliders: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.defects


def lesson_paths(numbers: list[str], notebooks: Path = ROOT / "notebooks") -> list[Path]:
    """The lesson notebook of each number ("00" -> notebooks/00_tour.ipynb); ValueError naming the
    lessons there when a number has none."""
    paths = []
    for n in numbers:
        found = sorted(notebooks.glob(f"{n}_*.ipynb"))
        if len(found) != 1:
            have = ", ".join(p.stem for p in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")))
            raise ValueError(f"no single lesson {n!r} in {notebooks}; pass --lessons with some of: {have}")
        paths.append(found[0])
    return paths


def _kernel_problem() -> str | None:
    """Why the venv's 'Python (pruning)' kernel cannot be used, or None."""
    spec = Path(sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL / "kernel.json"
    if not spec.is_file():
        return f"the Jupyter kernel {KERNEL_NAME!r} is not installed in {sys.prefix} ({spec}): run `make install`"
    return None


def check_notebook(driver: Any, server: LabServer, name: str, out: Path, timeout: float,
                   slider_timeout: float) -> Result:
    """Open, run and check one notebook of the server's folder (``timeout`` seconds for its cells,
    ``slider_timeout`` for each slider's figure); save its screenshot and executed copy."""
    res, stem = Result(name), Path(name).stem
    t0 = time.monotonic()
    try:
        lab_page.open_notebook(driver, server.url, server.token, name, KERNEL, timeout=180)
        res.defects += lab_page.opened_modified(driver)
        lab_page.run_all(driver, timeout)
        res.defects += lab_page.check_page(driver)
        states, moved = lab_page.move_sliders(driver, slider_timeout)
        res.defects += moved
        res.sliders = [f"{s['label']} -> {s['readout']}" for s in states]
        res.defects += lab_page.check_page(driver)
        res.files.append(lab_page.screenshot(driver, out / f"{stem}.png", states[0]["cell"] if states else None))
        lab_page.save_and_close(driver)
        res.files.append(Path(shutil.copyfile(server.notebooks / name, out / f"{stem}.ipynb")))
        res.notes = _stderr_notes(res.files[-1])
    except Exception as e:  # a check that cannot finish fails the lesson; the next one still runs
        message = (getattr(e, "msg", None) or str(e)).strip().splitlines()
        res.defects.append(Defect(-1, "the check could not finish", f"{type(e).__name__}: {message[0] if message else ''}"
                                  f" (traceback in {stem}-failed.txt)"))
        (out / f"{stem}-failed.txt").write_text(traceback.format_exc())
        res.files.append(_try_screenshot(driver, out / f"{stem}-failed.png"))
        _try_close(driver)
    res.seconds = time.monotonic() - t0
    res.defects = list(dict.fromkeys(res.defects))
    return res


def _stderr_notes(executed: Path, most: int = 5) -> list[str]:
    """The first line of each stderr output of an executed notebook (warnings: shown, not failures)."""
    nb = json.loads(executed.read_text(encoding="utf-8"))
    notes = []
    for i, cell in enumerate(nb["cells"]):
        for o in cell.get("outputs", []):
            text = "".join(o.get("text", "")) if o.get("name") == "stderr" else ""
            first = next((line.strip() for line in text.splitlines() if line.strip()), "")
            if first:
                notes.append(f"cell {i}: {first[:200]}")
    return notes[:most] + ([f"... and {len(notes) - most} more"] if len(notes) > most else [])


def _clear_old(out: Path, names: list[str]) -> None:
    """Remove what an earlier run left for these notebooks, so the folder shows this run only."""
    for name in names:
        stem = Path(name).stem
        for old in (f"{stem}.png", f"{stem}.ipynb", f"{stem}-failed.png", f"{stem}-failed.txt"):
            (out / old).unlink(missing_ok=True)


def _try_screenshot(driver: Any, path: Path) -> Path:
    try:
        return lab_page.screenshot(driver, path, None)
    except Exception:  # the page is gone; nothing to show
        return path


def _try_close(driver: Any) -> None:
    try:  # a notebook left open and unsaved would hold up the next page with "leave this page?"
        lab_page.save_and_close(driver, timeout=20.0)
    except Exception:  # the next lesson reports whatever is still wrong
        pass


def _console(browser: Browser, res: Result) -> None:
    res.defects += [Defect(-1, "browser console error", msg) for msg in browser.console_errors()]


def _report(res: Result) -> str:
    head = f"{res.name}: {'ok' if res.ok else 'FAILED'} in {res.seconds:.0f} s"
    lines = [head + (f"; sliders moved: {', '.join(res.sliders)}" if res.sliders else "; no sliders")]
    lines += [f"    {d}" for d in res.defects]
    lines += [f"    note (stderr, not a failure): {n}" for n in res.notes]
    lines += [f"    saved {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}" for p in res.files if p.exists()]
    return "\n".join(lines)


def _check_canary(browser: Browser, server: LabServer, out: Path, timeout: float) -> Result:
    res = check_notebook(browser.driver, server, canary.NAME, out, timeout, slider_timeout=10.0)
    _console(browser, res)
    found = {(d.cell, d.kind) for d in res.defects}
    problems = canary.missed(found)
    seen = Result(f"{canary.NAME} ({len(canary.EXPECTED) - len(problems)} of {len(canary.EXPECTED)} planted "
                  "defects seen)", seconds=res.seconds, sliders=res.sliders, files=res.files)
    if os.environ.get("BROWSER_CHECK_VERBOSE"):
        print("\n".join(f"    canary: {d}" for d in res.defects))
    seen.defects = [Defect(-1, "the browser check is blind", p) for p in problems]
    seen.defects += [d for d in res.defects if d.kind == "the check could not finish"]
    return seen


def run(lessons: list[Path], out: Path, timeout: float, slider_timeout: float, with_canary: bool) -> list[Result]:
    """Check the canary and ``lessons`` in one JupyterLab server and one browser; their results."""
    results = []
    with tempfile.TemporaryDirectory(prefix="pruning-browser-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "notebooks"
        folder.mkdir()
        for p in lessons:
            shutil.copy2(p, folder / p.name)
        canary.write_canary(folder, KERNEL, KERNEL_NAME)
        with LabServer(Path(sys.executable), folder, tmp / "jupyter", out / "jupyterlab.log", ROOT) as server:
            server.wait_ready()
            print(f"JupyterLab {server.url} (pid {server.proc.pid}) serving a copy of the lessons in {folder}",
                  flush=True)
            with Browser(tmp / "chromium-profile", out / "chromedriver.log") as browser:
                names = ([canary.NAME] if with_canary else []) + [p.name for p in lessons]
                _clear_old(out, names)
                for name in names:
                    if name == canary.NAME:
                        res = _check_canary(browser, server, out, timeout)
                    else:
                        res = check_notebook(browser.driver, server, name, out, timeout, slider_timeout)
                        _console(browser, res)
                    server.shutdown_sessions()
                    results.append(res)
                    print(_report(res), flush=True)
    return results


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Command line of ``make test-browser``; 0 when every lesson looks right, 1 when one does
    not, 2 when the check cannot run here (and what to install)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lessons", nargs="*", default=DEFAULT_LESSONS,
                    help="lesson numbers (default 00 01 04; none: the canary alone)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "browser", help="screenshots go here")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds for one lesson's cells")
    ap.add_argument("--slider-timeout", type=float, default=120.0, help="seconds for a slider's figure to change")
    ap.add_argument("--no-canary", action="store_true", help="skip the notebook of planted defects")
    args = ap.parse_args(argv)
    missing = missing_browser()
    problem = _kernel_problem()
    if missing or problem:
        if missing:
            print("make test-browser needs " + ", ".join(missing) + ";\n" + INSTALL_HINT, file=sys.stderr)
        if problem:
            print(problem, file=sys.stderr)
        print("browser check not run (this is a failure, not a skip)", file=sys.stderr)
        return 2
    try:
        lessons = lesson_paths(args.lessons)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        signal.signal(signal.SIGTERM, _exit_on_signal)  # unwind, so the server and browser are stopped
        signal.signal(signal.SIGHUP, _exit_on_signal)
        results = run(lessons, args.out.resolve(), args.timeout, args.slider_timeout, not args.no_canary)
    except Exception:
        traceback.print_exc()
        print(f"the browser check could not run; see {args.out / 'jupyterlab.log'} and "
              f"{args.out / 'chromedriver.log'}", file=sys.stderr)
        return 1
    failed = [r for r in results if not r.ok]
    print(f"screenshots and executed copies: {args.out}")
    print(f"browser: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
