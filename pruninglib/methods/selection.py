r"""Which channels to keep: criteria scores, ThiNet, and LASSO channel selection.

Every method here answers "which channels of layer :math:`l` stay, given how many may
stay" (how many is :mod:`pruninglib.methods.latency_search`'s question). Results are *kept index*
maps ``{layer: LongTensor of original channel indices}``, turned into a pruned model by
:func:`apply_kept`.

* **Scores** (L1 norm, Taylor, ...): keep the ``n`` highest-scoring channels of each layer
  (:func:`kept_from_scores`).
* **ThiNet**, Luo et al. 2017 (ICCV), Sec. 3.2. The consumer's output at a sampled position
  and output channel is a sum of per-channel contributions, Eq. (2)-(3),

  .. math:: \hat y = \sum_{c=1}^{C} \hat x_c, \qquad
            \hat x_c = \sum_{k_1, k_2} \hat W_{c, k_1, k_2} \, x_{c, k_1, k_2},

  and the channels to *remove* are the set :math:`T` that changes the output least on the
  :math:`m` samples, Eq. (6):

  .. math:: \arg\min_T \sum_{i=1}^{m} \Big( \sum_{j \in T} \hat x_{i,j} \Big)^2
            \quad \text{s.t.}\ |T| = C (1 - r),

  solved greedily (Algorithm 1): add to :math:`T`, one at a time, the channel that keeps
  this sum smallest (:func:`thinet_select`).
* **LASSO channel selection**, He et al. 2017 (ICCV), Sec. 3.1, Eq. (3): with
  :math:`Z_c = X_c W_c^\top` the contribution of channel :math:`c` to all consumer outputs,

  .. math:: \hat\beta = \arg\min_\beta \frac{1}{2N} \Big\| Y - \sum_{c=1}^{C} \beta_c Z_c
            \Big\|_F^2 + \lambda \|\beta\|_1 \quad \text{s.t.}\ \|\beta\|_0 \le c' ;

  channels with :math:`\beta_c = 0` go. :math:`\lambda` is raised until at most :math:`c'`
  coefficients are non-zero (:func:`lasso_select`); the weights are then refitted by least
  squares, Eq. (4) (:func:`pruninglib.methods.reconstruction.reconstruct`).

:func:`select_sequential` runs ThiNet or LASSO layer by layer from the input, each layer
seeing the inputs of the network pruned so far.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from pruninglib.core.graph import prunable_layers
from pruninglib.methods.reconstruction import LayerSample, refit_consumer, sample_layer
from pruninglib.core.surgery import prune_channels

__all__ = ["Kept", "kept_from_scores", "kept_to_plan", "apply_kept", "thinet_contributions", "thinet_order", "thinet_select",
           "lasso_gram", "lasso_solve", "lasso_channel_mask", "lasso_select", "select_sequential",
           "SequentialSelection"]

Kept = dict[str, torch.Tensor]
"""``{layer name: sorted LongTensor of the original indices of the channels kept}``."""


def _check_n_keep(n_keep: int, n: int, name: str = "layer") -> int:
    n_keep = int(n_keep)
    if not 1 <= n_keep <= n:
        raise ValueError(f"{name}: n_keep must be between 1 and its {n} channels, got {n_keep} "
                         "(a layer cannot lose every channel)")
    return n_keep


def kept_from_scores(scores: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> Kept:
    """Keep the ``counts[layer]`` highest-scoring channels of every layer named in ``counts``.

    Ties are broken by the lower index (stable sort), so the result is deterministic.

    Used in lesson 06.
    """
    out: Kept = {}
    for name, n in counts.items():
        if name not in scores:
            raise KeyError(f"no scores for layer {name!r}; scored layers are {list(scores)}")
        s = scores[name].detach().cpu().float()
        n = _check_n_keep(n, len(s), name)
        order = torch.sort(-s, stable=True).indices
        out[name] = order[:n].sort().values
    return out


def kept_to_plan(model: nn.Module, kept: Mapping[str, Sequence[int] | torch.Tensor]) -> dict[str, list[int]]:
    """Turn kept indices into the ``{layer: indices to remove}`` plan of :func:`~pruninglib.core.surgery.prune_channels`.

    Used in lesson 06.
    """
    units = {pl.name: pl.num_units for pl in prunable_layers(model)}
    plan = {}
    for name, keep in kept.items():
        if name not in units:
            raise ValueError(f"{name!r} is not a prunable layer; prunable layers are {list(units)}")
        keep_set = set(int(i) for i in torch.as_tensor(keep).tolist())
        if not keep_set:
            raise ValueError(f"layer {name!r} keeps no channel; keep at least one")
        plan[name] = [i for i in range(units[name]) if i not in keep_set]
    return plan


def apply_kept(model: nn.Module, kept: Mapping[str, Sequence[int] | torch.Tensor], inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself) with only the ``kept`` channels (exact surgery). Used in lesson 06."""
    out = model if inplace else copy.deepcopy(model)
    return prune_channels(out, kept_to_plan(out, kept))


# ----------------------------------------------------------------------------- ThiNet

def thinet_contributions(sample: LayerSample, seed: int = 0) -> torch.Tensor:
    r"""ThiNet's :math:`\hat x_{i,c}`, Luo et al. 2017, Eq. (3): for every sampled position :math:`i`
    one random output channel :math:`o_i` of the consumer, and the contribution of each input
    channel to it, :math:`\hat x_{i,c} = \sum_k W_{o_i,c,k} \, x_{i,c,k}`.

    Returns:
        ``(S, C)`` contributions (their row sums are the sampled outputs, bias excluded).

    Used in lesson 06.
    """
    g = torch.Generator().manual_seed(seed)
    o = torch.randint(sample.weight.shape[0], (sample.num_samples,), generator=g).to(sample.patches.device)
    return (sample.patches * sample.weight[o]).sum(-1)


def thinet_order(sample: LayerSample, seed: int = 0) -> torch.Tensor:
    r"""The order in which ThiNet's greedy step (Luo et al. 2017, Eq. 6, Algorithm 1) removes channels.

    Starting from an empty removal set :math:`T`, the next channel is the :math:`c` that
    minimises :math:`\sum_i (\sum_{j \in T \cup \{c\}} \hat x_{i,j})^2`. The greedy choice does not
    depend on how many channels will go, so the first :math:`k` entries are ThiNet's removal
    set for every :math:`k`.

    Returns:
        All channel indices, first removed first.

    Used in lesson 06.
    """
    xhat = thinet_contributions(sample, seed).double()
    c = xhat.shape[1]
    total = torch.zeros(xhat.shape[0], dtype=xhat.dtype, device=xhat.device)
    removed = torch.zeros(c, dtype=torch.bool, device=xhat.device)
    order = []
    for _ in range(c):
        value = (total[:, None] + xhat).pow(2).sum(0)
        value[removed] = float("inf")
        j = int(torch.argmin(value))
        removed[j] = True
        order.append(j)
        total += xhat[:, j]
    return torch.tensor(order, dtype=torch.long)


def thinet_select(sample: LayerSample, n_keep: int, seed: int = 0) -> torch.Tensor:
    r"""ThiNet's greedy channel selection, Luo et al. 2017, Eq. (6) and Algorithm 1.

    Removes the first :math:`C - n_\text{keep}` channels of :func:`thinet_order`.

    Args:
        sample: the sampled consumer inputs (:func:`~pruninglib.methods.reconstruction.sample_layer`).
        n_keep: channels to keep (at least 1).
        seed: seed of the random output channel per sample.

    Returns:
        Sorted indices of the kept channels (in the sampled layer's current numbering).

    Used in lesson 06.
    """
    c = sample.patches.shape[1]
    n_keep = _check_n_keep(n_keep, c, sample.layer)
    gone = set(thinet_order(sample, seed)[:c - n_keep].tolist())
    return torch.tensor([j for j in range(c) if j not in gone], dtype=torch.long)


# ----------------------------------------------------------------------------- LASSO (He et al. 2017)

def lasso_gram(sample: LayerSample, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    r"""The normal equations of He et al. 2017's Eq. (3) without forming :math:`Z`.

    With :math:`Z_c \in \mathbb{R}^{N \times n}` (sampled positions x consumer outputs) the
    contribution of channel :math:`c`, the LASSO objective is
    :math:`\tfrac12 \beta^\top G \beta - q^\top \beta + \lambda\|\beta\|_1` + const, with
    :math:`G_{cd} = \langle Z_c, Z_d\rangle / (Nn)` and :math:`q_c = \langle Z_c, Y - b\rangle / (Nn)`.
    They are accumulated over chunks of samples (memory ``chunk * n * C``).

    Returns:
        ``(G, q)`` as float64 NumPy arrays, ``(C, C)`` and ``(C,)``.

    Used in lesson 06.
    """
    p, w = sample.patches.float(), sample.weight.float()
    y = sample.target.float()
    if sample.bias is not None:
        y = y - sample.bias.float()
    c = p.shape[1]
    gram = torch.zeros(c, c, dtype=torch.float64, device=p.device)
    q = torch.zeros(c, dtype=torch.float64, device=p.device)
    wt = w.permute(1, 2, 0)  # (C, K, O)
    for s in range(0, p.shape[0], chunk):
        z = torch.bmm(p[s:s + chunk].transpose(0, 1), wt)  # Z_c at each (sample, output): (C, s, O)
        z = z.reshape(c, -1)
        gram += (z @ z.T).double()
        q += (z @ y[s:s + chunk].reshape(-1)).double()
    n = p.shape[0] * w.shape[0]
    return (gram / n).cpu().numpy(), (q / n).cpu().numpy()


def lasso_solve(gram: np.ndarray, q: np.ndarray, penalty: float, beta0: np.ndarray | None = None,
                max_iter: int = 2000, tol: float = 1e-7, lipschitz: float | None = None) -> np.ndarray:
    r"""Solve :math:`\min_\beta \tfrac12\beta^\top G\beta - q^\top\beta + \lambda\|\beta\|_1` by FISTA
    (Beck and Teboulle 2009): a gradient step of size :math:`1/L` (:math:`L` the largest
    eigenvalue of :math:`G`) followed by soft-thresholding
    :math:`S_{\lambda/L}(v) = \mathrm{sign}(v)\max(|v| - \lambda/L, 0)`, with Nesterov momentum.

    Args:
        gram, q: from :func:`lasso_gram`.
        penalty: :math:`\lambda \ge 0`.
        beta0: warm start.
        max_iter, tol: stop after ``max_iter`` steps, or when no coefficient moved more than
            ``tol`` times the largest one over the last 10 steps.
        lipschitz: :math:`L` if already known.

    Used in lesson 06.
    """
    if penalty < 0:
        raise ValueError(f"the LASSO penalty must be >= 0, got {penalty}")
    c = len(q)
    lip = lipschitz if lipschitz is not None else (float(np.linalg.eigvalsh(gram)[-1]) if c else 0.0)
    if lip <= 0:
        return np.zeros(c)
    beta = np.zeros(c) if beta0 is None else np.array(beta0, dtype=np.float64)
    a = np.eye(c) - gram / lip  # v = y - (G y - q)/L = A y + q/L
    b = q / lip
    thr = penalty / lip
    y, t, last = beta.copy(), 1.0, beta.copy()
    for it in range(1, max_iter + 1):
        v = a @ y + b
        new = np.sign(v) * np.maximum(np.abs(v) - thr, 0.0)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = new + ((t - 1) / t_new) * (new - beta)
        beta, t = new, t_new
        if it % 10 == 0:
            scale = max(1e-12, float(np.abs(beta).max()))
            if float(np.abs(beta - last).max()) <= tol * scale:
                break
            last = beta.copy()
    return beta


def lasso_channel_mask(gram: np.ndarray, q: np.ndarray, penalty: float, min_keep: int = 1,
                       beta0: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    r"""Channels with a non-zero LASSO coefficient at ``penalty``, never fewer than ``min_keep``.

    A zero penalty is plain least squares, which removes nothing: every channel is kept.
    When the penalty zeroes too many coefficients (for :math:`\lambda \ge \max_c |q_c|`
    all are zero), the ``min_keep`` channels first to enter the LASSO path are kept: the
    non-zero ones by :math:`|\beta_c|\sqrt{G_{cc}}`, then the rest by :math:`|q_c|`
    (the order in which coefficients leave zero as :math:`\lambda` decreases).

    Returns:
        ``(mask, beta)``: a boolean tensor over channels and the coefficients.

    No lesson calls it directly (its tests do).
    """
    c = len(q)
    min_keep = _check_n_keep(min_keep, c, "lasso_channel_mask")
    if penalty <= 0:
        beta = np.linalg.lstsq(gram, q, rcond=None)[0] if c else np.zeros(0)
        return torch.ones(c, dtype=torch.bool), beta
    beta = lasso_solve(gram, q, penalty, beta0)
    mask = beta != 0
    if mask.sum() < min_keep:
        strength = np.abs(beta) * np.sqrt(np.clip(np.diag(gram), 0, None))
        order = np.lexsort((-np.abs(q), -strength))  # by strength, then by |q|
        mask = np.zeros(c, dtype=bool)
        mask[order[:min_keep]] = True
    return torch.as_tensor(mask), beta


def lasso_select(sample: LayerSample, n_keep: int, steps: int = 30) -> tuple[torch.Tensor, np.ndarray, float]:
    r"""He et al. 2017's channel selection at a fixed count: raise :math:`\lambda` until at most
    ``n_keep`` coefficients of Eq. (3) are non-zero.

    The penalty is found by bisection on :math:`\log\lambda` in
    :math:`(10^{-6}\lambda_{\max}, \lambda_{\max}]`, :math:`\lambda_{\max} = \max_c |q_c|` (above
    it every coefficient is zero). At the smallest penalty found with at least ``n_keep``
    non-zero coefficients, the ``n_keep`` channels with the largest
    :math:`|\beta_c|\sqrt{G_{cc}}` (contribution to the output) are kept.

    Returns:
        ``(kept indices, beta, penalty)``.

    Used in lesson 06.
    """
    gram, q = lasso_gram(sample)
    c = len(q)
    n_keep = _check_n_keep(n_keep, c, sample.layer)
    if n_keep == c:
        return torch.arange(c), np.ones(c), 0.0
    lam_max = float(np.max(np.abs(q)))
    if lam_max == 0:  # the consumer output does not depend on this layer at all
        return torch.arange(n_keep), np.zeros(c), 0.0
    lip = float(np.linalg.eigvalsh(gram)[-1])
    lo, hi = np.log(lam_max * 1e-6), np.log(lam_max)
    beta_lo = lasso_solve(gram, q, float(np.exp(lo)), lipschitz=lip)
    if np.count_nonzero(beta_lo) < n_keep:  # even a tiny penalty keeps fewer: use least squares
        beta_lo = np.linalg.lstsq(gram, q, rcond=None)[0]
        lo = -np.inf
    beta = beta_lo
    for _ in range(steps):
        mid = (lo + hi) / 2 if np.isfinite(lo) else hi - 1.0
        b = lasso_solve(gram, q, float(np.exp(mid)), beta, lipschitz=lip)
        nnz = np.count_nonzero(b)
        if nnz >= n_keep:
            lo, beta_lo = mid, b
            if nnz == n_keep:
                break
        else:
            hi = mid
        beta = b
    strength = np.abs(beta_lo) * np.sqrt(np.clip(np.diag(gram), 0, None))
    order = np.lexsort((-np.abs(q), -strength))
    kept = torch.as_tensor(np.sort(order[:n_keep]), dtype=torch.long)
    return kept, beta_lo, float(np.exp(lo)) if np.isfinite(lo) else 0.0


# ----------------------------------------------------------------------------- layer by layer

@dataclass
class SequentialSelection:
    """Result of :func:`select_sequential`.

    Attributes:
        kept: ``{layer: original indices kept}``.
        model: the pruned network the selection ended with (refitted if ``refit=True``).
        info: per layer, method details (``penalty`` for LASSO, ``error`` = relative change of
            the consumer output on the sample caused by the removal).

    Used in lesson 06.
    """

    kept: Kept
    model: nn.Module
    info: dict[str, dict]


def select_sequential(model: nn.Module, counts: Mapping[str, int], method: str | Callable[[LayerSample, int], torch.Tensor],
                      batches: Sequence, positions: int | None = 10, seed: int = 0,
                      refit: bool = False, target: str = "original") -> SequentialSelection:
    """Select channels layer by layer from the input with ThiNet or LASSO (or any sample-based rule).

    For every layer named in ``counts``, in forward order: sample its consumer's inputs in
    the network pruned so far, choose the channels to keep, and remove the others (and,
    with ``refit=True``, refit the consumer by least squares before moving on, as He et al.
    2017 do; ThiNet fine-tunes instead). ``model`` itself is not changed.

    Args:
        model: the trained network.
        counts: ``{layer: channels to keep}``; layers not named are left alone.
        method: ``"thinet"``, ``"lasso"`` or ``fn(sample, n_keep) -> kept indices``.
        batches: calibration batches (a list; it is iterated once per layer).
        positions: sampled positions per image.
        seed: seed of the sampling.
        refit: refit each consumer right after its producer is pruned.
        target: ``"original"`` (the unpruned network's consumer output, He et al. 2017) or
            ``"current"`` (the output of the network pruned so far, ThiNet's Eq. 2).

    Returns:
        A :class:`SequentialSelection`.

    Used in lesson 06.
    """
    if isinstance(method, str):
        rules = {"thinet": lambda s, n: thinet_select(s, n, seed),
                 "lasso": lambda s, n: lasso_select(s, n)[0]}
        if method not in rules:
            raise ValueError(f"method must be 'thinet', 'lasso' or a callable, got {method!r}")
        name_of_method, rule = method, rules[method]
    else:
        name_of_method, rule = getattr(method, "__name__", "custom"), method
    if target not in ("original", "current"):
        raise ValueError(f"target must be 'original' or 'current', got {target!r}")
    original = model
    work = copy.deepcopy(model)
    layers = [pl.name for pl in prunable_layers(work)]
    unknown = [n for n in counts if n not in layers]
    if unknown:
        raise ValueError(f"not prunable layers: {unknown}; prunable layers are {layers}")
    kept: Kept = {}
    info: dict[str, dict] = {}
    for i, name in enumerate(layers):
        if name not in counts:
            continue
        n_units = next(pl for pl in prunable_layers(work) if pl.name == name).num_units
        n_keep = _check_n_keep(counts[name], n_units, name)
        if n_keep == n_units:
            kept[name] = torch.arange(n_units)
            continue
        ref = original if target == "original" else None
        sample = sample_layer(work, name, batches, positions, seed + i, reference=ref)
        if method == "lasso":
            keep, beta, penalty = lasso_select(sample, n_keep)
            info[name] = {"penalty": penalty, "nonzero": int(np.count_nonzero(beta))}
        else:
            keep = torch.as_tensor(rule(sample, n_keep), dtype=torch.long).sort().values
            info[name] = {}
        if len(keep) != n_keep:
            raise RuntimeError(f"{name_of_method} returned {len(keep)} channels for {name!r}, expected {n_keep}")
        base = sample.output()
        info[name]["error"] = float((sample.output(keep=keep) - base).norm() / base.norm().clamp_min(1e-12))
        kept[name] = keep  # current numbering == original numbering: this layer is pruned only now
        prune_channels(work, {name: [j for j in range(n_units) if j not in set(keep.tolist())]})
        if refit:
            s2 = sample_layer(work, name, batches, positions, seed + i, reference=original)
            refit_consumer(work, name, s2)
    return SequentialSelection(kept, work, info)
