"""Every GPU switch in one place (issue 18, section 2): a policy chosen by mode and device.

Paper mode on a GPU should use it well; quick and laptop mode on a CPU must not change by a bit.
So the switches below are ON by default only in **paper mode on CUDA** (and, where sensible, MPS),
and OFF everywhere else. The training and evaluation loops (:mod:`pruninglib.train`) and
:func:`pruninglib.train.make_loader` read the policy that :func:`pruninglib.utils.setup` sets for
the run; no notebook copies any of it.

=====================  ==============================  =========================================
switch                 environment variable            paper mode on CUDA (MPS) / everywhere else
=====================  ==============================  =========================================
``autocast``           ``PRUNINGLIB_AUTOCAST``         bf16 autocast in training and evaluation
                                                        (MPS: macOS 14+) / off
``channels_last``      ``PRUNINGLIB_CHANNELS_LAST``    conv nets and image batches in NHWC inside the
                                                        loops (MPS: off) / off
``cudnn_benchmark``    ``PRUNINGLIB_CUDNN_BENCHMARK``  ``torch.backends.cudnn.benchmark = True`` / off
``deterministic``      ``PRUNINGLIB_DETERMINISTIC``    off (fast kernels) / on (:func:`~pruninglib.utils.set_seed`)
``tf32``               ``PRUNINGLIB_TF32``             off: fp32 maths outside autocast is IEEE fp32 /
                                                        torch's default left alone
``device_data``        ``PRUNINGLIB_DEVICE_DATA``      datasets that fit kept on the device / off
``pin_memory``         ``PRUNINGLIB_PIN_MEMORY``       pinned host memory for photo loaders (MPS: off) / off
``workers``            ``PRUNINGLIB_WORKERS``          DataLoader workers for photos (CPUs - 1, at most 8) / 0
``compile``            ``PRUNINGLIB_COMPILE``          off (``torch.compile`` on request) / off
=====================  ==============================  =========================================

``PRUNINGLIB_ACCEL=0`` switches everything off (the CPU behaviour, on any device);
``PRUNINGLIB_ACCEL=1`` takes the accelerator defaults in every mode (e.g. laptop mode on a GPU).
A single variable above wins over both, and an argument of :func:`policy_for` wins over the
variable. Boolean variables take ``1/0``, ``true/false``, ``yes/no`` or ``on/off``; ``PRUNINGLIB_WORKERS``
a count; ``PRUNINGLIB_DEVICE_DATA_MB`` caps the data kept on the device (default: a quarter of the
device's memory). A value that is none of these is refused with the variable's name.

**Precision.** bf16 autocast (Micikevicius et al. 2018, *Mixed Precision Training*; bf16 needs no
loss scaling) runs only inside :func:`pruninglib.train.train_epoch` and :func:`pruninglib.train.evaluate`.
Hessians, oracles, criteria, surgery and finite-difference checks run outside those loops, so they
stay in fp32 -- and with ``tf32`` off that is true IEEE fp32 on Ampere and later GPUs too (PyTorch
lets cuDNN convolutions use TF32 by default). Code that must be fp32 even when called from inside
an autocast region wraps itself in :func:`full_precision` (a context manager and a decorator).

**Data on the device.** :func:`device_loader` serves a ``TensorDataset`` (Fashion-MNIST and MNIST
from :func:`pruninglib.data.load_tensors`, cached features) and a torchvision image dataset whose
``transform`` it can replay on the device (CIFAR-10's pad / random crop / flip / ``ToTensor`` /
``Normalize``) from device memory: the same batches in the same order as
``DataLoader(dataset, batch_size, shuffle, generator=...)`` (the random crops and flips are drawn
on the device instead, seeded by ``torch.manual_seed``). Anything else (the photos of lesson 04)
goes through a DataLoader with workers and pinned memory.

Used in every lesson (through :func:`pruninglib.utils.setup` and :mod:`pruninglib.train`) and in
``bench/gpu_check.py``.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import BatchSampler, Dataset, RandomSampler, SequentialSampler, Subset, TensorDataset

__all__ = ["AccelPolicy", "OFF", "ENV", "policy_for", "for_device", "configure", "current_policy", "set_policy", "use_policy",
           "apply_backends", "autocast", "full_precision", "is_full_precision", "prepare_model", "in_loop",
           "uses_channels_last", "to_device",
           "loader_kwargs", "device_loader", "DeviceLoader", "dataset_nbytes"]

#: The environment variable of each switch (``PRUNINGLIB_ACCEL`` sets all of them at once).
ENV: dict[str, str] = {
    "autocast": "PRUNINGLIB_AUTOCAST",
    "channels_last": "PRUNINGLIB_CHANNELS_LAST",
    "cudnn_benchmark": "PRUNINGLIB_CUDNN_BENCHMARK",
    "deterministic": "PRUNINGLIB_DETERMINISTIC",
    "tf32": "PRUNINGLIB_TF32",
    "device_data": "PRUNINGLIB_DEVICE_DATA",
    "pin_memory": "PRUNINGLIB_PIN_MEMORY",
    "workers": "PRUNINGLIB_WORKERS",
    "compile": "PRUNINGLIB_COMPILE",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class AccelPolicy:
    """Which GPU switches a run uses (see the module docstring for each one).

    ``tf32=None`` leaves torch's TF32 setting alone; ``deterministic=True`` leaves what
    :func:`pruninglib.utils.set_seed` chose. :data:`OFF` (all off) changes nothing at all.

    Used in every lesson (through :func:`pruninglib.utils.setup`) and in ``bench/gpu_check.py``.
    """

    device: torch.device = torch.device("cpu")
    autocast: bool = False
    dtype: torch.dtype = torch.bfloat16
    channels_last: bool = False
    cudnn_benchmark: bool = False
    deterministic: bool = True
    tf32: bool | None = None
    device_data: bool = False
    device_data_max_bytes: int | None = None
    pin_memory: bool = False
    workers: int = 0
    compile: bool = False
    reason: str = "default"
    changed: tuple[str, ...] = field(default=(), compare=False)

    @property
    def active(self) -> bool:
        """Whether any switch differs from :data:`OFF` (the CPU behaviour)."""
        return any(getattr(self, k) != getattr(OFF, k) for k in ENV)

    def describe(self) -> str:
        """One line: what is on, on which device, and why (the banner of :func:`pruninglib.utils.setup`)."""
        on = []
        if self.autocast:
            on.append(f"{str(self.dtype).removeprefix('torch.')} autocast")
        if self.channels_last:
            on.append("channels_last")
        if self.cudnn_benchmark:
            on.append("cudnn.benchmark")
        if not self.deterministic:
            on.append("non-deterministic kernels")
        if self.tf32 is not None:
            on.append("TF32" if self.tf32 else "IEEE fp32 outside autocast")
        if self.device_data:
            on.append("data on device")
        if self.workers or self.pin_memory:
            on.append(f"{self.workers} loader worker{'s' if self.workers != 1 else ''}" + (" + pinned memory" if self.pin_memory else ""))
        if self.compile:
            on.append("torch.compile")
        what = ", ".join(on) if on else "off"
        set_by = f"; set by {', '.join(self.changed)}" if self.changed else ""
        return f"GPU switches: {what} ({self.reason} on {self.device.type}{set_by}; see pruninglib.accel)"


#: Everything off: the behaviour on a CPU, and before :func:`configure` is called.
OFF = AccelPolicy()


def _parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"{name}={value!r} is not a switch value: use 1 or 0 (also true/false, yes/no, on/off), "
                     f"or unset it for the mode's default")


def _parse_workers(name: str, value: str) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"{name}={value!r} must be a number of DataLoader workers (0, 1, 2, ...), "
                         "or unset for the mode's default")
    return n


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


def _bf16_ok(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively on ``device`` (Ampere+ CUDA; MPS on macOS 14+; CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        check = getattr(mps, "is_macos_or_newer", None)
        try:
            return bool(mps is not None and mps.is_available() and check is not None and check(14, 0))
        except RuntimeError:  # no MPS backend in this build
            return False
    return device.type == "cpu"


def _device_memory(device: torch.device) -> int | None:
    """Total memory of an accelerator in bytes (``None`` when it cannot be asked)."""
    try:
        if device.type == "cuda" and torch.cuda.is_available():
            return torch.cuda.get_device_properties(device).total_memory
        if device.type == "mps":
            rec = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
            return int(rec()) if rec is not None else None
    except RuntimeError:  # no such backend in this build
        return None
    return None


def policy_for(mode: str, device: torch.device | str, env: Mapping[str, str] | None = None,
               **overrides: Any) -> AccelPolicy:
    """The switches for a run of ``mode`` on ``device``: accelerator defaults in paper mode on CUDA
    (and MPS), :data:`OFF` otherwise; then ``PRUNINGLIB_ACCEL``, then each switch's variable, then
    ``overrides`` (keyword arguments named like the fields of :class:`AccelPolicy`).

    Args:
        mode: ``"quick"``, ``"laptop"`` or ``"paper"`` (a smoke run is paper mode).
        device: the run's device.
        env: the environment to read (default ``os.environ``; tests pass a dict).

    Raises:
        ValueError: a variable with a value that is not a switch value (naming it), or an
            unknown keyword.

    Used in every lesson (through :func:`configure`) and in ``bench/gpu_check.py``.
    """
    env = os.environ if env is None else env
    device = torch.device(device)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(AccelPolicy)} - {"reason"})
    if unknown:
        raise ValueError(f"unknown GPU switch(es) {unknown}; known: {sorted(ENV)}")
    master = env.get("PRUNINGLIB_ACCEL", "").strip().lower()
    if master and master not in _TRUE + _FALSE + ("auto",):
        raise ValueError(f"PRUNINGLIB_ACCEL={env['PRUNINGLIB_ACCEL']!r}: use 1 (accelerator defaults in every "
                         "mode), 0 (everything off) or auto (paper mode on a GPU only)")
    accelerator = device.type in ("cuda", "mps")
    on = (mode == "paper" and accelerator) if master in ("", "auto") else master in _TRUE
    reason = f"{mode} mode" if master in ("", "auto") else f"PRUNINGLIB_ACCEL={env['PRUNINGLIB_ACCEL']}"
    values: dict[str, Any] = {}
    if on:
        cuda = device.type == "cuda"
        values = dict(autocast=_bf16_ok(device), channels_last=cuda or device.type == "cpu", cudnn_benchmark=cuda,
                      deterministic=not cuda, tf32=False if cuda else None, device_data=accelerator,
                      pin_memory=cuda, workers=_default_workers(), compile=False)
    changed = []
    for key, var in ENV.items():
        if env.get(var, "").strip():
            parse = _parse_workers if key == "workers" else _parse_bool
            values[key] = parse(var, env[var])
            changed.append(var)
    if env.get("PRUNINGLIB_DEVICE_DATA_MB", "").strip():
        try:
            values["device_data_max_bytes"] = int(float(env["PRUNINGLIB_DEVICE_DATA_MB"]) * 2**20)
        except ValueError:
            raise ValueError(f"PRUNINGLIB_DEVICE_DATA_MB={env['PRUNINGLIB_DEVICE_DATA_MB']!r} must be a number "
                             "of megabytes") from None
        changed.append("PRUNINGLIB_DEVICE_DATA_MB")
    for key, v in overrides.items():
        if key != "reason":
            values[key] = v
            changed.append(f"argument {key}")
    if values.get("device_data") and values.get("device_data_max_bytes") is None:
        total = _device_memory(device)
        values["device_data_max_bytes"] = total // 4 if total else None
    if values.get("pin_memory") and device.type != "cuda":
        values["pin_memory"] = False  # pinned memory speeds up host-to-CUDA copies only
    return AccelPolicy(device=device, reason=overrides.get("reason", reason), changed=tuple(changed), **values)


# A module global, not a ContextVar: a notebook's cells may run in different contexts, and the
# policy setup() sets in the first cell must hold in all of them.
_POLICY: list[AccelPolicy] = [OFF]
_FP32: contextvars.ContextVar[bool] = contextvars.ContextVar("pruninglib_accel_fp32", default=False)


def current_policy() -> AccelPolicy:
    """The policy of this run (:data:`OFF` until :func:`configure` or :func:`set_policy`).

    Used in every lesson (through :mod:`pruninglib.train`).
    """
    return _POLICY[0]


def set_policy(policy: AccelPolicy) -> AccelPolicy:
    """Make ``policy`` the run's policy and apply its backend switches; returns it.

    Used in every lesson (through :func:`configure`).
    """
    if not isinstance(policy, AccelPolicy):
        raise TypeError(f"expected an AccelPolicy, got {type(policy).__name__}")
    _POLICY[0] = policy
    apply_backends(policy)
    return policy


@contextlib.contextmanager
def use_policy(policy: AccelPolicy) -> Iterator[AccelPolicy]:
    """Use ``policy`` inside the block, then restore the previous policy (the backend flags
    too). Used in ``bench/gpu_check.py`` and in tests."""
    before = _POLICY[0]
    saved = _backend_state()
    _POLICY[0] = policy
    try:
        apply_backends(policy)
        yield policy
    finally:
        _POLICY[0] = before
        _restore_backends(saved)


def for_device(device: torch.device | str, policy: AccelPolicy | None = None) -> AccelPolicy:
    """The policy for work on ``device``: the run's (or ``policy``) when ``device`` is of the type it
    was chosen for, else :data:`OFF` -- a CPU copy of a model in a GPU run gets no bf16 autocast.
    Used in every lesson (through :mod:`pruninglib.train`)."""
    policy = policy or current_policy()
    return policy if torch.device(device).type == policy.device.type else OFF


def configure(mode: str, device: torch.device | str, **overrides: Any) -> AccelPolicy:
    """Choose (:func:`policy_for`) and set (:func:`set_policy`) the policy of a run.
    Called by :func:`pruninglib.utils.setup`, after the seeds are set. Used in every lesson."""
    return set_policy(policy_for(mode, device, **overrides))


# ------------------------------------------------------------------------------ backends


def _tf32_get() -> tuple:
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(m, "fp32_precision") and hasattr(getattr(c, "conv", None), "fp32_precision"):
        return ("new", m.fp32_precision, c.conv.fp32_precision)
    return ("old", m.allow_tf32, c.allow_tf32)


def _tf32_set(state: tuple | bool) -> None:
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    if isinstance(state, bool):
        kind = "new" if hasattr(m, "fp32_precision") and hasattr(getattr(c, "conv", None), "fp32_precision") else "old"
        state = (kind, *(("tf32", "tf32") if state else ("ieee", "ieee"))) if kind == "new" else ("old", state, state)
    kind, mat, conv = state
    if kind == "new":  # torch >= 2.9: the old allow_tf32 flags are deprecated
        m.fp32_precision, c.conv.fp32_precision = mat, conv
    else:
        m.allow_tf32, c.allow_tf32 = mat, conv


def _backend_state() -> dict[str, Any]:
    return {"benchmark": torch.backends.cudnn.benchmark, "deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(), "tf32": _tf32_get()}


def _restore_backends(state: Mapping[str, Any]) -> None:
    torch.backends.cudnn.benchmark = state["benchmark"]
    torch.use_deterministic_algorithms(state["deterministic"], warn_only=state["warn_only"])
    _tf32_set(state["tf32"])


def apply_backends(policy: AccelPolicy | None = None) -> None:
    """Set the process-wide backend flags the policy asks for: ``cudnn.benchmark`` (autotuned
    convolutions for fixed shapes), deterministic kernels off, TF32 on or off. :data:`OFF` touches
    nothing. :func:`pruninglib.utils.set_seed` calls it again after it asked for determinism.

    Used in every lesson (through :func:`set_policy` and :func:`pruninglib.utils.set_seed`).
    """
    policy = policy or current_policy()
    if policy.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if not policy.deterministic:
        torch.use_deterministic_algorithms(False)
    if policy.tf32 is not None:
        _tf32_set(bool(policy.tf32))


# ----------------------------------------------------------------------------- precision


def is_full_precision() -> bool:
    """Whether the caller is inside :func:`full_precision` (then :func:`autocast` is a no-op)."""
    return _FP32.get()


def autocast(policy: AccelPolicy | None = None, device: torch.device | str | None = None
             ) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, dtype=bfloat16)`` when the policy asks for it, else a
    context that does nothing (so the OFF path runs exactly the code it ran before).

    Wrap the forward pass and the loss, not ``backward()`` (PyTorch's AMP recipe). bf16 has
    fp32's exponent range, so no gradient scaler is needed. Inside :func:`full_precision` it is
    always a no-op.

    Used in every lesson (through :func:`pruninglib.train.train_epoch` and :func:`pruninglib.train.evaluate`).
    """
    policy = policy or current_policy()
    if not policy.autocast or _FP32.get():
        return contextlib.nullcontext()
    dev = torch.device(device) if device is not None else policy.device
    return torch.autocast(device_type=dev.type, dtype=policy.dtype)


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """fp32 maths inside the block, even within an autocast region: autocast is disabled, the
    policy's :func:`autocast` becomes a no-op, and TF32 is off on CUDA (IEEE fp32 matmuls and
    convolutions). Also a decorator: ``@full_precision()``.

    Tensors made *before* the block in bf16 stay bf16: cast them (``t.float()``) first, as
    PyTorch's autocast notes advise. For criteria, Hessians, oracles and exactness checks that
    may be called from inside an autocast region. No lesson calls it yet (its tests do); the
    lessons' maths runs outside the autocast loops, in fp32 already.
    """
    token = _FP32.set(True)
    types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        types.append("mps")
    saved_tf32 = _tf32_get() if torch.cuda.is_available() else None
    try:
        with contextlib.ExitStack() as stack:
            for t in types:
                stack.enter_context(torch.autocast(device_type=t, enabled=False))
            if saved_tf32 is not None:
                _tf32_set(False)
            yield
    finally:
        if saved_tf32 is not None:
            _tf32_set(saved_tf32)
        _FP32.reset(token)


# ------------------------------------------------------------------------- memory format


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def prepare_model(model: nn.Module, policy: AccelPolicy | None = None) -> nn.Module:
    """Put a conv net's 4-d weights in ``channels_last`` (NHWC, what tensor cores read fastest)
    and compile it (``nn.Module.compile``, in place, so ``state_dict`` keys stay as they are) when
    the policy asks; otherwise return it untouched. In place; returns ``model``.

    Parameters keep their identity, so an optimizer built before still updates them.
    Used in every lesson (through :mod:`pruninglib.train`) and in ``bench/gpu_check.py``.
    """
    policy = policy or current_policy()
    if policy.channels_last and _has_conv(model):
        # every conv, not just the first: surgery may have replaced some with contiguous weights
        if any(not m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in model.modules() if isinstance(m, nn.Conv2d)):
            model.to(memory_format=torch.channels_last)
    if policy.compile and getattr(model, "_compiled_call_impl", None) is None:
        model.compile()
    return model


@contextlib.contextmanager
def in_loop(model: nn.Module, policy: AccelPolicy | None = None) -> Iterator[bool]:
    """Inside the block ``model`` is in the policy's memory format (``channels_last`` for a conv
    net when asked; compiled when asked); afterwards it is back in the format it came in, so
    checkpoints, surgery and exactness checks after a training loop see the model they would
    see without the switches. Yields whether the loop's image batches go ``channels_last``.
    Nested loops (``fit`` around ``train_epoch``) convert once. The OFF policy does nothing.

    Used in every lesson (through :mod:`pruninglib.train`).
    """
    policy = policy or current_policy()
    nhwc = uses_channels_last(model, policy)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)] if nhwc else []
    converted = nhwc and any(not m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    if converted:
        model.to(memory_format=torch.channels_last)
    if policy.compile:
        prepare_model(model, dataclasses.replace(policy, channels_last=False))
    try:
        yield nhwc
    finally:
        if converted:
            model.to(memory_format=torch.contiguous_format)


def uses_channels_last(model: nn.Module, policy: AccelPolicy | None = None) -> bool:
    """Whether the policy puts ``model`` (a net with a ``Conv2d``) and its image batches in ``channels_last``."""
    policy = policy or current_policy()
    return policy.channels_last and _has_conv(model)


def to_device(x: torch.Tensor, device: torch.device | str, policy: AccelPolicy | None = None,
              channels_last: bool | None = None) -> torch.Tensor:
    """``x.to(device)``; with the policy, the copy is asynchronous from pinned memory and a 4-d
    float batch is put in ``channels_last`` (``channels_last``: default the policy's; the loops pass
    :func:`uses_channels_last` of their model). The OFF policy does exactly ``x.to(device)``.

    Used in every lesson (through :mod:`pruninglib.train`).
    """
    policy = policy or current_policy()
    if not policy.active:
        return x.to(device)
    channels_last = policy.channels_last if channels_last is None else channels_last
    non_blocking = x.device.type == "cpu" and x.is_pinned() if policy.pin_memory else False
    if channels_last and x.dim() == 4 and x.is_floating_point():
        return x.to(device, non_blocking=non_blocking, memory_format=torch.channels_last)
    return x.to(device, non_blocking=non_blocking)


# ------------------------------------------------------------------------------- loaders


def loader_kwargs(policy: AccelPolicy | None = None, num_workers: int = 0) -> dict[str, Any]:
    """DataLoader arguments for a dataset decoded on the host (photos): the policy's workers (at
    least ``num_workers``), pinned memory, persistent workers and a deeper prefetch. The OFF policy
    gives ``{"num_workers": num_workers}``. Used in lesson 04 (through :func:`pruninglib.train.make_loader`)."""
    policy = policy or current_policy()
    workers = max(num_workers, policy.workers)
    kw: dict[str, Any] = {"num_workers": workers}
    if policy.pin_memory:
        kw["pin_memory"] = True
    if workers > 0 and policy.workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4)
    return kw


def dataset_nbytes(dataset: Dataset) -> int | None:
    """Bytes a dataset would take on the device (``None`` when :func:`device_loader` cannot hold it)."""
    src = _device_source(dataset)
    return None if src is None else sum(t.numel() * t.element_size() for t in src[0])


def _base(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    indices = None
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices] if indices is not None else list(dataset.indices)
        dataset = dataset.dataset
    return dataset, indices


def _transform_plan(transform: Any) -> list[tuple] | None:
    """Device replay of a torchvision transform: ``[("pad", p), ("crop", h, w, pad), ("flip", p),
    ("norm", mean, std)]``, or ``None`` when it holds anything else. ``ToTensor`` must be there."""
    from torchvision import transforms as T

    ops = list(transform.transforms) if isinstance(transform, T.Compose) else [transform]
    plan: list[tuple] = []
    seen_tensor = False
    for op in ops:
        if isinstance(op, T.ToTensor) and not seen_tensor:
            seen_tensor = True
        elif isinstance(op, T.Pad) and not seen_tensor and isinstance(op.padding, int) and op.fill == 0 \
                and op.padding_mode == "constant":
            plan.append(("pad", op.padding))
        elif isinstance(op, T.RandomCrop) and not seen_tensor and op.fill == 0 and op.padding_mode == "constant" \
                and not op.pad_if_needed and (op.padding is None or isinstance(op.padding, int)):
            plan.append(("crop", *op.size, op.padding or 0))
        elif isinstance(op, T.RandomHorizontalFlip) and not seen_tensor:
            plan.append(("flip", float(op.p)))
        elif isinstance(op, T.Normalize) and seen_tensor and not op.inplace:
            plan.append(("norm", tuple(op.mean), tuple(op.std)))
        else:
            return None
    return plan if seen_tensor else None


def _device_source(dataset: Dataset) -> tuple[list[torch.Tensor], list[tuple] | None] | None:
    """``(tensors, transform plan)`` of a dataset :func:`device_loader` can hold, else ``None``."""
    base, indices = _base(dataset)
    if isinstance(base, TensorDataset):
        tensors = list(base.tensors)
        plan = None
    else:
        data, targets = getattr(base, "data", None), getattr(base, "targets", None)
        if data is None or targets is None or getattr(base, "target_transform", None) is not None:
            return None
        transform = getattr(base, "transform", None)
        plan = _transform_plan(transform) if transform is not None else None
        if plan is None:
            return None
        x = torch.as_tensor(data)
        if x.dtype != torch.uint8 or x.dim() not in (3, 4):
            return None
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W) uint8
        tensors = [x, torch.as_tensor(targets).long()]
    if indices is not None:
        sel = torch.as_tensor(indices, dtype=torch.long)
        tensors = [t[sel] for t in tensors]
    return tensors, plan


class DeviceLoader:
    """Batches of a dataset held in device memory: the same batches, in the same order, as
    ``DataLoader(dataset, batch_size, shuffle, generator=generator, drop_last)`` (it draws from
    ``generator`` -- or, unshuffled, the global RNG -- exactly as a DataLoader does), without a
    worker or a host-to-device copy per batch. Images stored as uint8 are converted, augmented
    (random crop after zero padding, horizontal flip: drawn on the device, seeded by
    ``torch.manual_seed``) and normalised on the device, as their ``transform`` would on the host.

    Made by :func:`device_loader`. Used in lessons 00, 02, 03, 05 and 06 (through
    :func:`pruninglib.train.make_loader`) in paper mode on a GPU.
    """

    def __init__(self, dataset: Dataset, tensors: Sequence[torch.Tensor], plan: list[tuple] | None,
                 batch_size: int, shuffle: bool, generator: torch.Generator | None, drop_last: bool,
                 device: torch.device) -> None:
        self.dataset = dataset
        self.tensors = [t.to(device) for t in tensors]
        self.plan = plan
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.generator = generator
        self.device = torch.device(device)
        n = len(self.tensors[0])
        self._sampler = RandomSampler(range(n), generator=generator) if shuffle else SequentialSampler(range(n))
        self._batches = BatchSampler(self._sampler, batch_size, drop_last)

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        batches = iter(self._batches)
        # A DataLoader draws a base seed for its workers from its generator (or the global RNG)
        # as soon as an iterator is made (tqdm.auto makes one it never uses): draw it too, at the
        # same moment, so the RNG streams stay the same.
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        return self._batches_of(batches)

    def _batches_of(self, batches: Iterator[list[int]]) -> Iterator[tuple[torch.Tensor, ...]]:
        for idx in batches:
            sel = torch.as_tensor(idx, dtype=torch.long).to(self.device, non_blocking=True)
            out = [t[sel] for t in self.tensors]
            if self.plan is not None:
                out[0] = self._transform(out[0])
            yield tuple(out)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float in [0, 1], then the plan: pad, random crop, flip, normalise."""
        x = x.float().div_(255)
        for op in self.plan or []:
            if op[0] == "pad" and op[1]:
                x = torch.nn.functional.pad(x, (op[1],) * 4)
            elif op[0] == "crop":
                h, w, pad = op[1], op[2], op[3]
                if pad:
                    x = torch.nn.functional.pad(x, (pad,) * 4)
                x = _random_crop(x, h, w)
            elif op[0] == "flip":
                flip = torch.rand(len(x), device=x.device) < op[1]
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            elif op[0] == "norm":
                mean = torch.tensor(op[1], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
                std = torch.tensor(op[2], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
                x = (x - mean) / std
        return x


def _random_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A uniformly placed ``h x w`` window of every image of ``x`` (N, C, H, W), as RandomCrop draws."""
    n, c, hh, ww = x.shape
    if (hh, ww) == (h, w):
        return x
    if hh < h or ww < w:
        raise ValueError(f"crop {h}x{w} is larger than the (padded) image {hh}x{ww}")
    top = torch.randint(0, hh - h + 1, (n,), device=x.device)
    left = torch.randint(0, ww - w + 1, (n,), device=x.device)
    rows = (top.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, ww)
    x = x.gather(2, rows)
    cols = (left.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return x.gather(3, cols)


def device_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                  drop_last: bool = False, policy: AccelPolicy | None = None, force: bool = False
                  ) -> DeviceLoader | None:
    """A :class:`DeviceLoader` for ``dataset`` when the policy keeps data on the device and the
    dataset is one it can hold (a ``TensorDataset``, or an image dataset with uint8 ``data`` and a
    transform it can replay) within ``device_data_max_bytes``; otherwise ``None``.

    ``force=True`` skips the policy's ``device_data`` switch (tests on the CPU).
    Used in every lesson (through :func:`pruninglib.train.make_loader`).
    """
    policy = policy or current_policy()
    if not (policy.device_data or force):
        return None
    src = _device_source(dataset)
    if src is None:
        return None
    tensors, plan = src
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    if plan is not None and tensors[0].dtype == torch.uint8:
        nbytes += 4 * tensors[0][:batch_size].numel() * 4  # a few float batches in flight
    if policy.device_data_max_bytes is not None and nbytes > policy.device_data_max_bytes:
        return None
    return DeviceLoader(dataset, tensors, plan, batch_size, shuffle, generator, drop_last, policy.device)
