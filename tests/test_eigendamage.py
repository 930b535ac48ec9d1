"""EigenDamage (lesson 07): the eigenbasis, its saliencies, the bottleneck surgery and its checkpoint."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from pruninglib import models
from pruninglib.core.eigenbasis import (EigenBottleneck, bottleneck_matrices, bottlenecks, load_bottlenecked,
                                        make_bottleneck, patch_matrix, save_bottlenecked)
from pruninglib.core.metrics import count_parameters
from pruninglib.criteria.eigendamage import (apply_eigendamage, collect_bases, eigen_plan, eigen_plan_params,
                                             eigen_saliency, eigen_targets, eigenbasis, full_plan, global_removal)
from pruninglib.curvature.kfac import kfac_factors, layer_matrix

D = torch.float64


def _vgg(seed: int = 0, cfg: tuple = (4, "M", 6, 8)) -> tuple[nn.Module, list]:
    torch.manual_seed(seed)
    net = models.build_model("cifar_vgg", cfg=list(cfg), in_channels=1, num_classes=3).eval()
    x = torch.randn(12, 1, 8, 8)
    return net, [(x[:6], torch.randint(0, 3, (6,))), (x[6:], torch.randint(0, 3, (6,)))]


def test_saliency_sums_to_the_kfac_quadratic_form() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 5, generator=g, dtype=D)
    RA, RS = torch.randn(5, 5, generator=g, dtype=D), torch.randn(3, 3, generator=g, dtype=D)
    A, S = RA @ RA.T, RS @ RS.T
    eb = eigenbasis(W, A, S)
    assert torch.allclose(eb.Q_S @ eb.W_star @ eb.Q_A.T, W, atol=1e-12)
    w = W.reshape(-1)
    assert torch.allclose(eigen_saliency(eb).sum(), 0.5 * w @ torch.kron(S, A) @ w, atol=1e-10)


@pytest.mark.parametrize("bias", [True, False])
def test_pruned_bottleneck_matches_the_masked_eigenbasis_computation(bias: bool) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2, bias=bias).to(D)
    x = torch.randn(2, 3, 7, 7, dtype=D)
    fac = kfac_factors(nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(2).to(D)), (x, torch.tensor([0, 1])),
                       fisher="empirical", layers=["0"])["0"]
    eb = eigenbasis(layer_matrix(conv), fac.A, fac.S)
    keep_in, keep_out = torch.tensor([0, 3, 5, 9, 20]), torch.tensor([1, 3])
    b = make_bottleneck(conv, eb.Q_A, eb.Q_S, eb.W_star, keep_in, keep_out)
    mask = torch.zeros_like(eb.W_star)
    mask[keep_out[:, None], keep_in[None, :]] = 1
    Wm = eb.Q_S @ (mask * eb.W_star) @ eb.Q_A.T  # the masked eigenbasis weight, back in the layer's coordinates
    ref = nn.Conv2d(3, 4, 3, padding=1, stride=2, bias=bias).to(D)
    n = conv.weight[0].numel()
    with torch.no_grad():
        ref.weight.copy_(Wm[:, :n].reshape(ref.weight.shape))
        if bias:
            ref.bias.copy_(Wm[:, n])
    assert (b(x) - ref(x)).abs().max() < 1e-10, (b(x) - ref(x)).abs().max()
    assert b.rotate_in.out_channels == 5 and b.core.out_channels == 2 and b.rotate_out.out_channels == 4
    full = make_bottleneck(conv, eb.Q_A, eb.Q_S, eb.W_star)
    assert torch.allclose(full(x), conv(x), atol=1e-10)
    # the patch form (the authors' default): 1x1 Q_A^T, a kxk core per kernel offset, 1x1 Q_S (with the bias)
    facp = kfac_factors(nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(2).to(D)), (x, torch.tensor([0, 1])),
                        fisher="empirical", layers=["0"], patch=True)["0"]
    assert facp.A.shape == (3, 3) and facp.patch
    ebp = eigenbasis(patch_matrix(conv), facp.A, facp.S)
    keep_in, keep_out = torch.tensor([0, 2]), torch.tensor([1, 2, 3])
    bp = make_bottleneck(conv, ebp.Q_A, ebp.Q_S, ebp.W_star, keep_in, keep_out)
    assert bp.rotate_in.kernel_size == (1, 1) and bp.core.kernel_size == (3, 3) and bp.rotate_out.kernel_size == (1, 1)
    mask = torch.zeros(4, 1, 3, dtype=D)
    mask[keep_out[:, None], 0, keep_in[None, :]] = 1
    Wk = torch.einsum("os,skc,dc->okd", ebp.Q_S, mask * ebp.W_star, ebp.Q_A)  # [out, K, in] per kernel offset
    with torch.no_grad():
        ref.weight.copy_(Wk.reshape(4, 3, 3, 3).permute(0, 3, 1, 2))
        if bias:
            ref.bias.copy_(conv.bias)
    assert (bp(x) - ref(x)).abs().max() < 1e-10
    assert torch.allclose(make_bottleneck(conv, ebp.Q_A, ebp.Q_S, ebp.W_star)(x), conv(x), atol=1e-10)


def test_reparameterised_network_equals_the_original_and_round_trips(tmp_path) -> None:
    net, batches = _vgg()
    bases = collect_bases(net, batches, fisher="sampled")
    assert list(bases) == ["features.0", "features.4", "features.7"]  # the classifier is not a target
    rep = copy.deepcopy(net)
    what = apply_eigendamage(rep, bases, full_plan(bases), force=True)
    assert set(what.values()) == {"bottleneck"} and len(bottlenecks(rep)) == 3
    x = batches[0][0]
    with torch.no_grad():
        assert (rep(x) - net(x)).abs().max() <= 1e-5
    path = save_bottlenecked(rep, tmp_path / "eigen.pt", extra={"note": "test"})
    back = load_bottlenecked(path).eval()
    with torch.no_grad():
        assert torch.equal(back(x), rep(x))
    assert back.pl_extra == {"note": "test"}
    with pytest.raises(ValueError, match="eigenbasis checkpoint"):
        from pruninglib.checkpoint import save_checkpoint
        load_bottlenecked(save_checkpoint({"x": 1}, tmp_path / "other.pt"))


def test_pruning_plan_param_count_and_iterated_merge() -> None:
    net, batches = _vgg(2, (8, "M", 16, 16))
    bases = collect_bases(net, batches, fisher="sampled")
    plan = eigen_plan(bases, 0.8, limit=0.95)
    predicted = eigen_plan_params(net, plan, bases)
    pruned = copy.deepcopy(net)
    what = apply_eigendamage(pruned, bases, plan)
    assert "bottleneck" in what.values()
    assert count_parameters(pruned) == predicted < count_parameters(net)
    # a second round decomposes each core again; keeping everything merges rotations exactly
    assert set(eigen_targets(pruned)) == set(bases)
    bases2 = collect_bases(pruned, batches, fisher="sampled", seed=1)
    assert all(eb.target == ("core" if isinstance(dict(pruned.named_modules())[n], EigenBottleneck) else "layer")
               for n, eb in bases2.items())
    again = copy.deepcopy(pruned)
    apply_eigendamage(again, bases2, full_plan(bases2))
    x = batches[0][0]
    with torch.no_grad():
        assert (again(x) - pruned(x)).abs().max() <= 1e-5
    for b in bottlenecks(again).values():
        qa, core, qs = bottleneck_matrices(b)
        assert torch.allclose(qs.T @ qs, torch.eye(qs.shape[1]), atol=1e-5)  # still orthonormal columns


def test_global_removal_respects_the_cap_and_the_count() -> None:
    scores = {"a": torch.arange(10.0), "b": torch.arange(10.0) + 100, "c": torch.tensor([0.5, 200.0])}
    out = global_removal(scores, 0.5, limit=0.8)
    assert out["a"].tolist() == list(range(8))  # capped at floor(0.8 * 10)
    # the 11 lowest are a0..a9 and c0; capped units stay in (not handed on to other layers, as in the authors' code)
    assert out["c"].tolist() == [0] and out["b"].tolist() == []
    with pytest.raises(ValueError, match="ratio"):
        global_removal(scores, 1.5)
    with pytest.raises(ValueError, match="limit"):
        global_removal(scores, 0.5, limit=0.0)


def test_c_obs_memo_reuses_the_inverse_diagonals_and_gives_the_same_scores():
    """kron_criterion_scores(..., memo=) keeps diag(A^-1), diag(S^-1) per layer: the second call inverts nothing."""
    import pruninglib.criteria.kron as K
    from pruninglib.curvature.kfac import kfac_factors

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3))
    batches = [(torch.randn(8, 2, 8, 8), torch.randint(0, 3, (8,)))]
    fac = kfac_factors(net, batches, fisher="empirical", layers=["0"])
    plain = K.kron_criterion_scores("c_obs", net, fac, damping=1e-3, kinds=("conv",))
    memo, calls = {}, []
    orig = K.c_obs_inverse_diagonals
    K.c_obs_inverse_diagonals = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        first = K.kron_criterion_scores("c_obs", net, fac, damping=1e-3, kinds=("conv",), memo=memo)
        second = K.kron_criterion_scores("c_obs", net, fac, damping=1e-3, kinds=("conv",), memo=memo)
    finally:
        K.c_obs_inverse_diagonals = orig
    assert len(calls) == 1 and len(memo) == 1
    assert all(torch.equal(plain[k], first[k]) and torch.equal(first[k], second[k]) for k in plain)
