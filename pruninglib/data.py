"""Datasets: found along a search path, downloaded only when missing and allowed.

Search path: ``PRUNINGLIB_DATA`` (``os.pathsep``-separated folders; default ``./data`` and the
repository's ``data/``). A dataset is looked for in every folder in turn; when it is found
nowhere and ``PRUNINGLIB_OFFLINE`` is unset, torchvision downloads it into the first folder.
Offline, a missing dataset raises :class:`DatasetNotFoundError`, which names every folder
searched and how to get the data.

Registered datasets (``DATASETS``):

==================  ===========================================  =================================
name                on disk (below a search-path folder)          download
==================  ===========================================  =================================
``fashion_mnist``   ``FashionMNIST/raw/*-ubyte``                  torchvision ``FashionMNIST``
``mnist``           ``MNIST/raw/*-ubyte``                         torchvision ``MNIST``
``cifar10``         ``cifar-10-batches-py/``                      torchvision ``CIFAR10``
``cats_vs_dogs``    ``cats_vs_dogs/{train,test}/{cat,dog}/*.jpg``  torchvision ``OxfordIIITPet``
                    or flat Kaggle ``cats_vs_dogs/train/cat.1.jpg``  (binary-category target)
``synthetic``       generated in memory (unit tests)              --
==================  ===========================================  =================================
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision import transforms as T

__all__ = ["search_path", "find_dataset", "load_dataset", "DatasetNotFoundError", "DATASETS",
           "CatsVsDogs", "subset_per_class", "synthetic_images", "targets_of", "image_transforms",
           "to_tensor_dataset", "DATASET_STATS", "load_tensors", "batches"]

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is on none of the search-path folders and may not be downloaded."""


def search_path() -> list[Path]:
    """The folders datasets are looked for in, in order (from ``PRUNINGLIB_DATA``)."""
    env = os.environ.get("PRUNINGLIB_DATA")
    if env:
        parts = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    else:
        parts = [Path("data"), REPO_ROOT / "data"]
    seen, out = set(), []
    for p in parts:
        key = str(p.resolve())
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _offline() -> bool:
    return os.environ.get("PRUNINGLIB_OFFLINE", "") not in ("", "0", "false", "False")


@dataclass
class _Spec:
    present: Callable[[Path], bool]
    load: Callable[[Path, str, Any], Dataset]
    download: Callable[[Path], None] | None
    how: str


def _raw_present(folder: str) -> Callable[[Path], bool]:
    def present(root: Path) -> bool:
        raw = root / folder / "raw"
        return raw.is_dir() and any(raw.glob("train-images-idx3-ubyte*")) and any(
            raw.glob("t10k-labels-idx1-ubyte*"))
    return present


def _tv(cls: type) -> Callable[[Path, str, Any], Dataset]:
    def load(root: Path, split: str, transform: Any) -> Dataset:
        return cls(str(root), train=(split == "train"), transform=transform, download=False)
    return load


def _tv_download(cls: type) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    return download


# ---------------------------------------------------------------------------- cats vs dogs
_FLAT = re.compile(r"^(cat|dog)\.\d+\.(jpe?g|png)$", re.I)
_IMG = {".jpg", ".jpeg", ".png"}


class CatsVsDogs(Dataset):
    """Kaggle Dogs-vs-Cats photos; class 0 = cat, 1 = dog.

    Reads the ImageFolder layout ``<split>/{cat,dog}/*.jpg`` and the flat Kaggle layout
    ``<split>/cat.123.jpg``. A corrupt or truncated image is reported once by file name
    (a warning) and skipped: the next readable image is returned in its place, and the
    file is listed in ``self.bad_files``. :meth:`scan` checks every file up front.

    Args:
        folder: the split folder (``.../cats_vs_dogs/train``).
        transform: applied to the PIL image.
    """

    classes = ["cat", "dog"]

    def __init__(self, folder: str | os.PathLike, transform: Any = None) -> None:
        self.folder = Path(folder)
        self.transform = transform
        self.samples: list[tuple[Path, int]] = []
        for c, name in enumerate(self.classes):
            sub = self.folder / name
            if sub.is_dir():
                self.samples += [(p, c) for p in sorted(sub.iterdir()) if p.suffix.lower() in _IMG]
        flat = [p for p in sorted(self.folder.iterdir()) if p.is_file() and _FLAT.match(p.name)] \
            if self.folder.is_dir() else []
        self.samples += [(p, self.classes.index(p.name.split(".")[0].lower())) for p in flat]
        if not self.samples:
            raise DatasetNotFoundError(f"no cat/dog images in {self.folder} (expected {self.folder}/cat/*.jpg "
                                       f"and {self.folder}/dog/*.jpg, or flat cat.N.jpg / dog.N.jpg)")
        self.targets = [c for _, c in self.samples]
        self.bad_files: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def _open(self, path: Path) -> Image.Image:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")

    def __getitem__(self, idx: int) -> tuple[Any, int]:
        for k in range(len(self.samples)):
            path, label = self.samples[(idx + k) % len(self.samples)]
            if str(path) in self.bad_files:
                continue
            try:
                img = self._open(path)
            except (OSError, SyntaxError, ValueError) as e:
                self.bad_files.append(str(path))
                warnings.warn(f"skipping unreadable image {path}: {e}", stacklevel=2)
                continue
            return (self.transform(img) if self.transform else img), label
        raise RuntimeError(f"no readable image in {self.folder}")

    def scan(self) -> list[str]:
        """Open every file fully; return (and remember) the unreadable ones."""
        for path, _ in self.samples:
            try:
                self._open(path)
            except (OSError, SyntaxError, ValueError) as e:
                if str(path) not in self.bad_files:
                    self.bad_files.append(str(path))
                    warnings.warn(f"skipping unreadable image {path}: {e}", stacklevel=2)
        return list(self.bad_files)


def _cvd_present(root: Path) -> bool:
    return (root / "cats_vs_dogs" / "train").is_dir() and (root / "cats_vs_dogs" / "test").is_dir()


def _cvd_load(root: Path, split: str, transform: Any) -> Dataset:
    folder = root / "cats_vs_dogs" / ("train" if split == "train" else "test")
    return CatsVsDogs(folder, transform)


def _pets_present(root: Path) -> bool:
    return (root / "oxford-iiit-pet" / "images").is_dir()


def _pets_load(root: Path, split: str, transform: Any) -> Dataset:
    ds = torchvision.datasets.OxfordIIITPet(str(root), split="trainval" if split == "train" else "test",
                                            target_types="binary-category", transform=transform)
    ds.targets = [int(t) for t in ds._bin_labels] if hasattr(ds, "_bin_labels") else None
    return ds


def _pets_download(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("trainval", "test"):
        torchvision.datasets.OxfordIIITPet(str(root), split=split, target_types="binary-category",
                                           download=True)


DATASETS: dict[str, _Spec] = {
    "fashion_mnist": _Spec(_raw_present("FashionMNIST"), _tv(torchvision.datasets.FashionMNIST),
                           _tv_download(torchvision.datasets.FashionMNIST),
                           "torchvision.datasets.FashionMNIST(root, download=True), or copy the four "
                           "IDX files into <root>/FashionMNIST/raw/"),
    "mnist": _Spec(_raw_present("MNIST"), _tv(torchvision.datasets.MNIST),
                   _tv_download(torchvision.datasets.MNIST),
                   "torchvision.datasets.MNIST(root, download=True), or copy the IDX files into "
                   "<root>/MNIST/raw/"),
    "cifar10": _Spec(lambda r: (r / "cifar-10-batches-py").is_dir(), _tv(torchvision.datasets.CIFAR10),
                     _tv_download(torchvision.datasets.CIFAR10),
                     "torchvision.datasets.CIFAR10(root, download=True) (170 MB)"),
    "cats_vs_dogs": _Spec(_cvd_present, _cvd_load, None,
                          "the Kaggle 'Dogs vs. Cats' photos as <root>/cats_vs_dogs/{train,test}/{cat,dog}/*.jpg "
                          "(or flat cat.N.jpg / dog.N.jpg); with internet, load_dataset('oxford_pets') "
                          "downloads Oxford-IIIT Pet with the binary cat/dog target instead"),
    "oxford_pets": _Spec(_pets_present, _pets_load, _pets_download,
                         "torchvision.datasets.OxfordIIITPet(root, target_types='binary-category', download=True)"),
}


def find_dataset(name: str) -> Path:
    """The first search-path folder that holds ``name``.

    Raises:
        DatasetNotFoundError: naming every folder searched and how to obtain the data.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS) + ['synthetic']}")
    spec = DATASETS[name]
    paths = search_path()
    for root in paths:
        if spec.present(root):
            return root
    searched = "\n  ".join(str(p.resolve()) for p in paths)
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Searched:\n  {searched}\n"
        f"Get it with {spec.how}, or point PRUNINGLIB_DATA at the folder that holds it"
        + (" (PRUNINGLIB_OFFLINE is set, so nothing was downloaded)." if _offline() else "."))


def load_dataset(name: str, split: str = "train", transform: Any = None,
                 download: bool | None = None) -> Dataset:
    """Load a registered dataset split, downloading it only when missing and allowed.

    Args:
        name: a key of :data:`DATASETS`, or ``"synthetic"``.
        split: ``"train"`` or ``"test"``.
        transform: torchvision transform applied to each image.
        download: ``None`` = download when missing unless ``PRUNINGLIB_OFFLINE`` is set.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "synthetic":
        return synthetic_images(train=(split == "train"))
    try:
        root = find_dataset(name)
    except DatasetNotFoundError as missing:
        spec = DATASETS[name]
        allowed = (not _offline()) if download is None else download
        if not allowed or spec.download is None:
            raise
        root = search_path()[0]
        try:
            spec.download(root)
        except Exception as e:  # network errors, read-only folders
            raise DatasetNotFoundError(f"{missing}\nDownloading it into {root.resolve()} failed "
                                       f"({type(e).__name__}: {e}); set PRUNINGLIB_OFFLINE=1 to skip "
                                       "the download attempt.") from e
    return DATASETS[name].load(root, split, transform)


def targets_of(dataset: Dataset) -> np.ndarray:
    """Class labels of a dataset (or Subset) as a NumPy array, without loading images."""
    if isinstance(dataset, Subset):
        return targets_of(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    t = getattr(dataset, "targets", None)
    if t is None:
        return np.array([dataset[i][1] for i in range(len(dataset))])
    return t.numpy() if torch.is_tensor(t) else np.asarray(t)


def subset_per_class(dataset: Dataset, n_per_class: int, seed: int = 0) -> Subset:
    """``n_per_class`` examples of every class, drawn with a fixed seed (quick modes)."""
    y = targets_of(dataset)
    rng = np.random.default_rng(seed)
    idx: list[int] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        idx += rng.choice(members, size=min(n_per_class, len(members)), replace=False).tolist()
    return Subset(dataset, sorted(idx))


def to_tensor_dataset(dataset: Dataset, batch_size: int = 256) -> TensorDataset:
    """Materialise a (small) dataset into memory once, so epochs skip decoding."""
    xs, ys = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    for x, y in loader:
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def synthetic_images(n: int = 256, num_classes: int = 4, channels: int = 1, size: int = 28,
                     train: bool = True, seed: int = 0) -> TensorDataset:
    """A tiny learnable image set for unit tests: each class is a noisy bright square at its
    own position."""
    g = torch.Generator().manual_seed(seed + (0 if train else 1))
    y = torch.arange(n) % num_classes
    x = 0.3 * torch.randn(n, channels, size, size, generator=g)
    s = size // 2
    for c in range(num_classes):
        r, q = divmod(c, 2)
        x[y == c, :, (r % 2) * s:(r % 2) * s + s, q * s:q * s + s] += 1.0
    return TensorDataset(x, y)


def image_transforms(size: int, train: bool = False, normalize: Sequence[Sequence[float]] | None = None,
                     grayscale: bool = False) -> T.Compose:
    """Resize/crop (+ flip when training), tensor conversion and normalisation.

    Args:
        size: output side in pixels.
        train: random resized crop and horizontal flip (augmentation) instead of resize + centre crop.
        normalize: ``(mean, std)``; default ImageNet statistics for RGB, none for grayscale.
    """
    ops: list[Any] = []
    if train:
        ops += [T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip()]
    else:
        ops += [T.Resize(size), T.CenterCrop(size)]
    ops.append(T.ToTensor())
    if normalize is None and not grayscale:
        normalize = (IMAGENET_MEAN, IMAGENET_STD)
    if normalize is not None:
        ops.append(T.Normalize(*normalize))
    return T.Compose(ops)


#: Per-channel (mean, std) used to normalise the inputs.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def load_tensors(name: str = "fashion_mnist", split: str = "train", n_per_class: int | None = None,
                 seed: int = 0, normalize: bool = True) -> TensorDataset:
    """A dataset as an in-memory ``TensorDataset``: pixels in [0, 1], then normalised with
    :data:`DATASET_STATS` (``normalize=True``); ``n_per_class`` examples of every class drawn
    with ``seed``, or all of them.

    Works for any :func:`pruninglib.data.load_dataset` name; MNIST-style datasets are read
    straight from their tensors (fast), the others through ``ToTensor``.

    Raises:
        ValueError: ``normalize=True`` for a dataset without known statistics.
    """
    if normalize and name not in DATASET_STATS:
        raise ValueError(f"no normalisation statistics for {name!r} (known: {sorted(DATASET_STATS)}); "
                         "pass normalize=False")
    ds = load_dataset(name, split, transform=T.ToTensor())
    idx = subset_per_class(ds, n_per_class, seed).indices if n_per_class is not None else None
    data = getattr(ds, "data", None)
    if torch.is_tensor(data) and data.dim() == 3:  # MNIST, Fashion-MNIST
        x = data.float().div(255).unsqueeze(1)
        y = torch.as_tensor(ds.targets).long()
        if idx is not None:
            sel = torch.as_tensor(idx)
            x, y = x[sel], y[sel]
        out = TensorDataset(x, y)
    else:
        out = to_tensor_dataset(Subset(ds, list(idx)) if idx is not None else ds)
    if normalize:
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in DATASET_STATS[name])
        out = TensorDataset((out.tensors[0] - mean) / std, out.tensors[1])
    return out


def batches(dataset: Dataset, batch_size: int, device: torch.device | str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole dataset as a list of ``(x, y)`` batches on ``device``, in order (no shuffling).

    What criteria, oracles and Hessians read: the same batches every time they are called.
    Used in lessons 01, 02, 03 and 06.

    Raises:
        ValueError: for a non-positive ``batch_size`` or an empty dataset.
    """
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: there is nothing to make batches of")
    from torch.utils.data import DataLoader

    return [(x.to(device), y.to(device)) if device is not None else (x, y)
            for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
