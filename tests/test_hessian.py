"""Tests of the curvature matrices of Lesson 01: exact Hessian, Gauss-Newton, empirical Fisher, K-FAC."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib.curvature.fisher import empirical_fisher, empirical_fisher_diag, per_sample_grads
from pruninglib.curvature.kfac import kfac_diag, kfac_factors, kfac_matrix
from pruninglib.curvature.hessian import exact_hessian, gauss_newton, gradient, loss_at, losses_at, minimize_full_batch, relative_frobenius_error
from pruninglib.curvature.params import add_damping, flatten_params, load_flat, param_spec

D = torch.float64


def _tiny(seed: int = 0, act: type = nn.Tanh) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), act(), nn.Linear(3, 3)).to(D)
    x = torch.randn(16, 4, dtype=D)
    y = torch.randint(0, 3, (16,))
    return model, x, y


def test_exact_hessian_matches_finite_differences_of_gradient() -> None:
    model, x, y = _tiny()
    H = exact_hessian(model, (x, y))
    theta, spec = flatten_params(model)
    assert H.shape == (spec.numel, spec.numel) == (27, 27)
    eps = 1e-5
    cols = []
    for e in torch.eye(spec.numel, dtype=D):
        gp = gradient(model, (x, y), theta=theta + eps * e)
        gm = gradient(model, (x, y), theta=theta - eps * e)
        cols.append((gp - gm) / (2 * eps))
    fd = torch.stack(cols, 1)
    assert torch.allclose(H, fd, atol=1e-8, rtol=1e-6), (H - fd).abs().max()
    assert torch.allclose(H, H.T)
    assert H.abs().max() > 1e-2  # a real, non-trivial matrix


def test_exact_hessian_paths_and_batches_agree() -> None:
    model, x, y = _tiny(1)
    H_rev = exact_hessian(model, (x, y), chunk_size=5)
    H_fwd = exact_hessian(model, (x, y), chunk_size=None)  # torch.func.hessian
    H_bat = exact_hessian(model, [(x[:6], y[:6]), (x[6:], y[6:])])
    assert torch.allclose(H_rev, H_fwd, atol=1e-12)
    assert torch.allclose(H_rev, H_bat, atol=1e-12)
    H_d = exact_hessian(model, (x, y), damping=0.25)
    assert torch.allclose(H_d - H_rev, 0.25 * torch.eye(27, dtype=D), atol=1e-12)


def test_gauss_newton_equals_hessian_for_linear_least_squares() -> None:
    torch.manual_seed(2)
    model = nn.Linear(5, 2).to(D)
    x, y = torch.randn(30, 5, dtype=D), torch.randn(30, 2, dtype=D)
    H = exact_hessian(model, (x, y), F.mse_loss)
    G = gauss_newton(model, (x, y), F.mse_loss)
    assert relative_frobenius_error(G, H) < 1e-12
    # analytic: mse = mean over 60 entries -> H = 2/60 * kron(I_2, X^T X) for the weights
    Xa = torch.cat([x, torch.ones(30, 1, dtype=D)], 1)
    assert torch.allclose(H[:5, :5], 2 / 60 * x.T @ x, atol=1e-12)
    assert torch.allclose(H[10, 10], torch.tensor(2 / 60 * 30, dtype=D))
    assert Xa.shape == (30, 6)


def test_gauss_newton_is_psd_and_differs_from_hessian_for_tanh_net() -> None:
    model, x, y = _tiny(3)
    G = gauss_newton(model, (x, y), sample_chunk=5)
    H = exact_hessian(model, (x, y))
    assert torch.linalg.eigvalsh(G)[0] > -1e-12
    assert relative_frobenius_error(G, H) > 1e-3  # the dropped residual term is not zero here


def test_empirical_fisher_matches_autograd_loop() -> None:
    model, x, y = _tiny(4)
    Fm = empirical_fisher(model, (x, y), sample_chunk=7)
    ref = torch.zeros_like(Fm)
    for i in range(len(y)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        ref += torch.outer(g, g)
    ref /= len(y)
    assert torch.allclose(Fm, ref, atol=1e-12)
    assert torch.allclose(empirical_fisher_diag(model, (x, y)), torch.diagonal(ref), atol=1e-12)
    assert per_sample_grads(model, x, y).shape == (16, 27)


@pytest.mark.parametrize("bias", [True, False])
def test_kfac_equals_exact_fisher_for_one_linear_layer_and_one_sample(bias: bool) -> None:
    torch.manual_seed(5)
    layer = nn.Sequential(nn.Linear(6, 4, bias=bias)).to(D)
    x, y = torch.randn(1, 6, dtype=D), torch.tensor([2])
    _, spec = flatten_params(layer)
    K_true = kfac_matrix(kfac_factors(layer, (x, y), fisher="true"), spec)
    K_emp = kfac_matrix(kfac_factors(layer, (x, y), fisher="empirical"), spec)
    # the true Fisher of a softmax is the Gauss-Newton matrix; the empirical one g g^T
    assert torch.allclose(K_true, gauss_newton(layer, (x, y)), atol=1e-12)
    assert torch.allclose(K_emp, empirical_fisher(layer, (x, y)), atol=1e-12)
    assert K_true.abs().max() > 1e-3


def test_kfac_is_block_diagonal_approximation_with_matching_diag() -> None:
    model, x, y = _tiny(6)
    _, spec = flatten_params(model)
    fac = kfac_factors(model, (x, y), fisher="true")
    K = kfac_matrix(fac, spec, damping=0.0)
    assert set(fac) == {"0", "2"}
    assert torch.allclose(torch.diagonal(K), kfac_diag(fac, spec), atol=1e-14)
    assert torch.count_nonzero(K[:15, 15:]) == 0  # no cross-layer blocks
    G = gauss_newton(model, (x, y))
    err = relative_frobenius_error(K, G)
    assert 0 < err < 1.0
    with pytest.raises(ValueError, match="fisher"):
        kfac_factors(model, (x, y), fisher="bogus")
    with pytest.raises(ValueError, match="cross_entropy"):
        kfac_factors(model, (x, y), loss_fn=F.nll_loss, fisher="true")


def test_param_spec_roundtrip_and_losses() -> None:
    model, x, y = _tiny(7)
    theta, spec = flatten_params(model)
    assert spec.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    parts = spec.unflatten(theta)
    assert parts["0.weight"].shape == (3, 4) and torch.equal(spec.flatten(parts), theta)
    assert spec.locate(13) == ("0.bias", (1,))
    assert int(spec.mask(["2.bias"]).sum()) == 3
    thetas = torch.stack([theta, theta * 0.5, torch.zeros_like(theta)])
    ls = losses_at(model, (x, y), thetas, chunk_size=2)
    assert abs(float(ls[0]) - loss_at(model, (x, y))) < 1e-12
    assert abs(float(ls[2]) - math.log(3.0)) < 1e-12  # zero net: uniform
    load_flat(model, theta * 0.5, spec)
    assert abs(loss_at(model, (x, y)) - float(ls[1])) < 1e-12
    with pytest.raises(ValueError, match="not parameters"):
        param_spec(model, ["nope"])


def test_minimize_full_batch_reaches_a_stationary_point() -> None:
    model, x, y = _tiny(8)
    info = minimize_full_batch(model, x, y, weight_decay=1e-2, max_iter=300)
    assert info["grad_norm"] < 1e-6
    theta, _ = flatten_params(model)
    g = gradient(model, (x, y)) + 1e-2 * theta
    assert g.norm() < 1e-6
    H = exact_hessian(model, (x, y), damping=1e-2)
    assert torch.linalg.eigvalsh(H)[0] > 0  # a strict minimum thanks to the decay


def test_bad_inputs_raise_clear_errors() -> None:
    model, x, y = _tiny(9)
    with pytest.raises(ValueError, match="max_params"):
        exact_hessian(model, (x, y), max_params=10)
    with pytest.raises(ValueError, match="damping"):
        add_damping(torch.eye(2), -1.0)
    with pytest.raises(TypeError, match="batches"):
        exact_hessian(model, 3)
