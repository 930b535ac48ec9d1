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

* ``fisher="sampled"`` (the EigenDamage code): one label per example drawn from the model's
  softmax, a Monte-Carlo estimate of the true Fisher at the cost of one backward pass (the exact
  expectation costs one pass per class, which is too much at CNN scale).

Convolutions (Grosse & Martens 2016, KFC, Sec. 3): with the weight reshaped to
``[out, in*kh*kw (+1)]`` (:func:`layer_matrix`), the gradient of one example is a sum over output
positions :math:`t\in\mathcal T`, :math:`\sum_t \delta_t \bar a_t^\top`, where :math:`\bar a_t` is the
unfolded input patch at :math:`t`. Assuming spatially homogeneous, uncorrelated derivatives, KFC
gives :math:`F \approx |\mathcal T|\, \Omega\otimes\Gamma` with :math:`\Omega = E[\bar a_t\bar a_t^\top]`,
:math:`\Gamma = E[\delta_t\delta_t^\top]` (means over examples and positions). We scale the factors as
the EigenDamage code does (``utils/kfac_utils.py`` of alecwangcq/EigenDamage-Pytorch: patches divided
by the spatial size :math:`|\mathcal T|`, batch-averaged output gradients multiplied by
:math:`B\cdot|\mathcal T|`), which is the same product:

.. math::
    A = E_x\Big[\tfrac{1}{|\mathcal T|^2}\sum_t \bar a_t\bar a_t^\top\Big], \qquad
    G = S = E_x\Big[|\mathcal T| \sum_t \delta_t\delta_t^\top\Big], \qquad
    A\otimes S = |\mathcal T|\,\Omega\otimes\Gamma .

For one example and one output position the factorisation is exact (``tests/test_kfac_conv.py``).
A Linear layer is the case :math:`|\mathcal T| = 1`.

Factors are collected with forward hooks (inputs) and tensor hooks on the layer outputs
(:math:`\delta`) during ordinary ``backward()`` passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tqdm.auto import tqdm

from pruninglib.curvature.params import Batches, ParamSpec

__all__ = ["KFACFactors", "kfac_factors", "kfac_block", "kfac_matrix", "kfac_diag", "layer_matrix", "exact_fisher",
           "set_layer_matrix", "FISHER_KINDS"]

#: The Fisher variants :func:`kfac_factors` computes.
FISHER_KINDS = ("true", "empirical", "sampled")


@dataclass
class KFACFactors:
    r"""The two factors of one ``nn.Linear`` or ``nn.Conv2d`` layer.

    Attributes:
        A: :math:`E[\bar h\bar h^\top]`, ``[in(+1), in(+1)]`` (the last row/column is the bias input 1);
            for a conv ``in = in_channels*kh*kw`` in the order of :func:`layer_matrix`.
        G: :math:`E[\delta\delta^\top]`, ``[out, out]`` (called :math:`S` in the EigenDamage paper).
        weight: qualified name of the layer's weight.
        bias: qualified name of its bias, or None.
        kind: ``"linear"`` or ``"conv"``.
        spatial: :math:`|\mathcal T|`, output positions per example (1 for a Linear layer).
        count: examples the factors average over.
        patch: ``A`` is the EigenDamage code's ``use_patch`` factor of a conv, over the input channels only
            (``[in, in]``: every kernel offset's patch pooled and divided by ``kh*kw``, no bias row);
            :func:`kfac_block` refuses it.

    Used in lessons 01 and 07.
    """

    A: torch.Tensor
    G: torch.Tensor
    weight: str
    bias: str | None
    kind: str = "linear"
    spatial: int = 1
    count: int = 0
    patch: bool = False

    @property
    def S(self) -> torch.Tensor:
        """The output-gradient factor under the EigenDamage paper's name (the same tensor as ``G``)."""
        return self.G


def _pairs(batches: Batches | tuple[torch.Tensor, torch.Tensor]) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """One ``(x, y)`` pair as a list of one, anything else as it is (a DataLoader is read lazily)."""
    if isinstance(batches, (tuple, list)) and len(batches) == 2 and all(torch.is_tensor(t) for t in batches):
        return [(batches[0], batches[1])]
    try:
        iter(batches)
    except TypeError as e:
        raise TypeError("batches must be an (x, y) pair of tensors or an iterable of (x, y) pairs "
                        f"(a DataLoader works); got {type(batches).__name__}") from e
    return batches


def _patches(m: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Unfolded input patches ``[B * |T|, in*kh*kw]`` (the order of ``weight.reshape(out, -1)``) and ``|T|``."""
    p = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)  # [B, D, T]
    return p.transpose(1, 2).reshape(-1, p.shape[1]), p.shape[2]


def kfac_factors(model: nn.Module, batches: Batches | tuple[torch.Tensor, torch.Tensor],
                 loss_fn: Callable = F.cross_entropy, fisher: str = "true",
                 layers: Sequence[str] | None = None, dtype: torch.dtype = torch.float64,
                 progress: bool = False, seed: int = 0, max_batches: int | None = None,
                 patch: bool = False, compute_dtype: torch.dtype | None = None) -> dict[str, KFACFactors]:
    r"""Collect :math:`A` and :math:`G` of every ``nn.Linear`` and ``nn.Conv2d`` (or of ``layers``) over all samples.

    Args:
        model: the network (run in eval mode; weights unchanged, gradients cleared afterwards).
        batches: one ``(x, y)`` pair or an iterable of pairs (a DataLoader is read batch by batch).
        loss_fn: a mean-reduced loss (``fisher="true"`` and ``"sampled"`` need ``F.cross_entropy``).
        fisher: ``"true"`` (labels from the model, exact expectation over the classes),
            ``"sampled"`` (one label per example drawn from the model, as the EigenDamage code does)
            or ``"empirical"`` (the observed labels).
        layers: names of the Linear / Conv2d layers (default: all of them).
        dtype: dtype of the factors.
        progress: show a tqdm bar over the batches.
        seed: seeds the label draws of ``fisher="sampled"``.
        max_batches: read at most this many batches.
        patch: for convolutions, the channel-only factor :math:`A` of the EigenDamage code's ``use_patch``
            (``ComputeCovAPatch``): every kernel offset's input vector is a sample,
            :math:`A = E_x[\frac{1}{|\mathcal T|^2 k_hk_w}\sum_{t,k} a_{t,k}a_{t,k}^\top]`, ``[in, in]``; the bias is left out.
        compute_dtype: dtype of each batch's products (default ``dtype``); ``torch.float32`` is several times
            faster for VGG-size layers, and the sums over batches are still kept in ``dtype``.

    Raises:
        ValueError: unknown ``fisher``, a ``"true"``/``"sampled"`` Fisher with a loss other than cross-entropy.
        TypeError: a named layer that is neither ``nn.Linear`` nor a plain ``nn.Conv2d`` (groups=1).

    Used in lessons 01 and 07.
    """
    if fisher not in FISHER_KINDS:
        raise ValueError(f"fisher must be one of {FISHER_KINDS}, got {fisher!r}")
    if fisher != "empirical" and loss_fn is not F.cross_entropy:
        raise ValueError(f"fisher={fisher!r} takes labels from a softmax's classes and needs "
                         "loss_fn=F.cross_entropy; use fisher='empirical' for other losses")
    named = dict(model.named_modules())
    ok = (nn.Linear, nn.Conv2d)
    names = list(layers) if layers is not None else [n for n, m in named.items() if type(m) in ok]
    for n in names:
        m = named.get(n)
        if not isinstance(m, ok) or (isinstance(m, nn.Conv2d) and m.groups != 1):
            raise TypeError(f"layer {n!r} is {type(m).__name__}, K-FAC here handles nn.Linear and nn.Conv2d "
                            "(groups=1) only; pass layers= with such layer names")
    acts: dict[str, torch.Tensor] = {}
    grads: dict[str, list[torch.Tensor]] = {}
    spatial: dict[str, int] = {n: 1 for n in names}
    A = {n: None for n in names}
    G = {n: None for n in names}

    def fwd(name: str) -> Callable:
        def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d) and patch:  # [B, in*K, T] -> rows (b, t, k) of length in
                x = inp[0].detach()
                p = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
                t, k = p.shape[2], m.kernel_size[0] * m.kernel_size[1]
                acts[name] = p.reshape(p.shape[0], m.in_channels, k, t).permute(0, 3, 2, 1).reshape(-1, m.in_channels) / (
                    t * k ** 0.5)
                spatial[name] = t
            elif isinstance(m, nn.Conv2d):
                a, t = _patches(m, inp[0].detach())
                acts[name], spatial[name] = a / t, t  # patches divided by |T| (EigenDamage)
            else:
                acts[name] = inp[0].detach().reshape(-1, inp[0].shape[-1])
            if out.requires_grad:  # delta = dloss/d(output), read during backward
                out.register_hook(lambda g: grads.setdefault(name, []).append(g.detach()))
        return hook

    def flat_grad(m: nn.Module, g: torch.Tensor) -> torch.Tensor:
        if isinstance(m, nn.Conv2d):  # [B, C, H, W] -> [B*H*W, C]
            return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])
        return g.reshape(-1, g.shape[-1])

    handles = [named[n].register_forward_hook(fwd(n)) for n in names]
    was = model.training
    model.eval()
    count = 0
    gen = torch.Generator().manual_seed(seed)
    try:
        for step, (x, y) in enumerate(tqdm(_pairs(batches), desc=f"K-FAC ({fisher} Fisher)", disable=not progress,
                                            leave=False)):
            if max_batches is not None and step >= max_batches:
                break
            x = x.to(next(model.parameters()).device)
            x = x.to(next(model.parameters()).dtype) if x.is_floating_point() else x
            y = y.to(x.device)
            grads.clear()
            model.zero_grad(set_to_none=True)
            out = model(x)
            if fisher == "empirical":
                (loss_fn(out, y) * len(y)).backward()  # per-sample delta of the summed loss
            elif fisher == "sampled":
                y_s = torch.multinomial(out.detach().float().softmax(-1).cpu(), 1, generator=gen).squeeze(1)
                (F.cross_entropy(out, y_s.to(x.device)) * len(y)).backward()
            else:
                p = out.detach().softmax(-1)
                for c in range(out.shape[-1]):
                    target = torch.full_like(y, c)
                    per = F.cross_entropy(out, target, reduction="none")
                    (per * p[:, c].sqrt()).sum().backward(retain_graph=c < out.shape[-1] - 1)
            cd = compute_dtype or dtype
            for n in names:
                m, t = named[n], spatial[n]
                h = acts[n].to(cd)
                if m.bias is not None and not (patch and isinstance(m, nn.Conv2d)):  # bias input 1, divided by |T|
                    h = torch.cat([h, torch.full((len(h), 1), 1.0 / t, dtype=cd, device=h.device)], 1)
                a = (h.T @ h).to(dtype)
                g = sum((flat_grad(m, d).to(cd).T @ flat_grad(m, d).to(cd)).to(dtype) for d in grads[n]) * t
                A[n] = a if A[n] is None else A[n] + a
                G[n] = g if G[n] is None else G[n] + g
            count += len(y)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was)
    if count == 0:
        raise ValueError("batches is empty: pass at least one (x, y) pair")
    return {n: KFACFactors(A[n] / count, G[n] / count, f"{n}.weight" if n else "weight",
                           (f"{n}.bias" if n else "bias") if named[n].bias is not None else None,
                           "conv" if isinstance(named[n], nn.Conv2d) else "linear", spatial[n], count,
                           patch and isinstance(named[n], nn.Conv2d))
            for n in names}


def layer_matrix(m: nn.Module, bias: bool = True) -> torch.Tensor:
    r"""The layer's weight as the matrix K-FAC sees, ``[out, in*kh*kw (+1)]``, bias as the last column.

    Used in lesson 07.
    """
    W = m.weight.detach().reshape(m.weight.shape[0], -1)
    if bias and m.bias is not None:
        W = torch.cat([W, m.bias.detach()[:, None]], 1)
    return W


def set_layer_matrix(m: nn.Module, W: torch.Tensor) -> None:
    """Write a matrix of :func:`layer_matrix`'s shape back into the layer's weight (and bias). Used in lesson 07."""
    with torch.no_grad():
        n = m.weight[0].numel()
        m.weight.copy_(W[:, :n].reshape(m.weight.shape).to(m.weight.dtype))
        if m.bias is not None:
            m.bias.copy_(W[:, n].to(m.bias.dtype))


def kfac_block(f: KFACFactors) -> torch.Tensor:
    r"""The layer's K-FAC block :math:`G \otimes A` in the flat order ``[W (row-major), b]``. Used in lessons 01 and 07."""
    if f.patch:
        raise ValueError(f"{f.weight}: a patch factor (kfac_factors(patch=True)) has no Kronecker block over the "
                         "layer's weights; collect the factors with patch=False")
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


def exact_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: Sequence[str],
                 fisher: str = "true") -> torch.Tensor:
    r"""The exact Fisher block of ``params`` from per-example gradients, to check K-FAC against.

    ``"true"``: :math:`\frac1N\sum_n\sum_c p(c|x_n)\, g_{n,c} g_{n,c}^\top` (cross-entropy, every class);
    ``"empirical"``: :math:`\frac1N\sum_n g_n g_n^\top` with the observed labels. In the flat order of
    :func:`pruninglib.curvature.params.param_spec` (that of :func:`kfac_matrix`). Used in lesson 07.
    """
    from pruninglib.curvature.fisher import per_sample_grads

    if fisher == "empirical":
        g = per_sample_grads(model, x, y, params=list(params))
        return g.T @ g / len(x)
    if fisher != "true":
        raise ValueError(f"fisher must be 'true' or 'empirical' here, got {fisher!r}")
    with torch.no_grad():
        p = model(x.to(next(model.parameters()).dtype)).softmax(-1).to(torch.float64)
    total = 0
    for c in range(p.shape[1]):
        g = per_sample_grads(model, x, torch.full_like(y, c), params=list(params))
        total = total + (g * p[:, c:c + 1]).T @ g
    return total / len(x)
