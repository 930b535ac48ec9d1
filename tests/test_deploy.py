"""pruninglib.deploy: every step exact (<= 1e-5 relative to the output scale) on LeNet3, CIFAR VGG
with BN, ResNet-20 and torchvision VGG16; channel rounding keeps multiples and follows the criterion."""
import copy

import pytest
import torch
import torch.nn as nn

from bench.common import randomize_batchnorm, vgg16_narrow
from pruninglib import deploy
from pruninglib import models as M
from pruninglib.core.surgery import channel_counts, prune_channels

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5


def _families():
    torch.manual_seed(0)
    return {
        "lenet3": (M.LeNet3(), torch.randn(3, 1, 28, 28)),
        "cifar_vgg_bn": (randomize_batchnorm(M.CifarVGG("vgg11", in_channels=3, num_classes=10)), torch.randn(3, 3, 32, 32)),
        "resnet20": (randomize_batchnorm(M.resnet20()), torch.randn(3, 3, 32, 32)),
        "torchvision_vgg16": (vgg16_narrow(), torch.randn(2, 3, 32, 32)),
    }


def _close(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        scale = max(1.0, a.eval()(x).abs().max().item())
    assert deploy.max_abs_diff(a, b, x) <= TOL * scale


def _pruned(model: nn.Module) -> nn.Module:
    """Remove a third of every prunable layer's channels (lowest index first), then round to 8."""
    m = copy.deepcopy(model).eval()
    plan = {k: list(range(max(1, v // 3))) for k, v in channel_counts(m).items() if v > 2}
    return prune_channels(m, plan)


@pytest.fixture(scope="module")
def families():
    return _families()


@pytest.mark.parametrize("name", ["lenet3", "cifar_vgg_bn", "resnet20", "torchvision_vgg16"])
def test_fold_batchnorm_exact_and_removes_every_bn(families, name):
    model, x = families[name]
    for m in (model, _pruned(model)):
        folded = deploy.fold_batchnorm(m)
        assert deploy.count_batchnorms(folded) == 0
        _close(m, folded, x)
    if name in ("cifar_vgg_bn", "resnet20"):
        assert deploy.count_batchnorms(model) > 0  # the input still has them (a copy was folded)


@pytest.mark.parametrize("name", ["lenet3", "cifar_vgg_bn", "resnet20", "torchvision_vgg16"])
def test_for_inference_exact(families, name):
    model, x = families[name]
    m = _pruned(model)
    dep = deploy.for_inference(m, channels_last=True)
    _close(m, dep, x)
    conv = next(mod for mod in dep.modules() if isinstance(mod, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["lenet3", "resnet20"])
def test_onnx_runtime_exact(families, name, tmp_path):
    pytest.importorskip("onnxruntime")
    model, x = families[name]
    m = deploy.fold_batchnorm(_pruned(model))
    path = deploy.export_onnx(m, x, tmp_path / "m.onnx")
    assert path.exists() and not list(tmp_path.glob(".*tmp*"))
    ort = deploy.OnnxModule(deploy.onnx_session(path))
    _close(m, ort, x)
    _close(m, ort, x[:1])  # the batch dimension is dynamic


def test_compile_exact_on_lenet():
    m = _pruned(M.LeNet3())
    x = torch.randn(2, 1, 28, 28)
    try:
        dep = deploy.for_inference(m, compile=True, example=x)
    except RuntimeError as exc:  # no C++ compiler on this machine
        pytest.skip(str(exc))
    _close(m, dep, x)


def test_round_count():
    assert deploy.round_count(61, 64) == 64
    assert deploy.round_count(59, 64) == 56
    assert deploy.round_count(60, 64) == 64  # ties up
    assert deploy.round_count(3, 64) == 8  # never below one block
    assert deploy.round_count(10, 10) == 10  # a width that is not a multiple stays
    assert deploy.round_count(13, 64, 16) == 16
    with pytest.raises(ValueError, match="multiple"):
        deploy.round_count(3, 8, 0)


def test_round_channels_counts_form():
    assert deploy.round_channels({"a": 61, "b": 30}, 8, widths={"a": 64, "b": 32}) == {"a": 64, "b": 32}
    assert deploy.round_channels({"a": 61}, 16, widths={"a": 64}) == {"a": 64}


def test_round_channels_plan_follows_the_criterion():
    scores = {"a": torch.arange(16.0), "b": torch.tensor([5.0, 1, 2, 9, 3, 4, 8, 7, 6, 0, 11, 10, 13, 12, 15, 14])}
    widths = {"a": 16, "b": 16}
    # remove 5 of 16 -> keep 11 -> rounds to 8: three more, the lowest-scored kept ones
    out = deploy.round_channels({"a": [0, 1, 2, 3, 4]}, 8, widths=widths, scores=scores)
    assert out["a"] == [0, 1, 2, 3, 4, 5, 6, 7]
    # remove 3 -> keep 13 -> rounds to 16: put back all
    out = deploy.round_channels({"b": [9, 1, 2]}, 8, widths=widths, scores=scores)
    assert out["b"] == []
    # remove 10 -> keep 6 -> rounds to 8: put back the two highest-scored of the removed
    removed = [9, 1, 2, 4, 5, 0, 8, 7, 6, 3]  # scores 0,1,2,3,4,5,6,7,8,9
    out = deploy.round_channels({"b": removed}, 8, widths=widths, scores=scores)
    assert out["b"] == sorted(set(removed) - {3, 6})  # the two highest-scored: idx 3 (score 9), idx 6 (8)
    kept = 16 - len(out["b"])
    assert kept % 8 == 0


def test_round_channels_plan_keeps_multiples_on_a_real_model():
    m = M.CifarVGG("vgg11", in_channels=3, num_classes=10).eval()
    from pruninglib.criteria import get_criterion

    scores = get_criterion("weight_l1")(m, None, kinds=("conv",))
    plan = {k: torch.argsort(s)[: len(s) * 3 // 10].tolist() for k, s in scores.items()}
    rounded = deploy.rounded_plan_for(m, plan, scores, 8)
    pruned = prune_channels(copy.deepcopy(m), rounded)
    assert all(v % 8 == 0 for v in channel_counts(pruned).values())
    for k, s in scores.items():  # the kept channels all score at least as high as the removed
        keep = sorted(set(range(len(s))) - set(rounded[k]))
        if rounded[k] and keep:
            assert s[keep].min() >= s[rounded[k]].max()


def test_round_channels_plan_needs_widths_and_scores():
    with pytest.raises(ValueError, match="widths= .* scores="):
        deploy.round_channels({"a": [0, 1]}, 8)
    with pytest.raises(ValueError, match="have 3 entries"):
        deploy.round_channels({"a": [0]}, 8, widths={"a": 4}, scores={"a": torch.ones(3)})


def test_export_onnx_leaves_nothing_when_the_check_fails(tmp_path, monkeypatch):
    """A model whose runtime outputs disagree with eager is refused and no file is left behind."""
    pytest.importorskip("onnxruntime")
    target = tmp_path / "m.onnx"
    m, x = M.LeNet3().eval(), torch.randn(2, 1, 28, 28)
    deploy.export_onnx(m, x, target)
    before = target.read_bytes()
    monkeypatch.setattr(deploy.OnnxModule, "forward", lambda self, x: torch.zeros(x.shape[0], 10))
    with pytest.raises(RuntimeError, match="differ from the eager"):
        deploy.export_onnx(m, x, target)
    assert target.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
