"""Figures shared by several lessons (matplotlib)."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt

__all__ = ["plot_channel_counts", "plot_curves", "plot_history"]


def plot_channel_counts(counts: Mapping[str, Mapping[str, int]] | Mapping[str, int],
                        title: str = "channels per layer", ax: plt.Axes | None = None) -> plt.Axes:
    """Bar chart of channels per layer; pass ``{label: {layer: n}}`` to compare models."""
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.2))
    if counts and not isinstance(next(iter(counts.values())), Mapping):
        counts = {"model": counts}  # type: ignore[assignment]
    labels = list(counts)
    layers = list(next(iter(counts.values())))
    w = 0.8 / len(labels)
    for k, lab in enumerate(labels):
        ax.bar([i + k * w for i in range(len(layers))], [counts[lab][l] for l in layers], w, label=lab)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(layers))])
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title(title)
    if len(labels) > 1:
        ax.legend()
    return ax


def plot_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
                title: str = "", ax: plt.Axes | None = None, **kw) -> plt.Axes:
    """One line per ``label: (xs, ys)``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for lab, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=lab, **kw)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_history(history: Sequence[Mapping[str, float]], keys: Sequence[str] = ("train_loss", "val_accuracy"),
                 title: str = "training") -> plt.Figure:
    """Plot the per-epoch history returned by :func:`pruninglib.train.fit`."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3))
    axes = [axes] if len(keys) == 1 else axes
    ep = [h["epoch"] for h in history]
    for ax, k in zip(axes, keys):
        ax.plot(ep, [h.get(k, float("nan")) for h in history], marker="o")
        ax.set_xlabel("epoch")
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
