"""The Makefile's disk check (``need_disk``): too little space stops set-up and tests before anything is written,
with a message that names the fix (CI once failed halfway through ``pip install`` with "No space left on device")."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(tmp_path: Path, gb: int) -> subprocess.CompletedProcess:
    extra = tmp_path / "extra.mk"
    marker = tmp_path / "written"
    extra.write_text(f"diskcheck:\n\t$(call need_disk,{tmp_path},{gb},the test)\n\ttouch {marker}\n")
    return subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-f", str(extra),
                           "diskcheck"], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_too_little_disk_stops_before_writing_and_names_the_fix(tmp_path):
    proc = _make(tmp_path, 10**9)  # a billion GB: never free
    assert proc.returncode != 0
    assert f"the test needs about {10**9} GB free in {tmp_path}" in proc.stderr
    assert "fix: free disk space there" in proc.stderr and "TMPDIR" in proc.stderr
    assert not (tmp_path / "written").exists()


def test_enough_disk_goes_on(tmp_path):
    proc = _make(tmp_path, 0)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "written").exists()


def test_install_and_test_both_check():
    text = (ROOT / "Makefile").read_text()
    install = text.split("$(STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    test = text.split("\ntest: install", 1)[1].split("\n\n", 1)[0]
    assert "need_disk" in install.split("-m venv")[0] and "need_disk" in test.split("pytest")[0]
