"""Lesson 08's protocol (pruninglib.lessons.any_architecture): tiny networks, adapters, scan, allocations."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from pruninglib import groups as G
from pruninglib.core.metrics import count_macs
from pruninglib.lessons import any_architecture as A
from pruninglib.models import MODELS, build_model, resnet20

torch.set_num_threads(1)


def _bn_stats(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def test_hand_pruning_the_stream_equals_group_surgery_and_the_zeroed_network():
    torch.manual_seed(0)
    tiny = _bn_stats(A.TinyResidual(width=6))
    x = torch.randn(3, 1, 8, 8)
    mg = G.find_groups(tiny, x[:1])
    stream, _ = mg.group_of("stem", 0)
    with torch.no_grad(), G.zero_channels(mg, {stream.index: [1, 4]}):
        zeroed = tiny(x)
    by_hand = A.hand_prune_stream(copy.deepcopy(tiny), [1, 4])
    by_tp = copy.deepcopy(tiny)
    G.prune_groups(G.find_groups(by_tp, x[:1]), {stream.index: [1, 4]})
    with torch.no_grad():
        assert (by_hand(x) - zeroed).abs().max() <= 1e-5
        assert (by_tp(x) - zeroed).abs().max() <= 1e-5
    assert by_hand.state_dict().keys() == by_tp.state_dict().keys()
    for k, v in by_hand.state_dict().items():
        assert torch.equal(v, by_tp.state_dict()[k]), k


def test_cutting_only_the_stem_breaks_the_add():
    tiny = A.TinyResidual(width=6).eval()
    keep = torch.tensor([0, 2, 3, 5])
    A.slice_conv(tiny.stem, keep_out=keep)
    A.slice_bn(tiny.bn, keep)
    A.slice_conv(tiny.block1.conv1, keep_in=keep)
    with pytest.raises(RuntimeError, match="must match"):
        tiny(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("name, kw, x", [
    ("tv_resnet18", dict(), torch.randn(2, 1, 28, 28)),
    ("tv_resnet18", dict(width=0.25), torch.randn(2, 1, 28, 28)),
    ("tv_resnet18", dict(in_channels=3, stem_stride=1, maxpool=False, side=32), torch.randn(2, 3, 32, 32)),
    ("tv_mobilenet_v2", dict(width_mult=0.35, stem_stride=2), torch.randn(2, 1, 28, 28)),
    ("tv_mobilenet_v2", dict(in_channels=3), torch.randn(2, 3, 32, 32)),
])
def test_adapters_take_small_images(name, kw, x):
    assert name in MODELS
    m = build_model(name, **kw).eval()
    assert m(x).shape == (2, 10)
    assert m.pl_config == {"name": name, "kwargs": kw}


def test_a_narrow_resnet18_keeps_the_names_and_groups_of_the_full_one():
    full, narrow = A.tv_resnet18(), A.tv_resnet18(width=0.25)
    assert [n for n, _ in full.named_modules()] == [n for n, _ in narrow.named_modules()]
    gf, gn = (G.find_groups(m, torch.zeros(1, 1, 28, 28)) for m in (full, narrow))
    assert [g.root for g in gf] == [g.root for g in gn]
    assert [g.num_channels for g in gn] == [-(-g.num_channels // 4) for g in gf]
    with pytest.raises(ValueError, match="width must be in"):
        A.tv_resnet18(width=0)


def test_the_small_stem_is_what_the_docstring_says():
    m = A.tv_resnet18(stem_stride=1, maxpool=False, in_channels=3, side=32)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and m.conv1.in_channels == 3
    assert isinstance(m.maxpool, nn.Identity)


def _trained_tiny():
    torch.manual_seed(0)
    x = torch.randn(200, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, :4].mean((1, 2)) > 0).long()
    model = A.TinyResidual(width=8, num_classes=4)
    ds = TensorDataset(x, y)
    A.train_model(model, ds, epochs=3, lr=0.05, batch=32)
    return model.eval(), ds, [(x[:100], y[:100]), (x[100:], y[100:])]


def test_the_sensitivity_scan_measures_zeroed_groups():
    model, _, bs = _trained_tiny()
    mg = G.find_groups(model, bs[0][0][:1])
    gs = G.score_groups(mg, G.unit_scores(mg, "l1"))
    ratios = [0.0, 0.5, 0.875]
    scan = A.sensitivity_scan(mg, gs, bs, ratios, progress=False)
    base = A.accuracy(model, bs)
    assert set(scan) == set(gs) and all(len(v) == 3 for v in scan.values())
    assert all(v[0] == base for v in scan.values())  # nothing pruned: the unpruned accuracy
    # the scan's numbers are those of the pruned copies (zeroing == removing)
    for g in gs:
        cut = A.pruned_copy(model, bs[0][0][:1], G.lowest_channels({g: gs[g]}, {g: 0.5}))
        assert A.accuracy(cut, bs) == pytest.approx(scan[g][1])
    sens = A.sensitive_groups(scan, base, ratios, at=0.5, share=0.34)
    drops = {g: base - scan[g][1] for g in scan}
    assert len(sens) == 1 and drops[sens[0]] == max(drops.values())


@pytest.mark.parametrize("how", ["uniform", "weighted", "global"])
def test_allocations_meet_the_macs_budget(how):
    model = A.tv_resnet18(width=0.25)
    mg = G.find_groups(model, torch.zeros(1, 1, 28, 28))
    gs = G.score_groups(mg, G.unit_scores(mg, "l1"))
    if how == "global":
        plan, ratios, frac = A.global_plan(mg, gs, 0.5)
    else:
        plan, ratios, frac = A.plan_for_budget(mg, gs, 0.5, {0: 0.0, 4: 0.0} if how == "weighted" else None)
    assert 0.45 <= frac <= 0.5
    assert frac == pytest.approx(A.macs_fraction(model, mg.example, plan))
    assert all(0 <= r <= 0.9 for r in ratios.values())
    if how == "weighted":
        assert ratios[0] == 0 and ratios[4] == 0
    if how == "uniform":
        assert max(ratios.values()) - min(ratios.values()) < 0.1  # the same share, up to rounding


def test_prune_and_finetune_reports_and_keeps_the_base_model():
    model, ds, bs = _trained_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mg = G.find_groups(model, bs[0][0][:1])
    plan = G.lowest_channels(G.score_groups(mg, G.unit_scores(mg, "l1")), {g.index: 0.5 for g in mg})
    pm, row = A.prune_and_finetune(model, bs[0][0][:1], plan, ds, bs, dict(epochs=1, lr=0.01, batch=32, max_steps=2))
    assert set(row) == {"pruned", "fine-tuned", "params", "MACs"}
    assert row["MACs"] == count_macs(pm, example=bs[0][0][:1]) < count_macs(model, example=bs[0][0][:1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_cifar_resnets_keep_their_stream_whole():
    m = resnet20()
    ign = A.ignored_for("resnet20", m)
    mg = G.find_groups(m, torch.zeros(1, 3, 32, 32), ign)
    assert len(mg) == 9 and all(g.root.endswith(".conv1") and not g.coupled for g in mg)
    _bn_stats(m)
    x = torch.randn(2, 3, 32, 32)
    plan = {g.index: [0, 3] for g in mg}
    with torch.no_grad(), G.zero_channels(mg, plan):
        ref = m(x)
    cut = A.pruned_copy(m, x[:1], plan, ign)
    with torch.no_grad():
        assert (cut(x) - ref).abs().max() <= 1e-5


def test_explorer_costs_match_the_pruned_copy():
    mg = G.find_groups(A.tv_resnet18(width=0.25), torch.zeros(1, 1, 28, 28))
    g, _ = mg.group_of("layer2.0.conv2", 0)
    rows = A.member_costs(mg, g.index)
    assert {r[0] for r in rows if r[1] == "output"} == set(g.producers)
    cost = A.channel_cost(mg, g.index)
    assert cost["params"] == sum(r[2] for r in rows)  # filters, BN pairs and input slices: all of it


def test_stage_of():
    assert A.stage_of("layer3.1.conv2") == "layer3"
    assert A.stage_of("features.7.conv.0.0") == "features.7"
    assert A.stage_of("conv1") == "stem"


def test_prune_and_finetune_resumes_a_finished_finetune(tmp_path, monkeypatch, capsys):
    """With ``ft["resume"]`` a fine-tune checkpoints under the data key and the pruned weights; run again, it reloads
    the finished fine-tune (the same bits) instead of training again; clear_work_paths removes the checkpoints."""
    from pruninglib.cache import clear_work_paths

    monkeypatch.setenv("PRUNINGLIB_CACHE", str(tmp_path))
    monkeypatch.delenv("PRUNINGLIB_NO_CACHE", raising=False)
    model, ds, bs = _trained_tiny()
    mg = G.find_groups(model, bs[0][0][:1])
    plan = G.lowest_channels(G.score_groups(mg, G.unit_scores(mg, "l1")), {g.index: 0.5 for g in mg})
    ft = dict(epochs=2, lr=0.01, batch=32, max_steps=2, resume={"data": "tiny"})
    runs = [A.prune_and_finetune(model, bs[0][0][:1], plan, ds, bs, ft) for _ in range(2)]
    assert "[resume]" in capsys.readouterr().out
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values()))
    assert clear_work_paths("l08_finetune") == 1
