"""Cats vs Dogs data: both on-disk layouts, unreadable photos skipped by name, the offline copy.

Tiny fake folders with a few small JPEGs written by PIL (no real data needed), plus one
check of the real offline copy when it is on the search path.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pruninglib import data as D
from pruninglib.train import make_loader


def _jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(colour))
    arr = np.clip(np.array(colour)[None, None] + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(arr.astype(np.uint8)).save(path, quality=90)
    return path


CAT, DOG = (200, 60, 60), (60, 60, 200)


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    root = tmp_path / "cats_vs_dogs"
    for split, n in (("train", 3), ("test", 2)):
        for k in range(n):
            _jpeg(root / split / "cat" / f"c{k}.jpg", CAT)
            _jpeg(root / split / "dog" / f"d{k}.jpeg", DOG)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return tmp_path


@pytest.fixture
def kaggle_flat(tmp_path: Path) -> Path:
    root = tmp_path / "cats_vs_dogs"
    for split in ("train", "test"):
        for k in range(2):
            _jpeg(root / split / f"cat.{k}.jpg", CAT)
            _jpeg(root / split / f"dog.{k + 10}.jpg", DOG)
    _jpeg(root / "train" / "bird.1.jpg", (0, 200, 0))  # not a cat/dog name: ignored
    Image.new("RGB", (20, 20), DOG).save(root / "train" / "Dog.99.PNG")  # case-insensitive, PNG too
    return tmp_path


def test_imagefolder_layout_through_load_dataset(imagefolder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNINGLIB_DATA", str(imagefolder))
    monkeypatch.setenv("PRUNINGLIB_OFFLINE", "1")
    tr = D.load_dataset("cats_vs_dogs", "train", D.image_transforms(32))
    te = D.load_dataset("cats_vs_dogs", "test", D.image_transforms(32))
    assert (len(tr), len(te)) == (6, 4)
    assert list(D.targets_of(tr)) == [0, 0, 0, 1, 1, 1]
    x, y = tr[0]
    assert x.shape == (3, 32, 32) and y == 0
    # the red cat and the blue dog survive the ImageNet normalisation: red > blue channel for cats
    xd, yd = tr[5]
    assert yd == 1 and x[0].mean() > x[2].mean() and xd[2].mean() > xd[0].mean()


def test_flat_kaggle_layout(kaggle_flat: Path) -> None:
    ds = D.CatsVsDogs(kaggle_flat / "cats_vs_dogs" / "train", D.image_transforms(24))
    names = sorted(p.name for p, _ in ds.samples)
    assert names == ["Dog.99.PNG", "cat.0.jpg", "cat.1.jpg", "dog.10.jpg", "dog.11.jpg"]
    labels = {p.name: c for p, c in ds.samples}
    assert labels["cat.0.jpg"] == 0 and labels["dog.11.jpg"] == 1 and labels["Dog.99.PNG"] == 1
    batch = next(iter(make_loader(ds, 8)))
    assert batch[0].shape == (5, 3, 24, 24) and sorted(batch[1].tolist()) == [0, 0, 1, 1, 1]


def test_corrupt_and_truncated_jpegs_are_named_and_skipped(imagefolder: Path) -> None:
    folder = imagefolder / "cats_vs_dogs" / "train"
    good = (folder / "cat" / "c0.jpg").read_bytes()
    (folder / "cat" / "c1.jpg").write_bytes(good[: len(good) // 3])  # truncated
    (folder / "dog" / "d0.jpeg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all")  # corrupt
    ds = D.CatsVsDogs(folder, D.image_transforms(16))
    assert len(ds) == 6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, y = ds[1]  # c1 is truncated: the next readable image (c2, a cat) comes back instead
        msgs = [str(w.message) for w in caught]
    assert x.shape == (3, 16, 16) and y == 0
    assert any("c1.jpg" in m for m in msgs), msgs
    # a whole pass through a DataLoader does not crash, and reports the corrupt dog by name
    with pytest.warns(UserWarning, match="d0.jpeg"):
        xs = torch.cat([b[0] for b in make_loader(ds, 4)])
    assert xs.shape == (6, 3, 16, 16)
    assert sorted(Path(f).name for f in ds.bad_files) == ["c1.jpg", "d0.jpeg"]
    # scan() finds both up front (already known: no new warnings) and to_tensor_dataset works
    assert sorted(Path(f).name for f in ds.scan()) == ["c1.jpg", "d0.jpeg"]
    t = D.to_tensor_dataset(ds)
    assert len(t) == 6 and torch.isfinite(t.tensors[0]).all()


def test_scan_finds_corrupt_files_up_front(kaggle_flat: Path) -> None:
    folder = kaggle_flat / "cats_vs_dogs" / "test"
    (folder / "cat.0.jpg").write_bytes(b"garbage")
    ds = D.CatsVsDogs(folder)
    with pytest.warns(UserWarning, match=r"cat\.0\.jpg"):
        bad = ds.scan()
    assert [Path(b).name for b in bad] == ["cat.0.jpg"]
    img, label = ds[0]  # raw PIL image when no transform is given; the bad file is skipped
    with Image.open(folder / "cat.1.jpg") as nxt:  # ... and the next readable one comes instead
        assert isinstance(img, Image.Image) and label == 0 and np.array_equal(np.asarray(img),
                                                                               np.asarray(nxt.convert("RGB")))


def test_empty_folder_says_what_layout_is_expected(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(D.DatasetNotFoundError, match=r"cat\.N\.jpg"):
        D.CatsVsDogs(tmp_path / "train")


def test_missing_dataset_offline_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    monkeypatch.setenv("PRUNINGLIB_OFFLINE", "1")
    with pytest.raises(D.DatasetNotFoundError, match="oxford_pets"):
        D.load_dataset("cats_vs_dogs", "train")


_HAVE_REAL = any((p / "cats_vs_dogs" / "train").is_dir() for p in D.search_path())


@pytest.mark.skipif(not _HAVE_REAL, reason="offline cats_vs_dogs copy not on PRUNINGLIB_DATA")
def test_offline_copy_has_the_published_split_sizes() -> None:
    """Gildenblat's blog: 1000 + 1000 training photos, 400 + 400 test photos."""
    tr = D.load_dataset("cats_vs_dogs", "train")
    te = D.load_dataset("cats_vs_dogs", "test")
    assert np.bincount(D.targets_of(tr)).tolist() == [1000, 1000]
    assert np.bincount(D.targets_of(te)).tolist() == [400, 400]
    x, _ = D.load_dataset("cats_vs_dogs", "test", D.image_transforms(64))[0]
    assert x.shape == (3, 64, 64)
