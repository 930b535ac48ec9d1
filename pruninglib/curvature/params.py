r"""A model as a function of one flat parameter vector: the shared ground of :mod:`pruninglib.curvature`.

Dense curvature matrices (:mod:`~pruninglib.curvature.hessian`, :mod:`~pruninglib.curvature.fisher`)
are indexed by the entries of one flat vector :math:`\theta` that concatenates the model's named
parameters. :class:`ParamSpec` maps between that vector and the parameters; :func:`flat_loss_fn`
and :func:`output_fn` turn the model into pure functions of :math:`\theta` (``torch.func.functional_call``),
ready for ``grad``, ``hessian`` and ``vmap``. Used in lessons 01 and 02 (through the curvature modules).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

__all__ = ["Batches", "ParamSpec", "param_spec", "flatten_params", "load_flat", "as_batches", "flat_loss_fn",
           "output_fn", "fixed_tensors", "cast_input", "EvalMode", "setup_flat", "add_damping", "check_size",
           "quiet_jit_deprecation"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ParamSpec:
    """Where each named parameter lives in the flat vector.

    Attributes:
        names: parameter names in flattening order (``model.named_parameters()`` order).
        shapes: their shapes.

    Used in lesson 01.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def numels(self) -> tuple[int, ...]:
        """Number of entries of each parameter."""
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each parameter in the flat vector."""
        out, k = [], 0
        for n in self.numels:
            out.append(k)
            k += n
        return tuple(out)

    @property
    def numel(self) -> int:
        """Length of the flat vector."""
        return sum(self.numels)

    def slice(self, name: str) -> slice:
        """The flat slice of parameter ``name``.

        Raises:
            KeyError: for a name not in the spec, listing the valid ones.
        """
        if name not in self.names:
            raise KeyError(f"parameter {name!r} is not in this ParamSpec; it has {list(self.names)}")
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i] + self.numels[i])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: view of flat shaped like the parameter}`` (works on any trailing-dim vector)."""
        if flat.shape[-1] != self.numel:
            raise ValueError(f"flat vector has {flat.shape[-1]} entries, the spec needs {self.numel}")
        lead = flat.shape[:-1]
        return {n: flat[..., o:o + k].reshape(*lead, *s)
                for n, s, o, k in zip(self.names, self.shapes, self.offsets, self.numels)}

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``{name: tensor}`` (shaped like the parameters) into one flat vector."""
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise KeyError(f"missing entries {missing} to flatten")
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def mask(self, names: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """A boolean flat mask, True on the entries of the parameters ``names``."""
        m = torch.zeros(self.numel, dtype=torch.bool, device=device)
        for n in names:
            m[self.slice(n)] = True
        return m

    def locate(self, index: int) -> tuple[str, tuple[int, ...]]:
        """``(parameter name, index inside it)`` of flat entry ``index``."""
        if not 0 <= index < self.numel:
            raise IndexError(f"flat index {index} outside [0, {self.numel})")
        for n, s, o, k in zip(self.names, self.shapes, self.offsets, self.numels):
            if index < o + k:
                return n, tuple(int(i) for i in torch.unravel_index(torch.tensor(index - o), s))
        raise AssertionError("unreachable")  # pragma: no cover


def param_spec(model: nn.Module, names: Sequence[str] | None = None) -> ParamSpec:
    """The :class:`ParamSpec` of ``model``'s parameters (default: all that require grad).

    Raises:
        ValueError: for a name that is not a parameter of the model.

    Used in lesson 01.
    """
    params = dict(model.named_parameters())
    if names is None:
        names = [n for n, p in params.items() if p.requires_grad]
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"{unknown} are not parameters of the model; it has {list(params)}")
    return ParamSpec(tuple(names), tuple(params[n].shape for n in names))


def flatten_params(model: nn.Module, names: Sequence[str] | None = None,
                   dtype: torch.dtype | None = torch.float64) -> tuple[torch.Tensor, ParamSpec]:
    """The model's parameters as one detached flat vector (a copy) and its :class:`ParamSpec`. Used in lesson 01."""
    spec = param_spec(model, names)
    params = dict(model.named_parameters())
    flat = torch.cat([params[n].detach().reshape(-1) for n in spec.names]).clone()
    return (flat.to(dtype) if dtype is not None else flat), spec


@torch.no_grad()
def load_flat(model: nn.Module, flat: torch.Tensor, spec: ParamSpec) -> nn.Module:
    """Copy the flat vector back into the model's parameters (in place, keeping their dtype). Used in lesson 01."""
    params = dict(model.named_parameters())
    for n, t in spec.unflatten(flat).items():
        params[n].copy_(t.to(params[n].dtype))
    return model


def as_batches(batches: Batches | tuple[torch.Tensor, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Accept one ``(x, y)`` pair or an iterable of pairs; return a list of pairs.

    Raises:
        TypeError: for anything else.

    Used in lesson 01.
    """
    if isinstance(batches, (tuple, list)) and len(batches) == 2 and all(torch.is_tensor(t) for t in batches):
        return [(batches[0], batches[1])]
    try:
        out = [(x, y) for x, y in batches]
    except (TypeError, ValueError) as e:
        raise TypeError("batches must be an (x, y) pair of tensors or an iterable of (x, y) pairs "
                        f"(a DataLoader works); got {type(batches).__name__}") from e
    if not out:
        raise ValueError("batches is empty: pass at least one (x, y) pair")
    return out


def fixed_tensors(model: nn.Module, spec: ParamSpec, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Parameters outside the spec and floating buffers, cast to ``dtype``. Used in lesson 01."""
    out = {n: p.detach().to(dtype) for n, p in model.named_parameters() if n not in spec.names}
    for n, b in model.named_buffers():
        out[n] = b.to(dtype) if b.is_floating_point() else b
    return out


def cast_input(x: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; floating inputs also cast to ``dtype`` (integer labels keep theirs). Used in lesson 01."""
    x = x.to(device)
    return x.to(dtype) if x.is_floating_point() else x


def flat_loss_fn(model: nn.Module, spec: ParamSpec, loss_fn: Callable = F.cross_entropy,
                 dtype: torch.dtype = torch.float64) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(theta, x, y) -> loss_fn(model(x; theta), y)``: the model as a pure function of its
    flat parameter vector (``torch.func.functional_call``), ready for ``grad``/``hessian``/``vmap``.

    The model is run in its current train/eval mode; inputs are cast to ``dtype``.

    Used in lesson 01.
    """
    fixed = fixed_tensors(model, spec, dtype)

    def f(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, {**fixed, **spec.unflatten(theta)}, (x,)), y)

    return f


def output_fn(model: nn.Module, spec: ParamSpec, dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(theta, x) -> model(x; theta)``: the model\'s output as a pure function of the flat vector.

    Used in lesson 01.
    """
    fixed = fixed_tensors(model, spec, dtype)

    def f(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**fixed, **spec.unflatten(theta)}, (x,))

    return f


class EvalMode:
    """Context manager: the model in eval mode inside, its previous train/eval mode restored after.

    Used in lesson 01.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *a: object) -> None:
        self.model.train(self.was)


def setup_flat(model: nn.Module, params: Sequence[str] | None, theta: torch.Tensor | None,
           dtype: torch.dtype) -> tuple[torch.Tensor, ParamSpec, torch.device]:
    """The flat parameter vector (``theta`` when given, checked), its :class:`ParamSpec` and the model\'s device.

    Used in lesson 01.
    """
    flat, spec = flatten_params(model, params, dtype)
    device = next(model.parameters()).device
    if theta is not None:
        if theta.shape != (spec.numel,):
            raise ValueError(f"theta has shape {tuple(theta.shape)}, expected ({spec.numel},)")
        flat = theta.detach().to(dtype=dtype, device=device)
    return flat.to(device), spec, device


def add_damping(M: torch.Tensor, damping: float) -> torch.Tensor:
    r""":math:`M + \lambda I` (a new tensor; ``M`` is returned unchanged when ``damping == 0``). Used in lesson 01."""
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if damping == 0:
        return M
    return M + damping * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)


def check_size(p: int, max_params: int) -> None:
    """Refuse a dense ``p x p`` curvature matrix for ``p > max_params``, saying how much memory it would take.

    Used in lesson 01.
    """
    if p > max_params:
        raise ValueError(f"the model has {p} parameters; a dense {p}x{p} curvature matrix needs "
                         f"{p * p * 8 / 2**30:.1f} GiB in float64. Use a smaller model, restrict "
                         f"`params=` to some layers, or raise max_params (now {max_params}).")


@contextmanager
def quiet_jit_deprecation() -> Iterator[None]:
    """Silence exactly one warning: PyTorch's ``torch.jit.script is deprecated`` FutureWarning.

    ``torch.func.hessian`` (forward-over-reverse) reaches ``torch.jit.script`` inside PyTorch's own
    jvp decompositions, which then warns about PyTorch's internals, not about anything a learner
    wrote. Wrapped around those calls only (the exact Hessian of lessons 01-02 and the XOR test of
    lesson 01); every other warning still shows.

    Used in lesson 01.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        yield
