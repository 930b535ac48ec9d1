"""L1-norm filter pruning with Li et al. 2017's predefined targets (pruninglib.methods.l1_filters)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pruninglib.methods.l1_filters import (PAPER_FLOPS_PRUNED, PAPER_PARAMS_PRUNED, VGG16_A_CFG, flops_reduction,
                                   l1_keep_plan, predefined_target, prune_to_widths, resnet_block_of_id,
                                   resnet_conv_id, resnet_target_mid_channels, target_widths)
from pruninglib.models import CifarResNet, CifarVGG, build_model


def test_vgg16_a_channels():
    full, pruned = predefined_target("vgg16_a")
    m = build_model(pruned["name"], **pruned["kwargs"])
    assert m.conv_widths() == [32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256]
    assert VGG16_A_CFG.count("M") == 4
    f = build_model(full["name"], **full["kwargs"])
    assert f.conv_widths() == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def test_resnet56_a_b_channels():
    a = resnet_target_mid_channels(56, "A")
    b = resnet_target_mid_channels(56, "B")
    # stage 1 (blocks 0-8): id 16 = block 7 skipped; stage 2: id 20 = block 9; stage 3: ids 38, 54 = blocks 18, 26
    assert a == [14] * 7 + [16, 14] + [32] + [28] * 8 + [64] + [57] * 7 + [64]
    # B also skips 18 (block 8) and 34 (block 16); ratios 0.6 / 0.3 / 0.1 -> 6 / 22 / 57 kept
    assert b == [6] * 7 + [16, 16] + [32] + [22] * 6 + [32, 22] + [64] + [57] * 7 + [64]
    model = CifarResNet(56, mid_channels=a)
    assert target_widths(model) == a  # the prunable layers are each block's conv1


def test_skip_id_convention():
    assert resnet_conv_id(0) == 2 and resnet_conv_id(7) == 16
    assert resnet_block_of_id(16) == 7 and resnet_block_of_id(20) == 9
    assert resnet_block_of_id(38) == 18 and resnet_block_of_id(54) == 26
    names = [n for n, _ in CifarResNet(56).blocks()]
    assert [names[resnet_block_of_id(i)] for i in (16, 20, 38, 54)] == ["layer1.7", "layer2.0", "layer3.0",
                                                                       "layer3.8"]
    with pytest.raises(ValueError, match="residual"):
        resnet_block_of_id(17)
    with pytest.raises(ValueError, match="beyond"):
        resnet_target_mid_channels(20, None, skip=[56], ratios=[0.1, 0.1, 0.1])


@pytest.mark.parametrize("name", ["vgg16_a", "resnet56_a", "resnet56_b"])
def test_flops_ratios_match_li_et_al(name):
    full, pruned = predefined_target(name)
    red = flops_reduction(build_model(full["name"], **full["kwargs"]), build_model(pruned["name"], **pruned["kwargs"]),
                          (1, 3, 32, 32))
    # Li et al. 2017, Table 1: 34.2 %, 10.4 %, 27.6 % of FLOPs; 64.0 %, 9.4 %, 13.7 % of parameters.
    assert red["flops_pruned"] == pytest.approx(PAPER_FLOPS_PRUNED[name], abs=0.005)
    assert red["params_pruned_frac"] == pytest.approx(PAPER_PARAMS_PRUNED[name], abs=0.005)
    paper_full = 3.13e8 if name == "vgg16_a" else 1.25e8
    assert red["macs_full"] == pytest.approx(paper_full, rel=0.01)


def test_l1_keeps_largest_filters_and_weights():
    torch.manual_seed(0)
    m = CifarVGG([6, "M", 5], in_channels=1, num_classes=3)
    conv0 = m.features[0]
    with torch.no_grad():  # filter j has L1 norm proportional to a known permutation
        scale = torch.tensor([3.0, 0.1, 5.0, 0.2, 4.0, 1.0])
        conv0.weight.copy_(torch.ones_like(conv0.weight) * scale[:, None, None, None])
    before = conv0.weight.detach().clone()
    plan = l1_keep_plan(m, [3, 5])
    assert plan == {"features.0": [1, 3, 5]}  # the three smallest L1 norms go
    x = torch.randn(2, 1, 8, 8)
    prune_to_widths(m, [3, 5])
    assert m.conv_widths() == [3, 5]
    assert torch.equal(m.features[0].weight, before[[0, 2, 4]])
    assert m(x).shape == (2, 3)


def test_prune_resnet56_to_b_matches_target_architecture():
    full, pruned = predefined_target("resnet56_b")
    m = build_model(full["name"], **full["kwargs"])
    prune_to_widths(m, resnet_target_mid_channels(56, "B"))
    tgt = build_model(pruned["name"], **pruned["kwargs"])
    assert target_widths(m) == target_widths(tgt)
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in tgt.parameters())
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_bad_targets_raise_clear_errors():
    m = CifarVGG([4, "M", 4], in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="one width per layer"):
        l1_keep_plan(m, [2])
    with pytest.raises(ValueError, match="at least one"):
        l1_keep_plan(m, [0, 2])
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        l1_keep_plan(m, [5, 2])
    with pytest.raises(ValueError, match="unknown predefined target"):
        predefined_target("vgg16_b")
    with pytest.raises(ValueError, match="variant"):
        resnet_target_mid_channels(56, "C")


def test_narrow_vgg16_a_scales_with_width():
    full, pruned = predefined_target("vgg16_a", width=0.125, in_channels=1)
    f = build_model(full["name"], **full["kwargs"])
    p = build_model(pruned["name"], **pruned["kwargs"])
    assert f.conv_widths() == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
    assert p.conv_widths() == [4, 8, 16, 16, 32, 32, 32, 32, 32, 32, 32, 32, 32]
    assert isinstance(f.features[0], nn.Conv2d) and f.features[0].in_channels == 1
