"""Every lesson's paper-mode code path runs under test (issue 18, Sec. 1).

``python -m pruninglib.run --smoke`` executes every lesson found in ``notebooks/`` (07-09 included once they
exist) with ``MODE = "paper"`` and ``SMOKE = True``: the paper's models, widths, image sizes and methods,
with every loop capped and every dataset cut to a few examples. Paper mode's downloads are replaced by the
stand-ins of ``tests/standins/`` (real on-disk formats, written into a temporary folder), found through
``PRUNINGLIB_DATA``, offline. The sweep runs once per session (module fixture); the tests read its results.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import standins
from pruninglib.run.runner import discover_notebooks, notebook_parameters

ROOT = Path(__file__).resolve().parents[1]
ALL_LESSONS = discover_notebooks(ROOT / "notebooks")
ALL_NOTEBOOKS = discover_notebooks(ROOT / "notebooks", solutions=True)
#: ``make test`` sweeps every lesson: each smoke run keeps paper mode's full-size models (lesson 01's exact Hessian
#: of 3,776 weights, VGG16 at 224 px, full-width CIFAR VGG-16/19, ResNet-32/56, MobileNetV2, the char GPT) with its
#: loops capped -- oracles on a sample of the units, one epoch of a few batches, the smallest sweep -- so that the
#: whole sweep takes minutes on a 2-core CPU.
LESSONS = ALL_LESSONS
#: Lessons whose paper run must print and record its estimated cost (issue 18, Sec. 4).
ESTIMATED = [nb for nb in LESSONS if nb.stem[:2] in {"00", "01", "02", "03", "04", "05", "06"}]
SWEEP_TIMEOUT_S = 3600  # a generous ceiling: the sweep itself takes minutes; a hang must not block CI forever


def _outputs_text(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/plain") or out.get("data", {}).get("text/markdown")
            if text:
                parts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(parts)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Write the stand-ins, run ``python -m pruninglib.run --smoke`` over every lesson, yield its results."""
    data_root = tmp_path_factory.mktemp("standins")
    written = standins.write_all(data_root)
    out = tmp_path_factory.mktemp("smoke") / "run"
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, **standins.env(data_root), "PRUNINGLIB_CACHE": str(cache),
           "PRUNINGLIB_STATIC": "1", "PRUNINGLIB_DEVICE": "cpu", "MPLBACKEND": "Agg"}
    env.pop("PRUNINGLIB_NO_CACHE", None)
    jobs = str(max(1, min(2, os.cpu_count() or 1)))
    only = ",".join(nb.stem for nb in LESSONS)
    proc = subprocess.run([sys.executable, "-m", "pruninglib.run", "--smoke", "--only", only, "--jobs", jobs,
                           "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
    # The sweep's cache holds full-size paper models and K-FAC factors (about 6 GB, lesson 07's VGG19 Fishers
    # most of it): remove it once the sweep is read, so that repeated test runs do not fill the disk.
    shutil.rmtree(cache, ignore_errors=True)
    yield {"proc": proc, "out": out, "summary": summary, "written": written}
    shutil.rmtree(data_root, ignore_errors=True)


def _results(sweep) -> dict[str, dict]:
    assert sweep["summary"] is not None, f"no summary.json; runner output:\n{sweep['proc'].stdout[-3000:]}\n" \
                                         f"{sweep['proc'].stderr[-3000:]}"
    rows = sweep["summary"]["results"] if isinstance(sweep["summary"], dict) else sweep["summary"]
    return {r["notebook"]: r for r in rows}


@pytest.mark.parametrize("nb", ALL_NOTEBOOKS, ids=lambda p: p.relative_to(ROOT / "notebooks").as_posix())
def test_every_notebook_declares_smoke_off(nb):
    """``SMOKE = False`` in every parameters cell: the runner can inject it, and it is never on by default."""
    params = notebook_parameters(nb)
    assert params.get("SMOKE") == "False", f"{nb.name}: its parameters cell must set SMOKE = False"


def test_standins_cover_paper_downloads(tmp_path):
    """The stand-ins load through the real loading code and say they are stand-ins."""
    from pruninglib import data

    written = standins.vision.write(tmp_path)
    assert {"mnist", "cifar10", "cifar100", "cats_vs_dogs", "oxford_pets", "vgg16_imagenet_weights"} <= set(written)
    old = os.environ.get("PRUNINGLIB_DATA")
    os.environ["PRUNINGLIB_DATA"] = str(tmp_path)
    try:
        for name in ("mnist", "fashion_mnist", "cifar10", "cats_vs_dogs", "oxford_pets"):
            ds = data.load_dataset(name, "train")
            assert 0 < len(ds) < 1000, name
            assert data.is_standin(name), name
        assert len(data.load_dataset("cifar10", "test")) == 40
    finally:
        if old is None:
            os.environ.pop("PRUNINGLIB_DATA")
        else:
            os.environ["PRUNINGLIB_DATA"] = old
    import torch
    import torchvision

    sd = torch.load(tmp_path / standins.vision.TORCH_HOME / "hub" / "checkpoints" / standins.vision.VGG16_FILE,
                    weights_only=True)
    model = torchvision.models.vgg16(weights=None)
    model.load_state_dict(sd)  # torchvision VGG16's keys and shapes exactly
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


def test_smoke_sweep_runs_every_lesson(sweep):
    """``python -m pruninglib.run --smoke`` succeeds for every lesson found (on CPU, offline, stand-in data)."""
    results = _results(sweep)
    assert set(results) == {nb.stem for nb in LESSONS}, sorted(results)
    failed = {k: r.get("error") for k, r in results.items() if r["status"] != "ok"}
    assert not failed, f"smoke runs failed: {failed}\n{sweep['proc'].stdout[-2000:]}"
    assert sweep["proc"].returncode == 0, sweep["proc"].stderr[-2000:]
    for r in results.values():
        assert r["params"].get("SMOKE") is True and r["params"].get("MODE") == "paper"


@pytest.mark.parametrize("nb", LESSONS, ids=lambda p: p.stem)
def test_smoke_outputs_are_labelled(sweep, nb):
    """What a smoke run prints says it is a smoke run on stand-in data, not a result."""
    executed = sweep["out"] / f"{nb.stem}.ipynb"
    assert executed.exists(), f"no executed notebook {executed.name}"
    text = _outputs_text(executed)
    assert "SMOKE" in text, f"{nb.stem}: the smoke banner is missing from its outputs"
    assert "stand-in" in text, f"{nb.stem}: its outputs never say the data are stand-ins"


@pytest.mark.parametrize("nb", ESTIMATED, ids=lambda p: p.stem)
def test_paper_estimate_printed_and_recorded(sweep, nb):
    """Each lesson says what its paper run costs before it starts (issue 18, Sec. 4)."""
    r = _results(sweep)[nb.stem]
    assert r["status"] == "ok", r.get("error")
    hours = r["records"].get("paper_estimate_hours")
    assert isinstance(hours, (int, float)) and hours > 0, r["records"].keys()
    text = _outputs_text(sweep["out"] / f"{nb.stem}.ipynb")
    assert f"lesson {nb.stem[:2]} paper mode: about" in text
