"""Figures shared by several lessons (matplotlib)."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

__all__ = ["plot_channel_counts", "plot_history", "display_images", "plot_prediction_grid"]


def plot_channel_counts(counts: Mapping[str, Mapping[str, int]] | Mapping[str, int],
                        title: str = "channels per layer", ax: plt.Axes | None = None) -> plt.Axes:
    """Bar chart of channels per layer; pass ``{label: {layer: n}}`` to compare models.

    Used in lessons 00, 04, 05 and 06.
    """
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


def plot_history(history: Sequence[Mapping[str, float]], keys: Sequence[str] = ("train_loss", "val_accuracy"),
                 title: str = "training") -> plt.Figure:
    """Plot the per-epoch history returned by :func:`pruninglib.train.fit`. Used in lesson 04."""
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


def display_images(x: torch.Tensor, mean: Sequence[float] = (0.485, 0.456, 0.406),
                   std: Sequence[float] = (0.229, 0.224, 0.225)) -> torch.Tensor:
    """Undo the ImageNet normalisation: ``(N, 3, H, W)`` -> ``(N, H, W, 3)`` in ``[0, 1]`` for imshow.

    Used in lesson 04.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a batch of RGB images (N, 3, H, W), got shape {tuple(x.shape)}")
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x.cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1)


def plot_prediction_grid(images: torch.Tensor, labels: Sequence[int], before: Sequence[int],
                         after: Sequence[int], classes: Sequence[str] = ("cat", "dog"),
                         ncols: int = 5, title: str = ""):
    """A grid of photos titled with the true class and the predictions before/after pruning.

    Args:
        images: ``(N, H, W, 3)`` in ``[0, 1]`` (see :func:`display_images`).
        labels, before, after: true class and the two predictions per photo.
        classes: class names.
        ncols: photos per row.
        title: figure title.

    Returns:
        The matplotlib figure.

    Used in lesson 04.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    if not (len(labels) == len(before) == len(after) == n):
        raise ValueError(f"got {n} images but {len(labels)} labels, {len(before)} and {len(after)} predictions")
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.5 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k])
        y, b, a = int(labels[k]), int(before[k]), int(after[k])
        mark = lambda p: "ok" if p == y else "WRONG"  # noqa: E731
        ax.set_title(f"true: {classes[y]}\nbefore: {classes[b]} ({mark(b)})\nafter: {classes[a]} ({mark(a)})",
                     fontsize=8, color="black" if a == y else "tab:red")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
