"""Channel selection (ThiNet, LASSO, scores) and block selection (Sparse Structure Selection)."""
import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from pruninglib import models
from pruninglib.methods.block_selection import (APG, add_block_scales, block_scales, drop_blocks, fold_block_scales,
                                        scale_parameters, soft_threshold)
from pruninglib.core.metrics import count_macs
from pruninglib.methods.reconstruction import LayerSample, sample_layer
from pruninglib.methods.selection import (apply_kept, kept_from_scores, kept_to_plan, lasso_channel_mask, lasso_gram,
                                  lasso_select, select_sequential, thinet_select)
from pruninglib.core.surgery import channel_counts


def _batches(n=64, c=1, side=10, seed=0, bs=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, side, side, generator=g)
    return [(x[i:i + bs], None) for i in range(0, n, bs)]


def _vgg(seed=0):
    torch.manual_seed(seed)
    return models.CifarVGG([8, "M", 12, 12], in_channels=1, num_classes=4).eval()


def _sample(seed=0):
    return sample_layer(_vgg(seed), "features.4", _batches(32, side=12), positions=8)


# ----------------------------------------------------------------------------- LASSO

def test_lasso_with_zero_penalty_keeps_every_channel():
    gram, q = lasso_gram(_sample())
    mask, beta = lasso_channel_mask(gram, q, penalty=0.0)
    assert mask.dtype == torch.bool and mask.all() and len(mask) == 12
    # the target is the network's own output, so least squares gives beta = 1 for every channel
    assert np.allclose(beta, 1.0, atol=1e-4)


@pytest.mark.parametrize("min_keep", [1, 3])
def test_lasso_with_a_huge_penalty_keeps_the_minimum_allowed_never_zero(min_keep):
    gram, q = lasso_gram(_sample())
    mask, beta = lasso_channel_mask(gram, q, penalty=1e6 * np.abs(q).max(), min_keep=min_keep)
    assert np.count_nonzero(beta) == 0  # the penalty zeroes every coefficient ...
    assert int(mask.sum()) == min_keep  # ... but the minimum allowed number of channels stays
    # and they are the first to enter the LASSO path: the largest |q_c|
    assert set(torch.nonzero(mask).flatten().tolist()) == set(np.argsort(-np.abs(q))[:min_keep].tolist())


def test_lasso_penalty_is_monotone_in_the_number_of_channels_kept():
    gram, q = lasso_gram(_sample())
    lam = np.abs(q).max()
    counts = [int(lasso_channel_mask(gram, q, lam * f)[0].sum()) for f in (1e-4, 1e-2, 0.2, 0.9)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


@pytest.mark.parametrize("n_keep", [1, 5, 11, 12])
def test_lasso_select_keeps_exactly_n_and_drops_channels_that_contribute_nothing(n_keep):
    s = _sample()
    s.weight[:, [2, 7]] = 0.0  # the consumer ignores channels 2 and 7
    s.target = s.output()
    kept, beta, penalty = lasso_select(s, n_keep)
    assert len(kept) == n_keep and kept.tolist() == sorted(set(kept.tolist()))
    if n_keep <= 10:
        assert not {2, 7} & set(kept.tolist())


def test_lasso_select_rejects_keeping_nothing():
    with pytest.raises(ValueError, match="cannot lose every channel"):
        lasso_select(_sample(), 0)
    with pytest.raises(ValueError, match=">= 0"):
        from pruninglib.methods.selection import lasso_solve
        lasso_solve(np.eye(2), np.ones(2), -1.0)


# ----------------------------------------------------------------------------- ThiNet

def test_thinet_greedy_is_optimal_for_orthogonal_contributions():
    # contributions with disjoint support: the objective is sum of ||x_j||^2 over removed j,
    # so the optimum removes the channels with the smallest norms
    c, s = 6, 60
    p = torch.zeros(s, c, 1)
    norms = torch.tensor([3.0, 0.5, 2.0, 0.1, 5.0, 1.0])
    for j in range(c):
        p[j * 10:(j + 1) * 10, j, 0] = norms[j] / 10 ** 0.5
    sample = LayerSample("a", "b", p, torch.ones(1, c, 1), None, p.sum((1, 2))[:, None])
    kept = thinet_select(sample, 3)
    assert kept.tolist() == [0, 2, 4]
    # brute force over every removal set of size 3 agrees
    xhat = p[:, :, 0]
    best = min(itertools.combinations(range(c), 3), key=lambda t: float(xhat[:, list(t)].sum(1).pow(2).sum()))
    assert sorted(set(range(c)) - set(best)) == kept.tolist()


def test_thinet_removes_channels_that_contribute_nothing_first():
    s = _sample(1)
    s.weight[:, [0, 5, 9]] = 0.0
    kept = thinet_select(s, 9)
    assert set(kept.tolist()) == set(range(12)) - {0, 5, 9}


# ----------------------------------------------------------------------------- scores and sequential selection

def test_kept_from_scores_takes_the_top_n_and_apply_kept_prunes_exactly():
    model = _vgg()
    scores = {"features.0": torch.arange(8.0), "features.4": -torch.arange(12.0), "features.7": torch.ones(12)}
    kept = kept_from_scores(scores, {"features.0": 3, "features.4": 4})
    assert kept["features.0"].tolist() == [5, 6, 7] and kept["features.4"].tolist() == [0, 1, 2, 3]
    assert kept_to_plan(model, kept)["features.0"] == [0, 1, 2, 3, 4]
    pruned = apply_kept(model, kept)
    assert channel_counts(pruned) == {"features.0": 3, "features.4": 4, "features.7": 12}
    assert channel_counts(model)["features.0"] == 8  # the original is untouched
    with pytest.raises(ValueError, match="cannot lose every channel"):
        kept_from_scores(scores, {"features.0": 0})


@pytest.mark.parametrize("method", ["thinet", "lasso"])
def test_select_sequential_meets_the_counts_and_leaves_the_model_alone(method):
    model = _vgg()
    state = copy.deepcopy(model.state_dict())
    counts = {"features.0": 4, "features.4": 6, "features.7": 5}
    res = select_sequential(model, counts, method, _batches(32, side=12), positions=8)
    assert {k: len(v) for k, v in res.kept.items()} == counts
    assert channel_counts(res.model) == counts
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # the returned model is exactly apply_kept of the original with those indices
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(res.model(x), apply_kept(model, res.kept)(x), atol=1e-6)
    assert all(0 <= info["error"] for info in res.info.values())


def test_select_sequential_with_refit_reduces_the_output_error():
    model = _vgg(3)
    counts = {"features.0": 3, "features.4": 4}
    x = torch.cat([b[0] for b in _batches(64, side=12)])
    plain = select_sequential(model, counts, "lasso", _batches(64, side=12), positions=16)
    refit = select_sequential(model, counts, "lasso", _batches(64, side=12), positions=16, refit=True)
    with torch.no_grad():
        ref = model(x)
        e_plain = (plain.model(x) - ref).norm() / ref.norm()
        e_refit = (refit.model(x) - ref).norm() / ref.norm()
    assert e_refit < e_plain


def test_select_sequential_rejects_bad_arguments():
    with pytest.raises(ValueError, match="thinet"):
        select_sequential(_vgg(), {"features.0": 2}, "magic", _batches(8))
    with pytest.raises(ValueError, match="not prunable"):
        select_sequential(_vgg(), {"nope": 2}, "thinet", _batches(8))


# ----------------------------------------------------------------------------- Sparse Structure Selection

def _resnet():
    torch.manual_seed(0)
    return models.resnet20(in_channels=1, num_classes=3, widths=(4, 8, 8)).eval()


def test_soft_threshold_and_apg_drive_an_unused_factor_to_exact_zero():
    assert soft_threshold(torch.tensor([-2.0, 0.05, 1.0]), 0.1).tolist() == pytest.approx([-1.9, 0.0, 0.9])
    p = nn.Parameter(torch.tensor(1.0))
    opt = APG([p], lr=0.1, gamma=1.0, momentum=0.5)
    for _ in range(40):
        p.grad = torch.zeros(())
        opt.step()
    assert float(p.detach()) == 0.0  # the proximal step lands exactly on zero and stays there


def test_dropping_blocks_with_zero_factor_is_exact_and_saves_macs():
    net = _resnet()
    add_block_scales(net)
    assert len(scale_parameters(net)) == 9 and set(block_scales(net).values()) == {1.0}
    with torch.no_grad():
        net.layer1[1].bn2.sss_scale.zero_()
        net.layer2[0].bn2.sss_scale.zero_()  # a down-sampling block (option-A shortcut)
        net.layer3[2].bn2.sss_scale.fill_(0.3)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        before = net(x)
    macs_before = count_macs(net, (1, 1, 16, 16))
    dropped = drop_blocks(net)
    assert dropped == ["layer1.1", "layer2.0"]
    with torch.no_grad():
        assert torch.allclose(net(x), before, atol=1e-6)
    assert count_macs(net, (1, 1, 16, 16)) < macs_before
    fold_block_scales(net)
    assert not any(hasattr(m, "sss_scale") for m in net.modules())
    with torch.no_grad():
        assert torch.allclose(net(x), before, atol=1e-5)


def test_block_scales_need_a_residual_network():
    with pytest.raises(TypeError, match="blocks"):
        add_block_scales(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="lr > 0"):
        APG([nn.Parameter(torch.ones(()))], lr=0.0)
