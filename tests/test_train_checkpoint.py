import pytest
import torch

from pruninglib import checkpoint
from pruninglib.core import surgery
from pruninglib.data import synthetic_images
from pruninglib.models import build_model
from pruninglib.train import evaluate, fit, make_loader
from pruninglib.utils import set_seed


def _train(seed):
    set_seed(seed)
    m = build_model("lenet3")
    ds = synthetic_images(64)
    hist = fit(m, make_loader(ds, 16, shuffle=True, seed=seed), epochs=2, lr=0.05, progress=False,
               val_loader=make_loader(synthetic_images(32, train=False), 32))
    return m, hist


def test_same_seed_bit_identical_and_learns():
    m1, h1 = _train(0)
    m2, h2 = _train(0)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert h1 == h2 and len(h1) == 2
    assert h1[-1]["train_loss"] < h1[0]["train_loss"]
    m3, _ = _train(1)
    assert not torch.equal(m1.features[0].weight, m3.features[0].weight)


def test_pruned_checkpoint_roundtrip(tmp_path):
    m = build_model("cifar_vgg", cfg=[8, "M", 16, "M", 16], in_channels=1, num_classes=4).eval()
    surgery.prune_channels(m, {"features.0": [0, 3], "features.4": [1, 2, 3, 5]})
    path = checkpoint.save_pruned(m, tmp_path / "pruned.pt", extra={"acc": 0.5})
    assert [p.name for p in tmp_path.iterdir()] == ["pruned.pt"]  # one file: its checksum is in its header
    again = checkpoint.load_pruned(path).eval()
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(again(x), m(x))
    assert again.pl_extra == {"acc": 0.5}
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind


def test_corrupt_checkpoint_is_detected(tmp_path):
    path = checkpoint.save_checkpoint({"w": torch.ones(100)}, tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.ChecksumError, match="corrupt"):
        checkpoint.load_checkpoint(path)


def test_save_pruned_needs_config(tmp_path):
    from pruninglib.models import LeNet3
    with pytest.raises(ValueError, match="build_model"):
        checkpoint.save_pruned(LeNet3(), tmp_path / "x.pt")


def test_evaluate_counts():
    m = build_model("mlp", in_features=784, hidden=[8], num_classes=4)
    r = evaluate(m, make_loader(synthetic_images(20), 8))
    assert 0 <= r["accuracy"] <= 1 and r["loss"] > 0
