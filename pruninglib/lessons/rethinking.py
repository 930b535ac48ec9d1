"""The protocol of *Rethinking the Value of Network Pruning* (Liu et al. 2019, ICLR).

Liu, Sun, Zhou, Huang, Darrell. The paper trains a large model, prunes it, and compares
three ways of getting an accurate small model (Sec. 3):

* **Fine-tuned**: the pruned model keeps the inherited weights and is trained for a few more
  epochs at a small learning rate (CIFAR: 40 epochs at ``lr = 1e-3``);
* **Scratch-E**: the pruned *architecture*, randomly initialised, trained for the same number
  of epochs :math:`E` as the large model;
* **Scratch-B**: the same, trained for the same *computation budget* as the large model:
  :math:`E_B = \\lfloor E \\cdot \\mathrm{FLOPs}_{full} / \\mathrm{FLOPs}_{pruned} \\rfloor`
  (:func:`scratch_b_epochs`; the ``int(160 * flops_std / flops_small)`` of the paper's code).

Training everywhere (Sec. 4, CIFAR): SGD, batch 64, ``lr = 0.1``, momentum 0.9, weight decay
1e-4, 160 epochs, learning rate divided by 10 at 50 % and 75 % of the epochs
(:data:`PAPER_PROTOCOL`). The claim tested: Scratch-E/B match or beat fine-tuning, so the
value of (automatic) pruning lies in the architecture it finds.

This module holds the reusable parts: the budgets, a training loop that saves a checkpoint
(atomic, with checksum) after every epoch and resumes bit-identically (:func:`train_resumable`),
a runner for one experiment and seed (:func:`run_experiment`; the datasets are injected, so
tests can stand synthetic data in for CIFAR-10), the summary table in the paper's layout, and the
lesson's displays (:func:`plot_arm_bars`, :func:`training_budget_rows`, :func:`verdict_lines`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from pruninglib.cache import cache_key
from pruninglib.checkpoint import load_checkpoint, save_checkpoint
from pruninglib.core.metrics import count_macs, count_parameters
from pruninglib.models import CifarResNet, CifarVGG, build_model
from pruninglib.tables import markdown_table
from pruninglib.train import evaluate, make_loader, train_epoch

__all__ = [
    "Protocol", "PAPER_PROTOCOL", "Experiment", "PAPER_RESULTS", "ARMS",
    "scratch_b_epochs", "lr_milestones", "training_cost", "train_resumable", "fresh_like",
    "run_experiment", "summarize", "results_table", "paper_experiments", "cifar10_transforms",
    "mean_std", "arm_accuracies", "dataset_fingerprint", "results_rows", "ARM_LABELS", "VERDICT_WORDS",
    "plot_arm_bars", "training_budget_rows", "spread_verdict", "verdict_lines", "paper_phases",
]

#: The arms of the comparison, in the paper's column order (``uniform_e`` is Sec. 5's baseline).
ARMS: tuple[str, ...] = ("finetune", "scratch_e", "scratch_b", "uniform_e")


# ------------------------------------------------------------------------------ budgets


def scratch_b_epochs(epochs: int, macs_full: float, macs_pruned: float,
                     max_factor: float | None = None) -> int:
    """Epochs of Scratch-B: the large model's budget :math:`E \\cdot F_{full}` spent on the
    pruned model, :math:`\\lfloor E \\cdot F_{full} / F_{pruned} \\rfloor` (Liu et al. 2019, Sec. 3).

    Args:
        epochs: :math:`E`, the large model's (and Scratch-E's) epochs.
        macs_full: FLOPs (MACs) per sample of the large model (:func:`pruninglib.core.metrics.count_macs`).
        macs_pruned: the same for the pruned model.
        max_factor: optional cap on :math:`E_B / E` (e.g. 2 when a model saves a lot of FLOPs
            and the full budget would be impractical); ``None`` = no cap, as in the paper's code.

    Returns:
        At least ``epochs`` (a smaller model never gets fewer epochs than Scratch-E).

    Used in lesson 05.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if not (macs_full > 0 and macs_pruned > 0):
        raise ValueError(f"MACs must be positive, got full={macs_full}, pruned={macs_pruned}")
    factor = macs_full / macs_pruned
    if max_factor is not None:
        factor = min(factor, float(max_factor))
    return max(int(epochs), int(epochs * factor + 1e-9))


def lr_milestones(epochs: int, fractions: Sequence[float] = (0.5, 0.75)) -> list[int]:
    """Epochs at whose start the learning rate drops (``int(E * 0.5)``, ``int(E * 0.75)``),
    as in the paper's code; duplicates and 0 are dropped (tiny runs).

    Used in lesson 05.
    """
    out = sorted({int(epochs * f) for f in fractions})
    return [m for m in out if 0 < m < max(epochs, 1)]


def training_cost(epochs: float, n_samples: int, macs_per_sample: float, backward_factor: float = 3.0) -> float:
    """Training compute in MACs: ``epochs * n_samples * macs * backward_factor`` (a forward
    pass plus a backward pass of about twice its cost). For the fairness note: what "the same
    budget" means, and what the pre-training of the large model costs.

    Used in lesson 05.
    """
    return float(epochs) * n_samples * macs_per_sample * backward_factor


# ------------------------------------------------------------------------------ protocol


@dataclass(frozen=True)
class Protocol:
    """Training settings of one run of the protocol (defaults: the paper's CIFAR settings).

    Attributes:
        epochs: :math:`E` for the large model and Scratch-E (160).
        finetune_epochs: epochs of fine-tuning (40).
        lr: initial learning rate of the large model and the scratch runs (0.1).
        finetune_lr: constant learning rate of fine-tuning (1e-3).
        momentum, weight_decay, batch_size: SGD settings (0.9, 1e-4, 64).
        milestones: fractions of the epochs where ``lr`` is multiplied by ``gamma``.
        gamma: the factor (0.1).
        max_batches: stop every epoch after this many batches (tests, tiny runs); ``None`` = all.
        scratch_b_max_factor: cap of Scratch-B's epoch factor (``None`` = paper's code: no cap).
        eval_batch_size: batch size of evaluation.
        num_workers: DataLoader workers.
        eval_every: evaluate on the test set every this many epochs during training (0 = only
            at the end; the paper's code tests every epoch and reports the best, which selects
            on the test set -- we report the final epoch).

    Used in lesson 05.
    """

    epochs: int = 160
    finetune_epochs: int = 40
    lr: float = 0.1
    finetune_lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    max_batches: int | None = None
    scratch_b_max_factor: float | None = None
    eval_batch_size: int = 256
    num_workers: int = 0
    eval_every: int = 0

    def replace(self, **changes: Any) -> "Protocol":
        """A copy with some fields changed (``PAPER_PROTOCOL.replace(epochs=2, max_batches=1)``)."""
        unknown = [k for k in changes if k not in {f.name for f in dataclasses.fields(self)}]
        if unknown:
            raise ValueError(f"unknown Protocol fields {unknown}; valid: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The paper's CIFAR protocol (Liu et al. 2019, Sec. 4; Li et al. 2017 / Liu et al. 2017 code).
PAPER_PROTOCOL = Protocol()


@dataclass
class Experiment:
    """One row of the paper's tables: a large model, a pruning method, its target.

    Attributes:
        name: short id (``"vgg16_a"``); also the key into :data:`PAPER_RESULTS`.
        method: ``"l1"`` (predefined widths, Li et al. 2017), ``"slimming"`` (Liu et al. 2017)
            or ``"unstructured"`` (Han et al. 2015).
        model: :func:`pruninglib.models.build_model` spec of the large model,
            ``{"name": ..., "kwargs": {...}}``.
        target: ``"l1"``: the spec of the pruned model (its prunable widths are the target);
            ``"slimming"``: the global channel ratio; ``"unstructured"``: the weight sparsity.
        sparsity: Network Slimming's penalty ``s`` while training the large model (0 = none).
        arms: which of :data:`ARMS` to run.
        label: the model's name in tables (``"VGG-16"``); pruned_label: the pruned model's.
        input_size: example input shape for MAC counts.

    Used in lesson 05.
    """

    name: str
    method: str
    model: dict[str, Any]
    target: Any
    sparsity: float = 0.0
    arms: tuple[str, ...] = ("finetune", "scratch_e", "scratch_b")
    label: str = ""
    pruned_label: str = ""
    input_size: tuple[int, ...] = (1, 3, 32, 32)

    def __post_init__(self) -> None:
        if self.method not in ("l1", "slimming", "unstructured"):
            raise ValueError(f"method must be 'l1', 'slimming' or 'unstructured', got {self.method!r}")
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise ValueError(f"unknown arms {bad}; choose from {list(ARMS)}")
        if "uniform_e" in self.arms and self.method != "slimming":
            raise ValueError("the 'uniform_e' arm compares an automatically found architecture with a "
                             "uniform one; use it with method='slimming'")
        if not {"name", "kwargs"} <= set(self.model):
            raise ValueError("model must be a build_model spec {'name': ..., 'kwargs': {...}}")
        self.label = self.label or self.name
        self.pruned_label = self.pruned_label or f"{self.label}-pruned"


#: Liu et al. 2019, CIFAR-10, mean (std) over 5 runs (the authors' reply in
#: Eric-mingjie/rethinking-network-pruning issue #9): Table 1 (L1-norm, predefined targets) and Table 4
#: (Network Slimming, VGG-19, 70 % of channels). Each entry's ``source`` says what was checked: the
#: ResNet-56 unpruned mean and Scratch-E/B means against Table 1; the VGG-16-A and VGG-19 rows and the
#: other ResNet-56 values were transcribed by hand and could not be checked (neither table is in the
#: sources the project could search).
def _paper_row(model: str, pruned: str, unpruned: tuple[float, float], finetune: tuple[float, float],
               scratch_e: tuple[float, float], scratch_b: tuple[float, float], source: str) -> dict[str, Any]:
    return {"dataset": "CIFAR-10", "model": model, "pruned": pruned, "unpruned": unpruned, "finetune": finetune,
            "scratch_e": scratch_e, "scratch_b": scratch_b, "source": source}


_RESNET56_SOURCE = ("Liu et al. 2019, Table 1 (the means {}; the fine-tuned mean and every std: "
                    "source not checked)")
_BY_HAND = "(source not checked: transcribed by hand, the table is not in the project's sources)"
PAPER_RESULTS: dict[str, dict[str, Any]] = {
    "vgg16_a": _paper_row("VGG-16", "VGG-16-A", (93.63, 0.16), (93.41, 0.12), (93.62, 0.11), (93.78, 0.15),
                          f"Liu et al. 2019, Table 1 {_BY_HAND}"),
    "resnet56_a": _paper_row("ResNet-56", "ResNet-56-A", (93.14, 0.12), (92.97, 0.17), (92.96, 0.26), (93.09, 0.14),
                             _RESNET56_SOURCE.format("93.14, 92.96, 93.09")),
    "resnet56_b": _paper_row("ResNet-56", "ResNet-56-B", (93.14, 0.12), (92.67, 0.14), (92.54, 0.19), (93.05, 0.18),
                             _RESNET56_SOURCE.format("93.14, 92.54, 93.05")),
    "vgg19_slim": _paper_row("VGG-19", "70% channels", (93.53, 0.16), (93.60, 0.16), (93.30, 0.11), (93.81, 0.14),
                             f"Liu et al. 2019, Table 4 {_BY_HAND}"),
}


# ------------------------------------------------------------------------------ training


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2**63 - 1)


class _Limited:
    """Iterate over at most ``n`` batches of a loader (``None`` = all)."""

    def __init__(self, loader: Iterable, n: int | None) -> None:
        self.loader, self.n = loader, n

    def __iter__(self):
        for i, b in enumerate(self.loader):
            if self.n is not None and i >= self.n:
                break
            yield b

    def __len__(self) -> int:
        n = len(self.loader)  # type: ignore[arg-type]
        return n if self.n is None else min(n, self.n)


def _signature(**kw: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}


def _check_same_architecture(path: Path, saved: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Refuse to resume ``model`` from a checkpoint of a model with other layers or widths."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    wrong = [(k, tuple(saved[k].shape), tuple(v.shape)) for k, v in own.items()
             if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if missing or extra or wrong:
        what = (f"{wrong[0][0]} is {wrong[0][1]} there but {wrong[0][2]} here" if wrong else
                f"it lacks {missing[:3]}" if missing else f"it has extra entries {extra[:3]}")
        raise ValueError(f"checkpoint {path} holds a model with other layers or widths ({what}; "
                         f"{len(wrong)} tensors differ in shape); delete it or pass another ckpt_path")


def train_resumable(model: nn.Module, train_set: Dataset, epochs: int, lr: float,
                    momentum: float = 0.9, weight_decay: float = 1e-4, batch_size: int = 64,
                    milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1, seed: int = 0,
                    ckpt_path: str | os.PathLike | None = None,
                    after_backward: Callable[[nn.Module], None] | None = None,
                    max_batches: int | None = None, num_workers: int = 0,
                    eval_set: Dataset | None = None, eval_every: int = 0, eval_batch_size: int = 256,
                    stop_after: int | None = None, progress: bool = True, desc: str = "train") -> list[dict]:
    """SGD with a step schedule, a checkpoint after every epoch, and exact resumption.

    The schedule is the paper's: ``lr`` times ``gamma`` at the start of the epochs
    :func:`lr_milestones` gives (``milestones=()`` keeps ``lr`` constant, as fine-tuning does).

    Every epoch ``e`` starts by seeding the loader's shuffling generator and torch's global
    RNG (data augmentation) from ``(seed, e)``, so its batches depend only on the seed and the
    epoch number. After the epoch, the model, the optimizer (momentum buffers), the scheduler
    and the history are written to ``ckpt_path`` (:func:`pruninglib.checkpoint.save_checkpoint`:
    atomic rename and SHA-256). Called again with the same arguments, the function loads the
    checkpoint and continues from the next epoch; on the CPU the final weights are
    bit-identical to an uninterrupted run. A finished checkpoint just reloads the weights.

    Args:
        model: the model, already on its device.
        train_set: the training dataset (a shuffling loader is built from it).
        epochs: number of epochs.
        lr, momentum, weight_decay, batch_size, milestones, gamma: SGD and schedule.
        seed: fixes the data order of every epoch.
        ckpt_path: checkpoint file (``None`` = no checkpointing).
        after_backward: hook between ``backward`` and ``step`` (Network Slimming's subgradient).
        max_batches: at most this many batches per epoch (tests and tiny runs).
        num_workers: DataLoader workers.
        eval_set: evaluated every ``eval_every`` epochs (0 = never) into ``val_accuracy``.
        eval_batch_size: batch size of that evaluation.
        stop_after: return after this many epochs in total, as if interrupted (tests).
        progress: tqdm progress bars.
        desc: progress-bar label.

    Returns:
        The history, one dict per epoch done so far (``epoch``, ``lr``, ``train_loss``,
        ``train_accuracy``, ``seconds``, and ``val_accuracy`` when evaluated).

    Raises:
        ValueError: a checkpoint written with other settings (delete it or choose another path).

    Used in lesson 05.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, lr_milestones(epochs, milestones), gamma)
    sig = _signature(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                     batch_size=batch_size, milestones=tuple(milestones), gamma=gamma, seed=seed,
                     max_batches=max_batches, n_train=len(train_set))  # type: ignore[arg-type]
    history: list[dict] = []
    start = 0
    path = Path(ckpt_path) if ckpt_path is not None else None
    if path is not None and path.exists():
        state = load_checkpoint(path, map_location=device)
        if state.get("format") != "pruninglib.lessons.rethinking.train/1" or state.get("signature") != sig:
            raise ValueError(f"checkpoint {path} was written with other settings "
                             f"({state.get('signature')} instead of {sig}); delete it or pass another ckpt_path")
        _check_same_architecture(path, state["model"], model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start = list(state["history"]), int(state["epoch"])
    loader = make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed,
                         num_workers=num_workers)
    eval_loader = make_loader(eval_set, eval_batch_size) if eval_set is not None and eval_every else None
    last = epochs if stop_after is None else min(epochs, stop_after)
    for epoch in range(start, last):
        es = _epoch_seed(seed, epoch)
        loader.generator.manual_seed(es)  # type: ignore[union-attr]
        torch.manual_seed(es)
        t0 = time.perf_counter()
        cur_lr = optimizer.param_groups[0]["lr"]
        tr = train_epoch(model, _Limited(loader, max_batches), optimizer, device=device,
                         after_backward=after_backward, progress=progress,
                         desc=f"{desc} {epoch + 1}/{epochs}")
        scheduler.step()
        row = {"epoch": epoch + 1, "lr": cur_lr, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "seconds": time.perf_counter() - t0}
        if eval_loader is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            row["val_accuracy"] = evaluate(model, eval_loader)["accuracy"]
        history.append(row)
        if path is not None:
            save_checkpoint({"format": "pruninglib.lessons.rethinking.train/1", "signature": sig, "epoch": epoch + 1,
                             "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "history": history}, path)
    return history


# ------------------------------------------------------------------------------ models


def fresh_like(model: nn.Module, seed: int) -> nn.Module:
    """A randomly initialised model with ``model``'s (possibly pruned) architecture.

    :class:`~pruninglib.models.CifarVGG` and :class:`~pruninglib.models.CifarResNet` are rebuilt
    from their current widths with :func:`pruninglib.models.build_model` (so they get the
    models' own initialisation and a ``pl_config``); other models are deep-copied and every
    submodule's ``reset_parameters()`` is called. ``torch.nn.utils.prune`` masks are not copied
    (use :func:`pruninglib.methods.unstructured.apply_masks`). Returned on ``model``'s device.

    Used in lesson 05.
    """
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(model, CifarVGG):
            from pruninglib.methods.slimming import vgg_cfg_of

            bn = any(isinstance(m, nn.BatchNorm2d) for m in model.features)
            first = next(m for m in model.features if isinstance(m, nn.Conv2d))
            new = build_model("cifar_vgg", cfg=vgg_cfg_of(model), in_channels=first.in_channels,
                              num_classes=model.classifier[-1].out_features, batch_norm=bn, width=1.0)
        elif isinstance(model, CifarResNet):
            widths = [model.layer1[0].conv2.out_channels, model.layer2[0].conv2.out_channels,
                      model.layer3[0].conv2.out_channels]
            new = build_model("cifar_resnet", depth=model.depth, num_classes=model.fc.out_features,
                              in_channels=model.conv1.in_channels, widths=widths,
                              mid_channels=[b.conv1.out_channels for _, b in model.blocks()])
        else:
            new = copy.deepcopy(model)
            for m in new.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return new.to(device)


def _arch_summary(model: nn.Module, input_size: tuple[int, ...], sparse: bool = False) -> dict[str, Any]:
    from pruninglib.core.graph import prunable_layers
    from pruninglib.methods.unstructured import sparse_macs, sparsity

    out = {"macs": count_macs(model, input_size), "params": count_parameters(model),
           "widths": [pl.num_units for pl in prunable_layers(model, ("conv",))]}
    if sparse:
        out["macs_sparse"] = sparse_macs(model, input_size)
        out["sparsity"] = sparsity(model)
        nz = sum(int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        dense_w = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        out["params_nonzero"] = out["params"] - dense_w + nz
    if isinstance(model, CifarVGG):
        from pruninglib.methods.slimming import vgg_cfg_of

        out["cfg"] = vgg_cfg_of(model)
    return out


# ------------------------------------------------------------------------------ runner


def dataset_fingerprint(dataset: Dataset) -> str:
    """A short id of a training set for checkpoint keys: its type, length and the SHA-256 of
    its labels (cheap, and unaffected by random augmentation).

    Used in lesson 05.
    """
    import hashlib

    import numpy as np

    from pruninglib.data import targets_of

    y = np.ascontiguousarray(targets_of(dataset).astype(np.int64))
    h = hashlib.sha256(y.tobytes()).hexdigest()[:16]
    return f"{type(dataset).__name__}:{len(y)}:{h}"


@dataclass
class _Run:
    """What the training runs of one experiment and one seed share (:func:`run_experiment`)."""

    exp: Experiment
    protocol: Protocol
    train_set: Dataset
    seed: int
    device: torch.device
    root: Path | None
    train_kw: dict[str, Any]
    sched: dict[str, Any]
    test_loader: Any
    say: Callable[[str], None]

    def ckpt(self, role: str, params: dict[str, Any]) -> Path | None:
        """The checkpoint file of a run: ``<ckpt_dir>/<role>/<key of params>.pt`` (``None``: no checkpoints)."""
        if self.root is None:
            return None
        return self.root / role / f"{cache_key(role, params)}.pt"

    def accuracy(self, model: nn.Module) -> float:
        return evaluate(model, self.test_loader)["accuracy"]

    def log(self, text: str) -> None:
        self.say(f"[{self.exp.name} seed {self.seed}] {text}")


@dataclass
class _ArmPlan:
    """One arm before training: its model, schedule, initialisation seed and extra results."""

    model: nn.Module
    epochs: int
    lr: float
    milestones: tuple[float, ...]
    init: int
    extra: dict[str, Any] | None = None  # uniform_e: its architecture and parameter target


def _train_large(run: _Run) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Step 1 of :func:`run_experiment`: build and train the large model (with Network Slimming's
    penalty when ``exp.sparsity > 0``). Its checkpoint key holds the model spec, the penalty, the
    protocol and the seed only, so experiments that share a large model train it once.

    Returns:
        ``(model, info, key)``: the trained model, its summary and its checkpoint key.
    """
    from pruninglib.methods.slimming import bn_l1_subgradient

    exp, p, seed = run.exp, run.protocol, run.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        large = build_model(exp.model["name"], **exp.model["kwargs"])
    large = large.to(run.device)
    hook = bn_l1_subgradient(exp.sparsity) if exp.sparsity > 0 else None
    lkey = dict(model=exp.model, s=exp.sparsity, epochs=p.epochs, seed=seed, **run.sched)
    hist = train_resumable(large, run.train_set, p.epochs, p.lr, milestones=p.milestones, seed=seed,
                           ckpt_path=run.ckpt("large", lkey), after_backward=hook,
                           desc=f"{exp.name} large", **run.train_kw)
    info = _arch_summary(large, exp.input_size)
    info.update(accuracy=run.accuracy(large), epochs=p.epochs, history=hist,
                seconds=sum(h["seconds"] for h in hist))
    run.log(f"large model: {100 * info['accuracy']:.2f}% ({info['params']:,} params, {info['macs']:,} MACs)")
    return large, info, lkey


def _prune_copy(run: _Run, large: nn.Module, large_info: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any], float]:
    """Step 2 of :func:`run_experiment`: prune a copy of the large model, by L1 norm to the
    predefined widths, by slimming's global threshold on the BN scales, or with global
    magnitude masks (unstructured).

    Returns:
        ``(pruned, info, macs)``: the pruned copy, its summary (accuracy before training,
        FLOPs and parameters pruned, method-specific extras) and its MACs (sparse MACs for
        unstructured pruning), which set Scratch-B's budget.
    """
    from pruninglib.methods.l1_filters import prune_to_widths, target_widths
    from pruninglib.methods.slimming import bn_scales, slim
    from pruninglib.methods.unstructured import magnitude_prune

    exp = run.exp
    pruned = copy.deepcopy(large)
    extra: dict[str, Any] = {}
    sparse = exp.method == "unstructured"
    if exp.method == "l1":
        tgt = build_model(exp.target["name"], **exp.target["kwargs"])
        prune_to_widths(pruned, target_widths(tgt))
    elif exp.method == "slimming":
        scales = bn_scales(pruned)
        info = slim(pruned, exp.target)
        extra = {"threshold": info["threshold"], "removed_frac": info["removed_frac"],
                 "bn_scales": {k: v.tolist() for k, v in scales.items()},
                 "widths_before": list(info["widths_before"].values())}
    else:
        magnitude_prune(pruned, exp.target)
        extra = {"layer_density": {n: float(m.weight_mask.float().mean()) for n, m in pruned.named_modules()
                                   if hasattr(m, "weight_mask")}}
    pinfo = _arch_summary(pruned, exp.input_size, sparse=sparse)
    pinfo.update(accuracy=run.accuracy(pruned), **extra)
    macs_pruned = pinfo["macs_sparse"] if sparse else pinfo["macs"]
    pinfo["flops_pruned"] = 1 - macs_pruned / large_info["macs"]
    pinfo["params_pruned"] = 1 - (pinfo["params_nonzero"] if sparse else pinfo["params"]) / large_info["params"]
    run.log(f"pruned ({exp.method}): {100 * pinfo['accuracy']:.2f}% before training, "
            f"{100 * pinfo['flops_pruned']:.1f}% FLOPs and {100 * pinfo['params_pruned']:.1f}% params pruned")
    return pruned, pinfo, macs_pruned


def _finetune_arm(run: _Run, pruned: nn.Module, init: int) -> _ArmPlan:
    """The ``finetune`` arm: the pruned model itself (inherited weights), ``finetune_epochs`` at
    the constant ``finetune_lr``."""
    p = run.protocol
    return _ArmPlan(pruned, p.finetune_epochs, p.finetune_lr, (), init)


def _scratch_arm(run: _Run, arm: str, pruned: nn.Module, masks: Mapping[str, torch.Tensor] | None,
                 scratch_b: int, init: int) -> _ArmPlan:
    """The ``scratch_e`` / ``scratch_b`` arms: the pruned architecture, randomly initialised
    (seed ``init``; with the same masks for unstructured pruning), trained with the large
    model's schedule for ``epochs`` or ``scratch_b`` epochs."""
    from pruninglib.methods.unstructured import apply_masks

    p = run.protocol
    m = fresh_like(pruned, init)
    if masks is not None:
        apply_masks(m, masks)  # type: ignore[arg-type]
    return _ArmPlan(m, scratch_b if arm == "scratch_b" else p.epochs, p.lr, p.milestones, init)


def _uniform_arm(run: _Run, large: nn.Module, params: int, init: int) -> _ArmPlan:
    """The ``uniform_e`` arm (slimming only): the large VGG thinned by one factor to ``params``
    parameters (:func:`pruninglib.methods.slimming.uniform_vgg_cfg`), randomly initialised (seed
    ``init``), trained like Scratch-E."""
    from pruninglib.methods.slimming import uniform_vgg_cfg, vgg_cfg_of, vgg_param_count

    if not isinstance(large, CifarVGG):
        raise ValueError("the uniform_e arm is implemented for CifarVGG models")
    p = run.protocol
    first = next(mm for mm in large.features if isinstance(mm, nn.Conv2d))
    ncls = large.classifier[-1].out_features
    cfg_u, factor = uniform_vgg_cfg(vgg_cfg_of(large), params, first.in_channels, ncls)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init)
        m = build_model("cifar_vgg", cfg=cfg_u, in_channels=first.in_channels, num_classes=ncls,
                        width=1.0).to(run.device)
    extra = {"factor": factor, "param_target": params, "param_check": vgg_param_count(cfg_u, first.in_channels, ncls)}
    return _ArmPlan(m, p.epochs, p.lr, p.milestones, init, extra)


def _train_arm(run: _Run, arm: str, k: int, plan: _ArmPlan, base_key: dict[str, Any]) -> dict[str, Any]:
    """Step 3 of :func:`run_experiment` for arm number ``k``: train the plan's model (checkpointed
    and resumable; data order from ``seed + 7 (k + 1)``) and evaluate it."""
    akey = dict(base_key, arm=arm, epochs_arm=plan.epochs, lr_arm=plan.lr, ms=list(plan.milestones), init=plan.init)
    hist = train_resumable(plan.model, run.train_set, plan.epochs, plan.lr, milestones=plan.milestones,
                           seed=run.seed + 7 * (k + 1), ckpt_path=run.ckpt(arm, akey),
                           desc=f"{run.exp.name} {arm}", **run.train_kw)
    res = {"accuracy": run.accuracy(plan.model), "epochs": plan.epochs, "lr": plan.lr, "history": hist,
           "seconds": sum(h["seconds"] for h in hist)}
    if plan.extra is not None:
        res.update(_arch_summary(plan.model, run.exp.input_size), **plan.extra)
    run.log(f"{arm}: {100 * res['accuracy']:.2f}% after {plan.epochs} epochs")
    return res


def run_experiment(exp: Experiment, protocol: Protocol, train_set: Dataset, test_set: Dataset,
                   seed: int = 0, device: torch.device | str | None = None,
                   ckpt_dir: str | os.PathLike | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = print, data_id: str | None = None) -> dict[str, Any]:
    """Run the whole protocol for one experiment and one seed.

    1. Train the large model (``protocol.epochs``; with Network Slimming's penalty when
       ``exp.sparsity > 0``). Its checkpoint is keyed by the model spec, penalty, protocol and
       seed only, so experiments sharing a large model (L1 and unstructured pruning of the same
       VGG) train it once when they share ``ckpt_dir``.
    2. Prune a copy: L1-norm to the predefined widths, slimming's global threshold, or global
       magnitude masks.
    3. Run the arms: ``finetune`` (inherited weights, ``finetune_epochs`` at ``finetune_lr``),
       ``scratch_e`` (random init, ``epochs``), ``scratch_b`` (random init,
       :func:`scratch_b_epochs`; for unstructured pruning the FLOPs are the sparse MACs),
       ``uniform_e`` (slimming only: a uniformly thinned VGG with the same parameter count,
       random init, ``epochs``).

    Every training run checkpoints after each epoch under ``ckpt_dir`` and resumes if
    interrupted; the checkpoint names are keys of everything the run depends on (model spec,
    protocol, seed, method, target and ``data_id``, by default :func:`dataset_fingerprint` of
    ``train_set``), so changed settings never reuse a stale run. The datasets are injected
    (CIFAR-10, Fashion-MNIST, synthetic data in tests).

    Returns:
        ``{"experiment", "method", "seed", "large": {...}, "pruned": {...}, "arms": {arm: {...}}}``
        with accuracies in [0, 1], MACs, parameters, widths, epochs, histories and ``seconds``
        (the measured training time, summed over the epochs, so it survives a resume).

    Used in lesson 05.
    """
    from pruninglib.methods.unstructured import get_masks

    p = protocol
    root = Path(ckpt_dir) if ckpt_dir is not None else None
    run = _Run(exp=exp, protocol=p, train_set=train_set, seed=seed,
               device=torch.device(device) if device is not None else torch.device("cpu"), root=root,
               train_kw=dict(momentum=p.momentum, weight_decay=p.weight_decay, batch_size=p.batch_size,
                             gamma=p.gamma, max_batches=p.max_batches, num_workers=p.num_workers,
                             eval_set=test_set if p.eval_every else None, eval_every=p.eval_every,
                             eval_batch_size=p.eval_batch_size, progress=progress),
               sched=dict(lr=p.lr, milestones=p.milestones, gamma=p.gamma, momentum=p.momentum,
                          wd=p.weight_decay, bs=p.batch_size, max_batches=p.max_batches,
                          data=data_id or (dataset_fingerprint(train_set) if root is not None else "")),
               test_loader=make_loader(test_set, p.eval_batch_size), say=log or (lambda s: None))

    large, large_info, lkey = _train_large(run)                     # 1. the large model
    pruned, pinfo, macs_pruned = _prune_copy(run, large, large_info)  # 2. a pruned copy
    masks = get_masks(pruned) if exp.method == "unstructured" else None

    arms: dict[str, dict[str, Any]] = {}                              # 3. the arms
    base_key = dict(lkey, method=exp.method, target=exp.target)
    eb = scratch_b_epochs(p.epochs, large_info["macs"], macs_pruned, p.scratch_b_max_factor)
    for k, arm in enumerate(exp.arms):
        init = seed + 1000 * (k + 1)
        if arm == "finetune":
            plan = _finetune_arm(run, pruned, init)
        elif arm == "uniform_e":
            plan = _uniform_arm(run, large, pinfo["params"], init)
        else:
            plan = _scratch_arm(run, arm, pruned, masks, eb, init)
        arms[arm] = _train_arm(run, arm, k, plan, base_key)
    return {"experiment": exp.name, "method": exp.method, "label": exp.label, "pruned_label": exp.pruned_label,
            "seed": seed, "protocol": p.as_dict(), "large": large_info, "pruned": pinfo, "arms": arms}


# ------------------------------------------------------------------------------ summaries


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value). Used in lesson 05."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def arm_accuracies(results: Sequence[Mapping[str, Any]], experiment: str) -> dict[str, list[float]]:
    """``{"unpruned": [...], "pruned": [...], arm: [...]}`` accuracies (%) of one experiment over seeds.

    Used in lesson 05.
    """
    rows = [r for r in results if r["experiment"] == experiment]
    out: dict[str, list[float]] = {"unpruned": [100 * r["large"]["accuracy"] for r in rows],
                                   "pruned": [100 * r["pruned"]["accuracy"] for r in rows]}
    for arm in ARMS:
        vals = [100 * r["arms"][arm]["accuracy"] for r in rows if arm in r["arms"]]
        if vals:
            out[arm] = vals
    return out


def summarize(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """``{experiment: {column: (mean %, std %, n seeds)}}`` over the seeds of every experiment. Used in lesson 05."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for name in dict.fromkeys(r["experiment"] for r in results):
        acc = arm_accuracies(results, name)
        out[name] = {k: (*mean_std(v), len(v)) for k, v in acc.items()}
    return out


def _cell(ms: tuple[float, float] | tuple[float, float, int] | None, digits: int = 2) -> str:
    if ms is None:
        return "—"
    m, s = ms[0], ms[1]
    if m != m:  # nan
        return "—"
    return f"{m:.{digits}f} (±{s:.{digits}f})"


def results_rows(results: Sequence[Mapping[str, Any]], dataset: str,
                 paper: Mapping[str, Mapping[str, Any]] | None = None,
                 paper_keys: Mapping[str, str] | None = None) -> tuple[list[list[str]], list[str]]:
    """The rows and headers of :func:`results_table` (cells already formatted), for
    :func:`pruninglib.show_table`. Used in lesson 05.

    Returns:
        ``(rows, headers)``.
    """
    paper = PAPER_RESULTS if paper is None else paper
    paper_keys = paper_keys or {}
    summ = summarize(results)
    with_uniform = any("uniform_e" in s for s in summ.values())
    head = ["Dataset", "Model", "", "Unpruned", "Pruned model", "Fine-tuned", "Scratch-E", "Scratch-B"]
    if with_uniform:
        head.append("Uniform-E")
    rows: list[list[str]] = []
    for name, s in summ.items():
        r0 = next(r for r in results if r["experiment"] == name)
        n = s["unpruned"][2]
        row = [dataset, r0.get("label", name), f"ours (n={n})", _cell(s["unpruned"]), r0.get("pruned_label", ""),
               _cell(s.get("finetune")), _cell(s.get("scratch_e")), _cell(s.get("scratch_b"))]
        if with_uniform:
            row.append(_cell(s.get("uniform_e")))
        rows.append(row)
        pk = paper_keys.get(name, name)
        if pk in paper:
            pr = paper[pk]
            row = [pr["dataset"], pr["model"], "paper", _cell(pr.get("unpruned")), pr["pruned"],
                   _cell(pr.get("finetune")), _cell(pr.get("scratch_e")), _cell(pr.get("scratch_b"))]
            if with_uniform:
                row.append("—")
            rows.append(row)
    return rows, head


def results_table(results: Sequence[Mapping[str, Any]], dataset: str,
                  paper: Mapping[str, Mapping[str, Any]] | None = None,
                  paper_keys: Mapping[str, str] | None = None) -> str:
    """A Markdown table in the layout of Liu et al. 2019, Table 1, ours beside the paper's.

    Columns: Dataset, Model, Unpruned, Pruned model, Fine-tuned, Scratch-E, Scratch-B
    (+ Uniform-E when run). Each of our experiments gets a row "ours (n seeds)" and, when
    ``paper`` has its key (``paper_keys`` maps our name to the paper's), a row "paper".
    Accuracies in %, mean (± std over seeds). The rows: :func:`results_rows`.

    No lesson calls it directly (its tests do).
    """
    rows, head = results_rows(results, dataset, paper, paper_keys)
    return markdown_table(rows, headers=head, fmt=str)


# ------------------------------------------------------------------------------ lesson 05's displays

#: How the lesson names the columns of :func:`arm_accuracies` in figures, tables and sentences.
ARM_LABELS: dict[str, str] = {"unpruned": "large", "pruned": "pruned, no training", "finetune": "fine-tuned",
                              "scratch_e": "Scratch-E", "scratch_b": "Scratch-B", "uniform_e": "uniform, Scratch-E"}

#: The words of :func:`spread_verdict`'s outcomes in :func:`verdict_lines`.
VERDICT_WORDS: dict[str, str] = {"tie": "within the seed-to-seed spread of", "higher": "above", "lower": "below",
                                 "single": "(one seed, so no spread to judge it by) against"}


def plot_arm_bars(results: Sequence[Mapping[str, Any]], experiment: str, ax: Any, title: str,
                  labels: Mapping[str, str] | None = None) -> Any:
    """Bars of one experiment's test accuracy (%) per arm: the mean over seeds with its standard
    deviation as error bar, and every single run as a dot. The large model comes first (grey);
    "pruned, no training" is left out. Used in lesson 05.

    Args:
        results: :func:`run_experiment` results (any experiments; ``experiment`` picks one).
        experiment: the experiment's name.
        ax: a matplotlib axes.
        title: the axes title.
        labels: arm -> tick label (default :data:`ARM_LABELS`); its order is the bars' order.

    Returns:
        ``ax``.
    """
    labels = ARM_LABELS if labels is None else labels
    acc = arm_accuracies(results, experiment)
    keys = [k for k in labels if k in acc and k != "pruned"]
    ms = [mean_std(acc[k]) for k in keys]
    ax.bar(range(len(keys)), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=4,
           color=["0.6"] + [f"C{i}" for i in range(len(keys) - 1)])
    for i, k in enumerate(keys):
        ax.plot([i] * len(acc[k]), acc[k], "k.", ms=5)
    lo = min(min(acc[k]) for k in keys)
    ax.set_ylim(max(0, lo - 5), min(100, max(max(acc[k]) for k in keys) + 2))
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([labels[k] for k in keys], rotation=20)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    return ax


def training_budget_rows(results: Sequence[Mapping[str, Any]], n_train: int,
                         labels: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """One row per experiment: the training compute of every route to the small model, as a
    multiple of the large model's pre-training (:func:`training_cost`, FLOPs model; for
    unstructured pruning the sparse MACs), and the measured wall time per run (mean over seeds).
    Used in lesson 05 (the fairness note), shown with :func:`pruninglib.show_table`.

    Args:
        results: :func:`run_experiment` results.
        n_train: training images per epoch.
        labels: arm -> name (default :data:`ARM_LABELS`).
    """
    labels = ARM_LABELS if labels is None else labels
    rows = []
    for name in dict.fromkeys(r["experiment"] for r in results):
        rs = [r for r in results if r["experiment"] == name]
        r = rs[0]
        macs_p = r["pruned"].get("macs_sparse", r["pruned"]["macs"])
        pre = training_cost(r["large"]["epochs"], n_train, r["large"]["macs"])
        ft = training_cost(r["arms"]["finetune"]["epochs"], n_train, macs_p) if "finetune" in r["arms"] else 0.0
        cost = {"pre-training": pre, "pre-training + fine-tuning": pre + ft}
        for arm in ("scratch_e", "scratch_b", "uniform_e"):
            if arm in r["arms"]:
                cost[labels[arm]] = training_cost(r["arms"][arm]["epochs"], n_train, r["arms"][arm].get("macs", macs_p))
        secs = {"pre-training": statistics.fmean(x["large"]["seconds"] for x in rs)}
        secs.update({labels[a]: statistics.fmean(x["arms"][a]["seconds"] for x in rs) for a in r["arms"]})
        rows.append({"experiment": f"{r['label']} → {r['pruned_label']}",
                     "training compute (× pre-training, FLOPs model)": ", ".join(f"{k} {v / pre:.2f}"
                                                                                for k, v in cost.items()),
                     "measured wall time per run (mean)": ", ".join(f"{k} {v:.1f} s" for k, v in secs.items())})
    return rows


def spread_verdict(mean_a: float, std_a: float, mean_b: float, std_b: float, n: int) -> tuple[float, str]:
    """Compare two means over ``n`` seeds: the difference ``mean_a - mean_b`` and ``"tie"`` when
    it is at most the combined spread :math:`\\sqrt{s_a^2 + s_b^2}`, else ``"higher"`` or
    ``"lower"``; ``"single"`` for one seed (no spread to judge by). Used in lesson 05."""
    d = mean_a - mean_b
    if n < 2:
        return d, "single"
    if abs(d) <= math.hypot(std_a, std_b):
        return d, "tie"
    return d, ("higher" if d > 0 else "lower")


def verdict_lines(results: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None = None,
                  paper: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """One Markdown bullet per comparison: Scratch-E and Scratch-B against fine-tuning, the
    uniform network against Scratch-E, judged by :func:`spread_verdict`; where ``paper``
    (default :data:`PAPER_RESULTS`, 5 runs) has both columns, the paper's difference and
    whether ours agrees. Used in lesson 05 ("What we saw")."""
    labels = ARM_LABELS if labels is None else labels
    paper = PAPER_RESULTS if paper is None else paper
    lines = []
    for name, s in summarize(results).items():
        r = next(x for x in results if x["experiment"] == name)
        for arm in ("scratch_e", "scratch_b", "uniform_e"):
            base = "finetune" if arm != "uniform_e" else "scratch_e"
            if arm not in s or base not in s:
                continue
            d, ours = spread_verdict(s[arm][0], s[arm][1], s[base][0], s[base][1], s[arm][2])
            text = (f"- **{r['label']} → {r['pruned_label']}**: {labels[arm]} is {d:+.2f} points, "
                    f"{VERDICT_WORDS[ours]} {labels[base]}")
            pr = paper.get(name)
            if pr and arm in pr and base in pr:
                pd, theirs = spread_verdict(pr[arm][0], pr[arm][1], pr[base][0], pr[base][1], 5)
                verdict = "**cannot tell**" if ours == "single" else ("**agrees**" if ours == theirs else "**differs**")
                text += f"; paper {pd:+.2f} ({VERDICT_WORDS[theirs].split(' of')[0]}) — {verdict}"
            lines.append(text + ".")
    return lines


# ------------------------------------------------------------------------------ paper mode


def cifar10_transforms(train: bool) -> Any:
    """The CIFAR-10 pipeline of the paper's code: pad 4, random 32x32 crop and horizontal flip
    when training; normalisation with the per-channel mean and std of the training set.

    Used in lesson 05.
    """
    from torchvision import transforms as T

    norm = T.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    if train:
        return T.Compose([T.Pad(4), T.RandomCrop(32), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    return T.Compose([T.ToTensor(), norm])


def paper_experiments(in_channels: int = 3, num_classes: int = 10,
                      include: Sequence[str] = ("vgg16_a", "resnet56_a", "resnet56_b", "vgg19_slim")) -> list[Experiment]:
    """The paper-mode experiments: VGG-16-A, ResNet-56-A/B (L1-norm, Li et al. 2017) and VGG-19
    with Network Slimming at 70 % (s = 1e-4), on CIFAR-10 at the paper's widths.

    Used in lesson 05.
    """
    from pruninglib.methods.l1_filters import predefined_target

    exps = []
    for name in include:
        if name in ("vgg16_a", "resnet56_a", "resnet56_b"):
            full, pruned = predefined_target(name, in_channels=in_channels, num_classes=num_classes)
            label = "VGG-16" if name == "vgg16_a" else "ResNet-56"
            plabel = {"vgg16_a": "VGG-16-A", "resnet56_a": "ResNet-56-A", "resnet56_b": "ResNet-56-B"}[name]
            exps.append(Experiment(name, "l1", full, pruned, label=label, pruned_label=plabel))
        elif name == "vgg19_slim":
            spec = {"name": "cifar_vgg", "kwargs": {"cfg": "vgg19", "in_channels": in_channels,
                                                    "num_classes": num_classes, "batch_norm": True}}
            exps.append(Experiment(name, "slimming", spec, 0.7, sparsity=1e-4,
                                   arms=("finetune", "scratch_e", "scratch_b", "uniform_e"),
                                   label="VGG-19", pruned_label="70% channels"))
        else:
            raise ValueError(f"unknown paper experiment {name!r}")
    return exps


def paper_phases(experiments: Sequence[Experiment], protocol: Protocol, n_seeds: int, n_train: int = 50_000,
                 device: torch.device | None = None, extra_runs: Mapping[str, float] | None = None) -> list:
    """Lesson 05's training at paper settings as :class:`pruninglib.estimate.Phase` units, for the time
    estimate printed before a paper run (issue 18): one phase per experiment, an SGD step of its large model
    at the protocol's batch size, counted for every seed over the large model's :math:`E` epochs and every
    arm (fine-tuning, Scratch-E, Scratch-B at :math:`E_B` epochs, Uniform-E), the pruned arms weighted by
    the pruned model's share of the MACs (Li et al.'s predefined targets; Network Slimming's 70 % of
    channels is counted at the large model's cost, an upper bound). ``extra_runs``: experiment name -> more
    arm-epochs at full cost (the unstructured experiment reuses the large VGG-16). Timed on 8 images on a
    CPU (:func:`pruninglib.estimate.timing_batch`). Used in lesson 05.
    """
    from pruninglib.estimate import Phase, sgd_step, timing_batch, training_flops

    b, phases = protocol.batch_size, []
    steps_per_epoch = -(-n_train // b)
    bt = timing_batch(b, device)
    for exp in experiments:
        large = build_model(exp.model["name"], **exp.model["kwargs"])
        macs = count_macs(large, exp.input_size)
        share = 1.0
        if exp.method == "l1":
            share = count_macs(build_model(exp.target["name"], **exp.target["kwargs"]), exp.input_size) / macs
        eb = scratch_b_epochs(protocol.epochs, 1.0, share, protocol.scratch_b_max_factor)
        arm_epochs = {"finetune": protocol.finetune_epochs, "scratch_e": protocol.epochs, "scratch_b": eb,
                      "uniform_e": protocol.epochs}
        epochs = protocol.epochs + share * sum(arm_epochs[a] for a in exp.arms)
        epochs += (extra_runs or {}).get(exp.name, 0.0)
        phases.append(Phase(f"{exp.label} SGD step, batch {b} ({exp.name}: {n_seeds} seeds)",
                            sgd_step(large, (bt, *exp.input_size[1:]), 10, device), n_seeds * epochs * steps_per_epoch,
                            training_flops(macs, b), per_call=bt / b))
    return phases
