"""Tests of OBD and OBS (Lesson 01): exactness on quadratic losses, Sherman-Morrison, the registry."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib.criteria import get_criterion
from pruninglib.criteria.obd import (curvature, group_obd_saliency, obd_saliency, obd_weight_scores,
                                     zero_lowest_weights, unit_groups)
from pruninglib.criteria.obs import (group_obs_saliency, group_obs_update, inverse_hessian, obs_prune,
                                     obs_prune_groups, obs_saliency, obs_update, sherman_morrison_remove,
                                     woodbury_remove)
from pruninglib.curvature.hessian import exact_hessian, gradient, loss_at, losses_at
from pruninglib.curvature.params import flatten_params, load_flat
from pruninglib.core.surgery import prune_units
from pruninglib.lessons.xor import minimize_batched, train_xor, xor_error, xor_pruning_trial

D = torch.float64


def _least_squares(n: int = 40, d: int = 6, k: int = 2, seed: int = 0,
                   orthogonal: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear model at the exact minimum of the mean squared error (a quadratic loss)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D)
    if orthogonal:  # orthogonal, differently scaled columns with zero mean: a diagonal Hessian
        x = x - x.mean(0)
        q, _ = torch.linalg.qr(x)
        x = q * torch.linspace(1.0, 3.0, d, dtype=D)
    y = x @ torch.randn(d, k, generator=g, dtype=D) + 0.5 * torch.randn(n, k, generator=g, dtype=D)
    model = nn.Linear(d, k).to(D)
    xa = torch.cat([x, torch.ones(n, 1, dtype=D)], 1)
    sol = torch.linalg.lstsq(xa, y).solution  # [d+1, k]
    with torch.no_grad():
        model.weight.copy_(sol[:d].T)
        model.bias.copy_(sol[d])
    return model, x, y


def test_obs_predicted_change_equals_actual_on_quadratic_loss() -> None:
    model, x, y = _least_squares()
    theta, spec = flatten_params(model)
    assert gradient(model, (x, y), F.mse_loss).abs().max() < 1e-12  # at the minimum
    H = exact_hessian(model, (x, y), F.mse_loss)
    H_inv = inverse_hessian(H)
    L0 = loss_at(model, (x, y), F.mse_loss)
    sal = obs_saliency(theta, H_inv)
    for q in range(spec.numel):
        new = theta + obs_update(theta, H_inv, q)
        assert abs(float(new[q])) < 1e-12  # the constraint e_q^T dtheta + theta_q = 0
        actual = loss_at(model, (x, y), F.mse_loss, theta=new) - L0
        assert actual > 0
        assert abs(float(sal[q]) - actual) <= 1e-6 * actual, (q, float(sal[q]), actual)
    # OBD ignores the correction: its prediction is the cost of zeroing alone (also exact here)
    zeroed = theta.repeat(spec.numel, 1) * (1 - torch.eye(spec.numel, dtype=D))
    act0 = losses_at(model, (x, y), zeroed, F.mse_loss) - L0
    assert torch.allclose(obd_saliency(theta, H), act0, rtol=1e-6, atol=1e-14)
    assert (sal <= obd_saliency(theta, H) * (1 + 1e-9)).all()  # correcting never costs more


def test_obd_is_exact_on_a_diagonal_quadratic_and_equals_obs_there() -> None:
    model, x, y = _least_squares(orthogonal=True, k=1, seed=1)
    theta, spec = flatten_params(model)
    H = exact_hessian(model, (x, y), F.mse_loss)
    off = H - torch.diag(torch.diagonal(H))
    assert off.abs().max() < 1e-12 * H.abs().max()  # the Hessian is diagonal
    L0 = loss_at(model, (x, y), F.mse_loss)
    zeroed = theta.repeat(spec.numel, 1) * (1 - torch.eye(spec.numel, dtype=D))
    actual = losses_at(model, (x, y), zeroed, F.mse_loss) - L0
    pred = obd_saliency(theta, H)
    assert torch.allclose(pred, actual, rtol=1e-6, atol=0)
    assert torch.allclose(obs_saliency(theta, inverse_hessian(H)), pred, rtol=1e-10)
    scores = obd_weight_scores(theta, H, spec)
    assert scores["weight"].shape == model.weight.shape and scores["bias"].shape == model.bias.shape


def test_sherman_morrison_matches_fresh_inverse_after_each_removal() -> None:
    g = torch.Generator().manual_seed(3)
    A = torch.randn(12, 12, generator=g, dtype=D)
    H = A @ A.T + 0.5 * torch.eye(12, dtype=D)
    H_inv = torch.linalg.inv(H)
    keep = list(range(12))
    for q in [4, 0, 11, 7, 5, 2]:
        H_inv = sherman_morrison_remove(H_inv, q)
        keep.remove(q)
        fresh = torch.linalg.inv(H[keep][:, keep])
        assert torch.allclose(H_inv[keep][:, keep], fresh, atol=1e-10, rtol=1e-8)
        assert H_inv[q].abs().max() == 0 and H_inv[:, q].abs().max() == 0
    # the group (Woodbury) form equals a fresh inverse too
    Q = torch.tensor([1, 3, 9])
    W = woodbury_remove(torch.linalg.inv(H), Q)
    rest = [i for i in range(12) if i not in Q.tolist()]
    assert torch.allclose(W[rest][:, rest], torch.linalg.inv(H[rest][:, rest]), atol=1e-10)


def test_obs_prune_path_is_exact_on_quadratic_and_matches_naive_reinversion() -> None:
    model, x, y = _least_squares(n=60, d=8, k=2, seed=4)
    theta, spec = flatten_params(model)
    H = exact_hessian(model, (x, y), F.mse_loss)
    prunable = spec.mask(["weight"])
    path = obs_prune(theta, inverse_hessian(H), prunable, [0.25, 0.5, 0.75], compact_below=0.9)
    L0 = loss_at(model, (x, y), F.mse_loss)
    for s, th in path.thetas.items():
        n = path.counts[s]
        assert n == round(s * 16) and int((th[prunable] == 0).sum()) == n
        actual = loss_at(model, (x, y), F.mse_loss, theta=th) - L0
        assert abs(sum(path.saliency[:n]) - actual) <= 1e-6 * actual  # additive on a quadratic
        assert torch.equal(path.mask(s, spec.numel), th != 0)
    # naive OBS: invert H over the remaining weights afresh at every step
    alive, th, order = list(range(spec.numel)), theta.clone(), []
    for _ in range(12):
        Hi = torch.linalg.inv(H[alive][:, alive])
        t = th[alive]
        sal = 0.5 * t.pow(2) / torch.diagonal(Hi)
        sal[[i for i, a in enumerate(alive) if not prunable[a]]] = float("inf")
        j = int(sal.argmin())
        th[alive] = t - t[j] / Hi[j, j] * Hi[:, j]
        order.append(alive.pop(j))
    assert order == path.order[:12]
    assert torch.allclose(th, path.thetas[0.75], atol=1e-9)
    assert (path.thetas[0.75][~prunable] != theta[~prunable]).all()  # biases were corrected


def test_group_obs_equals_schur_complement_and_unit_criteria() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(D)
    model[0].requires_grad_(False)  # loss is then quadratic in the trainable (last) layer
    x = torch.randn(50, 5, dtype=D)
    y = torch.randn(50, 3, dtype=D)
    h = model[1](model[0](x))
    sol = torch.linalg.lstsq(torch.cat([h, torch.ones(50, 1, dtype=D)], 1), y).solution
    with torch.no_grad():
        model[2].weight.copy_(sol[:4].T)
        model[2].bias.copy_(sol[4])
    theta, spec = flatten_params(model)
    assert spec.names == ("2.weight", "2.bias")
    H = exact_hessian(model, (x, y), F.mse_loss)
    H_inv = inverse_hessian(H)
    groups = unit_groups(model, spec)["0"]
    assert [g.tolist() for g in groups[:2]] == [[0, 4, 8], [1, 5, 9]]  # columns of the consumer
    sal = group_obs_saliency(theta, H_inv, groups)
    L0 = loss_at(model, (x, y), F.mse_loss)
    for j, Q in enumerate(groups):
        rest = torch.tensor([i for i in range(spec.numel) if i not in Q.tolist()])
        schur = H[Q][:, Q] - H[Q][:, rest] @ torch.linalg.solve(H[rest][:, rest], H[rest][:, Q])
        assert torch.allclose(sal[j], 0.5 * theta[Q] @ schur @ theta[Q], rtol=1e-9)
        new = theta + group_obs_update(theta, H_inv, Q)
        assert new[Q].abs().max() < 1e-12
        actual = loss_at(model, (x, y), F.mse_loss, theta=new) - L0
        assert abs(float(sal[j]) - actual) <= 1e-6 * actual
    scores = get_criterion("obs_unit")(model, [(x, y)], F.mse_loss, damping=0.0)
    assert list(scores) == ["0"] and torch.allclose(scores["0"], sal)
    obd = get_criterion("obd_unit")(model, [(x, y)], F.mse_loss)
    assert torch.allclose(obd["0"], group_obd_saliency(theta, H, groups))
    assert (scores["0"] <= obd["0"] * (1 + 1e-9)).all()
    # iterative group OBS: removing unit 0..k and physically pruning gives the same network
    path = obs_prune_groups(theta, H_inv, groups, 2)
    load_flat(model, path.thetas[-1], spec)
    out_masked = model(x)
    prune_units(model, [("0", j) for j in path.order])
    assert model[0].out_features == 2 and torch.allclose(model(x), out_masked, atol=1e-12)


def test_zero_lowest_weights_and_errors() -> None:
    theta = torch.tensor([0.1, -3.0, 0.2, 5.0, -0.05], dtype=D)
    prunable = torch.tensor([True, True, True, True, False])
    pruned, keep = zero_lowest_weights(theta, theta.abs(), prunable, 0.5)
    assert pruned.tolist() == [0.0, -3.0, 0.0, 5.0, -0.05] and keep.tolist() == [False, True, False, True, True]
    with pytest.raises(ValueError, match="sparsity"):
        zero_lowest_weights(theta, theta.abs(), prunable, 1.5)
    with pytest.raises(ValueError, match="damping"):
        inverse_hessian(torch.diag(torch.tensor([1.0, -2.0], dtype=D)))
    assert torch.allclose(inverse_hessian(torch.diag(torch.tensor([1.0, -2.0], dtype=D)), damping=3.0),
                          torch.diag(torch.tensor([0.25, 1.0], dtype=D)))


def test_xor_trial_machinery() -> None:
    theta = train_xor(6, seed=1, weight_decay=1e-3)
    g = torch.func.vmap(torch.func.grad(lambda t: xor_error(t, 1e-3)))(theta)
    assert g.abs().max() < 1e-8  # trained to stationary points
    trial = xor_pruning_trial(theta, 1e-3, steps=4)
    assert trial.retrained_error.shape == (6, 9)
    # each retrained network has its deleted weight at 0 and is a stationary point of the others
    rt = trial.retrained_theta
    assert torch.equal(torch.diagonal(rt, dim1=1, dim2=2), torch.zeros(6, 9, dtype=D))
    g_rt = torch.func.vmap(torch.func.grad(lambda t: xor_error(t, 1e-3)))(rt.reshape(-1, 9)).view(6, 9, 9)
    g_rt = g_rt * (1 - torch.eye(9, dtype=D))
    assert g_rt.abs().max() < 1e-6
    assert torch.allclose(xor_error(rt, 1e-3), trial.retrained_error)
    for m in ("magnitude", "OBD", "OBS"):
        assert 0.0 <= trial.fraction_correct(m, only_solved=False) <= 1.0
    fixed = torch.zeros(1, 9, dtype=torch.bool)
    fixed[0, 8] = True
    start = theta[:1].clone()
    start[0, 8] = 0.0
    out = minimize_batched(start, 1e-3, fixed, iters=100)
    assert out[0, 8] == 0.0 and xor_error(out, 1e-3) <= xor_error(start, 1e-3)


def test_curvature_kinds_and_errors() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(D)
    x, y = torch.randn(10, 3, dtype=D), torch.randint(0, 2, (10,))
    mats = {k: curvature(model, [(x, y)], kind=k, damping=0.1) for k in ("exact", "gauss_newton", "fisher", "kfac")}
    for k, M in mats.items():
        assert M.shape == (26, 26) and torch.allclose(M, M.T, atol=1e-12), k
    # all agree on the damping, none is identical to another
    assert torch.allclose(mats["exact"] - exact_hessian(model, (x, y)), 0.1 * torch.eye(26, dtype=D), atol=1e-12)
    assert not torch.allclose(mats["gauss_newton"], mats["fisher"])
    with pytest.raises(ValueError, match="unknown curvature"):
        curvature(model, [(x, y)], kind="bogus")
