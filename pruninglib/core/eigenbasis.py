r"""Surgery for EigenDamage: a layer becomes a bottleneck of three layers in its Kronecker eigenbasis.

With the layer's weight matrix :math:`W` (``[out, n]``) and orthogonal :math:`Q_A` (``[n, n]``),
:math:`Q_S` (``[out, out]``), the reparameterisation of Wang et al. 2019 (EigenDamage, Sec. 3.3) is

.. math:: W^* = Q_S^\top W Q_A, \qquad W = Q_S\, W^*\, Q_A^\top ,

so :math:`W\bar a = Q_S\,(W^*\,(Q_A^\top \bar a))`: three layers in a row, ``rotate_in``
(:math:`Q_A^\top` restricted to the kept columns :math:`C`), ``core`` (:math:`W^*_{R,C}`) and ``rotate_out``
(:math:`Q_S` restricted to the kept rows :math:`R`). Two forms for a convolution:

* ``patch=True`` (the EigenDamage code's default, ``use_patch``): :math:`A` is over the **input channels**
  (patches of every kernel offset pooled), so :math:`Q_A` is ``[in, in]`` and each kernel offset
  :math:`k` has its own :math:`W^*_k = Q_S^\top W_k Q_A`. The bottleneck is a **1x1 conv** :math:`Q_A^\top`
  (``in`` -> :math:`|C|`), a :math:`k_h\times k_w` **core** conv with the layer's stride and padding
  (:math:`|C|` -> :math:`|R|`), and a **1x1 conv** :math:`Q_S` (:math:`|R|` -> ``out``), which also carries the
  layer's bias (our choice: exact with zero padding; the authors copy the bias into every kernel offset).
* ``patch=False``: :math:`A` over the unfolded patches (``n = in*kh*kw`` (+1)); ``rotate_in`` is then a
  conv with the layer's kernel (its bias is the bias row of :math:`Q_A`), the core and ``rotate_out`` 1x1.

A Linear layer is the 1x1 case (three Linear layers). Pruning removes columns of :math:`Q_A` and rows of
:math:`Q_S`: a low-rank bottleneck, not a thinner layer; the layer's output width (and its BatchNorm,
and every consumer) stays as it was. Before pruning (all of :math:`C` and :math:`R` kept) the bottleneck
computes exactly the original layer.

:func:`save_bottlenecked` / :func:`load_bottlenecked` store such a model through
:mod:`pruninglib.checkpoint` (self-verifying file): the constructor call, the bottlenecks' ranks and
the weights.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pruninglib.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["EigenBottleneck", "make_bottleneck", "bottleneck_matrices", "set_bottleneck_matrices", "replace_module",
           "bottleneck_param_count", "layer_param_count", "bottlenecks", "save_bottlenecked", "load_bottlenecked",
           "patch_matrix"]

_FORMAT = "pruninglib.eigenbasis/1"


def patch_matrix(m: nn.Module) -> torch.Tensor:
    """A conv's weight as ``[out, kh*kw, in]`` (one ``[out, in]`` matrix per kernel offset); a Linear's as
    ``[out, 1, in]``. Biases are not included (the patch form keeps them out of the eigenbasis). Used in lesson 07."""
    W = m.weight.detach()
    if W.dim() == 4:
        return W.permute(0, 2, 3, 1).reshape(W.shape[0], -1, W.shape[1])
    return W[:, None, :]


class EigenBottleneck(nn.Sequential):
    """``rotate_in`` (:math:`Q_A^\\top`), ``core`` (:math:`W^*`), ``rotate_out`` (:math:`Q_S`) replacing one layer.

    Args:
        spec: ``{"kind": "conv"|"linear", "patch": bool, "in", "out", "r_in", "r_out", "bias": bool}`` and,
            for a conv, ``kernel_size``, ``stride``, ``padding``, ``dilation`` (see :meth:`layer_spec`).

    Used in lesson 07.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = dict(spec)
        s = self.spec
        if s["kind"] == "conv" and s.get("patch"):
            layers = [nn.Conv2d(s["in"], s["r_in"], 1, bias=False),
                      nn.Conv2d(s["r_in"], s["r_out"], tuple(s["kernel_size"]), tuple(s["stride"]), tuple(s["padding"]),
                                tuple(s["dilation"]), bias=False),
                      nn.Conv2d(s["r_out"], s["out"], 1, bias=s["bias"])]
        elif s["kind"] == "conv":
            layers = [nn.Conv2d(s["in"], s["r_in"], tuple(s["kernel_size"]), tuple(s["stride"]), tuple(s["padding"]),
                                tuple(s["dilation"]), bias=s["bias"]),
                      nn.Conv2d(s["r_in"], s["r_out"], 1, bias=False), nn.Conv2d(s["r_out"], s["out"], 1, bias=False)]
        elif s["kind"] == "linear":
            layers = [nn.Linear(s["in"], s["r_in"], bias=s["bias"]), nn.Linear(s["r_in"], s["r_out"], bias=False),
                      nn.Linear(s["r_out"], s["out"], bias=False)]
        else:
            raise ValueError(f"kind must be 'conv' or 'linear', got {s['kind']!r}")
        super().__init__(OrderedDict(zip(("rotate_in", "core", "rotate_out"), layers)))

    @property
    def patch(self) -> bool:
        """Whether this is the patch form (1x1, core kxk, 1x1)."""
        return self.spec["kind"] == "conv" and bool(self.spec.get("patch"))

    @staticmethod
    def layer_spec(m: nn.Module, r_in: int, r_out: int, patch: bool = False) -> dict[str, Any]:
        """The spec of a bottleneck replacing layer ``m`` with ranks ``r_in``, ``r_out``.

        Raises:
            TypeError: a layer other than a plain Conv2d (groups=1, zero padding) or a Linear.
        """
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise TypeError("the eigenbasis surgery supports plain Conv2d (groups=1, numeric zero padding) only")
            return {"kind": "conv", "patch": bool(patch), "in": m.in_channels, "out": m.out_channels,
                    "r_in": int(r_in), "r_out": int(r_out), "bias": m.bias is not None,
                    "kernel_size": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding),
                    "dilation": list(m.dilation)}
        if isinstance(m, nn.Linear):
            return {"kind": "linear", "patch": False, "in": m.in_features, "out": m.out_features, "r_in": int(r_in),
                    "r_out": int(r_out), "bias": m.bias is not None}
        raise TypeError(f"cannot reparameterise a {type(m).__name__}; only Conv2d and Linear layers")


def bottleneck_matrices(b: EigenBottleneck) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(Q_A[:, C], W*_{R,C}, Q_S[:, R])`` of a bottleneck. Used in lesson 07.

    ``Q_A[:, C]`` is ``[n, r_in]`` (with the bias row in the unfolded form); ``W*`` is ``[r_out, r_in]``, or
    ``[r_out, kh*kw, r_in]`` in the patch form; ``Q_S[:, R]`` is ``[out, r_out]``.
    """
    ri, core, ro = b.rotate_in, b.core, b.rotate_out
    qa = ri.weight.detach().reshape(ri.weight.shape[0], -1)
    if ri.bias is not None:
        qa = torch.cat([qa, ri.bias.detach()[:, None]], 1)
    c = patch_matrix(core) if b.patch else core.weight.detach().reshape(core.weight.shape[0], -1)
    return qa.T, c, ro.weight.detach().reshape(ro.weight.shape[0], -1)


def set_bottleneck_matrices(b: EigenBottleneck, qa: torch.Tensor, core: torch.Tensor, qs: torch.Tensor,
                            bias: torch.Tensor | None = None) -> None:
    """Write ``(Q_A[:, C], W*_{R,C}, Q_S[:, R])`` into ``b``, resizing its layers to the new ranks; ``bias`` is
    ``rotate_out``'s bias in the patch form (kept when None). Used in lesson 07."""
    s = b.spec
    s["r_in"], s["r_out"] = int(qa.shape[1]), int(core.shape[0])
    dt, dev = b.rotate_in.weight.dtype, b.rotate_in.weight.device
    old_bias = getattr(b.rotate_out, "bias", None)
    fresh = EigenBottleneck(s).to(device=dev, dtype=dt)
    ri, c, ro = fresh.rotate_in, fresh.core, fresh.rotate_out
    n = ri.weight[0].numel()
    with torch.no_grad():
        ri.weight.copy_(qa[:n].T.reshape(ri.weight.shape))
        if ri.bias is not None:
            ri.bias.copy_(qa[n])
        if b.patch:  # [r_out, K, r_in] -> [r_out, r_in, kh, kw]
            c.weight.copy_(core.reshape(c.weight.shape[0], c.weight.shape[2], c.weight.shape[3], -1).permute(0, 3, 1, 2))
        else:
            c.weight.copy_(core.reshape(c.weight.shape))
        ro.weight.copy_(qs.reshape(ro.weight.shape))
        if ro.bias is not None:
            ro.bias.copy_(bias if bias is not None else old_bias)
    for name, new in (("rotate_in", ri), ("core", c), ("rotate_out", ro)):
        setattr(b, name, new)


def make_bottleneck(m: nn.Module, Q_A: torch.Tensor, Q_S: torch.Tensor, W_star: torch.Tensor,
                    keep_in: torch.Tensor | None = None, keep_out: torch.Tensor | None = None) -> EigenBottleneck:
    r"""The bottleneck :math:`Q_S[:,R]\;W^*_{R,C}\;Q_A[:,C]^\top` for layer ``m`` (all directions kept by default).

    Args:
        m: the ``nn.Conv2d`` or ``nn.Linear`` layer.
        Q_A: eigenvectors of :math:`A` (columns): ``[n(+1), n(+1)]`` for the unfolded form, ``[in, in]`` for the
            patch form.
        Q_S: ``[out, out]`` eigenvectors of :math:`S`.
        W_star: the weight in the eigenbasis: ``[out, n(+1)]`` (unfolded) or ``[out, kh*kw, in]`` (patch form,
            chosen by this shape).
        keep_in, keep_out: indices of the kept columns :math:`C` and rows :math:`R`.

    Raises:
        ValueError: shapes that do not fit the layer, or nothing kept on a side.

    Used in lesson 07.
    """
    keep_in = torch.arange(Q_A.shape[1]) if keep_in is None else torch.as_tensor(keep_in, dtype=torch.long)
    keep_out = torch.arange(Q_S.shape[1]) if keep_out is None else torch.as_tensor(keep_out, dtype=torch.long)
    if len(keep_in) == 0 or len(keep_out) == 0:
        raise ValueError("keep at least one direction on each side of a bottleneck (a zero rank disconnects the layer)")
    patch = W_star.dim() == 3 and isinstance(m, nn.Conv2d)
    spec = EigenBottleneck.layer_spec(m, len(keep_in), len(keep_out), patch)
    n = spec["in"] if patch else m.weight[0].numel() + (m.bias is not None)
    want = (Q_S.shape[1], m.weight[0, 0].numel(), Q_A.shape[1]) if patch else (Q_S.shape[1], Q_A.shape[1])
    if Q_A.shape[0] != n or Q_S.shape[0] != spec["out"] or tuple(W_star.shape) != want:
        raise ValueError(f"shapes do not fit the layer: Q_A {tuple(Q_A.shape)} (rows must be {n}), Q_S "
                         f"{tuple(Q_S.shape)} (rows {spec['out']}), W* {tuple(W_star.shape)} (expected {want})")
    b = EigenBottleneck(spec).to(device=m.weight.device, dtype=m.weight.dtype)
    core = W_star[keep_out][..., keep_in]
    bias = m.bias.detach() if (patch and m.bias is not None) else None
    set_bottleneck_matrices(b, Q_A[:, keep_in], core, Q_S[:, keep_out], bias)
    return b


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` is. Used in lesson 07."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def layer_param_count(m: nn.Module) -> int:
    """Parameters of a layer (weight and bias). Used in lesson 07."""
    return sum(p.numel() for p in m.parameters())


def bottleneck_param_count(m: nn.Module, r_in: int, r_out: int, patch: bool = False) -> int:
    """Parameters of the bottleneck with ranks ``r_in``, ``r_out`` replacing layer ``m`` (a Conv2d/Linear, or
    an :class:`EigenBottleneck` whose ranks change). Used in lesson 07."""
    if isinstance(m, EigenBottleneck):
        s = m.spec
        k = s["kernel_size"][0] * s["kernel_size"][1] if s["kind"] == "conv" else 1
        if m.patch:
            return r_in * s["in"] + k * r_in * r_out + s["out"] * r_out + s["out"] * s["bias"]
        return r_in * (s["in"] * k + s["bias"]) + r_out * r_in + s["out"] * r_out
    out, has_bias = m.weight.shape[0], m.bias is not None
    if patch and isinstance(m, nn.Conv2d):
        k = m.weight[0, 0].numel()
        return r_in * m.in_channels + k * r_in * r_out + out * r_out + out * has_bias
    n = m.weight[0].numel() + has_bias
    return r_in * n + r_out * r_in + out * r_out


def bottlenecks(model: nn.Module) -> dict[str, EigenBottleneck]:
    """``{name: bottleneck}`` of every :class:`EigenBottleneck` in ``model``. Used in lesson 07."""
    return {n: m for n, m in model.named_modules() if isinstance(m, EigenBottleneck)}


def _rebuild(cfg: dict, specs: dict[str, dict]) -> nn.Module:
    from pruninglib.models import build_model

    model = build_model(cfg["name"], **cfg["kwargs"])
    for name, spec in specs.items():
        replace_module(model, name, EigenBottleneck(spec))
    return model


def save_bottlenecked(model: nn.Module, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Save a model with eigenbasis bottlenecks through :func:`pruninglib.checkpoint.save_checkpoint`.

    Raises:
        ValueError: no ``pl_config`` (build the model with :func:`pruninglib.models.build_model`), or
            the model is not the config's model with bottlenecks swapped in (e.g. also thinned by
            :mod:`pruninglib.core.surgery`): checked before anything is written.

    Used in lesson 07.
    """
    cfg = getattr(model, "pl_config", None)
    if cfg is None:
        raise ValueError("model has no pl_config: build it with pruninglib.models.build_model(name, ...) "
                         "so the checkpoint can rebuild the architecture")
    specs = {n: dict(b.spec) for n, b in bottlenecks(model).items()}
    want = {k: tuple(v.shape) for k, v in _rebuild(cfg, specs).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != have:
        bad = sorted(set(want) ^ set(have)) + [k for k in want if k in have and want[k] != have[k]]
        raise ValueError(f"the model is not its pl_config's model with bottlenecks swapped in ({bad[:4]} differ); "
                         "save_bottlenecked stores bottlenecks only (thin layers: use checkpoint.save_pruned first)")
    payload = {"format": _FORMAT, "config": dict(cfg), "bottlenecks": specs,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "extra": extra or {}}
    return save_checkpoint(payload, path)


def load_bottlenecked(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load a model saved by :func:`save_bottlenecked` (checksum verified first).

    Raises:
        ValueError: the file is not an eigenbasis checkpoint. (Corrupt files: see :func:`load_checkpoint`.)

    Used in lesson 07.
    """
    payload = load_checkpoint(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not an eigenbasis checkpoint (written by save_bottlenecked); "
                         "load other files with checkpoint.load_checkpoint or load_pruned")
    model = _rebuild(payload["config"], payload["bottlenecks"])
    model.load_state_dict(payload["state_dict"])
    model.pl_extra = payload.get("extra", {})
    return model
