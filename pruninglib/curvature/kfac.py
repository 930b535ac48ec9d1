r"""K-FAC: a layer's Fisher block as a Kronecker product of two small matrices.

Martens & Grosse 2015, Sec. 3, Eq. (1)-(2): for a fully connected layer :math:`s = W \bar h`
(input :math:`\bar h = [h; 1]` with the bias folded in) the gradient of the loss with respect to
:math:`W` is :math:`\delta \bar h^\top` with :math:`\delta = \partial \ell / \partial s`, so the layer's
Fisher block is :math:`E[(\bar h \bar h^\top) \otimes (\delta\delta^\top)]`, which K-FAC approximates by

.. math::
    F_{\ell} \approx A \otimes G, \qquad A = E[\bar h \bar h^\top], \quad G = E[\delta\delta^\top]

(expectation of a Kronecker product replaced by the Kronecker product of expectations; exact
for one sample). Martens & Grosse use column-major :math:`\mathrm{vec}(W)`; PyTorch stores
``W[out, in]`` row-major, so in the flat order of :mod:`pruninglib.curvature.hessian` the block is
``kron(G, A)``. Across layers K-FAC is block-diagonal: cross-layer curvature is dropped.

Two versions of :math:`\delta`:

* ``fisher="true"`` (Martens & Grosse): labels drawn from the model; here the expectation over
  the classes is taken exactly, :math:`G = E_x \sum_c p(c|x)\, \delta_c \delta_c^\top`
  (cross-entropy only).
* ``fisher="empirical"``: :math:`\delta` from the observed labels.

Factors are collected with forward hooks (inputs) and tensor hooks on the layer outputs
(:math:`\delta`) during ordinary ``backward()`` passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib.curvature.params import Batches, ParamSpec, as_batches

__all__ = ["KFACFactors", "kfac_factors", "kfac_block", "kfac_matrix", "kfac_diag"]


@dataclass
class KFACFactors:
    r"""The two factors of one ``nn.Linear`` layer.

    Attributes:
        A: :math:`E[\bar h\bar h^\top]`, ``[in(+1), in(+1)]`` (the last row/column is the bias input 1).
        G: :math:`E[\delta\delta^\top]`, ``[out, out]``.
        weight: qualified name of the layer's weight.
        bias: qualified name of its bias, or None.

    Used in lesson 01.
    """

    A: torch.Tensor
    G: torch.Tensor
    weight: str
    bias: str | None


def kfac_factors(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
                 loss_fn: Callable = F.cross_entropy, fisher: str = "true",
                 layers: Sequence[str] | None = None, dtype: torch.dtype = torch.float64) -> dict[str, KFACFactors]:
    r"""Collect :math:`A` and :math:`G` of every ``nn.Linear`` (or of ``layers``) over all samples.

    Args:
        model: the network (run in eval mode; weights unchanged, gradients cleared afterwards).
        batches: one ``(x, y)`` pair or an iterable of pairs.
        loss_fn: a mean-reduced loss (``fisher="true"`` needs ``F.cross_entropy``).
        fisher: ``"true"`` (labels from the model, exact expectation) or ``"empirical"``.
        layers: names of the Linear layers (default: all of them).
        dtype: dtype of the factors.

    Raises:
        ValueError: unknown ``fisher``, a ``"true"`` Fisher with a loss other than cross-entropy.
        TypeError: a named layer that is not ``nn.Linear`` (K-FAC for convolutions, Grosse &
            Martens 2016, is not implemented here).

    Used in lesson 01.
    """
    if fisher not in ("true", "empirical"):
        raise ValueError(f"fisher must be 'true' or 'empirical', got {fisher!r}")
    if fisher == "true" and loss_fn is not F.cross_entropy:
        raise ValueError("fisher='true' takes the expectation over a softmax's classes and needs "
                         "loss_fn=F.cross_entropy; use fisher='empirical' for other losses")
    named = dict(model.named_modules())
    names = list(layers) if layers is not None else [n for n, m in named.items() if isinstance(m, nn.Linear)]
    for n in names:
        if not isinstance(named.get(n), nn.Linear):
            raise TypeError(f"layer {n!r} is {type(named.get(n)).__name__}, K-FAC here handles nn.Linear "
                            "only; pass layers= with Linear layer names")
    acts: dict[str, torch.Tensor] = {}
    grads: dict[str, list[torch.Tensor]] = {}
    A = {n: None for n in names}
    G = {n: None for n in names}

    def fwd(name: str) -> Callable:
        def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            acts[name] = inp[0].detach().reshape(-1, inp[0].shape[-1])
            if out.requires_grad:  # delta = dloss/d(output), read during backward
                out.register_hook(lambda g: grads.setdefault(name, []).append(
                    g.detach().reshape(-1, g.shape[-1])))
        return hook

    handles = [named[n].register_forward_hook(fwd(n)) for n in names]
    was = model.training
    model.eval()
    count = 0
    try:
        for x, y in as_batches(batches):
            x = x.to(next(model.parameters()).device)
            x = x.to(next(model.parameters()).dtype) if x.is_floating_point() else x
            y = y.to(x.device)
            grads.clear()
            model.zero_grad(set_to_none=True)
            out = model(x)
            if fisher == "empirical":
                (loss_fn(out, y) * len(y)).backward()  # per-sample delta of the summed loss
            else:
                p = out.detach().softmax(-1)
                for c in range(out.shape[-1]):
                    target = torch.full_like(y, c)
                    per = F.cross_entropy(out, target, reduction="none")
                    (per * p[:, c].sqrt()).sum().backward(retain_graph=c < out.shape[-1] - 1)
            for n in names:
                h = acts[n].to(dtype)
                if named[n].bias is not None:
                    h = torch.cat([h, torch.ones(len(h), 1, dtype=dtype, device=h.device)], 1)
                a = h.T @ h
                g = sum(d.to(dtype).T @ d.to(dtype) for d in grads[n])
                A[n] = a if A[n] is None else A[n] + a
                G[n] = g if G[n] is None else G[n] + g
            count += len(y)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was)
    return {n: KFACFactors(A[n] / count, G[n] / count, f"{n}.weight" if n else "weight",
                           (f"{n}.bias" if n else "bias") if named[n].bias is not None else None)
            for n in names}


def kfac_block(f: KFACFactors) -> torch.Tensor:
    r"""The layer's K-FAC block :math:`G \otimes A` in the flat order ``[W (row-major), b]``. Used in lesson 01."""
    out, inp = f.G.shape[0], f.A.shape[0]
    K = torch.kron(f.G, f.A)  # index o * inp + i over W_aug = [W | b]
    if f.bias is None:
        return K
    n_in = inp - 1
    o = torch.arange(out, device=K.device).repeat_interleave(n_in)
    i = torch.arange(n_in, device=K.device).repeat(out)
    perm = torch.cat([o * inp + i, torch.arange(out, device=K.device) * inp + n_in])
    return K[perm][:, perm]


def kfac_matrix(factors: dict[str, KFACFactors], spec: ParamSpec, damping: float = 0.0) -> torch.Tensor:
    r"""The block-diagonal K-FAC matrix ``[P, P]`` in the order of ``spec`` (+ :math:`\lambda I`).

    Raises:
        ValueError: when a parameter of ``spec`` belongs to no layer of ``factors`` (its curvature
            would silently be zero), or a layer's weight and bias are not adjacent in ``spec``.

    Used in lesson 01.
    """
    covered: dict[str, KFACFactors] = {}
    for f in factors.values():
        covered[f.weight] = f
        if f.bias:
            covered[f.bias] = f
    missing = [n for n in spec.names if n not in covered]
    if missing:
        raise ValueError(f"no K-FAC factors for parameters {missing}; collect factors for their layers "
                         "or leave them out of the ParamSpec (params=)")
    ref = next(iter(factors.values())).A
    M = torch.zeros(spec.numel, spec.numel, dtype=ref.dtype, device=ref.device)
    for f in factors.values():
        if f.weight not in spec.names:
            continue
        s = spec.slice(f.weight)
        stop = s.stop
        if f.bias is not None:
            sb = spec.slice(f.bias)
            if sb.start != s.stop:
                raise ValueError(f"{f.weight} and {f.bias} are not adjacent in the ParamSpec")
            stop = sb.stop
        M[s.start:stop, s.start:stop] = kfac_block(f)
    if damping:
        M += damping * torch.eye(spec.numel, dtype=M.dtype, device=M.device)
    return M


def kfac_diag(factors: dict[str, KFACFactors], spec: ParamSpec) -> torch.Tensor:
    r"""Only the diagonal, :math:`\mathrm{diag}(G)\otimes\mathrm{diag}(A)` per layer (``[P]``), for OBD.

    No lesson calls it directly (its tests do).
    """
    parts = {}
    for f in factors.values():
        d = torch.outer(torch.diagonal(f.G), torch.diagonal(f.A))
        if f.bias is not None:
            parts[f.weight], parts[f.bias] = d[:, :-1].reshape(-1), d[:, -1]
        else:
            parts[f.weight] = d.reshape(-1)
    missing = [n for n in spec.names if n not in parts]
    if missing:
        raise ValueError(f"no K-FAC factors for parameters {missing}")
    return torch.cat([parts[n] for n in spec.names])
