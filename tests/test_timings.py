import json

import nbformat

from pruninglib.run.lesson_times import latest_timings, update_notebooks


def test_timing_line_comes_from_the_newest_summary(tmp_path):
    runs, nbs = tmp_path / "runs", tmp_path / "nb"
    for ts, sec in [("20260101-000000", 100.0), ("20260102-000000", 90.0)]:
        (runs / ts).mkdir(parents=True)
        (runs / ts / "summary.json").write_text(json.dumps([
            {"notebook": "01_x", "params": {"MODE": "quick"}, "status": "ok", "seconds": sec},
            {"notebook": "01_x", "params": {"MODE": "quick", "SEED": 3}, "status": "ok", "seconds": 1.0},
            {"notebook": "01_x", "params": {"MODE": "laptop"}, "status": "FAILED", "seconds": 5.0}]))
    assert latest_timings(runs) == {"01_x": {"quick": (90.0, "20260102-000000")}}
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# T\n**Time on a 2-core CPU.** guessed\nmore")]
    nbformat.write(nb, nbs / "01_x.ipynb")
    assert update_notebooks(nbs, runs) == ["01_x"]
    src = nbformat.read(nbs / "01_x.ipynb", 4).cells[0].source
    assert "quick 1.5 min (run 20260102-000000)" in src and "laptop: not measured yet" in src and src.endswith("more")


def test_a_measured_timing_survives_when_its_run_folder_is_gone(tmp_path):
    runs, nbs = tmp_path / "runs", tmp_path / "nb"
    (runs / "20260301-000000").mkdir(parents=True)
    (runs / "20260301-000000" / "summary.json").write_text(json.dumps([
        {"notebook": "02_y", "params": {"MODE": "quick"}, "status": "ok", "seconds": 30.0}]))
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(
        "**Time on a 2-core CPU.** quick 9.0 min (run old-q); laptop 56.9 min (run 20260201-000000). Measured by x.")]
    nbformat.write(nb, nbs / "02_y.ipynb")
    assert update_notebooks(nbs, runs) == ["02_y"]
    src = nbformat.read(nbs / "02_y.ipynb", 4).cells[0].source
    # quick comes from the new run, laptop is kept from the line as it was
    assert "quick 0.5 min (run 20260301-000000)" in src and "laptop 56.9 min (run 20260201-000000)" in src
