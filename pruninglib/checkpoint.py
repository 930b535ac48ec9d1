"""Save and load models and training state: atomically, with a checksum, pruned shapes included.

The complaint users of every pruning repo share: ``load_state_dict`` fails with a shape
mismatch after pruning, because the code rebuilds the *unpruned* architecture.
:func:`save_pruned` stores the model's constructor call (``model.pl_config``, set by
:func:`pruninglib.models.build_model`) plus the shape of every Conv2d, Linear and BatchNorm;
:func:`load_pruned` rebuilds the model, resizes those layers, and loads the weights.

Every file is written to a temporary name and renamed (``os.replace``), so an interrupted
write never leaves a half file, and a SHA-256 of the bytes is stored beside it
(``<file>.sha256``) and verified on load.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["atomic_write_bytes", "sha256_file", "save_checkpoint", "load_checkpoint",
           "save_pruned", "load_pruned", "ChecksumError"]


class ChecksumError(OSError):
    """A file does not match the SHA-256 recorded beside it."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, checksum: bool = True) -> Path:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``; add ``path.sha256``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if checksum:
            digest = hashlib.sha256(data).hexdigest()
            side = path.with_name(path.name + ".sha256")
            fd2, tmp2 = tempfile.mkstemp(dir=path.parent, prefix=f".{side.name}.", suffix=".tmp")
            with os.fdopen(fd2, "w") as f:
                f.write(f"{digest}  {path.name}\n")
            os.replace(tmp2, side)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _verify(path: Path) -> None:
    side = path.with_name(path.name + ".sha256")
    if side.exists():
        want = side.read_text().split()[0]
        got = sha256_file(path)
        if want != got:
            raise ChecksumError(f"{path} is corrupt: SHA-256 {got[:12]}... but {side.name} says "
                                f"{want[:12]}...; delete both files and recompute/redownload")


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` atomically with a SHA-256 side file (training state, caches)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`save_checkpoint`, verifying its checksum first."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    _verify(path)
    return torch.load(path, map_location=map_location, weights_only=False)


def _shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[n] = {"in": m.in_channels, "out": m.out_channels}
        elif isinstance(m, nn.Linear):
            out[n] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            out[n] = {"out": m.num_features}
    return out


def save_pruned(model: nn.Module, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Save a (possibly pruned) pruninglib model as one self-describing file.

    Args:
        model: built with :func:`pruninglib.models.build_model` (so it has ``pl_config``);
            gates should be removed first (:func:`pruninglib.core.gates.remove_gates`).
        path: destination file.
        extra: anything else to store (metrics, history).
    """
    cfg = getattr(model, "pl_config", None)
    if cfg is None:
        raise ValueError("model has no pl_config: build it with pruninglib.models.build_model(name, ...) "
                         "so the checkpoint can rebuild the architecture")
    if any(hasattr(m, "pl_gate") for m in model.modules()):
        raise ValueError("model still has gates; call pruninglib.core.gates.remove_gates(model) before saving")
    cfg = dict(cfg)
    if cfg["name"] == "vgg16_transfer":  # weights come from the file, never from a download
        cfg["kwargs"] = {**cfg["kwargs"], "pretrained": False}
    payload = {"format": "pruninglib.pruned/1", "config": cfg, "shapes": _shapes(model),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "extra": extra or {}}
    return save_checkpoint(payload, path)


def _resize(m: nn.Module, shape: dict[str, int]) -> None:
    if isinstance(m, nn.Conv2d):
        m.in_channels, m.out_channels = shape["in"], shape["out"]
        m.weight = nn.Parameter(m.weight.new_empty((shape["out"], shape["in"] // m.groups, *m.kernel_size)))
        if m.bias is not None:
            m.bias = nn.Parameter(m.bias.new_empty(shape["out"]))
    elif isinstance(m, nn.Linear):
        m.in_features, m.out_features = shape["in"], shape["out"]
        m.weight = nn.Parameter(m.weight.new_empty((shape["out"], shape["in"])))
        if m.bias is not None:
            m.bias = nn.Parameter(m.bias.new_empty(shape["out"]))
    else:
        n = shape["out"]
        m.num_features = n
        if m.affine:
            m.weight, m.bias = nn.Parameter(m.weight.new_empty(n)), nn.Parameter(m.bias.new_empty(n))
        if m.running_mean is not None:
            m.running_mean, m.running_var = m.running_mean.new_zeros(n), m.running_var.new_ones(n)


def load_pruned(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the pruned architecture stored by :func:`save_pruned` and load its weights."""
    from pruninglib.models import build_model

    payload = load_checkpoint(path, map_location)
    if payload.get("format") != "pruninglib.pruned/1":
        raise ValueError(f"{path} is not a pruninglib pruned-model file")
    model = build_model(payload["config"]["name"], **payload["config"]["kwargs"])
    named = dict(model.named_modules())
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}  # before resizing resets them
    for name, shape in payload["shapes"].items():
        _resize(named[name], shape)
    model.load_state_dict(payload["state_dict"])
    for n, p in model.named_parameters():
        p.requires_grad_(trainable.get(n, True))
    model.pl_extra = payload.get("extra", {})
    return model
