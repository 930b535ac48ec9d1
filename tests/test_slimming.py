"""Network Slimming (pruninglib.methods.slimming): subgradient, global threshold, never an empty layer."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib.core.graph import prunable_layers
from pruninglib.core.metrics import count_parameters
from pruninglib.models import CifarResNet, CifarVGG
from pruninglib.methods.slimming import (bn_l1_penalty, bn_l1_subgradient, bn_scales, slim, slimming_plan,
                                 slimming_threshold, uniform_vgg_cfg, vgg_cfg_of, vgg_param_count)
from pruninglib.core.surgery import prune_channels

CFG = [8, 8, "M", 12, 12, "M", 16, 16]


def _set_gammas(model: nn.Module, values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for pl, v in zip(prunable_layers(model, ("conv",)), values):
            pl.norm.weight.copy_(v)


def test_one_hook_serves_each_new_model_even_at_a_reused_address():
    """The hook caches each model's BatchNorms. Keyed by ``id(model)``, a new model allocated where a freed one
    was got the freed model's BatchNorms and no penalty at all; keyed weakly by the model, each gets its own."""
    hook = bn_l1_subgradient(1.0)
    for _ in range(8):
        m = CifarVGG(CFG, in_channels=1, num_classes=3)
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
        hook(m)
        bn = m.features[1]
        assert torch.equal(bn.weight.grad, torch.sign(bn.weight.detach())), "penalty missing on a new model"
        del m, bn


def test_subgradient_adds_s_sign_gamma():
    torch.manual_seed(0)
    m = CifarVGG(CFG, in_channels=1, num_classes=3)
    with torch.no_grad():
        m.features[1].weight[0] = -0.3  # a negative scale: sign -1
        m.features[1].weight[1] = 0.0   # sign(0) = 0
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(m(x), y).backward()
    before = {n: p.grad.clone() for n, p in m.named_parameters()}
    bn_l1_subgradient(1e-2)(m)
    for n, p in m.named_parameters():
        if n.startswith("features.") and n.endswith("weight") and p.dim() == 1:  # BN scales
            assert torch.allclose(p.grad, before[n] + 1e-2 * torch.sign(p.detach()))
        else:
            assert torch.equal(p.grad, before[n])
    g = m.features[1].weight.grad
    assert g[1] == before["features.1.weight"][1]


def test_subgradient_shrinks_scales_and_scope():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    pens = {}
    for s in (0.0, 5e-2):
        torch.manual_seed(1)
        m = CifarVGG(CFG, in_channels=1, num_classes=3)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        hook = bn_l1_subgradient(s)
        for _ in range(10):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            hook(m)
            opt.step()
        pens[s] = float(bn_l1_penalty(m).detach())
    assert pens[5e-2] < pens[0.0] - 0.1 * 5e-2 * 10 * 8  # every step pulls each |gamma| down by lr*s
    r = CifarResNet(20)
    F.cross_entropy(r(torch.randn(2, 3, 16, 16)), torch.tensor([0, 1])).backward()
    before = {n: p.grad.clone() for n, p in r.named_parameters()}
    bn_l1_subgradient(1.0)(r)  # scope "prunable": only each block's bn1 (the prunable conv's BatchNorm)
    changed = {n for n, p in r.named_parameters() if not torch.equal(p.grad, before[n])}
    assert changed == {f"{b}.bn1.weight" for b, _ in r.blocks()}
    bn_l1_subgradient(1.0, scope="all")(r)
    assert "bn1.weight" in {n for n, p in r.named_parameters() if not torch.equal(p.grad, before[n])}
    with pytest.raises(ValueError, match="s must be"):
        bn_l1_subgradient(-1.0)
    with pytest.raises(ValueError, match="scope"):
        bn_l1_subgradient(1e-4, scope="some")


def test_global_threshold_removes_exactly_ratio():
    m = CifarVGG(CFG, in_channels=1, num_classes=3)
    torch.manual_seed(3)
    total = 8 + 8 + 12 + 12 + 16 + 16
    vals = torch.randperm(total).float() / total + 0.01  # distinct scales
    chunks = list(torch.split(vals, [8, 8, 12, 12, 16, 16]))
    _set_gammas(m, chunks)
    thr = slimming_threshold(m, 0.25)
    plan = slimming_plan(m, 0.25)
    assert sum(len(v) for v in plan.values()) == int(total * 0.25)
    allg = torch.cat(list(bn_scales(m).values()))
    assert (allg < thr).sum() == int(total * 0.25)


def test_slimming_never_empties_a_layer_even_at_99_percent():
    torch.manual_seed(0)
    m = CifarVGG(CFG, in_channels=1, num_classes=3)
    # the second layer's scales are all tiny: a global threshold would remove all of them
    _set_gammas(m, [torch.rand(8) + 1, torch.full((8,), 1e-4), torch.rand(12) + 1, torch.rand(12) + 1,
                    torch.rand(16) + 1, torch.rand(16) + 1])
    info = slim(m, 0.99)
    assert min(info["widths_after"].values()) >= 1
    assert all(w == 1 for w in info["widths_after"].values())  # at 99 % only the protected channel stays
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    m2 = CifarVGG(CFG, in_channels=1, num_classes=3)
    _set_gammas(m2, [torch.rand(8) + 1, torch.full((8,), 1e-4), torch.rand(12) + 1, torch.rand(12) + 1,
                     torch.rand(16) + 1, torch.rand(16) + 1])
    info2 = slim(m2, 0.3)
    assert info2["widths_after"]["features.3"] == 1  # the all-tiny layer keeps its largest channel
    assert min(info2["widths_after"].values()) >= 1


def test_min_keep_zero_reproduces_the_empty_layer_failure():
    m = CifarVGG(CFG, in_channels=1, num_classes=3)
    _set_gammas(m, [torch.rand(8) + 1, torch.full((8,), 1e-4), torch.rand(12) + 1, torch.rand(12) + 1,
                    torch.rand(16) + 1, torch.rand(16) + 1])
    plan = slimming_plan(m, 0.3, min_keep=0)
    assert len(plan["features.3"]) == 8
    with pytest.raises(ValueError, match="features.3"):
        prune_channels(m, plan)


def test_bad_ratio():
    m = CifarVGG(CFG, in_channels=1, num_classes=3)
    with pytest.raises(ValueError, match="did you mean 0.7"):
        slim(m, 70)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        slimming_plan(m, 1.0)


def test_vgg_param_count_and_uniform_baseline():
    for cfg in (CFG, "vgg19"):
        m = CifarVGG(cfg, in_channels=1, num_classes=10, width=0.125)
        assert vgg_param_count(vgg_cfg_of(m), 1, 10) == count_parameters(m)
    full = vgg_cfg_of(CifarVGG("vgg19", in_channels=1, width=0.25))
    target = vgg_param_count(full, 1, 10) // 4
    cfg_u, f = uniform_vgg_cfg(full, target, 1, 10)
    assert cfg_u.count("M") == full.count("M")
    assert abs(vgg_param_count(cfg_u, 1, 10) - target) / target < 0.05
    assert 0.4 < f < 0.6  # parameters scale about quadratically with width
    with pytest.raises(ValueError, match="exceeds"):
        uniform_vgg_cfg(full, 10**9, 1, 10)


def test_slimmed_vgg_rebuilds_from_cfg():
    torch.manual_seed(0)
    m = CifarVGG(CFG, in_channels=1, num_classes=3)
    slim(m, 0.5)
    cfg = vgg_cfg_of(m)
    again = CifarVGG(cfg, in_channels=1, num_classes=3, width=1.0)
    assert again.conv_widths() == m.conv_widths()
    assert count_parameters(again) == count_parameters(m)
