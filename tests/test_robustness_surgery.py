"""Bad input to selection and surgery is refused with a clear error before anything changes (issue 14, items 1-5).

Each test here failed on main before the fix (lowest_units took 2.5, surgery coerced bools and floats with int(),
nn.Sequential(ResNet blocks) passed as a chain, a plan failing midway left a half-pruned model, Linear -> LSTM
gave no prunable layer and no reason).
"""
import pytest
import torch
import torch.nn as nn
import torchvision

from pruninglib.core import surgery
from pruninglib.core.graph import UnsupportedModelError, prunable_layers
from pruninglib.core.surgery import prune_channels, prune_units
from pruninglib.criteria.base import lowest_units
from pruninglib.criteria.oracle import oracle_loss_change
from pruninglib.lessons.transfer import remove_lowest_filters
from pruninglib.models import build_model


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("n", [2.5, float("nan"), True, "3"])
def test_lowest_units_refuses_a_non_integer_count(n):
    scores = {"a": torch.arange(4.0), "b": torch.arange(3.0)}
    with pytest.raises(TypeError, match="must be an integer"):
        lowest_units(scores, n)


def test_lowest_units_refuses_a_negative_count():
    with pytest.raises(ValueError, match=">= 0"):
        lowest_units({"a": torch.arange(4.0)}, -1)


def test_remove_lowest_filters_with_a_fractional_count_leaves_vgg_untouched():
    model = build_model("cifar_vgg", cfg="vgg11", in_channels=1, width=0.125)
    scores = {pl.name: torch.rand(pl.num_units) for pl in prunable_layers(model, ("conv",))}
    before = _state(model)
    with pytest.raises(TypeError, match="integer"):
        remove_lowest_filters(model, scores, 2.5)
    assert _unchanged(model, before)


@pytest.mark.parametrize("bad, match", [
    ([1.7], "not an integer"),
    ([True] + [False] * 5, "bool mask must have 16"),
    (torch.tensor([0.0, 2.0]), "float32 array"),
    (3, "write \\[3\\]"),
    ("0", "single value"),
    (None, "NoneType"),
])
def test_surgery_takes_integer_indices_only(bad, match):
    model = _net()
    before = _state(model)
    with pytest.raises(TypeError, match=match):
        prune_channels(model, {"0": bad})
    assert _unchanged(model, before)


def test_surgery_reads_a_full_bool_mask_as_a_mask():
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[0, 5]] = True
    a, b = _net(), _net()
    prune_channels(a, {"0": mask})
    prune_channels(b, {"0": [0, 5]})
    assert a[0].out_channels == 14 and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                                               b.state_dict().values()))
    c = _net()
    prune_channels(c, {"0": [True, False] + [False] * 14})  # a list of 16 bools is a mask too
    assert c[0].out_channels == 15


def test_surgery_refuses_a_plan_that_is_not_a_mapping():
    with pytest.raises(TypeError, match="mapping"):
        prune_channels(_net(), [("0", 1)])


def test_a_plan_that_fails_on_its_last_layer_leaves_every_parameter_identical(monkeypatch):
    model = _net()
    before = _state(model)
    params_before = {k: id(p) for k, p in model.named_parameters()}
    real = surgery._shrink_gate
    calls = []

    def fail_on_last(pl, keep):
        calls.append(pl.name)
        if pl.name == "3":
            raise RuntimeError("simulated failure in the middle of the surgery")
        real(pl, keep)

    monkeypatch.setattr(surgery, "_shrink_gate", fail_on_last)
    with pytest.raises(RuntimeError, match="simulated"):
        prune_channels(model, {"0": [1, 2], "3": [0]})
    assert calls == ["0", "3"]  # the first layer had been cut already
    assert _unchanged(model, before)
    assert {k: id(p) for k, p in model.named_parameters()} == params_before
    assert model[0].out_channels == 16 and model[1].num_features == 16 and model[3].in_channels == 16
    x = torch.randn(2, 3, 4, 4)
    model.eval()
    model(x)  # still a working network


def test_a_sequential_of_resnet_blocks_is_not_a_chain():
    r = torchvision.models.resnet18(num_classes=10)
    model = nn.Sequential(*list(r.children())[:-1], nn.Flatten(), nn.Linear(512, 10))
    before = _state(model)
    with pytest.raises(UnsupportedModelError, match="'4.0'.*BasicBlock.*prunable_groups"):
        prunable_layers(model)
    with pytest.raises(UnsupportedModelError):
        prune_channels(model, {"0": [0, 1]})
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    with pytest.raises(UnsupportedModelError):  # the oracle refuses instead of returning wrong values
        oracle_loss_change(model, [(x, y)])
    assert _unchanged(model, before)


def test_nested_plain_stacks_are_still_chains():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 6), nn.ReLU()), nn.Sequential(nn.Linear(6, 3)))
    assert [pl.name for pl in prunable_layers(model)] == ["0.0"]


def test_a_recurrent_layer_is_named_as_unsupported():
    model = nn.Sequential(nn.Linear(4, 8), nn.LSTM(8, 8))
    with pytest.raises(UnsupportedModelError, match="'1' \\(LSTM\\) is not supported"):
        prunable_layers(model)


def test_prune_units_refuses_float_indices():
    model = _net()
    before = _state(model)
    with pytest.raises(TypeError, match="not an integer"):
        prune_units(model, [("0", 1.7)])
    assert _unchanged(model, before)
