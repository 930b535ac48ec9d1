"""Training and evaluation loops with progress bars and a returned history.

Same seed, same data order, same result: with :func:`pruninglib.utils.set_seed` and a
seeded loader (:func:`make_loader`) two CPU runs give bit-identical weights.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from pruninglib import accel
from pruninglib.utils import make_generator

__all__ = ["make_loader", "train_epoch", "evaluate", "fit", "History"]

History = list[dict[str, float]]


def make_loader(dataset: Dataset, batch_size: int = 64, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False,
                policy: accel.AccelPolicy | None = None) -> DataLoader | accel.DeviceLoader:
    """A DataLoader whose shuffling order is fixed by ``seed``. Used in lessons 00, 02, 03, 04, 05 and 06.

    With the run's GPU switches (:mod:`pruninglib.accel`; ``policy``, default the one
    :func:`pruninglib.utils.setup` set) a dataset that fits is served from device memory by an
    :class:`~pruninglib.accel.DeviceLoader` (same batches, same order), and one decoded on the host
    (photos) gets loader workers and pinned memory. Off (CPU, quick and laptop mode) it is the plain
    seeded DataLoader.
    """
    policy = policy or accel.current_policy()
    generator = make_generator(seed) if shuffle else None
    if policy.active:
        held = accel.device_loader(dataset, batch_size, shuffle, generator, drop_last, policy)
        if held is not None:
            return held
        if not isinstance(dataset, TensorDataset):
            return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                              drop_last=drop_last, **accel.loader_kwargs(policy, num_workers))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=generator, drop_last=drop_last)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                loss_fn: Callable = F.cross_entropy, device: torch.device | None = None,
                regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
                after_backward: Callable[[nn.Module], None] | None = None,
                progress: bool = True, desc: str = "train",
                policy: accel.AccelPolicy | None = None) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss and accuracy.

    Args:
        regularizer: added to the loss (e.g. an L1 penalty on BatchNorm scales; computed in fp32).
        after_backward: called between ``backward()`` and ``step()`` (e.g. the Network
            Slimming subgradient, or a pruning schedule that reads gradients).
        policy: the GPU switches (:mod:`pruninglib.accel`; default the run's): bf16 autocast
            around the forward pass and the loss, ``channels_last`` model and batches. Off, the
            loop is the plain fp32 one.

    Used in lessons 00, 02, 03, 04, 05 and 06.
    """
    device = device or _device_of(model)
    policy = accel.for_device(device, policy)
    with accel.in_loop(model, policy) as nhwc:
        return _train_epoch(model, loader, optimizer, loss_fn, device, regularizer, after_backward, progress, desc,
                            policy, nhwc)


def _train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                 device: torch.device, regularizer: Callable[[nn.Module], torch.Tensor] | None,
                 after_backward: Callable[[nn.Module], None] | None, progress: bool, desc: str,
                 policy: accel.AccelPolicy, nhwc: bool) -> dict[str, float]:
    model.train()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x, y = accel.to_device(x, device, policy, nhwc), accel.to_device(y, device, policy)
        optimizer.zero_grad(set_to_none=True)
        with accel.autocast(policy, device):
            out = model(x)
            loss = loss_fn(out, y)
        full = loss + regularizer(model) if regularizer is not None else loss
        full.backward()
        if after_backward is not None:
            after_backward(model)
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (out.argmax(1) == y).sum().item()
        total += len(y)
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, loss_fn: Callable = F.cross_entropy,
             device: torch.device | None = None, progress: bool = False,
             policy: accel.AccelPolicy | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``loader`` (eval mode, no gradients).

    With the run's GPU switches (``policy``, :mod:`pruninglib.accel`) the forward pass runs under
    bf16 autocast and the loss is summed in fp32; inside :func:`pruninglib.accel.full_precision`
    (an exactness check) it runs in fp32.

    Used in lessons 00, 02, 03, 04, 05 and 06.
    """
    device = device or _device_of(model)
    policy = accel.for_device(device, policy)
    with accel.in_loop(model, policy) as nhwc:
        was_training = model.training
        model.eval()
        total, correct, loss_sum = 0, 0, 0.0
        for x, y in tqdm(loader, desc="eval", leave=False, disable=not progress):
            x, y = accel.to_device(x, device, policy, nhwc), accel.to_device(y, device, policy)
            with accel.autocast(policy, device):
                out = model(x)
            if out.dtype in (torch.bfloat16, torch.float16):
                out = out.float()
            loss_sum += loss_fn(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
        model.train(was_training)
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1)}


def fit(model: nn.Module, train_loader: Iterable, epochs: int, optimizer: torch.optim.Optimizer | None = None,
        lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
        scheduler: Any | None = None, val_loader: Iterable | None = None,
        loss_fn: Callable = F.cross_entropy, device: torch.device | None = None,
        regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
        after_backward: Callable[[nn.Module], None] | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None,
        progress: bool = True, policy: accel.AccelPolicy | None = None) -> History:
    """Train for ``epochs`` epochs (SGD with momentum unless ``optimizer`` is given).

    Returns:
        One dict per epoch: ``epoch``, ``train_loss``, ``train_accuracy`` and, with
        ``val_loader``, ``val_loss`` and ``val_accuracy``.

    ``policy``: the GPU switches of :func:`train_epoch` and :func:`evaluate` (default the run's).

    Used in lessons 00, 02, 03, 04 and 06.
    """
    device = device or _device_of(model)
    policy = accel.for_device(device, policy)
    with accel.in_loop(model, policy):  # channels_last for the whole run, as it came in afterwards
        return _fit(model, train_loader, epochs, optimizer, lr, momentum, weight_decay, scheduler, val_loader,
                    loss_fn, device, regularizer, after_backward, on_epoch_end, progress, policy)


def _fit(model: nn.Module, train_loader: Iterable, epochs: int, optimizer: torch.optim.Optimizer | None,
         lr: float, momentum: float, weight_decay: float, scheduler: Any | None, val_loader: Iterable | None,
         loss_fn: Callable, device: torch.device, regularizer: Callable[[nn.Module], torch.Tensor] | None,
         after_backward: Callable[[nn.Module], None] | None, on_epoch_end: Callable[[int, dict], None] | None,
         progress: bool, policy: accel.AccelPolicy) -> History:
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    history: History = []
    bar = tqdm(range(epochs), desc="epochs", disable=not progress or epochs <= 1)
    for epoch in bar:
        tr = train_epoch(model, train_loader, optimizer, loss_fn, device, regularizer,
                         after_backward, progress=progress, desc=f"epoch {epoch + 1}/{epochs}", policy=policy)
        row = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"]}
        if val_loader is not None:
            ev = evaluate(model, val_loader, loss_fn, device, policy=policy)
            row.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"])
        if scheduler is not None:
            scheduler.step()
        history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))})
    return history
