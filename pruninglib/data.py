"""Datasets: found along a search path, downloaded only when missing and allowed.

Search path: ``PRUNINGLIB_DATA`` (``os.pathsep``-separated folders; default ``./data`` and the
repository's ``data/``). A dataset is looked for in every folder in turn; when it is found
nowhere and ``PRUNINGLIB_OFFLINE`` is unset, torchvision downloads it into the first folder.
Offline, a missing dataset raises :class:`DatasetNotFoundError`, which names every folder
searched and how to get the data; ``download=True`` is refused while ``PRUNINGLIB_OFFLINE`` is set.
A copy counts as found only when it holds data (the files below; an empty folder does not hide a
copy later on the path). A copy that is found but damaged (a truncated IDX file, a class folder
without photos) raises :class:`DatasetCorruptError`, naming the file and the fix.

Registered datasets (``DATASETS``):

==================  ===========================================  =================================
name                on disk (below a search-path folder)          download
==================  ===========================================  =================================
``fashion_mnist``   ``FashionMNIST/raw/*-ubyte``                  torchvision ``FashionMNIST``
``mnist``           ``MNIST/raw/*-ubyte``                         torchvision ``MNIST``
``cifar10``         ``cifar-10-batches-py/{data,test}_batch*``     torchvision ``CIFAR10``
``cats_vs_dogs``    ``cats_vs_dogs/{train,test}/{cat,dog}/*.jpg``  torchvision ``OxfordIIITPet``
                    or flat Kaggle ``cats_vs_dogs/train/cat.1.jpg``  (binary-category target)
``synthetic``       generated in memory (unit tests)              --
==================  ===========================================  =================================
"""
from __future__ import annotations

import math
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

__all__ = ["search_path", "find_dataset", "load_dataset", "DatasetNotFoundError", "DatasetCorruptError",
           "DATASETS", "IDX_DATASETS", "idx_file_problem", "idx_problems", "CatsVsDogs", "subset_per_class", "synthetic_images", "targets_of", "image_transforms",
           "to_tensor_dataset", "fingerprint", "DATASET_STATS", "load_tensors", "batches",
           "STANDIN_MARKER", "is_standin"]

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is on none of the search-path folders and may not be downloaded.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """


class DatasetCorruptError(RuntimeError):
    """A dataset copy is on the search path but unusable: a truncated or damaged file, or a class
    folder without images. The message names the file or folder and the fix.

    No lesson calls it directly (its tests do).
    """


def search_path() -> list[Path]:
    """The folders datasets are looked for in, in order (from ``PRUNINGLIB_DATA``).

    Empty entries (``a::b``) are ignored; unset or empty, the defaults ``./data`` and the
    repository's ``data/`` are used. Used in every lesson (through :func:`load_dataset`).

    Raises:
        ValueError: ``PRUNINGLIB_DATA`` is set but names no folder (``'::'``).
    """
    env = os.environ.get("PRUNINGLIB_DATA")
    if env:
        parts = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
        if not parts:
            raise ValueError(f"PRUNINGLIB_DATA={env!r} names no folder: set it to one or more folders "
                             f"separated by {os.pathsep!r} (e.g. PRUNINGLIB_DATA=/data{os.pathsep}./data), "
                             "or unset it to use the defaults (./data and the repository's data/)")
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
    folder: str = ""  # the dataset's folder below a search-path folder


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


# ---------------------------------------------------------------------------- IDX (MNIST-style)
#: MNIST-style datasets: name -> torchvision class (raw IDX files in ``<root>/<class name>/raw``).
IDX_DATASETS: dict[str, type] = {"fashion_mnist": torchvision.datasets.FashionMNIST,
                                 "mnist": torchvision.datasets.MNIST}
_IDX_ITEMSIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # IDX type code -> bytes per value


def _idx_names(cls: type) -> list[str]:
    """The four raw IDX file names of a torchvision MNIST-style class (its resources without ``.gz``)."""
    return [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]


def idx_file_problem(path: Path) -> str | None:
    """What is wrong with one raw IDX file, or ``None`` when its size is what its header announces.

    Reads the header only (magic ``00 00 <type> <ndim>``, then ``ndim`` big-endian sizes).
    Used by :func:`load_dataset` and :mod:`pruninglib.data_check`.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
        ndim = magic[3] if len(magic) == 4 else 0
        if magic[:2] != b"\0\0" or magic[2] not in _IDX_ITEMSIZE or not 1 <= ndim <= 3:
            return f"{path} is not an IDX file (it starts with {magic.hex() or 'nothing'})"
        raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        return f"{path} is truncated: {size:,} bytes, shorter than its own header"
    dims = [int.from_bytes(raw_dims[4 * i:4 * i + 4], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(dims) * _IDX_ITEMSIZE[magic[2]]
    if size == expected:
        return None
    state = "truncated" if size < expected else "too long"
    return (f"{path} is {state}: {size:,} bytes, but its header announces {'x'.join(map(str, dims))} "
            f"values ({expected:,} bytes)")


def idx_problems(name: str, root: Path, split: str | None = None) -> list[str]:
    """Problems of the raw IDX files of MNIST-style dataset ``name`` below search-path folder
    ``root`` (both splits, or ``split`` only): missing, compressed only, truncated or not IDX.

    Each message names the file and the fix. Reads headers only. Used by :func:`load_dataset`
    and :mod:`pruninglib.data_check`.
    """
    cls = IDX_DATASETS[name]
    raw, how = root / cls.__name__ / "raw", DATASETS[name].how
    prefix = {"train": "train", "test": "t10k", None: ""}[split]
    problems = []
    for fname in (n for n in _idx_names(cls) if n.startswith(prefix)):
        f = raw / fname
        if f.is_file():
            problem = idx_file_problem(f)
            if problem:
                problems.append(f"{problem}; delete it and re-download it: {how}")
        elif (raw / f"{fname}.gz").is_file():
            problems.append(f"{f} is missing but {fname}.gz is there: unpack it (gunzip -k {f}.gz)")
        else:
            problems.append(f"missing: {f}; re-download it: {how}")
    return problems


def _idx_present(cls: type) -> Callable[[Path], bool]:
    def present(root: Path) -> bool:
        raw = root / cls.__name__ / "raw"
        return all(_nonempty(raw / n) or _nonempty(raw / f"{n}.gz") for n in _idx_names(cls))
    return present


def _idx_load(name: str) -> Callable[[Path, str, Any], Dataset]:
    def load(root: Path, split: str, transform: Any) -> Dataset:
        problems = idx_problems(name, root, split)
        if problems:
            raise DatasetCorruptError(f"the {name} copy in {root.resolve()} is damaged:\n  "
                                      + "\n  ".join(problems))
        return _tv(IDX_DATASETS[name])(root, split, transform)
    return load


def _cifar_present(cls: type = torchvision.datasets.CIFAR10) -> Callable[[Path], bool]:
    def present(root: Path) -> bool:
        return all(_nonempty(root / cls.base_folder / f) for f, _ in cls.train_list + cls.test_list)
    return present


#: A file of this name in a dataset's folder marks test stand-in data (``tests/standins/``): tiny copies
#: in the real on-disk format, whose MD5s cannot match the ones torchvision checks. Used by the smoke
#: runs (issue 18, ``python -m pruninglib.run --smoke``); a real copy never has it.
STANDIN_MARKER = "PRUNINGLIB-STAND-IN"


def _standin_class(cls: type) -> type:
    """``cls`` (a torchvision CIFAR class) without its MD5 checks: the files are read as usual."""
    class StandIn(cls):  # type: ignore[misc, valid-type]
        def _check_integrity(self) -> bool:
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f))
                       for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            import pickle

            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
    StandIn.__name__ = f"StandIn{cls.__name__}"
    return StandIn


def is_standin(name: str) -> bool:
    """Whether the copy of dataset ``name`` found on the search path is a test stand-in (its folder
    holds :data:`STANDIN_MARKER`). Used by :func:`pruninglib.utils.setup`'s banner and the smoke runs."""
    spec = DATASETS[name]
    try:
        return bool(spec.folder) and (find_dataset(name) / spec.folder / STANDIN_MARKER).exists()
    except DatasetNotFoundError:
        return False


def _tv(cls: type) -> Callable[[Path, str, Any], Dataset]:
    def load(root: Path, split: str, transform: Any) -> Dataset:
        use = cls
        if hasattr(cls, "base_folder") and (root / cls.base_folder / STANDIN_MARKER).exists():
            use = _standin_class(cls)
        return use(str(root), train=(split == "train"), transform=transform, download=False)
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
    file is listed in ``self.bad_files``, also when it was met in a DataLoader worker process
    (the record lives in shared memory). :meth:`scan` checks every file up front.
    Used in lesson 04 (through :func:`load_dataset`).

    Args:
        folder: the split folder (``.../cats_vs_dogs/train``).
        transform: applied to the PIL image.

    Raises:
        DatasetNotFoundError: the folder holds no cat/dog images at all.
        DatasetCorruptError: one class has no images (an empty ``dog/`` folder), naming its folder.
    """

    classes = ["cat", "dog"]

    def __init__(self, folder: str | os.PathLike, transform: Any = None) -> None:
        self.folder = Path(folder)
        self.transform = transform
        self.samples = _cvd_samples(self.folder, self.classes)
        if not self.samples:
            raise DatasetNotFoundError(f"no cat/dog images in {self.folder} (expected {self.folder}/cat/*.jpg "
                                       f"and {self.folder}/dog/*.jpg, or flat cat.N.jpg / dog.N.jpg)")
        self.targets = [c for _, c in self.samples]
        counts = np.bincount(self.targets, minlength=len(self.classes))
        for c, name in enumerate(self.classes):
            if counts[c] == 0:
                found = ", ".join(f"{counts[k]} {n}" for k, n in enumerate(self.classes) if counts[k])
                raise DatasetCorruptError(
                    f"{self.folder / name} holds no {name} images (found {found} in {self.folder}), so every "
                    f"photo would be labelled {self.classes[1 - c]}. Put the {name} photos in "
                    f"{self.folder / name}/*.jpg (or flat {name}.N.jpg in {self.folder}), or point "
                    "PRUNINGLIB_DATA at a complete copy")
        self._bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    @property
    def bad_files(self) -> list[str]:
        """The unreadable files met so far (in sample order), in this process or any DataLoader
        worker."""
        return [str(p) for (p, _), bad in zip(self.samples, self._bad.tolist()) if bad]

    def __len__(self) -> int:
        return len(self.samples)

    def _open(self, path: Path) -> Image.Image:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")

    def _try_open(self, j: int) -> Image.Image | None:
        """Sample ``j``'s image, or ``None`` (recorded and warned about once) when it is unreadable."""
        if self._bad[j]:
            return None
        path = self.samples[j][0]
        try:
            return self._open(path)
        except (OSError, SyntaxError, ValueError) as e:
            self._bad[j] = True
            warnings.warn(f"skipping unreadable image {path}: {e}", stacklevel=3)
            return None

    def __getitem__(self, idx: int) -> tuple[Any, int]:
        n = len(self.samples)
        for k in range(n):
            j = (idx + k) % n
            img = self._try_open(j)
            if img is not None:
                return (self.transform(img) if self.transform else img), self.samples[j][1]
        raise RuntimeError(f"no readable image in {self.folder}")

    def scan(self) -> list[str]:
        """Open every file fully; return (and remember) the unreadable ones."""
        for j in range(len(self.samples)):
            self._try_open(j)
        return self.bad_files


def _cvd_samples(folder: Path, classes: Sequence[str] = ("cat", "dog")) -> list[tuple[Path, int]]:
    """``(image, class index)`` for the images in ``folder/<class>/`` and the flat ``folder/cat.N.jpg``."""
    samples: list[tuple[Path, int]] = []
    for c, name in enumerate(classes):
        sub = folder / name
        if sub.is_dir():
            samples += [(p, c) for p in sorted(sub.iterdir()) if p.suffix.lower() in _IMG]
    flat = [p for p in sorted(folder.iterdir()) if p.is_file() and _FLAT.match(p.name)] if folder.is_dir() else []
    return samples + [(p, list(classes).index(p.name.split(".")[0].lower())) for p in flat]


def _cvd_present(root: Path) -> bool:
    return all(_cvd_samples(root / "cats_vs_dogs" / split) for split in ("train", "test"))


def _cvd_load(root: Path, split: str, transform: Any) -> Dataset:
    folder = root / "cats_vs_dogs" / ("train" if split == "train" else "test")
    return CatsVsDogs(folder, transform)


def _pets_present(root: Path) -> bool:
    pets = root / "oxford-iiit-pet"
    return (pets / "annotations").is_dir() and any((pets / "images").glob("*.jpg"))


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
    "fashion_mnist": _Spec(_idx_present(torchvision.datasets.FashionMNIST), _idx_load("fashion_mnist"),
                           _tv_download(torchvision.datasets.FashionMNIST),
                           "torchvision.datasets.FashionMNIST(root, download=True), or copy the four "
                           "IDX files into <root>/FashionMNIST/raw/", "FashionMNIST"),
    "mnist": _Spec(_idx_present(torchvision.datasets.MNIST), _idx_load("mnist"),
                   _tv_download(torchvision.datasets.MNIST),
                   "torchvision.datasets.MNIST(root, download=True), or copy the IDX files into "
                   "<root>/MNIST/raw/", "MNIST"),
    "cifar10": _Spec(_cifar_present(), _tv(torchvision.datasets.CIFAR10),
                     _tv_download(torchvision.datasets.CIFAR10),
                     "torchvision.datasets.CIFAR10(root, download=True) (170 MB)", "cifar-10-batches-py"),
    "cifar100": _Spec(_cifar_present(torchvision.datasets.CIFAR100), _tv(torchvision.datasets.CIFAR100),
                      _tv_download(torchvision.datasets.CIFAR100),
                      "torchvision.datasets.CIFAR100(root, download=True) (170 MB)", "cifar-100-python"),
    "cats_vs_dogs": _Spec(_cvd_present, _cvd_load, None,
                          "the Kaggle 'Dogs vs. Cats' photos as <root>/cats_vs_dogs/{train,test}/{cat,dog}/*.jpg "
                          "(or flat cat.N.jpg / dog.N.jpg); with internet, load_dataset('oxford_pets') "
                          "downloads Oxford-IIIT Pet with the binary cat/dog target instead", "cats_vs_dogs"),
    "oxford_pets": _Spec(_pets_present, _pets_load, _pets_download,
                         "torchvision.datasets.OxfordIIITPet(root, target_types='binary-category', download=True)",
                         "oxford-iiit-pet"),
}


def _not_found(name: str, paths: list[Path], note: str) -> DatasetNotFoundError:
    """The not-found error: every folder searched (and which hold an empty or incomplete copy), the fix."""
    spec = DATASETS[name]
    lines = [str(p.resolve()) + (f"  (has {spec.folder}/, but no usable copy: empty or incomplete)"
                                 if spec.folder and (p / spec.folder).exists() else "") for p in paths]
    searched = "\n  ".join(lines)
    return DatasetNotFoundError(f"dataset {name!r} not found. Searched:\n  {searched}\n"
                                f"Get it with {spec.how}, or point PRUNINGLIB_DATA at the folder that holds it{note}")


def find_dataset(name: str) -> Path:
    """The first search-path folder that holds a (non-empty) copy of ``name``.

    Raises:
        DatasetNotFoundError: naming every folder searched and how to obtain the data.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS) + ['synthetic']}")
    spec = DATASETS[name]
    paths = search_path()
    for root in paths:
        if spec.present(root):
            return root
    raise _not_found(name, paths, " (PRUNINGLIB_OFFLINE is set, so nothing was downloaded)." if _offline() else ".")


def _new_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def _remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove the empty folders in and among ``dirs`` (deepest first); anything holding a file stays."""
    for d in dirs:
        for sub, _, _ in os.walk(d, topdown=False):
            try:
                os.rmdir(sub)
            except OSError:
                pass  # not empty: a partial download is kept for the next try


def _download(name: str, missing: DatasetNotFoundError, download: bool | None) -> Path:
    """Download a dataset that was not found, where allowed; the folder it went into.

    Raises ``missing`` when downloading is not wanted or impossible; refuses ``download=True``
    while ``PRUNINGLIB_OFFLINE`` is set (creating nothing); after a failed download the empty
    folders it made are removed again.
    """
    spec = DATASETS[name]
    if download is False or spec.download is None or (download is None and _offline()):
        raise missing
    if _offline():
        raise _not_found(name, search_path(), ". download=True was not attempted because PRUNINGLIB_OFFLINE "
                                              "is set: unset PRUNINGLIB_OFFLINE (or set it to 0) to download it.")
    root = search_path()[0]
    made = _new_dirs(root / spec.folder)
    try:
        spec.download(root)
    except Exception as e:  # network errors, read-only folders
        _remove_empty_dirs(made)
        raise DatasetNotFoundError(f"{missing}\nDownloading it into {root.resolve()} failed "
                                   f"({type(e).__name__}: {e}); set PRUNINGLIB_OFFLINE=1 to skip "
                                   "the download attempt.") from e
    return root


def load_dataset(name: str, split: str = "train", transform: Any = None,
                 download: bool | None = None) -> Dataset:
    """Load a registered dataset split, downloading it only when missing and allowed.

    Args:
        name: a key of :data:`DATASETS`, or ``"synthetic"``.
        split: ``"train"`` or ``"test"``.
        transform: torchvision transform applied to each image.
        download: ``None`` = download when missing unless ``PRUNINGLIB_OFFLINE`` is set;
            ``True`` is refused while it is set.

    Used in lessons 00, 01, 04, 05 and 06 (and through :func:`load_tensors` in 02 and 03).

    Raises:
        DatasetNotFoundError: found nowhere and not downloaded (naming the folders and the fix).
        DatasetCorruptError: the copy found is damaged (naming the file and the fix).
        ValueError: an unknown name or split, or a ``PRUNINGLIB_DATA`` that names no folder.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "synthetic":
        return synthetic_images(train=(split == "train"))
    try:
        root = find_dataset(name)
    except DatasetNotFoundError as missing:
        root = _download(name, missing, download)
    return DATASETS[name].load(root, split, transform)


def targets_of(dataset: Dataset) -> np.ndarray:
    """Class labels of a dataset (or Subset) as a NumPy array, without loading images.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    if isinstance(dataset, Subset):
        return targets_of(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    t = getattr(dataset, "targets", None)
    if t is None:
        return np.array([dataset[i][1] for i in range(len(dataset))])
    return t.numpy() if torch.is_tensor(t) else np.asarray(t)


def subset_per_class(dataset: Dataset, n_per_class: int, seed: int = 0) -> Subset:
    """``n_per_class`` examples of every class, drawn with a fixed seed (quick modes).

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    y = targets_of(dataset)
    rng = np.random.default_rng(seed)
    idx: list[int] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        idx += rng.choice(members, size=min(n_per_class, len(members)), replace=False).tolist()
    return Subset(dataset, sorted(idx))


def to_tensor_dataset(dataset: Dataset, batch_size: int = 256) -> TensorDataset:
    """Materialise a (small) dataset into memory once, so epochs skip decoding. Used in lessons 00 and 04.

    Raises:
        ValueError: the dataset is empty (a subset of 0 examples, an empty folder).
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: check the subset sizes (n_*_per_class) and the data folder")
    xs, ys = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    for x, y in loader:
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def synthetic_images(n: int = 256, num_classes: int = 4, channels: int = 1, size: int = 28,
                     train: bool = True, seed: int = 0) -> TensorDataset:
    """A tiny learnable image set for unit tests: each class is a noisy bright square at its
    own position.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
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

    Used in lesson 04.
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
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
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

    Used in lessons 02 and 03.
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


def fingerprint(dataset: Dataset) -> str:
    """A short id of *which data* a dataset (or a Subset of one) holds, for cache keys.

    For datasets read from files (:class:`CatsVsDogs`, torchvision's ImageFolder-like ``samples``)
    it hashes the selected files' names, sizes and modification times with their labels, so a
    cache built from one copy of the photos is never served for another copy; otherwise the
    type, length and labels. Used in lesson 04 (the cached backbone features and classifier).
    """
    import hashlib

    indices = None
    base = dataset
    while isinstance(base, Subset):
        indices = [base.indices[i] for i in indices] if indices is not None else list(base.indices)
        base = base.dataset
    h = hashlib.sha256()
    samples = getattr(base, "samples", None)
    if samples is not None:
        picked = [samples[i] for i in indices] if indices is not None else samples
        for path, label in picked:
            st = os.stat(path)
            h.update(f"{Path(path).parent.name}/{Path(path).name}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    else:
        y = np.ascontiguousarray(targets_of(dataset).astype(np.int64))
        h.update(y.tobytes())
    n = len(indices) if indices is not None else len(base)
    return f"{type(base).__name__}:{n}:{h.hexdigest()[:16]}"


# ---------------------------------------------------------------------------- tiny shakespeare (lesson 09)
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


class CharText(Dataset):
    """One split of a character corpus: ``text``, its characters as ids (``data``, a LongTensor)
    and the vocabulary of the *whole* corpus (``chars``), so both splits share ids.

    ``dataset[i]`` is ``(x, y)``: ``block_size`` characters from position ``i`` and the same shifted
    by one (next-character targets); ``len`` counts the windows. ``load_dataset("tinyshakespeare")``
    returns one with ``block_size = 64``; set the attribute for another context. Used in lesson 09.
    """

    def __init__(self, text: str, chars: Sequence[str], block_size: int = 64) -> None:
        self.text, self.chars, self.block_size = text, list(chars), block_size
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.data = torch.tensor([self.stoi[c] for c in text], dtype=torch.long)

    def encode(self, s: str) -> torch.Tensor:
        """Character ids of ``s`` (every character must be in the vocabulary)."""
        return torch.tensor([self.stoi[c] for c in s], dtype=torch.long)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of a sequence of ids."""
        return "".join(self.chars[int(i)] for i in ids)

    def __len__(self) -> int:
        return max(0, len(self.data) - self.block_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.data[i:i + self.block_size + 1]
        return chunk[:-1], chunk[1:]


def _ts_present(root: Path) -> bool:
    return _nonempty(root / "tinyshakespeare" / "input.txt")


def _ts_load(root: Path, split: str, transform: Any) -> Dataset:
    """Tiny Shakespeare: the first 90% of the characters for training, the last 10% for validation
    (``split="test"``), as in nanoGPT's ``data/shakespeare_char/prepare.py``. A copy with a
    ``MANIFEST.sha256`` beside it is checked against it first."""
    import hashlib

    folder = root / "tinyshakespeare"
    raw = (folder / "input.txt").read_bytes()
    manifest = folder / "MANIFEST.sha256"
    if manifest.is_file():
        want = {ln.split()[1]: ln.split()[0] for ln in manifest.read_text().splitlines() if len(ln.split()) == 2}
        if "input.txt" in want and hashlib.sha256(raw).hexdigest() != want["input.txt"]:
            raise DatasetCorruptError(f"{folder / 'input.txt'} does not match {manifest} (truncated or edited); "
                                      f"delete it and download it again: {DATASETS['tinyshakespeare'].how}")
    text = raw.decode("utf-8")
    chars = sorted(set(text))
    n = int(0.9 * len(text))
    return CharText(text[:n] if split == "train" else text[n:], chars)


def _ts_download(root: Path) -> None:
    import urllib.request

    folder = root / "tinyshakespeare"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "input.txt.part"
    urllib.request.urlretrieve(TINYSHAKESPEARE_URL, tmp)
    tmp.replace(folder / "input.txt")


DATASETS["tinyshakespeare"] = _Spec(
    _ts_present, _ts_load, _ts_download,
    f"load_dataset('tinyshakespeare', download=True), or download {TINYSHAKESPEARE_URL} "
    "(karpathy/char-rnn, as nanoGPT's shakespeare_char does) into <root>/tinyshakespeare/input.txt",
    "tinyshakespeare")
__all__ += ["CharText", "TINYSHAKESPEARE_URL"]
