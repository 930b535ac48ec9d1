"""Benchmark 1c: pruned networks as fast as their MACs allow (``pruninglib.deploy``).

Section 1 shows uniformly pruned networks reaching well under their MAC limit and section 1b a
Taylor-pruned VGG16 slower than unpruned at 1,024 filters removed. This section takes the same
networks through the deployment steps of :mod:`pruninglib.deploy`, one at a time, and measures
each against its own unpruned network **in the same form** (pruned vs unpruned, both eager,
both ONNX Runtime, ...):

1. ``eager``: the pruned network as surgery leaves it (section 1's numbers);
2. ``round8``: every pruned layer's channel count rounded to a multiple of 8
   (:func:`pruninglib.deploy.round_channels`, the same criterion deciding which channels);
3. ``+bn``: BatchNorm folded into the convs (:func:`~pruninglib.deploy.fold_batchnorm`);
4. ``+nhwc``: ``channels_last`` weights and inputs;
5. ``+compile``: ``torch.compile`` (inductor, C++ on the CPU);
6. ``onnxruntime``: the ``+bn`` network exported to ONNX and run by ONNX Runtime (one thread);
7. ``torch-pruning``: Torch-Pruning's own ``MetaPruner`` (L1 magnitude, ``round_to=8``, the same
   layers prunable), eager, for comparison.

Times are **one thread's CPU time** (``time.thread_time``; torch, inductor's kernels and ONNX
Runtime all run in the calling thread on one thread), so the other processes of a shared machine
inflate them little; every group of models (one form, all levels, plus the eager unpruned
network as a common reference) is timed in interleaved rounds
(:func:`pruninglib.core.metrics.interleaved_latency`), median with [min, max].

Models: torchvision VGG16 at 224 px and CIFAR ResNet-56 at 32 px (uniform L1 plans at 25/50/75%
of the prunable filters, as section 1), batch 1 and 32; lesson 04's Taylor-pruned VGG16
(``vgg16_transfer``, re-ranked on Cats-vs-Dogs photos before each step, 1,056 / 2,112 / 2,560 /
3,168 of 4,224 filters removed), batch 1. A first table measures which channel counts this CPU's
conv kernels prefer (every count from 112 to 136).
"""
from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from bench.common import fmt_latency, md_table, pruned_copy, randomize_batchnorm, torch_pruning_or_none, vgg16_narrow
from pruninglib import deploy
from pruninglib import models as M
from pruninglib.core.graph import prunable_layers
from pruninglib.core.metrics import count_macs, interleaved_latency
from pruninglib.core.surgery import channel_counts, prune_channels
from pruninglib.criteria import get_criterion
from pruninglib.utils import set_seed

__all__ = ["FORMS", "run", "preferred_counts", "plot_deploy"]

#: The deployment forms, in the order of the table.
FORMS: tuple[str, ...] = ("eager", "round8", "+bn", "+nhwc", "+compile", "onnxruntime", "torch-pruning")
LEVELS: tuple[float, ...] = (0.25, 0.5, 0.75)


@dataclass
class Spec:
    name: str
    builder: Callable[[], nn.Module]
    px: int
    batches: tuple[int, ...]
    rounds: dict[int, int]
    kind: str = "uniform"  # "uniform" (L1 plans per layer) or "taylor" (lesson 04's iterative ranking)
    forms: tuple[str, ...] = FORMS


FULL = (Spec("VGG16", M.vgg16, 224, (1, 32), {1: 5, 32: 2}),
        Spec("ResNet-56", M.resnet56, 32, (1, 32), {1: 10, 32: 3}),
        Spec("lesson 04 VGG16 (Taylor)", lambda: M.build_model("vgg16_transfer", pretrained="auto"), 224, (1,),
             {1: 5}, kind="taylor"))
_NO_COMPILE = tuple(f for f in FORMS if f != "+compile")
QUICK = (Spec("VGG16 (narrow classifier)", vgg16_narrow, 32, (1,), {1: 2}),
         Spec("ResNet-20", M.resnet20, 32, (2,), {2: 1}, forms=_NO_COMPILE),
         Spec("lesson 04 VGG16 (Taylor, 32 px)", lambda: M.build_model("vgg16_transfer", pretrained="auto"), 32, (1,),
              {1: 1}, kind="taylor", forms=("eager", "round8", "onnxruntime")))


# ---------------------------------------------------------------------------- networks


def _l1_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    return get_criterion("weight_l1")(model, None, kinds=("conv",))


def _uniform_plan(model: nn.Module, level: float, multiple: int | None) -> dict[str, list[int]]:
    scores = _l1_scores(model)
    plan = {}
    for name, s in scores.items():
        n = min(int(round(level * len(s))), len(s) - 1)
        plan[name] = sorted(torch.argsort(s.detach().double(), stable=True)[:n].tolist())
    if multiple:
        plan = deploy.rounded_plan_for(model, plan, scores, multiple)
    return plan


def _photos(px: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from pruninglib import data as D

    try:
        ds = D.load_dataset("cats_vs_dogs", "train", transform=D.image_transforms(px))
        idx = [i * (len(ds) // n) for i in range(n)]
        xs = torch.stack([ds[i][0] for i in idx])
        ys = torch.tensor([ds[i][1] for i in idx])
    except Exception:  # no photos on the search path: random images (the ranking then differs)
        g = torch.Generator().manual_seed(0)
        xs, ys = torch.randn(n, 3, px, px, generator=g), torch.randint(0, 2, (n,), generator=g)
    return [(xs, ys)]


def _taylor_plans(base: nn.Module, px: int, targets: Sequence[int], multiple: int | None,
                  photos: list) -> list[list[dict[str, list[int]]]]:
    """Lesson 04's procedure: rank (Taylor 2017, normalised), remove the lowest, re-rank, ...; the
    plans of the steps up to each target (replayed by :func:`_replay`, so no network is kept)."""
    from pruninglib.lessons.transfer import rank_filters, total_conv_filters

    from pruninglib.criteria.base import lowest_units
    from pruninglib.core.surgery import units_to_plan

    net, out, steps, total = copy.deepcopy(base), [], [], total_conv_filters(base)
    for target in targets:
        n = target - (total - total_conv_filters(net))
        if n > 0:
            scores = rank_filters(net, photos)
            plan = units_to_plan(lowest_units(scores, n, min_keep=1))
            if multiple:
                plan = deploy.rounded_plan_for(net, plan, scores, multiple)
            prune_channels(net, plan)
            steps.append(plan)
        out.append(list(steps))
    del net
    return out


def _replay(base: nn.Module, steps: Sequence[dict[str, list[int]]]) -> nn.Module:
    net = copy.deepcopy(base)
    for plan in steps:
        prune_channels(net, plan)
    return net.eval()


def _tp_network(model: nn.Module, level: float, example: torch.Tensor, tp: Any) -> nn.Module:
    """Torch-Pruning's MetaPruner: L1 magnitude, the same fraction per prunable conv, ``round_to=8``."""
    m = copy.deepcopy(model).eval()
    prunable = {pl.name for pl in prunable_layers(m, ("conv",))}
    ignored = [mod for name, mod in m.named_modules()
               if isinstance(mod, (nn.Conv2d, nn.Linear)) and name not in prunable]
    pruner = tp.pruner.MetaPruner(m, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=level, ignored_layers=ignored, round_to=8, global_pruning=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    return m.eval()


def _form(net: nn.Module, form: str, example: torch.Tensor, tmp: Path, key: str) -> nn.Module:
    if form in ("eager", "round8", "torch-pruning"):
        return net.eval()
    if form == "+bn":
        return deploy.fold_batchnorm(net)
    if form == "+nhwc":
        return deploy.for_inference(net, channels_last=True)
    if form == "+compile":
        return deploy.for_inference(net, channels_last=True, compile=True)
    if form == "onnxruntime":
        path = deploy.export_onnx(deploy.fold_batchnorm(net), example, tmp / f"{key}.onnx")
        return deploy.OnnxModule(deploy.onnx_session(path, threads=1))
    raise ValueError(form)


def _networks(spec: Spec, quick: bool) -> tuple[nn.Module, dict[str, list[Callable[[], nn.Module]]], list[str],
                                                 dict[str, str]]:
    """The unpruned network, ``form family -> [builder of unpruned, level 1, ...]`` and the level labels.

    Networks are rebuilt from their plans when a form needs them (VGG16 is 0.5 GB a copy: keeping
    every level of every family at once does not fit a 24 GiB machine shared with other work)."""
    set_seed(0, deterministic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = spec.builder().eval()
    if any(isinstance(m, nn.BatchNorm2d) for m in base.modules()):
        randomize_batchnorm(base)
    notes: dict[str, str] = {}
    if spec.kind == "taylor":
        from pruninglib.lessons.transfer import total_conv_filters

        total = total_conv_filters(base)
        targets = sorted(set(round(total * f) for f in LEVELS) | ({2560} if total == 4224 else set()))
        photos = _photos(spec.px, 4 if quick else 8)
        labels = ["0"] + [f"{t:,}" for t in targets]
        fam = {}
        for key, mult in (("eager", None), ("round8", 8)):
            plans = _taylor_plans(base, spec.px, targets, mult, photos)
            fam[key] = [lambda: base] + [lambda st=st: _replay(base, st) for st in plans]
        notes["levels"] = "filters removed (of 4,224), re-ranked by Taylor 2017 on Cats-vs-Dogs photos before each step"
        return base, fam, labels, notes
    labels = ["0%"] + [f"{lvl:.0%}" for lvl in LEVELS]
    fam = {}
    for key, mult in (("eager", None), ("round8", 8)):
        plans = [_uniform_plan(base, lvl, mult) for lvl in LEVELS]
        fam[key] = [lambda: base] + [lambda p=p: pruned_copy(base, p).eval() for p in plans]
    tp = torch_pruning_or_none()
    if tp is not None:
        example = torch.randn(1, 3, spec.px, spec.px)
        try:
            _tp_network(base, LEVELS[0], example, tp)  # fails early, before any timing, if it cannot
            fam["torch-pruning"] = [lambda: base] + [lambda lvl=lvl: _tp_network(base, lvl, example, tp) for lvl in LEVELS]
        except Exception as exc:  # reported, not hidden
            notes["torch-pruning"] = f"Torch-Pruning's MetaPruner failed on {spec.name}: {type(exc).__name__}: {exc}"
    else:
        notes["torch-pruning"] = "Torch-Pruning not installed"
    notes["levels"] = "fraction of filters removed in every prunable conv (lowest L1 norm)"
    return base, fam, labels, notes


# ---------------------------------------------------------------------------- timing


def _bench(spec: Spec, quick: bool, tmp: Path) -> dict[str, Any]:
    import gc

    base, fam, labels, notes = _networks(spec, quick)
    shape = (1, 3, spec.px, spec.px)
    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(0)
    for form in spec.forms:
        source = "torch-pruning" if form == "torch-pruning" else ("eager" if form == "eager" else "round8")
        if source not in fam:
            continue
        for b in spec.batches:
            x = torch.randn(b, 3, spec.px, spec.px, generator=gen)
            models: dict[str, nn.Module] = {}
            try:
                macs, widths, diffs = [], [], []
                for i, build in enumerate(fam[source]):
                    net = build()
                    macs.append(count_macs(net, input_size=shape))
                    widths.append(sum(channel_counts(net).values()))
                    fast = net if form in ("eager", "round8", "torch-pruning") else \
                        _form(net, form, x, tmp, f"{spec.name}-{form}-{i}".replace(" ", "_"))
                    diffs.append(deploy.max_abs_diff(net, fast, x))
                    models[labels[i]] = fast
                    if net is not base and fast is not net:
                        del net
                    gc.collect()
                models["ref"] = base
                lat = interleaved_latency(models, x, rounds=spec.rounds[b], warmup=1, clock="cpu")
            except Exception as exc:
                notes[f"{form} b{b}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                models.clear()
                gc.collect()
                continue
            base_t = lat[labels[0]].median_s
            for i, lab in enumerate(labels):
                r = lat[lab]
                rows.append({"form": form, "batch": b, "level": lab, "filters": widths[i], "macs": macs[i],
                             "mac_reduction": macs[0] / macs[i], "latency": r.as_dict(),
                             "speedup": base_t / r.median_s, "of_limit": (base_t / r.median_s) / (macs[0] / macs[i]),
                             "vs_eager_unpruned": lat["ref"].median_s / r.median_s, "max_abs_diff": max(diffs)})
            print(f"[deploy_speed] {spec.name} {form} batch {b}: "
                  + ", ".join(f"{lab} {base_t / lat[lab].median_s:.2f}x" for lab in labels), flush=True)
            models.clear()
            gc.collect()
    return {"model": spec.name, "px": spec.px, "batches": list(spec.batches), "labels": labels, "rows": rows,
            "notes": notes, "rounds": {str(k): v for k, v in spec.rounds.items()}}


def _monotone(res: dict[str, Any]) -> list[str]:
    """Rows where a more-pruned network is slower than the less-pruned one it came from."""
    out = []
    for form in FORMS:
        for b in res["batches"]:
            rs = [r for r in res["rows"] if r["form"] == form and r["batch"] == b]
            for prev, cur in zip(rs, rs[1:]):
                if cur["latency"]["median_s"] > prev["latency"]["median_s"]:
                    within = cur["latency"]["min_s"] <= prev["latency"]["max_s"]
                    out.append(f"{res['model']} {form} batch {b}: {cur['level']} slower than {prev['level']} "
                               f"({cur['latency']['median_s'] * 1e3:.1f} vs {prev['latency']['median_s'] * 1e3:.1f} ms"
                               f"{', within the spread' if within else ''})")
    return out


def preferred_counts(quick: bool = False) -> dict[str, Any]:
    """Which channel counts this CPU's conv kernels prefer: a 3x3 conv with ``c`` input and output
    channels at 28x28 (14x14 quick), batch 1, one thread, for every ``c`` from 112 to 136; time per
    GMAC, eager NCHW and channels_last, all counts interleaved."""
    counts = list(range(112, 137, 8 if quick else 1))
    px = 14 if quick else 28
    nets = {c: nn.Conv2d(c, c, 3, padding=1).eval() for c in counts}
    rows = []
    for fmt in ("nchw", "nhwc"):
        models, xs = {}, {}
        for c, n in nets.items():
            models[str(c)] = deploy.ChannelsLast(copy.deepcopy(n).to(memory_format=torch.channels_last)) \
                if fmt == "nhwc" else n
        # one input per count: interleave by timing each in turn with its own input
        res = {}
        per = {str(c): torch.randn(1, c, px, px) for c in counts}
        times = {k: [] for k in models}
        for _ in range(2 if quick else 7):
            for k, m in models.items():
                r = interleaved_latency({k: m}, per[k], rounds=1, repeats=3 if quick else 10, warmup=1, clock="cpu")[k]
                times[k].append(r.median_s)
        for k in models:
            res[k] = statistics.median(times[k])
        for c in counts:
            gmac = c * c * 9 * px * px / 1e9
            rows.append({"format": fmt, "channels": c, "ms": res[str(c)] * 1e3, "ms_per_gmac": res[str(c)] * 1e3 / gmac,
                         "multiple": 16 if c % 16 == 0 else (8 if c % 8 == 0 else 1)})
    summary = {}
    for fmt in ("nchw", "nhwc"):
        for mult in (16, 8, 1):
            v = [r["ms_per_gmac"] for r in rows if r["format"] == fmt and r["multiple"] == mult]
            if v:
                summary[f"{fmt} multiple of {mult}" if mult > 1 else f"{fmt} not a multiple of 8"] = statistics.median(v)
    return {"rows": rows, "summary": summary, "px": px}


# ---------------------------------------------------------------------------- report


def _table(res: dict[str, Any]) -> str:
    headers = ["form", "batch", "filters removed", "filters kept", "MAC red. (limit)", "latency ms median [min, max]",
               "speed-up", "of limit", "vs eager unpruned", "max abs diff"]
    rows = []
    for r in res["rows"]:
        rows.append([r["form"], r["batch"], r["level"], r["filters"], f"{r['mac_reduction']:.2f}x",
                     fmt_latency(r["latency"]), f"{r['speedup']:.2f}x", f"{r['of_limit']:.0%}",
                     f"{r['vs_eager_unpruned']:.2f}x", f"{r['max_abs_diff']:.1e}"])
    return md_table(headers, rows)


def plot_deploy(results: Sequence[dict[str, Any]]) -> Any:
    """Speed-up against MAC reduction per deployment form, one panel per model and batch; the
    diagonal is the limit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(res, b) for res in results for b in res["batches"]]
    fig = Figure(figsize=(4.6 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (res, b) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        rs = [r for r in res["rows"] if r["batch"] == b]
        top = max([r["mac_reduction"] for r in rs] + [r["speedup"] for r in rs] + [1.5]) * 1.08
        ax.plot([1, top], [1, top], "k--", lw=1, label="limit")
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        for form, mk in zip(FORMS, "os^vDPX"):
            f = [r for r in rs if r["form"] == form]
            if f:
                ax.plot([r["mac_reduction"] for r in f], [r["speedup"] for r in f], mk + "-", ms=4, lw=1, label=form)
        ax.set_xlim(0.9, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("MAC reduction")
        ax.set_ylabel("speed-up (same form, pruned vs unpruned)")
        ax.set_title(f"{res['model']}, {res['px']} px, batch {b}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    return fig


def _verdicts(results: Sequence[dict[str, Any]]) -> list[str]:
    def best(model_sub: str, batch: int, level: str) -> tuple[float, str] | None:
        cands = [(r["of_limit"], r["form"], r["speedup"]) for res in results if model_sub in res["model"]
                 for r in res["rows"] if r["batch"] == batch and r["level"] == level]
        if not cands:
            return None
        v = max(cands)
        return v[0], f"{v[1]} ({v[2]:.2f}x)"

    lines = []
    for model_sub, batch, level, target in (("VGG16", 32, "50%", 0.85), ("ResNet", 32, "50%", 0.80)):
        b = best(model_sub, batch, level)
        if b:
            lines.append(f"* {model_sub}, 50% removed, batch {batch}: best form {b[1]} reaches {b[0]:.0%} of its MAC "
                         f"limit (target {target:.0%}): {'met' if b[0] >= target else 'missed'}."
                         + ("" if b[0] >= target or model_sub != "ResNet" else
                            " Why: section 1d times every part of the network."))
    for res in results:
        if "Taylor" in res["model"]:
            rs = [r for r in res["rows"] if r["level"] == "2,560"]
            if rs:
                top = max(rs, key=lambda r: r["speedup"])
                lines.append(f"* lesson 04's 2,560-filter VGG16, batch 1: best {top['form']} {top['speedup']:.2f}x "
                             f"(blog post: 2.8x, 0.78 s -> 0.277 s on an i7): "
                             f"{'met' if top['speedup'] >= 2.8 else 'missed'}; vs eager unpruned "
                             f"{top['vs_eager_unpruned']:.2f}x.")
    return lines


def run(quick: bool = False, *, specs: Sequence[Spec] | None = None) -> dict[str, Any]:
    """Every model through every deployment form; returns ``{"markdown", "figures", "results"}``."""
    t0 = time.perf_counter()
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pref = preferred_counts(quick)
        with tempfile.TemporaryDirectory() as d:
            results = [_bench(s, quick, Path(d)) for s in (specs if specs is not None else (QUICK if quick else FULL))]
    finally:
        torch.set_num_threads(old)
    md = [__doc__.split("\n\n", 1)[1].split("Models:")[0].strip(), "",
          "### Which channel counts the CPU kernels prefer", "",
          f"A 3x3 conv with c input and output channels at {pref['px']}x{pref['px']}, batch 1, one thread; "
          "median ms per GMAC over the counts of each kind:", "",
          md_table(["form and count", "ms per GMAC"], [[k, f"{v:.2f}"] for k, v in pref["summary"].items()]), ""]
    slow = []
    for res in results:
        md += [f"### {res['model']} at {res['px']} px", "", f"Levels: {res['notes'].get('levels', '')}.", "",
               _table(res), ""]
        for k, v in res["notes"].items():
            if k != "levels":
                md.append(f"* {k}: {v}")
        slow += _monotone(res)
        md.append("")
    md += ["### Targets", ""] + _verdicts(results) + [""]
    md += ["Slower than the less-pruned network it came from: " + ("none." if not slow else "")] + \
          [f"* {s}" for s in slow] + ["", f"Benchmark wall time {time.perf_counter() - t0:.0f} s."]
    return {"markdown": "\n".join(md), "figures": {"deploy_speedup": plot_deploy(results)},
            "results": results, "preferred_counts": pref}
