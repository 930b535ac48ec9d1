r"""Taylor criteria (Molchanov et al. 2017, ICLR; Molchanov et al. 2019, CVPR).

2017, Eq. (7)-(8): the change of the cost when feature map :math:`z_l^{(k)}` is zeroed,
to first order,

.. math::
    \Theta_{TE}(z_l^{(k)}) = \Big| \frac{1}{M} \sum_m \frac{\partial C}{\partial z_{l,m}^{(k)}}
    z_{l,m}^{(k)} \Big|,

averaged over the :math:`M` positions of the map and over minibatches, then normalised per
layer (:func:`~pruninglib.criteria.base.normalize_per_layer`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruninglib.criteria.base import Scores, register
from pruninglib.gates import ActivationRecorder
from pruninglib.graph import prunable_layers

__all__ = ["taylor_2017"]


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
