"""Tests of lesson 01's protocol modules: the Fashion-MNIST MLP bookkeeping
(:mod:`pruninglib.lessons.mlp_curvature`) and the XOR diagnostics (:mod:`pruninglib.lessons.xor`)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from pruninglib.criteria.obd import obd_saliency
from pruninglib.criteria.obs import OBSPath, inverse_hessian, obs_prune, obs_saliency
from pruninglib.curvature.hessian import losses_at
from pruninglib.curvature.params import flatten_params, load_flat
from pruninglib.lessons import mlp_curvature
from pruninglib.lessons.mlp_curvature import (curvature_comparison, downsample_7x7, fashion_mnist_7x7,
                                              max_sparsity_within, rank_agreement, removal_path, split_batches,
                                              sparsity_sweep, sweep_rows, sweep_table)
from pruninglib.lessons.xor import example_network, train_xor, xor_error, xor_miss_diagnostics, xor_pruning_trial

pytestmark = pytest.mark.usefixtures("one_thread")
D = torch.float64


class _Split:
    """An MNIST-like split: uint8 images ``[n, 28, 28]`` (``.data``) and labels 0..9 (``.targets``)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        self.targets = torch.arange(n) % 10

    def __len__(self) -> int:
        return len(self.targets)


def _quadratic(P: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(P, P, generator=g, dtype=D)
    return torch.randn(P, generator=g, dtype=D), A @ A.T + P * torch.eye(P, dtype=D)


def test_downsample_7x7_is_4x4_block_means() -> None:
    ds = _Split(5, 0)
    x, y = downsample_7x7(ds)
    assert x.shape == (5, 49) and x.dtype == D and torch.equal(y, ds.targets)
    block = ds.data[2, 4:8, 8:12].to(D) / 255.0   # row 1, column 2 of the 7x7 grid
    assert torch.isclose(x[2, 1 * 7 + 2], block.mean())
    y[0] = 99
    assert ds.targets[0] == 0   # labels are a copy


def test_fashion_mnist_7x7_standardises_by_the_training_split(monkeypatch: pytest.MonkeyPatch) -> None:
    splits = {"train": _Split(100, 1), "test": _Split(30, 2)}
    monkeypatch.setattr(mlp_curvature, "load_dataset", lambda name, split: splits[split])
    full = fashion_mnist_7x7(None)
    assert full.n_train_available == 100 and full.x_train.shape == (100, 49) and full.x_test.shape == (30, 49)
    assert torch.allclose(full.x_train.mean(0), torch.zeros(49, dtype=D), atol=1e-12)
    assert torch.allclose(full.x_train.std(0), torch.ones(49, dtype=D))
    raw_train, _ = downsample_7x7(splits["train"])
    raw_test, _ = downsample_7x7(splits["test"])
    assert torch.allclose(full.x_test, (raw_test - raw_train.mean(0)) / raw_train.std(0))
    sub = fashion_mnist_7x7(3, seed=0)
    assert len(sub.y_train) == 30 and torch.bincount(sub.y_train).tolist() == [3] * 10
    # the subset's rows are rows of the full standardised set (statistics of the whole split)
    match = (sub.x_train[:, None, :] == full.x_train[None, :, :]).all(-1)
    assert match.any(1).all()
    assert torch.equal(fashion_mnist_7x7(3, seed=0).x_train, sub.x_train)   # same seed, same subset
    assert fashion_mnist_7x7(3, seed=0, device="cpu").x_test.device.type == "cpu"


def test_split_batches_keeps_order_and_checks_its_arguments() -> None:
    x, y = torch.arange(10.0).view(5, 2), torch.arange(5)
    b = split_batches(x, y, 2)
    assert [len(yy) for _, yy in b] == [2, 2, 1]
    assert torch.equal(torch.cat([xx for xx, _ in b]), x) and torch.equal(torch.cat([yy for _, yy in b]), y)
    assert len(split_batches(x, y, 10)) == 1
    with pytest.raises(ValueError, match="batch_size"):
        split_batches(x, y, 0)
    with pytest.raises(ValueError, match="length"):
        split_batches(x, y[:4], 2)


def test_rank_agreement() -> None:
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=D)
    exact = rank_agreement(pred, pred.clone())
    assert exact["spearman"] == pytest.approx(1.0) and exact["spearman_low_half"] == pytest.approx(1.0)
    assert exact["median_rel_error"] == 0.0
    # reversed order in the lower half only (the weights <= the median prediction: 1, 2, 3)
    act = torch.tensor([3.0, 2.0, 1.0, 4.0, 5.0, 6.0], dtype=D)
    r = rank_agreement(pred, act)
    assert r["spearman_low_half"] == pytest.approx(-1.0) and 0 < r["spearman"] < 1
    assert r["median_rel_error"] == pytest.approx(0.0)   # four of six exact


def test_sparsity_sweep_on_a_quadratic() -> None:
    theta, H = _quadratic(10)
    prunable = torch.ones(10, dtype=torch.bool)
    prunable[-2:] = False   # two "biases"
    sparsities = [0.25, 0.5, 0.75]
    path = obs_prune(theta, inverse_hessian(H), prunable, sparsities)
    thetas, predicted = sparsity_sweep(theta, H, path, prunable, sparsities)
    assert list(thetas) == ["magnitude", "OBD", "OBS"] and thetas["OBS"] is path.thetas
    s_obd = obd_saliency(theta, H)
    for s in sparsities:
        k = round(s * 8)
        for m in thetas:
            assert int((thetas[m][s][prunable] == 0).sum()) == k
            assert torch.equal(thetas[m][s][~prunable], theta[~prunable]) or m == "OBS"
        zeroed = thetas["OBD"][s] == 0
        assert torch.equal(zeroed[prunable], torch.isin(torch.arange(8), torch.argsort(s_obd[:8], stable=True)[:k]))
        assert predicted["OBD"][s] == pytest.approx(float(s_obd[zeroed].sum()))
        d = thetas["OBD"][s] - theta
        assert predicted["OBD full quadratic"][s] == pytest.approx(float(0.5 * d @ H @ d))
        # on a quadratic, OBS's running sum of saliencies is its exact loss increase
        d = thetas["OBS"][s] - theta
        assert predicted["OBS"][s] == pytest.approx(float(0.5 * d @ H @ d))
        small = torch.argsort(theta[:8].abs(), stable=True)[:k]
        assert torch.all(thetas["magnitude"][s][small] == 0)
    # a diagonal Hessian: the full quadratic and the diagonal sum agree
    thetas_d, pred_d = sparsity_sweep(theta, torch.diag(torch.diagonal(H)), OBSPath(thetas={s: theta for s in sparsities},
                                      counts={s: 0 for s in sparsities}), prunable, sparsities)
    assert all(pred_d["OBD"][s] == pytest.approx(pred_d["OBD full quadratic"][s]) for s in sparsities)
    assert all(pred_d["OBS"][s] == 0.0 for s in sparsities)


def _tiny_mlp() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.randn(12, 4, generator=g, dtype=D)
    return net, split_batches(x, torch.arange(12) % 2, 5)


def test_sweep_table_and_rows() -> None:
    net, batches = _tiny_mlp()
    theta, spec = flatten_params(net)
    zero = theta.clone()
    zero[:3] = 0
    thetas = {"A": {0.5: theta, 0.9: zero}, "B": {0.5: zero, 0.9: theta}}
    acc = lambda th: float(th.abs().sum())  # noqa: E731 - any function of the vector
    table = sweep_table(net, batches, thetas, [0.5, 0.9], 0.1, 1.0, acc)
    ce = losses_at(net, batches, torch.stack([theta, zero]))
    assert table["A"][0.5]["train_loss"] == pytest.approx(float(ce[0]))
    assert table["B"][0.5]["train_loss"] == pytest.approx(float(ce[1]))
    assert table["A"][0.9]["test_acc"] == acc(zero)
    assert table["A"][0.9]["objective_increase"] == pytest.approx(float(ce[1]) + 0.05 * float(zero.pow(2).sum()) - 1.0)
    rows = sweep_rows(table, [0.9])
    assert rows == [{"sparsity": "90%", "A loss": table["A"][0.9]["train_loss"], "A acc": table["A"][0.9]["test_acc"],
                     "B loss": table["B"][0.9]["train_loss"], "B acc": table["B"][0.9]["test_acc"]}]
    rows = sweep_rows(table, [0.5], keys={"objective_increase": "dL"}, label="point", point_format="{}")
    assert rows == [{"point": "0.5", "A dL": table["A"][0.5]["objective_increase"],
                     "B dL": table["B"][0.5]["objective_increase"]}]


def test_max_sparsity_within() -> None:
    t = {0.1: {"train_loss": 1.0}, 0.5: {"train_loss": 1.09}, 0.9: {"train_loss": 1.2}}
    assert max_sparsity_within(t, 1.0) == 0.5
    assert max_sparsity_within(t, 1.0, tol=0.25) == 0.9
    assert max_sparsity_within(t, 0.5) == 0.0


def test_curvature_comparison() -> None:
    theta, H = _quadratic(6)
    weights = torch.arange(4)
    lam = 0.1
    Hd = H + lam * torch.eye(6, dtype=D)
    obd_ref = obd_saliency(theta, Hd)[weights]
    obs_ref = obs_saliency(theta, inverse_hessian(Hd))[weights]
    out = curvature_comparison({"Gauss-Newton": H, "twice": 2 * H}, H, theta, weights, lam, obd_ref, obs_ref)
    assert out["Gauss-Newton"] == {"rel_frobenius_error": pytest.approx(0.0), "rel_error_vs_fisher": pytest.approx(0.0),
                                   "obd_spearman": pytest.approx(1.0), "obs_spearman": pytest.approx(1.0)}
    assert out["twice"]["rel_frobenius_error"] == pytest.approx(1.0)
    assert out["twice"]["rel_error_vs_fisher"] == pytest.approx(1.0)


def test_removal_path() -> None:
    theta = torch.arange(1.0, 7.0, dtype=D)
    groups = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])]
    path = removal_path(theta, groups, torch.tensor([3.0, 1.0, 2.0]))
    assert len(path) == 3 and torch.equal(path[0], theta)
    assert path[1].tolist() == [1, 2, 0, 0, 5, 6] and path[2].tolist() == [1, 2, 0, 0, 0, 0]
    assert theta.tolist() == [1, 2, 3, 4, 5, 6]   # untouched
    assert len(removal_path(theta, groups, torch.zeros(3), n_remove=3)) == 4
    with pytest.raises(ValueError, match="n_remove"):
        removal_path(theta, groups, torch.zeros(3), n_remove=4)


def test_masked_path_matches_the_network() -> None:
    """removal_path's vectors are what the network computes with those units' outgoing weights zeroed."""
    net, batches = _tiny_mlp()
    theta, spec = flatten_params(net)
    w2 = spec.slice("2.weight")
    groups = [torch.arange(w2.start + j, w2.stop, 3) for j in range(3)]   # column j of the second layer
    path = removal_path(theta, groups, torch.tensor([0.0, 1.0, 2.0]), n_remove=1)
    probe = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    load_flat(probe, path[1], spec)
    assert torch.all(probe[2].weight[:, 0] == 0) and torch.all(probe[2].weight[:, 1:] != 0)
    x = batches[0][0]
    h = torch.tanh(net[0](x))
    h[:, 0] = 0
    assert torch.allclose(probe(x), net[2](h))


def test_xor_miss_diagnostics_and_example_network() -> None:
    theta = train_xor(6, seed=1, weight_decay=1e-3)
    trial = xor_pruning_trial(theta, 1e-3, steps=4)
    why = xor_miss_diagnostics(trial, 1e-3)
    Hx = torch.func.vmap(torch.func.hessian(lambda t: xor_error(t, 1e-3)))(trial.theta[trial.solved])
    share = (Hx - torch.diag_embed(torch.diagonal(Hx, dim1=1, dim2=2))).norm(dim=(1, 2)) / Hx.norm(dim=(1, 2))
    assert why["offdiag_share"] == pytest.approx(float(share.median()))
    bias_first = [int(c) in (4, 5, 8) for c in trial.choice["magnitude"][trial.solved]]
    assert why["magnitude_bias_first"] == pytest.approx(sum(bias_first) / len(bias_first))
    misses = int((trial.solved & ~trial.correct("OBS")).sum())
    assert why["obs_misses"] == misses
    assert (why["obs_miss_ratio"] is None) == (misses == 0) and (why["obs_miss_size"] is None) == (misses == 0)
    assert why["median_abs_weight"] == pytest.approx(float(trial.theta[trial.solved].abs().median()))
    r = example_network(trial)
    assert 0 <= r < 6
    if trial.solved.any():
        assert bool(trial.solved[r])
        if (trial.solved & ~trial.correct("OBD")).any():
            assert not bool(trial.correct("OBD")[r])
    # a trial with a forced OBS miss on a solved network: the ratio and size come from that network
    forced = dataclasses.replace(trial, choice={m: c.clone() for m, c in trial.choice.items()})
    row = int(torch.nonzero(forced.solved).flatten()[0])
    wrong = int(forced.retrained_error[row].argmax())
    forced.choice["OBS"][row] = wrong
    why2 = xor_miss_diagnostics(forced, 1e-3)
    assert why2["obs_misses"] >= 1 and why2["obs_miss_ratio"] is not None and why2["obs_miss_size"] > 0
