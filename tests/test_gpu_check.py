"""bench/gpu_check.py in its tiny CPU form (issue 18, section 5): it runs end to end and writes
a GPU.md that names the device and holds the smoke, throughput and latency tables."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _declares_smoke(nb: Path) -> bool:
    from pruninglib.run import runner

    return "SMOKE" in runner.notebook_parameters(nb)


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after ``heading``."""
    part = text.split(heading, 1)[1]
    rows = []
    for line in part.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and the alignment row


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "GPU.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc, out


def test_tiny_cpu_run_writes_the_report(report):
    proc, out = report
    assert out.is_file(), proc.stdout + proc.stderr
    text = out.read_text()
    assert text.startswith("# GPU check (TINY FORM")
    assert re.search(r"\*\*Device:\*\* cpu ", text)  # the device is named
    for heading in ("## (a) Smoke paper paths", "## (b) Training throughput", "## (c) Latency"):
        assert heading in text
    assert f"wrote {out}" in proc.stdout


def test_throughput_rows_hold_both_arms_and_their_ratio(report):
    text = report[1].read_text()
    rows = _table(text, "## (b) Training throughput")
    assert [r[0].split(" (")[0] for r in rows] == ["CIFAR VGG-16", "ResNet-56", "VGG16"]
    for r in rows:
        fp32, bf16, ratio = (float(v) for v in r[3:6])
        assert fp32 > 0 and bf16 > 0 and r[6] == "-" and r[7] == ""  # no TF32 arm off CUDA
        assert ratio == pytest.approx(bf16 / fp32, rel=0.01)


def test_latency_rows_cover_both_precisions_and_batches(report):
    text = report[1].read_text()
    rows = _table(text, "## (c) Latency")
    assert [(r[0], r[1]) for r in rows] == [("fp32", "1"), ("fp32", "2"), ("bf16+channels_last", "1"),
                                            ("bf16+channels_last", "2")]
    for r in rows:
        assert re.fullmatch(r"[\d.]+ \[[\d.]+, [\d.]+\]", r[2]) and float(r[4]) > 0 and r[5] == ""
    mac = float(re.search(r"MAC ratio ([\d.]+)x", text).group(1))
    assert 3 < mac < 4.5  # half the filters of every conv: close to 4x fewer conv MACs


def test_smoke_dry_run_lists_every_lesson_and_the_exit_status_follows(report):
    proc, out = report
    rows = _table(out.read_text(), "## (a) Smoke paper paths")
    lessons = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [r[0] for r in rows] == [p.stem for p in lessons]
    declared = {p.stem: _declares_smoke(p) for p in lessons}
    assert {r[0]: r[1] == "declares SMOKE" for r in rows} == declared
    assert proc.returncode == (0 if all(declared.values()) else 1), proc.stdout + proc.stderr


def test_unusable_device_is_refused():
    sys.path.insert(0, str(ROOT))
    from bench import gpu_check

    assert gpu_check.main(["--device", "nonsense", "--tiny"]) == 2
