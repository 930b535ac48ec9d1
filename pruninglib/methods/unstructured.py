"""Non-structured magnitude pruning (Han et al. 2015) with ``torch.nn.utils.prune`` masks.

Han, Pool, Tran, Dally, *Learning both Weights and Connections for Efficient Neural
Networks*, NeurIPS 2015, Sec. 3: remove the connections whose weight magnitude is below a
threshold, :math:`w_{ij} \\leftarrow w_{ij}\\,\\mathbb{1}[|w_{ij}| > t]`, then retrain the
survivors. Here the threshold is global (one :math:`t` for all conv and Linear weights, the
``amount`` quantile of :math:`|w|`), applied with ``torch.nn.utils.prune.global_unstructured``:
each pruned module keeps ``weight_orig`` and a ``weight_mask`` buffer and computes
``weight = weight_orig * weight_mask`` in a forward pre-hook, so fine-tuning keeps the
pruned weights at zero by construction.

Liu et al. 2019 (Sec. 4.5) compare this with training the *same sparse pattern* from a
random initialisation: :func:`get_masks` reads the pattern, :func:`apply_masks` puts it on a
freshly initialised copy. Counting the MACs such a sparse model would need if zeros were
skipped (:func:`sparse_macs`) gives the Scratch-B budget for it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from pruninglib.criteria.base import check_ratio

__all__ = ["prunable_weights", "magnitude_prune", "get_masks", "apply_masks", "remove_masks",
           "sparsity", "sparse_macs", "is_masked"]


def prunable_weights(model: nn.Module, kinds: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module of the given types that has a ``weight``. Used in lesson 05."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds) and hasattr(m, "weight")]


def is_masked(module: nn.Module) -> bool:
    """Whether ``module.weight`` is under a ``torch.nn.utils.prune`` mask. Used in lesson 05."""
    return hasattr(module, "weight_mask")


def magnitude_prune(model: nn.Module, amount: float, scope: str = "global",
                    kinds: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> nn.Module:
    """Zero the ``amount`` fraction of smallest-magnitude weights (Han et al. 2015), in place.

    Args:
        model: the model.
        amount: fraction of the (conv and Linear) weights to remove, in [0, 1).
        scope: ``"global"`` (one threshold over all layers, as Liu et al. 2019 use) or
            ``"layer"`` (the same fraction in every layer).
        kinds: module types to prune (biases and BatchNorm are never pruned).

    Returns:
        ``model``, with ``weight_orig``/``weight_mask`` on each pruned module. Pruning an
        already-masked model prunes further (masks compose), as in iterative pruning.

    Used in lesson 05.
    """
    a = check_ratio(amount, "amount")
    mods = prunable_weights(model, kinds)
    if not mods:
        raise ValueError(f"no {[k.__name__ for k in kinds]} modules with weights to prune")
    if scope == "global":
        # global_unstructured's amount is a fraction of the weights still unpruned; convert so that
        # `a` is the total fraction after this call.
        total = sum(m.weight.numel() for _, m in mods)
        zero = sum(int((m.weight_mask == 0).sum()) if is_masked(m) else 0 for _, m in mods)
        n_more = max(0, int(round(a * total)) - zero)
        prune.global_unstructured([(m, "weight") for _, m in mods], pruning_method=prune.L1Unstructured,
                                  amount=n_more)
    elif scope == "layer":
        for _, m in mods:
            n = m.weight.numel()
            zero = int((m.weight_mask == 0).sum()) if is_masked(m) else 0
            prune.l1_unstructured(m, "weight", amount=max(0, int(round(a * n)) - zero))
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    return model


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: weight_mask}`` of every masked module (copies, on the CPU). Used in lesson 05."""
    return {n: m.weight_mask.detach().cpu().clone() for n, m in model.named_modules() if is_masked(m)}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Put the sparse pattern ``masks`` on ``model`` (e.g. a fresh random initialisation), in place.

    The weights under a zero mask are zeroed by the forward pre-hook, so a model trained
    from here keeps exactly the given pattern (Liu et al. 2019's "scratch" for weight pruning).

    Used in lesson 05.
    """
    named = dict(model.named_modules())
    missing = [n for n in masks if n not in named]
    if missing:
        raise ValueError(f"masks name modules the model lacks: {missing[:5]}")
    for n, mask in masks.items():
        m = named[n]
        if tuple(mask.shape) != tuple(m.weight.shape):
            raise ValueError(f"mask for {n!r} has shape {tuple(mask.shape)} but the weight is "
                             f"{tuple(m.weight.shape)}; build the model with the same architecture")
        if is_masked(m):
            prune.remove(m, "weight")
        prune.custom_from_mask(m, "weight", mask.to(m.weight.device))
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Make the pruning permanent (``weight`` becomes a plain parameter with zeros), in place.

    No lesson calls it directly (its tests do).
    """
    for _, m in model.named_modules():
        if is_masked(m):
            prune.remove(m, "weight")
    return model


def sparsity(model: nn.Module, kinds: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> float:
    """Fraction of exactly-zero entries among the conv and Linear weights. Used in lesson 05."""
    mods = prunable_weights(model, kinds)
    total = sum(m.weight.numel() for _, m in mods)
    zero = sum(int((m.weight == 0).sum()) for _, m in mods)
    return zero / max(total, 1)


def sparse_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32),
                example: torch.Tensor | None = None) -> int:
    """MACs per sample if zero weights were skipped: each conv contributes
    :math:`H_{out} W_{out} \\cdot \\mathrm{nnz}(W)`, each Linear :math:`\\mathrm{nnz}(W)`
    (the dense count of :func:`pruninglib.core.metrics.count_macs` with the weight count replaced by
    its non-zeros). A theoretical number: dense hardware does not get faster.

    Used in lesson 05.
    """
    from pruninglib.core.metrics import count_macs

    return count_macs(model, input_size, example, nonzero_only=True)
