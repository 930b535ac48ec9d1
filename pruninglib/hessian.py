r"""Curvature of the loss over the flattened parameters of a (small) model, with ``torch.func``.

Every pruning criterion of Lesson 01 starts from the second-order Taylor expansion of the
loss around trained weights :math:`\theta` (LeCun, Denker & Solla 1990, Eq. 1; Hassibi &
Stork 1993, Eq. 1):

.. math::
    \delta L = g^\top \delta\theta + \tfrac12\, \delta\theta^\top H\, \delta\theta
               + O(\lVert\delta\theta\rVert^3), \qquad
    g = \nabla_\theta L, \quad H = \nabla^2_\theta L .

This module builds the matrices that play the part of :math:`H`, all as dense
``P x P`` tensors over one flat parameter vector (so only for models with a few thousand
parameters):

* :func:`exact_hessian` -- :math:`H = \frac1N \sum_n \nabla^2_\theta \ell(f(x_n;\theta), y_n)`
  by ``torch.func`` (reverse-over-reverse ``jacrev``, chunked; or ``torch.func.hessian``).
* :func:`gauss_newton` -- :math:`G = \frac1N \sum_n J_n^\top \Lambda_n J_n` with
  :math:`J_n = \partial f(x_n)/\partial\theta` and :math:`\Lambda_n = \nabla^2_f \ell` (Schraudolph
  2002, Eq. 7; Martens & Grosse 2015, Sec. 9.1). It drops the term
  :math:`\sum_c \partial\ell/\partial f_c \, \nabla^2_\theta f_c` of :math:`H`; for softmax
  cross-entropy it equals the (true) Fisher.
* the empirical Fisher is in :mod:`pruninglib.criteria.fisher`, K-FAC in
  :mod:`pruninglib.criteria.kfac`.

:class:`ParamSpec` maps between the flat vector and the model's named parameters, so that
per-weight criteria can return dicts shaped like the parameters. :func:`minimize_full_batch`
trains a small model to a stationary point (where :math:`g = 0`, so the first term of the
expansion drops), which the criteria assume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, hessian, jacrev, vmap
from tqdm.auto import tqdm

__all__ = ["ParamSpec", "param_spec", "flatten_params", "load_flat", "as_batches",
           "flat_loss_fn", "loss_at", "gradient", "exact_hessian", "gauss_newton",
           "add_damping", "relative_frobenius_error", "minimize_full_batch", "losses_at"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ParamSpec:
    """Where each named parameter lives in the flat vector.

    Attributes:
        names: parameter names in flattening order (``model.named_parameters()`` order).
        shapes: their shapes.
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
    """The model's parameters as one detached flat vector (a copy) and its :class:`ParamSpec`."""
    spec = param_spec(model, names)
    params = dict(model.named_parameters())
    flat = torch.cat([params[n].detach().reshape(-1) for n in spec.names]).clone()
    return (flat.to(dtype) if dtype is not None else flat), spec


@torch.no_grad()
def load_flat(model: nn.Module, flat: torch.Tensor, spec: ParamSpec) -> nn.Module:
    """Copy the flat vector back into the model's parameters (in place, keeping their dtype)."""
    params = dict(model.named_parameters())
    for n, t in spec.unflatten(flat).items():
        params[n].copy_(t.to(params[n].dtype))
    return model


def as_batches(batches: Batches | tuple[torch.Tensor, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Accept one ``(x, y)`` pair or an iterable of pairs; return a list of pairs.

    Raises:
        TypeError: for anything else.
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


def _fixed_tensors(model: nn.Module, spec: ParamSpec, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Parameters outside the spec and floating buffers, cast to ``dtype``."""
    out = {n: p.detach().to(dtype) for n, p in model.named_parameters() if n not in spec.names}
    for n, b in model.named_buffers():
        out[n] = b.to(dtype) if b.is_floating_point() else b
    return out


def _cast(x: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = x.to(device)
    return x.to(dtype) if x.is_floating_point() else x


def flat_loss_fn(model: nn.Module, spec: ParamSpec, loss_fn: Callable = F.cross_entropy,
                 dtype: torch.dtype = torch.float64) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(theta, x, y) -> loss_fn(model(x; theta), y)``: the model as a pure function of its
    flat parameter vector (``torch.func.functional_call``), ready for ``grad``/``hessian``/``vmap``.

    The model is run in its current train/eval mode; inputs are cast to ``dtype``.
    """
    fixed = _fixed_tensors(model, spec, dtype)

    def f(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, {**fixed, **spec.unflatten(theta)}, (x,)), y)

    return f


def _output_fn(model: nn.Module, spec: ParamSpec, dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    fixed = _fixed_tensors(model, spec, dtype)

    def f(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**fixed, **spec.unflatten(theta)}, (x,))

    return f


class _EvalMode:
    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *a: object) -> None:
        self.model.train(self.was)


def _setup(model: nn.Module, params: Sequence[str] | None, theta: torch.Tensor | None,
           dtype: torch.dtype) -> tuple[torch.Tensor, ParamSpec, torch.device]:
    flat, spec = flatten_params(model, params, dtype)
    device = next(model.parameters()).device
    if theta is not None:
        if theta.shape != (spec.numel,):
            raise ValueError(f"theta has shape {tuple(theta.shape)}, expected ({spec.numel},)")
        flat = theta.detach().to(dtype=dtype, device=device)
    return flat.to(device), spec, device


def loss_at(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
            loss_fn: Callable = F.cross_entropy, theta: torch.Tensor | None = None,
            params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64) -> float:
    """Mean loss over all samples of ``batches`` at ``theta`` (default: the model's weights)."""
    flat, spec, device = _setup(model, params, theta, dtype)
    f = flat_loss_fn(model, spec, loss_fn, dtype)
    total, n = 0.0, 0
    with _EvalMode(model), torch.no_grad():
        for x, y in as_batches(batches):
            total += float(f(flat, _cast(x, dtype, device), y.to(device))) * len(y)
            n += len(y)
    return total / n


def losses_at(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor], thetas: torch.Tensor,
              loss_fn: Callable = F.cross_entropy, params: Sequence[str] | None = None,
              dtype: torch.dtype = torch.float64, chunk_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Mean loss at each row of ``thetas`` (``[K, P]``), vectorised with ``torch.func.vmap``.

    Used to measure the *actual* loss change of deleting each weight in turn.
    """
    _, spec, device = _setup(model, params, None, dtype)
    if thetas.dim() != 2 or thetas.shape[1] != spec.numel:
        raise ValueError(f"thetas must be [K, {spec.numel}], got {tuple(thetas.shape)}")
    f = flat_loss_fn(model, spec, loss_fn, dtype)
    batches = [(_cast(x, dtype, device), y.to(device)) for x, y in as_batches(batches)]
    n = sum(len(y) for _, y in batches)
    out = torch.zeros(len(thetas), dtype=dtype)
    with _EvalMode(model), torch.no_grad():
        for i in tqdm(range(0, len(thetas), chunk_size), desc="losses", disable=not progress, leave=False):
            th = thetas[i:i + chunk_size].to(device=device, dtype=dtype)
            acc = torch.zeros(len(th), dtype=dtype, device=device)
            for x, y in batches:
                acc += vmap(f, in_dims=(0, None, None))(th, x, y) * len(y)
            out[i:i + chunk_size] = (acc / n).cpu()
    return out


def gradient(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
             loss_fn: Callable = F.cross_entropy, theta: torch.Tensor | None = None,
             params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""The flat gradient :math:`g = \nabla_\theta L` of the mean loss (``torch.func.grad``)."""
    flat, spec, device = _setup(model, params, theta, dtype)
    f = flat_loss_fn(model, spec, loss_fn, dtype)
    g, n = torch.zeros_like(flat), 0
    with _EvalMode(model):
        for x, y in as_batches(batches):
            g += grad(f)(flat, _cast(x, dtype, device), y.to(device)) * len(y)
            n += len(y)
    return g / n


def exact_hessian(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
                  loss_fn: Callable = F.cross_entropy, theta: torch.Tensor | None = None,
                  params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64,
                  damping: float = 0.0, chunk_size: int | None = 256, max_params: int = 20_000,
                  progress: bool = False) -> torch.Tensor:
    r"""The exact Hessian :math:`H = \nabla^2_\theta L` of the mean loss over all samples.

    Hassibi & Stork 1993, Eq. (1): the matrix of the quadratic term of the expansion. Computed
    per batch with ``torch.func`` and averaged with the batch sizes as weights:
    ``jacrev(jacrev(f), chunk_size=chunk_size)`` (reverse-over-reverse, ``chunk_size`` rows at
    a time, the fastest on a CPU for a few thousand parameters), or ``torch.func.hessian``
    (forward-over-reverse, all rows at once) when ``chunk_size`` is None.

    Args:
        model: the network (run in eval mode; its weights are not changed).
        batches: one ``(x, y)`` pair or an iterable of pairs (the loss is the mean over all samples).
        loss_fn: a mean-reduced loss ``loss_fn(output, y)``.
        theta: evaluate at this flat vector instead of the model's weights.
        params: names of the parameters to differentiate (default: all trainable ones).
        dtype: computation dtype (float64 by default: the inverse of ``H`` needs it).
        damping: :math:`\lambda` added to the diagonal, :math:`H + \lambda I` (the Hessian of
            :math:`L + \frac{\lambda}{2}\lVert\theta\rVert^2`).
        chunk_size: Hessian rows per vectorised pass; lower it if memory runs short.
        max_params: refuse larger models (the dense matrix needs ``P**2 * 8`` bytes).
        progress: a progress bar over batches.

    Returns:
        ``[P, P]`` tensor, ``P`` = number of flattened parameters (order of :func:`param_spec`).

    Raises:
        ValueError: for too many parameters or a negative damping.
    """
    flat, spec, device = _setup(model, params, theta, dtype)
    _check_size(spec.numel, max_params)
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    f = flat_loss_fn(model, spec, loss_fn, dtype)
    H, n = torch.zeros(spec.numel, spec.numel, dtype=dtype, device=device), 0
    with _EvalMode(model):
        for x, y in tqdm(as_batches(batches), desc="Hessian", disable=not progress, leave=False):
            x, y = _cast(x, dtype, device), y.to(device)
            fb = lambda t: f(t, x, y)  # noqa: E731
            Hb = hessian(fb)(flat) if chunk_size is None else jacrev(jacrev(fb), chunk_size=chunk_size)(flat)
            H.add_(Hb.detach(), alpha=len(y))
            del Hb
            n += len(y)
    H /= n
    _symmetrize_(H)  # exact in exact arithmetic; removes rounding asymmetry
    H.diagonal().add_(damping)
    return H


def gauss_newton(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
                 loss_fn: Callable = F.cross_entropy, theta: torch.Tensor | None = None,
                 params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64,
                 damping: float = 0.0, sample_chunk: int = 256, max_params: int = 20_000,
                 progress: bool = False) -> torch.Tensor:
    r"""The generalised Gauss-Newton matrix :math:`G = \frac1N\sum_n J_n^\top \Lambda_n J_n`.

    Schraudolph 2002, Eq. (7); Martens & Grosse 2015, Sec. 9.1. :math:`J_n` is the Jacobian of
    the network output for sample :math:`n` (``vmap(jacrev(...))``) and
    :math:`\Lambda_n = \nabla^2_f \ell(f, y_n)` the Hessian of the loss with respect to the
    output (``vmap(hessian(...))``). :math:`G` is positive semi-definite whenever the loss is
    convex in the output; for softmax cross-entropy :math:`\Lambda_n = \mathrm{diag}(p_n) - p_n p_n^\top`
    and :math:`G` is the Fisher information.

    Args:
        sample_chunk: samples per vectorised Jacobian (memory ``chunk x outputs x P``).
        (others as in :func:`exact_hessian`.)
    """
    flat, spec, device = _setup(model, params, theta, dtype)
    _check_size(spec.numel, max_params)
    out_fn = _output_fn(model, spec, dtype)
    per_out = lambda o, y: loss_fn(o.unsqueeze(0), y.unsqueeze(0))  # noqa: E731
    G, n = torch.zeros(spec.numel, spec.numel, dtype=dtype, device=device), 0
    with _EvalMode(model):
        for x, y in tqdm(as_batches(batches), desc="Gauss-Newton", disable=not progress, leave=False):
            x, y = _cast(x, dtype, device), y.to(device)
            for i in range(0, len(y), sample_chunk):
                xs, ys = x[i:i + sample_chunk], y[i:i + sample_chunk]
                J = vmap(jacrev(out_fn), in_dims=(None, 0))(flat, xs.unsqueeze(1)).flatten(1, -2)  # [n, C, P]
                with torch.no_grad():
                    outs = out_fn(flat, xs)
                Lam = vmap(hessian(per_out))(outs.reshape(len(ys), -1), ys)  # [n, C, C]
                LJ = torch.einsum("ncd,ndp->ncp", Lam, J)
                G += J.reshape(-1, spec.numel).T @ LJ.reshape(-1, spec.numel)
            n += len(y)
    G /= n
    _symmetrize_(G)
    G.diagonal().add_(damping)
    return G


def _symmetrize_(M: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """``M <- (M + M^T) / 2`` in place, block by block (no second ``P x P`` matrix in memory)."""
    p = M.shape[0]
    for i in range(0, p, block):
        for j in range(i, p, block):
            a = M[i:i + block, j:j + block]
            b = M[j:j + block, i:i + block]
            mean = 0.5 * (a + b.T)
            a.copy_(mean)
            b.copy_(mean.T)
    return M


def add_damping(M: torch.Tensor, damping: float) -> torch.Tensor:
    r""":math:`M + \lambda I` (a new tensor; ``M`` is returned unchanged when ``damping == 0``)."""
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if damping == 0:
        return M
    return M + damping * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)


def relative_frobenius_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    r""":math:`\lVert \tilde H - H\rVert_F / \lVert H \rVert_F`."""
    if approx.shape != exact.shape:
        raise ValueError(f"shapes differ: {tuple(approx.shape)} vs {tuple(exact.shape)}")
    return float(torch.linalg.matrix_norm(approx - exact) / torch.linalg.matrix_norm(exact))


def _check_size(p: int, max_params: int) -> None:
    if p > max_params:
        raise ValueError(f"the model has {p} parameters; a dense {p}x{p} curvature matrix needs "
                         f"{p * p * 8 / 2**30:.1f} GiB in float64. Use a smaller model, restrict "
                         f"`params=` to some layers, or raise max_params (now {max_params}).")


def minimize_full_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        loss_fn: Callable = F.cross_entropy, weight_decay: float = 0.0,
                        max_iter: int = 500, tol: float = 1e-8, progress: bool = False) -> dict[str, float]:
    r"""Train ``model`` in place to a stationary point of
    :math:`L(\theta) = \mathrm{loss}(\theta) + \frac{\lambda}{2}\lVert\theta\rVert^2` with full-batch
    L-BFGS (strong-Wolfe line search).

    The Taylor argument of OBD/OBS drops :math:`g^\top\delta\theta` because training ends at a
    minimum (LeCun et al. 1990, Sec. 3; Hassibi & Stork 1993, after Eq. 1). Minibatch SGD stops
    near one; full-batch L-BFGS gets :math:`\lVert g\rVert` down to ``tol``, so the assumption holds
    and the weight decay :math:`\lambda` makes the minimum strict (the Hessian of :math:`L` is
    that of the loss plus :math:`\lambda I`).

    Args:
        model: the network; use ``model.double()`` for a tight minimum.
        x, y: the whole training set as tensors.
        weight_decay: :math:`\lambda`.
        max_iter: L-BFGS iterations (in chunks of 50 with a progress bar).
        tol: stop when the gradient's max-norm is below this.

    Returns:
        ``{"loss": data loss, "objective": loss + decay, "grad_norm": ||g||_2, "iterations"}``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    dtype = params[0].dtype
    x = x.to(dtype) if x.is_floating_point() else x
    opt = torch.optim.LBFGS(params, lr=1, max_iter=50, history_size=50, tolerance_grad=tol,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        loss = loss_fn(model(x), y)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * sum(p.pow(2).sum() for p in params)
        return loss

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    was = model.training
    model.train()
    done = 0
    for _ in tqdm(range(0, max_iter, 50), desc="L-BFGS", disable=not progress, leave=False):
        opt.step(closure)
        state = opt.state[params[0]]
        done = state.get("n_iter", done)
        gmax = max(float(p.grad.abs().max()) for p in params)
        if gmax <= tol:
            break
    model.zero_grad()
    model.train(was)
    obj = objective()
    obj.backward()
    gnorm = float(torch.sqrt(sum(p.grad.pow(2).sum() for p in params)))
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        data_loss = float(loss_fn(model(x), y))
    return {"loss": data_loss, "objective": float(obj.detach()), "grad_norm": gnorm, "iterations": int(done)}

