"""Tests of the benchmark harness: ``python -m bench --quick`` must run and say what it measured.

One quick run (in process, via ``bench.__main__.main``) feeds most tests; no test asserts a
time, only structure and the machinery's facts (masks do not shrink a model, surgery does,
Torch-Pruning's model computes ours, the MAC ratio falls as filters go).
"""
from __future__ import annotations

import importlib.machinery
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench import SECTIONS
from bench import collection, peers
from bench.__main__ import main, select_sections
from pruninglib.core.metrics import interleaved_latency
from bench.common import (md_table, nonzero_parameters, render_result,
                          torch_pruning_or_none, uniform_filter_plan)

TP_INSTALLED = torch_pruning_or_none() is not None
NUMBER_ROW = re.compile(r"^\|.*\d.*\|\s*$")


def _fake_runs(root: Path) -> Path:
    """A runs/ folder with a quick-mode summary.json as pruninglib.run writes it."""
    runs = root / "runs"
    (runs / "20990101-000000").mkdir(parents=True)
    recs = [
        {"notebook": "00_tour", "params": {"MODE": "quick"}, "status": "ok", "seconds": 12.5,
         "records": {"x": 1}, "error": None},
        {"notebook": "01_obd_obs_hessian", "params": {"MODE": "quick"}, "status": "FAILED",
         "seconds": 30.25, "records": {}, "error": "cell 3: ValueError: boom"},
    ]
    (runs / "20990101-000000" / "summary.json").write_text(json.dumps(recs))
    return runs


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str]:
    root = tmp_path_factory.mktemp("bench")
    out = root / "out"
    rc = main(["--quick", "--out", str(out), "--runs", str(_fake_runs(root))])
    return rc, out, (out / "RESULTS.md").read_text(encoding="utf-8")


def _section(text: str, key: str) -> str:
    title = next(s.title for s in SECTIONS if s.key == key)
    start = text.index(f"## {title}")
    nxt = text.find("\n## ", start + 1)
    return text[start: nxt if nxt >= 0 else len(text)]


def _tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in ``text`` as a list of ``{header: cell}`` rows."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.match(r"^\|[-:|]+\|$", lines[i + 1].strip()):
            head = [h.strip() for h in lines[i].strip().strip("|").split("|")]
            rows, j = [], i + 2
            while j < len(lines) and lines[j].startswith("|"):
                cells = [c.strip() for c in lines[j].strip().strip("|").split("|")]
                rows.append(dict(zip(head, cells)))
                j += 1
            tables.append(rows)
            i = j
        else:
            i += 1
    return tables


def _num(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("x%").split()[0])


# --------------------------------------------------------------------------- quick run


def test_quick_run_succeeds_and_has_every_section(quick_run: tuple[int, Path, str]) -> None:
    rc, out, text = quick_run
    assert rc == 0, text
    contents = _tables(text[text.index("## Contents"):])[0]
    assert len(contents) == len(SECTIONS)
    assert all(r["status"] in ("ok", "not available") for r in contents), contents
    assert "Quick mode" in text and "## Environment" in text
    for key in ("device", "threads", "torch", "date"):
        assert re.search(rf"^\| {key} \| .+ \|$", text, re.M), key
    for s in SECTIONS:
        body = _section(text, s.key)
        has_numbers = any(NUMBER_ROW.match(line) for line in body.splitlines()[1:])
        if s.core:
            assert has_numbers, f"section {s.key} has no table with numbers"
        else:
            assert has_numbers or "not available:" in body, s.key


def test_speedup_tables(quick_run: tuple[int, Path, str]) -> None:
    _, out, text = quick_run
    tables = _tables(_section(text, "speedup"))
    assert len(tables) == 2  # one per model
    for t in tables:
        assert [r["filters removed"] for r in t] == ["0%", "25%", "50%", "60%", "75%"]
        ratios = [_num(r["MAC ratio"]) for r in t]
        params = [_num(r["params"]) for r in t]
        assert ratios[0] == 1.0 and all(a > b for a, b in zip(ratios, ratios[1:]))
        assert all(a > b for a, b in zip(params, params[1:]))
        for r in t:
            assert _num(r["b1 speed-up"]) > 0 and "[" in r["b1 latency ms median [min, max]"]
            red = _num(t[0]["GMACs"]) / _num(r["GMACs"])
            assert _num(r["limit (MAC red.)"]) == pytest.approx(red, rel=2e-3)
    assert (out / "figures" / "speedup.png").stat().st_size > 1000
    assert "](figures/speedup.png)" in text


def test_peers_masks_do_not_shrink_ours_do_torch_pruning_agrees(quick_run: tuple[int, Path, str]) -> None:
    _, out, text = quick_run
    body = _section(text, "peers")
    tables = _tables(body)
    assert len(tables) == 2
    for t in tables:
        rows = {r["method"]: r for r in t}
        base = _num(rows["unpruned"]["params"])
        assert _num(rows["torch.nn.utils.prune (mask)"]["params"]) == base  # masks only
        assert _num(rows["torch.nn.utils.prune + remove()"]["params"]) == base
        assert _num(rows["ours (prune_channels)"]["params"]) < base  # physically smaller
        assert (_num(rows["torch.nn.utils.prune (mask)"]["size on disk MB"])
                > _num(rows["unpruned"]["size on disk MB"]))  # weight_orig + weight_mask
        assert rows["torch.nn.utils.prune (mask)"]["same filters as ours"] == "yes"
        assert _num(rows["ours (prune_channels)"]["max abs diff vs ours"]) == 0.0
        if TP_INSTALLED:
            tp_row = rows["Torch-Pruning"]
            assert _num(tp_row["max abs diff vs ours"]) <= 1e-5
            assert _num(tp_row["params"]) == _num(rows["ours (prune_channels)"]["params"])
        else:
            assert "Torch-Pruning" not in rows
    if TP_INSTALLED:
        assert body.count(": PASS") == 2 and ": FAIL" not in body
        line = next(ln for ln in body.splitlines() if ln.startswith("Torch-Pruning equivalence"))
        diffs = [float(v) for v in re.findall(r"= (\d[-+.\de]*\d)", line)]
        assert len(diffs) == 2 and max(diffs) <= 1e-5
    else:
        assert 'pip install -e .' in body
    assert (out / "figures" / "peers.png").is_file()


def test_collection_reads_latest_quick_summary(quick_run: tuple[int, Path, str]) -> None:
    _, _, text = quick_run
    body = _section(text, "collection")
    rows = _tables(body)[0]
    assert [r["notebook"] for r in rows] == ["00_tour", "01_obd_obs_hessian", "**total**"]
    assert _num(rows[-1]["wall s"]) == pytest.approx(42.75, abs=0.01)
    assert rows[-1]["status"] == "1/2 ok" and "ValueError: boom" in rows[1]["error"]


# ------------------------------------------------------------------------ pieces


def test_collection_without_runs_says_make_run(tmp_path: Path) -> None:
    res = collection.run(runs_dir=tmp_path / "nothing")
    assert not res["found"] and "run `make run` first" in res["markdown"]
    runs = _fake_runs(tmp_path)
    paper = runs / "20990102-000000"
    paper.mkdir()
    (paper / "summary.json").write_text(json.dumps(
        [{"notebook": "00_tour", "params": {"MODE": "paper"}, "status": "ok", "seconds": 1.0}]))
    res = collection.run(runs_dir=runs)  # the newest run is paper mode: the quick one is read
    assert res["found"] and res["total_s"] == pytest.approx(42.75)


def _tiny_chain() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 8 * 8, 4))


def test_peers_without_torch_pruning_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "torch_pruning_or_none", lambda: None)
    spec = peers.PeerSpec("tiny", _tiny_chain, 8, 1, 1, 0, 1, randomize_bn=True)
    res = peers.run(specs=[spec], device=torch.device("cpu"))
    assert not res["torch_pruning_installed"] and res["max_abs_diff_tp"] == {}
    assert 'pip install -e .' in res["markdown"]
    rows = res["results"][0]["rows"]
    assert "Torch-Pruning" not in rows
    # BatchNorm shifts leak through masks: the masked net is not the pruned net.
    assert rows["torch.nn.utils.prune (mask)"]["max_abs_diff_vs_ours"] > 1e-4
    assert rows["ours (prune_channels)"]["params"] < rows["unpruned"]["params"]


@pytest.mark.skipif(not TP_INSTALLED, reason="torch-pruning not installed")
def test_torch_pruning_matches_ours_on_a_chain() -> None:
    spec = peers.PeerSpec("tiny", _tiny_chain, 8, 1, 1, 0, 1, level=0.6, randomize_bn=True)
    rows = peers.run(specs=[spec], device=torch.device("cpu"))["results"][0]["rows"]
    assert rows["Torch-Pruning"]["max_abs_diff_vs_ours"] <= 1e-5
    assert rows["Torch-Pruning"]["params"] == rows["ours (prune_channels)"]["params"]


def test_uniform_plan_and_nonzero_count() -> None:
    torch.manual_seed(0)
    m = _tiny_chain()
    plan = uniform_filter_plan(m, 0.5)
    assert set(plan) == {"0", "3"} and [len(v) for v in plan.values()] == [4, 3]
    l1 = m[0].weight.abs().flatten(1).sum(1)
    assert set(plan["0"]) == set(torch.argsort(l1)[:4].tolist())
    with pytest.raises(ValueError, match="fraction"):
        uniform_filter_plan(m, 1.0)
    import torch.nn.utils.prune as tprune

    n0 = nonzero_parameters(m)
    tprune.ln_structured(m[0], "weight", amount=4, n=1, dim=0)
    assert nonzero_parameters(m) == n0 - 4 * 3 * 3 * 3


def test_interleaved_latency_reports_each_model() -> None:
    ms = {"a": nn.Linear(4, 4), "b": nn.Linear(4, 2)}
    res = interleaved_latency(ms, torch.zeros(3, 4), rounds=3, warmup=1)
    assert set(res) == {"a", "b"}
    for r in res.values():
        assert r.repeats == 3 and r.batch_size == 3 and r.min_s <= r.median_s <= r.max_s


def test_md_table_and_generic_rendering(tmp_path: Path) -> None:
    t = md_table(["a", "b"], [["x", 1234567], ["y", 0.5]])
    assert t.splitlines() == ["| a | b |", "|---|---:|", "| x | 1,234,567 |", "| y | 0.5 |"]
    with pytest.raises(ValueError, match="cells"):
        md_table(["a"], [[1, 2]])
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([0, 1])
    md, figs = render_result({"rows": [{"n": 1, "ratio": 2.5}], "total": 3, "figures": {"curve": fig}},
                             tmp_path, "demo")
    assert "| n | ratio |" in md and "| 1 | 2.5 |" in md and "| total | 3 |" in md
    assert figs == ["demo_curve.png"] and (tmp_path / "demo_curve.png").is_file()
    assert render_result({"markdown": "hello"}, tmp_path, "x")[0] == "hello"


# ------------------------------------------------------------------- failure handling


def _fake_module(name: str, run) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.run = run
    return mod


def test_failures_core_fails_the_run_optional_is_not_available(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(quick: bool = False) -> dict:
        raise RuntimeError("kaput")

    monkeypatch.setitem(sys.modules, "bench.oracle_speed", _fake_module("bench.oracle_speed", boom))
    monkeypatch.setattr(collection, "run", boom)
    rc = main(["--quick", "--only", "oracle,collection", "--out", str(tmp_path)])
    text = (tmp_path / "RESULTS.md").read_text()
    assert rc == 1
    assert "not available: RuntimeError: kaput" in _section(text, "oracle_speed")
    assert "FAILED: RuntimeError: kaput" in _section(text, "collection")
    assert "## 1. Real speed-up" not in text  # --only honoured


def test_bad_command_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "nope"]) == 2
    assert "Valid: speedup" in capsys.readouterr().err
    assert main(["--threads", "0", "--only", "peers"]) == 2
    assert [s.key for s in select_sections("hessian,speedup")] == ["speedup", "hessian_scaling"]
    assert main(["--list"]) == 0


def test_merge_replaces_only_the_sections_run(tmp_path):
    """``--only KEY --merge`` keeps every other section of an existing RESULTS.md, with its date."""
    from bench.__main__ import merge_sections, read_sections, write_results
    from bench.common import Section

    old = [Section("speedup", SECTIONS[0].title, "old speed-up text", [], "ok", 1.0, 1.0, "2026-11-30"),
           Section("peers", [s.title for s in SECTIONS if s.key == "peers"][0], "old peers text", ["peers.png"],
                   "ok", 2.0, 2.0, "2026-11-30")]
    env = {"date": "2026-11-30", "device": "cpu"}
    write_results(old, tmp_path, env, False, [])
    back = read_sections(tmp_path / "RESULTS.md")
    assert [s.key for s in back.values()] == ["speedup", "peers"]
    assert back["peers"].markdown == "old peers text" and back["peers"].figures == ["peers.png"]
    assert back["speedup"].measured == "2026-11-30"
    fresh = Section("peers", old[1].title, "new peers text", [], "ok", 3.0, 3.0, "2026-12-02")
    merged = merge_sections(tmp_path / "RESULTS.md", [fresh])
    assert [(s.key, s.markdown, s.measured) for s in merged] == [
        ("speedup", "old speed-up text", "2026-11-30"), ("peers", "new peers text", "2026-12-02")]
