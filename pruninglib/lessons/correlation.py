r"""How well a criterion ranks units like the oracle does, and the shared model of lessons 02-03.

Molchanov et al. 2017, Table 1: compute every criterion and the oracle
(:math:`|\Delta C|`, :mod:`pruninglib.criteria.oracle`) for all units, then report the rank
correlation (Spearman's :math:`\rho`, Kendall's :math:`\tau`, ``scipy.stats``)

* *per layer*: within each layer, averaged over layers;
* *all layers*: over all units of the network at once (a criterion whose scale differs between
  layers ranks badly here);
* *all layers, L2-normalised*: the same after the per-layer normalisation of the criterion
  (:func:`~pruninglib.criteria.base.normalize_per_layer`), the oracle left as it is.

:func:`reference_lenet3` trains (once, through :func:`pruninglib.cache.cached`) the LeNet3 that
lessons 02 and 03 share; :data:`LENET3_TRAINING` holds its settings per mode, and
:func:`reference_model` trains any other model the same way.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy import stats
from torch.utils.data import TensorDataset

from pruninglib.criteria.base import Scores, normalize_per_layer

__all__ = ["rank_correlation", "oracle_correlations", "correlation_table", "markdown_table",
           "load_tensors", "reference_model", "reference_lenet3", "LENET3_TRAINING", "DATASET_STATS"]

_METHODS = ("spearman", "kendall")


def rank_correlation(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                     method: str = "spearman") -> float:
    """Spearman's rho or Kendall's tau (``scipy.stats``) of two score vectors; NaN when either is
    constant (the rank correlation is undefined then).

    Raises:
        ValueError: for an unknown method or vectors of different lengths.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    a = np.asarray(a.detach().cpu() if torch.is_tensor(a) else a, dtype=np.float64).ravel()
    b = np.asarray(b.detach().cpu() if torch.is_tensor(b) else b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"score vectors differ in length: {a.shape[0]} vs {b.shape[0]}")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    r = stats.spearmanr(a, b).statistic if method == "spearman" else stats.kendalltau(a, b).statistic
    return float(r)


def oracle_correlations(scores: Scores, oracle: Scores, method: str = "spearman") -> dict[str, float]:
    """Rank correlation of a criterion with the oracle: per layer (mean over layers), across all
    layers, and across all layers after per-layer L2 normalisation of the criterion.

    Raises:
        ValueError: when the two do not cover the same layers.
    """
    if set(scores) != set(oracle):
        raise ValueError(f"criterion and oracle cover different layers: {sorted(scores)} vs {sorted(oracle)}")
    keys = list(oracle)
    per = [rank_correlation(scores[k], oracle[k], method) for k in keys]
    per = [p for p in per if not math.isnan(p)]
    cat = lambda d: torch.cat([d[k].detach().float().cpu().ravel() for k in keys])  # noqa: E731
    return {"per_layer": float(np.mean(per)) if per else math.nan,
            "all_layers": rank_correlation(cat(scores), cat(oracle), method),
            "all_layers_l2": rank_correlation(cat(normalize_per_layer(scores)), cat(oracle), method)}


def correlation_table(criteria: Mapping[str, Scores], oracle: Scores,
                      methods: Sequence[str] = _METHODS) -> list[dict[str, Any]]:
    """One row per criterion: ``{"criterion", "<method>_per_layer", "<method>_all_layers",
    "<method>_all_layers_l2", ...}``."""
    rows = []
    for name, sc in criteria.items():
        row: dict[str, Any] = {"criterion": name}
        for m in methods:
            for k, v in oracle_correlations(sc, oracle, m).items():
                row[f"{m}_{k}"] = v
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                   headers: Sequence[str] | None = None, digits: int = 2) -> str:
    """A Markdown table of ``rows`` (floats rounded; NaN and missing shown as "–")."""
    headers = list(headers) if headers is not None else list(columns)
    if len(headers) != len(columns):
        raise ValueError("headers and columns differ in length")

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the shared models

#: Per-channel (mean, std) used to normalise the inputs.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

#: Training settings of the LeNet3 shared by lessons 02 and 03 (same settings -> same cache entry).
LENET3_TRAINING: dict[str, dict[str, Any]] = {
    "quick": {"dataset": "fashion_mnist", "n_per_class": 1000, "epochs": 6, "batch_size": 64,
              "lr": 0.01, "momentum": 0.9, "seed": 0},
    "laptop": {"dataset": "fashion_mnist", "n_per_class": None, "epochs": 8, "batch_size": 64,
               "lr": 0.01, "momentum": 0.9, "seed": 0},
    "paper": {"dataset": "mnist", "n_per_class": None, "epochs": 10, "batch_size": 64,
              "lr": 0.01, "momentum": 0.9, "seed": 0},
}


def load_tensors(name: str = "fashion_mnist", split: str = "train", n_per_class: int | None = None,
                 seed: int = 0, normalize: bool = True) -> TensorDataset:
    """A dataset as an in-memory ``TensorDataset``: pixels in [0, 1], then normalised with
    :data:`DATASET_STATS` (``normalize=True``); ``n_per_class`` examples of every class drawn
    with ``seed``, or all of them.

    Works for any :func:`pruninglib.data.load_dataset` name; MNIST-style datasets are read
    straight from their tensors (fast), the others through ``ToTensor``.

    Raises:
        ValueError: ``normalize=True`` for a dataset without known statistics.
    """
    from torch.utils.data import Subset
    from torchvision import transforms as T

    from pruninglib.data import load_dataset, subset_per_class, to_tensor_dataset

    if normalize and name not in DATASET_STATS:
        raise ValueError(f"no normalisation statistics for {name!r} (known: {sorted(DATASET_STATS)}); "
                         "pass normalize=False")
    ds = load_dataset(name, split, transform=T.ToTensor())
    idx = subset_per_class(ds, n_per_class, seed).indices if n_per_class is not None else None
    data = getattr(ds, "data", None)
    if torch.is_tensor(data) and data.dim() == 3:  # MNIST, Fashion-MNIST
        x = data.float().div(255).unsqueeze(1)
        y = torch.as_tensor(ds.targets).long()
        if idx is not None:
            sel = torch.as_tensor(idx)
            x, y = x[sel], y[sel]
        out = TensorDataset(x, y)
    else:
        out = to_tensor_dataset(Subset(ds, list(idx)) if idx is not None else ds)
    if normalize:
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in DATASET_STATS[name])
        out = TensorDataset((out.tensors[0] - mean) / std, out.tensors[1])
    return out


def reference_model(model: str = "lenet3", model_kwargs: dict[str, Any] | None = None,
                    dataset: str = "fashion_mnist", n_per_class: int | None = 1000, epochs: int = 6,
                    batch_size: int = 64, lr: float = 0.01, momentum: float = 0.9,
                    weight_decay: float = 0.0, seed: int = 0, device: torch.device | None = None,
                    progress: bool = True, train_data: TensorDataset | None = None
                    ) -> tuple[torch.nn.Module, list[dict]]:
    """A model trained with SGD, computed once per settings with :func:`pruninglib.cache.cached`
    (key: ``"<model>_reference"`` + every setting).

    Args:
        model: a :func:`pruninglib.models.build_model` name; ``model_kwargs`` its arguments.
        dataset: training data (:func:`load_tensors`, normalised).
        n_per_class: training examples per class (``None``: the whole training set).
        epochs, batch_size, lr, momentum, weight_decay: SGD settings (constant learning rate).
        seed: initialisation and shuffling seed.
        device: where to train (default :func:`pruninglib.utils.get_device`).
        train_data: the training tensors if already loaded (they must match the settings).

    Returns:
        ``(model in eval mode on device, training history)``.
    """
    from pruninglib.cache import cached
    from pruninglib.models import build_model
    from pruninglib.train import fit, make_loader
    from pruninglib.utils import get_device, set_seed

    device = device or get_device()
    model_kwargs = dict(model_kwargs or {})
    params = {"model": model, "model_kwargs": model_kwargs, "dataset": dataset, "n_per_class": n_per_class,
              "epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": momentum,
              "weight_decay": weight_decay, "seed": seed}

    def train() -> dict[str, Any]:
        data = train_data if train_data is not None else load_tensors(dataset, "train", n_per_class, seed)
        set_seed(seed)
        net = build_model(model, **model_kwargs).to(device)
        hist = fit(net, make_loader(data, batch_size, shuffle=True, seed=seed), epochs, lr=lr,
                   momentum=momentum, weight_decay=weight_decay, progress=progress)
        return {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "history": hist}

    res = cached(f"{model}_reference", params, train)
    net = build_model(model, **model_kwargs)
    net.load_state_dict(res["state_dict"])
    return net.to(device).eval(), res["history"]


def reference_lenet3(dataset: str = "fashion_mnist", n_per_class: int | None = 1000, epochs: int = 6,
                     batch_size: int = 64, lr: float = 0.01, momentum: float = 0.9, seed: int = 0,
                     **kw: Any) -> tuple[torch.nn.Module, list[dict]]:
    """The trained LeNet3 of lessons 02 and 03 (Molchanov et al. 2019, Sec. 4.1); call it with
    ``**LENET3_TRAINING[MODE]`` so both lessons share one cache entry. See :func:`reference_model`."""
    return reference_model("lenet3", {}, dataset, n_per_class, epochs, batch_size, lr, momentum, 0.0,
                           seed, **kw)
