"""Per-channel multiplicative gates, unit lists, and hooks that record activations.

Molchanov et al. 2019 (CVPR), Sec. 3.2: put a gate :math:`z_m` (initialised to 1) on every
prunable unit, so the output of unit :math:`m` becomes :math:`z_m a_m`. Setting :math:`z_m = 0`
removes the unit; the gradient :math:`\\partial L / \\partial z_m` is the quantity the Taylor
criteria are built from. A gate sits where zeroing equals removing: after the BatchNorm of
a conv (if any), otherwise on the layer's output.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from pruninglib.core.graph import PrunableLayer, prunable_layers

__all__ = ["Gate", "insert_gates", "remove_gates", "get_gates", "list_units", "set_units",
           "zero_units", "ActivationRecorder", "gated_units_masked"]

Unit = tuple[str, int]


class Gate(nn.Module):
    """Multiply channel ``c`` of the input by ``weight[c]`` (ones at init).

    Works for conv outputs ``(N, C, H, W)`` and linear outputs ``(N, C)``.

    Used in lessons 00, 02, 03 and 04.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}"


def _gate_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.pl_gate(output)


def insert_gates(model: nn.Module, layers: Sequence[PrunableLayer] | None = None,
                 kinds: tuple[str, ...] = ("conv", "linear")) -> dict[str, Gate]:
    """Attach a :class:`Gate` after every prunable layer (after its BatchNorm if it has one).

    The gate is registered as a submodule ``pl_gate`` of the host and applied by a forward
    hook, so the model's own code and parameter names stay unchanged.

    Args:
        model: the model.
        layers: which layers (default: all of :func:`~pruninglib.core.graph.prunable_layers`).
        kinds: layer kinds when ``layers`` is None.

    Returns:
        ``{producer name: gate}`` in forward order.

    Used in lessons 00, 02, 03 and 04.
    """
    layers = prunable_layers(model, kinds) if layers is None else layers
    gates: dict[str, Gate] = {}
    for pl in layers:
        host = pl.gate_host
        if not hasattr(host, "pl_gate"):
            p = next(pl.module.parameters())
            host.pl_gate = Gate(pl.num_units).to(device=p.device, dtype=p.dtype)
            host.pl_gate_handle = host.register_forward_hook(_gate_hook)
        host.pl_gate_owner = pl.name
        gates[pl.name] = host.pl_gate
    return gates


def get_gates(model: nn.Module) -> dict[str, Gate]:
    """``{producer name: gate}`` for the gates present in ``model`` (forward order).

    Used in lessons 00, 02, 03 and 04.
    """
    out = {}
    for pl in prunable_layers(model):
        host = pl.gate_host
        if hasattr(host, "pl_gate"):
            out[pl.name] = host.pl_gate
    return out


def remove_gates(model: nn.Module, fold: bool = False) -> None:
    """Detach every gate. With ``fold=True`` a gate's values are multiplied into its host's
    weight and bias first (so the function computed stays the same).

    Used in lesson 02.
    """
    for m in model.modules():
        if hasattr(m, "pl_gate"):
            if fold:
                with torch.no_grad():
                    g = m.pl_gate.weight
                    shape = (-1,) + (1,) * (m.weight.dim() - 1)
                    m.weight.mul_(g.view(shape))
                    if getattr(m, "bias", None) is not None:
                        m.bias.mul_(g)
            m.pl_gate_handle.remove()
            del m.pl_gate, m.pl_gate_handle
            if hasattr(m, "pl_gate_owner"):
                del m.pl_gate_owner


def list_units(model: nn.Module, kinds: tuple[str, ...] = ("conv", "linear")) -> list[Unit]:
    """Every prunable unit as ``(layer name, channel index)``, in forward order.

    No lesson calls it directly (its tests do).
    """
    return [(pl.name, i) for pl in prunable_layers(model, kinds) for i in range(pl.num_units)]


def set_units(model: nn.Module, units: Iterable[Unit], value: float = 0.0) -> None:
    """Set the gates of ``units`` to ``value`` (gates must be inserted). Used in lessons 00, 02, 03 and 04."""
    gates = get_gates(model)
    with torch.no_grad():
        for name, idx in units:
            if name not in gates:
                raise KeyError(f"no gate on layer {name!r}; call insert_gates(model) first")
            gates[name].weight[idx] = value


def zero_units(model: nn.Module, units: Iterable[Unit]) -> None:
    """Switch ``units`` off by zeroing their gates. Used in lessons 00, 03 and 04."""
    set_units(model, units, 0.0)


@contextmanager
def gated_units_masked(model: nn.Module, units: Iterable[Unit]) -> Iterator[None]:
    """Temporarily zero ``units``; the gates are restored on exit. No lesson calls it directly (its tests do).

    No lesson calls it directly (its tests do).
    """
    gates = get_gates(model)
    saved = {n: g.weight.detach().clone() for n, g in gates.items()}
    try:
        zero_units(model, units)
        yield
    finally:
        with torch.no_grad():
            for n, g in gates.items():
                g.weight.copy_(saved[n])


class ActivationRecorder:
    """Record the gated output of every prunable layer, and its gradient after ``backward()``.

    Usage::

        with ActivationRecorder(model) as rec:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        rec.activations["features.0"], rec.gradients["features.0"]

    Activations are taken at the gate host's output (after BatchNorm), i.e. the feature
    map :math:`a_m` of Molchanov et al. 2017, Eq. (7). Tensors are detached; ``reduce``
    can shrink them on the fly (e.g. ``lambda a, g: (a * g).mean((0, 2, 3))``).

    Args:
        model: the model.
        layers: which layers (default: all prunable layers).
        keep_gradients: register tensor hooks for the gradients.

    Used in lessons 02, 03 and 06.
    """

    def __init__(self, model: nn.Module, layers: Sequence[PrunableLayer] | None = None,
                 keep_gradients: bool = True) -> None:
        self.layers = prunable_layers(model) if layers is None else list(layers)
        self.keep_gradients = keep_gradients
        self.activations: dict[str, torch.Tensor] = {}
        self.gradients: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.activations[name] = output.detach()
            if self.keep_gradients and output.requires_grad:
                output.register_hook(lambda g: self.gradients.__setitem__(name, g.detach()))
        return hook

    def __enter__(self) -> "ActivationRecorder":
        for pl in self.layers:
            host = pl.gate_host
            # registered after the gate hook (if any), so it sees the gated output
            self._handles.append(host.register_forward_hook(self._hook(pl.name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
