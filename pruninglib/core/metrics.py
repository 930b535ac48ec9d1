"""How big and how fast: parameters, MACs, size on disk, measured latency."""
from __future__ import annotations

import io
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["count_parameters", "count_macs", "size_on_disk", "measure_latency", "time_runs", "LatencyResult",
           "model_report"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (gates included if present)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224),
               example: torch.Tensor | None = None, nonzero_only: bool = False) -> int:
    """Multiply-accumulates of one forward pass for ONE sample, counting Conv2d and Linear.

    A conv contributes ``H_out * W_out * C_out * (C_in / groups) * k_h * k_w``; a Linear
    ``in * out``. Biases, BatchNorm, activations and pooling are not counted (the usual
    convention; torchvision VGG16 at 224x224 gives 15.47 GMACs).

    Args:
        model: the model.
        input_size: shape of the example input (batch first) when ``example`` is None.
        example: an example input.
        nonzero_only: count only the non-zero weights (the MACs a sparse kernel that skips zeros
            would do; :func:`pruninglib.methods.unstructured.sparse_macs`).
    """
    total = 0

    def weights(m: nn.Module) -> int:
        # a conv's weight holds C_out * (C_in / groups) * k_h * k_w entries, a Linear's in * out
        return int((m.weight != 0).sum()) if nonzero_only else m.weight.numel()

    def conv_hook(m: nn.Conv2d, i: tuple, o: torch.Tensor) -> None:
        nonlocal total
        total += o.shape[2] * o.shape[3] * weights(m)

    def lin_hook(m: nn.Linear, i: tuple, o: torch.Tensor) -> None:
        nonlocal total
        total += (o.numel() // o.shape[0] // m.out_features) * weights(m)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(lin_hook))
    p = next(model.parameters())
    x = example if example is not None else torch.zeros(input_size, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def size_on_disk(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (what a saved checkpoint costs)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


@dataclass
class LatencyResult:
    """Median, min and max seconds per forward pass, and the conditions they were taken in."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    batch_size: int
    threads: int
    device: str

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.median_s * 1e3:.2f} ms median (min {self.min_s * 1e3:.2f}, max "
                f"{self.max_s * 1e3:.2f}; {self.repeats} repeats, batch {self.batch_size}, "
                f"{self.threads} threads, {self.device})")


def time_runs(model: nn.Module, example: torch.Tensor, warmup: int = 3, repeats: int = 10,
              timer: Callable[[], float] = time.perf_counter) -> list[float]:
    """The raw timing loop: ``warmup`` untimed runs, then the duration of each of ``repeats``
    runs of ``model(example)`` in eval mode under ``torch.no_grad``, read from ``timer``.
    On CUDA the device is synchronised around every run. Threads are left as they are."""
    sync = torch.cuda.synchronize if example.device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(example)
            sync()
            for _ in range(repeats):
                t0 = timer()
                model(example)
                sync()
                times.append(timer() - t0)
    finally:
        model.train(was_training)
    return times


def measure_latency(model: nn.Module, example: torch.Tensor, warmup: int = 3, repeats: int = 10,
                    threads: int | None = None, clock: str = "wall") -> LatencyResult:
    """Time ``model(example)`` in eval mode under ``torch.no_grad``.

    Warm-up runs first, then ``repeats`` timed runs; the median is the number to quote.
    On CUDA the device is synchronised around every run.

    Args:
        model: the model (on the device to time).
        example: the input batch (its first dimension is the batch size reported).
        warmup: untimed runs.
        repeats: timed runs.
        threads: set ``torch.set_num_threads`` for the measurement (restored afterwards).
        clock: ``"wall"`` (``time.perf_counter``) or ``"cpu"``: the calling thread's CPU time
            (``time.thread_time``) on ONE thread, CPU inputs only. The CPU clock is the work one
            core does, which other processes on a shared machine do not inflate.

    Raises:
        ValueError: for an unknown clock, or ``clock="cpu"`` with a non-CPU input or more threads.
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu":
        if example.device.type != "cpu":
            raise ValueError(f"clock='cpu' times CPU inputs only, got {example.device}; use clock='wall'")
        if threads not in (None, 1):
            raise ValueError(f"clock='cpu' runs on one thread (helper threads' CPU time would not be counted); "
                             f"got threads={threads}: use clock='wall' for more")
        threads = 1
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        times = time_runs(model, example, warmup, repeats,
                          timer=time.thread_time if clock == "cpu" else time.perf_counter)
        n_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
    device = "cpu (thread CPU time)" if clock == "cpu" else str(example.device)
    return LatencyResult(statistics.median(times), min(times), max(times), repeats,
                         int(example.shape[0]), n_threads, device)


def model_report(model: nn.Module, example: torch.Tensor, latency: bool = True,
                 repeats: int = 10) -> dict:
    """Parameters, MACs, size on disk (MB) and, optionally, median latency (ms) in one dict."""
    out = {"params": count_parameters(model), "macs": count_macs(model, example=example),
           "size_mb": size_on_disk(model) / 1e6}
    if latency:
        out["latency_ms"] = measure_latency(model, example, repeats=repeats).median_s * 1e3
    return out
