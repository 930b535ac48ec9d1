"""Which layers can be pruned, and who consumes their channels.

Structured pruning removes output channels (conv filters, or units of a Linear layer) of a
*producer*; its BatchNorm (if any) loses the same channels, and the *consumer* (the next
Conv2d, or the next Linear, expanded by the spatial size after a flatten) loses the
matching input channels. :func:`prunable_layers` finds those triples:

* for chain models (``nn.Sequential`` stacks, :class:`~pruninglib.models.MLP`,
  :class:`~pruninglib.models.LeNet3`, :class:`~pruninglib.models.CifarVGG`, torchvision VGG),
  by walking the leaf modules in forward order;
* for models with a ``prunable_groups()`` method (the CIFAR ResNets: only the inner conv
  of each basic block), from that method.

Other architectures (branches, grouped or transposed convolutions) raise
:class:`UnsupportedModelError`, which says what to do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torchvision

__all__ = ["PrunableLayer", "prunable_layers", "leaf_layers", "UnsupportedModelError", "CHAIN_MODELS"]


class UnsupportedModelError(TypeError):
    """The model or one of its layers is outside what the surgery knows how to cut.

    The message names the way to prune such a model anyway: :mod:`pruninglib.groups` (Torch-Pruning's
    dependency groups), taught in lesson 08.

    Used in lessons 00, 01, 02, 03, 04, 05, 06 and 08.
    """


#: The end of every UnsupportedModelError message: how to prune the model anyway.
GROUPS_FIX = ("To prune residual, depthwise, concatenating or other non-chain models, use pruninglib.groups "
              "(find_groups(model, example) -> score_groups -> prune_groups, Torch-Pruning's dependency groups), "
              "taught in lesson 08 (notebooks/08_any_architecture.ipynb).")


@dataclass
class PrunableLayer:
    """A producer whose output channels can be removed.

    Attributes:
        name: qualified name of the producer (``"features.0"``).
        module: the producer (``nn.Conv2d`` or ``nn.Linear``).
        norm_name: qualified name of its BatchNorm, or ``None``.
        norm: that BatchNorm module, or ``None``.
        consumer_name: qualified name of the layer that reads these channels.
        consumer: that layer (``nn.Conv2d`` or ``nn.Linear``).

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """

    name: str
    module: nn.Module
    norm_name: str | None
    norm: nn.Module | None
    consumer_name: str
    consumer: nn.Module

    @property
    def num_units(self) -> int:
        """Current number of output channels / units."""
        m = self.module
        return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features

    @property
    def kind(self) -> str:
        """``"conv"`` or ``"linear"``."""
        return "conv" if isinstance(self.module, nn.Conv2d) else "linear"

    @property
    def gate_host(self) -> nn.Module:
        """Where zeroing a channel equals removing it: after the BatchNorm if there is one."""
        return self.norm if self.norm is not None else self.module

    def spatial_factor(self) -> int:
        """How many consumer inputs each channel feeds (1, or H*W for conv -> flatten -> Linear)."""
        if isinstance(self.consumer, nn.Linear) and isinstance(self.module, nn.Conv2d):
            f, r = divmod(self.consumer.in_features, self.module.out_channels)
            if r:
                raise UnsupportedModelError(
                    f"{self.consumer_name} has {self.consumer.in_features} inputs, not a multiple of "
                    f"{self.name}'s {self.module.out_channels} channels")
            return f
        return 1


CHAIN_MODELS: tuple[type, ...] = (nn.Sequential, torchvision.models.VGG)


def _is_chain(model: nn.Module) -> bool:
    from pruninglib import models as M

    return isinstance(model, CHAIN_MODELS + (M.MLP, M.LeNet3, M.CifarVGG)) or getattr(
        model, "pl_is_chain", False)


def _non_chain_child(module: nn.Module, prefix: str = "") -> tuple[str, nn.Module] | None:
    """The first submodule of an ``nn.Sequential`` stack that is neither a leaf layer (gates
    aside) nor itself a plain stack: a block with a forward of its own (a residual add, a
    downsample branch, a concatenation) whose data flow the chain walk would get wrong."""
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if _is_gate(child):
            continue
        grandchildren = [c for c in child.children() if not _is_gate(c)]
        if not grandchildren:
            continue  # a leaf layer
        if type(child) is nn.Sequential or isinstance(child, torchvision.models.VGG):
            found = _non_chain_child(child, full)
            if found:
                return found
            continue
        return full, child
    return None


#: Leaf layers with parameters that the surgery can resize (plus the gates it inserts).
_SUPPORTED_WEIGHTED = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def _is_gate(m: nn.Module) -> bool:
    return type(m).__name__ == "Gate" and type(m).__module__ == "pruninglib.core.gates"


def leaf_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every leaf layer in registration order, a gated layer counting as a
    leaf and its gate not listed. Used by :func:`prunable_layers` and the batched oracle (lessons 02-03)."""
    return [(n, m) for n, m in model.named_modules()
            if n and not _is_gate(m) and all(_is_gate(c) for c in m.children())]


def _check_layer(name: str, m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d) and m.groups != 1:
        raise UnsupportedModelError(
            f"layer {name!r} is a grouped/depthwise Conv2d (groups={m.groups}); the surgery supports "
            "groups=1 only. Exclude it from pruning or add a prunable_groups() method to the model. " + GROUPS_FIX)
    own_params = [p for n, p in m.named_parameters(recurse=False)]
    if isinstance(m, (nn.ConvTranspose2d, nn.Conv1d, nn.Conv3d)) or (
            own_params and not isinstance(m, _SUPPORTED_WEIGHTED)):
        raise UnsupportedModelError(
            f"layer {name!r} ({type(m).__name__}) is not supported by the surgery; only Conv2d, "
            "Linear and BatchNorm are. Exclude it or add a prunable_groups() method to the model. " + GROUPS_FIX)


def prunable_layers(model: nn.Module, kinds: tuple[str, ...] = ("conv", "linear")) -> list[PrunableLayer]:
    """List the prunable producers of ``model`` in forward order.

    Args:
        model: a chain model or one with ``prunable_groups()``.
        kinds: keep only ``"conv"`` and/or ``"linear"`` producers.

    Raises:
        UnsupportedModelError: for models or layers the surgery cannot handle, with the fix.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    named = dict(model.named_modules())
    out: list[PrunableLayer] = []
    if hasattr(model, "prunable_groups"):
        for prod, norm, cons in model.prunable_groups():
            out.append(PrunableLayer(prod, named[prod], norm, named[norm] if norm else None,
                                     cons, named[cons]))
    elif _is_chain(model):
        if type(model) is nn.Sequential or isinstance(model, torchvision.models.VGG):
            found = _non_chain_child(model)
            if found:
                raise UnsupportedModelError(
                    f"{type(model).__name__} is not a plain chain: its child {found[0]!r} "
                    f"({type(found[1]).__name__}) has a forward of its own (a residual add, a branch, ...), "
                    "so the layer after a producer is not necessarily its consumer. Give the model a "
                    "prunable_groups() method returning (producer, batchnorm-or-None, consumer) names. " + GROUPS_FIX)
        leaves = leaf_layers(model)
        for n, m in leaves:
            _check_layer(n, m)
        for i, (n, m) in enumerate(leaves):
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            width = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            norm_n, norm_m = None, None
            cons = None
            for n2, m2 in leaves[i + 1:]:
                if (isinstance(m2, (nn.BatchNorm2d, nn.BatchNorm1d)) and norm_m is None
                        and m2.num_features == width):
                    norm_n, norm_m = n2, m2
                elif isinstance(m2, (nn.Conv2d, nn.Linear)):
                    cons = (n2, m2)
                    break
            if cons is None:
                continue  # the output layer
            out.append(PrunableLayer(n, m, norm_n, norm_m, cons[0], cons[1]))
    else:
        raise UnsupportedModelError(
            f"{type(model).__name__} is neither a plain chain of layers nor has a prunable_groups() "
            "method. Use a pruninglib model, an nn.Sequential, or give the model a "
            "prunable_groups() method returning (producer, batchnorm-or-None, consumer) names. " + GROUPS_FIX)
    return [p for p in out if p.kind in kinds]
