r"""The LeNet3 that lessons 02 and 03 share, trained once per mode and cached.

LeNet3 (Molchanov et al. 2019, Sec. 4.1: two 5x5 convolutions with 16 and 32 filters, then
fully connected 512-120-84-10) trained with SGD on Fashion-MNIST (MNIST in paper mode).
:data:`LENET3_TRAINING` holds its settings per mode, so both lessons hit one cache entry;
:func:`reference_model` trains any other model the same way.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import TensorDataset

from pruninglib.cache import cached, work_path
from pruninglib.checkpoint import fit_resumable
from pruninglib.data import load_tensors
from pruninglib.models import build_model
from pruninglib.train import make_loader
from pruninglib.utils import get_device, set_seed

__all__ = ["LENET3_TRAINING", "reference_model", "reference_lenet3", "lenet3_phases"]


#: Training settings of the LeNet3 shared by lessons 02 and 03 (same settings -> same cache entry).
LENET3_TRAINING: dict[str, dict[str, Any]] = {
    "quick": {"dataset": "fashion_mnist", "n_per_class": 1000, "epochs": 6, "batch_size": 64,
              "lr": 0.01, "momentum": 0.9, "seed": 0},
    "laptop": {"dataset": "fashion_mnist", "n_per_class": None, "epochs": 8, "batch_size": 64,
               "lr": 0.01, "momentum": 0.9, "seed": 0},
    "paper": {"dataset": "mnist", "n_per_class": None, "epochs": 10, "batch_size": 64,
              "lr": 0.01, "momentum": 0.9, "seed": 0},
}
#: Paper mode with its loops capped (``--smoke``, issue 18): one epoch on 20 images per class.
LENET3_TRAINING["smoke"] = {**LENET3_TRAINING["paper"], "n_per_class": 20, "epochs": 1}


def reference_model(model: str = "lenet3", model_kwargs: dict[str, Any] | None = None,
                    dataset: str = "fashion_mnist", n_per_class: int | None = 1000, epochs: int = 6,
                    batch_size: int = 64, lr: float = 0.01, momentum: float = 0.9,
                    weight_decay: float = 0.0, seed: int = 0, device: torch.device | None = None,
                    progress: bool = True, train_data: TensorDataset | None = None
                    ) -> tuple[torch.nn.Module, list[dict]]:
    """A model trained with SGD, computed once per settings with :func:`pruninglib.cache.cached`
    (key: ``"<model>_reference"`` + every setting). The training checkpoints after every epoch
    (:func:`pruninglib.checkpoint.fit_resumable`): run again after a kill, it resumes where it stopped.

    Args:
        model: a :func:`pruninglib.models.build_model` name; ``model_kwargs`` its arguments.
        dataset: training data (:func:`load_tensors`, normalised).
        n_per_class: training examples per class (``None``: the whole training set).
        epochs, batch_size, lr, momentum, weight_decay: SGD settings (constant learning rate).
        seed: initialisation and shuffling seed.
        device: where to train (default :func:`pruninglib.utils.get_device`).
        train_data: the training tensors if already loaded (they must match the settings).

    Returns:
        ``(model in eval mode on device, training history)``.

    Used in lessons 02 and 03.
    """
    device = device or get_device()
    model_kwargs = dict(model_kwargs or {})
    params = {"model": model, "model_kwargs": model_kwargs, "dataset": dataset, "n_per_class": n_per_class,
              "epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": momentum,
              "weight_decay": weight_decay, "seed": seed}

    def train() -> dict[str, Any]:  # checkpointed every epoch: a killed run resumes (issue 18)
        data = train_data if train_data is not None else load_tensors(dataset, "train", n_per_class, seed)
        set_seed(seed)
        net = build_model(model, **model_kwargs).to(device)
        hist = fit_resumable(net, make_loader(data, batch_size, shuffle=True, seed=seed), epochs,
                             ckpt_path=work_path(f"{model}_reference", params), signature=params, lr=lr,
                             momentum=momentum, weight_decay=weight_decay, progress=progress)
        return {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "history": hist}

    res = cached(f"{model}_reference", params, train)
    net = build_model(model, **model_kwargs)
    net.load_state_dict(res["state_dict"])
    return net.to(device).eval(), res["history"]


def reference_lenet3(dataset: str = "fashion_mnist", n_per_class: int | None = 1000, epochs: int = 6,
                     batch_size: int = 64, lr: float = 0.01, momentum: float = 0.9, seed: int = 0,
                     **kw: Any) -> tuple[torch.nn.Module, list[dict]]:
    """The trained LeNet3 of lessons 02 and 03 (Molchanov et al. 2019, Sec. 4.1); call it with
    ``**LENET3_TRAINING[MODE]`` so both lessons share one cache entry. See :func:`reference_model`.

    Used in lessons 02 and 03.
    """
    return reference_model("lenet3", {}, dataset, n_per_class, epochs, batch_size, lr, momentum, 0.0,
                           seed, **kw)


def lenet3_phases(training: dict[str, Any], sgd_steps: float = 0.0, oracle_images: float = 0.0,
                  device: torch.device | None = None) -> list:
    """The LeNet3 work of a paper run of lessons 02 and 03 as :class:`pruninglib.estimate.Phase` units, for
    the time estimate printed before it starts (issue 18): SGD steps at the training batch size (the
    reference training's epochs over the full training split, plus ``sgd_steps`` more: fine-tuning
    schedules), and forward passes over batches of 1,000 images (``oracle_images`` images in all: every
    oracle pass, criterion and loss evaluation). Used in lessons 02 and 03.
    """
    from pruninglib.core.metrics import count_macs
    from pruninglib.estimate import Phase, forward_step, sgd_step, steps_per_epoch, training_flops

    net = build_model("lenet3")
    macs = count_macs(net, (1, 1, 28, 28))
    b = int(training["batch_size"])
    steps = training["epochs"] * steps_per_epoch(training["dataset"], b, training["n_per_class"]) + sgd_steps
    phases = [Phase(f"LeNet3 SGD step, batch {b}", sgd_step(net, (b, 1, 28, 28), 10, device), steps,
                    training_flops(macs, b))]
    if oracle_images:
        phases.append(Phase("LeNet3 forward pass, 1,000 images", forward_step(net.to(device or "cpu"), (1000, 1, 28, 28),
                                                                             device), oracle_images / 1000,
                            2.0 * macs * 1000))
    return phases
