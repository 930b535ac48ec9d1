r"""Error reconstruction: refit the next layer by linear least squares after channels are removed.

When output channels of a producer are removed, its *consumer* (the next conv, or the
Linear after a flatten) loses input channels and its output changes. The consumer is linear
in its weights, so the weights that best restore its original output on sampled data are
the solution of an ordinary least-squares problem, in closed form (He et al. 2017, ICCV,
"Channel Pruning for Accelerating Very Deep Neural Networks", Sec. 3.1, Eq. (4); Luo et al.
2017, ThiNet, Sec. 3.2, Eq. (7), restricted to one scale per channel):

.. math::
    \hat W' = \arg\min_{W'} \big\| Y - X' W'^{\top} \big\|_F^2 ,

where each row of :math:`X'` is one sampled position: the consumer's input patch over the
*kept* channels, taken from the pruned network (so errors of earlier layers are
compensated), and :math:`Y` holds the *original* network's consumer outputs at the same
positions (He et al. 2017, Sec. 3.3: the original model's output is the target, to avoid
accumulated error). A bias (or, for a consumer followed by BatchNorm and without a bias,
a shift of the BatchNorm's running mean) is fitted as an intercept.

Layout used throughout (and by :mod:`pruninglib.methods.selection`): a consumer with ``C`` input
channels and ``O`` outputs has its weight viewed as ``(O, C, K)`` and its sampled input as
``patches`` of shape ``(S, C, K)``: ``K = k*k`` for a ``k x k`` conv (one patch per output
position, :func:`torch.nn.functional.unfold`), ``K = H*W`` for a Linear after a flatten of
``C`` maps of size ``H x W`` (one row per image). The consumer's output at a sample is then
:math:`y_o = \sum_{c,k} W_{o,c,k} \, x_{c,k} + b_o`.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib.core.graph import PrunableLayer, prunable_layers

__all__ = ["LayerSample", "consumer_weight", "consumer_patches", "sample_layer", "least_squares_fit",
           "refit_consumer", "reconstruct_layer", "reconstruct", "ReconstructionReport", "relative_error"]


@dataclass
class LayerSample:
    """Sampled inputs and outputs of one consumer layer.

    Attributes:
        layer: name of the producer whose channels feed the consumer.
        consumer: name of the consumer.
        patches: ``(S, C, K)`` consumer input at ``S`` sampled positions, per input channel.
        weight: ``(O, C, K)`` the consumer's current weight in the same layout.
        bias: ``(O,)`` the consumer's current bias, or ``None``.
        target: ``(S, O)`` the *reference* consumer output at the same positions (the
            original network's when a reference was given, else this network's own).

    Used in lesson 06.
    """

    layer: str
    consumer: str
    patches: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    target: torch.Tensor

    @property
    def num_samples(self) -> int:
        return self.patches.shape[0]

    def output(self, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               keep: torch.Tensor | None = None) -> torch.Tensor:
        """The consumer output ``(S, O)`` computed from the sampled patches.

        Args:
            weight: ``(O, C', K)`` weights to use (default: the current ones).
            bias: ``(O,)`` bias (default: the current one when ``weight`` is None, else none).
            keep: use only these input channels of the patches (for a pruned consumer).
        """
        p = self.patches if keep is None else self.patches[:, keep]
        if weight is None:
            weight = self.weight if keep is None else self.weight[:, keep]
            bias = self.bias
        out = p.flatten(1) @ weight.flatten(1).T
        return out + bias if bias is not None else out


class _Stop(Exception):
    """Raised by a hook to stop a forward pass once the wanted input is captured."""


def _capture_input(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``model(x)`` only up to ``module`` and return ``module``'s input."""
    store: dict[str, torch.Tensor] = {}

    def hook(m: nn.Module, inputs: tuple) -> None:
        store["x"] = inputs[0].detach()
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "x" not in store:
        raise RuntimeError(f"{type(module).__name__} was not called in the forward pass of the model")
    return store["x"]


def consumer_weight(consumer: nn.Module, channels: int) -> torch.Tensor:
    """The consumer's weight as ``(O, C, K)`` with ``C = channels`` input channels.

    Raises:
        TypeError: for a consumer that is neither ``nn.Conv2d`` (groups=1) nor ``nn.Linear``.
        ValueError: when the consumer's inputs are not a multiple of ``channels``.

    Used in lesson 06.
    """
    w = consumer.weight.detach()
    if isinstance(consumer, nn.Conv2d):
        if consumer.groups != 1:
            raise TypeError("least-squares reconstruction needs groups=1 convolutions")
        if w.shape[1] != channels:
            raise ValueError(f"conv has {w.shape[1]} input channels, expected {channels}")
        return w.reshape(w.shape[0], channels, -1)
    if isinstance(consumer, nn.Linear):
        if w.shape[1] % channels:
            raise ValueError(f"Linear has {w.shape[1]} inputs, not a multiple of {channels} channels")
        return w.reshape(w.shape[0], channels, -1)
    raise TypeError(f"consumer must be nn.Conv2d or nn.Linear, got {type(consumer).__name__}")


def consumer_patches(consumer: nn.Module, x: torch.Tensor, channels: int, positions: int | None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Turn a consumer input batch into ``(S, C, K)`` patches, ``positions`` random ones per image.

    A conv input is unfolded into one ``k x k`` patch per output position (exactly the
    numbers the conv multiplies); ``positions`` of them are drawn per image without
    replacement (``None``: all). A Linear input gives one row per image.

    Args:
        consumer: the consumer layer.
        x: its input batch, ``(N, C, H, W)`` or ``(N, C*K)``.
        channels: ``C``, the number of producer channels in ``x``.
        positions: sampled positions per image (conv only).
        generator: random generator for the positions (reproducible sampling).

    Used in lesson 06.
    """
    if isinstance(consumer, nn.Conv2d):
        if consumer.padding_mode != "zeros" or isinstance(consumer.padding, str):
            raise TypeError("only convolutions with numeric zero padding can be unfolded; got "
                            f"padding={consumer.padding!r}, padding_mode={consumer.padding_mode!r}. "
                            "Use padding=<int> and padding_mode='zeros'.")
        n = x.shape[0]
        cols = F.unfold(x, consumer.kernel_size, consumer.dilation, consumer.padding, consumer.stride)
        length = cols.shape[-1]
        cols = cols.view(n, channels, -1, length)
        if positions is None or positions >= length:
            idx = torch.arange(length, device=x.device).expand(n, length)
        else:
            r = torch.rand(n, length, generator=generator).to(x.device)
            idx = r.argsort(dim=1)[:, :positions]
        m = idx.shape[1]
        picked = torch.gather(cols, 3, idx[:, None, None, :].expand(n, channels, cols.shape[2], m))
        return picked.permute(0, 3, 1, 2).reshape(n * m, channels, -1)
    if isinstance(consumer, nn.Linear):
        return x.reshape(x.shape[0], channels, -1)
    raise TypeError(f"consumer must be nn.Conv2d or nn.Linear, got {type(consumer).__name__}")


def _find_layer(model: nn.Module, name: str) -> PrunableLayer:
    for pl in prunable_layers(model):
        if pl.name == name:
            return pl
    raise ValueError(f"{name!r} is not a prunable layer of this model; prunable layers are "
                     f"{[p.name for p in prunable_layers(model)]}")


@torch.no_grad()
def sample_layer(model: nn.Module, layer: str, batches: Iterable, positions: int | None = 10,
                 seed: int = 0, reference: nn.Module | None = None, cache: dict | None = None) -> LayerSample:
    """Sample the consumer of ``layer``: its input patches and the target output.

    Each batch is run only up to the consumer (the rest of the network is skipped).

    Args:
        model: the (possibly pruned) network; its consumer input gives ``patches``.
        layer: name of the producer (a :func:`~pruninglib.core.graph.prunable_layers` name).
        batches: iterable of ``(x, y)`` or of ``x``.
        positions: sampled positions per image for a conv consumer (ThiNet uses 10;
            ``None``: every position).
        seed: seed of the position sampling (the same positions are used in ``reference``).
        reference: the original network (same layer names). Its consumer output at the
            same positions becomes ``target``; default: ``model``'s own output.
        cache: a dict in which the reference's targets are kept between calls (keyed by
            layer, positions, seed); valid only while ``reference`` and ``batches`` stay the
            same (e.g. the many proposals of one NetAdapt search).

    Returns:
        A :class:`LayerSample`.

    Used in lesson 06.
    """
    pl = _find_layer(model, layer)
    ref_pl = _find_layer(reference, layer) if reference is not None else None
    key = (layer, positions, seed)
    cached_targets = cache.get(key) if (cache is not None and reference is not None) else None
    was = model.training
    model.eval()
    if reference is not None:
        ref_was = reference.training
        reference.eval()
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    ps, ts = [], []
    try:
        for i, b in enumerate(batches):
            x = b[0] if isinstance(b, (tuple, list)) else b
            x = x.to(dev)
            gstate = g.get_state()
            p = consumer_patches(pl.consumer, _capture_input(model, pl.consumer, x), pl.num_units,
                                 positions, g)
            if ref_pl is None:
                t = p.flatten(1) @ consumer_weight(pl.consumer, pl.num_units).flatten(1).T
                if pl.consumer.bias is not None:
                    t = t + pl.consumer.bias
            elif cached_targets is not None:
                t = cached_targets[i]
            else:
                g.set_state(gstate)  # the same positions in the reference network
                rdev = next(reference.parameters()).device
                xr = _capture_input(reference, ref_pl.consumer, x.to(rdev))
                pr = consumer_patches(ref_pl.consumer, xr, ref_pl.num_units, positions, g)
                t = pr.flatten(1) @ consumer_weight(ref_pl.consumer, ref_pl.num_units).flatten(1).T
                if ref_pl.consumer.bias is not None:
                    t = t + ref_pl.consumer.bias
                t = t.to(dev)
            ps.append(p)
            ts.append(t)
    finally:
        model.train(was)
        if reference is not None:
            reference.train(ref_was)
    if not ps:
        raise ValueError("batches is empty; pass a few calibration batches of (x, y)")
    if cache is not None and reference is not None and cached_targets is None:
        cache[key] = ts
    bias = pl.consumer.bias.detach() if pl.consumer.bias is not None else None
    return LayerSample(pl.name, pl.consumer_name, torch.cat(ps), consumer_weight(pl.consumer, pl.num_units),
                       bias, torch.cat(ts))


def least_squares_fit(patches: torch.Tensor, target: torch.Tensor, fit_bias: bool = False,
                      ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Closed-form least squares, He et al. 2017, Eq. (4): :math:`\min_{W,b} \|Y - X W^\top - b\|_F^2`.

    With ``ridge=0`` it is solved by ``torch.linalg.lstsq`` in float64 on the CPU with the
    SVD-based ``gelsd`` driver, which also handles rank-deficient data (dead channels,
    duplicated channels) by returning the minimum-norm solution. With a ridge the problem
    is well-posed and the (several times faster) normal equations
    :math:`(X^\top X + \rho I) W^\top = X^\top Y` are solved by a Cholesky factorisation
    (falling back to ``lstsq`` if that fails).

    Args:
        patches: ``(S, C, K)`` inputs (or ``(S, D)``).
        target: ``(S, O)`` outputs to reproduce.
        fit_bias: fit an intercept ``b`` too (never penalised).
        ridge: optional Tikhonov term :math:`\rho \|W\|_F^2` with :math:`\rho` = ``ridge`` times the
            mean diagonal entry of :math:`X^\top X` (scale-free; 0: plain least squares).

    Returns:
        ``(W, b)`` with ``W`` shaped ``(O, C, K)`` (or ``(O, D)``) in the dtype and device
        of ``patches``, and ``b`` of shape ``(O,)`` or ``None``.

    Used in lesson 06.
    """
    if patches.shape[0] != target.shape[0]:
        raise ValueError(f"patches have {patches.shape[0]} rows but target has {target.shape[0]}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    s = patches.shape[0]
    x = patches.reshape(s, -1).detach().to("cpu", torch.float64)
    y = target.detach().to("cpu", torch.float64)
    d = x.shape[1]
    if fit_bias:
        x = torch.cat([x, torch.ones(s, 1, dtype=torch.float64)], 1)
    if s < x.shape[1] and ridge == 0:
        warnings.warn(f"least squares with {s} samples for {x.shape[1]} unknowns per output is "
                      "under-determined; sample more positions or images, or use a ridge", stacklevel=2)
    sol = None
    if ridge > 0:
        gram = x.T @ x
        rho = ridge * float(gram.diagonal()[:d].mean())
        gram.diagonal()[:d] += rho
        factor, info = torch.linalg.cholesky_ex(gram)
        if int(info) == 0:
            sol = torch.cholesky_solve(x.T @ y, factor)
        else:  # fall back to the augmented least-squares problem
            reg = torch.zeros(d, x.shape[1], dtype=torch.float64)
            reg[:, :d] = torch.eye(d, dtype=torch.float64) * rho ** 0.5
            x = torch.cat([x, reg])
            y = torch.cat([y, torch.zeros(d, y.shape[1], dtype=torch.float64)])
    if sol is None:
        sol = torch.linalg.lstsq(x, y, driver="gelsd").solution  # (D[+1], O)
    w = sol[:d].T.contiguous().to(patches.dtype).to(patches.device)
    b = sol[d].to(patches.dtype).to(patches.device) if fit_bias else None
    return w.reshape((w.shape[0],) + tuple(patches.shape[1:])), b


def relative_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    r""":math:`\|\hat Y - Y\|_F / \|Y\|_F` (0 = the consumer's output is reproduced exactly). Used in lesson 06."""
    return float((pred - target).norm() / target.norm().clamp_min(1e-12))


def _norm_after(model: nn.Module, pl: PrunableLayer) -> bool:
    """Whether the consumer of ``pl`` is followed by a BatchNorm with running statistics."""
    as_producer = [p for p in prunable_layers(model) if p.name == pl.consumer_name]
    norm = as_producer[0].norm if as_producer else None
    return norm is not None and norm.running_mean is not None


@torch.no_grad()
def refit_consumer(model: nn.Module, layer: str, sample: LayerSample, keep_out: torch.Tensor | None = None,
                   fit_bias: bool = True, ridge: float = 0.0) -> tuple[float, float]:
    """Replace the weights of ``layer``'s consumer by the least-squares fit to ``sample.target``.

    The intercept goes into the consumer's bias when it has one; otherwise into the running
    mean of the BatchNorm that follows the consumer (BN(y + b) with running mean mu equals
    BN(y) with running mean mu - b, in eval mode); with neither, no intercept is fitted.

    Args:
        model: the pruned network (edited in place).
        layer: the producer whose consumer is refitted.
        sample: from :func:`sample_layer` on ``model`` (with the original as ``reference``).
        keep_out: which columns of ``sample.target`` the consumer still produces (when its
            own output channels were pruned), as indices into the original outputs.
        fit_bias: fit an intercept where it can be stored.
        ridge: see :func:`least_squares_fit`.

    Returns:
        ``(error before, error after)``: relative output errors on the sample.

    Used in lesson 06.
    """
    pl = _find_layer(model, layer)
    cons = pl.consumer
    target = sample.target if keep_out is None else sample.target[:, keep_out.to(sample.target.device)]
    if target.shape[1] != sample.weight.shape[0]:
        raise ValueError(f"target has {target.shape[1]} outputs but {pl.consumer_name} has "
                         f"{sample.weight.shape[0]}; pass keep_out (the consumer's kept output channels)")
    before = relative_error(sample.output(), target)
    norm = None
    if cons.bias is None:
        as_producer = [p for p in prunable_layers(model) if p.name == pl.consumer_name]
        norm = as_producer[0].norm if as_producer else None
        if norm is None or norm.running_mean is None:
            fit_bias = False
    w, b = least_squares_fit(sample.patches, target, fit_bias=fit_bias, ridge=ridge)
    after = relative_error(sample.patches.flatten(1) @ w.flatten(1).T + (b if b is not None else 0), target)
    cons.weight.copy_(w.reshape(cons.weight.shape))
    if b is not None:
        if cons.bias is not None:
            cons.bias.copy_(b)
        else:
            norm.running_mean.sub_(b)
    return before, after


@dataclass
class ReconstructionReport:
    """Per refitted consumer: relative output error on the sample before and after the refit, and
    the size of the least-squares problem (sampled rows, unknowns per output).

    Used in lesson 06.
    """

    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    unknowns: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{k:>14}: {self.before[k]:.3f} -> {self.after[k]:.3f}   ({self.rows.get(k, 0)} rows, "
                 f"{self.unknowns.get(k, 0)} unknowns per output)" for k in self.before]
        return "relative error of each consumer's output (before -> after least squares)\n" + "\n".join(lines)


def reconstruct(pruned: nn.Module, original: nn.Module, kept: Mapping[str, Sequence[int] | torch.Tensor],
                batches: Sequence, positions: int | None = 10, seed: int = 0, fit_bias: bool = True,
                ridge: float = 0.0, inplace: bool = False) -> tuple[nn.Module, ReconstructionReport]:
    """Refit, in forward order, the consumer of every pruned layer (error reconstruction).

    Layer by layer from the input: the inputs come from the pruned network *as refitted so
    far*, the targets from the original, so each refit also absorbs the errors of the layers
    before it (He et al. 2017, Sec. 3.3).

    Args:
        pruned: the pruned network (same layer names as ``original``).
        original: the network before pruning (the targets).
        kept: ``{layer: original indices of the channels it kept}`` for every pruned layer;
            layers not named kept all their channels.
        batches: calibration batches (a list, iterated once per layer).
        positions: sampled positions per image (see :func:`sample_layer`).
        seed: seed of the position sampling.
        fit_bias: fit intercepts (see :func:`refit_consumer`).
        ridge: see :func:`least_squares_fit`.
        inplace: edit ``pruned`` itself instead of a copy.

    Returns:
        ``(model, report)``: the reconstructed network and the per-layer errors.

    Used in lesson 06.
    """
    model = pruned if inplace else copy.deepcopy(pruned)
    orig_units = {pl.name: pl.num_units for pl in prunable_layers(original)}
    now = {pl.name: pl for pl in prunable_layers(model)}
    if set(orig_units) != set(now):
        raise ValueError("pruned and original networks have different prunable layers; "
                         "reconstruct needs the same architecture with fewer channels")
    report = ReconstructionReport()
    for i, (name, pl) in enumerate(now.items()):
        if pl.num_units == orig_units[name]:
            continue  # consumer inputs unchanged
        fit = reconstruct_layer(model, original, name, kept, batches, positions, seed + i, fit_bias, ridge)
        c = pl.consumer_name
        report.before[c], report.after[c], report.rows[c], report.unknowns[c] = fit
    return model, report


def reconstruct_layer(model: nn.Module, original: nn.Module, layer: str,
                      kept: Mapping[str, Sequence[int] | torch.Tensor], batches: Sequence,
                      positions: int | None = 10, seed: int = 0, fit_bias: bool = True,
                      ridge: float = 0.0, cache: dict | None = None) -> tuple[float, float, int, int]:
    """Refit the consumer of one pruned ``layer`` of ``model`` (in place) to the original's output.

    Args:
        model: the pruned network.
        original: the network before pruning.
        layer: the pruned producer whose consumer is refitted.
        kept: ``{layer: original indices kept}``; must name ``layer``, and the consumer too
            when the consumer's own output channels were pruned.
        batches, positions, seed, fit_bias, ridge: see :func:`reconstruct`.
        cache: reuse the original network's targets between calls (see :func:`sample_layer`).

    Returns:
        ``(error before, error after, sampled rows, unknowns per output)``.

    Used in lesson 06.
    """
    if layer not in kept:
        raise ValueError(f"layer {layer!r} was pruned but is missing from `kept`")
    pl = _find_layer(model, layer)
    keep_out = torch.as_tensor(kept[pl.consumer_name], dtype=torch.long) if pl.consumer_name in kept else None
    sample = sample_layer(model, layer, batches, positions, seed, reference=original, cache=cache)
    before, after = refit_consumer(model, layer, sample, keep_out, fit_bias, ridge)
    unknowns = sample.patches[0].numel() + int(fit_bias and (pl.consumer.bias is not None or _norm_after(model, pl)))
    return before, after, sample.num_samples, unknowns
