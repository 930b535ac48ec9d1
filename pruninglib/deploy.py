r"""From a pruned network to the fastest *exact* inference network it can be.

Fewer MACs do not make a network faster by themselves ("fewer FLOPs, no speed-up" is the first
complaint about every pruning tool): a CPU kernel runs a 61-channel convolution little faster
than a 64-channel one, BatchNorm costs a pass over memory of its own, the default NCHW memory
format leaves the best oneDNN kernels unused, and the untouched classifier's time does not
shrink at all (Amdahl). Each step here removes one of those causes, and each is exact: its
output equals the input network's within float rounding (``tests/test_deploy.py`` checks 1e-5
on LeNet3, CIFAR VGG with BN, ResNet-20 and torchvision VGG16).

* :func:`round_channels` -- keep every pruned layer's channel count a multiple of 8 (or 16), the
  criterion deciding which channels are put back or removed to get there;
* :func:`fold_batchnorm` -- fold every BatchNorm into the convolution (or Linear) before it:
  for :math:`y = \gamma\,(Wx + b - \mu)/\sqrt{\sigma^2+\epsilon} + \beta`,

  .. math::
      W' = \frac{\gamma}{\sqrt{\sigma^2+\epsilon}}\, W, \qquad
      b' = \frac{\gamma\,(b - \mu)}{\sqrt{\sigma^2+\epsilon}} + \beta

  (per output channel; :func:`torch.nn.utils.fusion.fuse_conv_bn_eval` does the arithmetic);
* :func:`for_inference` -- eval mode, BN folded, ``channels_last`` memory format, optional
  ``torch.compile`` (inductor; on the CPU it needs a C++ compiler);
* :func:`export_onnx` and :class:`OnnxModule` -- the same network in ONNX Runtime, the runtime most
  people deploy to on a CPU, callable like a module so that
  :func:`pruninglib.core.metrics.interleaved_latency` times it beside the eager one.

Used in lesson 04 ("Why a pruned network may not be faster, and how to make it") and in
``bench/deploy_speed.py`` (RESULTS.md section 1c).
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

__all__ = ["round_count", "round_channels", "fold_batchnorm", "count_batchnorms", "ChannelsLast",
           "for_inference", "export_onnx", "OnnxModule", "onnx_session", "max_abs_diff"]


# ---------------------------------------------------------------------------- channel counts


def round_count(kept: int, width: int, multiple: int = 8) -> int:
    """The channel count nearest to ``kept`` that is a multiple of ``multiple`` (ties round up).

    Never below ``multiple`` (a layer keeps at least one full block) and never above ``width``;
    a layer whose full ``width`` is not a multiple keeps ``width`` when rounding up would pass it.
    Used in lesson 04 and by :func:`round_channels`.

    Raises:
        ValueError: ``multiple < 1`` or ``kept`` outside ``[0, width]``.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if not 0 <= kept <= width:
        raise ValueError(f"kept must be in [0, width={width}], got {kept}")
    if multiple == 1 or kept == width:  # an unpruned layer keeps its width, multiple or not
        return max(kept, 1)
    r = int(math.floor(kept / multiple + 0.5)) * multiple
    r = max(r, multiple)
    return width if r > width else r


def round_channels(plan_or_counts: Mapping[str, Any], multiple: int = 8, *,
                   widths: Mapping[str, int] | None = None,
                   scores: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Round every pruned layer's channel count to a multiple of ``multiple``.

    Two forms:

    * **counts** ``{layer: channels kept}`` (a uniform plan's or a search's widths): returns the
      rounded counts (:func:`round_count`); ``widths`` gives each layer's full width (default:
      the count itself is the upper bound).
    * **plan** ``{layer: indices to remove}`` (what :func:`pruninglib.lessons.transfer.remove_lowest_filters`,
      the iterative schedule and ``bench.common.uniform_filter_plan`` produce; indices of the layer
      *before* this step): needs ``widths`` (the layers' current widths) and ``scores`` (the
      criterion's per-channel scores of those layers, higher = more important). Returns a new plan
      whose kept count per layer is rounded: when rounding keeps more channels, the removed
      channels with the *highest* scores are put back; when it keeps fewer, the kept channels with
      the *lowest* scores are removed too. The criterion decides which channels, rounding only how
      many. Ties break by index (stable).

    A layer absent from the plan is left as it is. Used in lesson 04 and ``bench/deploy_speed.py``.

    Raises:
        ValueError: a plan without ``widths``/``scores`` for one of its layers, or scores whose
            length is not the layer's width.
    """
    if not plan_or_counts:
        return {}
    first = next(iter(plan_or_counts.values()))
    if isinstance(first, (int,)) and not isinstance(first, bool):
        widths = widths or {}
        return {k: round_count(int(v), int(widths.get(k, v)), multiple) for k, v in plan_or_counts.items()}
    if widths is None or scores is None:
        raise ValueError("rounding a plan (layer -> indices to remove) needs widths= (current widths) and "
                         "scores= (the criterion's per-channel scores) to decide which channels")
    out: dict[str, list[int]] = {}
    for name, remove in plan_or_counts.items():
        if name not in widths or name not in scores:
            raise ValueError(f"no width or scores for layer {name!r}: pass both for every layer of the plan")
        width, s = int(widths[name]), torch.as_tensor(scores[name]).detach().double().cpu().flatten()
        if len(s) != width:
            raise ValueError(f"scores for {name!r} have {len(s)} entries, the layer has {width} channels")
        remove = sorted(set(int(i) for i in remove))
        target = round_count(width - len(remove), width, multiple)
        n_remove = width - target
        order = torch.argsort(s, stable=True).tolist()  # lowest score first
        removed = set(remove)
        if n_remove < len(remove):  # put back the highest-scored of the removed
            back = sorted(remove, key=lambda i: (s[i].item(), i), reverse=True)[: len(remove) - n_remove]
            removed -= set(back)
        elif n_remove > len(remove):  # remove the lowest-scored of the kept as well
            extra = [i for i in order if i not in removed][: n_remove - len(remove)]
            removed |= set(extra)
        out[name] = sorted(removed)
    return out


# ---------------------------------------------------------------------------- BatchNorm folding


_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def count_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers ``model`` still has (0 after :func:`fold_batchnorm` folded all).
    Used in lesson 04."""
    return sum(isinstance(m, _BN) for m in model.modules())


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv or linear name, bn name)`` for every BatchNorm that reads only the output of the
    layer before it, which nothing else reads (found by tracing the model with :mod:`torch.fx`)."""
    import torch.fx as fx

    gm = fx.symbolic_trace(model)
    mods = dict(model.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), _BN):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        prev = mods.get(src.target)
        if isinstance(node.target, str) and isinstance(prev, (nn.Conv2d, nn.Linear)):
            bn = mods[node.target]
            conv_like = isinstance(prev, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            lin_like = isinstance(prev, nn.Linear) and isinstance(bn, nn.BatchNorm1d)
            if conv_like or lin_like:
                pairs.append((src.target, node.target))
    return pairs


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    r"""Fold every BatchNorm into the convolution (or Linear) that feeds it; the BN becomes ``Identity``.

    In eval mode a BN is an affine map per channel, so it merges into the layer before it
    (module docstring: :math:`W' = \gamma W/\sqrt{\sigma^2+\epsilon}`,
    :math:`b' = \gamma(b-\mu)/\sqrt{\sigma^2+\epsilon} + \beta`). The pairs are found by tracing the
    model with ``torch.fx`` (a BN is folded only when it reads a conv's output that nothing else
    reads), so plain chains, CIFAR ResNets and torchvision models are handled alike; the module
    structure and names stay as they were. The result is in eval mode; training it would change
    the folded statistics, so fold after fine-tuning.

    Args:
        model: the network (untouched unless ``inplace``).
        inplace: fold into ``model`` itself.

    Returns:
        The folded network (eval mode).

    Raises:
        TypeError: the model cannot be traced by ``torch.fx`` (data-dependent control flow); the
            message says to fold by hand with ``torch.nn.utils.fusion.fuse_conv_bn_eval``.

    Used in lesson 04.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    m = model if inplace else copy.deepcopy(model)
    m.eval()
    try:
        pairs = _conv_bn_pairs(m)
    except Exception as exc:  # fx raises many kinds of errors on untraceable code
        raise TypeError(f"fold_batchnorm could not trace {type(model).__name__} with torch.fx ({exc}); fold "
                        "by hand with torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)") from exc
    for conv_name, bn_name in pairs:
        conv, bn = m.get_submodule(conv_name), m.get_submodule(bn_name)
        fused = fuse_conv_bn_eval(conv, bn) if isinstance(conv, nn.Conv2d) else fuse_linear_bn_eval(conv, bn)
        _set(m, conv_name, fused)
        _set(m, bn_name, nn.Identity())
    return m


# ---------------------------------------------------------------------------- inference form


class ChannelsLast(nn.Module):
    """Run ``model`` on a ``channels_last`` (NHWC) copy of a 4-D input.

    oneDNN's fastest CPU convolutions work on NHWC; a model converted with
    ``model.to(memory_format=torch.channels_last)`` keeps that layout through its convs only when
    the input has it too, so the conversion belongs to the deployed model (and its cost to the
    timing). Used in lesson 04.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


def for_inference(model: nn.Module, channels_last: bool = True, compile: bool = False,
                  fold_bn: bool = True, example: torch.Tensor | None = None) -> nn.Module:
    """The deployed form of ``model``: a copy in eval mode, BN folded, NHWC, optionally compiled.

    Args:
        model: the (pruned) network; not modified.
        channels_last: convert weights and inputs to ``torch.channels_last`` (:class:`ChannelsLast`).
        compile: wrap in ``torch.compile`` (inductor). It compiles on the first call (tens of
            seconds on a CPU), so pass ``example`` to do that here; on a CPU without a C++
            compiler it fails, and the error says so.
        fold_bn: fold BatchNorms first (:func:`fold_batchnorm`).
        example: an input to run once (checks the form and triggers compilation).

    Returns:
        A module with the same outputs as ``model`` in eval mode (within float rounding).

    Used in lesson 04 and ``bench/deploy_speed.py``.
    """
    m = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    if channels_last:
        m = ChannelsLast(m.to(memory_format=torch.channels_last)).eval()
    if compile:
        try:
            m = torch.compile(m)
        except Exception as exc:  # pragma: no cover - depends on the toolchain
            raise RuntimeError(f"torch.compile failed ({exc}); on a CPU inductor needs a C++ compiler "
                               "(apt-get install g++), or call for_inference(..., compile=False)") from exc
    if example is not None:
        with torch.no_grad():
            m(example)
    return m


# ---------------------------------------------------------------------------- ONNX Runtime


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike,
                dynamic_batch: bool = True, check: bool = True) -> Path:
    """Export ``model`` (eval mode) to an ONNX file, written atomically and checked.

    The file is exported to a temporary name beside ``path``, checked with ``onnx.checker`` and
    run once in ONNX Runtime against the eager output (max abs diff <= 1e-4) before it replaces
    ``path``, so a failed export never leaves a half-written or wrong model behind.

    Args:
        model: the network (not modified: a copy is exported).
        example: an input batch (its shape and dtype fix the graph's input).
        path: where to write the ``.onnx`` file.
        dynamic_batch: let the batch dimension vary (so one file times batch 1 and 32).
        check: run the checks above.

    Raises:
        ImportError: ``onnx``/``onnxruntime`` missing: ``pip install -e ".[deploy]"``.
        RuntimeError: the exported model's outputs differ from the eager ones.

    Used in lesson 04 and ``bench/deploy_speed.py``.
    """
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ImportError('export_onnx needs onnx and onnxruntime: pip install -e ".[deploy]"') from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    m = copy.deepcopy(model).eval()
    kwargs: dict[str, Any] = {"input_names": ["input"], "output_names": ["output"]}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
    try:
        import contextlib
        import io
        import warnings

        # torch.export-based exporter (handles adaptive pooling at any size); its progress lines go
        # to a buffer so that a notebook shows only what it prints itself
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (example,), str(tmp), dynamo=True, verbose=False, external_data=False, **kwargs)
        if check:
            import onnx

            onnx.checker.check_model(str(tmp))
            sess = onnx_session(tmp)
            got = OnnxModule(sess)(example)
            with torch.no_grad():
                want = m(example)
            diff = (got - want).abs().max().item()
            if not diff <= 1e-4 * max(1.0, want.abs().max().item()):
                raise RuntimeError(f"the ONNX model's outputs differ from the eager model's by {diff:.3g}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def onnx_session(path: str | os.PathLike, threads: int | None = 1) -> Any:
    """An ONNX Runtime CPU session for ``path`` with all graph optimisations on.

    ``threads`` sets intra-op threads (1 by default, so it compares with one-thread torch and,
    on one thread, runs in the calling thread, where ``time.thread_time`` sees it). Used in lesson 04.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError('onnx_session needs onnxruntime: pip install -e ".[deploy]"') from exc
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind a module's call: ``OnnxModule(sess)(x)`` returns a tensor.

    Lets :func:`pruninglib.core.metrics.interleaved_latency` time the runtime beside eager models
    (the numpy round trip of inputs and outputs is part of what a deployment pays). Used in lesson 04.
    """

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """``max |a(x) - b(x)|`` in eval mode, without gradients (the exactness check of each deploy step).
    Used in lesson 04 and ``tests/test_deploy.py``."""
    with torch.no_grad():
        was = a.training, b.training
        a.eval()
        b.eval()
        try:
            return (a(x).float() - b(x).float()).abs().max().item()
        finally:
            a.train(was[0])
            b.train(was[1])


def _widths_of(model: nn.Module) -> dict[str, int]:
    from pruninglib.core.surgery import channel_counts

    return channel_counts(model)


def rounded_plan_for(model: nn.Module, plan: Mapping[str, Sequence[int]], scores: Mapping[str, torch.Tensor],
                     multiple: int = 8) -> dict[str, list[int]]:
    """:func:`round_channels` of ``plan`` with the widths read from ``model`` (the layers before the step).
    Used in lesson 04 and ``bench/deploy_speed.py``."""
    return round_channels(plan, multiple, widths=_widths_of(model), scores=scores)


__all__ += ["rounded_plan_for"]
