r"""Taylor criteria (Molchanov et al. 2017, ICLR; Molchanov et al. 2019, CVPR).

2017, Eq. (7)-(8): the change of the cost when feature map :math:`z_l^{(k)}` is zeroed,
to first order,

.. math::
    \Theta_{TE}(z_l^{(k)}) = \Big| \frac{1}{M} \sum_m \frac{\partial C}{\partial z_{l,m}^{(k)}}
    z_{l,m}^{(k)} \Big|,

averaged over the :math:`M` positions of the map and over minibatches, then normalised per
layer (:func:`~pruninglib.criteria.base.normalize_per_layer`), optionally with the paper's FLOPs
regularisation, :math:`\Theta - \lambda\,\Theta^{flops}_l` (:func:`taylor_2017_flops`).

2019, Sec. 3: a gate :math:`z_m` (=1) multiplies every unit's output. Removing unit :math:`m` sets
:math:`z_m = 0`, so with :math:`g_m = \partial L/\partial z_m` and :math:`H_{mm} = \partial^2 L/\partial z_m^2`

.. math::
    \Delta L_m \approx -g_m z_m + \tfrac12 H_{mm} z_m^2 ,\qquad
    \mathcal{I}^{(1)}_m = (g_m z_m)^2 ,\qquad
    \mathcal{I}^{(2)}_m = \big(g_m z_m - \tfrac12 H_{mm} z_m^2\big)^2

(Eq. 3-4 with the diagonal of the Hessian, as the authors' code does for "Taylor SO").
Because the output of unit :math:`m` is :math:`z_m a_m`, :math:`z_m g_m = \sum a_m\,\partial L/\partial a_m`
(sum over the positions of the map) -- the 2017 product, before its absolute value -- and, when
the gate sits on a layer without BatchNorm, also :math:`\sum_{s \in S_m} w_s\,\partial L/\partial w_s`
over the unit's filter (weights and bias): the *group contribution* (Sec. 3.1),
:func:`filter_group_contribution`. The *weight* variant sums the squares instead,
:math:`\sum_{s \in S_m} (w_s g_s)^2` (:func:`taylor_fo_weight`). Scores are computed per
minibatch and averaged over minibatches (or with momentum, as the authors' configs do).

**Link to the Fisher.** With per-example gate gradients :math:`g_{m,n}`, the empirical Fisher's
diagonal is :math:`\hat F_{mm} = \frac1N \sum_n g_{m,n}^2`; the squared *minibatch* gradient
:math:`\mathcal{I}^{(1)}` is its noisy, batch-averaged cousin (2019, Sec. 3), and for the
softmax cross-entropy the Gauss-Newton diagonal below *is* the (true) Fisher's diagonal.

**The Hessian diagonal.** :math:`H_{mm} = \frac1N\sum_n J_{n,m}^\top \Lambda_n J_{n,m}
+ \frac1N\sum_{n,c} \frac{\partial \ell_n}{\partial f_c}\frac{\partial^2 f_{n,c}}{\partial z_m^2}`, with
:math:`J_{n,m} = \partial f_n / \partial z_m` (one backward pass per class) and
:math:`\Lambda_n = \nabla_f^2 \ell_n`. For networks that are piecewise linear in each single
gate (ReLU, max-pooling, linear layers, eval-mode BatchNorm) the second term is zero almost
everywhere, so the Gauss-Newton diagonal *is* the exact Hessian diagonal
(``hessian="gauss_newton"``, the default; ``tests/test_taylor.py`` checks it against the exact
Hessian from ``torch.func``). For smooth activations (tanh, sigmoid) it is an approximation; use
``hessian="exact"`` (``torch.func`` ``jacrev`` of ``jacrev`` per layer; slow) there.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, jacrev, vmap

from pruninglib.criteria.base import ScoreAverage, Scores, normalize_per_layer, register
from pruninglib.core.gates import ActivationRecorder, Gate
from pruninglib.core.graph import PrunableLayer, prunable_layers

__all__ = ["taylor_2017", "taylor_2017_flops", "unit_flops", "GateTaylorStats",
           "gate_taylor_statistics", "gate_hessian_diag_exact", "taylor_fo_gate", "taylor_so_gate",
           "taylor_fo_weight", "filter_group_contribution", "obd_squared_gradients",
           "temporary_gates", "weight_fo_unit_scores"]


@register("taylor_2017")
def taylor_2017(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
                kinds: tuple[str, ...] = ("conv", "linear"), normalize: bool = False,
                device: torch.device | None = None, **_: Any) -> Scores:
    r"""Molchanov et al. 2017, Eq. (7): :math:`|\mathrm{mean}_m(a_m \, \partial C / \partial a_m)|`
    per example, averaged over examples.

    For each example the product of activation and gradient is averaged over spatial
    positions, its absolute value taken, and the result averaged over all examples of all
    batches (the paper's "averaged over the minibatch" with the absolute value per example,
    as in its Eq. 7 and the reference code).

    Args:
        model: the network (gates optional).
        batches: iterable of ``(x, y)``.
        loss_fn: the cost :math:`C`.
        kinds: which producer kinds to score.
        normalize: apply the per-layer L2 normalisation of Eq. (8).

    Used in lessons 02, 03 and 06.
    """
    layers = prunable_layers(model, kinds)
    device = device or next(model.parameters()).device
    sums = {pl.name: torch.zeros(pl.num_units, device=device) for pl in layers}
    count = 0
    was_training = model.training
    model.eval()
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with ActivationRecorder(model, layers) as rec:
            model.zero_grad(set_to_none=True)
            x = x.requires_grad_(True)  # so activations of frozen layers get gradients too
            out = model(x)
            loss_fn(out, y).backward()
        for pl in layers:
            a, g = rec.activations[pl.name], rec.gradients[pl.name]
            prod = a * g * len(y)  # per-example gradient of the summed (not mean) cost
            if prod.dim() > 2:
                prod = prod.flatten(2).mean(2)
            sums[pl.name] += prod.abs().sum(0)
        count += len(y)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    scores = {k: (v / max(count, 1)).cpu() for k, v in sums.items()}
    if normalize:
        from pruninglib.criteria.base import normalize_per_layer
        scores = normalize_per_layer(scores)
    return scores


# --------------------------------------------------------------------------- FLOPs (2017)


@torch.no_grad()
def unit_flops(model: nn.Module, example: torch.Tensor, kinds: tuple[str, ...] = ("conv", "linear")
               ) -> dict[str, float]:
    r"""FLOPs (2 x multiply-adds) per example that one unit of each layer costs: its own filter
    (:math:`2 k_h k_w C_{in} H_{out} W_{out}`) plus its share of the consumer
    (:math:`2 k'_h k'_w C'_{out} H'_{out} W'_{out}`, or :math:`2\,C'_{out}\times` the inputs it feeds
    of a Linear). This is :math:`\Theta^{flops}_l` of Molchanov et al. 2017 (FLOPs regularisation).

    Args:
        model: the network.
        example: one input batch (its first example is used).

    Used in lessons 02 and 03.
    """
    layers = prunable_layers(model, kinds)
    named = dict(model.named_modules())
    shapes: dict[str, tuple] = {}
    handles = []
    for name in {pl.name for pl in layers} | {pl.consumer_name for pl in layers}:
        handles.append(named[name].register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))))
    was_training = model.training
    model.eval()
    try:
        model(example[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    def per_out_channel(m: nn.Module, out_shape: tuple, in_units: int) -> float:
        if isinstance(m, nn.Conv2d):
            hw = out_shape[1] * out_shape[2]
            return 2.0 * m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups) * hw
        return 2.0 * in_units

    out = {}
    for pl in layers:
        m, c = pl.module, pl.consumer
        own = per_out_channel(m, shapes[pl.name], m.in_features if isinstance(m, nn.Linear) else 0)
        if isinstance(c, nn.Conv2d):
            cs = shapes[pl.consumer_name]
            cons = 2.0 * c.kernel_size[0] * c.kernel_size[1] * c.out_channels * cs[1] * cs[2]
        else:
            cons = 2.0 * c.out_features * pl.spatial_factor()
        out[pl.name] = own + cons
    return out


@register("taylor_2017_flops")
def taylor_2017_flops(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
                      lam: float = 1e-3, flops_unit: float = 1e6,
                      kinds: tuple[str, ...] = ("conv", "linear"), **kw: Any) -> Scores:
    r"""FLOPs-aware Taylor criterion, Molchanov et al. 2017 (FLOPs regularisation):
    :math:`\hat\Theta(z_l^{(k)}) - \lambda\,\Theta^{flops}_l`.

    :math:`\hat\Theta` is the layer-normalised 2017 criterion and :math:`\Theta^{flops}_l` the FLOPs
    one unit of layer :math:`l` costs (:func:`unit_flops`), counted in units of ``flops_unit``
    (default MFLOPs). The paper uses :math:`\lambda = 10^{-3}`; how strongly that penalises
    depends on the unit FLOPs are counted in, so treat ``lam`` as a knob.

    Used in lessons 02 and 03.
    """
    data = [(x, y) for x, y in batches]
    if not data:
        raise ValueError("batches is empty: pass an iterable of (x, y) with at least one batch")
    theta = taylor_2017(model, data, loss_fn, kinds=kinds, normalize=True, **kw)
    flops = unit_flops(model, data[0][0].to(next(model.parameters()).device), kinds)
    return {k: v - lam * flops[k] / flops_unit for k, v in theta.items()}


# --------------------------------------------------------------------------- gates (2019)


@contextmanager
def temporary_gates(model: nn.Module, kinds: tuple[str, ...] = ("conv", "linear")) -> Iterator[dict[str, Gate]]:
    """Insert gates (value 1) on the layers that have none; remove only those on exit. Used in lessons 02 and 03."""
    from pruninglib.core.gates import insert_gates

    layers = prunable_layers(model, kinds)
    missing = [pl for pl in layers if not hasattr(pl.gate_host, "pl_gate")]
    gates = insert_gates(model, layers)
    try:
        yield gates
    finally:
        for pl in missing:
            host = pl.gate_host
            host.pl_gate_handle.remove()
            del host.pl_gate, host.pl_gate_handle
            if hasattr(host, "pl_gate_owner"):
                del host.pl_gate_owner


class _Tape:
    """Keep each gate host's (gated) output *in the graph*, to differentiate with respect to it."""

    def __init__(self, layers: Sequence[PrunableLayer]) -> None:
        self.layers = list(layers)
        self.acts: dict[str, torch.Tensor] = {}
        self._h: list = []

    def __enter__(self) -> "_Tape":
        for pl in self.layers:
            self._h.append(pl.gate_host.register_forward_hook(
                lambda m, i, o, name=pl.name: self.acts.__setitem__(name, o)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._h:
            h.remove()


def _reduce(prod: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """Sum a product over the spatial positions: keep ``batch_dims`` leading dims plus channels."""
    keep = batch_dims + 1
    return prod if prod.dim() == keep else prod.flatten(keep).sum(-1)


@dataclass
class GateTaylorStats:
    r"""Everything the gate criteria need, from one pass over the data.

    Attributes:
        grad: :math:`z_m\,\partial L/\partial z_m` of the mean loss over all examples (signed).
        hess: :math:`z_m^2\,\partial^2 L/\partial z_m^2` (Hessian diagonal), or ``None``.
        fo: :math:`\mathcal{I}^{(1)}`, mean (or momentum average) over minibatches of :math:`(z g_b)^2`.
        so: :math:`\mathcal{I}^{(2)}`, same for :math:`(z g_b - \frac12 z^2 H_b)^2`, or ``None``.
        fisher: empirical Fisher diagonal, mean over examples of :math:`(z\,\partial\ell_n/\partial z)^2`.
        num_examples: examples seen.
        num_batches: minibatches seen.

    Used in lessons 02 and 03.
    """

    grad: Scores
    hess: Scores | None
    fo: Scores
    so: Scores | None
    fisher: Scores
    num_examples: int
    num_batches: int

    def loss_change(self, order: int = 1) -> Scores:
        r"""Signed Taylor estimate of :math:`\Delta L` for removing each unit alone:
        :math:`-z g` (order 1) or :math:`-z g + \frac12 z^2 H` (order 2)."""
        if order == 1:
            return {k: -v for k, v in self.grad.items()}
        if order != 2 or self.hess is None:
            raise ValueError("order must be 1, or 2 with statistics computed with second_order=True")
        return {k: -v + 0.5 * self.hess[k] for k, v in self.grad.items()}


def _per_example_loss(loss_fn: Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0))


def _class_jacobians(out: torch.Tensor, acts: list[torch.Tensor]) -> list[torch.Tensor]:
    """``J[c, n, m] = sum_positions a * d out[n, c] / d a`` for every layer: one backward per
    class (a plain loop: on CPUs it beat ``is_grads_batched``'s vmap)."""
    per_c = []
    for c in range(out.shape[1]):
        gs = torch.autograd.grad(out[:, c].sum(), acts, retain_graph=True)
        per_c.append([_reduce(a * g, 1) for a, g in zip(acts, gs)])
    return [torch.stack([pc[i] for pc in per_c]) for i in range(len(acts))]


def _gate_terms(model: nn.Module, layers: Sequence[PrunableLayer], x: torch.Tensor, y: torch.Tensor,
                loss_fn: Callable, second_order: bool, hessian: str, per_ex_grad: Callable, per_ex_hess: Callable
                ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    r"""One minibatch's per-example gate gradients :math:`z\,\partial \ell_n/\partial z` (``(N, m)`` per
    layer) and, with ``second_order``, the minibatch's gate Hessian diagonal (Gauss-Newton or exact)."""
    n = len(y)
    with _Tape(layers) as tape:
        out = model(x.detach().requires_grad_(x.is_floating_point()))
    acts = [tape.acts[pl.name] for pl in layers]
    if not second_order:
        gs = torch.autograd.grad(loss_fn(out, y), acts)
        return [_reduce(a * g, 1) * n for a, g in zip(acts, gs)], [None] * len(layers)
    J = _class_jacobians(out, acts)                      # per layer (C, N, m)
    dl = per_ex_grad(out.detach(), y)                     # (N, C)
    G = [torch.einsum("nc,cnm->nm", dl, j) for j in J]   # z dl_n/dz, per example
    if hessian == "gauss_newton":
        lam = per_ex_hess(out.detach(), y)                # (N, C, C)
        Hb = [torch.einsum("cnm,ncd,dnm->m", j, lam, j) / n for j in J]
    else:
        Hb = [gate_hessian_diag_exact(model, x.detach(), y, loss_fn, pl.name) for pl in layers]
    return G, Hb


def gate_taylor_statistics(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
                           kinds: tuple[str, ...] = ("conv", "linear"), second_order: bool = True,
                           hessian: str = "gauss_newton", momentum: float | None = None,
                           device: torch.device | None = None) -> GateTaylorStats:
    r"""One pass over ``batches`` computing the gate gradient, the Hessian diagonal and the
    2019 criteria :math:`\mathcal{I}^{(1)}`, :math:`\mathcal{I}^{(2)}` (Molchanov et al. 2019, Eq. 3-4
    on gates) and the empirical Fisher diagonal. The model is evaluated in eval mode; gates
    need not be inserted (a unit's output :math:`z a` is recorded instead).

    Cost per minibatch: one forward and one backward (first order), plus one backward per class
    for the Gauss-Newton Hessian diagonal.

    Args:
        model: the network.
        batches: iterable of ``(x, y)``.
        loss_fn: a cost that averages over the batch (like ``F.cross_entropy``).
        kinds: which producer kinds to score.
        second_order: also compute the Hessian diagonal and :math:`\mathcal{I}^{(2)}`.
        hessian: ``"gauss_newton"`` (exact for piecewise-linear nets, see the module docstring)
            or ``"exact"`` (``torch.func``, ``jacrev`` of ``jacrev``, per layer and minibatch; slow).
        momentum: ``None`` averages minibatch scores; a value in [0, 1) keeps an exponential
            moving average :math:`s \leftarrow m s + (1-m) s_b` instead (0.9 in the 2019 configs).
        device: where to compute (default: the model's device).

    Raises:
        ValueError: for empty ``batches``, a bad ``hessian`` or ``momentum``.

    Used in lessons 02 and 03.
    """
    if hessian not in ("gauss_newton", "exact"):
        raise ValueError(f"hessian must be 'gauss_newton' or 'exact', got {hessian!r}")
    fo_avg, so_avg = ScoreAverage(momentum), ScoreAverage(momentum)  # checks momentum
    layers = prunable_layers(model, kinds)
    names = [pl.name for pl in layers]
    device = device or next(model.parameters()).device
    zeros = {pl.name: torch.zeros(pl.num_units, dtype=torch.float64) for pl in layers}
    g_sum, h_sum, f_sum = dict(zeros), dict(zeros), dict(zeros)
    n_total, n_batches = 0, 0
    per_ex_grad = vmap(grad(_per_example_loss(loss_fn)))
    per_ex_hess = vmap(jacrev(jacrev(_per_example_loss(loss_fn))))
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            n = len(y)
            G, Hb = _gate_terms(model, layers, x, y, loss_fn, second_order, hessian, per_ex_grad, per_ex_hess)
            fo_b, so_b = {}, {}
            for k, Gk, Hk in zip(names, G, Hb):
                Gk = Gk.detach().double().cpu()
                gb = Gk.mean(0)
                g_sum[k] = g_sum[k] + gb * n
                f_sum[k] = f_sum[k] + Gk.pow(2).sum(0)
                fo_b[k] = gb.pow(2)
                if Hk is not None:
                    Hk = Hk.detach().double().cpu()
                    h_sum[k] = h_sum[k] + Hk * n
                    so_b[k] = (gb - 0.5 * Hk).pow(2)
            fo_avg.add(fo_b)
            if so_b:
                so_avg.add(so_b)
            n_total += n
            n_batches += 1
    finally:
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("batches is empty: pass an iterable of (x, y) with at least one batch")

    def fin(d: dict[str, torch.Tensor], by: float) -> Scores:
        return {k: (v / by).float() for k, v in d.items()}

    return GateTaylorStats(
        grad=fin(g_sum, n_total), hess=fin(h_sum, n_total) if second_order else None,
        fo=fo_avg.result(), so=so_avg.result() if second_order else None,
        fisher=fin(f_sum, n_total), num_examples=n_total, num_batches=n_batches)


def gate_hessian_diag_exact(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            loss_fn: Callable = F.cross_entropy, layer: str | None = None,
                            full: bool = False) -> torch.Tensor:
    r"""The exact Hessian of the loss on ``(x, y)`` with respect to the gates of one layer, by
    ``torch.func`` (``jacrev`` of ``jacrev``) over ``functional_call`` (the reference of the fast
    diagonal).

    Returns :math:`z_m^2\,\partial^2 L/\partial z_m^2` (the diagonal), or the full
    :math:`z z^\top \odot H` block with ``full=True``.

    Args:
        model: the network (gates are inserted temporarily where missing).
        x, y: one batch.
        loss_fn: the mean cost.
        layer: the producer's name (default: the first prunable layer).

    Used in lessons 02 and 03.
    """
    layers = prunable_layers(model)
    if layer is None:
        layer = layers[0].name
    match = [pl for pl in layers if pl.name == layer]
    if not match:
        raise ValueError(f"no prunable layer {layer!r}; choose one of {[pl.name for pl in layers]}")
    pl = match[0]
    host_name = pl.norm_name if pl.norm_name is not None else pl.name
    key = f"{host_name}.pl_gate.weight"
    was_training = model.training
    model.eval()
    try:
        with temporary_gates(model):
            params = {k: v.detach() for k, v in model.named_parameters()}
            buffers = dict(model.named_buffers())
            z0 = params[key]

            def loss_of(z: torch.Tensor) -> torch.Tensor:
                return loss_fn(functional_call(model, ({**params, key: z}, buffers), (x,)), y)

            H = jacrev(jacrev(loss_of))(z0)
            H = H * torch.outer(z0, z0)
    finally:
        model.train(was_training)
    return H if full else torch.diagonal(H).clone()


def _maybe_normalize(scores: Scores, normalize: bool) -> Scores:
    return normalize_per_layer(scores) if normalize else scores


@register("taylor_fo_gate")
def taylor_fo_gate(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
                   kinds: tuple[str, ...] = ("conv", "linear"), momentum: float | None = None,
                   normalize: bool = False, **_: Any) -> Scores:
    r"""Taylor FO on the gate, Molchanov et al. 2019, Eq. (3) with a gate per unit:
    :math:`\mathcal{I}^{(1)}_m = (z_m\,\partial L_b/\partial z_m)^2` per minibatch :math:`b`, averaged over
    minibatches (or with ``momentum``). ``normalize`` applies the 2017 per-layer L2 norm.

    Used in lessons 02 and 03.
    """
    st = gate_taylor_statistics(model, batches, loss_fn, kinds, second_order=False, momentum=momentum)
    return _maybe_normalize(st.fo, normalize)


@register("taylor_so_gate")
def taylor_so_gate(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
                   kinds: tuple[str, ...] = ("conv", "linear"), momentum: float | None = None,
                   hessian: str = "gauss_newton", normalize: bool = False, **_: Any) -> Scores:
    r"""Taylor SO on the gate, Molchanov et al. 2019, Eq. (4) with the Hessian's diagonal:
    :math:`\mathcal{I}^{(2)}_m = (z_m g_m - \frac12 z_m^2 H_{mm})^2` per minibatch, averaged.

    Used in lesson 03.
    """
    st = gate_taylor_statistics(model, batches, loss_fn, kinds, second_order=True, hessian=hessian,
                                momentum=momentum)
    return _maybe_normalize(st.so, normalize)  # type: ignore[arg-type]


def _filter_params(pl: PrunableLayer) -> list[torch.Tensor]:
    m = pl.module
    return [m.weight] + ([m.bias] if getattr(m, "bias", None) is not None else [])


def _param_grads(model: nn.Module, layers: Sequence[PrunableLayer], x: torch.Tensor, y: torch.Tensor,
                 loss_fn: Callable, params_of: Callable[[PrunableLayer], list[torch.Tensor]]
                 ) -> list[list[torch.Tensor]]:
    """Gradients of the mean loss on ``(x, y)`` w.r.t. each layer's chosen parameters
    (frozen ones are temporarily unfrozen)."""
    plist = [params_of(pl) for pl in layers]
    flat = [p for ps in plist for p in ps]
    frozen = [p for p in flat if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        gs = torch.autograd.grad(loss_fn(model(x), y), flat)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    out, i = [], 0
    for ps in plist:
        out.append(list(gs[i:i + len(ps)]))
        i += len(ps)
    return out


def _per_unit(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1) if t.dim() > 1 else t


def _filter_scores(model: nn.Module, batches: Iterable, loss_fn: Callable, kinds: tuple[str, ...],
                   device: torch.device | None,
                   unit_score: Callable[[PrunableLayer, list[torch.Tensor], int], torch.Tensor],
                   momentum: float | None = None) -> Scores:
    """Average (or, with ``momentum``, smooth) ``unit_score(layer, filter_grads, batch_size)`` over
    the minibatches; the gradients are those of each unit's filter weights and bias."""
    layers = prunable_layers(model, kinds)
    device = device or next(model.parameters()).device
    avg = ScoreAverage(momentum)
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            grads = _param_grads(model, layers, x, y, loss_fn, _filter_params)
            avg.add({pl.name: unit_score(pl, gs, len(y)).double().cpu() for pl, gs in zip(layers, grads)})
    finally:
        model.train(was_training)
    if avg.count == 0:
        raise ValueError("batches is empty: pass an iterable of (x, y) with at least one batch")
    return avg.result()


def weight_fo_unit_scores(pl: PrunableLayer, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    r""":math:`\sum_{s \in S_m} (w_s g_s)^2` for every unit :math:`m` of layer ``pl``, over its filter's
    weights and bias (Molchanov et al. 2019, Sec. 3.1), from the gradients ``grads`` of
    ``[weight, bias]`` (a ``None`` gradient is left out). Used by :func:`taylor_fo_weight` and by
    the iterative schedule (lesson 02), which reads ``.grad`` after a training step."""
    return sum(_per_unit((p.detach() * g).pow(2)) for p, g in zip(_filter_params(pl), grads) if g is not None)


@register("taylor_fo_weight")
def taylor_fo_weight(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
                     kinds: tuple[str, ...] = ("conv", "linear"), momentum: float | None = None,
                     normalize: bool = False, device: torch.device | None = None, **_: Any) -> Scores:
    r"""Taylor FO on the weights, the sum of individual contributions (Molchanov et al. 2019,
    Sec. 3.1; "Taylor_weight" in the authors' code): :math:`\sum_{s \in S_m} (w_s g_s)^2` over the
    unit's filter (weights and bias), per minibatch, averaged over minibatches.

    Used in lessons 02 and 03.
    """
    scores = _filter_scores(
        model, batches, loss_fn, kinds, device, momentum=momentum,
        unit_score=lambda pl, gs, n: weight_fo_unit_scores(pl, gs))
    return _maybe_normalize(scores, normalize)


def filter_group_contribution(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                              loss_fn: Callable = F.cross_entropy,
                              kinds: tuple[str, ...] = ("conv", "linear")) -> Scores:
    r"""The group contribution :math:`\sum_{s \in S_m} w_s\,\partial L/\partial w_s` of every unit's
    parameters on one batch (Molchanov et al. 2019, Sec. 3.1, before squaring).

    The group is the BatchNorm's :math:`(\gamma_m, \beta_m)` when the layer has one (the gate sits
    after it), otherwise the unit's filter weights and bias. It equals the gate gradient
    :math:`z_m\,\partial L/\partial z_m` exactly (the output is linear in the group's scale).

    Used in lesson 02.
    """
    layers = prunable_layers(model, kinds)

    def group(pl: PrunableLayer) -> list[torch.Tensor]:
        if pl.norm is not None:
            return [pl.norm.weight, pl.norm.bias]
        return _filter_params(pl)

    was_training = model.training
    model.eval()
    try:
        grads = _param_grads(model, layers, x, y, loss_fn, group)
    finally:
        model.train(was_training)
    return {pl.name: sum(_per_unit(p.detach() * g) for p, g in zip(group(pl), gs)).cpu()
            for pl, gs in zip(layers, grads)}


def obd_squared_gradients(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy,
                          kinds: tuple[str, ...] = ("conv", "linear"),
                          device: torch.device | None = None) -> Scores:
    r"""OBD (LeCun et al. 1990, the saliency :math:`\frac12 h_{ss} w_s^2`) summed over each unit's filter,
    with the Hessian diagonal replaced by squared gradients:
    :math:`h_{ss} \approx B\,\overline{g_{s,b}^2}` (mean over minibatches :math:`b` of size :math:`B`),
    the empirical-Fisher estimate Molchanov et al. 2019 (Sec. 3) relate to the Taylor FO
    weight criterion. It equals :func:`taylor_fo_weight` times :math:`B/2`: the same ranking.

    Used in lesson 02.
    """
    return _filter_scores(
        model, batches, loss_fn, kinds, device,
        unit_score=lambda pl, gs, n: sum(_per_unit(0.5 * n * g.pow(2) * p.detach().pow(2))
                                         for p, g in zip(_filter_params(pl), gs)))
