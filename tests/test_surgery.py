"""Surgery is exact: pruned model == gated model with those gates zeroed (every family)."""
import pytest
import torch
import torch.nn as nn

from pruninglib.core import gates as G
from pruninglib.core import metrics, surgery
from pruninglib.core.graph import UnsupportedModelError, prunable_layers
from pruninglib.models import MLP, CifarVGG, LeNet3, resnet20, vgg16_transfer


def _randomize_bn(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


CASES = {
    "mlp": (lambda: MLP(20, (12, 8), 3), (5, 20)),
    "lenet3": (LeNet3, (4, 1, 28, 28)),
    "cifar_vgg_bn": (lambda: CifarVGG("vgg11", width=0.125), (3, 3, 32, 32)),
    "cifar_vgg_nobn": (lambda: CifarVGG([8, "M", 16, 16], batch_norm=False), (3, 3, 16, 16)),
    "resnet20": (lambda: resnet20(widths=(8, 16, 32)), (3, 3, 32, 32)),
    "vgg16_transfer": (lambda: vgg16_transfer(pretrained=False), (2, 3, 32, 32)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_surgery_equals_zeroed_gates(name):
    build, shape = CASES[name]
    model = build().eval()
    _randomize_bn(model)
    x = torch.randn(shape)
    G.insert_gates(model)
    # remove a third of every layer (at least one, never all)
    plan = {pl.name: list(range(0, pl.num_units, 3)) for pl in prunable_layers(model)}
    G.zero_units(model, [(n, i) for n, idx in plan.items() for i in idx])
    with torch.no_grad():
        expected = model(x)
    G.remove_gates(model)
    before = metrics.count_parameters(model)
    surgery.prune_channels(model, plan)
    with torch.no_grad():
        got = model(x)
    assert (got - expected).abs().max().item() <= 1e-5
    assert metrics.count_parameters(model) < before
    for pl in prunable_layers(model):
        assert pl.num_units == len([i for i in range(pl.num_units + len(plan[pl.name])) if i % 3])


def test_surgery_keeps_gates_in_step():
    model = LeNet3().eval()
    G.insert_gates(model)
    surgery.prune_channels(model, {"features.0": [0, 1], "classifier.1": [5]})
    gates = G.get_gates(model)
    assert gates["features.0"].weight.numel() == 14 and gates["classifier.1"].weight.numel() == 119
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_pruning_every_channel_names_the_layer():
    model = LeNet3()
    with pytest.raises(ValueError, match=r"all 16 channels of layer 'features.0'"):
        surgery.prune_channels(model, {"features.0": list(range(16))})
    with pytest.raises(ValueError, match="cannot remove indices"):
        surgery.prune_channels(model, {"features.0": [16]})
    with pytest.raises(ValueError, match="not prunable layers"):
        surgery.prune_channels(model, {"classifier.5": [0]})


def test_unsupported_models_and_layers_are_refused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.a(x) + self.b(x)

    with pytest.raises(UnsupportedModelError, match="prunable_groups"):
        prunable_layers(Branchy())
    with pytest.raises(UnsupportedModelError, match="groups=4"):
        prunable_layers(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1)))


def test_resnet_prunes_only_inner_convs():
    m = resnet20()
    names = [pl.name for pl in prunable_layers(m)]
    assert len(names) == 9 and all(n.endswith(".conv1") and n.startswith("layer") for n in names)
