"""Benchmark 4: the oracle, batched against the naive loop (lesson 03).

The oracle of Molchanov et al. 2017 is the change of the loss when one unit alone is
removed. The naive way re-evaluates the whole data set once per unit in a Python loop; the batched
way (:func:`pruninglib.criteria.oracle.oracle_loss_change`) evaluates the data once, caches every
consumer's input and output, subtracts one unit's contribution per copy of an expanded batch
(one grouped convolution per layer) and runs only the rest of the network on it. Both are exact,
so the table also reports their largest difference.

Workload: all 252 units of LeNet3 (Molchanov et al. 2019, Sec. 4.1) on 2,000 Fashion-MNIST
training images (random images when the data set is not available; the timing does not depend
on the pixel values), in batches of 500. Target: the batched oracle under 10 s on a 2-core CPU.
``quick=True``: 200 images.

Run alone: ``python -m bench.oracle_speed [--quick]``.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import torch

from pruninglib.criteria.oracle import naive_oracle_loss_change, oracle_loss_change
from pruninglib.core.graph import prunable_layers
from pruninglib.models import LeNet3
from pruninglib.utils import get_device, set_seed

__all__ = ["run", "TARGET_SECONDS"]

#: The batched oracle should score all 252 LeNet3 units on 2,000 images faster than this.
TARGET_SECONDS = 10.0


def _cpu() -> float:
    return time.process_time()


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from pruninglib.data import load_tensors

        ds = load_tensors("fashion_mnist", "train", n_per_class=max(1, n // 10), seed=0)
        return ds.tensors[0][:n], ds.tensors[1][:n], "Fashion-MNIST training images"
    except Exception as exc:  # data set missing: timing does not depend on the values
        g = torch.Generator().manual_seed(0)
        return (torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                f"random images (Fashion-MNIST unavailable: {type(exc).__name__})")


def run(quick: bool = False) -> dict[str, Any]:
    """Time the batched and the naive oracle over every LeNet3 unit.

    Returns:
        ``markdown`` (the table), ``rows`` (one record per method), ``speedup``,
        ``batched_seconds``, ``naive_seconds``, ``max_abs_difference``, ``target_met``.
    """
    set_seed(0)
    device = get_device()
    n = 200 if quick else 2000
    x, y, what = _data(n)
    model = LeNet3().to(device).eval()
    batches = [(x[i:i + 500].to(device), y[i:i + 500].to(device)) for i in range(0, n, 500)]
    units = sum(pl.num_units for pl in prunable_layers(model))
    oracle_loss_change(model, batches[:1], units={"classifier.3": [0]})  # warm-up

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        c, w = _cpu(), time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - w, _cpu() - c

    fast, w_fast, c_fast = timed(lambda: oracle_loss_change(model, batches))
    slow, w_slow, c_slow = timed(lambda: naive_oracle_loss_change(model, batches))
    diff = max((fast[k] - slow[k]).abs().max().item() for k in fast)
    speedup = w_slow / w_fast
    rows = [
        {"method": "naive loop (one evaluation per unit)", "units": units, "images": n,
         "wall s": round(w_slow, 3), "CPU s": round(c_slow, 3), "speed-up": 1.0},
        {"method": "batched (cached consumer inputs, one grouped conv per layer)", "units": units, "images": n,
         "wall s": round(w_fast, 3), "CPU s": round(c_fast, 3), "speed-up": round(speedup, 1)},
    ]
    met = w_fast < TARGET_SECONDS
    lines = ["| method | units | images | wall s | CPU s | speed-up |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['units']} | {r['images']} | {r['wall s']:.3f} | {r['CPU s']:.3f} | "
              f"{r['speed-up']:.1f}x |" for r in rows]
    md = "\n".join(lines) + (
        f"\n\nLeNet3 (random init) on {n} {what}, batches of 500, {torch.get_num_threads()} thread(s), "
        f"{device.type}. Largest difference between the two: {diff:.1e} (both are exact). "
        f"Target: batched oracle over all {units} units on 2,000 images in under {TARGET_SECONDS:.0f} s — "
        + ("met" if met else "NOT met") + (" (quick run: 200 images)." if quick else "."))
    return {"markdown": md, "rows": rows, "speedup": speedup, "batched_seconds": w_fast,
            "naive_seconds": w_slow, "max_abs_difference": diff, "target_met": met}


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv[1:])["markdown"])
