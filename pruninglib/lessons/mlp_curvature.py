r"""Lesson 01's Fashion-MNIST MLP protocol: the data, the sweeps over sparsities and methods, the
rows of its tables.

LeCun, Denker & Solla 1990 (*Optimal Brain Damage*) and Hassibi & Stork 1993 (*Optimal Brain
Surgeon*) rank the weights of a trained network by the second-order Taylor expansion of its loss:
OBD by :math:`s_q = \frac12 h_{qq}\theta_q^2` (diagonal Hessian), OBS by
:math:`L_q = \frac12\theta_q^2/[H^{-1}]_{qq}` with an update of all other weights. Lesson 01 checks
both on a :math:`49 \to h \to 10` tanh MLP whose exact Hessian fits in memory; this module holds the
bookkeeping around the formulas (which stay in the notebook):

* :func:`downsample_7x7`, :func:`fashion_mnist_7x7`, :func:`split_batches`: Fashion-MNIST at
  7x7 pixels, standardised, as full-batch tensors;
* :func:`rank_agreement`: how well predicted loss changes rank the actual ones;
* :func:`sparsity_sweep`, :func:`sweep_table`, :func:`sweep_rows`, :func:`max_sparsity_within`:
  magnitude, OBD and OBS at a grid of sparsities (or units removed), and their tables;
* :func:`curvature_comparison`: Gauss-Newton, empirical Fisher and K-FAC against the exact Hessian;
* :func:`removal_path`: hidden units removed one by one in a fixed order.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import spearmanr

from pruninglib.criteria.obd import obd_saliency, zero_lowest_weights
from pruninglib.criteria.obs import OBSPath, inverse_hessian, obs_saliency
from pruninglib.curvature.hessian import losses_at, relative_frobenius_error
from pruninglib.data import load_dataset, subset_per_class

__all__ = ["Features7x7", "downsample_7x7", "fashion_mnist_7x7", "split_batches", "rank_agreement",
           "sparsity_sweep", "sweep_table", "sweep_rows", "max_sparsity_within", "curvature_comparison",
           "removal_path", "paper_phases"]

Batches = list[tuple[torch.Tensor, torch.Tensor]]


class Features7x7(NamedTuple):
    """Fashion-MNIST at 7x7 pixels, standardised: the lesson's training and test tensors.

    Attributes:
        x_train, y_train: the training images used (``[N, 49]`` float64) and labels.
        x_test, y_test: the whole test split.
        n_train_available: how many training images the split has (before ``n_per_class``).

    Used in lesson 01.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_train_available: int


def downsample_7x7(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision MNIST-like dataset (``.data`` ``[N, 28, 28]`` uint8, ``.targets``) as
    ``([N, 49] float64 in [0, 1], labels)``: 28x28 -> 7x7 by 4x4 average pooling. Used in lesson 01."""
    x = F.avg_pool2d(ds.data.to(torch.float64).unsqueeze(1) / 255.0, 4).flatten(1)
    return x, ds.targets.clone()


def fashion_mnist_7x7(n_per_class: int | None, seed: int = 0,
                      device: torch.device | str | None = None) -> Features7x7:
    """Fashion-MNIST, 28x28 -> 7x7 (:func:`downsample_7x7`): 49 inputs, so the exact Hessian of a
    small MLP fits in memory. Every pixel is standardised by the mean and standard deviation of the
    whole training split; ``n_per_class`` (None: all) training images per class are drawn with
    :func:`~pruninglib.data.subset_per_class` and ``seed``. Used in lesson 01 and its solutions.
    """
    train_raw = load_dataset("fashion_mnist", "train")
    test_raw = load_dataset("fashion_mnist", "test")
    x_all, y_all = downsample_7x7(train_raw)
    x_test, y_test = downsample_7x7(test_raw)
    mean, std = x_all.mean(0), x_all.std(0)
    x_all, x_test = (x_all - mean) / std, (x_test - mean) / std
    if n_per_class:
        idx = torch.tensor(subset_per_class(train_raw, n_per_class, seed).indices)
        x_train, y_train = x_all[idx], y_all[idx]
    else:
        x_train, y_train = x_all, y_all
    x_train, y_train, x_test, y_test = (t.to(device) for t in (x_train, y_train, x_test, y_test))
    return Features7x7(x_train, y_train, x_test, y_test, len(train_raw))


def split_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Batches:
    """``(x, y)`` in consecutive slices of ``batch_size`` rows (the last may be shorter), in order:
    what the Hessian and the losses sum over. Used in lesson 01.

    Raises:
        ValueError: for a non-positive ``batch_size`` or ``x`` and ``y`` of different lengths.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} and {len(y)}")
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]


def rank_agreement(predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, float]:
    """How well ``predicted`` loss changes match the ``actual`` ones (one entry per weight).

    Returns ``{"spearman": rank correlation over all weights, "spearman_low_half": the same over
    the weights whose prediction is at most the median (the ones pruning removes),
    "median_rel_error": median of |predicted - actual| / |actual|}``. Used in lesson 01.
    """
    low = predicted <= predicted.median()
    return {"spearman": spearmanr(predicted.cpu(), actual.cpu())[0],
            "spearman_low_half": spearmanr(predicted[low].cpu(), actual[low].cpu())[0],
            "median_rel_error": float(((predicted - actual).abs() / actual.abs()).median())}


def sparsity_sweep(theta: torch.Tensor, H: torch.Tensor, obs_path: OBSPath, prunable: torch.Tensor,
                   sparsities: Sequence[float]) -> tuple[dict[str, dict[float, torch.Tensor]],
                                                         dict[str, dict[float, float]]]:
    r"""Magnitude, OBD and OBS pruned to each sparsity, and what the quadratic model predicts.

    Magnitude zeroes the smallest :math:`|\theta_q|`, OBD the lowest
    :math:`s_q = \frac12 h_{qq}\theta_q^2` (both one shot); OBS is ``obs_path`` (iterative,
    :func:`~pruninglib.criteria.obs.obs_prune` at the same ``sparsities``).

    Returns:
        ``(thetas, predicted)``: ``thetas[method][s]`` the pruned weights (methods ``"magnitude"``,
        ``"OBD"``, ``"OBS"``); ``predicted["OBD"][s]`` the sum of OBD's saliencies of its
        deletions, ``predicted["OBS"][s]`` the running sum of OBS's :math:`L_q`, and
        ``predicted["OBD full quadratic"][s]`` :math:`\frac12\delta\theta^\top H\delta\theta` of
        OBD's deletions (cross terms kept). Used in lesson 01.
    """
    s_obd = obd_saliency(theta, H)
    thetas: dict[str, dict[float, torch.Tensor]] = {"magnitude": {}, "OBD": {}, "OBS": obs_path.thetas}
    predicted: dict[str, dict[float, float]] = {"OBD": {}, "OBS": {}, "OBD full quadratic": {}}
    for s in sparsities:
        thetas["magnitude"][s] = zero_lowest_weights(theta, theta.abs(), prunable, s)[0]
        thetas["OBD"][s], keep = zero_lowest_weights(theta, s_obd, prunable, s)
        predicted["OBD"][s] = float(s_obd[~keep].sum())
        d = thetas["OBD"][s] - theta
        predicted["OBD full quadratic"][s] = float(0.5 * d @ H @ d)
        predicted["OBS"][s] = float(sum(obs_path.saliency[:obs_path.counts[s]]))
    return thetas, predicted


def sweep_table(net: nn.Module, batches: Batches, thetas: Mapping[str, Mapping[float, torch.Tensor]],
                sparsities: Sequence[float], weight_decay: float, base_objective: float,
                accuracy: Callable[[torch.Tensor], float]) -> dict[str, dict[float, dict[str, float]]]:
    r"""``table[method][s]``: ``"train_loss"`` (mean cross-entropy over ``batches``), ``"test_acc"``
    (``accuracy(theta)``) and ``"objective_increase"`` (cross-entropy +
    :math:`\frac{\lambda}{2}\lVert\theta\rVert^2`, minus ``base_objective``) of every pruned vector
    of ``thetas``. The losses are computed in one vectorised pass. Used in lesson 01.
    """
    methods = list(thetas)
    stack = torch.stack([thetas[m][s] for m in methods for s in sparsities])
    train_ce = losses_at(net, batches, stack).view(len(methods), len(sparsities))
    obj = train_ce.to(stack.device) + 0.5 * weight_decay * stack.pow(2).sum(1).view(len(methods), len(sparsities))
    return {m: {s: {"train_loss": float(train_ce[i, j]), "test_acc": accuracy(thetas[m][s]),
                    "objective_increase": float(obj[i, j]) - base_objective}
                for j, s in enumerate(sparsities)} for i, m in enumerate(methods)}


def sweep_rows(table: Mapping[str, Mapping[float, Mapping[str, float]]], points: Sequence[float],
               keys: Mapping[str, str] | None = None, label: str = "sparsity",
               point_format: str = "{:.0%}") -> list[dict[str, object]]:
    """Rows for :func:`~pruninglib.show_table` from ``table[method][point][entry]``: one row per
    point (its first column ``label``, the point written with ``point_format``), then for each
    method one column per entry of ``keys`` (``{entry: column suffix}``, default train loss and
    test accuracy), e.g. ``"OBD loss"``, ``"OBD acc"``. Used in lesson 01.
    """
    keys = keys if keys is not None else {"train_loss": "loss", "test_acc": "acc"}
    return [{label: point_format.format(p),
             **{f"{m} {suffix}": table[m][p][k] for m in table for k, suffix in keys.items()}}
            for p in points]


def max_sparsity_within(table: Mapping[float, Mapping[str, float]], base_loss: float, tol: float = 0.10) -> float:
    """The largest sparsity of ``table`` (one method's ``{s: {"train_loss": ...}}``) whose train
    loss stays within ``+tol`` (relative) of the unpruned ``base_loss``; 0 if none. Used in lesson 01."""
    ok = [s for s, row in table.items() if row["train_loss"] <= (1 + tol) * base_loss]
    return max(ok) if ok else 0.0


def curvature_comparison(approx: Mapping[str, torch.Tensor], exact: torch.Tensor, theta: torch.Tensor,
                         weights: torch.Tensor, weight_decay: float, obd_ref: torch.Tensor, obs_ref: torch.Tensor,
                         fisher: str = "Gauss-Newton") -> dict[str, dict[str, float]]:
    r"""Each stand-in ``M`` of ``approx`` against the exact Hessian ``exact`` (all undamped).

    Returns ``{name: {"rel_frobenius_error": ||M - exact||_F / ||exact||_F, "rel_error_vs_fisher":
    the same against ``approx[fisher]`` (Gauss-Newton equals the Fisher for softmax cross-entropy),
    "obd_spearman", "obs_spearman": rank correlations of the OBD and OBS saliencies of the
    ``weights`` (flat indices) from :math:`M + \lambda I` against ``obd_ref`` and ``obs_ref`` (those of
    the exact Hessian, on the CPU)}``. Used in lesson 01.
    """
    out = {}
    for name, M in approx.items():
        Md = M + weight_decay * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
        out[name] = {
            "rel_frobenius_error": relative_frobenius_error(M, exact),
            "rel_error_vs_fisher": relative_frobenius_error(M, approx[fisher]),
            "obd_spearman": float(spearmanr(obd_saliency(theta, Md)[weights].cpu(), obd_ref)[0]),
            "obs_spearman": float(spearmanr(obs_saliency(theta, inverse_hessian(Md))[weights].cpu(), obs_ref)[0]),
        }
    return out


def removal_path(theta: torch.Tensor, groups: Sequence[torch.Tensor], scores: torch.Tensor,
                 n_remove: int | None = None) -> list[torch.Tensor]:
    """Remove groups (hidden units) in ascending order of ``scores``, ranked once, by zeroing
    their flat indices, nothing else moved: ``[theta, after 1 removal, ..., after n_remove]``
    (default ``n_remove``: all groups but one). Used in lesson 01.
    """
    n_remove = len(groups) - 1 if n_remove is None else n_remove
    if not 0 <= n_remove <= len(groups):
        raise ValueError(f"n_remove must be in [0, {len(groups)}], got {n_remove}")
    order = torch.argsort(scores, stable=True).tolist()
    path = [theta.clone()]
    th = theta.clone()
    for j in order[:n_remove]:
        th = th.clone()
        th[groups[j]] = 0.0
        path.append(th)
    return path


def paper_phases(settings: Mapping[str, Any], device: torch.device | str | None = None,
                 n_train: int = 60_000, hessian_slice: int = 256) -> list:
    """The long steps of lesson 01 at paper settings, as :class:`pruninglib.estimate.Phase` units on random
    7x7 images (the MLP at the paper's width), for the time estimate printed before a paper run (issue 18):
    the L-BFGS iterations (loss and gradient over the full batch in slices of ``settings["batch"]`` images,
    one evaluation per iteration), the exact Hessian plus Gauss-Newton/Fisher (about two Hessians' work,
    timed on ``hessian_slice`` images), and the losses of every single-weight deletion (OBD's and OBS's, so
    twice; timed for 128 deletions), the dense linear algebra on the P x P matrices (eigendecompositions,
    inverses) and iterative OBS's rank-1 updates. The counts scale to the ``n_train`` images of the full training split.
    Used in lesson 01.
    """
    from pruninglib.curvature.hessian import exact_hessian, gradient
    from pruninglib.curvature.params import flatten_params
    from pruninglib.estimate import Phase
    from pruninglib.models import MLP

    dev = torch.device(device) if device is not None else torch.device("cpu")
    net = MLP(49, (int(settings["hidden"]),), 10, activation="tanh").double().to(dev)
    b = int(settings["batch"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 49, generator=g, dtype=torch.float64).to(dev)
    y = torch.randint(0, 10, (b,), generator=g).to(dev)
    theta, _ = flatten_params(net)
    theta = theta.to(dev)
    n_weights = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight"))
    thetas = theta.repeat(min(n_weights, 128), 1)  # timed on 128 deleted networks, counted for all of them
    h = min(hessian_slice, b)
    P = theta.numel()
    m = max(P // 4, 1)  # the O(P^3) decompositions are timed at a quarter of the size, scaled by 4^3
    A = torch.randn(m, m, generator=g, dtype=torch.float64).to(dev)
    small = A @ A.T / m + torch.eye(m, dtype=torch.float64, device=dev)
    spd = torch.eye(P, dtype=torch.float64, device=dev)
    u = torch.randn(P, generator=g, dtype=torch.float64).to(dev)

    def downdate() -> None:  # one OBS step: a rank-1 (Sherman-Morrison) update of the P x P inverse
        spd.sub_(torch.outer(u, u), alpha=1e-9)
    return [
        Phase(f"L-BFGS iteration: loss and gradient on {b} images", lambda: gradient(net, [(x, y)]),
              settings["lbfgs_iter"] * n_train / b),
        Phase(f"exact {theta.numel()}x{theta.numel()} Hessian on {h} images", lambda: exact_hessian(net, [(x[:h], y[:h])]),
              2 * n_train / h, warmup=0, repeats=1),
        Phase(f"losses of {len(thetas)} single-weight deletions on {b} images",
              lambda: losses_at(net, [(x, y)], thetas), 2 * (n_train / b) * n_weights / len(thetas), warmup=0, repeats=1),
        Phase(f"{m}x{m} eigendecomposition, x{(P / m) ** 3:.0f} for {P}x{P} (spectrum, inverses, comparisons: ~10)",
              lambda: torch.linalg.eigvalsh(small), 10 * (P / m) ** 3, warmup=0, repeats=1),
        Phase(f"rank-1 update of the {P}x{P} inverse (iterative OBS: 90 % of the weights, then the units)",
              downdate, 0.9 * n_weights + int(settings["hidden"]) ** 2, warmup=1, repeats=3),
    ]
