"""L1-norm filter pruning with the predefined targets of Li et al. 2017 (ICLR).

Li, Kadav, Durdanovic, Samet, Graf, *Pruning Filters for Efficient ConvNets*, ICLR 2017.
Sec. 3.1 ranks the filters :math:`\\mathcal{F}_{i,j}` of layer :math:`i` by their L1 norm

.. math:: s_j = \\sum_{l=1}^{n_i} \\sum |\\mathcal{K}_l| \\quad(\\text{Eq. in Sec. 3.1}),

keeps the largest ones and removes the others with their feature maps and the matching
kernels of the next layer. The number kept per layer is *predefined* by hand (Table 1),
which is why Liu et al. 2019 (*Rethinking the Value of Network Pruning*, ICLR 2019,
Sec. 4.1) can train the same target architecture from scratch.

The predefined targets (Li et al. 2017, Table 1; FLOPs and parameters counted by
:func:`flops_reduction` reproduce the paper's 34.2 % / 10.4 % / 27.6 % to 0.1 point):

* **VGG-16-A** (CIFAR VGG-16): conv widths
  ``[32, 64, M, 128, 128, M, 256, 256, 256, M, 256, 256, 256, M, 256, 256, 256]`` --
  conv 1 and convs 8-13 halved.
* **ResNet-56-A**: prune a fraction ``p = (0.1, 0.1, 0.1)`` per stage of every block's
  inner conv, except the "skip" layers 16, 20, 38, 54.
* **ResNet-56-B**: ``p = (0.6, 0.3, 0.1)``, skipping 16, 18, 20, 34, 38, 54.

**Layer-numbering convention** (the one of the reference code, ``res56prune.py`` in
``Eric-mingjie/rethinking-network-pruning``, which we read and re-implemented): layer ids
count *every* ``Conv2d`` of the ResNet in forward order, starting at 1 for the stem conv.
Option-A shortcuts have no conv, so block ``b`` (0-based, forward order over the three
stages) owns conv ids ``2b + 2`` (its inner ``conv1``, the prunable one) and ``2b + 3``
(its ``conv2``, whose output is tied to the residual stream). Every skip id is even, i.e.
names a block's ``conv1``: skip 16 is block 7 (``layer1.7``), 20 is ``layer2.0``, 38 is
``layer3.0``, 54 is ``layer3.8``. The stage of id ``2b+2`` is ``b // n`` (n blocks per
stage), the same as the reference's ``id <= 2n / <= 4n`` test. The number kept is
``int(width * (1 - p))`` (floored, as in the reference): 14 of 16, 28 of 32, 57 of 64
for ``p = 0.1``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from pruninglib.criteria import get_criterion
from pruninglib.core.graph import prunable_layers
from pruninglib.core.metrics import count_macs, count_parameters
from pruninglib.core.surgery import prune_channels

__all__ = [
    "VGG16_A_CFG", "RESNET56_SKIP", "RESNET56_RATIOS", "PAPER_FLOPS_PRUNED", "PAPER_PARAMS_PRUNED",
    "resnet_conv_id", "resnet_block_of_id", "resnet_target_mid_channels",
    "target_widths", "l1_keep_plan", "prune_to_widths", "predefined_target", "flops_reduction",
]

#: VGG-16-A of Li et al. 2017, Table 1 (conv 1 and convs 8-13 halved).
VGG16_A_CFG: list[int | str] = [32, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                256, 256, 256, "M", 256, 256, 256]

#: Skipped (never pruned) layer ids of ResNet-56-A/B, Li et al. 2017, Sec. 4.2.
RESNET56_SKIP: dict[str, list[int]] = {"A": [16, 20, 38, 54], "B": [16, 18, 20, 34, 38, 54]}

#: Fraction of inner-conv filters pruned per stage, Li et al. 2017, Sec. 4.2.
RESNET56_RATIOS: dict[str, list[float]] = {"A": [0.1, 0.1, 0.1], "B": [0.6, 0.3, 0.1]}

#: Fraction of FLOPs pruned, Li et al. 2017, Table 1 (34.2 %, 10.4 %, 27.6 %). The absolute counts behind
#: them (3.13e8 -> 2.06e8; 1.25e8 -> 1.12e8 / 9.09e7): source not checked, the table is not in the
#: project's sources (our MAC counts of the full models match 3.13e8 and 1.25e8 to 1 %, tests/test_l1_filters.py).
PAPER_FLOPS_PRUNED: dict[str, float] = {"vgg16_a": 0.342, "resnet56_a": 0.104, "resnet56_b": 0.276}

#: Fraction of parameters pruned, Li et al. 2017, Table 1: VGG-16-A 64.0 % (the row as quoted on NNI's
#: L1FilterPruner documentation page, nni.readthedocs.io, v1.6); ResNet-56-A 9.4 % and -B 13.7 %: source
#: not checked (our counts reproduce them to 0.5 points, tests/test_l1_filters.py).
PAPER_PARAMS_PRUNED: dict[str, float] = {"vgg16_a": 0.640, "resnet56_a": 0.094, "resnet56_b": 0.137}


def resnet_conv_id(block: int) -> int:
    """Li et al.'s layer id of block ``block``'s inner conv (``conv1``): ``2 * block + 2``.

    Ids count every Conv2d in forward order from 1 (the stem conv); see the module docstring.

    Used in lesson 05.
    """
    if block < 0:
        raise ValueError(f"block index must be >= 0, got {block}")
    return 2 * block + 2


def resnet_block_of_id(layer_id: int) -> int:
    """The 0-based block whose inner conv has Li et al.'s layer id ``layer_id`` (even, >= 2).

    Raises:
        ValueError: for odd ids (a block's ``conv2``, tied to the residual stream) or the stem.

    Used in lesson 05.
    """
    if layer_id < 2 or layer_id % 2:
        raise ValueError(f"layer id {layer_id} is not a block's inner conv; inner convs have even ids "
                         "2, 4, ... (id 1 is the stem conv, odd ids are the convs tied to the residual "
                         "stream, which Li et al. never prune)")
    return (layer_id - 2) // 2


def resnet_target_mid_channels(depth: int = 56, variant: str | None = "A",
                               skip: Sequence[int] | None = None,
                               ratios: Sequence[float] | None = None,
                               widths: Sequence[int] = (16, 32, 64)) -> list[int]:
    """Inner widths of every block of a pruned CIFAR ResNet (Li et al. 2017, Sec. 4.2).

    Args:
        depth: 6n+2.
        variant: ``"A"`` or ``"B"`` (ResNet-56 settings), or ``None`` with ``skip``/``ratios``.
        skip: layer ids kept whole (default: the variant's).
        ratios: per-stage fraction pruned (default: the variant's).
        widths: stage widths of the full model.

    Returns:
        ``mid_channels`` for :class:`pruninglib.models.CifarResNet`, one entry per block.

    Used in lesson 05.
    """
    if (depth - 2) % 6:
        raise ValueError(f"ResNet depth must be 6n+2, got {depth}")
    if variant is not None and variant not in RESNET56_SKIP:
        raise ValueError(f"variant must be one of {sorted(RESNET56_SKIP)} or None, got {variant!r}")
    skip = list(RESNET56_SKIP[variant] if skip is None and variant else (skip or []))
    ratios = list(RESNET56_RATIOS[variant] if ratios is None and variant else (ratios or [0, 0, 0]))
    if len(ratios) != 3 or not all(0.0 <= r < 1.0 for r in ratios):
        raise ValueError(f"ratios needs three per-stage fractions in [0, 1), got {ratios}")
    n = (depth - 2) // 6
    for s in skip:
        if resnet_block_of_id(s) >= 3 * n:
            raise ValueError(f"skip id {s} is beyond the last inner conv of ResNet-{depth} "
                             f"(ids 2..{resnet_conv_id(3 * n - 1)})")
    out = []
    for b in range(3 * n):
        stage, w = b // n, widths[b // n]
        out.append(w if resnet_conv_id(b) in skip else max(1, int(w * (1 - ratios[stage]))))
    return out


def target_widths(model: nn.Module) -> list[int]:
    """Current widths of ``model``'s prunable conv layers, in forward order. Used in lesson 05."""
    return [pl.num_units for pl in prunable_layers(model, ("conv",))]


def l1_keep_plan(model: nn.Module, widths: Sequence[int] | Mapping[str, int],
                 criterion: str = "weight_l1") -> dict[str, list[int]]:
    """Which filters to remove so that each prunable conv keeps its ``widths`` largest-L1 filters.

    Li et al. 2017, Sec. 3.1, steps 1-3: compute :math:`s_j = \\sum |\\mathcal{F}_{i,j}|`,
    sort, and prune the filters with the smallest sums.

    Args:
        model: a model :func:`pruninglib.core.graph.prunable_layers` understands.
        widths: target width per prunable conv, in forward order (a list) or by name.
        criterion: any registered criterion (``"weight_l1"`` for Li et al.).

    Returns:
        ``{layer: [indices to remove]}`` for :func:`pruninglib.core.surgery.prune_channels`.

    Used in lesson 05.
    """
    layers = prunable_layers(model, ("conv",))
    if isinstance(widths, Mapping):
        unknown = [k for k in widths if k not in {pl.name for pl in layers}]
        if unknown:
            raise ValueError(f"not prunable conv layers: {unknown}; they are {[pl.name for pl in layers]}")
        want = {pl.name: int(widths.get(pl.name, pl.num_units)) for pl in layers}
    else:
        if len(widths) != len(layers):
            raise ValueError(f"{len(widths)} target widths for {len(layers)} prunable conv layers; give one "
                             f"width per layer in forward order ({[pl.name for pl in layers]})")
        want = {pl.name: int(w) for pl, w in zip(layers, widths)}
    scores = get_criterion(criterion)(model, None, kinds=("conv",))
    plan: dict[str, list[int]] = {}
    for pl in layers:
        n, k = pl.num_units, want[pl.name]
        if not 1 <= k <= n:
            raise ValueError(f"layer {pl.name!r} has {n} filters; a target of {k} must be in [1, {n}] "
                             "(pruning only removes filters, and every layer keeps at least one)")
        order = torch.argsort(scores[pl.name], descending=True, stable=True)
        remove = sorted(order[k:].tolist())
        if remove:
            plan[pl.name] = remove
    return plan


def prune_to_widths(model: nn.Module, widths: Sequence[int] | Mapping[str, int],
                    criterion: str = "weight_l1") -> nn.Module:
    """Physically prune ``model`` (in place) to the target ``widths``, keeping the
    largest-L1 filters (Li et al. 2017); the survivors keep their trained weights.

    Used in lesson 05.
    """
    prune_channels(model, l1_keep_plan(model, widths, criterion))
    return model


def predefined_target(name: str, width: float = 1.0, in_channels: int = 3,
                      num_classes: int = 10) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(full, pruned)`` :func:`pruninglib.models.build_model` specs of a Li et al. target.

    Args:
        name: ``"vgg16_a"``, ``"resnet56_a"`` or ``"resnet56_b"``.
        width: width multiplier of the VGG (narrow VGGs for CPUs; both specs are scaled
            by it, with :class:`~pruninglib.models.CifarVGG`'s rounding). ResNets ignore it.
        in_channels: image channels.
        num_classes: classes.

    Returns:
        Two dicts ``{"name": ..., "kwargs": {...}}``.

    Used in lesson 05.
    """
    if name == "vgg16_a":
        base = {"in_channels": in_channels, "num_classes": num_classes, "batch_norm": True}
        return ({"name": "cifar_vgg", "kwargs": {"cfg": "vgg16", "width": width, **base}},
                {"name": "cifar_vgg", "kwargs": {"cfg": list(VGG16_A_CFG), "width": width, **base}})
    if name in ("resnet56_a", "resnet56_b"):
        if width != 1.0:
            raise ValueError("ResNet targets have fixed widths; use width=1.0")
        mids = resnet_target_mid_channels(56, name[-1].upper())
        base = {"depth": 56, "num_classes": num_classes, "in_channels": in_channels}
        return ({"name": "cifar_resnet", "kwargs": dict(base)},
                {"name": "cifar_resnet", "kwargs": {**base, "mid_channels": mids}})
    raise ValueError(f"unknown predefined target {name!r}; choose 'vgg16_a', 'resnet56_a' or 'resnet56_b'")


def flops_reduction(full: nn.Module, pruned: nn.Module,
                    input_size: tuple[int, ...] = (1, 3, 32, 32)) -> dict[str, float]:
    """MACs and parameters of both models and the fraction pruned (Li et al. 2017, Table 1 columns).

    Returns:
        ``{"macs_full", "macs_pruned", "flops_pruned", "params_full", "params_pruned",
        "params_pruned_frac"}``; ``flops_pruned = 1 - MACs_pruned / MACs_full``.

    Used in lesson 05.
    """
    mf, mp = count_macs(full, input_size), count_macs(pruned, input_size)
    pf, pp = count_parameters(full), count_parameters(pruned)
    return {"macs_full": mf, "macs_pruned": mp, "flops_pruned": 1 - mp / mf,
            "params_full": pf, "params_pruned": pp, "params_pruned_frac": 1 - pp / pf}
