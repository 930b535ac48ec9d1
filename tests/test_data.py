import os

import numpy as np
import pytest
from PIL import Image

from pruninglib import data as D


def test_missing_dataset_offline_names_paths_and_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNINGLIB_DATA", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    monkeypatch.setenv("PRUNINGLIB_OFFLINE", "1")
    with pytest.raises(D.DatasetNotFoundError) as e:
        D.load_dataset("fashion_mnist")
    msg = str(e.value)
    assert str(tmp_path / "a") in msg and str(tmp_path / "b") in msg
    assert "FashionMNIST(root, download=True)" in msg and "PRUNINGLIB_OFFLINE" in msg
    with pytest.raises(ValueError, match="cats_vs_dogs"):
        D.find_dataset("imagenet")


def test_search_path_order_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNINGLIB_DATA", f"{tmp_path}{os.pathsep}{tmp_path}{os.pathsep}/x")
    assert D.search_path() == [tmp_path, D.Path("/x")]  # duplicates dropped
    monkeypatch.delenv("PRUNINGLIB_DATA")
    assert D.search_path()[0] == D.Path("data")


def _jpeg(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), color).save(path, "JPEG")


def test_cats_vs_dogs_both_layouts_and_corrupt_files(tmp_path, monkeypatch):
    root = tmp_path / "cats_vs_dogs"
    for i in range(3):
        _jpeg(root / "train" / "cat" / f"cat.{i}.jpg", (200, 0, 0))
        _jpeg(root / "train" / "dog" / f"dog.{i}.jpg", (0, 0, 200))
        _jpeg(root / "test" / f"cat.{i}.jpg", (200, 0, 0))  # flat Kaggle layout
        _jpeg(root / "test" / f"dog.{i}.jpg", (0, 0, 200))
    good = (root / "train" / "dog" / "dog.2.jpg").read_bytes()
    (root / "train" / "dog" / "dog.2.jpg").write_bytes(good[: len(good) // 2])  # truncated
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    tr = D.load_dataset("cats_vs_dogs", "train")
    te = D.load_dataset("cats_vs_dogs", "test")
    assert len(tr) == 6 and len(te) == 6
    assert sorted(D.targets_of(te).tolist()) == [0, 0, 0, 1, 1, 1]
    with pytest.warns(UserWarning, match="dog.2.jpg"):
        img, label = tr[5]  # the truncated one is skipped, the next readable one returned
    assert img.size == (20, 16)
    assert tr.bad_files and tr.bad_files[0].endswith("dog.2.jpg")


def test_subset_per_class_is_balanced_and_seeded():
    ds = D.synthetic_images(80, num_classes=4)
    s1, s2 = D.subset_per_class(ds, 5, seed=1), D.subset_per_class(ds, 5, seed=1)
    assert s1.indices == s2.indices
    assert np.bincount(D.targets_of(s1)).tolist() == [5, 5, 5, 5]
    assert D.subset_per_class(ds, 5, seed=2).indices != s1.indices


@pytest.mark.skipif(not any(D.DATASETS["fashion_mnist"].present(p) for p in D.search_path()),
                    reason="real Fashion-MNIST not on the search path")
def test_real_fashion_mnist_offline():
    ds = D.load_dataset("fashion_mnist", "test")
    assert len(ds) == 10_000 and np.bincount(D.targets_of(ds)).tolist() == [1000] * 10


def test_manifest_verification_catches_changes(tmp_path):
    from pruninglib.data_check import verify_manifest
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"hello")
    import hashlib
    man = tmp_path / "m.sha256"
    man.write_text(f"{hashlib.sha256(b'hello').hexdigest()}  a/x.jpg\n{'0' * 64}  a/y.jpg\n")
    assert verify_manifest(tmp_path, man) == [f"missing: {tmp_path / 'a' / 'y.jpg'}"]
    (tmp_path / "a" / "x.jpg").write_bytes(b"hellO")
    assert "checksum mismatch" in verify_manifest(tmp_path, man)[0]


@pytest.mark.skipif(not any((p / "cats_vs_dogs").is_dir() for p in D.search_path()),
                    reason="cats_vs_dogs not on the search path")
def test_offline_cats_vs_dogs_matches_committed_manifest():
    from pruninglib.data_check import verify_dataset
    assert verify_dataset("cats_vs_dogs") == []


def test_failed_download_still_lists_searched_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path / "nowhere"))
    monkeypatch.delenv("PRUNINGLIB_OFFLINE", raising=False)

    def boom(root):
        raise OSError("no network")

    monkeypatch.setattr(D.DATASETS["cifar10"], "download", boom)
    with pytest.raises(D.DatasetNotFoundError, match=r"(?s)nowhere.*no network.*PRUNINGLIB_OFFLINE"):
        D.load_dataset("cifar10")
