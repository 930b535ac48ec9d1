"""Lesson 07's protocol: equal parameter budgets, the Kron-OBS update in the pipeline, cached statistics, iterative pruning."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pruninglib import models
from pruninglib.core.metrics import count_parameters
from pruninglib.core.surgery import prune_channels
from pruninglib.lessons import kfac_structured as L
from pruninglib.train import make_loader

CFG = dict(vgg=[8, "M", 16, 16], vgg_width=1.0, res_depth=8, res_widths=(4, 8, 8))


def _data(n: int = 48, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def _net(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return L.build_net(kind, CFG, 1, 3).eval()


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
def test_plan_param_count_matches_the_surgery(kind: str) -> None:
    net = _net(kind)
    g = torch.Generator().manual_seed(1)
    from pruninglib.core.graph import prunable_layers

    plan = {pl.name: torch.randperm(pl.num_units, generator=g)[:pl.num_units // 2].tolist() for pl in prunable_layers(net)}
    pruned = prune_channels(copy.deepcopy(net), plan)
    assert L.plan_param_count(net, plan) == count_parameters(pruned) < count_parameters(net)


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
def test_every_method_meets_the_same_parameter_budget(kind: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNINGLIB_CACHE", str(tmp_path))
    net, batches = _net(kind), _data()
    stats = L.fisher_statistics(net, batches, "sampled", 0, {"test": kind}, progress=False)
    total = count_parameters(net)
    kept = {}
    for m in L.METHODS:
        pruned, info = L.prune_to_budget(net, m, stats, 0.4, batches[:1])
        kept[m] = count_parameters(pruned) / total
        assert kept[m] == pytest.approx(info["params"])
        assert kept[m] <= 0.6 + 1e-9, (m, kept[m])
        with torch.no_grad():
            assert torch.isfinite(pruned(batches[0][0])).all()
        if m != "EigenDamage":  # the classifier's outputs are never pruned
            assert pruned(batches[0][0]).shape[1] == 3
    assert max(kept.values()) - min(kept.values()) < 0.12, kept  # equal budgets, up to the granularity of a filter


def test_kron_obs_updates_the_remaining_filters_and_obd_does_not(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNINGLIB_CACHE", str(tmp_path))
    net, batches = _net("vgg"), _data()
    stats = L.fisher_statistics(net, batches, "sampled", 0, {"t": 1}, progress=False)
    plan = {"features.0": [0, 1], "features.4": [3]}
    obs = L.pruned_by_filters(net, "Kron-OBS", plan, stats)
    obd = L.pruned_by_filters(net, "Kron-OBD", plan, stats)
    plain = prune_channels(copy.deepcopy(net), plan)
    assert torch.equal(obd.features[0].weight, plain.features[0].weight)
    assert not torch.allclose(obs.features[0].weight, plain.features[0].weight)
    assert obs.features[0].weight.shape == plain.features[0].weight.shape


def test_fisher_statistics_are_cached_and_keyed_by_the_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNINGLIB_CACHE", str(tmp_path))
    calls = []
    real = L.kfac_factors
    monkeypatch.setattr(L, "kfac_factors", lambda *a, **k: calls.append(1) or real(*a, **k))
    net, batches = _net("vgg"), _data()
    a = L.fisher_statistics(net, batches, "sampled", 0, {"k": 1}, progress=False)
    n = len(calls)
    b = L.fisher_statistics(net, batches, "sampled", 0, {"k": 1}, progress=False)
    assert len(calls) == n and torch.equal(a["eigen"]["features.0"].A, b["eigen"]["features.0"].A)
    with torch.no_grad():
        net.features[0].weight.mul_(2)
    L.fisher_statistics(net, batches, "sampled", 0, {"k": 1}, progress=False)
    assert len(calls) > n  # changed weights: recomputed, never served stale
    assert set(a) == {"factors", "diag", "eigen"}


def test_iterative_pruning_reaches_the_budget_and_finetune_reports_last_and_best(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNINGLIB_CACHE", str(tmp_path))
    net, batches = _net("vgg"), _data()
    stats_fn = lambda n: L.fisher_statistics(n, batches, "sampled", 0, {"it": 1}, progress=False)  # noqa: E731
    for m in ("Kron-OBS", "EigenDamage"):
        out, rounds = L.iterative_prune(net, m, 0.5, 2, stats_fn, lambda n: n, batches[:1])
        assert len(rounds) == 2 and rounds[-1]["params"] <= 0.5 + 1e-9
        assert rounds[0]["params"] > rounds[1]["params"]
        widths = L.kept_widths(out, net)
        assert widths and all(0 < v <= 1 for v in widths.values())
    ft = L.finetune(net, batches, batches, 2, 0.01)
    assert ft["best"] >= ft["last"] and len(ft["history"]) == 2


def test_global_ratio_outside_range_and_unknown_method_are_refused() -> None:
    net = _net("vgg")
    with pytest.raises(ValueError, match="unknown filter method"):
        L.method_scores("bogus", net, {}, [])
    with pytest.raises(ValueError, match="ratio"):
        L.filter_plan({"a": torch.ones(3)}, 1.0)
    assert L.slug("Taylor FO (2019)") == "taylor_fo_2019"
