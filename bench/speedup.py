"""Benchmark 1: the real speed-up of filter pruning against its physical limit.

Li et al. 2017 (Pruning Filters for Efficient ConvNets, Sec. 3.1) rank the filters of each
conv by their L1 norm :math:`s_j = \\sum_{i} |\\mathcal{F}_{i,j}|` and remove the smallest.
Removing a fraction :math:`p` of the filters of every layer removes about :math:`1-(1-p)^2`
of a plain conv stack's multiply-accumulates (each layer loses outputs *and* inputs), so the
best a pruned network can do is run :math:`\\text{MAC}_{\\text{full}} / \\text{MAC}_{\\text{pruned}}`
times faster. That ratio is the limit (the diagonal of the figure); the measured latency
shows how much of it a real device delivers (memory traffic, the untouched classifier, the
un-prunable residual stream and per-layer overheads all take their share).

Models:

* VGG16 (torchvision, random init, 224 px): the 13 convs are pruned uniformly; the
  classifier keeps its width (its first Linear only loses the inputs of removed filters).
* CIFAR ResNet-56 (:func:`pruninglib.models.resnet56`, 32 px): only the inner conv of each
  of the 27 basic blocks is prunable (the residual stream's width is tied by the shortcuts).

Latency is measured at batch 1 and batch 32 with the unpruned and all pruned models timed in
interleaved rounds (:func:`pruninglib.core.metrics.interleaved_latency`); ``quick=True`` shrinks it to a
smoke run (VGG16's convs with a narrow classifier at 32 px and ResNet-20, batch 1 and 2, one or
two repeats).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from bench.common import (fmt_latency, md_table, pruned_copy,
                          uniform_filter_plan, vgg16_narrow)
from pruninglib import models as M
from pruninglib.core.graph import prunable_layers
from pruninglib.core.metrics import count_macs, count_parameters, interleaved_latency
from pruninglib.utils import get_device, set_seed

__all__ = ["LEVELS", "ModelSpec", "FULL_SPECS", "QUICK_SPECS", "run", "plot_speedup"]

#: Fractions of filters removed per prunable conv.
LEVELS: tuple[float, ...] = (0.25, 0.5, 0.6, 0.75)


@dataclass
class ModelSpec:
    """One model to benchmark.

    Attributes:
        name: label in tables and figures.
        builder: returns the unpruned model.
        px: input height and width.
        batches: the batch sizes timed.
        repeats: timed rounds per batch size.
        warmup: untimed runs per model and batch size.
        note: what is pruned (printed under the table).
    """

    name: str
    builder: Callable[[], nn.Module]
    px: int
    batches: tuple[int, ...]
    repeats: dict[int, int]
    warmup: int = 1
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_VGG_NOTE = ("torchvision VGG16, random init (no ImageNet weights offline; latency does not depend on "
             "the weights' values). All 13 convs lose the same fraction of filters (lowest L1 norm); "
             "the classifier keeps its width (4096), only its first Linear loses the inputs fed by "
             "the removed filters of the last conv.")
_RESNET_NOTE = ("pruninglib CIFAR ResNet-56 (random init). Only the inner conv (conv1) of each of "
                "the 27 basic blocks is prunable; the stem, every conv2 and the residual stream keep "
                "their width (option-A shortcuts tie them), so the MAC reduction is bounded well "
                "below that of a plain stack.")

FULL_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("VGG16", M.vgg16, 224, (1, 32), {1: 10, 32: 3}, warmup=1, note=_VGG_NOTE),
    ModelSpec("ResNet-56", M.resnet56, 32, (1, 32), {1: 30, 32: 10}, warmup=2, note=_RESNET_NOTE),
)
_QUICK_NOTE = ("Quick mode: VGG16's 13 convs with a 256-wide classifier instead of 4096 "
               "(`bench.common.vgg16_narrow`) and ResNet-20 stand in for the full models.")
QUICK_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("VGG16 (narrow classifier)", vgg16_narrow, 32, (1, 2), {1: 2, 2: 1}, warmup=1,
              note=_VGG_NOTE + " " + _QUICK_NOTE),
    ModelSpec("ResNet-20", M.resnet20, 32, (1, 2), {1: 2, 2: 1}, warmup=1,
              note=_RESNET_NOTE.replace("ResNet-56", "ResNet-20").replace("27 basic", "9 basic")
              + " " + _QUICK_NOTE),
)


def _bench_model(spec: ModelSpec, levels: Sequence[float], device: torch.device,
                 seed: int = 0) -> dict[str, Any]:
    set_seed(seed, deterministic=False)
    base = spec.builder().to(device).eval()
    shape = (1, 3, spec.px, spec.px)
    full_macs = count_macs(base, input_size=shape)
    prunable = prunable_layers(base, ("conv",))
    n_convs = sum(isinstance(m, nn.Conv2d) for m in base.modules())
    full_filters = sum(pl.num_units for pl in prunable)
    models: dict[str, nn.Module] = {"unpruned": base}
    rows: list[dict[str, Any]] = [{
        "level": 0.0, "filters_kept": full_filters, "params": count_parameters(base),
        "macs": full_macs, "mac_ratio": 1.0, "mac_reduction": 1.0, "prune_s": 0.0}]
    for lvl in levels:
        plan = uniform_filter_plan(base, lvl)
        t0 = time.perf_counter()
        m = pruned_copy(base, plan)
        dt = time.perf_counter() - t0
        macs = count_macs(m, input_size=shape)
        kept = sum(pl.num_units for pl in prunable_layers(m, ("conv",)))
        models[f"{lvl:.0%}"] = m.eval()
        rows.append({"level": lvl, "filters_kept": kept, "params": count_parameters(m), "macs": macs,
                     "mac_ratio": macs / full_macs, "mac_reduction": full_macs / macs, "prune_s": dt})

    gen = torch.Generator().manual_seed(seed)
    for b in spec.batches:
        x = torch.randn(b, 3, spec.px, spec.px, generator=gen).to(device)
        lat = interleaved_latency(models, x, rounds=spec.repeats[b], warmup=spec.warmup)
        base_med = lat["unpruned"].median_s
        for row, key in zip(rows, models):
            r = lat[key]
            row[f"b{b}"] = r.as_dict()
            row[f"b{b}_speedup"] = base_med / r.median_s
            row[f"b{b}_of_limit"] = (base_med / r.median_s) / row["mac_reduction"]
    del models
    return {"model": spec.name, "px": spec.px, "batches": list(spec.batches),
            "repeats": {str(k): v for k, v in spec.repeats.items()}, "warmup": spec.warmup,
            "prunable_convs": len(prunable), "convs": n_convs, "rows": rows, "note": spec.note}


def _table(res: dict[str, Any]) -> str:
    headers = ["filters removed", "filters kept", "params", "GMACs", "MAC ratio", "limit (MAC red.)"]
    for b in res["batches"]:
        headers += [f"b{b} latency ms median [min, max]", f"b{b} speed-up", f"b{b} % of limit"]
    rows = []
    for r in res["rows"]:
        cells: list[Any] = [f"{r['level']:.0%}", r["filters_kept"], r["params"], r["macs"] / 1e9,
                            f"{r['mac_ratio']:.3f}", f"{r['mac_reduction']:.2f}x"]
        for b in res["batches"]:
            cells += [fmt_latency(r[f"b{b}"]), f"{r[f'b{b}_speedup']:.2f}x", f"{r[f'b{b}_of_limit']:.0%}"]
        rows.append(cells)
    return md_table(headers, rows)


def plot_speedup(results: Sequence[dict[str, Any]]) -> Any:
    """Measured speed-up against MAC reduction, one panel per model; the diagonal is the limit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(results), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    for i, res in enumerate(results):
        ax = fig.add_subplot(1, len(results), i + 1)
        red = [r["mac_reduction"] for r in res["rows"]]
        top = max(max(red), max(r[f"b{b}_speedup"] for r in res["rows"] for b in res["batches"])) * 1.08
        ax.plot([1, top], [1, top], "k--", lw=1, label="limit: speed-up = MAC reduction")
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        for b, mk in zip(res["batches"], ("o-", "s-", "^-")):
            sp = [r[f"b{b}_speedup"] for r in res["rows"]]
            ax.plot(red, sp, mk, label=f"measured, batch {b}")
        for r in res["rows"][1:]:
            ax.annotate(f"{r['level']:.0%}", (r["mac_reduction"], r["mac_reduction"]),
                        textcoords="offset points", xytext=(-14, 6), fontsize=8, color="k")
        ax.set_xlabel("MAC reduction (unpruned MACs / pruned MACs)")
        ax.set_ylabel("measured speed-up (unpruned latency / pruned)")
        ax.set_title(f"{res['model']} at {res['px']} px: filters removed per layer")
        ax.set_xlim(0.9, top)
        ax.set_ylim(0, top)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return fig


def run(quick: bool = False, *, levels: Sequence[float] = LEVELS,
        specs: Sequence[ModelSpec] | None = None, device: torch.device | None = None) -> dict:
    """Prune VGG16 and ResNet-56 at each level, time them against the unpruned model.

    Args:
        quick: smoke-test sizes (:data:`QUICK_SPECS`: VGG16 convs + narrow classifier at 32 px,
            ResNet-20; batch 1 and 2, 1-2 repeats).
        levels: fractions of filters removed per prunable conv.
        specs: the models (default :data:`FULL_SPECS` or :data:`QUICK_SPECS`).
        device: where to time (default :func:`pruninglib.utils.get_device`).

    Returns:
        ``{"markdown": str, "figures": {"speedup": Figure}, "results": [per-model dict]}``.
    """
    device = device or get_device()
    specs = list(specs if specs is not None else (QUICK_SPECS if quick else FULL_SPECS))
    results = [_bench_model(s, levels, device) for s in specs]
    md = ["Filters ranked by L1 norm (`get_criterion(\"weight_l1\")`, Li et al. 2017) and removed "
          "uniformly per prunable conv with `pruninglib.core.surgery.prune_channels`. *MAC ratio* = "
          "pruned MACs / unpruned MACs (per sample); *limit* = its inverse, the speed-up a "
          "device would give if time were proportional to MACs; *speed-up* = unpruned median "
          "latency / pruned median latency, all models timed in interleaved rounds in this "
          "process; *% of limit* = speed-up / limit.", ""]
    for res in results:
        reps = ", ".join(f"batch {b}: {res['repeats'][str(b)]} repeats" for b in res["batches"])
        md += [f"### {res['model']} ({res['px']} px)", "",
               f"{res['note']} Prunable convs: {res['prunable_convs']} of {res['convs']}. "
               f"Timing: {reps}, {res['warmup']} warm-up run(s) per model.", "",
               _table(res), ""]
        half = min(res["rows"][1:], key=lambda r: abs(r["level"] - 0.5))
        b = res["batches"][-1]
        md += [f"At {half['level']:.0%} of the filters removed, {res['model']} needs "
               f"{half['mac_ratio']:.1%} of the MACs (limit {half['mac_reduction']:.2f}x) and runs "
               f"{half[f'b{b}_speedup']:.2f}x faster at batch {b} "
               f"({half[f'b{b}_of_limit']:.0%} of the limit).", ""]
    if quick:
        md += ["*Quick mode: tiny inputs and 1-2 repeats, a smoke test; do not read the ratios.*", ""]
    fig = plot_speedup(results)
    return {"markdown": "\n".join(md).strip(), "figures": {"speedup": fig}, "results": results}
