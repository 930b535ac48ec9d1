"""Benchmark 2: our pruning next to what a user would otherwise pick, on the same filters.

The same model, the same plan (Li et al. 2017, Sec. 3.1: the filters of lowest L1 norm
:math:`s_j = \\sum_i |\\mathcal{F}_{i,j}|`, the same fraction in every prunable conv), three tools:

* **ours**: :func:`pruninglib.core.surgery.prune_channels` removes the filters, their BatchNorm
  entries and the consumer's input channels;
* **torch.nn.utils.prune** (``ln_structured(conv, "weight", amount=k, n=1, dim=0)``, which
  ranks by the same L1 norm): it only multiplies the weight by a mask, so the parameters, the
  file on disk and the latency do not shrink (the mask is stored too, and the masked weight is
  recomputed before every forward). ``prune.remove`` makes the zeros permanent but the
  tensors keep their shape;
* **Torch-Pruning** (Fang et al. 2023, DepGraph; ``tp.DependencyGraph().build_dependency``
  then ``get_pruning_group(conv, tp.prune_conv_out_channels, idxs)`` per layer with OUR indices):
  physical removal like ours, found by tracing the model. Its model must compute what ours
  computes: the max absolute difference of the outputs on a fixed input (eval mode) is
  checked against 1e-5, and so is that difference relative to the largest output (a random
  VGG16's logits are ~1e-5, which would make an absolute test alone toothless).

Both physical methods are timed on the pruning step itself (a fresh copy of the model each
repeat; Torch-Pruning's time includes building its dependency graph, which it needs). All
resulting models are then timed in interleaved rounds (:func:`pruninglib.core.metrics.interleaved_latency`).
For the ResNet the BatchNorm statistics are randomised first, so a wrong BatchNorm slice would
show in the check. Torch-Pruning is optional: without it that row is skipped with a hint.
"""
from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from bench.common import (TP_INSTALL_HINT, fmt_bytes_mb, fmt_latency, fmt_ms,
                          md_table, nonzero_parameters, randomize_batchnorm, time_call,
                          torch_pruning_or_none, uniform_filter_plan, vgg16_narrow)
from pruninglib import models as M
from pruninglib.core.metrics import count_parameters, interleaved_latency, size_on_disk
from pruninglib.core.surgery import prune_channels
from pruninglib.methods.unstructured import remove_masks
from pruninglib.utils import get_device, set_seed

__all__ = ["TOLERANCE", "PeerSpec", "FULL_SPECS", "QUICK_SPECS", "METHODS", "run",
           "prune_torch_utils", "prune_torch_pruning", "plot_peers"]

#: Max abs difference allowed between Torch-Pruning's model and ours.
TOLERANCE = 1e-5

#: Row labels, in table order.
METHODS = ("unpruned", "ours (prune_channels)", "torch.nn.utils.prune (mask)",
           "torch.nn.utils.prune + remove()", "Torch-Pruning")


@dataclass
class PeerSpec:
    """One model of the comparison (see :mod:`bench.speedup` for the fields' meaning)."""

    name: str
    builder: Callable[[], nn.Module]
    px: int
    batch: int
    repeats: int
    warmup: int
    prune_repeats: int
    level: float = 0.5
    randomize_bn: bool = False


FULL_SPECS: tuple[PeerSpec, ...] = (
    PeerSpec("VGG16", M.vgg16, 224, 1, 10, 1, 3),
    PeerSpec("ResNet-56", M.resnet56, 32, 1, 30, 2, 3, randomize_bn=True),
)
#: Quick mode: VGG16's convs with a narrow classifier, and ResNet-20 (same code paths, smaller).
QUICK_SPECS: tuple[PeerSpec, ...] = (
    PeerSpec("VGG16 (narrow classifier)", vgg16_narrow, 32, 1, 2, 1, 1),
    PeerSpec("ResNet-20", M.resnet20, 32, 1, 2, 1, 1, randomize_bn=True),
)


def prune_torch_utils(model: nn.Module, plan: dict[str, Sequence[int]]) -> nn.Module:
    """``torch.nn.utils.prune.ln_structured`` (L1, dim 0) on every planned conv, in place.

    ``amount`` is the number of filters the plan removes from that layer, so with distinct
    norms it masks exactly the plan's filters.
    """
    named = dict(model.named_modules())
    for name, idx in plan.items():
        if len(idx):
            tprune.ln_structured(named[name], "weight", amount=len(idx), n=1, dim=0)
    return model


def _masked_filters(model: nn.Module, plan: dict[str, Sequence[int]]) -> dict[str, list[int]]:
    named = dict(model.named_modules())
    out = {}
    for name in plan:
        mask = getattr(named[name], "weight_mask", None)
        out[name] = [] if mask is None else (
            (mask.flatten(1).sum(1) == 0).nonzero().flatten().cpu().tolist())
    return out


def prune_torch_pruning(model: nn.Module, plan: dict[str, Sequence[int]], example: torch.Tensor,
                        tp: Any) -> float:
    """Remove the plan's filters with Torch-Pruning's DependencyGraph, in place.

    Returns:
        The seconds spent building the dependency graph (part of the pruning step).

    Raises:
        RuntimeError: Torch-Pruning refuses a group (``check_pruning_group`` is False).
    """
    import time

    t0 = time.perf_counter()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    t_build = time.perf_counter() - t0
    named = dict(model.named_modules())
    for name, idx in plan.items():
        if not len(idx):
            continue
        group = dg.get_pruning_group(named[name], tp.prune_conv_out_channels, idxs=list(idx))
        if not dg.check_pruning_group(group):
            raise RuntimeError(f"Torch-Pruning refused to prune {name} (check_pruning_group is False)")
        group.prune()
    return t_build


def _stats(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": len(times)}


def _bench_model(spec: PeerSpec, device: torch.device, tp: Any, seed: int = 0) -> dict[str, Any]:
    set_seed(seed, deterministic=False)
    base = spec.builder().to(device).eval()
    if spec.randomize_bn:
        randomize_batchnorm(base, seed)
    plan = uniform_filter_plan(base, spec.level)
    gen = torch.Generator().manual_seed(seed + 1)
    x_check = torch.randn(2, 3, spec.px, spec.px, generator=gen).to(device)
    x_time = torch.randn(spec.batch, 3, spec.px, spec.px, generator=gen).to(device)
    rows: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {"unpruned": base}

    def fresh() -> nn.Module:
        return copy.deepcopy(base)

    # ours
    times = []
    for _ in range(spec.prune_repeats):
        m = fresh()
        t, _ = time_call(lambda m=m: prune_channels(m, plan))
        times += t
    models[METHODS[1]] = m.eval()
    rows[METHODS[1]] = {"prune": _stats(times)}

    # torch.nn.utils.prune
    times = []
    for _ in range(spec.prune_repeats):
        m = fresh()
        t, _ = time_call(lambda m=m: prune_torch_utils(m, plan))
        times += t
    masked = _masked_filters(m, plan)
    same = all(sorted(masked[k]) == sorted(plan[k]) for k in plan)
    models[METHODS[2]] = m.eval()
    rows[METHODS[2]] = {"prune": _stats(times), "same_filters": same}
    # (a masked model cannot be deep-copied: its ``weight`` is a computed, non-leaf tensor)
    models[METHODS[3]] = remove_masks(prune_torch_utils(fresh(), plan)).eval()
    rows[METHODS[3]] = {"same_filters": same}

    # Torch-Pruning
    if tp is not None:
        times, builds = [], []
        for _ in range(spec.prune_repeats):
            m = fresh()
            t, b = time_call(lambda m=m: prune_torch_pruning(m, plan, x_time[:1], tp))
            times += t
            builds.append(b)
        models[METHODS[4]] = m.eval()
        rows[METHODS[4]] = {"prune": _stats(times), "graph_build_s": statistics.median(builds),
                            "same_filters": True}

    with torch.no_grad():
        outs = {k: m(x_check) for k, m in models.items()}
    ref = outs[METHODS[1]]
    lat = interleaved_latency(models, x_time, rounds=spec.repeats, warmup=spec.warmup)
    for k, m in models.items():
        row = rows.setdefault(k, {})
        row.update({"params": count_parameters(m), "nonzero_params": nonzero_parameters(m),
                    "size_bytes": size_on_disk(m), "latency": lat[k].as_dict(),
                    "speedup": lat["unpruned"].median_s / lat[k].median_s})
        if k != "unpruned":
            row["max_abs_diff_vs_ours"] = float((outs[k] - ref).abs().max())
    return {"model": spec.name, "px": spec.px, "batch": spec.batch, "repeats": spec.repeats,
            "warmup": spec.warmup, "prune_repeats": spec.prune_repeats, "level": spec.level,
            "randomize_bn": spec.randomize_bn, "output_scale": float(ref.abs().max()),
            "layers": len(plan), "filters_removed": sum(len(v) for v in plan.values()),
            "rows": rows}


def _table(res: dict[str, Any]) -> str:
    headers = ["method", "params", "nonzero params", "size on disk MB",
               f"pruning step ms median [min, max] ({res['prune_repeats']}x)",
               f"latency b{res['batch']} ms median [min, max]", "speed-up vs unpruned",
               "max abs diff vs ours", "same filters as ours"]
    out = []
    for k in METHODS:
        if k not in res["rows"]:
            continue
        r = res["rows"][k]
        prune = fmt_latency(r["prune"]) if "prune" in r else "-"
        if "graph_build_s" in r:
            prune += f" (graph build {fmt_ms(r['graph_build_s'])})"
        diff = f"{r['max_abs_diff_vs_ours']:.2e}" if "max_abs_diff_vs_ours" in r else "-"
        same = {True: "yes", False: "NO"}.get(r.get("same_filters"), "-")
        out.append([k, r["params"], r["nonzero_params"], fmt_bytes_mb(r["size_bytes"]), prune,
                    fmt_latency(r["latency"]), f"{r['speedup']:.2f}x", diff, same])
    return md_table(headers, out, align=["l"] + ["r"] * 7 + ["c"])


def _sentences(res: dict[str, Any], tp_installed: bool) -> list[str]:
    rows, name = res["rows"], res["model"]
    base, ours, mask = rows["unpruned"], rows[METHODS[1]], rows[METHODS[2]]
    s = []
    s.append(
        f"- torch.nn.utils.prune: {mask['params']:,} parameters (unpruned {base['params']:,}; ours "
        f"{ours['params']:,}) - {'did not shrink' if mask['params'] >= base['params'] else 'SHRANK'}; "
        f"{fmt_bytes_mb(mask['size_bytes'])} MB on disk against {fmt_bytes_mb(base['size_bytes'])} MB "
        f"unpruned (the masks are saved beside the weights) and {fmt_bytes_mb(ours['size_bytes'])} MB for "
        f"ours; its latency is {mask['speedup']:.2f}x the unpruned speed, ours {ours['speedup']:.2f}x.")
    d = mask["max_abs_diff_vs_ours"]
    if d <= TOLERANCE:
        s.append(f"- The masked model computes what ours computes here (max abs diff {d:.1e}): "
                 "nothing leaks past the mask in this network. A masked filter's bias or BatchNorm "
                 "shift would leak into the next layer; here they are zero (random init).")
    else:
        s.append(f"- The masked model does NOT compute what the pruned network computes (max abs diff "
                 f"{d:.2e}, output scale {res['output_scale']:.3g}): masking the weight alone leaves each "
                 "masked channel's bias / BatchNorm shift (beta - gamma*mu/sigma) feeding the next layer.")
    if tp_installed and METHODS[4] in rows:
        t = rows[METHODS[4]]
        dt = t["max_abs_diff_vs_ours"]
        rel = dt / max(res["output_scale"], 1e-30)
        ok = dt <= TOLERANCE and rel <= TOLERANCE
        s.append(
            f"- Torch-Pruning vs ours: max abs diff {dt:.2e} on a fixed input (output scale "
            f"{res['output_scale']:.3g}, so {rel:.2e} relative), tolerance {TOLERANCE:g} on both: "
            f"{'PASS' if ok else 'FAIL'}; "
            f"params {t['params']:,} vs ours {ours['params']:,}. Pruning step: ours "
            f"{fmt_ms(ours['prune']['median_s'])} ms, Torch-Pruning {fmt_ms(t['prune']['median_s'])} ms "
            f"(of which {fmt_ms(t['graph_build_s'])} ms tracing its dependency graph); latency "
            f"{t['speedup']:.2f}x vs ours {ours['speedup']:.2f}x.")
    elif not tp_installed:
        s.append(f"- {TP_INSTALL_HINT}")
    return s


def plot_peers(results: Sequence[dict[str, Any]]) -> Any:
    """Params, size on disk and latency of every method relative to the unpruned model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6 * len(results), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    metrics = [("params", "params"), ("size_bytes", "size on disk"), ("latency", "latency (median)")]
    for i, res in enumerate(results):
        ax = fig.add_subplot(1, len(results), i + 1)
        methods = [k for k in METHODS if k in res["rows"]]
        base = res["rows"]["unpruned"]
        w = 0.8 / len(methods)
        for j, k in enumerate(methods):
            r = res["rows"][k]
            vals = [r[m]["median_s"] / base[m]["median_s"] if m == "latency" else r[m] / base[m]
                    for m, _ in metrics]
            ax.bar([q + j * w for q in range(len(metrics))], vals, w, label=k)
        ax.axhline(1, color="k", lw=0.8, ls=":")
        ax.set_xticks([q + 0.4 - w / 2 for q in range(len(metrics))], [lab for _, lab in metrics])
        ax.set_ylabel("relative to unpruned")
        ax.set_title(f"{res['model']} ({res['px']} px), {res['level']:.0%} of filters removed")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    return fig


def run(quick: bool = False, *, specs: Sequence[PeerSpec] | None = None,
        device: torch.device | None = None) -> dict:
    """Compare ours, torch.nn.utils.prune and Torch-Pruning on VGG16 and ResNet-56.

    Args:
        quick: smoke-test sizes (:data:`QUICK_SPECS`: VGG16 convs + narrow classifier at
            32 px, ResNet-20; one or two repeats).
        specs: the models (default :data:`FULL_SPECS` or :data:`QUICK_SPECS`).
        device: where to run (default :func:`pruninglib.utils.get_device`).

    Returns:
        ``{"markdown", "figures", "results", "torch_pruning_installed", "max_abs_diff_tp"}``.
    """
    device = device or get_device()
    tp = torch_pruning_or_none()
    specs = list(specs if specs is not None else (QUICK_SPECS if quick else FULL_SPECS))
    results = [_bench_model(s, device, tp) for s in specs]
    md = ["The same model and the same filters (lowest L1 norm, the same fraction of every prunable "
          "conv; for the ResNets the inner conv of each block only) pruned three ways, measured back to "
          "back in this process. *Pruning step*: wall time of the pruning call on a fresh copy "
          "(indices given). *Max abs diff vs ours*: outputs on a fixed batch of 2 in eval mode "
          "(ours is the reference).", ""]
    if tp is None:
        md += [f"**{TP_INSTALL_HINT}**", ""]
    for res in results:
        md += [f"### {res['model']} ({res['px']} px), {res['level']:.0%} of filters removed "
               f"({res['filters_removed']:,} filters in {res['layers']} convs)", "",
               f"Latency: batch {res['batch']}, {res['repeats']} interleaved repeat(s) after "
               f"{res['warmup']} warm-up run(s) per model"
               + ("; BatchNorm statistics randomised before pruning." if res["randomize_bn"] else "."),
               "", _table(res), ""]
        md += _sentences(res, tp is not None) + [""]
    diffs = {r["model"]: r["rows"][METHODS[4]]["max_abs_diff_vs_ours"]
             for r in results if METHODS[4] in r["rows"]}
    if diffs:
        md += ["Torch-Pruning equivalence (max abs diff vs ours, tolerance "
               f"{TOLERANCE:g}): " + ", ".join(f"{k} = {v:.2e}" for k, v in diffs.items()) + ".", ""]
    if quick:
        md += ["*Quick mode: tiny inputs and one repeat, a smoke test; do not read the timings.*", ""]
    return {"markdown": "\n".join(md).strip(), "figures": {"peers": plot_peers(results)},
            "results": results, "torch_pruning_installed": tp is not None, "max_abs_diff_tp": diffs}
