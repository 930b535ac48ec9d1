"""Say what a paper run costs before it starts: a timed warm-up of a lesson's main steps (issue 18, Sec. 4).

A paper-mode run of a lesson is a few kinds of repeated work: optimiser steps of a model on a batch, oracle
passes, forward passes for a latency table. Each lesson lists them as :class:`Phase` objects -- one unit of
the work as a callable, and how many units its *paper* settings do -- and calls :func:`estimate_run` at the
start of a paper run (smoke runs included: they exercise the same code, and print the estimate labelled as
coming from a smoke run). :func:`estimate_run` times a short warm-up of every phase on the current device,
multiplies by the counts, prints one line::

    lesson 05 paper mode: about 9.4 h on this device (cuda, NVIDIA H200) -- estimate from a timed warm-up

and records ``paper_estimate_hours`` (and ``paper_estimate_tflop``, the phases' compute from their MAC counts)
for the batch runner's summary. The timings are measured; the total is an extrapolation (the phases a lesson
lists cover its long loops, not every cell) and is labelled as an estimate.

:func:`gpu_hours` turns the compute into hours on one GPU of a given sustained throughput: the README's
table of estimated paper-mode hours when no GPU is at hand, labelled as an estimate until measured.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

__all__ = ["Phase", "Estimate", "time_step", "estimate_run", "gpu_hours", "training_flops", "SUSTAINED_TFLOPS",
           "TRAIN_SIZES", "sgd_step", "forward_step", "steps_per_epoch", "timing_batch"]

#: Training images of the full datasets that paper mode reads (what a paper run iterates over; the smoke
#: run's stand-ins are smaller, so the estimate uses these): torchvision's MNIST / Fashion-MNIST (60,000),
#: CIFAR-10 (50,000); the blog post's Dogs vs Cats split (1,000 cats + 1,000 dogs).
TRAIN_SIZES: dict[str, int] = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000, "cats_vs_dogs": 2_000}

#: Assumed sustained throughput (TFLOP/s) of one modern data-centre GPU on these small conv nets in bf16
#: (an A100/H100 reaches 20-40 % of its ~300-1000 dense bf16 TFLOP/s peak on CIFAR-size models):
#: the default of :func:`gpu_hours`. An assumption, stated wherever it is used.
SUSTAINED_TFLOPS = 100.0


@dataclass
class Phase:
    """One kind of repeated work of a paper run.

    Attributes:
        name: what the unit is (``"VGG-16 SGD step, batch 64"``).
        step: does one unit of the work (one optimiser step, one oracle pass); called a few times to time it.
        count: how many units the paper settings do (e.g. ``epochs * batches_per_epoch``).
        flops: floating-point operations of one unit (e.g. :func:`training_flops`), or ``None`` if not counted.
        per_call: how many units one call of ``step`` does (``1/16``: a call times a sixteenth of the unit,
            e.g. a CPU warm-up on 8 of 128 images, :func:`timing_batch`); the time per unit is scaled by it.
        warmup, repeats: this phase's untimed and timed calls (``None``: :func:`estimate_run`'s); a slow
            unit (an exact Hessian) is timed once.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """

    name: str
    step: Callable[[], Any]
    count: float
    flops: float | None = None
    per_call: float = 1.0
    warmup: int | None = None
    repeats: int | None = None


@dataclass
class Estimate:
    """The result of :func:`estimate_run`.

    Attributes:
        lesson: ``"05"``.
        device: the device the warm-up ran on, in words.
        seconds: the extrapolated wall time of the listed phases on this device.
        rows: one dict per phase: ``phase``, ``seconds per unit``, ``units``, ``hours``.
        tflop: the phases' compute in TFLOP (phases without ``flops`` count 0).
        smoke: whether the warm-up ran in a smoke run.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """

    lesson: str
    device: str
    seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    tflop: float = 0.0
    smoke: bool = False

    @property
    def hours(self) -> float:
        """The estimate in hours."""
        return self.seconds / 3600.0

    def line(self) -> str:
        """``lesson NN paper mode: about N h on this device (...)``."""
        h = self.hours
        amount = f"{h:.1f} h" if h >= 0.95 else f"{self.seconds / 60:.0f} min" if self.seconds >= 60 else \
            f"{self.seconds:.0f} s"
        note = "; measured in a SMOKE run (stand-in data), the estimate is for the full paper settings" \
            if self.smoke else ""
        return (f"lesson {self.lesson} paper mode: about {amount} on this device ({self.device}) -- an estimate "
                f"from a timed warm-up of its main steps{note}")


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()


def time_step(step: Callable[[], Any], warmup: int = 1, repeats: int = 2,
              device: torch.device | None = None) -> float:
    """Median wall seconds of ``step()`` over ``repeats`` timed calls after ``warmup`` untimed ones
    (the device synchronised around each call). Used in lessons 00-06 through :func:`estimate_run`.

    Raises:
        ValueError: ``repeats`` < 1 or ``warmup`` < 0.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def training_flops(macs_per_sample: float, batch: int, backward_factor: float = 3.0) -> float:
    """FLOPs of one training step: ``2 * MACs * batch * backward_factor`` (forward + a backward of about
    twice its cost). Used in lessons 00-06 for :attr:`Phase.flops`."""
    return 2.0 * float(macs_per_sample) * int(batch) * backward_factor


def steps_per_epoch(dataset: str, batch: int, n_per_class: int | None = None, classes: int = 10) -> int:
    """Optimiser steps of one epoch over paper mode's training set (:data:`TRAIN_SIZES`), or over
    ``n_per_class * classes`` images when the settings take a subset. Used in lessons 00-06."""
    n = TRAIN_SIZES[dataset] if n_per_class is None else min(int(n_per_class) * classes, TRAIN_SIZES[dataset])
    return -(-n // int(batch))


def timing_batch(batch: int, device: torch.device | str | None = None, cpu_max: int = 8) -> int:
    """The batch a warm-up times: the real ``batch`` on an accelerator, at most ``cpu_max`` on a CPU (where the
    time per image hardly depends on the batch, and a full batch of a big model takes seconds); pass
    ``per_call=timing_batch(...) / batch`` to :class:`Phase`. Used in lessons 00-06."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return int(batch) if dev.type != "cpu" else max(1, min(int(batch), cpu_max))


def sgd_step(model: torch.nn.Module, input_shape: Sequence[int], num_classes: int,
             device: torch.device | None = None, lr: float = 1e-3) -> Callable[[], None]:
    """One SGD step (forward, cross-entropy, backward, update) of a *copy* of ``model`` on a random batch
    of ``input_shape`` (batch first): the unit of a training phase. Used in lessons 00-06."""
    import copy

    import torch.nn.functional as F

    net = copy.deepcopy(model)
    dev = device or next(net.parameters()).device
    net = net.to(dev).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*input_shape, generator=g).to(dev)
    y = torch.randint(0, num_classes, (int(input_shape[0]),), generator=g).to(dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return step


def forward_step(model: torch.nn.Module, input_shape: Sequence[int], device: torch.device | None = None,
                 grad: bool = False) -> Callable[[], None]:
    """One forward pass of ``model`` (eval mode, no gradients unless ``grad``) on a random batch: the unit of
    an evaluation, oracle or latency phase. Used in lessons 00-06."""
    dev = device or next(model.parameters()).device
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0)).to(dev)

    def step() -> None:
        was = model.training
        model.eval()
        with torch.set_grad_enabled(grad):
            model(x)
        model.train(was)
    return step


def gpu_hours(tflop: float, sustained_tflops: float = SUSTAINED_TFLOPS) -> float:
    """Hours of ``tflop`` TFLOP at ``sustained_tflops`` TFLOP/s: the FLOPs-based estimate for a GPU not at
    hand (README table). An estimate: real runs also spend time in data loading and small kernels.

    Used in lessons 00-06 (printed beside the measured estimate) and the README table.
    """
    if sustained_tflops <= 0:
        raise ValueError(f"sustained_tflops must be positive, got {sustained_tflops}")
    return float(tflop) / sustained_tflops / 3600.0


def estimate_run(lesson: str, phases: Sequence[Phase], device: torch.device | None = None, warmup: int = 1,
                 repeats: int = 2, show: bool = True, record_it: bool = True) -> Estimate:
    """Time a short warm-up of every phase, extrapolate to the paper counts, print and record the total.

    The model state a phase's step changes (an optimiser step on a scratch copy) is the lesson's business:
    give steps that work on copies, so the estimate does not change the run that follows.

    Args:
        lesson: the lesson's number (``"05"``).
        phases: the repeated work of a paper run (:class:`Phase`).
        device: the device the steps run on (synchronised when timing).
        warmup, repeats: untimed and timed calls per phase (:func:`time_step`); a smoke run
            (:func:`pruninglib.utils.is_smoke`) makes one timed call per phase, nothing more.
        show: print the line and a per-phase breakdown.
        record_it: record ``paper_estimate_hours`` and ``paper_estimate_tflop`` (:func:`pruninglib.record`).

    Returns:
        The :class:`Estimate`.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    from pruninglib.utils import describe_device, is_smoke

    if not phases:
        raise ValueError("estimate_run needs at least one Phase (the lesson's main repeated steps)")
    rows, total, tflop = [], 0.0, 0.0
    smoke = is_smoke()
    for ph in phases:
        if ph.count < 0:
            raise ValueError(f"phase {ph.name!r}: count must be >= 0, got {ph.count}")
        w = warmup if ph.warmup is None else ph.warmup
        r = repeats if ph.repeats is None else ph.repeats
        if smoke:  # a smoke run checks the code path: a single timed call per phase
            w, r = 0, 1
        if ph.per_call <= 0:
            raise ValueError(f"phase {ph.name!r}: per_call must be positive, got {ph.per_call}")
        s = time_step(ph.step, w, r, device) / ph.per_call if ph.count > 0 else 0.0
        total += s * ph.count
        tflop += (ph.flops or 0.0) * ph.count / 1e12
        rows.append({"phase": ph.name, "seconds per unit": s, "units": ph.count, "hours": s * ph.count / 3600})
    est = Estimate(lesson, describe_device(device) if device is not None else describe_device(), total, rows,
                   tflop, smoke)
    if show:
        print(est.line())
        for r in rows:
            print(f"  {r['phase']}: {r['seconds per unit'] * 1e3:.1f} ms x {r['units']:,.0f} = {r['hours']:.2f} h")
        if tflop:
            g = gpu_hours(tflop)
            print(f"  compute of these phases: {tflop:,.1f} TFLOP, at best about "
                  + (f"{g:.1f} h" if g >= 0.95 else f"{g * 60:.0f} min")
                  + f" on one GPU sustaining {SUSTAINED_TFLOPS:.0f} TFLOP/s (FLOPs-based lower bound: small models "
                  "reach far less)")
    if record_it:
        from pruninglib.run.record import record

        record("paper_estimate_hours", round(est.hours, 4))
        record("paper_estimate_tflop", round(tflop, 3))
    return est
