r"""Sparse Structure Selection (Huang and Wang 2018, ECCV): learn which residual blocks to drop.

Every residual block gets a scalar scaling factor :math:`\lambda_i` on its residual branch,

.. math:: r^{i+1} = \sigma\big(\lambda_i \, \mathcal{F}(r^i, W^i) + \mathcal{S}(r^i)\big),

and training minimises the loss plus a sparsity penalty on the factors (Sec. 3.2),

.. math:: \min_{W, \lambda} \frac{1}{N} \sum_{n} \mathcal{L}\big(y_n, \mathcal{C}(x_n, W, \lambda)\big)
          + \mathcal{R}(W) + \gamma \|\lambda\|_1 .

The factors are updated by Accelerated Proximal Gradient (Sec. 3.3), written as a modified
Nesterov step so that the gradient is taken at the stored point:

.. math::
    z_t &= \lambda_{t-1} - \eta_t \nabla \mathcal{G}(\lambda_{t-1}) \\
    v_t &= S_{\eta_t \gamma}(z_t) - \lambda_{t-1} + \mu_{t-1} v_{t-1} \\
    \lambda_t &= S_{\eta_t \gamma}(z_t) + \mu_t v_t

with the soft-threshold :math:`S_\alpha(z) = \mathrm{sign}(z)\max(|z| - \alpha, 0)`. A factor
that reaches exactly zero silences its block; since the input of a block is non-negative
(it comes out of a ReLU) and the parameter-free option-A shortcut keeps it so, such a block
computes :math:`\sigma(\mathcal{S}(r^i)) = \mathcal{S}(r^i)` and is replaced by its shortcut
*exactly* (:func:`drop_blocks`).

Works with :class:`~pruninglib.models.CifarResNet` (any module with ``blocks()`` returning
``BasicBlock``-like modules that have ``bn2`` and ``shortcut``).
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import torch
import torch.nn as nn
from torch.optim.optimizer import Optimizer


__all__ = ["add_block_scales", "block_scales", "scale_parameters", "soft_threshold", "APG",
           "drop_blocks", "fold_block_scales", "DroppedBlock", "train_sss"]


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not hasattr(model, "blocks"):
        raise TypeError(f"{type(model).__name__} has no blocks() method; Sparse Structure Selection needs a "
                        "residual network such as pruninglib.models.CifarResNet")
    return list(model.blocks())


def _scale_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output * module.sss_scale


def add_block_scales(model: nn.Module, init: float = 1.0) -> dict[str, nn.Parameter]:
    r"""Put a scaling factor :math:`\lambda_i` (a parameter ``<block>.bn2.sss_scale``) on every
    block's residual branch, applied by a forward hook on the block's last BatchNorm.

    Returns:
        ``{block name: its factor}`` in forward order.

    Used in lesson 06.
    """
    out = {}
    for name, block in _blocks(model):
        bn = block.bn2
        if not hasattr(bn, "sss_scale"):
            p = bn.weight
            bn.sss_scale = nn.Parameter(torch.full((), float(init), device=p.device, dtype=p.dtype))
            bn.sss_handle = bn.register_forward_hook(_scale_hook)
        out[name] = bn.sss_scale
    return out


def block_scales(model: nn.Module) -> dict[str, float]:
    """``{block name: current factor}`` for every block that has one. Used in lesson 06."""
    return {n: float(b.bn2.sss_scale.detach()) for n, b in _blocks(model) if hasattr(b.bn2, "sss_scale")}


def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The factors as a list (give them to :class:`APG`, and the other parameters to SGD). Used in lesson 06."""
    return [b.bn2.sss_scale for _, b in _blocks(model) if hasattr(b.bn2, "sss_scale")]


def soft_threshold(z: torch.Tensor, alpha: float) -> torch.Tensor:
    r""":math:`S_\alpha(z) = \mathrm{sign}(z)\max(|z| - \alpha, 0)`, the proximal operator of :math:`\alpha\|\cdot\|_1`.

    Used in lesson 06.
    """
    return torch.sign(z) * torch.clamp(z.abs() - alpha, min=0.0)


class APG(Optimizer):
    r"""Accelerated Proximal Gradient for :math:`\gamma\|\lambda\|_1`, Huang and Wang 2018, Sec. 3.3.

    One :meth:`step` applies the three updates of the module docstring to every parameter
    (with :math:`\mu` constant). Factors that reach zero stay at zero unless the gradient
    pushes them back beyond the threshold.

    Args:
        params: the scaling factors.
        lr: :math:`\eta`.
        gamma: the sparsity weight :math:`\gamma`.
        momentum: :math:`\mu`.

    Used in lesson 06.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 0.1, gamma: float = 0.01,
                 momentum: float = 0.9) -> None:
        if lr <= 0 or gamma < 0 or not 0 <= momentum < 1:
            raise ValueError(f"need lr > 0, gamma >= 0 and 0 <= momentum < 1; got lr={lr}, gamma={gamma}, "
                             f"momentum={momentum}")
        super().__init__(params, dict(lr=lr, gamma=gamma, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, gamma, mu = group["lr"], group["gamma"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                z = p - lr * p.grad                       # z_t
                s = soft_threshold(z, lr * gamma)         # S_{eta gamma}(z_t)
                state = self.state[p]
                v = state.get("v")
                v = s - p if v is None else s - p + mu * v  # v_t
                state["v"] = v
                p.copy_(s + mu * v)                       # lambda_t
        return loss


class DroppedBlock(nn.Module):
    """What remains of a block whose factor is zero: its (parameter-free) shortcut. Used in lesson 06."""

    def __init__(self, shortcut: nn.Module) -> None:
        super().__init__()
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x)


def drop_blocks(model: nn.Module, threshold: float = 0.0) -> list[str]:
    r"""Replace every block with :math:`|\lambda_i| \le` ``threshold`` by its shortcut, in place.

    With ``threshold=0`` only blocks whose factor is exactly zero go, and the network's
    output does not change. A shortcut with parameters (a 1x1 conv) is kept as it is.

    Returns:
        Names of the dropped blocks.

    Used in lesson 06.
    """
    named = dict(model.named_modules())
    dropped = []
    for name, block in _blocks(model):
        if not hasattr(block.bn2, "sss_scale") or abs(float(block.bn2.sss_scale.detach())) > threshold:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = named[parent_name] if parent_name else model
        setattr(parent, child, DroppedBlock(block.shortcut))
        dropped.append(name)
    return dropped


def fold_block_scales(model: nn.Module) -> None:
    r"""Multiply each remaining factor into its block's ``bn2`` (weight and bias) and remove it,
    leaving a plain network that computes the same function.

    Used in lesson 06.
    """
    for _, block in _blocks(model):
        bn = block.bn2
        if hasattr(bn, "sss_scale"):
            with torch.no_grad():
                s = bn.sss_scale.detach()
                bn.weight.mul_(s)
                bn.bias.mul_(s)
            bn.sss_handle.remove()
            del bn.sss_scale, bn.sss_handle


def train_sss(model: nn.Module, loader: Iterable, epochs: int, lr: float, gamma: float, momentum: float = 0.9,
              weight_decay: float = 5e-4, progress: bool = True, ckpt_path: str | os.PathLike | None = None,
              signature: dict[str, Any] | None = None) -> list[dict[str, float]]:
    r"""Train ``model`` with Sparse Structure Selection (Huang & Wang 2018, Sec. 3.2-3.3), in place.

    Adds a scale :math:`\lambda_i` to every block (:func:`add_block_scales`); the other weights
    take SGD steps (momentum, weight decay), the scales APG steps with the penalty
    :math:`\gamma\lVert\lambda\rVert_1` (taken between ``backward()`` and the SGD step); both
    learning rates follow one cosine schedule over ``epochs``. Used in lesson 06.

    With ``ckpt_path`` it checkpoints after every epoch (model, SGD and APG states, both schedules, the random
    states; :func:`pruninglib.checkpoint.fit_resumable`): run again after a kill with the same ``signature``, it
    resumes where it stopped, bit-identically on the CPU.

    Returns:
        The trajectory of the block scales: :func:`block_scales` before training and after each epoch.
    """
    from pruninglib.checkpoint import fit_resumable

    add_block_scales(model)
    scales = scale_parameters(model)
    others = [p for p in model.parameters() if all(p is not s for s in scales)]
    opt = torch.optim.SGD(others, lr=lr, momentum=momentum, weight_decay=weight_decay)
    apg = APG(scales, lr=lr, gamma=gamma, momentum=momentum)
    apg_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(apg, epochs)
    start = block_scales(model)

    def apg_step(_: nn.Module) -> None:
        apg.step()
        apg.zero_grad()

    def end_of_epoch(epoch: int, row: dict) -> None:
        apg_schedule.step()
        row["block_scales"] = block_scales(model)  # kept in the history, so a resumed run has the whole trajectory

    sig = {**(signature or {}), "lr": lr, "gamma": gamma, "momentum": momentum, "weight_decay": weight_decay}
    history = fit_resumable(model, loader, epochs, ckpt_path=ckpt_path, signature=sig, optimizer=opt,
                            scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs),
                            on_epoch_end=end_of_epoch, extra_state={"apg": apg, "apg_schedule": apg_schedule},
                            after_backward=apg_step, progress=progress)
    return [start] + [row["block_scales"] for row in history]
