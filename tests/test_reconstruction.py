"""Least-squares reconstruction of the next layer (pruninglib.methods.reconstruction)."""
import copy

import pytest
import torch
import torch.nn as nn

from pruninglib import models
from pruninglib.methods.reconstruction import (consumer_patches, consumer_weight, least_squares_fit, reconstruct,
                                       reconstruct_layer, sample_layer)
from pruninglib.methods.selection import apply_kept


def _batches(n=64, c=1, side=10, seed=0, bs=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, side, side, generator=g)
    return [(x[i:i + bs], None) for i in range(0, n, bs)]


def test_unfolded_patches_reproduce_the_conv_exactly():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x = torch.randn(4, 3, 9, 9)
    p = consumer_patches(conv, x, 3, positions=None)
    w = consumer_weight(conv, 3)
    assert p.shape == (4 * 25, 3, 9) and w.shape == (5, 3, 9)
    y = (p.flatten(1) @ w.flatten(1).T + conv.bias).view(4, 25, 5).permute(0, 2, 1).reshape(4, 5, 5, 5)
    assert torch.allclose(y, conv(x), atol=1e-5)


def test_least_squares_recovers_a_linear_map_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, 3, generator=g, dtype=torch.float64)
    w_true = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
    b_true = torch.randn(6, generator=g, dtype=torch.float64)
    y = x.flatten(1) @ w_true.flatten(1).T + b_true
    w, b = least_squares_fit(x, y, fit_bias=True)
    assert w.shape == (6, 4, 3)
    assert torch.allclose(w, w_true, atol=1e-10) and torch.allclose(b, b_true, atol=1e-10)


def test_reconstruction_is_exact_when_removed_channels_are_combinations_of_kept_ones():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1))
    with torch.no_grad():
        c1 = model[0]
        c1.weight[4] = 0.5 * c1.weight[0] - 2.0 * c1.weight[1]
        c1.bias[4] = 0.5 * c1.bias[0] - 2.0 * c1.bias[1]
        c1.weight[5] = c1.weight[2] + c1.weight[3]
        c1.bias[5] = c1.bias[2] + c1.bias[3]
    batches = _batches(64, 2)
    kept = {"0": torch.tensor([0, 1, 2, 3])}
    pruned = apply_kept(model, kept)
    x_new = torch.randn(8, 2, 10, 10)
    with torch.no_grad():
        assert (pruned(x_new) - model(x_new)).abs().max() > 0.1  # removal alone changes the output
    rec, report = reconstruct(pruned, model, kept, batches, positions=20)
    with torch.no_grad():
        err = (rec(x_new) - model(x_new)).abs().max().item()
    assert err <= 1e-5, err
    assert report.after["1"] <= 1e-6 < report.before["1"]


def test_reconstruction_of_a_linear_consumer_after_flatten_is_exact():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 8 * 8, 3))
    with torch.no_grad():  # positive multiples survive the ReLU: relu(2a) = 2 relu(a)
        model[0].weight[3] = 2.0 * model[0].weight[0]
        model[0].bias[3] = 2.0 * model[0].bias[0]
        model[0].weight[4] = 0.5 * model[0].weight[1]
        model[0].bias[4] = 0.5 * model[0].bias[1]
    batches = _batches(512, 1, bs=128)  # 512 rows for 3*64+1 unknowns per output
    kept = {"0": torch.tensor([0, 1, 2])}
    rec, _ = reconstruct(apply_kept(model, kept), model, kept, batches)
    x_new = torch.randn(16, 1, 10, 10)
    with torch.no_grad():
        assert (rec(x_new) - model(x_new)).abs().max().item() <= 1e-5
    assert rec[3].in_features == 3 * 64


def test_intercept_goes_into_the_running_mean_of_a_following_batchnorm():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 3, 1, bias=False), nn.BatchNorm2d(3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():  # channel 3 = channel 0 + 1: removing it needs an intercept
        model[0].weight[3] = model[0].weight[0]
        model[0].bias[3] = model[0].bias[0] + 1.0
        model[2].running_mean.uniform_(-1, 1)
        model[2].running_var.uniform_(0.5, 2)
    model.eval()
    kept = {"0": torch.tensor([0, 1, 2])}
    pruned = apply_kept(model, kept)
    mean_before = pruned[2].running_mean.clone()
    rec, _ = reconstruct(pruned, model, kept, _batches(64, 1))
    assert not torch.allclose(rec[2].running_mean, mean_before)
    x_new = torch.randn(8, 1, 10, 10)
    with torch.no_grad():
        assert (rec(x_new) - model(x_new)).abs().max().item() <= 1e-5


def test_reconstruct_lowers_every_layers_error_on_a_vgg_and_leaves_inputs_untouched():
    torch.manual_seed(0)
    model = models.CifarVGG([8, "M", 16, 16], in_channels=1, num_classes=4).eval()
    before = copy.deepcopy(model.state_dict())
    kept = {"features.0": torch.tensor([0, 2, 4, 6]), "features.4": torch.arange(0, 16, 2)}
    pruned = apply_kept(model, kept)
    rec, report = reconstruct(pruned, model, kept, _batches(64, 1, side=12), positions=16, ridge=1e-6)
    assert set(report.after) == {"features.4", "features.7"}  # consumers of the two pruned layers
    for k in report.after:
        assert report.after[k] < report.before[k]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [m.out_channels for m in rec.features if isinstance(m, nn.Conv2d)] == [4, 8, 16]


def test_sample_layer_uses_the_same_positions_in_the_reference():
    torch.manual_seed(0)
    model = models.CifarVGG([6, 6], in_channels=1, num_classes=3).eval()
    s = sample_layer(model, "features.0", _batches(8, 1), positions=5, seed=3, reference=copy.deepcopy(model))
    assert s.patches.shape == (40, 6, 9)
    assert torch.allclose(s.output(), s.target, atol=1e-5)  # identical networks: identical outputs


def test_bad_inputs_give_clear_errors():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 3))
    with pytest.raises(ValueError, match="missing from `kept`"):
        reconstruct_layer(apply_kept(model, {"0": [0, 1]}), model, "0", {}, _batches(8, 1))
    with pytest.raises(ValueError, match="rows"):
        least_squares_fit(torch.randn(5, 2, 1), torch.randn(4, 1))
    with pytest.raises(ValueError, match="ridge"):
        least_squares_fit(torch.randn(5, 2, 1), torch.randn(5, 1), ridge=-1)
    with pytest.warns(UserWarning, match="under-determined"):
        least_squares_fit(torch.randn(3, 4, 1), torch.randn(3, 1))
    with pytest.raises(ValueError, match="empty"):
        sample_layer(model, "0", [])


def test_ridge_solution_is_the_penalised_least_squares_solution():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, 2, generator=g, dtype=torch.float64)
    y = torch.randn(40, 3, generator=g, dtype=torch.float64)
    w, b = least_squares_fit(x, y, fit_bias=True, ridge=0.1)
    xf = torch.cat([x.flatten(1), torch.ones(40, 1, dtype=torch.float64)], 1)
    rho = 0.1 * float(x.flatten(1).pow(2).sum(0).mean())
    pen = torch.eye(11, dtype=torch.float64) * rho
    pen[10, 10] = 0.0  # the intercept is not penalised
    ref = torch.linalg.solve(xf.T @ xf + pen, xf.T @ y)
    assert torch.allclose(w.flatten(1), ref[:10].T, atol=1e-10) and torch.allclose(b, ref[10], atol=1e-10)


def test_reference_cache_gives_identical_samples():
    torch.manual_seed(0)
    model = models.CifarVGG([6, "M", 8], in_channels=1, num_classes=3).eval()
    kept = {"features.0": torch.tensor([0, 1, 3])}
    pruned = apply_kept(model, kept)
    batches = _batches(16, 1)
    cache = {}
    a = sample_layer(pruned, "features.0", batches, 4, 7, reference=model, cache=cache)
    b = sample_layer(pruned, "features.0", batches, 4, 7, reference=model, cache=cache)
    c = sample_layer(pruned, "features.0", batches, 4, 7, reference=model)
    assert len(cache) == 1
    assert torch.equal(a.target, b.target) and torch.equal(b.target, c.target) and torch.equal(a.patches, c.patches)
