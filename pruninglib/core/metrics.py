"""How big and how fast: parameters, MACs, size on disk, and all latency timing.

Every latency the collection quotes is taken by :func:`measure_latency` (lessons 00, 04, 06 and ``bench/``);
:func:`measure_model`, :func:`layer_times` and :func:`part_shares` say where size and time go (lesson 04)."""
from __future__ import annotations

import copy
import io
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

__all__ = ["count_parameters", "count_macs", "size_on_disk", "measure_latency", "time_runs", "LatencyResult",
           "interleaved_latency", "compare_latency", "cpu_latency", "measure_model", "layer_times", "part_shares"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (gates included if present). Used in lessons 00, 02, 04, 05 and 06."""
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

    Used in lessons 00, 02, 03, 04, 05 and 06.
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
    """Bytes of ``torch.save(model.state_dict())`` (what a saved checkpoint costs). Used in lessons 00 and 04."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


@dataclass
class LatencyResult:
    """Median, min and max seconds per forward pass, and the conditions they were taken in.

    Used in lessons 00, 04 and 06.
    """

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
    On CUDA the device is synchronised around every run. Threads are left as they are.

    Used in lessons 00, 04 and 06.
    """
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

    Used in lessons 00 and 04.
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


def interleaved_latency(models: Mapping[str, nn.Module], example: torch.Tensor, rounds: int = 5, repeats: int = 1,
                        warmup: int = 1, rewarm: int = 0, threads: int | None = None, clock: str = "wall",
                        timer: Callable[[], float] | None = None) -> dict[str, LatencyResult]:
    """Latency of several models on the same input, measured in interleaved rounds.

    On a busy machine the load changes from second to second: timing model A now and model B
    later compares the load, not the models. Here every round times each model in turn
    (``repeats`` runs each), so drifts hit all of them alike and ratios of the medians are fair.
    Every model gets ``warmup`` untimed runs in the first round and ``rewarm`` in each later one.
    Used in lessons 04 and 06 and in ``bench/``.

    Args:
        models: ``label -> model`` (already on ``example``'s device).
        example: the input batch.
        rounds, repeats: timed rounds, and timed runs per model per round.
        warmup, rewarm: untimed runs per model before the first round, and before each later one.
        threads: ``torch.set_num_threads`` for the measurement (restored afterwards).
        clock: ``"wall"`` or ``"cpu"`` (one thread's CPU time), as in :func:`measure_latency`.
        timer: a clock to use instead (tests pass a fake one).

    Returns:
        ``label -> LatencyResult`` over all ``rounds * repeats`` runs.

    Raises:
        ValueError: ``rounds`` or ``repeats`` below 1, or an unknown clock.
    """
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1, got {rounds}, {repeats}")
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    timer = timer or (time.thread_time if clock == "cpu" else time.perf_counter)
    if clock == "cpu":
        threads = 1
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    times: dict[str, list[float]] = {k: [] for k in models}
    try:
        for r in range(rounds):
            for k, m in models.items():
                times[k] += time_runs(m, example, warmup if r == 0 else rewarm, repeats, timer=timer)
        n_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
    device = "cpu (thread CPU time)" if clock == "cpu" else str(example.device)
    return {k: LatencyResult(statistics.median(v), min(v), max(v), len(v), int(example.shape[0]), n_threads, device)
            for k, v in times.items()}


def compare_latency(models: Mapping[str, nn.Module], example: torch.Tensor, reference: str | None = None,
                    rounds: int = 5, repeats: int = 1, warmup: int = 1, threads: int | None = None,
                    clock: str = "wall", timer: Callable[[], float] | None = None) -> list[dict[str, Any]]:
    """Time ``models`` interleaved (:func:`interleaved_latency`) and compare each with ``reference``.

    A speed-up is only a result when the two spreads do not overlap: with medians of few runs on a
    shared machine, a pruned network can look a few percent slower (or faster) than the one it came
    from by chance. Each row says so (``within_spread``), so that a lesson prints "no measurable
    difference" instead of a false "0.97x". Used in lesson 04.

    Args:
        models: ``label -> model`` on ``example``'s device, in the order to report.
        example: the input batch.
        reference: the label the speed-ups are taken against (default: the first).
        rounds, repeats, warmup, threads, clock, timer: as in :func:`interleaved_latency`.

    Returns:
        One dict per model: ``label``, ``median_ms``, ``min_ms``, ``max_ms``, ``speedup`` (reference
        median / this median), ``within_spread`` (the [min, max] ranges overlap the reference's),
        ``slower`` (its fastest run is slower than the reference's slowest: a real slow-down).
    """
    lat = interleaved_latency(models, example, rounds=rounds, repeats=repeats, warmup=warmup, threads=threads,
                              clock=clock, timer=timer)
    ref = lat[reference or next(iter(models))]
    rows = []
    for k, r in lat.items():
        overlap = r.min_s <= ref.max_s and ref.min_s <= r.max_s
        rows.append({"label": k, "median_ms": r.median_s * 1e3, "min_ms": r.min_s * 1e3, "max_ms": r.max_s * 1e3,
                     "speedup": ref.median_s / r.median_s, "within_spread": overlap,
                     "slower": r.min_s > ref.max_s})
    return rows


def _on(model: nn.Module, device: torch.device) -> nn.Module:
    p = next(model.parameters())
    return model if p.device == device else copy.deepcopy(model).to(device)


def cpu_latency(model: nn.Module, example: torch.Tensor, warmup: int = 2, repeats: int = 10,
                threads: int | None = 1) -> LatencyResult:
    """:func:`pruninglib.core.metrics.measure_latency` timed by the thread's CPU time (``clock="cpu"``).

    Runs on one CPU thread (``threads`` other than 1 is refused: the CPU time of helper
    threads would not be counted), so ``time.thread_time`` around ``model(example)`` is the
    work one core does -- the latency on an otherwise idle core. Other processes on a shared
    machine inflate wall-clock times, not this.

    Raises:
        ValueError: for a non-CPU input or ``threads`` other than 1/None.

    Used in lesson 04.
    """
    return measure_latency(model, example, warmup=warmup, repeats=repeats, threads=threads, clock="cpu")


def measure_model(model: nn.Module, size: int = 224, batch: int = 32, throughput_size: int | None = None,
                  devices: Sequence[str | torch.device] = ("cpu",), repeats: int = 10, warmup: int = 2,
                  with_size: bool = True, stat: str = "median", threads: int | None = None,
                  clock: str = "wall") -> dict[str, float]:
    """Parameters, MACs, size on disk, batch-1 latency and batch throughput, per device.

    Args:
        model: the model (not changed; copied to another device when needed).
        size: input side for MACs and batch-1 latency (224 to compare with published numbers).
        batch: batch size for the throughput measurement.
        throughput_size: input side for throughput (default ``size``).
        devices: where to time (``"cpu"``, ``"cuda"``); keys get the device type as suffix.
        repeats, warmup: see :func:`pruninglib.core.metrics.measure_latency` (the median is kept).
        with_size: serialise the state dict to count bytes (costs ~1 s for VGG16).
        stat: ``"median"`` (the usual number to quote) or ``"min"`` (the fastest repeat: the
            least disturbed by other processes on a shared machine, as ``timeit`` advises).
        threads: CPU threads for the timing (``None``: torch's current setting). On a busy
            machine one thread gives far steadier times: threads of one op wait for each other.
        clock: ``"wall"`` (:func:`pruninglib.core.metrics.measure_latency`) or ``"cpu"``: on the CPU,
            with one thread, the *thread's CPU time* per forward pass (``time.thread_time``) --
            what an otherwise idle core would take; other processes on a shared machine do not
            inflate it. GPUs are always timed by the wall clock.

    Returns:
        ``params``, ``macs`` (per image at ``size``), ``size_mb`` and, for each device ``d``,
        ``latency_ms_d`` (batch 1) and ``throughput_d`` (images per second).

    Used in lesson 04.
    """
    if size <= 0 or batch <= 0 or repeats <= 0:
        raise ValueError(f"size, batch and repeats must be positive, got {size}, {batch}, {repeats}")
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', got {stat!r}")
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    pick = (lambda r: r.median_s) if stat == "median" else (lambda r: r.min_s)
    ts = throughput_size or size
    out: dict[str, float] = {"params": count_parameters(model),
                             "macs": count_macs(model, (1, 3, size, size))}
    if with_size:
        out["size_mb"] = size_on_disk(model) / 1e6
    for d in devices:
        dev = torch.device(d)
        m = _on(model, dev)
        th = threads if dev.type == "cpu" else None
        clk = clock if dev.type == "cpu" else "wall"  # a GPU is timed by the wall clock
        lat = measure_latency(m, torch.randn(1, 3, size, size, device=dev), warmup=warmup, repeats=repeats,
                              threads=th, clock=clk)
        thr = measure_latency(m, torch.randn(batch, 3, ts, ts, device=dev), warmup=1, repeats=max(1, repeats // 2),
                              threads=th, clock=clk)
        out[f"latency_ms_{dev.type}"] = pick(lat) * 1e3
        out[f"throughput_{dev.type}"] = batch / pick(thr)
    return out


@torch.no_grad()
def layer_times(model: nn.Module, example: torch.Tensor, repeats: int = 5, warmup: int = 1,
                stat: str = "median", threads: int | None = None, clock: str = "wall") -> dict[str, float]:
    """Median (or min) forward time (seconds) of every leaf module, measured with forward hooks.

    A pre-hook and a hook around each leaf (conv, ReLU, pool, Linear, ...) read
    ``time.perf_counter`` (CUDA is synchronised); the median over ``repeats`` passes is kept.
    The sum is close to, and slightly above, the plain latency (hook overhead).

    Args:
        model: the model (eval mode during the measurement).
        example: one input batch.
        repeats, warmup: timed and untimed passes.
        stat: ``"median"`` or ``"min"`` over the repeats, per layer.
        threads: CPU threads for the measurement (``None``: unchanged).
        clock: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.thread_time`` with one
            thread; CPU only), see :func:`measure_model`.

    Returns:
        ``{leaf module name: seconds}`` in forward order.

    Used in lesson 04.
    """
    if repeats <= 0:
        raise ValueError(f"repeats must be positive, got {repeats}")
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', got {stat!r}")
    reduce = statistics.median if stat == "median" else min
    cuda = example.device.type == "cuda"
    if clock not in ("wall", "cpu") or (clock == "cpu" and cuda):
        raise ValueError(f"clock must be 'wall', or 'cpu' for a CPU input; got {clock!r} on {example.device}")
    if clock == "cpu":
        threads = 1
    now = time.thread_time if clock == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    runs: dict[str, list[float]] = {n: [] for n, _ in leaves}
    start: dict[str, float] = {}
    handles = []

    def pre(name: str):
        def h(m: nn.Module, i: tuple) -> None:
            sync()
            start[name] = now()
        return h

    def post(name: str):
        def h(m: nn.Module, i: tuple, o: Any) -> None:
            sync()
            runs[name].append(now() - start[name])
        return h

    was_training = model.training
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    try:
        for _ in range(warmup):
            model(example)
        for n, m in leaves:
            handles.append(m.register_forward_pre_hook(pre(n)))
            handles.append(m.register_forward_hook(post(n)))
        for _ in range(repeats):
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        torch.set_num_threads(old_threads)
    return {n: reduce(v) for n, v in runs.items() if v}


def part_shares(model: nn.Module, size: int = 224, times: Mapping[str, float] | None = None) -> dict[str, dict]:
    """Parameters, MACs and (optionally) time of each top-level part (``features``, ``classifier``, ...).

    Shows why the FC layers of VGG16 hold ~89% of the parameters but ~1% of the MACs.

    Args:
        model: the model.
        size: input side for the MAC count.
        times: :func:`layer_times` output (seconds per leaf), to add a ``time_s`` column.

    Returns:
        ``{part: {"params", "macs", "time_s"?, "params_share", "macs_share", "time_share"?}}``.

    Used in lesson 04.
    """
    macs: dict[str, int] = {}
    handles = []

    def hook(name: str):
        def h(m: nn.Module, i: tuple, o: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d):  # same convention as pruninglib.core.metrics.count_macs
                kh, kw = m.kernel_size
                n = o.shape[2] * o.shape[3] * m.out_channels * (m.in_channels // m.groups) * kh * kw
            else:
                n = (o.numel() // o.shape[0] // m.out_features) * m.in_features * m.out_features
            macs[name] = macs.get(name, 0) + int(n)
        return h

    parts = dict(model.named_children())
    out: dict[str, dict] = {}
    for part, mod in parts.items():
        out[part] = {"params": count_parameters(mod), "macs": 0}
        for n, m in mod.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                handles.append(m.register_forward_hook(hook(part)))
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for part in out:
        out[part]["macs"] = macs.get(part, 0)
        if times is not None:
            out[part]["time_s"] = sum(t for n, t in times.items() if n == part or n.startswith(part + "."))
    for key in ("params", "macs", "time_s"):
        total = sum(v.get(key, 0) for v in out.values())
        if key in next(iter(out.values())) and total:
            for v in out.values():
                v[key.replace("_s", "") + "_share"] = v[key] / total
    return out
