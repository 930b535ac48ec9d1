"""How many channels per layer: MACs model, uniform/global budgets, latency table, NetAdapt search."""
import itertools

import pytest
import torch

import pruninglib.methods.latency_search as ls
from pruninglib.core import metrics
from pruninglib import models
from pruninglib.core.metrics import interleaved_latency
from pruninglib.methods.latency_search import (MacsModel, build_latency_table, global_counts,
                                       netadapt_search, time_module, uniform_counts, width_grid)
from pruninglib.methods.selection import apply_kept


def _vgg(cfg=(8, "M", 16, 16), side=12, seed=0):
    torch.manual_seed(seed)
    return models.CifarVGG(list(cfg), in_channels=1, num_classes=4).eval()


# ----------------------------------------------------------------------------- MACs

@pytest.mark.parametrize("kind", ["vgg", "lenet"])
def test_macs_model_matches_count_macs_for_full_and_pruned_models(kind):
    if kind == "vgg":
        model, shape = _vgg(), (1, 1, 12, 12)
        kept = {"features.0": [0, 3, 5], "features.4": list(range(7)), "features.7": [1, 2]}
    else:
        torch.manual_seed(0)
        model, shape = models.LeNet3().eval(), (1, 1, 28, 28)
        kept = {"features.0": [0, 1, 2], "features.3": list(range(9)), "classifier.1": list(range(50)),
                "classifier.3": [4, 5]}
    mm = MacsModel(model, torch.zeros(shape))
    assert mm.macs() == metrics.count_macs(model, shape)
    pruned = apply_kept(model, {k: torch.tensor(v) for k, v in kept.items()})
    assert mm.macs({k: len(v) for k, v in kept.items()}) == metrics.count_macs(pruned, shape)


def test_uniform_and_global_allocations_meet_the_budget():
    model = _vgg()
    mm = MacsModel(model, torch.zeros(1, 1, 12, 12))
    widths, r = uniform_counts(mm, 0.5)
    assert mm.macs(widths) <= 0.5 * mm.macs() and 0 < r < 1
    assert widths == {n: max(1, round(r * c)) for n, c in mm.full.items()}
    scores = {n: torch.rand(c, generator=torch.Generator().manual_seed(1)) for n, c in mm.full.items()}
    kept = global_counts(scores, mm, 0.3)
    assert mm.macs({k: len(v) for k, v in kept.items()}) <= 0.3 * mm.macs()
    # one channel more in any layer would break the budget or the greedy order is respected
    assert all(len(v) >= 1 for v in kept.values())
    with pytest.raises(ValueError, match="raise the budget"):
        uniform_counts(mm, 1e-6)


def test_width_grid_contains_the_full_widths():
    grid = width_grid(_vgg(), [0.25, 0.5])
    assert grid == {"features.0": [2, 4, 8], "features.4": [4, 8, 16], "features.7": [4, 8, 16]}
    with pytest.raises(ValueError, match="fractions"):
        width_grid(_vgg(), [0.0, 1.5])


# ----------------------------------------------------------------------------- latency table

def _heavy():
    """A model whose layers differ a lot in cost between widths (stable timings)."""
    return _vgg((8, 48, "M", 48), seed=1)


def test_latency_table_is_measured_positive_and_grows_with_width():
    model = _heavy()
    x = torch.randn(16, 1, 24, 24)
    grid = width_grid(model, [0.125, 1.0])
    lut = build_latency_table(model, x, grid, warmup=2, repeats=7, threads=1, reduce="min")
    entries = lut.entries()
    assert len(entries) == 2 + 4 + 4 + 2  # first conv, two conv pairs, the classifier
    assert all(t > 0 for *_, t in entries)
    assert len({round(t, 9) for *_, t in entries}) > 1
    # the 48->48 conv at full width costs far more than at 6->6: measured, not typed
    seg = next(s for s in lut.segments if s.name == "features.3")
    assert seg.times[-1, -1] > 2 * seg.times[0, 0]
    assert lut.batch_size == 16 and lut.threads == 1 and lut.device == "cpu"
    assert lut.predict() == pytest.approx(sum(s.times[-1, -1] for s in lut.segments))


def test_a_monkeypatched_timer_changes_the_table(monkeypatch):
    model = _vgg()
    x = torch.randn(4, 1, 12, 12)
    grid = width_grid(model, [0.5, 1.0])
    real = build_latency_table(model, x, grid, warmup=0, repeats=2)
    ticks = itertools.count()
    monkeypatch.setattr(ls, "perf_counter", lambda: float(next(ticks)))  # every run "takes" 1 s
    fake = build_latency_table(model, x, grid, warmup=0, repeats=2)
    assert {t for *_, t in fake.entries()} == {1.0}
    assert all(t < 1.0 for *_, t in real.entries())
    # the same timer passed explicitly
    assert time_module(torch.nn.Identity(), x, 0, 3, timer=lambda: 5.0) == 0.0


def test_interpolation_between_grid_points():
    model = _vgg()
    lut = build_latency_table(model, torch.randn(2, 1, 12, 12), width_grid(model, [0.5, 1.0]), warmup=0, repeats=1)
    seg = next(s for s in lut.segments if s.name == "features.7")  # in: features.4 (8|16), out: features.7 (8|16)
    t = seg.times
    mid = lut.segment_time(seg, {"features.4": 12, "features.7": 16})
    assert mid == pytest.approx((t[0, 1] + t[1, 1]) / 2)
    assert lut.on_grid({"features.4": 8}) and not lut.on_grid({"features.4": 12})


# ----------------------------------------------------------------------------- NetAdapt

def test_netadapt_with_a_macs_budget_meets_it_and_keeps_the_best_proposal():
    model = _vgg()
    mm = MacsModel(model, torch.zeros(1, 1, 12, 12))
    grid = width_grid(model, [0.25, 0.5, 0.75, 1.0])
    # a toy "accuracy": prefers keeping features.7 wide, so the search should shrink the others first
    evaluate = lambda m: dict(m.named_modules())["features.7"].out_channels
    res = netadapt_search(model, mm, 0.5 * mm.macs(), evaluate, grid, steps=3, progress=False)
    assert res.cost <= 0.5 * mm.macs() and mm.macs(res.widths) == res.cost
    assert metrics.count_macs(res.model, (1, 1, 12, 12)) == res.cost
    costs = [h["cost"] for h in res.history]
    assert costs == sorted(costs, reverse=True)
    assert res.history[0]["layer"] != "features.7"
    assert {k: len(v) for k, v in res.kept.items()} == res.widths
    with pytest.raises(ValueError, match="unreachable"):
        netadapt_search(model, mm, 1.0, evaluate, grid, progress=False)


def test_latency_search_meets_its_target_on_the_device_it_measured():
    model = _heavy()
    x = torch.randn(16, 1, 24, 24)
    grid = width_grid(model, [0.25, 0.5, 0.75, 1.0])
    lut = build_latency_table(model, x, grid, warmup=2, repeats=4, threads=1, reduce="min", rounds=2)
    target = 0.5 * lut.predict()
    res = netadapt_search(model, lut, target, lambda m: 0.0, grid, steps=3, progress=False)
    assert lut.on_grid(res.widths)
    assert lut.predict(res.widths) <= target  # the table says the target is met ...
    # ... and a fresh, interleaved measurement on the same device agrees that the result is faster
    t = interleaved_latency({"full": model, "searched": res.model}, x, rounds=4, repeats=4, warmup=2, rewarm=1,
                            threads=1)
    assert t["searched"].min_s < 0.8 * t["full"].min_s


def test_constant_timer_makes_the_latency_target_unreachable(monkeypatch):
    model = _vgg()
    ticks = itertools.count()
    monkeypatch.setattr(ls, "perf_counter", lambda: float(next(ticks)))
    grid = width_grid(model, [0.5, 1.0])
    lut = build_latency_table(model, torch.randn(2, 1, 12, 12), grid, warmup=0, repeats=1)
    with pytest.raises(ValueError, match="unreachable"):
        netadapt_search(model, lut, 0.9 * lut.predict(), lambda m: 0.0, grid, progress=False)


def test_interleaved_latency_interleaves_rounds():
    ticks = itertools.count()
    calls = []

    class Named(torch.nn.Identity):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append(self.name)
            return x

    out = interleaved_latency({"a": Named("a"), "b": Named("b")}, torch.zeros(1), rounds=3, repeats=2, warmup=2,
                              rewarm=1, timer=lambda: float(next(ticks)))
    assert {k: (r.median_s, r.min_s, r.repeats) for k, r in out.items()} == {"a": (1.0, 1.0, 6), "b": (1.0, 1.0, 6)}
    # round 1: 2 warm-up + 2 timed runs each; rounds 2-3: 1 re-warm + 2 timed, a before b every round
    assert calls == ["a"] * 4 + ["b"] * 4 + (["a"] * 3 + ["b"] * 3) * 2
    with pytest.raises(ValueError, match="rounds"):
        interleaved_latency({"a": Named("a")}, torch.zeros(1), rounds=0)
