"""Bad dataset copies and settings are refused with a clear error that names the fix (issue 14, items 15-17, 19).

Each test here failed on main before the fix: an empty ``train/dog`` folder gave 20 photos all labelled cat;
an empty copy first on PRUNINGLIB_DATA hid a good one later on it; truncated Fashion-MNIST IDX files passed
``verify_dataset`` and failed later with ``shape '[60000, 28, 28]' is invalid``; ``PRUNINGLIB_DATA='::'``
gave ``IndexError``; ``download=True`` with ``PRUNINGLIB_OFFLINE=1`` said two contradicting things and left a
folder behind; with ``num_workers=2`` ``CatsVsDogs.bad_files`` stayed empty in the parent process.

The stand-ins are written in tmp_path in the real on-disk formats: IDX files with the real header layout
(magic ``00 00 08 ndim``, big-endian dimensions, then the bytes), JPEGs written by PIL.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from pruninglib import data as D
from pruninglib import data_check
from pruninglib.train import make_loader


# ---------------------------------------------------------------------------- stand-ins
def _jpeg(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 18), colour).save(path, "JPEG")
    return path


def _cats_vs_dogs(root: Path, n: int = 3, dogs: bool = True) -> Path:
    """``root/cats_vs_dogs/{train,test}/{cat,dog}/*.jpg``; with ``dogs=False`` train/dog is an empty folder."""
    for split in ("train", "test"):
        for k in range(n):
            _jpeg(root / "cats_vs_dogs" / split / "cat" / f"cat.{k}.jpg", (200, 40, 40))
            if dogs or split == "test":
                _jpeg(root / "cats_vs_dogs" / split / "dog" / f"dog.{k}.jpg", (40, 40, 200))
    (root / "cats_vs_dogs" / "train" / "dog").mkdir(parents=True, exist_ok=True)
    return root


def _idx(path: Path, arr: np.ndarray) -> None:
    """One IDX file (unsigned bytes): magic 0x00 0x00 0x08 ndim, big-endian dimensions, the data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _fashion(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """A small Fashion-MNIST copy: ``root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``."""
    raw = root / "FashionMNIST" / "raw"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return raw


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------- item 15
def test_empty_class_folder_is_refused_naming_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cats_vs_dogs(tmp_path, dogs=False)
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    before = _snapshot(tmp_path)
    with pytest.raises(D.DatasetCorruptError) as e:
        D.load_dataset("cats_vs_dogs", "train")
    msg = str(e.value)
    assert str(tmp_path / "cats_vs_dogs" / "train" / "dog") in msg
    assert "holds no dog images" in msg and "Put the dog photos in" in msg
    assert _snapshot(tmp_path) == before
    assert len(D.load_dataset("cats_vs_dogs", "test")) == 6  # the complete split still loads


def test_flat_layout_with_one_class_only_is_refused(tmp_path: Path) -> None:
    for k in range(4):
        _jpeg(tmp_path / "train" / f"cat.{k}.jpg", (200, 40, 40))
    with pytest.raises(D.DatasetCorruptError, match=r"(?s)holds no dog images.*dog\.N\.jpg"):
        D.CatsVsDogs(tmp_path / "train")


def test_empty_copy_first_on_the_path_does_not_hide_a_good_copy(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    empty, good = tmp_path / "empty", _cats_vs_dogs(tmp_path / "good")
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (empty / "cats_vs_dogs" / split / c).mkdir(parents=True)
    (empty / "cifar-10-batches-py").mkdir()
    files = [f for f, _ in torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list]
    for f in files:
        (good / "cifar-10-batches-py").mkdir(exist_ok=True)
        (good / "cifar-10-batches-py" / f).write_bytes(b"x")
    monkeypatch.setenv("PRUNINGLIB_DATA", os.pathsep.join([str(empty), str(good)]))
    assert D.find_dataset("cats_vs_dogs") == good and D.find_dataset("cifar10") == good
    assert len(D.load_dataset("cats_vs_dogs", "train")) == 6
    monkeypatch.setenv("PRUNINGLIB_DATA", str(empty))  # only the empty copy: not found, and the message says why
    with pytest.raises(D.DatasetNotFoundError, match=r"(?s)cats_vs_dogs.*no usable copy.*Get it with"):
        D.find_dataset("cats_vs_dogs")


# ---------------------------------------------------------------------------- item 16
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-784])  # one 28x28 image short


def _gzip_named_raw(path: Path) -> None:
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"\0" * 100)  # a .gz file saved under the raw name


def _cut_in_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:10])


@pytest.mark.parametrize("damage, what", [(_truncate, "truncated"), (_cut_in_header, "truncated"),
                                          (_gzip_named_raw, "not an IDX file")])
def test_damaged_idx_file_is_named_by_verify_and_by_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         damage, what: str) -> None:
    raw = _fashion(tmp_path)
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    assert len(D.load_dataset("fashion_mnist", "train")) == 20 and data_check.verify_dataset("fashion_mnist") == []
    bad = raw / "train-images-idx3-ubyte"
    damage(bad)
    before = _snapshot(tmp_path)
    problems = data_check.verify_dataset("fashion_mnist")
    assert len(problems) == 1 and str(bad) in problems[0] and what in problems[0]
    assert "delete it and re-download it" in problems[0] and "FashionMNIST(root, download=True)" in problems[0]
    with pytest.raises(D.DatasetCorruptError) as e:
        D.load_dataset("fashion_mnist", "train")
    assert str(bad) in str(e.value) and "delete it and re-download it" in str(e.value)
    assert data_check.main(["fashion_mnist"]) == 1
    assert _snapshot(tmp_path) == before  # neither verifying nor loading touched the files
    assert len(D.load_dataset("fashion_mnist", "test")) == 10  # the intact split still loads


def test_truncated_file_message_gives_the_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _fashion(tmp_path)
    _truncate(raw / "t10k-images-idx3-ubyte")
    msg = D.idx_file_problem(raw / "t10k-images-idx3-ubyte")
    assert msg is not None and "10x28x28" in msg and f"{16 + 10 * 784 - 784:,} bytes" in msg
    assert D.idx_file_problem(raw / "t10k-labels-idx1-ubyte") is None


def test_copy_manifest_checksums_are_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _fashion(tmp_path)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  raw/{p.name}" for p in sorted(raw.iterdir())]
    (raw.parent / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    assert data_check.verify_dataset("fashion_mnist") == []
    labels = raw / "train-labels-idx1-ubyte"
    b = bytearray(labels.read_bytes())
    b[-1] ^= 1  # same size, valid header: only the checksum can tell
    labels.write_bytes(bytes(b))
    problems = data_check.verify_dataset("fashion_mnist")
    assert len(problems) == 1 and "checksum mismatch" in problems[0] and str(labels) in problems[0]
    assert "re-download" in problems[0]


def test_gzip_only_copy_says_unpack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _fashion(tmp_path)
    import gzip
    f = raw / "train-labels-idx1-ubyte"
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(f.read_bytes()))
    f.unlink()
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    with pytest.raises(D.DatasetCorruptError, match=r"gunzip"):
        D.load_dataset("fashion_mnist", "train")
    assert (raw / "train-labels-idx1-ubyte.gz").exists() and not f.exists()


# ---------------------------------------------------------------------------- item 17
@pytest.mark.parametrize("value", ["::", ":", " : "])
def test_search_path_without_a_folder_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         value: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNINGLIB_DATA", value.replace(":", os.pathsep))
    monkeypatch.delenv("PRUNINGLIB_OFFLINE", raising=False)
    called = []
    monkeypatch.setattr(D.DATASETS["fashion_mnist"], "download", lambda root: called.append(root))
    with pytest.raises(ValueError, match=r"(?s)PRUNINGLIB_DATA.*names no folder.*unset it"):
        D.load_dataset("fashion_mnist")
    assert called == [] and list(tmp_path.iterdir()) == []


def test_empty_entries_of_the_search_path_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNINGLIB_DATA", os.pathsep.join(["", str(tmp_path), "", ""]))
    assert D.search_path() == [tmp_path]


def test_download_true_while_offline_says_one_thing_and_creates_nothing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "new" / "data"
    monkeypatch.setenv("PRUNINGLIB_DATA", str(target))
    monkeypatch.setenv("PRUNINGLIB_OFFLINE", "1")
    called = []

    def fake_download(root: Path) -> None:  # what torchvision does offline: make the folder, then fail
        called.append(root)
        (root / "FashionMNIST" / "raw").mkdir(parents=True)
        raise OSError("no network")

    monkeypatch.setattr(D.DATASETS["fashion_mnist"], "download", fake_download)
    with pytest.raises(D.DatasetNotFoundError) as e:
        D.load_dataset("fashion_mnist", download=True)
    msg = str(e.value)
    assert "download=True was not attempted" in msg and "unset PRUNINGLIB_OFFLINE" in msg
    assert "failed" not in msg and "set PRUNINGLIB_OFFLINE=1" not in msg
    assert called == [] and list(tmp_path.iterdir()) == []


def test_failed_download_removes_the_empty_folders_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "new" / "data"
    monkeypatch.setenv("PRUNINGLIB_DATA", str(target))
    monkeypatch.delenv("PRUNINGLIB_OFFLINE", raising=False)

    def fake_download(root: Path) -> None:
        (root / "FashionMNIST" / "raw").mkdir(parents=True)
        raise OSError("no network")

    monkeypatch.setattr(D.DATASETS["fashion_mnist"], "download", fake_download)
    with pytest.raises(D.DatasetNotFoundError, match=r"(?s)no network.*set PRUNINGLIB_OFFLINE=1"):
        D.load_dataset("fashion_mnist")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- item 19
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_bad_files_found_in_worker_processes_reach_the_parent(tmp_path: Path, context: str) -> None:
    folder = _cats_vs_dogs(tmp_path) / "cats_vs_dogs" / "train"
    good = (folder / "cat" / "cat.1.jpg").read_bytes()
    (folder / "cat" / "cat.1.jpg").write_bytes(good[: len(good) // 3])  # truncated
    (folder / "dog" / "dog.0.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")  # corrupt
    ds = D.CatsVsDogs(folder, D.image_transforms(16))
    loader = make_loader(ds, 2, num_workers=2)
    loader.multiprocessing_context = context
    n = sum(len(y) for _, y in loader)
    assert n == 6
    assert sorted(Path(f).name for f in ds.bad_files) == ["cat.1.jpg", "dog.0.jpg"]
