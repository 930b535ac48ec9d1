"""Surgery on the Cats-vs-Dogs VGG16 (lesson 04) is exact, layer by layer and after a Taylor step.

The pruned network must compute exactly what the gated network computes with the removed
filters' gates at zero (max abs diff <= 1e-5), for filters removed in *every* conv layer,
including ``features.28``, the last conv, whose channels feed Linear(25088, 4096) through
the 7x7 adaptive pool (49 inputs per channel). Small inputs (32-48 px) keep it fast.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from pruninglib.core import gates
from pruninglib import set_seed
from pruninglib.checkpoint import load_pruned, save_pruned
from pruninglib.core.graph import prunable_layers
from pruninglib.models import build_model
from pruninglib.core.surgery import prune_channels
from pruninglib.lessons.transfer import conv_counts, remove_lowest_filters, rank_filters, total_conv_filters

VGG16_CONVS = ["features.0", "features.2", "features.5", "features.7", "features.10", "features.12",
               "features.14", "features.17", "features.19", "features.21", "features.24",
               "features.26", "features.28"]


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    set_seed(0)
    return build_model("vgg16_transfer", pretrained=False).eval()


def _random_plan(model: nn.Module, frac: float, seed: int) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(seed)
    plan = {}
    for name, n in conv_counts(model).items():
        k = max(1, int(frac * n))
        plan[name] = torch.randperm(n, generator=g)[:k].sort().values.tolist()
    return plan


def test_vgg16_has_4224_prunable_filters_in_13_convs(vgg: nn.Module) -> None:
    counts = conv_counts(vgg)
    assert list(counts) == VGG16_CONVS
    assert total_conv_filters(vgg) == 4224
    last = prunable_layers(vgg, ("conv",))[-1]
    assert last.name == "features.28" and last.consumer_name == "classifier.1"
    assert last.spatial_factor() == 49


@pytest.mark.parametrize("px", [32, 48])
def test_surgery_in_every_conv_equals_zeroed_gates(vgg: nn.Module, px: int) -> None:
    plan = _random_plan(vgg, 0.3, seed=px)
    gated = copy.deepcopy(vgg)
    gates.insert_gates(gated, kinds=("conv",))
    gates.zero_units(gated, [(n, i) for n, idx in plan.items() for i in idx])
    pruned = prune_channels(copy.deepcopy(vgg), plan)

    x = torch.randn(3, 3, px, px, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feat_g, feat_p = gated.features(x), pruned.features(x)
        out_g, out_p = gated(x), pruned(x)
    keep_last = [i for i in range(512) if i not in set(plan["features.28"])]
    # features: the pruned map is the gated map without the (all-zero) removed channels
    assert feat_p.shape[1] == len(keep_last)
    assert (feat_g[:, plan["features.28"]] == 0).all()
    assert (feat_g[:, keep_last] - feat_p).abs().max().item() <= 1e-5
    # logits: exact too, and not trivially small
    assert (out_g - out_p).abs().max().item() <= 1e-5
    assert out_p.abs().max().item() > 1e-3
    # shapes: every conv lost its filters, the next conv its inputs, the first Linear 49 columns each
    for name, n in conv_counts(pruned).items():
        assert n == conv_counts(vgg)[name] - len(plan[name])
    convs = [m for m in pruned.features if isinstance(m, nn.Conv2d)]
    assert all(b.in_channels == a.out_channels for a, b in zip(convs, convs[1:]))
    assert pruned.classifier[1].in_features == 49 * len(keep_last)


def test_only_the_last_conv_pruned_shrinks_the_first_linear_exactly(vgg: nn.Module) -> None:
    plan = {"features.28": list(range(0, 512, 2)) + [1, 3]}  # 258 filters go, 254 stay
    gated = copy.deepcopy(vgg)
    gates.insert_gates(gated, kinds=("conv",))
    gates.zero_units(gated, [("features.28", i) for i in plan["features.28"]])
    pruned = prune_channels(copy.deepcopy(vgg), plan)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (gated(x) - pruned(x)).abs().max().item() <= 1e-5
    assert pruned.classifier[1].weight.shape == (4096, 254 * 49)
    # the kept block of columns is the original block, in order
    keep = [i for i in range(512) if i not in set(plan["features.28"])]
    cols = torch.tensor([c * 49 + j for c in keep for j in range(49)])
    assert torch.equal(pruned.classifier[1].weight, vgg.classifier[1].weight[:, cols])


def test_a_taylor_step_prunes_512_and_stays_exact(vgg: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 0, 1]))]
    model = copy.deepcopy(vgg)
    scores = rank_filters(model, batches)
    gated = copy.deepcopy(vgg)
    gates.insert_gates(gated, kinds=("conv",))
    plan = remove_lowest_filters(model, scores, 512)
    gates.zero_units(gated, [(n, i) for n, idx in plan.items() for i in idx])
    assert sum(map(len, plan.values())) == 512
    assert total_conv_filters(model) == 4224 - 512
    assert min(conv_counts(model).values()) >= 1
    x = torch.randn(2, 3, 40, 40, generator=g)
    with torch.no_grad():
        assert (gated(x) - model(x)).abs().max().item() <= 1e-5


def test_pruning_a_whole_layer_is_refused_by_name(vgg: nn.Module) -> None:
    model = copy.deepcopy(vgg)
    with pytest.raises(ValueError, match="features.28"):
        prune_channels(model, {"features.28": list(range(512))})
    prune_channels(model, {"features.28": list(range(511))})  # one may stay
    assert model.classifier[1].in_features == 49
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_pruned_vgg16_saves_and_reloads_with_the_same_predictions(vgg: nn.Module, tmp_path) -> None:
    model = copy.deepcopy(vgg)
    plan = _random_plan(model, 0.9, seed=7)  # small file: the first Linear keeps 52*49 inputs
    prune_channels(model, plan)
    path = save_pruned(model, tmp_path / "vgg16_pruned.pt", extra={"removed": sum(map(len, plan.values()))})
    again = load_pruned(path).eval()
    assert conv_counts(again) == conv_counts(model)
    assert again.pl_extra["removed"] == sum(map(len, plan.values()))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(again(x), model.eval()(x))
