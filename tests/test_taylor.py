"""Taylor criteria (Molchanov et al. 2017 / 2019), activation criteria and the registry."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from pruninglib.criteria import get_criterion, list_criteria, normalize_per_layer
from pruninglib.criteria.activation import activation_statistics
from pruninglib.criteria.oracle import oracle_loss_change
from pruninglib.criteria.taylor import (filter_group_contribution, gate_hessian_diag_exact,
                                        gate_taylor_statistics, obd_squared_gradients, taylor_2017,
                                        taylor_2017_flops, taylor_fo_gate, taylor_fo_weight,
                                        temporary_gates, unit_flops)
from pruninglib.core.gates import ActivationRecorder, get_gates, insert_gates
from pruninglib.core.graph import prunable_layers
from pruninglib.models import MLP, CifarVGG, LeNet3


# tiny models run fastest (and time most reliably on a shared machine) on one thread
pytestmark = pytest.mark.usefixtures("one_thread")


def _lenet(dtype: torch.dtype = torch.float64, widths=(4, 6, 10, 8)) -> LeNet3:
    torch.manual_seed(0)
    return LeNet3(widths=widths).to(dtype).eval()


def _vgg(dtype: torch.dtype = torch.float64) -> CifarVGG:
    torch.manual_seed(1)
    m = CifarVGG([4, "M", 6, "M", 6], in_channels=3, num_classes=5, batch_norm=True).to(dtype)
    with torch.no_grad():  # non-trivial BN statistics and scales
        for bn in [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]:
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    return m.eval()


def _data(shape, n=24, classes=10, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("kind", ["lenet", "vgg"])
def test_gate_gradient_is_sum_of_activation_times_gradient(kind):
    model = _lenet() if kind == "lenet" else _vgg()
    x, y = _data((1, 28, 28)) if kind == "lenet" else _data((3, 8, 8), classes=5)
    insert_gates(model)
    with ActivationRecorder(model) as rec:
        F.cross_entropy(model(x), y).backward()
    gates = get_gates(model)
    for pl in prunable_layers(model):
        a, g = rec.activations[pl.name], rec.gradients[pl.name]
        prod = a * g
        expected = prod.sum(0) if prod.dim() == 2 else prod.sum((0, 2, 3))
        got = gates[pl.name].weight.grad
        assert got.abs().max() > 1e-6  # not trivially zero
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # ... and the group contribution of the filter (or BN scale+shift) is the same number
    model2 = _lenet() if kind == "lenet" else _vgg()
    gc = filter_group_contribution(model2, x, y)
    for pl in prunable_layers(model):
        torch.testing.assert_close(gc[pl.name], gates[pl.name].weight.grad, rtol=1e-8, atol=1e-12)


def test_statistics_match_gate_gradients_and_fo_is_squared_gradient():
    model = _lenet()
    x, y = _data((1, 28, 28))
    st = gate_taylor_statistics(model, [(x, y)], second_order=False)
    insert_gates(model)
    F.cross_entropy(model(x), y).backward()
    for name, g in get_gates(model).items():
        torch.testing.assert_close(st.grad[name].double(), g.weight.grad, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(st.fo[name].double(), g.weight.grad.pow(2), rtol=1e-5, atol=1e-12)


def test_gauss_newton_diagonal_equals_exact_hessian_for_relu_nets():
    model = _lenet()
    x, y = _data((1, 28, 28), n=16)
    st = gate_taylor_statistics(model, [(x, y)], second_order=True)
    for pl in prunable_layers(model):
        exact = gate_hessian_diag_exact(model, x, y, layer=pl.name)
        assert exact.abs().max() > 1e-6
        torch.testing.assert_close(st.hess[pl.name].double(), exact, rtol=1e-4, atol=1e-9)
    # the model is left without gates
    assert not get_gates(model)


def test_gauss_newton_differs_from_exact_for_tanh_and_exact_option_works():
    torch.manual_seed(0)
    model = MLP(6, (5,), 3, "tanh").double().eval()
    x, y = _data((6,), n=32, classes=3)
    gn = gate_taylor_statistics(model, [(x, y)]).hess["net.1"]
    ex = gate_taylor_statistics(model, [(x, y)], hessian="exact").hess["net.1"]
    torch.testing.assert_close(ex.double(), gate_hessian_diag_exact(model, x, y, layer="net.1"),
                               rtol=1e-5, atol=1e-9)
    assert (gn - ex).abs().max() > 1e-3  # tanh is curved along a gate: the extra term matters


def test_first_order_matches_finite_difference_and_second_order_is_closer():
    model = _lenet()
    x, y = _data((1, 28, 28), n=32)
    st = gate_taylor_statistics(model, [(x, y)])
    eps = 1e-6  # tiny, so that no ReLU or max-pool switches
    d = oracle_loss_change(model, [(x, y)], value=1 - eps)
    for k in d:
        torch.testing.assert_close(d[k].double() / eps, -st.grad[k].double(), rtol=1e-3, atol=1e-5)
    full = oracle_loss_change(model, [(x, y)])
    fo, so = st.loss_change(1), st.loss_change(2)
    err1 = sum((full[k] - fo[k]).abs().sum() for k in full)
    err2 = sum((full[k] - so[k]).abs().sum() for k in full)
    assert err2 < err1


def test_per_layer_normalisation_gives_unit_norm():
    model = _lenet(torch.float32)
    x, y = _data((1, 28, 28), dtype=torch.float32)
    for scores in (taylor_2017(model, [(x, y)], normalize=True), taylor_fo_gate(model, [(x, y)], normalize=True),
                   normalize_per_layer(taylor_fo_weight(model, [(x, y)]))):
        for v in scores.values():
            assert v.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_dead_unit_gets_zero_taylor_and_zero_oracle():
    model = _lenet()
    with torch.no_grad():
        model.features[3].weight[:, 2] = 0.0   # unit 2 of conv1 feeds nothing
        model.classifier[3].weight[:, 5] = 0.0  # unit 5 of fc1 feeds nothing
    x, y = _data((1, 28, 28))
    st = gate_taylor_statistics(model, [(x, y)])
    oracle = oracle_loss_change(model, [(x, y)])
    fo_w = taylor_fo_weight(model, [(x, y)])
    t17 = taylor_2017(model, [(x, y)])
    for name, i in [("features.0", 2), ("classifier.1", 5)]:
        for s in (st.grad, st.fo, st.so, st.hess, fo_w, t17, oracle):
            assert s[name][i].item() == 0.0
        assert st.fo[name].abs().max() > 0  # the other units are scored


def test_momentum_accumulation():
    model = _lenet()
    b1, b2 = _data((1, 28, 28), seed=1), _data((1, 28, 28), seed=2)
    s1 = taylor_fo_gate(model, [b1])
    s2 = taylor_fo_gate(model, [b2])
    avg = taylor_fo_gate(model, [b1, b2])
    mom = taylor_fo_gate(model, [b1, b2], momentum=0.9)
    for k in s1:
        torch.testing.assert_close(avg[k], (s1[k] + s2[k]) / 2)
        torch.testing.assert_close(mom[k], 0.9 * s1[k] + 0.1 * s2[k])
    with pytest.raises(ValueError, match="momentum"):
        taylor_fo_gate(model, [b1], momentum=1.5)


def test_weight_variant_and_obd_squared_gradients_rank_alike():
    model = _lenet()
    x, y = _data((1, 28, 28))
    w = taylor_fo_weight(model, [(x, y)])
    obd = obd_squared_gradients(model, [(x, y)])
    for k in w:  # OBD with squared minibatch gradients = B/2 x the weight variant
        torch.testing.assert_close(obd[k], w[k] * len(y) / 2, rtol=1e-5, atol=1e-12)


def test_unit_flops_lenet3():
    model = LeNet3()
    f = unit_flops(model, torch.zeros(1, 1, 28, 28))
    assert f["features.0"] == 2 * (25 * 24 * 24 + 25 * 32 * 8 * 8)
    assert f["features.3"] == 2 * (16 * 25 * 8 * 8 + 120 * 16)
    assert f["classifier.1"] == 2 * (512 + 84)
    assert f["classifier.3"] == 2 * (120 + 10)
    x, y = _data((1, 28, 28), dtype=torch.float32)
    base = taylor_2017(model, [(x, y)], normalize=True)
    same = taylor_2017_flops(model, [(x, y)], lam=0.0)
    pen = taylor_2017_flops(model, [(x, y)], lam=1e-2)
    for k in base:
        torch.testing.assert_close(same[k], base[k])
        torch.testing.assert_close(pen[k], base[k] - 1e-2 * f[k] / 1e6)


def test_activation_statistics_by_hand():
    torch.manual_seed(0)
    model = MLP(3, (4,), 2, "relu").double().eval()
    x, y = _data((3,), n=10, classes=2)
    st = activation_statistics(model, [(x[:6], y[:6]), (x[6:], y[6:])])
    h = torch.relu(model.net[1](x))
    torch.testing.assert_close(st["mean"]["net.1"].double(), h.mean(0), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(st["std"]["net.1"].double(), h.std(0, unbiased=False), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(st["apoz"]["net.1"].double(), (h == 0).double().mean(0))


def test_temporary_gates_leave_existing_gates_alone():
    model = _lenet()
    insert_gates(model, prunable_layers(model)[:1])
    with temporary_gates(model) as gates:
        assert len(gates) == 4
    assert list(get_gates(model)) == ["features.0"]


def test_bad_input_errors():
    model = _lenet()
    x, y = _data((1, 28, 28))
    with pytest.raises(ValueError, match="hessian"):
        gate_taylor_statistics(model, [(x, y)], hessian="diagonal")
    with pytest.raises(ValueError, match="empty"):
        gate_taylor_statistics(model, [])
    with pytest.raises(ValueError, match="no prunable layer"):
        gate_hessian_diag_exact(model, x, y, layer="nope")


def _registry_models():
    torch.manual_seed(0)
    lenet = LeNet3(widths=(2, 3, 4, 3)).eval()
    vgg = CifarVGG([4, "M", 6], in_channels=3, num_classes=4, batch_norm=True).eval()
    return [(lenet, _data((1, 28, 28), n=12, dtype=torch.float32)),
            (vgg, _data((3, 8, 8), n=12, classes=4, dtype=torch.float32))]


MUST_SCORE = {"weight_l1", "weight_l2", "random", "taylor_2017", "taylor_2017_flops", "taylor_fo_gate",
              "taylor_so_gate", "taylor_fo_weight", "activation_mean", "activation_std",
              "activation_apoz", "oracle"}


@pytest.mark.parametrize("idx", [0, 1])
def test_every_registered_criterion_scores_every_unit(idx):
    model, (x, y) = _registry_models()[idx]
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    layers = prunable_layers(model)
    checked, declined = set(), {}
    for name in list_criteria():
        try:
            scores = get_criterion(name)(model, batches, F.cross_entropy)
        except ValueError as e:  # e.g. a criterion that needs BatchNorm, on a model without it
            declined[name] = str(e)
            continue
        covered = [pl for pl in layers if pl.name in scores]
        assert covered, f"{name} scored no layer"
        for pl in covered:
            s = scores[pl.name]
            assert s.shape == (pl.num_units,), f"{name} on {pl.name}: shape {tuple(s.shape)}"
            assert torch.isfinite(s).all(), f"{name} on {pl.name}: {s}"
        checked.add(name)
    must = MUST_SCORE | ({"bn_scale"} if idx == 1 else set())
    assert must <= checked, f"declined: { {k: declined[k] for k in must - checked} }"
    if idx == 0:
        assert "BatchNorm" in declined.get("bn_scale", "")
