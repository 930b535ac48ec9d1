"""pruninglib.groups: Torch-Pruning's dependency groups in pruninglib's unit naming (lesson 08).

Group counts are derived from the architectures (comments), not read off the library; surgery is
checked against the network with the same units gated to zero; on chain models our surgery and
Torch-Pruning's must give the same network, tensor for tensor.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from pruninglib import groups as G
from pruninglib.checkpoint import load_pruned, save_pruned
from pruninglib.core.graph import UnsupportedModelError, prunable_layers
from pruninglib.core.surgery import prune_channels
from pruninglib.criteria.magnitude import weight_l1
from pruninglib.criteria.taylor import taylor_fo_gate
from pruninglib.lessons import any_architecture as A
from pruninglib.models import build_model

torch.set_num_threads(1)


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorms with non-trivial statistics, so a zeroed channel differs from a removed one unless
    the surgery is right (fresh BNs are identities and would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


# ----------------------------------------------------------------- group discovery


def test_resnet18_has_twelve_groups():
    # 8 basic blocks: each block's conv1 is its own group (conv1 -> bn1 -> conv2's inputs): 8 groups.
    # Each of the 4 stages has one residual stream, shared by the adds of its 2 blocks: 4 groups
    # (stage 1: the stem conv1 + both conv2; stages 2-4: the downsample conv + both conv2). fc is the output.
    m = torchvision.models.resnet18(num_classes=10)
    mg = G.find_groups(m, torch.zeros(1, 3, 64, 64))
    assert len(mg) == 12
    assert mg.ignored == ["fc"]
    coupled = [g for g in mg if g.coupled]
    assert len(coupled) == 4 and all(len(g.producers) == 3 for g in coupled)
    assert set(coupled[0].producers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert set(mg[0].producers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}  # the stem's group first
    stage2 = next(g for g in coupled if "layer2.0.downsample.0" in g.producers)
    assert set(stage2.producers) == {"layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2"}
    assert stage2.norms["layer2.0.downsample.0"] == "layer2.0.downsample.1"
    assert {"layer2.1.conv1", "layer3.0.conv1", "layer3.0.downsample.0"} <= set(stage2.consumers)
    inner = [g for g in mg if not g.coupled]
    assert sorted(g.root for g in inner) == sorted(f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2))


def test_mobilenet_v2_has_twenty_five_groups():
    # torchvision's MobileNetV2 (t, c, n, s): (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1)
    # (6,160,3,2) (6,320,1,1).
    # - stem conv + the depthwise conv of block 1 (no expansion): 1 group;
    # - each of the 16 expanding blocks: expand conv + its depthwise conv: 16 groups;
    # - each of the 7 stages' output (its projection convs, tied by the adds inside the stage): 7 groups;
    # - the last 1x1 conv (320 -> 1280): 1 group.  Total 25; the classifier is the output.
    m = torchvision.models.mobilenet_v2(num_classes=10)
    mg = G.find_groups(m, torch.zeros(1, 3, 64, 64))
    assert len(mg) == 25
    assert mg.ignored == ["classifier.1"]
    assert set(mg[0].producers) == {"features.0.0", "features.1.conv.0.0"}
    expand = [g for g in mg if any(p.endswith("conv.0.0") for p in g.producers) and g.index > 0]
    assert len(expand) == 16 and all(len(g.producers) == 2 for g in expand)
    streams = [g for g in mg if all(p.endswith(("conv.2", "conv.1")) and "conv.1.0" not in p for p in g.producers)]
    assert sorted(len(g.producers) for g in streams) == [1, 1, 2, 3, 3, 3, 4]  # n per stage: 1,2,3,4,3,3,1


def test_resnet50_has_thirty_six_groups():
    # 16 bottlenecks with two inner groups each (conv1, conv2): 32; 4 stage streams (every stage, the
    # first included, opens with a downsample conv because a bottleneck widens 4x): 4; and the stem conv,
    # which feeds layer1.0's conv1 and downsample but no add, is a group of its own: 1.  Total 37.
    mg = G.find_groups(torchvision.models.resnet50(num_classes=10), torch.zeros(1, 3, 64, 64))
    assert len(mg) == 37
    assert set(mg[0].producers) == {"conv1"}


def test_tiny_networks_have_the_couplings_of_section_1():
    res = G.find_groups(A.TinyResidual(), torch.zeros(1, 1, 8, 8))
    assert len(res) == 3 and set(res[0].producers) == {"stem", "block1.conv2", "block2.conv2"}
    dw = G.find_groups(A.TinyDepthwise(), torch.zeros(1, 1, 8, 8))
    assert len(dw) == 2 and set(dw[0].producers) == {"conv", "dw"}
    cat = G.find_groups(A.TinyConcat(), torch.zeros(1, 1, 8, 8))
    b = next(g for g in cat if g.root == "b")
    assert b.inputs(0) == [("fuse", 4)] and b.inputs(5) == [("fuse", 9)]  # offset by branch a's 4 channels
    flat = G.find_groups(A.TinyFlatten(side=8), torch.zeros(1, 1, 8, 8))
    conv = next(g for g in flat if g.root == "conv")
    assert conv.inputs(2) == [("fc1", i) for i in range(32, 48)]  # 4x4 positions per channel


def test_group_of_finds_the_coupled_units():
    mg = G.find_groups(torchvision.models.resnet18(num_classes=10), torch.zeros(1, 3, 64, 64))
    g, c = mg.group_of("layer1.1.conv2", 7)
    assert ("conv1", 7) in g.units(c) and ("layer1.0.conv2", 7) in g.units(c)
    with pytest.raises(KeyError, match="not a prunable producer"):
        mg.group_of("fc", 0)


def test_an_ignored_layer_that_does_not_exist_is_named():
    with pytest.raises(ValueError, match="'nope' is not a module"):
        G.find_groups(A.TinyResidual(), torch.zeros(1, 1, 8, 8), ignored_layers=["nope"])


def test_ignoring_a_member_drops_its_whole_group():
    mg = G.find_groups(A.TinyResidual(), torch.zeros(1, 1, 8, 8), ignored_layers=["block1.conv2"])
    assert len(mg) == 2 and all("stem" not in g.producers for g in mg)


# ----------------------------------------------------------------- scores


def test_group_scores_are_the_reduction_of_member_scores():
    mg = G.find_groups(_randomise_bn(torchvision.models.resnet18(num_classes=10)), torch.zeros(1, 3, 32, 32))
    scores = G.unit_scores(mg, "l1")
    for reduce, fn in (("sum", sum), ("mean", lambda v: sum(v) / len(v)), ("max", max)):
        gs = G.score_groups(mg, scores, reduce)
        assert set(gs) == set(range(len(mg)))
        for g in (mg[0], mg[5]):
            for c in (0, 3, g.num_channels - 1):
                members = [float(scores[n][i]) for n, i in g.units(c)]
                assert float(gs[g.index][c]) == pytest.approx(fn(members), rel=1e-6)


def test_bn_scale_skips_producers_without_batchnorm():
    mg = G.find_groups(A.TinyConcat(), torch.zeros(1, 1, 8, 8))
    assert G.unit_scores(mg, "bn_scale") == {}
    assert G.score_groups(mg, {}) == {}


def test_taylor_fo_on_a_chain_equals_the_lesson_02_gate_criterion():
    torch.manual_seed(0)
    model = build_model("cifar_vgg", cfg=[8, "M", 16, "M"], in_channels=1, num_classes=10, batch_norm=True).eval()
    _randomise_bn(model)
    batches = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))) for _ in range(3)]
    mg = G.find_groups(model, batches[0][0][:1])
    ours = G.unit_scores(mg, "taylor_fo", batches)
    ref = taylor_fo_gate(model, batches)
    assert set(ours) == set(ref) - {n for n in ref if n not in mg.producers()}
    for name in ours:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-10)


def test_unknown_criterion_and_reduction_are_refused():
    mg = G.find_groups(A.TinyResidual(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="criterion must be one of"):
        G.unit_scores(mg, "l3")
    with pytest.raises(ValueError, match="needs data"):
        G.unit_scores(mg, "taylor_fo")
    with pytest.raises(ValueError, match="reduce must be one of"):
        G.score_groups(mg, G.unit_scores(mg, "l1"), "median")


# ----------------------------------------------------------------- surgery


@pytest.mark.parametrize("ctor, side", [
    (lambda: torchvision.models.resnet18(num_classes=10), 32),
    (lambda: torchvision.models.mobilenet_v2(num_classes=10), 32),
    (lambda: A.TinyResidual(in_channels=3), 8),
    (lambda: A.TinyDepthwise(in_channels=3), 8),
    (lambda: A.TinyConcat(in_channels=3), 8),
    (lambda: A.TinyFlatten(in_channels=3, side=8), 8),
])
def test_group_surgery_equals_the_network_with_those_channels_zeroed(ctor, side):
    torch.manual_seed(0)
    model = _randomise_bn(ctor())
    x = torch.randn(3, 3, side, side)
    mg = G.find_groups(model, x[:1])
    gs = G.score_groups(mg, G.unit_scores(mg, "random", seed=1))
    plan = G.lowest_channels(gs, {g: 0.4 for g in gs})
    assert plan
    with torch.no_grad(), G.zero_channels(mg, plan):
        ref = model(x)
    with torch.no_grad():
        assert (model(x) - ref).abs().max() > 1e-4  # zeroing changed something: the check can fail
    pruned = copy.deepcopy(model)
    after = G.prune_groups(G.find_groups(pruned, x[:1]), plan)
    with torch.no_grad():
        out = pruned(x)
    assert (out - ref).abs().max() <= 1e-5
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert [g.num_channels for g in after] == [g.num_channels - len(plan.get(g.index, [])) for g in mg]


def test_a_plan_that_empties_a_group_changes_nothing():
    model = A.TinyResidual()
    mg = G.find_groups(model, torch.zeros(1, 1, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="disconnect"):
        G.prune_groups(mg, {1: [0], 0: list(range(6))})
    with pytest.raises(ValueError, match="has 6 channels"):
        G.prune_groups(mg, {0: [6]})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _chain_models():
    return [
        ("lenet3", dict(), torch.randn(2, 1, 28, 28)),
        ("cifar_vgg", dict(cfg=[8, "M", 16, 16, "M"], in_channels=3, num_classes=10, batch_norm=True),
         torch.randn(2, 3, 16, 16)),
    ]


@pytest.mark.parametrize("name, kwargs, x", _chain_models(), ids=[c[0] for c in _chain_models()])
def test_on_a_chain_our_surgery_and_torch_pruning_give_the_same_network(name, kwargs, x):
    torch.manual_seed(0)
    ours = _randomise_bn(build_model(name, **kwargs))
    theirs = copy.deepcopy(ours)
    scores = weight_l1(ours)
    plan = {n: torch.argsort(s)[: len(s) // 2].tolist() for n, s in scores.items() if n in
            {pl.name for pl in prunable_layers(ours)}}
    prune_channels(ours, plan)
    mg = G.find_groups(theirs, x[:1])
    assert sorted(g.root for g in mg) == sorted(plan)  # one group per chain layer
    G.prune_groups(mg, {g.index: plan[g.root] for g in mg})
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))


# ----------------------------------------------------------------- checkpoint


def test_a_pruned_resnet18_round_trips_through_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = _randomise_bn(build_model("tv_resnet18", width=0.25, side=28))
    x = torch.randn(2, 1, 28, 28)
    mg = G.find_groups(model, x[:1])
    gs = G.score_groups(mg, G.unit_scores(mg, "l1"))
    G.prune_groups(mg, G.lowest_channels(gs, {g: 0.5 for g in gs}))
    widths = {n: m.weight.shape for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert widths["conv1"][0] == 8 and widths["fc"][1] == 64  # 64 * 0.25 halved; 512 * 0.25 halved
    save_pruned(model, tmp_path / "r18.pt")
    back = load_pruned(tmp_path / "r18.pt").eval()
    assert {n: m.weight.shape for n, m in back.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))} == widths
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=1e-6)


def test_the_unsupported_model_error_points_to_lesson_08():
    with pytest.raises(UnsupportedModelError, match="lesson 08.*08_any_architecture"):
        prunable_layers(torchvision.models.resnet18())
    with pytest.raises(UnsupportedModelError, match="pruninglib.groups"):
        prunable_layers(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1)))


def test_a_pruned_mobilenet_v2_round_trips_through_the_checkpoint(tmp_path):
    """Pruned depthwise convs change ``groups`` with their widths: the checkpoint stores it."""
    torch.manual_seed(0)
    model = _randomise_bn(build_model("tv_mobilenet_v2", width_mult=0.35, stem_stride=2))
    x = torch.randn(2, 1, 28, 28)
    mg = G.find_groups(model, x[:1])
    gs = G.score_groups(mg, G.unit_scores(mg, "l1"))
    G.prune_groups(mg, G.lowest_channels(gs, {g: 0.5 for g in gs}))
    dw = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)
    save_pruned(model, tmp_path / "mnv2.pt")
    back = load_pruned(tmp_path / "mnv2.pt").eval()
    assert [m.groups for m in back.modules() if isinstance(m, nn.Conv2d)] == \
        [m.groups for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        torch.testing.assert_close(back(x), model.eval()(x), rtol=0, atol=1e-5)


def test_the_output_layer_is_found_by_identity_not_by_a_reused_id():
    """SqueezeNet's output is pooled from its last conv, so no conv produces it. ``_output_layers`` once
    matched the ``id()`` of the output against ids of freed intermediate conv outputs, which the output's
    storage can reuse, and then left out a random inner group (24 groups instead of 25, in about one call in
    three once Torch-Pruning's tracing had run in between)."""
    counts = []
    for seed in range(30):
        torch.manual_seed(seed)
        sq = torchvision.models.squeezenet1_1(num_classes=10).eval()
        x = torch.randn(1, 3, 64, 64)
        assert G._output_layers(sq, x) == [], f"seed {seed}"
        mg = G.find_groups(sq, x)
        counts.append((len(mg), tuple(mg.ignored)))
    assert set(counts) == {(25, ("classifier.1",))}
