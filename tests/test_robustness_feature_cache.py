"""Lesson 04's cached features know which photos they came from, a cached run continues exactly like a computed
one, and a test set smaller than one batch works (issue 14, item 18). On main the cache key held only counts and
sizes (a second copy of the data got the first copy's features), computing the features moved the global RNG
(so a cached run gave other numbers), and predict() on no images failed inside torch.cat."""
from pathlib import Path

import pytest
import torch
from PIL import Image

from pruninglib import data as D
from pruninglib.lessons.transfer import cache_features, predict


def _copy(root: Path, n: int, shade: int) -> Path:
    for split in ("train", "test"):
        for label, colour in (("cat", (shade, 0, 0)), ("dog", (0, shade, 0))):
            d = root / "cats_vs_dogs" / split / label
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (24, 24), colour).save(d / f"{label}.{i}.jpg")
    return root


def _test_set(root: Path, monkeypatch) -> D.CatsVsDogs:
    monkeypatch.setenv("PRUNINGLIB_DATA", str(root))
    return D.load_dataset("cats_vs_dogs", "test", D.image_transforms(32))


def test_the_fingerprint_tells_two_copies_of_the_photos_apart(tmp_path, monkeypatch):
    a = _test_set(_copy(tmp_path / "a", 2, 200), monkeypatch)
    b = _test_set(_copy(tmp_path / "b", 2, 100), monkeypatch)
    assert D.fingerprint(a) == D.fingerprint(_test_set(tmp_path / "a", monkeypatch))  # same files, same id
    assert len(a) == len(b)  # same counts and file names, other photos: another id
    assert D.fingerprint(a) != D.fingerprint(b)
    assert D.fingerprint(D.subset_per_class(a, 1)) != D.fingerprint(a)  # a subset is other data


def test_computing_features_leaves_the_global_random_state_alone(tmp_path, monkeypatch):
    test = D.to_tensor_dataset(_test_set(_copy(tmp_path, 2, 200), monkeypatch))
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    model.avgpool = torch.nn.AdaptiveAvgPool2d(1)
    model.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    state = torch.get_rng_state()
    cache_features(model, test, batch_size=64)  # 4 photos: fewer than one batch
    assert torch.equal(torch.get_rng_state(), state)


def test_predict_refuses_no_images_and_takes_fewer_than_a_batch():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    assert predict(model, torch.randn(3, 3, 4, 4), batch_size=64).shape == (3,)
    with pytest.raises(ValueError, match="at least one"):
        predict(model, torch.randn(0, 3, 4, 4))
    with pytest.raises(ValueError, match="empty"):
        D.to_tensor_dataset(torch.utils.data.TensorDataset(torch.zeros(0, 3), torch.zeros(0)))
