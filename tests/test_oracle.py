"""The batched oracle against the naive loop, and the rank-correlation helpers."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from pruninglib.lessons.correlation import correlation_table, oracle_correlations, rank_correlation
from pruninglib.lessons.lenet3 import reference_model
from pruninglib.tables import markdown_table
from pruninglib.criteria import get_criterion
from pruninglib.criteria.oracle import (evaluate_loss, naive_oracle_loss_change, oracle_loss_change,
                                        oracle_method)
from pruninglib.core.gates import insert_gates, zero_units
from pruninglib.core.graph import prunable_layers
from pruninglib.models import MLP, CifarResNet, CifarVGG, LeNet3


# tiny models run fastest (and time most reliably on a shared machine) on one thread
pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(shape, n=40, classes=10, seed=0, dtype=torch.float64, split=25):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[:split], y[:split]), (x[split:], y[split:])]


def _models():
    torch.manual_seed(0)
    return {
        "lenet3": (LeNet3(widths=(6, 8, 12, 10)).double(), _batches((1, 28, 28))),
        "vgg_bn": (CifarVGG([4, "M", 6, "M", 6], num_classes=5, batch_norm=True).double(),
                   _batches((3, 8, 8), classes=5)),
        "vgg_no_bn": (CifarVGG([4, "M", 6, "M", 6], num_classes=5, batch_norm=False).double(),
                      _batches((3, 8, 8), classes=5)),  # conv -> ReLU(inplace=True): cached tensors must survive
        "mlp_sigmoid": (MLP(10, (7, 5), 3, "sigmoid").double(), _batches((10,), classes=3)),
        "resnet": (CifarResNet(8, num_classes=4, widths=(4, 6, 8)).double(), _batches((3, 8, 8), classes=4)),
    }


@pytest.mark.parametrize("name", ["lenet3", "vgg_bn", "vgg_no_bn", "mlp_sigmoid", "resnet"])
def test_batched_oracle_equals_naive_loop(name):
    model, batches = _models()[name]
    naive, base_n = naive_oracle_loss_change(model, batches, return_base=True)
    fast, base_f = oracle_loss_change(model, batches, max_rows=60, return_base=True)
    assert base_f == pytest.approx(base_n, abs=1e-12)
    assert base_n == pytest.approx(evaluate_loss(model.eval(), batches), abs=1e-12)
    for k in naive:
        assert naive[k].abs().max() > 1e-4  # removals do change the loss
        torch.testing.assert_close(fast[k], naive[k], rtol=0, atol=1e-6)
    methods = ["host", "input"] if name != "resnet" else ["input"]
    for method in methods:
        other = oracle_loss_change(model, batches, method=method, max_rows=37)
        for k in naive:
            torch.testing.assert_close(other[k], naive[k], rtol=0, atol=1e-6)


def test_scheme_choice():
    models = _models()
    lenet = models["lenet3"][0]
    assert {oracle_method(lenet, pl) for pl in prunable_layers(lenet)} == {"consumer"}
    assert {oracle_method(lenet, pl, value=0.5) for pl in prunable_layers(lenet)} == {"host"}
    res = models["resnet"][0]
    assert {oracle_method(res, pl) for pl in prunable_layers(res)} == {"input"}
    with pytest.raises(ValueError, match="chain model"):
        oracle_loss_change(res, models["resnet"][1], method="host")
    with pytest.raises(ValueError, match="unknown oracle method"):
        oracle_loss_change(lenet, models["lenet3"][1], method="fast")


def test_scaled_removal_matches_naive():
    model, batches = _models()["lenet3"]
    fast = oracle_loss_change(model, batches, value=0.7)
    naive = naive_oracle_loss_change(model, batches, value=0.7)
    for k in naive:
        torch.testing.assert_close(fast[k], naive[k], rtol=0, atol=1e-6)


def test_dead_unit_and_gated_unit_get_zero():
    model, batches = _models()["lenet3"]
    with torch.no_grad():
        model.classifier[3].weight[:, 4] = 0.0  # fc1 unit 4 feeds nothing
    d = oracle_loss_change(model, batches)
    assert d["classifier.1"][4].item() == 0.0
    assert get_criterion("oracle")(model, batches)["classifier.1"][4].item() == 0.0
    insert_gates(model)
    zero_units(model, [("features.3", 1)])  # already removed: removing it again changes nothing
    d2 = oracle_loss_change(model, batches)
    assert abs(d2["features.3"][1].item()) < 1e-12


def test_units_subset_and_signed_vs_abs():
    model, batches = _models()["lenet3"]
    full = oracle_loss_change(model, batches)
    part = oracle_loss_change(model, batches, units={"features.0": [1, 3]})
    assert torch.equal(part["features.0"][[1, 3]], full["features.0"][[1, 3]])
    assert part["features.0"][[0, 2, 4, 5]].abs().max() == 0 and part["classifier.3"].abs().max() == 0
    signed = get_criterion("oracle")(model, batches, signed=True)
    absolute = get_criterion("oracle")(model, batches)
    for k in full:
        torch.testing.assert_close(signed[k], full[k])
        torch.testing.assert_close(absolute[k], full[k].abs())


def test_rank_correlation_values():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rank_correlation(a, a * 10 + 3) == pytest.approx(1.0)
    assert rank_correlation(a, -a, "kendall") == pytest.approx(-1.0)
    assert rank_correlation(a, torch.tensor([1.0, 3.0, 2.0, 4.0]), "spearman") == pytest.approx(0.8)
    assert rank_correlation(a, torch.tensor([1.0, 3.0, 2.0, 4.0]), "kendall") == pytest.approx(4 / 6)
    assert math.isnan(rank_correlation(a, torch.ones(4)))
    with pytest.raises(ValueError, match="method"):
        rank_correlation(a, a, "pearson")
    with pytest.raises(ValueError, match="length"):
        rank_correlation(a, a[:3])


def test_oracle_correlations_per_layer_all_layers_and_normalised():
    oracle = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([10.0, 20.0, 30.0])}
    crit = {"a": torch.tensor([100.0, 200.0, 300.0]), "b": torch.tensor([1.0, 2.0, 4.0])}
    c = oracle_correlations(crit, oracle)
    assert c["per_layer"] == pytest.approx(1.0)        # right order within each layer
    assert c["all_layers"] == pytest.approx(1 - 6 * 54 / 210, abs=1e-9)  # but the layer scales differ
    # after L2 normalisation: a -> [.27, .53, .80], b -> [.22, .44, .87]; ranks 2 4 5 1 3 6
    assert c["all_layers_l2"] == pytest.approx(1 - 6 * (1 + 4 + 4 + 9 + 4 + 0) / (6 * 35), abs=1e-9)
    rows = correlation_table({"crit": crit, "oracle": oracle}, oracle)
    assert rows[1]["spearman_all_layers"] == pytest.approx(1.0)
    assert rows[0]["kendall_per_layer"] == pytest.approx(1.0)
    md = markdown_table(rows, ["criterion", "spearman_per_layer"], ["criterion", "per layer"])
    assert md.splitlines()[2] == "| crit | 1.00 |"
    with pytest.raises(ValueError, match="different layers"):
        oracle_correlations({"a": crit["a"]}, oracle)


def test_reference_model_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNINGLIB_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    kw = dict(dataset="synthetic_test", n_per_class=None, epochs=1, batch_size=32, lr=0.01,
              device=torch.device("cpu"), progress=False, train_data=data)
    m1, h1 = reference_model("lenet3", {"widths": [4, 4, 8, 8]}, **kw)
    assert len(list(tmp_path.glob("lenet3_reference-*.pt"))) == 1
    m2, h2 = reference_model("lenet3", {"widths": [4, 4, 8, 8]}, **kw, )
    assert h1 == h2 and not m2.training
    for (k, v), (_, w) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(v, w), k


def test_oracle_scores_carry_no_autograd_graph():
    """The oracle only evaluates: its scores are plain tensors a plot or NumPy can take (no grad)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    scores = oracle_loss_change(model, [(x, y)])
    assert all(not s.requires_grad for s in scores.values())
    scores["0"].numpy()  # raises if the tensor required grad
