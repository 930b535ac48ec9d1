"""K-FAC for convolutions (Grosse & Martens 2016) and the Kron-OBD/OBS, C-OBD/OBS criteria of lesson 07."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib.criteria.kron import (c_obd_scores, c_obs_scores, damped_inverse, fisher_diagonal, kron_criterion_scores,
                                      kron_obd_scores, kron_obs_loss_change, kron_obs_scores, kron_obs_update)
from pruninglib.curvature.fisher import per_sample_grads
from pruninglib.curvature.kfac import kfac_factors, kfac_matrix, layer_matrix, set_layer_matrix
from pruninglib.curvature.params import flatten_params
from pruninglib.curvature.hessian import relative_frobenius_error

D = torch.float64


def _conv_net(bias: bool, side: int = 3, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, bias=bias), nn.Flatten(), nn.LazyLinear(4)).to(D)
    x = torch.randn(1, 2, side, side, dtype=D)
    net(x)
    return net, x


def _exact_conv_fisher(net: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str], kind: str) -> torch.Tensor:
    """The exact Fisher block of the conv's parameters from per-example gradients (true: sum over classes)."""
    if kind == "empirical":
        g = per_sample_grads(net, x, y, params=names)
        return g.T @ g / len(x)
    with torch.no_grad():
        p = net(x).softmax(-1)
    Fm = 0
    for c in range(p.shape[1]):
        g = per_sample_grads(net, x, torch.full_like(y, c), params=names)
        Fm = Fm + (g * p[:, c:c + 1]).T @ g
    return Fm / len(x)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_kfac_is_exact_for_one_example_and_one_position(bias: bool, kind: str) -> None:
    net, x = _conv_net(bias, side=3)  # 3x3 input, 3x3 kernel: one output position
    y = torch.tensor([1])
    names = ["0.weight", "0.bias"] if bias else ["0.weight"]
    _, spec = flatten_params(net, names)
    fac = kfac_factors(net, (x, y), fisher=kind, layers=["0"])
    assert fac["0"].spatial == 1 and fac["0"].kind == "conv"
    K = kfac_matrix(fac, spec)
    exact = _exact_conv_fisher(net, x, y, names, kind)
    assert exact.abs().max() > 1e-4
    assert torch.allclose(K, exact, atol=1e-6, rtol=0)


def test_kfac_is_approximate_with_many_positions_and_follows_the_eigendamage_scaling() -> None:
    net, _ = _conv_net(True, side=5)
    x = torch.randn(3, 2, 5, 5, dtype=D)
    y = torch.tensor([0, 1, 2])
    names = ["0.weight", "0.bias"]
    _, spec = flatten_params(net, names)
    fac = kfac_factors(net, (x, y), fisher="empirical", layers=["0"])["0"]
    assert fac.spatial == 9
    err = relative_frobenius_error(kfac_matrix({"0": fac}, spec), _exact_conv_fisher(net, x, y, names, "empirical"))
    assert 1e-3 < err < 2.0  # an approximation now, not an identity
    # A and S by hand: patches sliced position by position, divided by |T|; S = |T| * sum_t delta delta^T
    xp = x
    patches = torch.stack([torch.cat([xp[:, :, i:i + 3, j:j + 3].reshape(3, -1), torch.ones(3, 1, dtype=D)], 1)
                           for i in range(3) for j in range(3)], 1) / 9  # [B, T, 19]
    A = torch.einsum("btj,btk->jk", patches, patches) / 3
    assert torch.allclose(fac.A, A, atol=1e-12)
    out = {}
    h = net[0].register_forward_hook(lambda m, i, o: out.setdefault("o", o))
    loss = F.cross_entropy(net(x), y, reduction="sum")
    h.remove()
    g = torch.autograd.grad(loss, out["o"])[0].permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.allclose(fac.S, 9 * g.T @ g / 3, atol=1e-12)


def test_sampled_fisher_is_seeded_and_bad_input_is_refused() -> None:
    net, _ = _conv_net(True, side=5)
    x, y = torch.randn(8, 2, 5, 5, dtype=D), torch.randint(0, 4, (8,))
    a = kfac_factors(net, [(x, y)], fisher="sampled", seed=3)
    b = kfac_factors(net, [(x, y)], fisher="sampled", seed=3)
    assert set(a) == {"0", "2"} and torch.equal(a["0"].S, b["0"].S)
    with pytest.raises(ValueError, match="fisher"):
        kfac_factors(net, (x, y), fisher="bogus")
    with pytest.raises(TypeError, match="Conv2d"):
        kfac_factors(net, (x, y), layers=["1"])


def test_layer_matrix_round_trip_and_order_matches_unfold() -> None:
    net, x = _conv_net(True, side=4)
    m = net[0]
    W = layer_matrix(m)
    p = F.unfold(x, 3)  # [1, 18, T]
    ref = m(x).flatten(2)
    assert torch.allclose(W[:, :-1] @ p[0] + W[:, -1:], ref[0], atol=1e-12)
    set_layer_matrix(m, 2 * W)
    assert torch.allclose(layer_matrix(m), 2 * W)


def _least_squares(seed: int = 0):
    """A linear layer under a weighted squared error: its Hessian is exactly S (x) A."""
    g = torch.Generator().manual_seed(seed)
    n, d_in, d_out = 200, 5, 4
    X = torch.randn(n, d_in, generator=g, dtype=D)
    Y = X @ torch.randn(d_in, d_out, generator=g, dtype=D) + 0.3 * torch.randn(n, d_out, generator=g, dtype=D)
    R = torch.randn(d_out, d_out, generator=g, dtype=D)
    M = R @ R.T + 0.5 * torch.eye(d_out, dtype=D)  # correlated outputs: S is not diagonal
    A = X.T @ X / n

    def loss(W):
        E = X @ W.T - Y
        return 0.5 * ((E @ M) * E).sum() / n

    W0 = torch.linalg.solve(A, X.T @ Y / n).T  # the minimum (M drops out)
    return loss, W0, A, M


def test_kron_obs_predicts_the_actual_loss_change_on_a_least_squares_layer() -> None:
    loss, W0, A, S = _least_squares()
    base = loss(W0)
    obs, obd = kron_obs_scores(W0, A, S), kron_obd_scores(W0, A, S)
    for i in range(W0.shape[0]):
        dW = kron_obs_update(W0, S, [i])
        assert dW[i].add(W0[i]).abs().max() < 1e-12  # the filter is removed
        assert abs(float(loss(W0 + dW) - base) - float(obs[i])) < 1e-6
        W_obd = W0.clone()
        W_obd[i] = 0
        assert abs(float(loss(W_obd) - base) - float(obd[i])) < 1e-6
        assert obs[i] <= obd[i] + 1e-12  # compensation never hurts
    P = [0, 2]
    dW = kron_obs_update(W0, S, P, joint=True)
    actual = float(loss(W0 + dW) - base)
    assert abs(actual - kron_obs_loss_change(W0, A, S, P)) < 1e-6
    # the joint update is the optimum: any other change of the remaining filters costs more
    noise = torch.randn_like(W0) * 1e-2
    noise[P] = 0
    assert float(loss(W0 + dW + noise) - base) > actual
    # the paper's summed single updates differ from the joint one when S^-1 couples the pruned filters
    approx = kron_obs_update(W0, S, P, joint=False)
    assert (approx - dW).abs().max() > 1e-6


def test_c_obs_and_c_obd_are_the_per_weight_saliencies_summed_per_filter() -> None:
    loss, W0, A, S = _least_squares(1)
    Fm = torch.kron(S, A)
    Finv = torch.linalg.inv(Fm)
    w = W0.reshape(-1)
    per_obs = 0.5 * w.pow(2) / torch.diagonal(Finv)
    assert torch.allclose(c_obs_scores(W0, A, S), per_obs.reshape(W0.shape).sum(1), atol=1e-10)
    per_obd = 0.5 * w.pow(2) * torch.diagonal(Fm)
    assert torch.allclose(c_obd_scores(W0, torch.diagonal(Fm).reshape(W0.shape)), per_obd.reshape(W0.shape).sum(1))


def test_fisher_diagonal_equals_squared_per_example_gradients() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 4)).to(D)
    x, y = torch.randn(6, 2, 4, 4, dtype=D), torch.randint(0, 4, (6,))
    diag = fisher_diagonal(net, [(x, y)], ["0", "3"], fisher="empirical")
    g = per_sample_grads(net, x, y, params=["0.weight", "0.bias"])
    ref = g.pow(2).mean(0)
    got = torch.cat([diag["0"][:, :-1].reshape(-1), diag["0"][:, -1]])
    assert torch.allclose(got, ref, atol=1e-12)
    g3 = per_sample_grads(net, x, y, params=["3.weight"])
    assert torch.allclose(diag["3"][:, :-1].reshape(-1), g3.pow(2).mean(0), atol=1e-12)


def test_damped_inverse_refuses_a_singular_factor_and_criteria_need_statistics() -> None:
    S = torch.diag(torch.tensor([1.0, 0.0], dtype=D))
    with pytest.raises(ValueError, match="damping"):
        damped_inverse(S)
    assert torch.isfinite(damped_inverse(S, 1e-3)).all()
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="factors"):
        kron_criterion_scores("kron_obs", net)
    with pytest.raises(ValueError, match="unknown"):
        kron_criterion_scores("bogus", net)


def test_float32_products_keep_float64_sums_close_to_the_float64_factors() -> None:
    net, _ = _conv_net(True, side=6)
    x, y = torch.randn(10, 2, 6, 6, dtype=D), torch.randint(0, 4, (10,))
    full = kfac_factors(net, [(x[:5], y[:5]), (x[5:], y[5:])], fisher="empirical")
    fast = kfac_factors(net, [(x[:5], y[:5]), (x[5:], y[5:])], fisher="empirical", compute_dtype=torch.float32)
    for n in full:
        assert fast[n].A.dtype == torch.float64
        assert torch.allclose(fast[n].A, full[n].A, rtol=1e-5, atol=1e-7)
        assert torch.allclose(fast[n].S, full[n].S, rtol=1e-4, atol=1e-7)
    d64 = fisher_diagonal(net, [(x, y)], ["0"], fisher="empirical")
    d32 = fisher_diagonal(net, [(x, y)], ["0"], fisher="empirical", compute_dtype=torch.float32)
    assert torch.allclose(d32["0"], d64["0"], rtol=1e-4, atol=1e-8)
