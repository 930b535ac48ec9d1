r"""Transfer learning on a frozen backbone, then iterative Taylor pruning: the Cats-vs-Dogs case study.

Gildenblat's "Pruning deep neural networks to make them fast and small" (code:
jacobgil/pytorch-pruning) applies Molchanov et al. 2017 (ICLR), "Pruning Convolutional Neural
Networks for Resource Efficient Inference", to VGG16 fine-tuned on Kaggle's Dogs vs Cats:

1. **Transfer.** Freeze VGG16's ImageNet convolutions, train a new classifier on top.
2. **Rank.** Score every conv filter with the first-order Taylor criterion, Molchanov et al.
   2017, Eq. (7)-(8):

   .. math::
       \Theta_{TE}(z_l^{(k)}) = \Big|\frac{1}{M}\sum_m \frac{\partial C}{\partial z^{(k)}_{l,m}}\,
       z^{(k)}_{l,m}\Big|, \qquad
       \hat\Theta(z_l^{(k)}) = \frac{\Theta(z_l^{(k)})}{\sqrt{\sum_j \Theta(z_l^{(j)})^2}},

   (the registered criterion ``"taylor_2017"``, called here with ``kinds=("conv",)`` and
   ``normalize=True``).
3. **Prune.** Remove the :math:`n` globally lowest-ranked filters physically
   (:mod:`pruninglib.core.surgery`: the filter, the next conv's input channel, or the first
   Linear's :math:`7\times 7` block of inputs after the last conv).
4. **Fine-tune** all layers, and repeat 2-4 (Molchanov et al. 2017, Algorithm in Sec. 2).

The helpers here keep the notebook short and are unit-tested (``tests/test_transfer.py``,
``tests/test_lesson_04.py``):

* :func:`transfer_head`, :func:`cache_features`, :func:`train_head` -- a frozen backbone computes
  the same features every epoch, so compute them once and train only the head on them;
* :func:`rank_filters`, :func:`remove_lowest_filters`, :func:`prune_iteration` (one round: rank, remove,
  check), :func:`stage_record` (what is kept of every stage), :func:`prune_finetune_loop` -- the iteration loop;
* :func:`speedup_rows` -- every stage's MAC, size, latency and throughput ratios against the unpruned model;
* :func:`predict` -- the photos' predictions before and after (the grid is drawn by
  :func:`pruninglib.plots.plot_prediction_grid`; where size and time go is measured by
  :func:`pruninglib.core.metrics.measure_model`, :func:`~pruninglib.core.metrics.layer_times` and
  :func:`~pruninglib.core.metrics.part_shares`).
"""
from __future__ import annotations

import copy
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from pruninglib.criteria import Scores, get_criterion, lowest_units, normalize_per_layer
from pruninglib.core.gates import insert_gates, zero_units
from pruninglib.core.graph import prunable_layers
from pruninglib.core.surgery import prune_units
from pruninglib.train import fit, make_loader

__all__ = [
    "transfer_head", "cache_features", "train_head", "unfreeze", "finetune",
    "conv_counts", "total_conv_filters", "rank_filters", "remove_lowest_filters", "prune_iteration",
    "stage_record", "prune_finetune_loop", "speedup_rows", "predict", "paper_phases", "SMOKE_CAPS",
]


# ----------------------------------------------------------------------------- transfer


#: Lesson 04's ``--smoke`` caps (issue 18): paper mode (VGG16 at 224 px, 512 filters per iteration) with a few
#: photos, two pruning iterations, one epoch per phase and the smallest timing loops.
SMOKE_CAPS: dict[str, Any] = dict(n_train_per_class=2, n_test_per_class=6, head_epochs=1, iterations=2,
                                  finetune_epochs=1, final_epochs=1, lat_repeats=1, throughput_batch=2)

def _check_vgg_like(model: nn.Module) -> None:
    missing = [a for a in ("features", "avgpool", "classifier") if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} has no {missing}: the transfer helpers expect a torchvision-VGG-like "
            "model with .features (backbone), .avgpool and .classifier, e.g. "
            "pruninglib.models.build_model('vgg16_transfer')")


def transfer_head(model: nn.Module) -> nn.Sequential:
    """The part of a VGG-like model after the backbone: ``avgpool -> flatten -> classifier``.

    The returned ``nn.Sequential`` *shares* its modules with ``model``: training it trains
    ``model.classifier``, and ``model(x) == transfer_head(model)(model.features(x))``.

    Raises:
        TypeError: if ``model`` lacks ``features``, ``avgpool`` or ``classifier``.

    Used in lesson 04.
    """
    _check_vgg_like(model)
    return nn.Sequential(model.avgpool, nn.Flatten(1), model.classifier)


@torch.no_grad()
def cache_features(model: nn.Module, dataset: Dataset, batch_size: int = 64,
                   device: torch.device | None = None, progress: bool = False) -> TensorDataset:
    """Run the frozen backbone ``model.features`` once over ``dataset`` and keep its outputs.

    With a frozen backbone and no augmentation, every epoch would recompute exactly these
    tensors; caching them turns ``E`` backbone passes into one (the head then trains on
    ``(features, label)`` pairs in memory). Features are stored on the CPU, before the
    adaptive average pool (``512 x s/32 x s/32`` for an ``s``-pixel input), which is
    smaller than the 25,088 classifier inputs at ``s < 224``.

    Args:
        model: a VGG-like model (see :func:`transfer_head`).
        dataset: yields ``(image tensor, label)``.
        batch_size: images per forward pass.
        device: where to run the backbone (default: the model's device).
        progress: show a tqdm bar.

    Returns:
        ``TensorDataset(features, labels)``. The global random state is left as it was, so what
        follows is the same whether the features were computed or loaded from a cache.

    Used in lesson 04.
    """
    _check_vgg_like(model)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, labels = [], []
    # a generator of its own: iterating a DataLoader draws a seed from the global RNG otherwise, and a
    # lesson that computes the features would then continue from another random state than one that
    # loads them from the cache
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    for x, y in tqdm(loader, desc="caching features", leave=False, disable=not progress):
        feats.append(model.features(x.to(device)).cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    if not feats:
        raise ValueError("cache_features got an empty dataset; check the data subset sizes")
    return TensorDataset(torch.cat(feats), torch.cat(labels))


def train_head(model: nn.Module, features: TensorDataset, epochs: int, lr: float = 1e-4,
               momentum: float = 0.9, batch_size: int = 32, seed: int = 0,
               val_features: TensorDataset | None = None, progress: bool = True) -> list[dict]:
    """Train ``model.classifier`` on cached backbone features (the transfer step).

    Same optimiser as the blog post (SGD, lr 1e-4, momentum 0.9), applied to the
    parameters of the classifier only. Dropout is active (the head is in train mode).

    Args:
        model: a VGG-like model; only ``model.classifier`` is updated.
        features: from :func:`cache_features` on the training set.
        epochs: passes over ``features``.
        lr, momentum: SGD settings.
        batch_size: minibatch size; the order is fixed by ``seed``.
        val_features: cached test features, evaluated after every epoch.
        progress: tqdm bars.

    Returns:
        The per-epoch history of :func:`pruninglib.train.fit`.

    Used in lesson 04.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    head = transfer_head(model)
    params = [p for p in model.classifier.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model.classifier has no trainable parameters; call unfreeze(model.classifier)")
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    loader = make_loader(features, batch_size, shuffle=True, seed=seed)
    val = make_loader(val_features, 256) if val_features is not None else None
    return fit(head, loader, epochs, optimizer=opt, val_loader=val, progress=progress)


def unfreeze(model: nn.Module) -> nn.Module:
    """Set ``requires_grad=True`` on every parameter (fine-tuning after pruning trains all layers).

    Used in lesson 04.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def finetune(model: nn.Module, dataset: Dataset, epochs: int = 1, lr: float = 1e-3,
             momentum: float = 0.9, batch_size: int = 32, seed: int = 0,
             progress: bool = True, ckpt_path: str | os.PathLike | None = None,
             signature: dict[str, Any] | None = None) -> list[dict]:
    """Fine-tune *all* layers after a pruning step (blog post: SGD, lr 1e-3, momentum 0.9).

    A new optimiser is made for every call: after surgery the parameter tensors are new. With
    ``ckpt_path`` it checkpoints after every epoch (:func:`pruninglib.checkpoint.fit_resumable`): run again
    after a kill, it continues where it stopped, and a finished fine-tune whose checkpoint is still there
    just reloads its weights -- so rerunning the whole pruning loop replays only its (deterministic)
    ranking and surgery up to the iteration that was interrupted.

    Used in lesson 04.
    """
    from pruninglib.checkpoint import fit_resumable

    unfreeze(model)
    loader = make_loader(dataset, batch_size, shuffle=True, seed=seed)
    sig = {**(signature or {}), "lr": lr, "momentum": momentum, "batch_size": batch_size, "seed": seed,
           "n": len(dataset)}  # type: ignore[arg-type]
    return fit_resumable(model, loader, epochs, ckpt_path=ckpt_path, signature=sig, lr=lr, momentum=momentum,
                         progress=progress)


# ------------------------------------------------------------------------------ pruning


def conv_counts(model: nn.Module) -> dict[str, int]:
    """``{conv layer name: filters}`` for every prunable conv (the blog's bar chart). Used in lesson 04."""
    return {pl.name: pl.num_units for pl in prunable_layers(model, ("conv",))}


def total_conv_filters(model: nn.Module) -> int:
    """Number of prunable conv filters (4,224 for VGG16: the 13 convs, the last one included). Used in lesson 04."""
    return sum(conv_counts(model).values())


def rank_filters(model: nn.Module, batches: Iterable, criterion: str = "taylor_2017",
                 normalize: bool = True, freeze_weights: bool = True,
                 loss_fn: Callable = F.cross_entropy) -> Scores:
    r"""Score every conv filter with a registered criterion (default: Taylor, Molchanov 2017 Eq. 7-8).

    Calls ``get_criterion(criterion)(model, batches, kinds=("conv",), normalize=normalize)``.
    The Taylor criterion needs :math:`\partial C/\partial z` (activation gradients) only, not
    weight gradients; with ``freeze_weights=True`` every parameter's ``requires_grad`` is
    switched off for the call (and restored), so the backward pass skips the weight
    gradients -- about a third of its cost -- and the ranking pass is cheaper than a training
    pass. The scores are the same either way.

    Args:
        model: a chain model with conv layers.
        batches: iterable of ``(x, y)``.
        criterion: name in the registry (``"taylor_2017"``, ``"weight_l1"``, ...).
        normalize: per-layer L2 normalisation (Eq. 8); needed to compare filters across layers.
        freeze_weights: skip weight gradients during the ranking pass.
        loss_fn: the cost :math:`C`.

    Returns:
        ``{conv layer name: scores}`` (higher = keep).

    Used in lesson 04.
    """
    fn = get_criterion(criterion)
    saved = {p: p.requires_grad for p in model.parameters()}
    try:
        if freeze_weights:
            for p in saved:
                p.requires_grad_(False)
        scores = fn(model, batches, loss_fn=loss_fn, kinds=("conv",), normalize=normalize)
    finally:
        for p, rg in saved.items():
            p.requires_grad_(rg)
    if normalize:  # idempotent; for criteria (magnitude ones) that ignore ``normalize``
        scores = normalize_per_layer(scores)
    return scores


def remove_lowest_filters(model: nn.Module, scores: Scores, n: int, min_keep: int = 1) -> dict[str, list[int]]:
    """Remove the ``n`` globally lowest-scored filters physically; return the plan used.

    Args:
        model: the model (pruned in place).
        scores: from :func:`rank_filters` (one tensor per conv layer, current widths).
        n: filters to remove (the blog post: 512 per iteration).
        min_keep: never leave a layer with fewer filters.

    Returns:
        ``{layer name: removed indices}`` (indices of the layer before this step).

    Raises:
        ValueError: if the scores do not match the model's current widths, or ``n`` is too large.

    Used in lesson 04.
    """
    counts = conv_counts(model)
    for name, s in scores.items():
        if name not in counts or len(s) != counts[name]:
            raise ValueError(f"scores for {name!r} have {len(s)} entries but the model's layer has "
                             f"{counts.get(name, 'no')} filters; re-rank after every pruning step")
    units = lowest_units(scores, n, min_keep=min_keep)
    prune_units(model, units)
    plan: dict[str, list[int]] = {}
    for name, i in units:
        plan.setdefault(name, []).append(i)
    return {k: sorted(v) for k, v in plan.items()}


def _check_schedule(model: nn.Module, filters_per_iteration: int, iterations: int) -> int:
    """Refuse a schedule that removes too many filters; return the model's filter count."""
    if filters_per_iteration <= 0 or iterations < 0:
        raise ValueError(f"need filters_per_iteration > 0 and iterations >= 0, got "
                         f"{filters_per_iteration} and {iterations}")
    start = total_conv_filters(model)
    n_layers = len(conv_counts(model))
    if filters_per_iteration * iterations > start - n_layers:
        raise ValueError(f"{iterations} x {filters_per_iteration} filters is more than the {start - n_layers} "
                         f"that can go from {start} (one must stay per layer); lower the schedule")
    return start


def stage_record(model: nn.Module, name: str, iteration: int, removed_now: int, plan: Mapping[str, Sequence[int]],
                 start_filters: int, rank_s: float = 0.0, finetune_s: float = 0.0,
                 evaluate_fn: Callable[[nn.Module], Mapping[str, Any]] | None = None,
                 measure_fn: Callable[[nn.Module], Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The record of one stage of :func:`prune_finetune_loop` (the model as it is now).

    Used in lesson 04 (through :func:`prune_finetune_loop`).

    Args:
        model: the model after this stage's surgery and fine-tuning.
        name: ``"unpruned"``, ``"iter 1"``, ..., ``"final"``.
        iteration: the round (0 for the unpruned model).
        removed_now: filters removed in this stage.
        plan: ``{layer name: removed indices}`` of this stage (``{}`` when nothing was removed).
        start_filters: the unpruned model's filter count (for ``removed_total``).
        rank_s, finetune_s: wall seconds of the ranking + surgery and of the fine-tuning.
        evaluate_fn, measure_fn: called with the model, in this order; their keys are merged in.

    Returns:
        ``stage``, ``iteration``, ``removed_now``, ``removed_total``, ``plan_sizes``, ``counts``,
        ``filters``, ``rank_s``, ``finetune_s``, then the callbacks' keys.
    """
    counts = conv_counts(model)
    rec: dict[str, Any] = {"stage": name, "iteration": iteration, "removed_now": removed_now,
                           "removed_total": start_filters - sum(counts.values()),
                           "plan_sizes": {k: len(v) for k, v in plan.items()},
                           "counts": counts, "filters": sum(counts.values()),
                           "rank_s": rank_s, "finetune_s": finetune_s}
    if evaluate_fn is not None:
        rec.update(evaluate_fn(model))
    if measure_fn is not None:
        rec.update(measure_fn(model))
    return rec


def prune_iteration(model: nn.Module, batches: Iterable, n: int, criterion: str = "taylor_2017",
                    iteration: int = 1, on_rank: Callable[[int, Scores], None] | None = None,
                    check_batch: torch.Tensor | None = None) -> tuple[dict[str, list[int]], float | None]:
    """One pruning round of :func:`prune_finetune_loop` without the fine-tuning: rank, remove, check.

    Ranks all conv filters on ``batches`` (:func:`rank_filters`), calls ``on_rank(iteration, scores)``,
    removes the ``n`` lowest (:func:`remove_lowest_filters`) and, with ``check_batch``, compares the
    pruned model with a gated copy of the model before surgery whose removed filters' gates are
    zero (eval mode; costs one model copy). Used in lesson 04 (through :func:`prune_finetune_loop`).

    Args:
        model: pruned in place.
        batches: iterable of ``(x, y)`` for the ranking pass.
        n: filters to remove.
        criterion: the ranking criterion's registry name.
        iteration: passed to ``on_rank``.
        on_rank: called with ``(iteration, scores)`` after the ranking pass.
        check_batch: the batch of the surgery check (``None``: no check).

    Returns:
        ``(plan, max_diff)``: ``{layer name: removed indices}`` and the max abs logit difference
        between the gated and the pruned model (``None`` without ``check_batch``).
    """
    scores = rank_filters(model, batches, criterion=criterion)
    if on_rank is not None:
        on_rank(iteration, scores)
    gated = None
    if check_batch is not None:
        gated = copy.deepcopy(model)
        insert_gates(gated, kinds=("conv",))
    plan = remove_lowest_filters(model, scores, n)
    diff = None
    if gated is not None:
        zero_units(gated, [(name, i) for name, idx in plan.items() for i in idx])
        diff = _max_diff(gated, model, check_batch)
        del gated
    return plan, diff


def prune_finetune_loop(model: nn.Module, rank_batches: Callable[[], Iterable], filters_per_iteration: int,
                        iterations: int, finetune_fn: Callable[[nn.Module, int], Any] | None = None,
                        final_finetune_fn: Callable[[nn.Module], Any] | None = None,
                        evaluate_fn: Callable[[nn.Module], Mapping[str, Any]] | None = None,
                        measure_fn: Callable[[nn.Module], Mapping[str, Any]] | None = None,
                        criterion: str = "taylor_2017", on_stage: Callable[[dict, nn.Module], None] | None = None,
                        on_rank: Callable[[int, Scores], None] | None = None,
                        check_batch: torch.Tensor | None = None, progress: bool = True) -> list[dict]:
    """Iterative pruning as in Molchanov et al. 2017 (Sec. 2) and Gildenblat's blog post.

    For ``iterations`` rounds: rank all conv filters, remove the ``filters_per_iteration`` lowest
    and check the surgery (:func:`prune_iteration`), fine-tune (``finetune_fn``); finally
    ``final_finetune_fn`` (the blog post's 15 extra epochs). Stage 0 is the unpruned model.
    Every stage is evaluated and measured with the given callbacks (:func:`stage_record`).

    Args:
        model: pruned in place.
        rank_batches: returns a fresh iterable of ``(x, y)`` for each ranking pass.
        filters_per_iteration: filters removed per round (512 in the blog post).
        iterations: rounds (5 in the blog post: 2,560 of 4,224 filters).
        finetune_fn: ``finetune_fn(model, iteration)`` after each removal (``None``: no fine-tuning).
        final_finetune_fn: ``final_finetune_fn(model)`` after the last round (a stage ``"final"``).
        evaluate_fn: returns e.g. ``{"accuracy": ...}``; merged into each stage's record.
        measure_fn: returns e.g. :func:`measure_model`'s dict; merged likewise.
        criterion: the ranking criterion's registry name.
        on_stage: called with ``(record, model)`` after each stage (for snapshots, logging).
        on_rank: called with ``(iteration, scores)`` after each ranking pass.
        check_batch: if given, every surgery is checked against the gated model with the
            removed filters' gates at zero on this batch (eval mode); the max abs difference
            of the logits is stored as ``surgery_max_diff`` (costs one model copy per round).
        progress: tqdm bar over the rounds.

    Returns:
        One dict per stage: ``stage`` (``"unpruned"``, ``"iter 1"``, ..., ``"final"``),
        ``iteration``, ``removed_total``, ``removed_now``, ``plan_sizes``, ``counts``, ``filters``,
        timings ``rank_s`` / ``finetune_s`` (wall seconds), ``surgery_max_diff`` (with
        ``check_batch``), plus the callbacks' keys.

    Raises:
        ValueError: for a schedule that removes too many filters or non-positive settings.

    Used in lesson 04.
    """
    start = _check_schedule(model, filters_per_iteration, iterations)
    records: list[dict] = []

    def stage(name: str, it: int, removed_now: int, plan: Mapping[str, Sequence[int]],
              rank_s: float, ft_s: float) -> None:
        rec = stage_record(model, name, it, removed_now, plan, start, rank_s, ft_s, evaluate_fn, measure_fn)
        records.append(rec)
        if on_stage is not None:
            on_stage(rec, model)

    stage("unpruned", 0, 0, {}, 0.0, 0.0)
    for it in tqdm(range(1, iterations + 1), desc="prune iterations", disable=not progress):
        t0 = time.perf_counter()
        plan, diff = prune_iteration(model, rank_batches(), filters_per_iteration, criterion=criterion,
                                     iteration=it, on_rank=on_rank, check_batch=check_batch)
        t1 = time.perf_counter()
        if finetune_fn is not None:
            finetune_fn(model, it)
        t2 = time.perf_counter()
        stage(f"iter {it}", it, filters_per_iteration, plan, t1 - t0, t2 - t1)
        if diff is not None:  # added after on_stage was called: the record it saw has no such key
            records[-1]["surgery_max_diff"] = diff
    if final_finetune_fn is not None:
        t1 = time.perf_counter()
        final_finetune_fn(model)
        stage("final", iterations, 0, {}, 0.0, time.perf_counter() - t1)
    return records


@torch.no_grad()
def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    modes = a.training, b.training
    a.eval()
    b.eval()
    dev = next(b.parameters()).device
    diff = (a(x.to(dev)) - b(x.to(dev))).abs().max().item()
    a.train(modes[0])
    b.train(modes[1])
    return diff


# ----------------------------------------------------------------------------- results


def speedup_rows(records: Sequence[Mapping[str, Any]], devices: Sequence[str] = ("cpu",)) -> list[dict[str, Any]]:
    """Each stage against the first (the unpruned model): the ratios that Section 6 plots.

    Used in lesson 04.

    Args:
        records: :func:`prune_finetune_loop`'s stages, measured (``macs``, ``size_mb``, and
            ``latency_ms_<d>``, ``throughput_<d>`` for every device ``d``).
        devices: the device types that were timed.

    Returns:
        One dict per stage: ``stage``, ``mac_ratio`` (unpruned / this stage), ``size_ratio``
        (likewise), and per device ``speedup_<d>`` (batch-1 latency, unpruned / this stage) and
        ``thr_ratio_<d>`` (throughput, this stage / unpruned).
    """
    if not records:
        raise ValueError("speedup_rows needs at least one record (the unpruned stage)")
    base = records[0]
    rows = []
    for r in records:
        mac_ratio = base["macs"] / r["macs"]
        row = dict(stage=r["stage"], mac_ratio=mac_ratio, size_ratio=base["size_mb"] / r["size_mb"])
        for d in devices:
            row[f"speedup_{d}"] = base[f"latency_ms_{d}"] / r[f"latency_ms_{d}"]
            row[f"thr_ratio_{d}"] = r[f"throughput_{d}"] / base[f"throughput_{d}"]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ photos


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Class predictions (argmax) of ``model`` for a batch of images, in eval mode, on the CPU. Used in lesson 04."""
    if len(x) == 0:
        raise ValueError("predict got no images: pass at least one (N >= 1) image tensor")
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out




def paper_phases(settings: Mapping[str, Any], device: torch.device | None = None, n_train: int = 2000) -> list:
    """Lesson 04's long steps at paper settings as :class:`pruninglib.estimate.Phase` units, for the time
    estimate printed before a paper run (issue 18). Every unit is an SGD step of the whole VGG16 transfer model
    at ``settings["size"]`` px, counted at the unpruned cost (an upper bound: each pruning iteration makes the
    network cheaper): the head's epochs (the frozen backbone runs every step: paper mode augments, so features
    are not cached), one ranking pass per iteration (forward and backward), the fine-tuning epochs of every
    iteration and the final fine-tuning, over the blog post's ``n_train`` = 2,000 photos. Timed on one image
    on a CPU (:func:`pruninglib.estimate.timing_batch`). Used in lesson 04.
    """
    from pruninglib.core.metrics import count_macs
    from pruninglib.estimate import Phase, sgd_step, timing_batch, training_flops
    from pruninglib.models import vgg16_transfer

    net = vgg16_transfer(pretrained=False, freeze_features=False)
    side, b = int(settings["size"]), 32
    bt = timing_batch(b, device, cpu_max=1)
    steps_per_epoch = -(-n_train // b)
    epochs = (settings["head_epochs"] + settings["iterations"] * (1 + settings["finetune_epochs"])
              + settings["final_epochs"])
    macs = count_macs(net, (1, 3, side, side))
    return [Phase(f"VGG16 SGD step at {side} px, batch {b}", sgd_step(net, (bt, 3, side, side), 2, device),
                  epochs * steps_per_epoch, training_flops(macs, b), per_call=bt / b, warmup=0 if bt < b else None,
                  repeats=1 if bt < b else None)]
