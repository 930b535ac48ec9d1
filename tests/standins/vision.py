"""Stand-ins for the vision data that paper mode downloads, written in the real on-disk formats.

A smoke run (``python -m pruninglib.run --smoke``, issue 18) executes every lesson's paper-mode code path
with its loops capped. Paper mode reads CIFAR-10 / CIFAR-100 (torchvision's ``cifar-10-batches-py`` /
``cifar-100-python`` pickles), MNIST and Fashion-MNIST (raw IDX files), Kaggle's Dogs vs Cats photos
(``cats_vs_dogs/{train,test}/{cat,dog}/*.jpg``), Oxford-IIIT Pet (``oxford-iiit-pet/{images,annotations}``)
and torchvision's VGG16 ImageNet weights (``<TORCH_HOME>/hub/checkpoints/vgg16-397923af.pth``). This module
writes a few examples of each, in exactly those formats, so the real loading code runs offline.

Everything here is a **stand-in**: random images with a faint class-dependent pattern (so a couple of
optimiser steps have something to fit) and random VGG16 weights. Each folder holds a ``PRUNINGLIB-STAND-IN``
marker file that says so; no number computed from them is a result. Nothing is committed: a test fixture
calls :func:`write` into a temporary folder.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

__all__ = ["write", "MARKER", "TORCH_HOME", "VGG16_FILE", "env"]

#: Marker file in every folder written here (the same name as ``pruninglib.data.STANDIN_MARKER``).
MARKER = "PRUNINGLIB-STAND-IN"
#: Sub-folder of the stand-in root used as ``TORCH_HOME`` (torch's hub cache with the VGG16 weights).
TORCH_HOME = "torch_home"
#: torchvision ``VGG16_Weights.IMAGENET1K_V1``'s file name (``models._load_vgg16_imagenet`` looks for it).
VGG16_FILE = "vgg16-397923af.pth"
_NOTE = ("Test stand-in written by tests/standins/vision.py (issue 18): a few random images in the real "
         "on-disk format. Not real data; no number computed from it is a result.\n")


def env(root: Path) -> dict[str, str]:
    """The environment a smoke run needs to find these stand-ins (and nothing else) offline."""
    root = Path(root)
    return {"PRUNINGLIB_DATA": str(root), "TORCH_HOME": str(root / TORCH_HOME), "PRUNINGLIB_OFFLINE": "1"}


def _mark(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(_NOTE)


def _images(n_per_class: int, n_classes: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``[N, *shape]`` (last two axes spatial) and labels: noise plus a brighter block whose
    position depends on the class, classes interleaved (0, 1, 2, ..., 0, 1, ...)."""
    rng = np.random.default_rng(seed)
    n = n_per_class * n_classes
    y = np.arange(n) % n_classes
    x = rng.integers(0, 180, size=(n, *shape)).astype(np.int32)
    h, w = shape[-2], shape[-1]
    bh, bw = max(1, h // 4), max(1, w // 4)
    for c in range(n_classes):
        r, q = divmod(c % 16, 4)
        x[y == c, ..., r * bh:(r + 1) * bh, q * bw:(q + 1) * bw] += 50
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


# ------------------------------------------------------------------------------ IDX (MNIST-style)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """One raw IDX file: magic ``00 00 08 <ndim>``, big-endian sizes, then the uint8 values."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, array.ndim]))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.tobytes())


def _write_mnist_like(root: Path, folder: str, n_train: int, n_test: int, seed: int) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    _mark(root / folder)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        x, y = _images(n, 10, (28, 28), s)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y.astype(np.uint8))


# ------------------------------------------------------------------------------ CIFAR pickles


def _cifar_rows(x: np.ndarray) -> np.ndarray:
    """``[N, 3, 32, 32]`` uint8 -> CIFAR's ``[N, 3072]`` rows (R plane, G plane, B plane)."""
    return x.reshape(len(x), 3 * 32 * 32)


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10(root: Path, n_per_class_batch: int, n_test_per_class: int, seed: int) -> None:
    base = root / "cifar-10-batches-py"
    _mark(base)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(base / "batches.meta", {"num_cases_per_batch": 10 * n_per_class_batch, "label_names": names,
                                  "num_vis": 3072})
    for b in range(1, 6):
        x, y = _images(n_per_class_batch, 10, (3, 32, 32), seed + b)
        _dump(base / f"data_batch_{b}", {"batch_label": f"stand-in training batch {b} of 5",
                                        "labels": y.tolist(), "data": _cifar_rows(x),
                                        "filenames": [f"standin_{b}_{i}.png" for i in range(len(y))]})
    x, y = _images(n_test_per_class, 10, (3, 32, 32), seed)
    _dump(base / "test_batch", {"batch_label": "stand-in testing batch 1 of 1", "labels": y.tolist(),
                                "data": _cifar_rows(x), "filenames": [f"standin_t_{i}.png" for i in range(len(y))]})


def _write_cifar100(root: Path, n_train_per_class: int, n_test_per_class: int, seed: int) -> None:
    base = root / "cifar-100-python"
    _mark(base)
    fine = [f"class_{i:02d}" for i in range(100)]
    coarse = [f"superclass_{i:02d}" for i in range(20)]
    _dump(base / "meta", {"fine_label_names": fine, "coarse_label_names": coarse})
    # the test split holds the first 20 classes only: smoke runs evaluate often, and 100 images of a full-width
    # VGG19 per evaluation would dominate lesson 07's smoke run (the real loader does not mind)
    for split, n, k, s in (("train", n_train_per_class, 100, seed), ("test", n_test_per_class, 20, seed + 1)):
        x, y = _images(n, k, (3, 32, 32), s)
        _dump(base / split, {"batch_label": f"stand-in {split}", "fine_labels": y.tolist(),
                             "coarse_labels": (y // 5).tolist(), "data": _cifar_rows(x),
                             "filenames": [f"standin_{split}_{i}.png" for i in range(len(y))]})


# ------------------------------------------------------------------------------ photos


def _jpeg(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0))).save(path, quality=90)


def _photos(n: int, label: int, seed: int, size: tuple[int, int] = (72, 88)) -> list[np.ndarray]:
    """``n`` small RGB photos ``[3, H, W]`` of one class (sizes vary, as real photos' do)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = size[0] + 4 * (i % 3), size[1] - 4 * (i % 2)
        x = rng.integers(0, 140, size=(3, h, w)).astype(np.int32)
        x[label % 3] += 90  # cats redder, dogs greener
        out.append(np.clip(x, 0, 255).astype(np.uint8))
    return out


def _write_cats_vs_dogs(root: Path, n_train_per_class: int, n_test_per_class: int, seed: int) -> None:
    base = root / "cats_vs_dogs"
    _mark(base)
    for split, n, s in (("train", n_train_per_class, seed), ("test", n_test_per_class, seed + 10)):
        for c, name in enumerate(("cat", "dog")):
            folder = base / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, px in enumerate(_photos(n, c, s + c)):
                _jpeg(folder / f"{name}.{i}.jpg", px)


def _write_oxford_pets(root: Path, n_per_breed: int, seed: int) -> None:
    """``oxford-iiit-pet/images/<Breed>_<n>.jpg`` and ``annotations/{trainval,test}.txt`` lines
    ``<image id> <class id 1-37> <species 1 cat, 2 dog> <breed id>`` (two breeds per species)."""
    base = root / "oxford-iiit-pet"
    _mark(base)
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    breeds = [("Abyssinian", 1, 1, 1), ("Bengal", 6, 1, 2), ("american_bulldog", 2, 2, 1), ("basset_hound", 4, 2, 2)]
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for b, (breed, class_id, species, breed_id) in enumerate(breeds):
        for i, px in enumerate(_photos(2 * n_per_breed, species - 1, seed + b), start=1):
            image_id = f"{breed}_{i}"
            _jpeg(base / "images" / f"{image_id}.jpg", px)
            lines["trainval" if i <= n_per_breed else "test"].append(f"{image_id} {class_id} {species} {breed_id}")
    for split, rows in lines.items():
        header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n#BREED ID: 1-25:Cat 1:12:Dog\n"
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
        if split == "test":
            (base / "annotations" / "list.txt").write_text(header + "\n".join(lines["trainval"] + rows) + "\n")


# ------------------------------------------------------------------------------ VGG16 weights


def _write_vgg16_weights(root: Path, seed: int) -> Path:
    """A ``state_dict`` with torchvision VGG16's keys and shapes, where torch's hub cache keeps
    ``VGG16_Weights.IMAGENET1K_V1`` (``<TORCH_HOME>/hub/checkpoints``).

    Random weights (He-scaled, so activations stay finite through 13 convolutions; zero biases), each
    stored as a strided view of a small random pool whose rows overlap: every tensor has its real shape,
    but the file is well under a MB instead of 528 MB. ``torch.load(weights_only=True)`` and ``load_state_dict`` read it like the real file.
    """
    import torch
    import torchvision

    folder = root / TORCH_HOME / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    _mark(folder)
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}
    state = {}
    for k, shape in shapes.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if len(shape) == 1:
            state[k] = torch.zeros(shape)  # biases
            continue
        stride = [0] * len(shape)
        stride[-1] = 1
        for d in range(len(shape) - 2, -1, -1):
            stride[d] = 1 + (3 * d + 5) % 13  # rows overlap in the pool: a view, not a copy
        need = sum((s - 1) * st for s, st in zip(shape, stride)) + 1
        layer_pool = torch.randn(need, generator=g) * (2.0 / fan_in) ** 0.5
        state[k] = torch.as_strided(layer_pool, shape, stride)
    path = folder / VGG16_FILE
    torch.save(state, path)
    return path


def write(root: Path) -> list[str]:
    """Write every vision stand-in below ``root``; the names of what was written.

    ``root`` is then a ``PRUNINGLIB_DATA`` folder, and ``root / TORCH_HOME`` a ``TORCH_HOME`` (see :func:`env`).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _write_mnist_like(root, "MNIST", n_train=30, n_test=10, seed=1)
    _write_mnist_like(root, "FashionMNIST", n_train=30, n_test=10, seed=2)
    _write_cifar10(root, n_per_class_batch=3, n_test_per_class=4, seed=3)
    _write_cifar100(root, n_train_per_class=2, n_test_per_class=1, seed=4)
    _write_cats_vs_dogs(root, n_train_per_class=6, n_test_per_class=6, seed=5)
    _write_oxford_pets(root, n_per_breed=3, seed=6)
    _write_vgg16_weights(root, seed=7)
    return ["mnist", "fashion_mnist", "cifar10", "cifar100", "cats_vs_dogs", "oxford_pets", "vgg16_imagenet_weights"]
