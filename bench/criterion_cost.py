"""Benchmark 3: what a criterion costs, against one plain training pass (lessons 02-03).

For each model, the same minibatches are used for

* one plain training pass: forward, backward, SGD step on every minibatch (train mode);
* one scoring pass of each criterion over the same minibatches (eval mode):
  Taylor FO on the gate (Molchanov et al. 2019, :math:`(z\\,\\partial L/\\partial z)^2`),
  the 2017 act×grad criterion (Molchanov et al. 2017), OBD with the Hessian diagonal replaced
  by squared gradients (LeCun et al. 1990 / the 2019 paper's Fisher link), the weight norm
  (no data), and, for reference, Taylor SO (one extra backward pass per class);
* the training pass *with* the 2019 schedule's bookkeeping: gates inserted and
  :math:`(z\\,\\partial L/\\partial z)^2` accumulated after every backward
  (:class:`pruninglib.methods.schedule.IterativePruner` with a far-away pruning step).

The ratio is (criterion seconds) / (plain training seconds), the median of a few repeats.
Target for the Taylor criteria: at most 1.3x. Models: LeNet3 (28x28x1) and a CIFAR VGG-11 with
BatchNorm (32x32x3, width 0.25; quick: width 0.125). Inputs are random: the cost does not depend
on the pixel values.

Run alone: ``python -m bench.criterion_cost [--quick]``.
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib.criteria import get_criterion
from pruninglib.criteria.taylor import obd_squared_gradients
from pruninglib.models import CifarVGG, LeNet3
from pruninglib.methods.schedule import IterativePruner, non_gate_parameters
from pruninglib.utils import get_device, set_seed

__all__ = ["run", "TARGET_RATIO"]

#: The Taylor criteria should cost at most this many plain training passes.
TARGET_RATIO = 1.3


def _interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall seconds of each callable, timed in interleaved rounds (one warm-up each), so
    that drifts of a shared machine's load affect every pass alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _train_pass(model: nn.Module, batches: list, opt: torch.optim.Optimizer,
                after_backward: Callable[[nn.Module, float], Any] | None = None) -> None:
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if after_backward is not None:
            after_backward(model, loss.detach())
        opt.step()


def _bench_model(name: str, build: Callable[[], nn.Module], shape: tuple[int, ...], n: int, batch: int,
                 repeats: int, device: torch.device) -> list[dict[str, Any]]:
    set_seed(0)
    model = build().to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    batches = [(x[i:i + batch].to(device), y[i:i + batch].to(device)) for i in range(0, n, batch)]
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    gated = build().to(device)
    pruner = IterativePruner(gated, every=10 ** 9, per_step=1)
    opt_g = torch.optim.SGD(non_gate_parameters(gated), lr=1e-6, momentum=0.9)
    train = "plain training (fwd+bwd+step)"
    fns: dict[str, Callable[[], Any]] = {
        train: lambda: _train_pass(model, batches, opt),
        "training + 2019 schedule bookkeeping (gates, FO accumulated)":
            lambda: _train_pass(gated, batches, opt_g, lambda m, l: pruner.step(m)),
        "Taylor FO on gate (2019)": lambda: get_criterion("taylor_fo_gate")(model, batches),
        "Taylor act x grad (2017)": lambda: get_criterion("taylor_2017")(model, batches),
        "OBD diagonal via squared gradients": lambda: obd_squared_gradients(model, batches),
        "weight norm (L2)": lambda: get_criterion("weight_l2")(model, batches),
        "Taylor SO on gate (2019, reference)": lambda: get_criterion("taylor_so_gate")(model, batches),
    }
    sec = _interleaved_medians(fns, repeats, device)
    rows = [{"model": name, "pass": k, "seconds": v, "ratio": v / sec[train]} for k, v in sec.items()]
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    """Time each criterion's scoring pass against a plain training pass on LeNet3 and a CIFAR VGG.

    Returns:
        ``markdown`` (the table), ``rows`` (one record per model and pass), ``taylor_ratios``,
        ``target_met`` (``None`` in a quick run).
    """
    device = get_device()
    repeats = 1 if quick else 5
    rows = []
    rows += _bench_model("LeNet3", LeNet3, (1, 28, 28), 256 if quick else 2048, 128, repeats, device)
    width = 0.125 if quick else 0.25
    rows += _bench_model(f"CifarVGG-11 BN (width {width})",
                         lambda: CifarVGG("vgg11", in_channels=3, num_classes=10, batch_norm=True, width=width),
                         (3, 32, 32), 128 if quick else 512, 64, repeats, device)
    taylor = {f"{r['model']}: {r['pass']}": r["ratio"] for r in rows
              if r["pass"].startswith(("Taylor FO", "Taylor act", "training + 2019"))}
    met = None if quick else all(v <= TARGET_RATIO for v in taylor.values())
    verdict = ("not judged in a quick run (too few minibatches for stable timings)." if met is None
               else "met." if met else "NOT met.")
    lines = ["| model | pass | seconds | ratio to training |", "|---|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['pass']} | {r['seconds']:.3f} | {r['ratio']:.2f}x |" for r in rows]
    md = "\n".join(lines) + (
        f"\n\nMedian of {repeats} interleaved repeat(s) after a warm-up, {torch.get_num_threads()} thread(s), {device.type}; "
        f"random inputs, batches of 128 (LeNet3) and 64 (VGG). Target: Taylor FO / act x grad scoring and the "
        f"schedule's bookkeeping at most {TARGET_RATIO}x a plain training pass — " + verdict
        + " Taylor SO needs one backward pass per class, hence its larger ratio.")
    return {"markdown": md, "rows": rows, "taylor_ratios": taylor, "target_met": met}


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv[1:])["markdown"])
