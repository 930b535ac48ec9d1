"""Lesson 06's bookkeeping: the data split, the transforms, and the names it records results under.

The lesson compares channel-selection methods (L1, Taylor, ThiNet, LASSO), per-layer allocations
(uniform, global ranking, NetAdapt) and Sparse Structure Selection on one trained CIFAR-style VGG;
the methods themselves live in :mod:`pruninglib.methods`. What is here only prepares the data and
names things, so that the notebook and its solutions share one copy:

- :func:`transforms_for`: the training and evaluation transforms of a dataset, and its image shape;
- :func:`split_train_holdout`: a per-class split of the training set into a training and a held-out part;
- :func:`find_gate_taylor`: the registered 2019 gate-Taylor criterion, if any;
- :func:`record_slug`: the ``snake_case`` form of a label, for :func:`~pruninglib.record` names.

Used in lesson 06.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torchvision.transforms as T

from pruninglib.data import DATASET_STATS

__all__ = ["GATE_TAYLOR_PREFERENCE", "transforms_for", "split_train_holdout", "find_gate_taylor", "record_slug",
           "paper_phases"]

#: Names under which another lesson may register Molchanov et al. 2019's gate criterion, most preferred first.
GATE_TAYLOR_PREFERENCE: tuple[str, ...] = ("taylor_fo", "taylor_gate", "taylor_2019", "taylor_fo_bn")


def transforms_for(dataset: str) -> tuple[Callable, Callable, int, int]:
    """The lesson's transforms for ``dataset`` and the shape of its images.

    CIFAR-10 trains with a random 32x32 crop (4 pixels of padding) and horizontal flips; the
    grey 28x28 datasets (Fashion-MNIST, MNIST) are not augmented. Both are normalised with
    :data:`pruninglib.data.DATASET_STATS`. Used in lesson 06.

    Returns:
        ``(training transform, evaluation transform, channels, side in pixels)``; for the grey
        datasets the two transforms are the same object.

    Raises:
        KeyError: a dataset without statistics in :data:`~pruninglib.data.DATASET_STATS`.
    """
    if dataset not in DATASET_STATS:
        raise KeyError(f"no normalisation statistics for {dataset!r}; known: {sorted(DATASET_STATS)}")
    norm = DATASET_STATS[dataset]
    if dataset == "cifar10":
        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(*norm)])
        plain_tf = T.Compose([T.ToTensor(), T.Normalize(*norm)])
        return train_tf, plain_tf, 3, 32
    plain_tf = T.Compose([T.ToTensor(), T.Normalize(*norm)])
    return plain_tf, plain_tf, 1, 28


def split_train_holdout(labels: Sequence[int] | np.ndarray, n_hold: int, n_train: int | None,
                        seed: int) -> tuple[list[int], list[int]]:
    """Split example indices per class into a training part and a held-out part.

    Class by class (in increasing label order), the class's indices are permuted by
    ``np.random.default_rng(seed)`` (one generator for all classes, the global RNGs are left
    alone); the first ``n_hold`` go to the held-out part, the next ``n_train`` (all the rest
    when ``None``) to the training part. Used in lesson 06: NetAdapt ranks its proposals on
    held-out training images, never on the test set.

    Returns:
        ``(training indices, held-out indices)`` in draw order (class by class, permuted); sort
        them for index order.

    Raises:
        ValueError: a negative ``n_hold`` or ``n_train``.
    """
    if n_hold < 0 or (n_train is not None and n_train < 0):
        raise ValueError(f"n_hold and n_train must be >= 0, got {n_hold} and {n_train}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    hold_idx: list[int] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        hold_idx += idx[:n_hold].tolist()
        rest = idx[n_hold:]
        train_idx += (rest if n_train is None else rest[:n_train]).tolist()
    return train_idx, hold_idx


def find_gate_taylor(names: Iterable[str]) -> str | None:
    """The name of a registered 2019 gate-Taylor criterion (Molchanov et al. 2019), or ``None``.

    Candidates are the names other than ``"taylor_2017"`` that match ``taylor.*(2019|fo|gate)``;
    the first of :data:`GATE_TAYLOR_PREFERENCE` among them wins, else the first candidate in the
    order given. Used in lesson 06.
    """
    preferred = list(GATE_TAYLOR_PREFERENCE)
    found = [n for n in names if n != "taylor_2017" and re.search(r"taylor.*(2019|fo|gate)", n)]
    found.sort(key=lambda n: preferred.index(n) if n in preferred else len(preferred))
    return found[0] if found else None


def record_slug(label: str) -> str:
    """``label`` in lower case with every run of other characters than ``a-z0-9`` replaced by ``_``
    (and none at the ends): ``"reconstructed + FT"`` -> ``"reconstructed_ft"``. Used in lesson 06 to
    name its records after the rows and columns of its tables."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def paper_phases(settings: dict, macs_budget: float, n_finetunes: int = 18, device: Any = None,
                 n_train: int = 50_000) -> list:
    """Lesson 06's long steps at paper settings as :class:`pruninglib.estimate.Phase` units, for the time
    estimate printed before a paper run (issue 18): the VGG's training, every fine-tune (``n_finetunes`` of
    them: each method's pruned and refitted networks and each allocation's, at ``macs_budget`` of the MACs),
    NetAdapt's held-out evaluations (two searches of ``netadapt_steps`` steps, one proposal per conv layer
    each) and Sparse Structure Selection's ResNet training; the training set is CIFAR-10's ``n_train`` images
    less ``n_hold`` per class. Timed on 8 images on a CPU (:func:`pruninglib.estimate.timing_batch`).
    Used in lesson 06.
    """
    from pruninglib.core.metrics import count_macs
    from pruninglib.estimate import Phase, forward_step, sgd_step, timing_batch, training_flops
    from pruninglib.models import build_model

    b = int(settings["batch"])
    n = (n_train - 10 * settings["n_hold"]) if settings["n_train"] is None else 10 * settings["n_train"]
    steps = -(-n // b)
    vgg = build_model("cifar_vgg", cfg=settings["vgg"], in_channels=3, num_classes=10, width=settings["width"])
    res = build_model("cifar_resnet", depth=settings["res_depth"], in_channels=3, num_classes=10,
                      widths=list(settings["res_widths"]))
    convs = sum(1 for m in vgg.modules() if isinstance(m, torch.nn.Conv2d))
    bt, ft = timing_batch(b, device), timing_batch(500, device)
    vm, rm = count_macs(vgg, (1, 3, 32, 32)), count_macs(res, (1, 3, 32, 32))
    evals = 2 * settings["netadapt_steps"] * convs * settings["netadapt_eval_images"]
    return [
        Phase(f"CIFAR VGG SGD step, batch {b} (training, and fine-tunes at {macs_budget:.0%} of its cost)",
              sgd_step(vgg, (bt, 3, 32, 32), 10, device),
              steps * (settings["epochs"] + macs_budget * n_finetunes * settings["ft_epochs"]), training_flops(vm, b),
              per_call=bt / b),
        Phase("CIFAR VGG forward pass, 500 images (NetAdapt's held-out accuracy)",
              forward_step(vgg.to(device or "cpu"), (ft, 3, 32, 32), device), evals / 500, 2.0 * vm * 500,
              per_call=ft / 500),
        Phase(f"ResNet-{settings['res_depth']} SGD step, batch {b} (Sparse Structure Selection)",
              sgd_step(res, (bt, 3, 32, 32), 10, device), steps * settings["sss_epochs"], training_flops(rm, b),
              per_call=bt / b),
    ]
