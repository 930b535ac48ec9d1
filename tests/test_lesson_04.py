"""Lesson 04's helpers in pruninglib.lessons.transfer: one pruning round, a stage's record, the speed-up rows.

The loop itself (:func:`prune_finetune_loop`) is tested in ``tests/test_transfer.py``; here its parts
are tested on their own, and the loop is checked to be exactly their composition. A tiny VGG-like
network on synthetic images keeps every test to a fraction of a second.
"""
from __future__ import annotations

import copy

import pytest
import torch

from pruninglib import set_seed
from pruninglib.core.metrics import count_parameters
from pruninglib.data import synthetic_images
from pruninglib.lessons.transfer import (conv_counts, finetune, prune_finetune_loop, prune_iteration, rank_filters,
                                         remove_lowest_filters, speedup_rows, stage_record, total_conv_filters)
from pruninglib.train import evaluate, make_loader
from test_transfer import TinyVGG  # the same small VGG-like model as the transfer tests

pytestmark = pytest.mark.usefixtures("one_thread")



def _tiny(seed: int = 0) -> TinyVGG:
    set_seed(seed)
    return TinyVGG()


def _data(n: int = 32, seed: int = 0):
    return synthetic_images(n=n, num_classes=4, channels=3, size=16, seed=seed)


# ------------------------------------------------------------------------ prune_iteration


def test_prune_iteration_ranks_removes_the_lowest_and_checks_the_surgery() -> None:
    m, ref = _tiny(), _tiny()
    ds = _data()
    ranked = []
    plan, diff = prune_iteration(m, make_loader(ds, 16), 5, iteration=3,
                                 on_rank=lambda it, s: ranked.append((it, {n: v.clone() for n, v in s.items()})),
                                 check_batch=ds.tensors[0][:8])
    expected = remove_lowest_filters(ref, rank_filters(ref, make_loader(ds, 16)), 5)
    assert plan == expected and sum(len(v) for v in plan.values()) == 5
    assert conv_counts(m) == conv_counts(ref) and total_conv_filters(m) == 36 - 5
    assert [it for it, _ in ranked] == [3]
    assert sum(len(v) for v in ranked[0][1].values()) == 36  # scored before the removal
    assert diff is not None and 0 <= diff <= 1e-5  # the pruned model computes what the gated one does
    with torch.no_grad():
        assert torch.equal(m.eval()(ds.tensors[0]), ref.eval()(ds.tensors[0]))


def test_prune_iteration_without_a_check_batch_returns_no_difference() -> None:
    m = _tiny()
    plan, diff = prune_iteration(m, make_loader(_data(), 16), 4, criterion="weight_l1")
    assert diff is None and sum(len(v) for v in plan.values()) == 4
    assert all(p.requires_grad for p in m.parameters())  # the ranking pass restores the flags


# --------------------------------------------------------------------------- stage_record


def test_stage_record_keys_and_counts() -> None:
    m = _tiny()
    start = total_conv_filters(m)
    remove_lowest_filters(m, {n: torch.arange(c, dtype=torch.float) for n, c in conv_counts(m).items()}, 6)
    calls = []

    def evaluate_fn(model):
        calls.append("evaluate")
        return {"accuracy": 0.5, "x": 1}

    def measure_fn(model):
        calls.append("measure")
        return {"params": count_parameters(model), "x": 2}

    rec = stage_record(m, "iter 1", 1, 6, {"features.0": [0, 1, 2], "features.3": [0, 1, 2]}, start, 1.5, 2.5,
                       evaluate_fn, measure_fn)
    assert list(rec)[:9] == ["stage", "iteration", "removed_now", "removed_total", "plan_sizes", "counts", "filters",
                             "rank_s", "finetune_s"]
    assert rec["stage"] == "iter 1" and rec["iteration"] == 1 and rec["removed_now"] == 6
    assert rec["removed_total"] == 6 and rec["filters"] == start - 6 == sum(rec["counts"].values())
    assert rec["plan_sizes"] == {"features.0": 3, "features.3": 3}
    assert rec["counts"] == conv_counts(m)
    assert (rec["rank_s"], rec["finetune_s"]) == (1.5, 2.5)
    assert calls == ["evaluate", "measure"] and rec["x"] == 2  # measured after evaluating: its keys win
    assert rec["accuracy"] == 0.5 and rec["params"] == count_parameters(m)


def test_stage_record_without_callbacks_is_the_bookkeeping_only() -> None:
    m = _tiny()
    rec = stage_record(m, "unpruned", 0, 0, {}, total_conv_filters(m))
    assert rec == {"stage": "unpruned", "iteration": 0, "removed_now": 0, "removed_total": 0, "plan_sizes": {},
                   "counts": conv_counts(m), "filters": 36, "rank_s": 0.0, "finetune_s": 0.0}


# ------------------------------------------------------------- the loop is their composition


def _without_timings(recs):
    return [{k: v for k, v in r.items() if k not in ("rank_s", "finetune_s")} for r in recs]


def test_the_loop_is_prune_iteration_then_finetune_then_stage_record() -> None:
    tr, te = _data(48, 0), _data(16, 1)

    def ft(model, it):
        finetune(model, tr, epochs=1, lr=0.01, batch_size=16, seed=it, progress=False)

    def evaluate_fn(model):
        return evaluate(model, make_loader(te, 16))

    m = _tiny()
    seen = []
    recs = prune_finetune_loop(m, lambda: make_loader(tr, 16), 4, 2, finetune_fn=ft,
                               final_finetune_fn=lambda model: ft(model, 100), evaluate_fn=evaluate_fn,
                               on_stage=lambda rec, model: seen.append(copy.deepcopy(rec)),
                               check_batch=te.tensors[0][:4], progress=False)

    h = _tiny()
    start = total_conv_filters(h)
    manual = [stage_record(h, "unpruned", 0, 0, {}, start, evaluate_fn=evaluate_fn)]
    for it in (1, 2):
        plan, diff = prune_iteration(h, make_loader(tr, 16), 4, iteration=it, check_batch=te.tensors[0][:4])
        ft(h, it)
        manual.append(stage_record(h, f"iter {it}", it, 4, plan, start, evaluate_fn=evaluate_fn))
        manual[-1]["surgery_max_diff"] = diff
    ft(h, 100)
    manual.append(stage_record(h, "final", 2, 0, {}, start, evaluate_fn=evaluate_fn))

    assert _without_timings(recs) == _without_timings(manual)
    assert all("surgery_max_diff" not in r for r in seen)  # added after on_stage is called
    for a, b in zip(m.state_dict().values(), h.state_dict().values()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- speedup_rows


def _stage(name, macs, size_mb, lat_cpu, thr_cpu, lat_cuda=None, thr_cuda=None):
    r = {"stage": name, "macs": macs, "size_mb": size_mb, "latency_ms_cpu": lat_cpu, "throughput_cpu": thr_cpu}
    if lat_cuda is not None:
        r.update(latency_ms_cuda=lat_cuda, throughput_cuda=thr_cuda)
    return r


def test_speedup_rows_are_ratios_against_the_first_stage() -> None:
    recs = [_stage("unpruned", 400, 500.0, 80.0, 10.0), _stage("iter 1", 200, 250.0, 50.0, 16.0),
            _stage("iter 2", 100, 200.0, 40.0, 25.0)]
    rows = speedup_rows(recs)
    assert [r["stage"] for r in rows] == ["unpruned", "iter 1", "iter 2"]
    assert list(rows[0]) == ["stage", "mac_ratio", "size_ratio", "speedup_cpu", "thr_ratio_cpu"]
    assert rows[0] == {"stage": "unpruned", "mac_ratio": 1.0, "size_ratio": 1.0, "speedup_cpu": 1.0,
                       "thr_ratio_cpu": 1.0}
    assert rows[1] == {"stage": "iter 1", "mac_ratio": 2.0, "size_ratio": 2.0, "speedup_cpu": 1.6,
                       "thr_ratio_cpu": 1.6}
    assert rows[2] == {"stage": "iter 2", "mac_ratio": 4.0, "size_ratio": 2.5, "speedup_cpu": 2.0,
                       "thr_ratio_cpu": 2.5}


def test_speedup_rows_per_device_and_bad_input() -> None:
    recs = [_stage("unpruned", 10, 4.0, 8.0, 1.0, 2.0, 100.0), _stage("final", 5, 2.0, 4.0, 3.0, 1.0, 150.0)]
    rows = speedup_rows(recs, ("cpu", "cuda"))
    assert rows[1]["speedup_cuda"] == 2.0 and rows[1]["thr_ratio_cuda"] == 1.5 and rows[1]["speedup_cpu"] == 2.0
    with pytest.raises(KeyError):
        speedup_rows(recs[:1] + [_stage("x", 5, 2.0, 4.0, 3.0)], ("cpu", "cuda"))
    with pytest.raises(ValueError, match="at least one record"):
        speedup_rows([])
