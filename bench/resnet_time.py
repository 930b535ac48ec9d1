"""Benchmark 1d: where CIFAR ResNet-56's time goes, unpruned and with 50% of its inner filters removed.

Section 1c finds ResNet-56 reaching well under its MAC limit in every deployment form. The MAC
limit counts only multiply-accumulates; this section times every leaf module (forward hooks,
:func:`pruninglib.core.metrics.layer_times`, one thread's CPU time) and the rest of the forward
pass (the option-A shortcuts' strided slicing and zero padding and the residual adds, which are
not modules), grouped by what pruning can shrink:

* **pruned convs**: the inner conv (``conv1``) of each of the 27 blocks: loses half its filters,
  so its MACs halve and the next conv's input halves too;
* **unpruned convs**: the stem and every block's ``conv2``: their outputs are tied to the residual
  stream; their MACs halve (half the input channels) but their output width stays;
* **BN and ReLU** on the residual stream (``bn2`` and the block's ReLU) keep their full size; on
  the inner path (``bn1``) they shrink;
* **glue**: shortcuts and adds, full size.

Amdahl's law then says what speed-up the unchanged parts allow. Used in ``bench/RESULTS.md``.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn as nn

from bench.common import md_table, pruned_copy, randomize_batchnorm, uniform_filter_plan
from pruninglib import models as M
from pruninglib.core.metrics import count_macs, interleaved_latency, layer_times
from pruninglib.utils import set_seed

__all__ = ["run"]


def _group(name: str, mod: nn.Module) -> str:
    inner = name.count(".") >= 2  # layerK.I.conv1: inside a block; conv1 / bn1 alone: the stem
    last = name.split(".")[-1]
    if isinstance(mod, nn.Conv2d):
        return "pruned convs (block conv1)" if inner and last == "conv1" else "unpruned convs (stem, block conv2)"
    if isinstance(mod, nn.BatchNorm2d):
        return "BN on the inner path (bn1)" if inner and last == "bn1" else "BN on the residual stream"
    if isinstance(mod, nn.Linear):
        return "classifier"
    return "ReLU, pooling"


def _macs_by_group(model: nn.Module, px: int) -> dict[str, float]:
    out: dict[str, float] = {}
    hooks = []

    def hook(name: str, mod: nn.Module):
        def h(m: nn.Module, i: tuple, o: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d):
                macs = o.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.Linear):
                macs = o.numel() * m.in_features
            else:
                return
            g = _group(name, m)
            out[g] = out.get(g, 0.0) + macs
        return h

    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(n, m)))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, px, px))
    for h in hooks:
        h.remove()
    return out


def _breakdown(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    t = layer_times(model, x, repeats=repeats, warmup=1, stat="median", clock="cpu")
    kinds = dict(model.named_modules())
    out: dict[str, float] = {}
    for n, s in t.items():
        g = _group(n, kinds[n])
        out[g] = out.get(g, 0.0) + s
    total = interleaved_latency({"m": model}, x, rounds=repeats, warmup=1, clock="cpu")["m"].median_s
    out["glue (shortcuts, adds, Python)"] = max(total - sum(t.values()), 0.0)
    out["total (plain forward)"] = total
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Per-group CPU time of ResNet-56 (ResNet-20 quick) before and after 50% of the inner filters go."""
    t0 = time.perf_counter()
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        set_seed(0, deterministic=False)
        base = randomize_batchnorm((M.resnet20() if quick else M.resnet56()).eval())
        pruned = pruned_copy(base, uniform_filter_plan(base, 0.5)).eval()
        name = "ResNet-20" if quick else "ResNet-56"
        macs = {"unpruned": _macs_by_group(base, 32), "pruned": _macs_by_group(pruned, 32)}
        md = [__doc__.split("\n\n", 1)[1].split("Amdahl")[0].strip(), "",
              f"{name}, 32 px, 50% of every block's conv1 filters removed (lowest L1 norm). Total MACs "
              f"{count_macs(base, (1, 3, 32, 32)) / 1e6:.1f} M -> {count_macs(pruned, (1, 3, 32, 32)) / 1e6:.1f} M "
              f"({count_macs(base, (1, 3, 32, 32)) / count_macs(pruned, (1, 3, 32, 32)):.2f}x).", ""]
        res: dict[str, Any] = {"model": name, "batches": {}}
        for b in (1, 2) if quick else (1, 32):
            x = torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(0))
            reps = 3 if quick else (30 if b == 1 else 10)
            # alternate the two models a few times and keep each group's median, so drift hits both
            runs = {"unpruned": [], "pruned": []}
            for _ in range(2 if quick else 3):
                for k, m in (("unpruned", base), ("pruned", pruned)):
                    runs[k].append(_breakdown(m, x, reps))
            tb = {k: {g: statistics.median(r[g] for r in v) for g in v[0]} for k, v in runs.items()}
            u, p = tb["unpruned"], tb["pruned"]
            groups = [g for g in u if g != "total (plain forward)"]
            rows = []
            for g in groups + ["total (plain forward)"]:
                mu, mp = macs["unpruned"].get(g), macs["pruned"].get(g)
                rows.append([g, f"{u[g] * 1e3:.3f}", f"{u[g] / u['total (plain forward)']:.0%}", f"{p[g] * 1e3:.3f}",
                             f"{u[g] / p[g]:.2f}x" if p[g] > 0 else "-",
                             f"{mu / mp:.2f}x" if mu and mp else ("-" if g != "total (plain forward)" else
                             f"{count_macs(base, (1, 3, 32, 32)) / count_macs(pruned, (1, 3, 32, 32)):.2f}x")])
            fixed = sum(p[g] for g in groups if macs["unpruned"].get(g) is None)
            md += [f"**Batch {b}** (ms, one thread's CPU time, median per group over {len(runs['pruned'])} "
                   f"alternating measurements of {reps} passes):", "",
                   md_table(["part", "unpruned ms", "share", "pruned ms", "time ratio", "MAC ratio"], rows), "",
                   f"Parts without MACs (BN, ReLU, glue) take {fixed / p['total (plain forward)']:.0%} of the pruned "
                   f"network's time and shrink {sum(u[g] for g in groups if macs['unpruned'].get(g) is None) / fixed:.2f}x; "
                   f"even with every conv at its MAC limit, Amdahl caps the speed-up near "
                   f"{u['total (plain forward)'] / (fixed + sum(u[g] / (macs['unpruned'][g] / macs['pruned'][g]) for g in groups if macs['unpruned'].get(g))):.2f}x.",
                   ""]
            res["batches"][b] = tb
        md.append(f"Benchmark wall time {time.perf_counter() - t0:.0f} s.")
    finally:
        torch.set_num_threads(old)
    res["markdown"] = "\n".join(md)
    return res
