import pytest
import torch

from pruninglib.core import metrics
from pruninglib.core.graph import prunable_layers
from pruninglib.models import (MLP, CifarResNet, CifarVGG, LeNet3, PretrainedWeightsUnavailable, build_model,
                               resnet20, resnet56, vgg16, vgg16_transfer)


def test_lenet3_is_molchanov_2019():
    m = LeNet3()
    convs = [l for l in m.features if isinstance(l, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 16, (5, 5)), (16, 32, (5, 5))]
    lins = [l for l in m.classifier if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lins] == [(512, 120), (120, 84), (84, 10)]
    assert sum(p.num_units for p in prunable_layers(m)) == 252
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_vgg16_parameters_and_macs():
    m = vgg16()
    assert metrics.count_parameters(m) == 138_357_544
    macs = metrics.count_macs(m, (1, 3, 224, 224))
    assert abs(macs / 1e9 - 15.5) < 0.05, macs


def test_resnet_sizes_match_he_2016():
    assert abs(metrics.count_parameters(resnet56()) / 1e6 - 0.85) < 0.01
    assert abs(metrics.count_parameters(resnet20()) / 1e6 - 0.27) < 0.01
    assert abs(metrics.count_macs(resnet56(), (1, 3, 32, 32)) / 1e6 - 125.5) < 1.0
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)


def test_cifar_vgg_any_width_and_input():
    m = CifarVGG("vgg16", in_channels=1, width=0.125)
    assert m.conv_widths()[:2] == [8, 8]
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert CifarVGG([8, "M", 16], num_classes=3)(torch.zeros(1, 3, 50, 50)).shape == (1, 3)
    with pytest.raises(ValueError, match="vgg19"):
        CifarVGG("vgg17")


def test_vgg16_transfer_head_and_offline_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNINGLIB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="RANDOMLY initialised"):
        m = vgg16_transfer()
    assert not m.pretrained and m.backbone_status == "backbone not pretrained"
    lins = [l for l in m.classifier if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lins] == [(25088, 4096), (4096, 4096), (4096, 2)]
    assert all(not p.requires_grad for p in m.features.parameters())
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 2)
    with pytest.raises(PretrainedWeightsUnavailable, match="PRUNINGLIB_OFFLINE"):
        vgg16_transfer(pretrained="required")


def test_build_model_records_config_and_rejects_unknown():
    m = build_model("mlp", in_features=4, hidden=[3], num_classes=2)
    assert m.pl_config == {"name": "mlp", "kwargs": {"in_features": 4, "hidden": [3], "num_classes": 2}}
    with pytest.raises(ValueError, match="lenet3"):
        build_model("lenet5")
    with pytest.raises(ValueError, match="relu"):
        MLP(activation="swish")
