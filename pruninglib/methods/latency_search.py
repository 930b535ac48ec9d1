r"""How many channels per layer: uniform ratios, global ranking, and a NetAdapt-style search.

Three ways to turn one budget into per-layer widths:

* **Uniform**: every prunable layer keeps the same fraction :math:`r` of its channels; :math:`r`
  is the largest that meets the MACs budget (:func:`uniform_counts`).
* **Global ranking**: remove the globally least important channels (scores normalised per
  layer, Molchanov et al. 2017, Eq. 8) until the budget is met (:func:`global_counts`).
* **NetAdapt**, Yang et al. 2018 (ECCV), Sec. 3 and Algorithm 1: the problem

  .. math:: \max_{\text{Net}} \mathrm{Acc}(\text{Net}) \quad \text{s.t.}\quad
            \mathrm{Res}_j(\text{Net}) \le \mathrm{Bud}_j \qquad (1)

  is solved as a sequence of easier ones, each lowering the resource by :math:`\Delta R_i`,

  .. math:: \max_{\text{Net}_i} \mathrm{Acc}(\text{Net}_i) \quad \text{s.t.}\quad
            \mathrm{Res}_j(\text{Net}_i) \le \mathrm{Res}_j(\text{Net}_{i-1}) - \Delta R_{i,j}. \qquad (2)

  In each iteration every layer proposes the largest width that alone meets Eq. (2); its
  filters are chosen by magnitude (or by given scores), the proposal is (optionally) adapted
  and evaluated, and the most accurate proposal wins (:func:`netadapt_search`). The resource
  is either MACs (:class:`MacsModel`) or latency *measured on this device* and stored in a
  layer-wise lookup table (NetAdapt, Sec. 3.4; :func:`build_latency_table`): the latency of a
  network is predicted as the sum of its layers' entries,

  .. math:: \mathrm{Lat}(\text{Net}) \approx \sum_l T_l\big(c_{l-1}, c_l\big),

  where :math:`T_l` is the measured time of layer :math:`l` (conv, its BatchNorm, ReLU and
  pooling) with :math:`c_{l-1}` input and :math:`c_l` output channels.

Works for chain models (:class:`~pruninglib.models.CifarVGG`, :class:`~pruninglib.models.LeNet3`,
``nn.Sequential``): the layers are cut into segments at every Conv2d/Linear.
"""
from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field
from time import perf_counter
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pruninglib.core.graph import PrunableLayer, prunable_layers
from pruninglib.core.metrics import time_runs
from pruninglib.core.surgery import prune_channels
from pruninglib.utils import close_bar

__all__ = ["MacsModel", "uniform_counts", "global_counts", "width_grid", "LatencyTable",
           "build_latency_table", "time_module", "netadapt_search", "SearchResult"]

Widths = dict[str, int]


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if n and not list(m.children()) and type(m).__name__ != "Gate"]


def _io_shapes(model: nn.Module, example: torch.Tensor, modules: Sequence[nn.Module]) -> dict[int, tuple]:
    """Input and output shapes of ``modules`` for one forward pass of ``example``."""
    shapes: dict[int, tuple] = {}
    handles = [m.register_forward_hook(
        lambda mod, i, o: shapes.__setitem__(id(mod), (tuple(i[0].shape), tuple(o.shape)))) for m in modules]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return shapes


# ----------------------------------------------------------------------------- MACs as a function of widths

@dataclass
class _Op:
    name: str
    in_layer: str | None   # prunable producer feeding this op (its width is the op's input width)
    out_layer: str | None  # this op's own name when it is a prunable producer
    in_fixed: int
    out_fixed: int
    unit: int              # MACs per (input channel, output channel) pair


class MacsModel:
    r"""MACs of a chain model as a function of its prunable layers' widths.

    Each Conv2d costs :math:`H_\text{out} W_\text{out} k^2 \, c_\text{in} c_\text{out}` and each Linear
    :math:`f \, c_\text{in} c_\text{out}` (``f`` inputs per channel after a flatten), the
    convention of :func:`pruninglib.core.metrics.count_macs`, which it matches exactly.

    Args:
        model: a chain model (unpruned or pruned; its current widths are the full ones).
        example: an input batch (only its shape matters).

    Used in lesson 06.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        layers = prunable_layers(model)
        self.layers = [pl.name for pl in layers]
        self.full: Widths = {pl.name: pl.num_units for pl in layers}
        feeds = {id(pl.consumer): pl for pl in layers}
        ops = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        shapes = _io_shapes(model, example[:1], [m for _, m in ops])
        self.ops: list[_Op] = []
        for n, m in ops:
            if id(m) not in shapes:
                continue
            (ishape, oshape) = shapes[id(m)]
            prod = feeds.get(id(m))
            if isinstance(m, nn.Conv2d):
                if m.groups != 1:
                    raise ValueError(f"{n} is a grouped conv; MacsModel supports groups=1 only")
                unit = oshape[2] * oshape[3] * m.kernel_size[0] * m.kernel_size[1]
                cin, cout = m.in_channels, m.out_channels
            else:
                rows = int(np.prod(oshape[1:-1])) if len(oshape) > 2 else 1
                f = prod.spatial_factor() if prod is not None else 1
                unit = rows * f
                cin, cout = m.in_features // f, m.out_features
            own = n if n in self.full else None
            self.ops.append(_Op(n, prod.name if prod is not None else None, own, cin, cout, unit))

    def per_layer(self, widths: Mapping[str, int] | None = None) -> dict[str, int]:
        """MACs per sample of every Conv2d/Linear with ``widths`` (missing layers at full width)."""
        w = dict(self.full)
        if widths:
            w.update({k: int(v) for k, v in widths.items()})
        out = {}
        for op in self.ops:
            cin = w[op.in_layer] if op.in_layer else op.in_fixed
            cout = w[op.out_layer] if op.out_layer else op.out_fixed
            out[op.name] = op.unit * cin * cout
        return out

    def macs(self, widths: Mapping[str, int] | None = None) -> int:
        """MACs per sample with ``widths`` (missing layers at full width)."""
        return int(sum(self.per_layer(widths).values()))

    __call__ = macs


def uniform_counts(macs_model: MacsModel, fraction: float, layers: Sequence[str] | None = None,
                   min_keep: int = 1) -> tuple[Widths, float]:
    """The same kept ratio :math:`r` in every layer, the largest whose MACs are at most
    ``fraction`` of the full model's (bisection on :math:`r`; widths ``max(min_keep, round(r C))``).

    Returns:
        ``(widths, r)``.

    Raises:
        ValueError: for a budget below what ``min_keep`` channels per layer cost.

    Used in lesson 06.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    layers = list(layers) if layers is not None else macs_model.layers
    full = macs_model.macs()
    budget = fraction * full

    def widths_at(r: float) -> Widths:
        return {n: max(min_keep, min(macs_model.full[n], int(round(r * macs_model.full[n])))) for n in layers}

    if macs_model.macs(widths_at(0.0)) > budget:
        raise ValueError(f"a MACs fraction of {fraction} is below what {min_keep} channel(s) per layer cost "
                         f"({macs_model.macs(widths_at(0.0)) / full:.3f}); raise the budget")
    lo, hi = 0.0, 1.0
    if macs_model.macs(widths_at(1.0)) <= budget:
        return widths_at(1.0), 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if macs_model.macs(widths_at(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    return widths_at(lo), lo


def global_counts(scores: Mapping[str, torch.Tensor], macs_model: MacsModel, fraction: float,
                  min_keep: int = 1) -> dict[str, torch.Tensor]:
    """Remove the globally lowest-scoring channels, one at a time, until MACs <= ``fraction`` of full.

    Pass scores that are comparable across layers (e.g. ``taylor_2017`` with
    ``normalize=True``, Molchanov et al. 2017, Eq. 8).

    Returns:
        ``{layer: original indices kept}`` for every scored layer.

    Used in lesson 06.
    """
    full = macs_model.macs()
    budget = fraction * full
    widths = {n: len(s) for n, s in scores.items()}
    removed = {n: set() for n in scores}
    flat = sorted((float(v), li, i, n) for li, (n, s) in enumerate(scores.items())
                  for i, v in enumerate(s.detach().cpu().tolist()))
    k = 0
    while macs_model.macs(widths) > budget:
        while k < len(flat) and widths[flat[k][3]] <= min_keep:
            k += 1
        if k >= len(flat):
            raise ValueError(f"cannot reach {fraction} of the MACs while keeping {min_keep} channel(s) per layer")
        _, _, i, n = flat[k]
        removed[n].add(i)
        widths[n] -= 1
        k += 1
    return {n: torch.tensor([i for i in range(len(s)) if i not in removed[n]], dtype=torch.long)
            for n, s in scores.items()}


def width_grid(model: nn.Module, fractions: Sequence[float], min_width: int = 1) -> dict[str, list[int]]:
    """Candidate widths per prunable layer: ``round(f * C)`` for each fraction ``f`` (full width included).

    Used in lesson 06.
    """
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {list(fractions)}")
    out = {}
    for pl in prunable_layers(model):
        c = pl.num_units
        out[pl.name] = sorted({max(min_width, int(round(f * c))) for f in fractions} | {c})
    return out


# ----------------------------------------------------------------------------- latency lookup table

def _run_times(module: nn.Module, x: torch.Tensor, warmup: int, repeats: int,
               timer: Callable[[], float] | None) -> list[float]:
    # this module's perf_counter, looked up at call time (tests monkeypatch it)
    return time_runs(module, x, warmup, repeats, timer=timer or (lambda: perf_counter()))


def _reduce(times: Sequence[float], reduce: str) -> float:
    if reduce not in ("median", "min"):
        raise ValueError(f"reduce must be 'median' or 'min', got {reduce!r}")
    return float(statistics.median(times) if reduce == "median" else min(times))


def time_module(module: nn.Module, x: torch.Tensor, warmup: int = 2, repeats: int = 5,
                timer: Callable[[], float] | None = None, reduce: str = "median") -> float:
    """Seconds of ``module(x)`` (eval, no_grad): median (or min) of ``repeats`` timed runs after ``warmup``.

    The clock is this module's ``perf_counter`` unless ``timer`` is given (tests monkeypatch it).
    On a machine shared with other jobs ``reduce="min"`` is the steadier estimate of the
    undisturbed time (interruptions only ever add time).

    No lesson calls it directly (its tests do).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    _reduce([0.0], reduce)  # validates ``reduce``
    return _reduce(_run_times(module, x, warmup, repeats, timer), reduce)


@dataclass
class _Segment:
    name: str                  # the Conv2d/Linear that starts the segment ("" for a fixed prefix)
    in_layer: str | None
    out_layer: str | None
    in_grid: list[int]
    out_grid: list[int]
    times: np.ndarray          # (len(in_grid), len(out_grid)) seconds


def _interp(grid: Sequence[int], v: float) -> tuple[int, int, float]:
    """Indices ``i, j`` and weight ``t`` so that ``v = (1-t) grid[i] + t grid[j]`` (clamped)."""
    if len(grid) == 1 or v <= grid[0]:
        return 0, 0, 0.0
    if v >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    j = int(np.searchsorted(grid, v))
    i = j - 1
    return i, j, (v - grid[i]) / (grid[j] - grid[i])


@dataclass
class LatencyTable:
    """A layer-wise latency lookup table measured on one device (NetAdapt, Sec. 3.4).

    Attributes:
        segments: one entry per Conv2d/Linear (plus the layers after it up to the next one),
            with the measured seconds on a grid of (input width, output width).
        grid: the candidate widths per prunable layer.
        batch_size, threads, device, repeats, reduce: the measurement conditions.

    Used in lesson 06.
    """

    segments: list[_Segment]
    grid: dict[str, list[int]]
    batch_size: int
    threads: int
    device: str
    repeats: int
    reduce: str = "median"
    full: Widths = field(default_factory=dict)

    def segment_time(self, seg: _Segment, widths: Mapping[str, int]) -> float:
        """Seconds of one segment at ``widths`` (bilinear interpolation between grid points)."""
        a = widths.get(seg.in_layer, self.full.get(seg.in_layer)) if seg.in_layer else seg.in_grid[0]
        b = widths.get(seg.out_layer, self.full.get(seg.out_layer)) if seg.out_layer else seg.out_grid[0]
        i0, i1, s = _interp(seg.in_grid, a)
        j0, j1, t = _interp(seg.out_grid, b)
        T = seg.times
        return float((1 - s) * ((1 - t) * T[i0, j0] + t * T[i0, j1]) + s * ((1 - t) * T[i1, j0] + t * T[i1, j1]))

    def predict(self, widths: Mapping[str, int] | None = None) -> float:
        """Predicted seconds per forward pass of the batch: the sum of the segments' entries."""
        widths = dict(widths or {})
        return sum(self.segment_time(seg, widths) for seg in self.segments)

    __call__ = predict

    def entries(self) -> list[tuple[str, int, int, float]]:
        """Every measured entry as ``(segment, input width, output width, seconds)``."""
        return [(s.name, a, b, float(s.times[i, j])) for s in self.segments
                for i, a in enumerate(s.in_grid) for j, b in enumerate(s.out_grid)]

    def on_grid(self, widths: Mapping[str, int]) -> bool:
        """Whether every width is a grid point (then :meth:`predict` is a pure table look-up)."""
        return all(int(w) in self.grid[n] for n, w in widths.items() if n in self.grid)


def _resized(m: nn.Module, cin: int, cout: int, f: int) -> nn.Module:
    """A copy of layer ``m`` with ``cin`` input and ``cout`` output channels, its weights sliced from ``m``'s."""
    skip = torch.nn.utils.skip_init
    with torch.no_grad():
        if isinstance(m, nn.Conv2d):
            new = skip(nn.Conv2d, cin, cout, m.kernel_size, m.stride, m.padding, m.dilation,
                       bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
            new.weight.copy_(m.weight[:cout, :cin])
            if m.bias is not None:
                new.bias.copy_(m.bias[:cout])
            return new
        if isinstance(m, nn.Linear):
            new = skip(nn.Linear, cin * f, cout, bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
            new.weight.copy_(m.weight[:cout, :cin * f])
            if m.bias is not None:
                new.bias.copy_(m.bias[:cout])
            return new
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            new = copy.deepcopy(m)
            for name in ("weight", "bias"):
                if getattr(m, name, None) is not None:
                    setattr(new, name, nn.Parameter(getattr(m, name)[:cout].clone()))
            for name in ("running_mean", "running_var"):
                if getattr(m, name, None) is not None:
                    setattr(new, name, getattr(m, name)[:cout].clone())
            new.num_features = cout
            return new
    return copy.deepcopy(m)


_Job = tuple  # (leaves of the segment, head name or "", in layer, out layer, in grid, out grid, spatial factor)


def _segment_groups(model: nn.Module, example: torch.Tensor) -> tuple[list[list[tuple[str, nn.Module]]], dict]:
    """The model's leaves that run on ``example``, grouped into segments that each start at a
    Conv2d/Linear (a fixed prefix before the first one is its own segment), and their I/O shapes."""
    leaves = _leaves(model)
    shapes = _io_shapes(model, example, [m for _, m in leaves])
    groups: list[list[tuple[str, nn.Module]]] = []
    for n, m in leaves:
        if id(m) not in shapes:
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)) or not groups:
            groups.append([])
        groups[-1].append((n, m))
    return groups, shapes


def _segment_jobs(groups: list[list[tuple[str, nn.Module]]], feeds: dict[int, PrunableLayer], full: dict[str, int],
                  grid: Mapping[str, Sequence[int]]) -> list[_Job]:
    """For every segment: which prunable layers set its input and output widths, and their grids."""
    jobs = []
    for grp in groups:
        head_name, head = grp[0]
        weighted = isinstance(head, (nn.Conv2d, nn.Linear))
        prod = feeds.get(id(head)) if weighted else None
        f = prod.spatial_factor() if prod is not None and isinstance(head, nn.Linear) else 1
        if weighted:
            cin_fixed = head.in_channels if isinstance(head, nn.Conv2d) else head.in_features // f
            cout_fixed = head.out_channels if isinstance(head, nn.Conv2d) else head.out_features
        else:
            cin_fixed = cout_fixed = 0
        in_layer = prod.name if prod is not None else None
        out_layer = head_name if head_name in full else None
        in_grid = [int(v) for v in grid[in_layer]] if in_layer else [cin_fixed]
        out_grid = [int(v) for v in grid[out_layer]] if out_layer else [cout_fixed]
        jobs.append((grp, head_name if weighted else "", in_layer, out_layer, in_grid, out_grid, f))
    return jobs


def _segment_inputs(jobs: list[_Job], shapes: dict, device: torch.device, dtype: torch.dtype
                    ) -> tuple[dict[tuple[int, int], torch.Tensor], list[tuple[int, int, int, int, int]]]:
    """One random input per (segment, input width), and the table's cells
    ``(segment, i, j, input width, output width)``."""
    inputs: dict[tuple[int, int], torch.Tensor] = {}
    cells = []
    for k, (grp, name, in_layer, out_layer, in_grid, out_grid, f) in enumerate(jobs):
        ishape = shapes[id(grp[0][1])][0]
        for i, a in enumerate(in_grid):
            if not name:
                shape = ishape
            elif len(ishape) == 2:
                shape = (ishape[0], a * f)
            else:
                shape = (ishape[0], a) + ishape[2:]
            inputs[(k, i)] = torch.randn(shape, device=device, dtype=dtype)
            cells += [(k, i, j, a, b) for j, b in enumerate(out_grid)]
    return inputs, cells


def _time_cells(jobs: list[_Job], inputs: dict[tuple[int, int], torch.Tensor], cells: list, rounds: int,
                warmup: int, repeats: int, timer: Callable[[], float] | None, progress: bool
                ) -> dict[tuple[int, int, int], list[float]]:
    """Time every cell ``rounds`` times, round by round (each segment rebuilt at the cell's widths)."""
    runs: dict[tuple[int, int, int], list[float]] = {(k, i, j): [] for k, i, j, _, _ in cells}
    bar = tqdm(total=rounds * len(cells), desc="latency table", disable=not progress, leave=False)
    for r in range(rounds):
        for k, i, j, a, b in cells:
            grp, name, f = jobs[k][0], jobs[k][1], jobs[k][6]
            if name:  # the segment rebuilt at widths (a, b), weights sliced from the model's
                seq = nn.Sequential(*[_resized(m, a, b, f) for _, m in grp])
            else:
                seq = nn.Sequential(*[copy.deepcopy(m) for _, m in grp])
            runs[(k, i, j)] += _run_times(seq, inputs[(k, i)], warmup if r == 0 else 1, repeats, timer)
            bar.update(1)
    bar.close()
    return runs


def build_latency_table(model: nn.Module, example: torch.Tensor, grid: Mapping[str, Sequence[int]],
                        warmup: int = 2, repeats: int = 5, threads: int | None = None,
                        timer: Callable[[], float] | None = None, reduce: str = "median",
                        rounds: int = 1, progress: bool = False) -> LatencyTable:
    """Measure every segment of ``model`` at every grid width, on ``example``'s device and batch size.

    Each segment (a Conv2d or Linear and the BatchNorm / activation / pooling layers after it)
    is rebuilt with the candidate input and output widths (weights sliced from the model's;
    only the time matters), fed a random input of the right shape and timed like
    :func:`time_module`.

    Args:
        model: a chain model at full width.
        example: an input batch; its batch size and device are those the table is valid for.
        grid: candidate widths per prunable layer (:func:`width_grid`); must contain the full widths.
        warmup, repeats: runs per entry.
        reduce: ``"median"`` or ``"min"`` of the ``repeats`` timings (see :func:`time_module`).
        rounds: passes over the whole table; each entry pools the timings of all passes (a
            busy machine then disturbs every entry alike instead of a few entries badly).
        threads: ``torch.set_num_threads`` during the measurement (restored after).
        timer: a clock (default: this module's ``perf_counter``).
        progress: show a progress bar.

    Returns:
        A :class:`LatencyTable`.

    Used in lesson 06.
    """
    layers = prunable_layers(model)
    full = {pl.name: pl.num_units for pl in layers}
    missing = [n for n in full if n not in grid or full[n] not in grid[n]]
    if missing:
        raise ValueError(f"grid must list every prunable layer with its full width included; check {missing} "
                         "(use width_grid(model, fractions))")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    groups, shapes = _segment_groups(model, example)
    jobs = _segment_jobs(groups, {id(pl.consumer): pl for pl in layers}, full, grid)
    dev = example.device
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        inputs, cells = _segment_inputs(jobs, shapes, dev, example.dtype)
        runs = _time_cells(jobs, inputs, cells, rounds, warmup, repeats, timer, progress)
        segments = []
        for k, (grp, name, in_layer, out_layer, in_grid, out_grid, f) in enumerate(jobs):
            times = np.zeros((len(in_grid), len(out_grid)))
            for i in range(len(in_grid)):
                for j in range(len(out_grid)):
                    times[i, j] = _reduce(runs[(k, i, j)], reduce)
            segments.append(_Segment(name, in_layer, out_layer, in_grid, out_grid, times))
        n_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
    return LatencyTable(segments, {k: [int(v) for v in vs] for k, vs in grid.items()}, int(example.shape[0]),
                        n_threads, str(dev), repeats, reduce, full)


# ----------------------------------------------------------------------------- NetAdapt

@dataclass
class SearchResult:
    """Result of :func:`netadapt_search`.

    Attributes:
        model: the pruned network (not fine-tuned).
        widths: its width per prunable layer.
        kept: ``{layer: original indices kept}``.
        cost: the resource of the result (same unit as the target).
        history: one dict per iteration (``layer``, ``width``, ``cost``, ``accuracy``, ``proposals``).

    Used in lesson 06.
    """

    model: nn.Module
    widths: Widths
    kept: dict[str, torch.Tensor]
    cost: float
    history: list[dict]


def _choose(model: nn.Module, layer: str, kept_orig: torch.Tensor, n_keep: int,
            scores: Mapping[str, torch.Tensor] | None) -> list[int]:
    """Indices (current numbering) of the ``n_keep`` channels to keep in ``layer``."""
    if scores is not None:
        s = scores[layer].detach().cpu()[kept_orig]
    else:  # NetAdapt's magnitude rule: L2 norm of each filter
        w = dict(model.named_modules())[layer].weight.detach()
        s = w.flatten(1).norm(dim=1).cpu()
    order = torch.sort(-s, stable=True).indices
    return sorted(order[:n_keep].tolist())


def netadapt_search(model: nn.Module, cost: Callable[[Mapping[str, int]], float], target: float,
                    evaluate: Callable[[nn.Module], float], grid: Mapping[str, Sequence[int]],
                    steps: int = 5, scores: Mapping[str, torch.Tensor] | None = None,
                    adapt: Callable[[nn.Module, str, Mapping[str, torch.Tensor]], None] | None = None,
                    progress: bool = True) -> SearchResult:
    """NetAdapt's progressive search (Yang et al. 2018, Algorithm 1) with a pluggable resource.

    Iteration :math:`i` lowers the resource by :math:`\\Delta R = (R_0 - \\text{target}) /` ``steps``
    (Eq. 2). Each layer proposes the largest grid width that alone meets the iteration's
    budget; its channels are chosen by ``scores`` (original indices) or by filter L2 norm;
    ``adapt`` (NetAdapt's short-term fine-tune, or a least-squares refit of the layer's
    consumer) is applied; ``evaluate`` scores
    the proposal (higher is better, on held-out *training* data); the best proposal is
    kept. When no single layer can meet the iteration's budget, every layer proposes its
    next smaller grid width instead.

    Args:
        model: the trained network (not changed).
        cost: resource of a width assignment (``MacsModel`` or ``LatencyTable``).
        target: the budget, in ``cost``'s unit.
        evaluate: ``fn(model) -> accuracy``.
        grid: candidate widths per layer (:func:`width_grid`).
        steps: iterations planned (NetAdapt's :math:`\\Delta R` schedule).
        scores: per-channel scores of the original model, or ``None`` for filter magnitude.
        adapt: ``fn(proposal, layer, kept)`` applied to each proposal before evaluation, in place;
            ``kept`` maps every layer to the original indices the proposal keeps.
        progress: show a progress bar over iterations.

    Raises:
        ValueError: when the target cannot be met even at the smallest grid widths.

    Used in lesson 06.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    layers = [pl.name for pl in prunable_layers(model)]
    grid = {n: sorted(int(v) for v in grid[n]) for n in layers}
    smallest = {n: grid[n][0] for n in layers}
    if cost(smallest) > target:
        raise ValueError(f"target {target:.4g} is unreachable: the smallest grid widths cost {cost(smallest):.4g}; "
                         "raise the target or add smaller widths to the grid")
    current = copy.deepcopy(model)
    widths = {pl.name: pl.num_units for pl in prunable_layers(current)}
    kept = {n: torch.arange(w) for n, w in widths.items()}
    r0 = cost(widths)
    delta = max((r0 - target) / steps, 0.0)
    history: list[dict] = []
    bar = tqdm(total=steps, desc="NetAdapt", disable=not progress, leave=False)
    while cost(widths) > target:
        goal = max(target, cost(widths) - delta)
        proposals = {}
        for n in layers:
            smaller = [w for w in grid[n] if w < widths[n]]
            fits = [w for w in smaller if cost({**widths, n: w}) <= goal]
            if fits:
                proposals[n] = max(fits)
        if not proposals:  # no single layer meets this iteration's budget: take one grid step anywhere
            for n in layers:
                smaller = [w for w in grid[n] if w < widths[n]]
                if smaller:
                    proposals[n] = max(smaller)
        if not proposals:
            raise RuntimeError("every layer is at its smallest grid width but the target is not met")
        best = None
        tried = {}
        for n, w in proposals.items():
            cand = copy.deepcopy(current)
            keep_now = _choose(cand, n, kept[n], w, scores)
            prune_channels(cand, {n: [i for i in range(widths[n]) if i not in set(keep_now)]})
            if adapt is not None:
                adapt(cand, n, {**kept, n: kept[n][torch.as_tensor(keep_now, dtype=torch.long)]})
            acc = float(evaluate(cand))
            tried[n] = (w, acc)
            if best is None or acc > best[0]:
                best = (acc, n, w, cand, keep_now)
        acc, n, w, cand, keep_now = best
        current = cand
        kept[n] = kept[n][torch.as_tensor(keep_now, dtype=torch.long)]
        widths[n] = w
        history.append({"iteration": len(history) + 1, "layer": n, "width": w, "cost": cost(widths),
                        "accuracy": acc, "proposals": tried})
        bar.update(1)
        bar.set_postfix(cost=f"{cost(widths) / r0:.2f}", acc=f"{acc:.3f}")
    close_bar(bar)  # the search may meet its target in fewer or more steps than planned
    return SearchResult(current, dict(widths), kept, cost(widths), history)
