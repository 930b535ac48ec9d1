r"""When and how many units to remove: the iterative schedule of Molchanov et al. 2019 and
greedy pruning without fine-tuning.

**Iterative pruning while fine-tuning** (Molchanov et al. 2019, Sec. 3 and the authors'
configs): train as usual; after every backward pass read the importance of every unit from the
gradients that pass already computed (for the gate criterion, :math:`(z_m\,\partial L/\partial z_m)^2`);
average it over the minibatches since the last pruning step (optionally smoothed across steps
with momentum 0.9); every ``every`` minibatches remove the ``per_step`` least important units by
zeroing their gates; stop at ``target`` units removed or when the training loss has risen by
more than ``max_loss_increase``. The 2019 default is 100 units every 30 minibatches on
ImageNet ResNets; small models need proportionally fewer (:func:`scaled_per_step`).

**Greedy pruning without fine-tuning** (the LeNet3 experiment of Molchanov et al. 2019,
Sec. 4.1): remove ``step`` units, re-score the remaining ones on a fixed data set, repeat;
record the loss after every step (:func:`greedy_prune`).
"""
from __future__ import annotations

import copy
import os
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from pruninglib.criteria.base import ScoreAverage, Scores, lowest_units
from pruninglib.criteria.magnitude import weight_l2
from pruninglib.criteria.taylor import weight_fo_unit_scores
from pruninglib.core.gates import get_gates, insert_gates, set_units
from pruninglib.core.graph import prunable_layers
from pruninglib.utils import close_bar

__all__ = ["ImportanceAccumulator", "IterativePruner", "scaled_per_step", "select_lowest",
           "GreedyResult", "greedy_prune", "greedy_scorer", "ONLINE_CRITERIA", "non_gate_parameters",
           "prune_while_finetuning"]

Unit = tuple[str, int]


class ImportanceAccumulator:
    r"""Average per-minibatch scores between pruning steps, with optional momentum across steps.

    As in the authors' code: within a pruning interval the scores are averaged; at a pruning
    step the interval average :math:`\bar s` either replaces the running value (``momentum=0``)
    or is blended in, :math:`v \leftarrow \mu v + (1-\mu)\bar s` (``momentum=0.9``): two
    :class:`~pruninglib.criteria.base.ScoreAverage`, one per interval and one across intervals.
    Used in lesson 02.
    """

    def __init__(self, momentum: float = 0.0) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self._interval = ScoreAverage()
        self._steps = ScoreAverage(momentum)
        self.value: Scores | None = None

    def update(self, scores: Scores) -> None:
        """Add one minibatch's scores (kept on their device until :meth:`flush`)."""
        self._interval.add(scores)

    @property
    def count(self) -> int:
        """Minibatches since the last :meth:`flush`."""
        return self._interval.count

    def flush(self) -> Scores:
        """Close the interval; return (and keep) the momentum-blended average."""
        if self._interval.count == 0:
            raise ValueError("no scores accumulated since the last flush; call update() first")
        self._steps.add(self._interval.result(torch.float64))
        self._interval = ScoreAverage()
        self.value = self._steps.result(torch.float64)
        return {k: v.float() for k, v in self.value.items()}


def _gate_fo(model: nn.Module) -> Scores:
    """:math:`(z\\,\\partial L/\\partial z)^2` from the gates' ``.grad`` (2019, Taylor FO on the gate)."""
    out = {}
    for name, g in get_gates(model).items():
        if g.weight.grad is None:
            raise ValueError("the gates have no gradient: call loss.backward() first, and keep the gates' "
                             "requires_grad=True (they need not be in the optimizer)")
        out[name] = (g.weight.detach() * g.weight.grad.detach()).pow(2)
    return out


def _weight_fo(model: nn.Module) -> Scores:
    """Taylor FO on the weights (:func:`~pruninglib.criteria.taylor.weight_fo_unit_scores`) from ``.grad``."""
    out = {}
    for pl in prunable_layers(model):
        if pl.module.weight.grad is None:
            raise ValueError(f"{pl.name}.weight has no gradient: call loss.backward() first")
        bias = getattr(pl.module, "bias", None)
        out[pl.name] = weight_fo_unit_scores(pl, [pl.module.weight.grad] + ([bias.grad] if bias is not None else []))
    return out


#: Criteria the schedule can read from a training step's gradients at no extra cost.
ONLINE_CRITERIA: dict[str, Callable[[nn.Module], Scores]] = {
    "taylor_fo_gate": _gate_fo, "taylor_fo_weight": _weight_fo, "weight_l2": weight_l2,
}


def scaled_per_step(num_units: int, reference_units: int = 100, reference_total: int = 12_000,
                    minimum: int = 1) -> int:
    """Scale the 2019 default of ``reference_units`` per step to a model with ``num_units`` units
    (``reference_total``: roughly the prunable units of the ImageNet ResNets it was set for).

    Used in lesson 02.
    """
    if num_units < 1:
        raise ValueError(f"num_units must be >= 1, got {num_units}")
    return max(minimum, round(reference_units * num_units / reference_total))


def select_lowest(scores: Scores, alive: dict[str, torch.Tensor], n: int, min_keep: int = 1) -> list[Unit]:
    """The ``n`` alive units with the lowest scores, never leaving a layer with fewer than
    ``min_keep`` alive units (ties broken by layer order, then index). Unlike
    :func:`~pruninglib.criteria.base.lowest_units` it returns fewer units, not an error, when
    fewer than ``n`` can go (a schedule simply stops there).

    Used in lessons 02 and 03.
    """
    removable = sum(max(0, int(alive[k].sum()) - min_keep) for k in scores)
    return lowest_units(scores, min(n, removable), min_keep, alive=alive)


def non_gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The model's parameters without the gates (give these to the optimizer: gates only
    measure importance, they are not trained).

    Used in lesson 02.
    """
    return [p for n, p in model.named_parameters() if "pl_gate" not in n]


class IterativePruner:
    """Prune while fine-tuning (Molchanov et al. 2019): call :meth:`step` after every backward.

    Usage::

        pruner = IterativePruner(model, every=30, per_step=10, target=100)
        opt = torch.optim.SGD(non_gate_parameters(model), lr=1e-3, momentum=0.9)
        for x, y in loader:
            opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward()
            pruner.step(model, loss.item()); opt.step()
            if pruner.done: break
        pruner.finalize(model)   # physically remove the pruned units

    Args:
        model: the network; gates are inserted.
        criterion: a key of :data:`ONLINE_CRITERIA` or a function ``model -> Scores`` that reads
            the current gradients.
        every: minibatches between pruning steps (2019 default: 30).
        per_step: units removed per step (2019 default: 100; see :func:`scaled_per_step`).
        target: stop after this many units are removed (default: as many as can go).
        max_loss_increase: stop when the mean training loss of an interval exceeds the first
            interval's by more than this.
        momentum: momentum of :class:`ImportanceAccumulator` across steps (2019 configs: 0.9).
        min_keep: units every layer keeps.

    Used in lesson 02.
    """

    def __init__(self, model: nn.Module, criterion: str | Callable[[nn.Module], Scores] = "taylor_fo_gate",
                 every: int = 30, per_step: int = 100, target: int | None = None,
                 max_loss_increase: float | None = None, momentum: float = 0.0, min_keep: int = 1) -> None:
        if every < 1 or per_step < 1:
            raise ValueError(f"every and per_step must be >= 1, got every={every}, per_step={per_step}")
        if isinstance(criterion, str):
            if criterion not in ONLINE_CRITERIA:
                raise ValueError(f"unknown online criterion {criterion!r}; choose one of "
                                 f"{sorted(ONLINE_CRITERIA)} or pass a function model -> Scores")
            criterion = ONLINE_CRITERIA[criterion]
        self.criterion = criterion
        self.every, self.per_step, self.min_keep = every, per_step, min_keep
        self.layers = prunable_layers(model)
        total = sum(pl.num_units for pl in self.layers)
        cap = total - min_keep * len(self.layers)
        self.target = cap if target is None else min(target, cap)
        self.max_loss_increase = max_loss_increase
        self.gates = insert_gates(model, self.layers)
        for g in self.gates.values():
            g.weight.requires_grad_(True)
        self.alive = {pl.name: (self.gates[pl.name].weight.detach() != 0).cpu() for pl in self.layers}
        self.acc = ImportanceAccumulator(momentum)
        self.removed: list[Unit] = []
        self.history: list[dict[str, Any]] = []
        self.minibatches = 0
        self._loss_sum, self._loss_n = 0.0, 0
        self.reference_loss: float | None = None
        self.stopped_by: str | None = None

    @property
    def done(self) -> bool:
        """True once the target is reached or the loss tolerance stopped pruning."""
        return self.stopped_by is not None

    def step(self, model: nn.Module, loss: float | None = None) -> list[Unit]:
        """Accumulate this minibatch's importance; prune if it is time. Returns units removed now."""
        self.minibatches += 1
        if loss is not None:
            self._loss_sum += float(loss)
            self._loss_n += 1
        if self.done:
            return []
        self.acc.update(self.criterion(model))
        if self.acc.count < self.every:
            return []
        scores = {k: v * self.alive[k] for k, v in self.acc.flush().items()}
        interval_loss = self._loss_sum / self._loss_n if self._loss_n else math.nan
        self._loss_sum, self._loss_n = 0.0, 0
        if self.reference_loss is None:
            self.reference_loss = interval_loss
        if (self.max_loss_increase is not None and not math.isnan(interval_loss)
                and interval_loss > self.reference_loss + self.max_loss_increase):
            self.stopped_by = "loss"
            return []
        n = min(self.per_step, self.target - len(self.removed))
        units = select_lowest(scores, self.alive, n, self.min_keep)
        set_units(model, units, 0.0)
        for name, i in units:
            self.alive[name][i] = False
        self.removed += units
        self.history.append({"minibatch": self.minibatches, "removed": len(self.removed),
                             "interval_loss": interval_loss})
        if len(self.removed) >= self.target or not units:
            self.stopped_by = "target"
        return units

    def enforce(self, model: nn.Module) -> None:
        """Keep pruned gates at zero (call after ``optimizer.step()`` if gates are trained)."""
        set_units(model, self.removed, 0.0)

    def finalize(self, model: nn.Module) -> nn.Module:
        """Remove the gates and cut the pruned units out with :func:`pruninglib.core.surgery.prune_units`."""
        from pruninglib.core.gates import remove_gates
        from pruninglib.core.surgery import prune_units

        remove_gates(model)
        if self.removed:
            prune_units(model, self.removed)
        return model


# --------------------------------------------------------------------------- greedy, no fine-tuning


def prune_while_finetuning(model: nn.Module, pruner: "IterativePruner", loader: Sequence | Any,
                           optimizer: torch.optim.Optimizer, extra_minibatches: int = 0,
                           loss_fn: Callable = F.cross_entropy, device: torch.device | None = None) -> list[float]:
    """Fine-tune ``model`` while ``pruner`` removes units, then ``extra_minibatches`` more (Molchanov et al. 2019).

    Every minibatch: forward, backward, ``pruner.step`` (which reads the gradients just computed
    and, every ``pruner.every`` minibatches, zeros the gates of the least important units), then
    the optimiser step. Passes over ``loader`` repeat until the pruner is done and the extra
    minibatches have run. The model is left in eval mode, still gated (``pruner.finalize``
    removes the units). Used in lesson 02.

    Returns:
        The training loss of every minibatch.
    """
    device = device or next(model.parameters()).device
    losses: list[float] = []
    extra: int | None = None
    model.train()
    while extra is None or extra > 0:
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            pruner.step(model, loss.item())
            optimizer.step()
            losses.append(loss.item())
            if pruner.done:
                extra = extra_minibatches if extra is None else extra - 1
                if extra <= 0:
                    break
    model.eval()
    return losses


@dataclass
class GreedyResult:
    """The trajectory of :func:`greedy_prune`.

    Attributes:
        units_removed: units removed after each step (starting with 0).
        losses: loss on the data after each step (starting with the unpruned loss).
        order: the units in the order they were removed.
        count: units removed before the loss first rose by more than the threshold.
        threshold: the loss increase that defines ``count``.

    Used in lesson 03.
    """

    units_removed: list[int]
    losses: list[float]
    order: list[Unit] = field(default_factory=list)
    count: int = 0
    threshold: float = 1.0


def greedy_prune(model: nn.Module, batches: Sequence,
                 score_fn: Callable[[nn.Module, Sequence, dict[str, torch.Tensor]], Scores],
                 step: int = 1, max_loss_increase: float = 1.0, loss_fn: Callable = F.cross_entropy,
                 max_units: int | None = None, min_keep: int = 1, rescore: bool = True,
                 stop_at_threshold: bool = True, progress: bool = False,
                 desc: str = "greedy", score_batches: Sequence | None = None,
                 ckpt_path: str | os.PathLike | None = None, signature: dict[str, Any] | None = None) -> GreedyResult:
    r"""Greedy pruning without fine-tuning (Molchanov et al. 2019, Sec. 4.1, LeNet3 on MNIST).

    On a gated copy of ``model``: score the units with ``score_fn(model, batches, alive)`` (lower =
    remove first; ``alive`` maps each layer to a bool mask of the units still in, so a costly
    criterion can skip the others), zero the ``step`` lowest, measure the loss on ``batches``, repeat (re-scoring
    every step unless ``rescore=False``). ``count`` is the number of units removed before the
    loss first exceeds the unpruned loss by more than ``max_loss_increase``.

    The loss is always measured on ``batches``; ``score_batches`` lets the criteria score on a
    smaller fixed subset (e.g. the loss on the whole training set, the oracle on 5,000 images of it),
    which is what makes the experiment affordable on a CPU at full data size.

    Args:
        model: the trained network (not modified).
        batches: the fixed evaluation data, a sequence of ``(x, y)``.
        score_fn: importance of every unit of the gated model (e.g. the signed oracle
            :math:`\Delta L`, a Taylor criterion, weight magnitude, random).
        step: units removed per step.
        max_loss_increase: the threshold (the paper reports counts at 1.0).
        max_units: stop after this many (default: all but ``min_keep`` per layer).
        rescore: re-score after every step (False: rank once).
        stop_at_threshold: stop as soon as the threshold is crossed.
        progress: show a tqdm bar over the units removed.
        desc: the bar's label.
        score_batches: the data ``score_fn`` sees (default: ``batches``).
        ckpt_path: checkpoint after every step (:class:`pruninglib.checkpoint.Resumable`; the trajectory so far,
            and the scores when ``rescore=False``); run again after a kill with the same ``signature``, the loop
            puts the removed units' gates back to zero and continues -- the same result as an uninterrupted run,
            since the scorers are deterministic given the gates. Removed when the loop ends.
        signature: what the result depends on (the model, the data, the criterion), checked on resume.

    Used in lesson 03.
    """
    from pruninglib.checkpoint import Resumable
    from pruninglib.criteria.oracle import evaluate_loss

    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    m = copy.deepcopy(model)
    layers = prunable_layers(m)
    insert_gates(m, layers)
    m.eval()
    alive = {pl.name: torch.ones(pl.num_units, dtype=torch.bool) for pl in layers}
    cap = sum(pl.num_units - min_keep for pl in layers)
    cap = cap if max_units is None else min(cap, max_units)
    sig = {**(signature or {}), "step": step, "max_loss_increase": max_loss_increase, "cap": cap,
           "min_keep": min_keep, "rescore": rescore, "stop_at_threshold": stop_at_threshold}
    state = Resumable(ckpt_path, sig)
    done, saved = state.resume()
    scores: Scores | None = None
    crossed = False
    if done:
        last = saved[-1]
        res = GreedyResult(list(last["units_removed"]), list(last["losses"]), [tuple(u) for u in last["order"]],
                           int(last["count"]), max_loss_increase)
        crossed, scores = bool(last["crossed"]), last["scores"]
        set_units(m, res.order, 0.0)  # the gates of the units already removed, as they were
        for name, i in res.order:
            alive[name][i] = False
        print(f"[resume] {Path(ckpt_path).name}: continuing after {len(res.order)} of {cap} units removed")
    else:
        res = GreedyResult([0], [evaluate_loss(m, batches, loss_fn)], [], 0, max_loss_increase)
    base = res.losses[0]
    bar = tqdm(total=cap, initial=len(res.order), desc=desc, leave=False, disable=not progress)
    while len(res.order) < cap and not (crossed and stop_at_threshold):
        if scores is None or rescore:
            scores = score_fn(m, batches if score_batches is None else score_batches, alive)
        units = select_lowest(scores, alive, min(step, cap - len(res.order)), min_keep)
        if not units:
            break
        set_units(m, units, 0.0)
        for name, i in units:
            alive[name][i] = False
        res.order += units
        loss = evaluate_loss(m, batches, loss_fn)
        res.units_removed.append(len(res.order))
        res.losses.append(loss)
        bar.update(len(units))
        if not crossed and loss > base + max_loss_increase:
            crossed = True
            if stop_at_threshold:
                break
        if not crossed:
            res.count = len(res.order)
        state.save(len(res.order), [{"units_removed": res.units_removed, "losses": res.losses, "order": res.order,
                                     "count": res.count, "crossed": crossed, "scores": None if rescore else scores}])
    close_bar(bar)  # it may stop short of its total at the threshold
    state.clear()
    return res


def greedy_scorer(name: str, seed: int = 0, loss_fn: Callable = F.cross_entropy,
                  **kw: Any) -> Callable[[nn.Module, Sequence, dict[str, torch.Tensor]], Scores]:
    r"""A ``score_fn`` for :func:`greedy_prune`.

    ``"oracle"``: :math:`|\Delta L|`, the absolute change of the loss when each alive unit alone is
    removed (:func:`~pruninglib.criteria.oracle.oracle_loss_change`), so the greedy oracle removes the
    unit whose removal changes the loss least, as the authors' code does (NVlabs/Taylor_pruning,
    ``pruning_engine.py``, oracle method: ``abs(initial_loss - new_loss)``) and as Molchanov et al.
    2017, Sec. 2.2, argue (a removal that lowers the loss a lot is a big change too).
    ``"oracle_signed"``: the signed :math:`\Delta L` (removes the unit whose removal raises the loss
    least, or lowers it most). ``"random"``: a fixed random order drawn with ``seed``.
    Any other name: that registered criterion (e.g. ``"taylor_so_gate"``, ``"taylor_fo_gate"``,
    ``"weight_l2"``), called as ``fn(model, batches, loss_fn, **kw)``.

    Used in lesson 03.
    """
    from pruninglib.criteria import get_criterion
    from pruninglib.criteria.oracle import oracle_loss_change

    if name in ("oracle", "oracle_signed"):
        def score(m: nn.Module, batches: Sequence, alive: dict[str, torch.Tensor]) -> Scores:
            units = {k: torch.nonzero(v).flatten().tolist() for k, v in alive.items()}
            delta = oracle_loss_change(m, batches, loss_fn, units=units, **kw)
            return delta if name == "oracle_signed" else {k: v.abs() for k, v in delta.items()}
        return score
    if name == "random":
        return lambda m, batches, alive: get_criterion("random")(m, batches, seed=seed)
    fn = get_criterion(name)
    return lambda m, batches, alive: fn(m, batches, loss_fn, **kw)
