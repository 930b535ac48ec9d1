r"""The oracle: the true change of the loss when one unit alone is removed.

Molchanov et al. 2017 (ICLR), "oracle pruning": the ideal criterion for pruning a
feature map :math:`z_l^{(k)}` is

.. math::
    \Delta C(z_l^{(k)}) = C(\mathcal{D} \mid W, z_l^{(k)} = 0) - C(\mathcal{D} \mid W),

measured by actually zeroing the unit and re-evaluating the cost on a fixed data set
:math:`\mathcal{D}`. The 2017 paper ranks units by :math:`|\Delta C|` ("oracle-abs", Table 1);
Molchanov et al. 2019 (CVPR), Eq. (2), uses :math:`(\Delta L)^2`, which ranks the same way.
:func:`oracle_loss_change` returns the *signed* :math:`\Delta C` (the greedy oracle of the
2019 LeNet3 experiment removes the unit with the smallest one); the registered criterion
``"oracle"`` returns :math:`|\Delta C|` (``signed=True`` for the signed value).

Scoring every unit naively costs one full evaluation of :math:`\mathcal{D}` per unit. Here many
removals share one forward pass: the data set is evaluated once, the input of each layer's
*consumer* is cached, and the network *after* the consumer is run on a batch expanded with one
copy per removed unit (copy :math:`j` has unit :math:`j`'s channel replaced by what the
consumer would see with that unit gated off). The part of the network before the consumer is
never recomputed. This is exact whenever everything between a unit's gate and its consumer
acts channel by channel (ReLU, pooling, dropout in eval mode, flatten), which holds for every
chain model of :mod:`pruninglib.core.graph`; other models fall back to expanding at the layer's
output (``"host"``) or at the network input (``"input"``, e.g. ResNets), which are exact for
any model whose examples do not interact (eval mode).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from pruninglib.criteria.base import Scores, register
from pruninglib.core.graph import PrunableLayer, leaf_layers, prunable_layers

__all__ = ["oracle", "oracle_loss_change", "naive_oracle_loss_change", "evaluate_loss",
           "CHANNELWISE_MODULES", "oracle_method"]

#: Modules that act on every channel separately (so zeroing a channel before them is the same as
#: replacing that channel by their response to zeros after them).
CHANNELWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout,
    nn.Dropout2d, nn.Flatten, nn.Identity,
)

_METHODS = ("auto", "consumer", "host", "input")


def _as_list(batches: Iterable) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = [(x, y) for x, y in batches]
    if not out:
        raise ValueError("batches is empty: pass an iterable of (x, y) with at least one batch")
    return out


def _path_between(model: nn.Module, start: str, stop: str) -> list[nn.Module] | None:
    """Leaf modules strictly between ``start`` and ``stop`` in registration order (chain
    models), or ``None`` if either is not a leaf."""
    leaves = leaf_layers(model)
    names = [n for n, _ in leaves]
    if start not in names or stop not in names:
        return None
    i, j = names.index(start), names.index(stop)
    return [m for _, m in leaves[i + 1:j]] if j > i else None


def _host_name(pl: PrunableLayer) -> str:
    return pl.norm_name if pl.norm_name is not None else pl.name


def oracle_method(model: nn.Module, pl: PrunableLayer, value: float = 0.0) -> str:
    """Which exact batched scheme applies to layer ``pl`` (see the module docstring).

    ``"consumer"`` needs a chain model, a zeroing removal (``value == 0``) and only channel-wise
    modules between the gate and the consumer; ``"host"`` needs a chain model; ``"input"``
    works for every model.

    Used in lessons 02 and 03.
    """
    if hasattr(model, "prunable_groups"):
        return "input"
    path = _path_between(model, _host_name(pl), pl.consumer_name)
    if path is None:
        return "input"
    cons = pl.consumer
    linear_consumer = isinstance(cons, nn.Linear) or (
        isinstance(cons, nn.Conv2d) and cons.padding_mode == "zeros" and cons.groups == 1)
    if value == 0.0 and linear_consumer and all(isinstance(m, CHANNELWISE_MODULES) for m in path):
        return "consumer"
    return "host"


def _mean_losses(out: torch.Tensor, y: torch.Tensor, k: int, loss_fn: Callable) -> torch.Tensor:
    """Loss of each of the ``k`` copies in an expanded output of ``k * len(y)`` rows: one call
    with ``reduction="none"`` for the built-in mean losses, else one call per copy."""
    n = len(y)
    if loss_fn in (F.cross_entropy, F.nll_loss, F.mse_loss, F.l1_loss):
        per = loss_fn(out, y.repeat(k, *([1] * (y.dim() - 1))), reduction="none")
        return per.reshape(k, -1).double().mean(1)
    out = out.reshape(k, n, *out.shape[1:])
    return torch.stack([loss_fn(out[j], y).detach().double() for j in range(k)])


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Sequence, loss_fn: Callable = F.cross_entropy) -> float:
    """Mean loss over all examples of ``batches`` (each batch's mean weighted by its size). Used in lesson 03."""
    total, count = 0.0, 0
    for x, y in batches:
        total += float(loss_fn(model(x), y)) * len(y)
        count += len(y)
    return total / max(count, 1)


def _chunks(idx: list[int], size: int) -> list[list[int]]:
    return [idx[i:i + size] for i in range(0, len(idx), size)]


def _scheme(model: nn.Module, pl: PrunableLayer, value: float, method: str) -> str:
    """The removal scheme for one layer: :func:`oracle_method`'s choice, or ``method`` if it applies."""
    auto = oracle_method(model, pl, value)
    m = auto if method == "auto" else method
    if m == "consumer" and auto != "consumer":
        raise ValueError(f"method 'consumer' does not apply to layer {pl.name!r} (it needs a chain "
                         f"model, value=0 and channel-wise modules before {pl.consumer_name!r}); "
                         f"use method='auto'")
    if m == "host" and auto == "input":
        raise ValueError(f"method 'host' needs a chain model; use method='auto' or 'input' for "
                         f"{type(model).__name__}")
    return m


def _plain_pass(model: nn.Module, layers: Sequence[PrunableLayer], named: dict, schemes: dict[str, str],
                x: torch.Tensor, y: torch.Tensor, loss_fn: Callable
                ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """One pass of the unmodified model: its loss, and every consumer's input and output (scheme
    "consumer") or gate host's output (scheme "host"), cloned because an in-place ReLU further on
    may overwrite the tensors the hooks see."""
    cons_io: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    host_out: dict[str, torch.Tensor] = {}
    handles = []
    for pl in layers:
        if schemes[pl.name] == "consumer":
            handles.append(named[pl.consumer_name].register_forward_hook(
                lambda mod, inp, out, name=pl.name: cons_io.__setitem__(name, (inp[0].clone(), out.clone())),
                prepend=True))
        elif schemes[pl.name] == "host":
            handles.append(named[_host_name(pl)].register_forward_hook(
                lambda mod, inp, out, name=pl.name: host_out.__setitem__(name, out.clone())))
    try:
        base = loss_fn(model(x), y).double()
    finally:
        for h in handles:
            h.remove()
    return base, cons_io, host_out


@torch.no_grad()
def oracle_loss_change(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
                       kinds: tuple[str, ...] = ("conv", "linear"),
                       units: dict[str, Sequence[int]] | None = None, value: float = 0.0,
                       method: str = "auto", max_rows: int = 8192, progress: bool = False,
                       return_base: bool = False) -> Scores | tuple[Scores, float]:
    r"""Signed :math:`\Delta C` of removing each unit alone (Molchanov et al. 2017, oracle), batched.

    The loss is the mean of ``loss_fn`` over all examples of ``batches`` (each batch's mean
    weighted by its size), in eval mode. A removal multiplies the unit's output (at its gate:
    after BatchNorm if any) by ``value`` (0: removal; ``1 - eps``: a finite difference).

    Args:
        model: the network (gates optional; a unit whose gate is already 0 gets 0 up to rounding).
        batches: iterable of ``(x, y)``; read once.
        loss_fn: the cost; it must average over the batch (like ``F.cross_entropy``).
        kinds: which producer kinds to score.
        units: ``{layer: indices}`` to score (default all); the others get 0.
        value: the multiplier that "removes" a unit.
        method: ``"auto"`` (the fastest exact scheme per layer, see :func:`oracle_method`),
            ``"consumer"``, ``"host"`` or ``"input"``.
        max_rows: the most rows an expanded batch may hold (memory bound); units are
            processed in chunks of ``max(1, max_rows // batch size)``.
        progress: show a progress bar over batches.
        return_base: also return the loss of the unmodified model.

    Returns:
        ``{layer: 1-D float tensor}`` of :math:`C(\text{unit removed}) - C`, and the base
        loss when ``return_base``.

    Raises:
        ValueError: for an unknown method or a scheme that does not apply to the model.

    Used in lessons 02 and 03.
    """
    if method not in _METHODS:
        raise ValueError(f"unknown oracle method {method!r}; choose one of {_METHODS}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    layers = prunable_layers(model, kinds)
    named = dict(model.named_modules())
    device = next(model.parameters()).device
    todo = {pl.name: list(range(pl.num_units)) if units is None else sorted(int(i) for i in units.get(pl.name, []))
            for pl in layers}
    schemes = {pl.name: _scheme(model, pl, value, method) for pl in layers}
    sums = {pl.name: torch.zeros(pl.num_units, dtype=torch.float64) for pl in layers}
    base_total, count = 0.0, 0
    was_training = model.training
    model.eval()
    zero_response: dict[str, torch.Tensor] = {}
    try:
        for x, y in tqdm(batches, desc="oracle", leave=False, disable=not progress):
            x, y = x.to(device), y.to(device)
            n = len(y)
            base, cons_io, host_out = _plain_pass(model, layers, named, schemes, x, y, loss_fn)
            base_total += float(base) * n
            count += n
            k = max(1, max_rows // n)
            for pl in layers:
                idx = todo[pl.name]
                if not idx:
                    continue
                scheme = schemes[pl.name]
                host = named[_host_name(pl)]
                if scheme == "consumer" and pl.name not in zero_response:
                    zero_response[pl.name] = _zero_response(model, pl, named, x[:1])
                for chunk in _chunks(idx, k):
                    kk = len(chunk)
                    if scheme == "consumer":
                        out = _run_consumer(model, pl, named, x[:1], *cons_io[pl.name],
                                            zero_response[pl.name], chunk)
                    elif scheme == "host":
                        out = _run_host(model, host, x[:1], host_out[pl.name], chunk, value)
                    else:
                        out = _run_input(model, host, x, chunk, value)
                    losses = _mean_losses(out, y, kk, loss_fn)
                    sums[pl.name][chunk] += (losses - base).cpu() * n
    finally:
        model.train(was_training)
    scores = {name: (v / max(count, 1)).float() for name, v in sums.items()}
    return (scores, base_total / max(count, 1)) if return_base else scores


def _zero_response(model: nn.Module, pl: PrunableLayer, named: dict, x1: torch.Tensor) -> torch.Tensor:
    """What the consumer sees of a channel whose gate is 0 (one example; channel-wise path)."""
    host = named[_host_name(pl)]
    got: dict[str, torch.Tensor] = {}
    h1 = host.register_forward_hook(lambda mod, inp, out: out * 0)
    h2 = named[pl.consumer_name].register_forward_pre_hook(lambda mod, inp: got.__setitem__("x", inp[0]))
    try:
        model(x1)
    finally:
        h1.remove()
        h2.remove()
    return got["x"]


def _consumer_delta(pl: PrunableLayer, cin: torch.Tensor, zero: torch.Tensor, chunk: list[int]) -> torch.Tensor:
    r"""How the consumer's output (before its bias) changes when the channels in ``chunk`` are
    replaced, one at a time, by their zero response: :math:`W_{:,m} * (x_m - x_m^{0})`.

    Returns ``(k, N, *consumer output shape)``. The consumer is linear in its input, so this is
    one grouped convolution (or one einsum) for the whole chunk.
    """
    cons, c = pl.consumer, pl.num_units
    ch = torch.as_tensor(chunk, device=cin.device)
    kk, n = len(chunk), cin.shape[0]
    if isinstance(cons, nn.Linear):
        xv = cin.reshape(n, c, -1)[:, ch] - zero.reshape(1, c, -1)[:, ch]      # (N, k, sf)
        wv = cons.weight.reshape(cons.out_features, c, -1)[:, ch]                # (out, k, sf)
        return torch.einsum("nks,oks->kno", xv, wv)
    xs = cin[:, ch] - zero[:, ch]                                                # (N, k, H, W)
    w = cons.weight[:, ch].transpose(0, 1).reshape(kk * cons.out_channels, 1, *cons.weight.shape[2:])
    d = F.conv2d(xs, w, None, cons.stride, cons.padding, cons.dilation, groups=kk)
    return d.reshape(n, kk, cons.out_channels, *d.shape[2:]).transpose(0, 1)


def _run_consumer(model: nn.Module, pl: PrunableLayer, named: dict, x1: torch.Tensor,
                  cin: torch.Tensor, cout: torch.Tensor, zero: torch.Tensor,
                  chunk: list[int]) -> torch.Tensor:
    kk, n = len(chunk), cin.shape[0]
    expanded = (cout.unsqueeze(0) - _consumer_delta(pl, cin, zero, chunk)).reshape(kk * n, *cout.shape[1:])
    # prepend: replace the consumer's own output before its gate (if any) is applied
    h = named[pl.consumer_name].register_forward_hook(lambda mod, inp, out: expanded, prepend=True)
    try:
        return model(x1)
    finally:
        h.remove()


def _run_host(model: nn.Module, host: nn.Module, x1: torch.Tensor, hout: torch.Tensor,
              chunk: list[int], value: float) -> torch.Tensor:
    kk, n = len(chunk), hout.shape[0]
    mask = torch.ones(kk, hout.shape[1], device=hout.device, dtype=hout.dtype)
    mask[torch.arange(kk), torch.as_tensor(chunk)] = value
    shape = (kk, 1, hout.shape[1]) + (1,) * (hout.dim() - 2)
    expanded = (hout.unsqueeze(0) * mask.view(shape)).reshape(kk * n, *hout.shape[1:])
    h = host.register_forward_hook(lambda mod, inp, out: expanded)
    try:
        return model(x1)
    finally:
        h.remove()


def _run_input(model: nn.Module, host: nn.Module, x: torch.Tensor, chunk: list[int],
               value: float) -> torch.Tensor:
    kk, n = len(chunk), x.shape[0]

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(kk, out.shape[1], device=out.device, dtype=out.dtype)
        mask[torch.arange(kk), torch.as_tensor(chunk)] = value
        shape = (kk, 1, out.shape[1]) + (1,) * (out.dim() - 2)
        return (out.reshape(kk, n, *out.shape[1:]) * mask.view(shape)).reshape(out.shape)

    h = host.register_forward_hook(hook)
    try:
        return model(x.repeat(kk, *([1] * (x.dim() - 1))))
    finally:
        h.remove()


@torch.no_grad()
def naive_oracle_loss_change(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
                             kinds: tuple[str, ...] = ("conv", "linear"),
                             units: dict[str, Sequence[int]] | None = None, value: float = 0.0,
                             progress: bool = False, return_base: bool = False
                             ) -> Scores | tuple[Scores, float]:
    r"""The same :math:`\Delta C` as :func:`oracle_loss_change`, one full re-evaluation of the data
    per unit in a Python loop (the reference the batched oracle is checked and timed against).

    Used in lesson 03.
    """
    data = _as_list(batches)
    layers = prunable_layers(model, kinds)
    named = dict(model.named_modules())
    device = next(model.parameters()).device
    data = [(x.to(device), y.to(device)) for x, y in data]
    was_training = model.training
    model.eval()
    try:
        base = evaluate_loss(model, data, loss_fn)
        scores = {}
        total = sum(pl.num_units if units is None else len(units.get(pl.name, [])) for pl in layers)
        bar = tqdm(total=total, desc="naive oracle", leave=False, disable=not progress)
        for pl in layers:
            host = named[_host_name(pl)]
            s = torch.zeros(pl.num_units, dtype=torch.float64)
            idx = range(pl.num_units) if units is None else units.get(pl.name, [])
            for i in idx:
                def hook(mod: nn.Module, inp: tuple, out: torch.Tensor, i: int = int(i)) -> torch.Tensor:
                    out = out.clone()
                    out[:, i] = out[:, i] * value
                    return out
                h = host.register_forward_hook(hook)
                try:
                    s[i] = evaluate_loss(model, data, loss_fn) - base
                finally:
                    h.remove()
                bar.update(1)
            scores[pl.name] = s.float()
        bar.close()
    finally:
        model.train(was_training)
    return (scores, base) if return_base else scores


@register("oracle")
def oracle(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
           kinds: tuple[str, ...] = ("conv", "linear"), signed: bool = False, max_rows: int = 8192,
           method: str = "auto", **_: Any) -> Scores:
    r"""The oracle criterion: :math:`|\Delta C|` per unit (Molchanov et al. 2017, "oracle-abs"),
    or the signed :math:`\Delta C` with ``signed=True``; computed by :func:`oracle_loss_change`.

    Used in lesson 03.
    """
    d = oracle_loss_change(model, batches, loss_fn, kinds=kinds, max_rows=max_rows, method=method)
    return d if signed else {k: v.abs() for k, v in d.items()}
