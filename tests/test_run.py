"""Tests of the batch runner ``pruninglib.run`` on tiny throwaway notebooks.

Every execution starts a kernel (a few seconds each), so the notebooks are built once
per module and the tests run eight executions in all.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nbformat
import pytest

from pruninglib.run import main, notebook_parameters, parse_grid, parse_value, run_notebooks

PARAMS = 'MODE = "quick"\nSEED = 0\nRATIO = 0.5'
RECORD = 'from pruninglib import record\nrecord("double_seed", SEED * 2)\nrecord("ratio", RATIO)'


def _write(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    cells = [nbformat.v4.new_code_cell(PARAMS, metadata={"tags": ["parameters"]})]
    cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


@pytest.fixture(scope="module")
def nbdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("notebooks")
    _write(d / "01_good.ipynb", RECORD)
    _write(d / "02_bad.ipynb", RECORD, 'raise ValueError("boom")')
    (d / "README.ipynb").write_text("{}")  # not a lesson: must be ignored
    return d


def _summary(out: Path) -> list[dict]:
    assert (out / "summary.md").is_file()
    return json.loads((out / "summary.json").read_text())


# ----------------------------------------------------------------- no kernel needed


def test_parameters_and_values(nbdir: Path) -> None:
    assert notebook_parameters(nbdir / "01_good.ipynb") == {"MODE": '"quick"', "SEED": "0", "RATIO": "0.5"}
    assert parse_value("3") == 3 and parse_value("0.1") == 0.1 and parse_value("[1, 2]") == [1, 2]
    assert parse_value("adam") == "adam"
    assert parse_grid(["SEED=1,2", "OPT=sgd,adam"]) == {"SEED": [1, 2], "OPT": ["sgd", "adam"]}


def test_list(nbdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--notebooks", str(nbdir), "--list"]) == 0
    out = capsys.readouterr().out
    assert "01_good" in out and "02_bad" in out and "README" not in out
    assert "SEED = 0" in out and "RATIO = 0.5" in out


def test_unknown_notebook(nbdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--notebooks", str(nbdir), "--only", "99", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "99" in err and "01_good" in err and "02_bad" in err
    assert not (tmp_path / "summary.md").exists()


def test_unknown_mode(nbdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--notebooks", str(nbdir), "--mode", "turbo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "turbo" in err and all(m in err for m in ("quick", "laptop", "paper"))


@pytest.mark.parametrize("flag", [["-p", "SEEDS", "3"], ["--grid", "SEEDS=1,2"]])
def test_unknown_parameter(nbdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: list[str]) -> None:
    assert main(["--notebooks", str(nbdir), "--only", "01", *flag, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "SEEDS" in err and all(p in err for p in ("MODE", "SEED =", "RATIO"))
    with pytest.raises(ValueError, match="RATIO"):
        run_notebooks([nbdir / "01_good.ipynb"], params={"SEEDS": 3}, out=tmp_path)
    with pytest.raises(ValueError, match="laptop"):
        run_notebooks([nbdir / "01_good.ipynb"], mode="turbo", out=tmp_path)


# ------------------------------------------------------------------ real executions


def test_run_one_with_html(nbdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["--notebooks", str(nbdir), "--only", "01_good", "--html", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "01_good" in stdout and str(out / "summary.md") in stdout
    (row,) = _summary(out)
    assert set(row) == {"notebook", "params", "status", "seconds", "records", "error"}
    assert row["notebook"] == "01_good" and row["status"] == "ok" and row["error"] is None
    assert row["params"] == {"MODE": "quick"}
    assert row["records"] == {"double_seed": 0, "ratio": 0.5}
    assert row["seconds"] > 0
    md = (out / "summary.md").read_text()
    assert "| 01_good |" in md and "double_seed=0" in md and "FAILED" not in md
    assert (out / "01_good.ipynb").is_file()
    html = out / "01_good.html"
    assert html.is_file() and "<html" in html.read_text(encoding="utf-8").lower()


def test_param_override(nbdir: Path, tmp_path: Path) -> None:
    assert main(["--notebooks", str(nbdir), "--only", "01", "-p", "SEED", "3", "--mode", "laptop", "--out", str(tmp_path)]) == 0
    (row,) = _summary(tmp_path)
    assert row["params"] == {"MODE": "laptop", "SEED": 3}
    assert row["records"]["double_seed"] == 6


def test_grid_parallel(nbdir: Path, tmp_path: Path) -> None:
    results = run_notebooks(
        [nbdir / "01_good.ipynb"],
        grid={"SEED": [1, 2], "RATIO": [0.1, 0.2]},
        jobs=2,
        out=tmp_path,
        progress=False,
    )
    assert [r.status for r in results] == ["ok"] * 4
    assert [(r.combo["SEED"], r.combo["RATIO"]) for r in results] == [(1, 0.1), (1, 0.2), (2, 0.1), (2, 0.2)]
    with open(tmp_path / "grid.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    for row in rows:
        assert row["notebook"] == "01_good" and row["status"] == "ok"
        assert int(row["double_seed"]) == 2 * int(row["SEED"])
        assert float(row["ratio"]) == float(row["RATIO"])
    assert {(row["SEED"], row["RATIO"]) for row in rows} == {("1", "0.1"), ("1", "0.2"), ("2", "0.1"), ("2", "0.2")}
    assert (tmp_path / "grid.md").is_file()
    assert (tmp_path / "01_good__SEED=2_RATIO=0.1.ipynb").is_file()
    for key in ("double_seed", "ratio"):
        png = tmp_path / f"grid_{key}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(_summary(tmp_path)) == 4


def test_failure_does_not_stop_others(nbdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--notebooks", str(nbdir), "--out", str(tmp_path)]) == 1
    assert "FAILED" in capsys.readouterr().out
    good, bad = _summary(tmp_path)
    assert good["notebook"] == "01_good" and good["status"] == "ok"
    assert good["records"]["double_seed"] == 0
    assert bad["notebook"] == "02_bad" and bad["status"] == "FAILED"
    # Cells run: parameters (1), papermill's injected parameters (2), record (3), raise (4).
    assert bad["error"] == "cell 4: ValueError: boom"
    assert bad["records"] == {"double_seed": 0, "ratio": 0.5}  # recorded before the failure
    md = (tmp_path / "summary.md").read_text()
    assert "## Failures" in md and "cell 4: ValueError: boom" in md and 'raise ValueError("boom")' in md
