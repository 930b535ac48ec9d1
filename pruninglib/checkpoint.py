"""Save and load models and training state: atomically, self-verifying, pruned shapes included.

The complaint users of every pruning repo share: ``load_state_dict`` fails with a shape
mismatch after pruning, because the code rebuilds the *unpruned* architecture.
:func:`save_pruned` stores the model's constructor call (``model.pl_config``, set by
:func:`pruninglib.models.build_model`) plus the shape of every Conv2d, Linear and BatchNorm;
:func:`load_pruned` rebuilds the model, checks that the stored config and shapes describe the
same architecture as the weights, resizes those layers, and loads the weights.

File format (``pruninglib checkpoint/2``): one file, a fixed-size text header, then the
``torch.save`` bytes::

    PRUNINGLIB-CHECKPOINT/2
    size=<payload bytes, 20 digits> sha256=<SHA-256 of the payload>
    check=<first 16 hex digits of the SHA-256 of the two lines above>

The checksum travels with the file (copy just the ``.pt``) and is verified on every load.
A file shorter than its header says is reported as an interrupted write
(:class:`InterruptedWriteError`); anything else that does not match is corrupt data
(:class:`ChecksumError`). Files of the previous format (plain ``torch.save`` bytes with a
``<file>.sha256`` beside them) still load, verified against that side file.

Every write goes through :func:`pruninglib.atomic.atomic_write` (temporary file, fsync, one
``os.replace``, fsync of the folder): a killed write leaves either the previous file or the new
one, never a mix, and its orphan temporary file is removed by the next write to the folder.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn

from pruninglib.atomic import atomic_write, atomic_write_bytes

__all__ = ["atomic_write_bytes", "sha256_file", "save_checkpoint", "load_checkpoint",
           "save_pruned", "load_pruned", "CheckpointError", "ChecksumError", "InterruptedWriteError"]

MAGIC = b"PRUNINGLIB-CHECKPOINT/2\n"
_HEADER_RE = re.compile(rb"size=(\d{20}) sha256=([0-9a-f]{64})\ncheck=([0-9a-f]{16})\n")
_CHECK_LEN = len(b"check=") + 16 + 1
HEADER_LEN = len(MAGIC) + len(b"size=") + 20 + len(b" sha256=") + 64 + 1 + _CHECK_LEN
_REGENERATE = "delete it and rerun the step that saved it (or copy it again from where it came from)"
_PRUNED_FORMAT = "pruninglib.pruned/1"


class CheckpointError(OSError):
    """A checkpoint file cannot be used (base of :class:`ChecksumError` and :class:`InterruptedWriteError`).

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """


class ChecksumError(CheckpointError):
    """A file's bytes do not match their checksum, or it has no valid checksum: corrupt or unverifiable.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """


class InterruptedWriteError(CheckpointError):
    """A file is shorter than its header says: the write (or copy) that produced it was cut short.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (all its bytes, header included), e.g. to compare copies by hand.

    Not called by the lessons; kept for users and the previous format's ``.sha256`` side files.

    No lesson calls it directly (its tests do).
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ atomic writes


def _atomic_write(path: Path, parts: Iterable[bytes | memoryview]) -> Path:
    """:func:`pruninglib.atomic.atomic_write`, then drop a ``.sha256`` of the previous format (now stale)."""
    atomic_write(path, parts)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    return path


def _header(payload: bytes | memoryview) -> bytes:
    body = MAGIC + b"size=%020d sha256=%s\n" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
    return body + b"check=%s\n" % hashlib.sha256(body).hexdigest()[:16].encode()


# ------------------------------------------------------------------ verified reads


def _is_ours(head: bytes) -> bool:
    """The file starts like the current format (a damaged magic line still counts)."""
    return (head.startswith(MAGIC) or MAGIC.startswith(head)
            or head[len(MAGIC):len(MAGIC) + 5] == b"size=")


def _interrupted(path: Path, have: int, want: int | None) -> InterruptedWriteError:
    of = f"{have} of {want} bytes" if want is not None else f"{have} bytes, not even a complete header"
    return InterruptedWriteError(f"{path} is incomplete ({of}): the write that produced it was interrupted "
                                 f"(process killed, disk full, or a copy cut short); {_REGENERATE}")


def _corrupt(path: Path, what: str) -> ChecksumError:
    return ChecksumError(f"{path} is corrupt: {what}; the file changed after it was written "
                         f"(disk or transfer error, or an edit); {_REGENERATE}")


def _parse_header(path: Path, head: bytes) -> tuple[int, str]:
    """``(payload size, payload SHA-256)`` from a complete, intact header."""
    if len(head) < HEADER_LEN:
        raise _interrupted(path, len(head), None)
    m = _HEADER_RE.fullmatch(head, len(MAGIC))
    body = head[:HEADER_LEN - _CHECK_LEN]
    if not head.startswith(MAGIC) or m is None or hashlib.sha256(body).hexdigest()[:16] != m[3].decode():
        raise _corrupt(path, "its header is damaged")
    return int(m[1]), m[2].decode()


def _read_current(path: Path, head: bytes, payload: bytes) -> bytes:
    size, want = _parse_header(path, head)
    if len(payload) < size:
        raise _interrupted(path, HEADER_LEN + len(payload), HEADER_LEN + size)
    if len(payload) > size:
        raise _corrupt(path, f"{len(payload) - size} bytes more than its header records")
    got = hashlib.sha256(payload).hexdigest()
    if got != want:
        raise _corrupt(path, f"SHA-256 of its contents is {got[:12]}... but its header records {want[:12]}...")
    return payload


def _legacy_digest(side: Path) -> str:
    """The digest in a ``<file>.sha256`` of the previous format (``<64 hex>  <name>``)."""
    words = side.read_text(errors="replace").split()
    fix = f"delete it and {side.name[:-len('.sha256')]}, then regenerate them (rerun the step that saved them)"
    if not words:
        raise ChecksumError(f"{side} is empty, so its file cannot be verified; {fix}")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
        raise ChecksumError(f"{side} is malformed (expected '<64 hex digits>  <file name>', "
                            f"got {words[0][:20]!r}); {fix}")
    return words[0].lower()


def _read_legacy(path: Path, data: bytes) -> bytes:
    """Verify a file of the previous format against the ``.sha256`` beside it."""
    side = path.with_name(path.name + ".sha256")
    if not side.exists():
        raise ChecksumError(f"{path} has no checksum: it is not a pruninglib checkpoint/2 file and no "
                            f"{side.name} lies beside it, so it cannot be verified; regenerate it (rerun "
                            "the step that saved it: save_checkpoint/save_pruned now embed the checksum)")
    want, got = _legacy_digest(side), hashlib.sha256(data).hexdigest()
    if got != want:
        raise ChecksumError(f"{path} is corrupt or its save by pruninglib < 2 was interrupted (that version "
                            f"renamed {side.name} first): SHA-256 {got[:12]}... but {side.name} says "
                            f"{want[:12]}...; delete both files and regenerate them (rerun the step that saved it)")
    return data


def _read_verified(path: Path) -> bytes:
    """The ``torch.save`` bytes of ``path``, verified; raises :class:`CheckpointError` subclasses."""
    with open(path, "rb") as f:
        head = f.read(HEADER_LEN)
        rest = f.read()
    if _is_ours(head):
        return _read_current(path, head, rest)
    return _read_legacy(path, head + rest)


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` into one self-verifying file, atomically (training state, caches).

    The SHA-256 of the contents is in the file's header (see the module docstring). Used in
    lesson 05 (:func:`pruninglib.lessons.rethinking.train_resumable`) and by
    :func:`pruninglib.cache.cached` (lessons 01, 04, 06).
    """
    buf = io.BytesIO()
    torch.save(obj, buf)  # before anything is written: an unpicklable object changes nothing
    payload = buf.getbuffer()
    return _atomic_write(Path(path), [_header(payload), payload])


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`save_checkpoint`, verifying its checksum first.

    Files of the previous format load when their ``<file>.sha256`` lies beside them.
    Used in lesson 05 and by :func:`pruninglib.cache.cached`.

    Raises:
        FileNotFoundError: no file at ``path``.
        InterruptedWriteError: the file is incomplete (its write or copy was cut short).
        ChecksumError: the bytes do not match their checksum, or there is no valid checksum.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = _read_verified(path)
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)


# ------------------------------------------------------------------ pruned models


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Conv2d):
        return "Conv2d"
    if isinstance(m, nn.Linear):
        return "Linear"
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return type(m).__name__
    return None


def _shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for n, m in model.named_modules():
        kind = _kind(m)
        if kind == "Conv2d":
            out[n] = {"kind": kind, "in": m.in_channels, "out": m.out_channels}
        elif kind == "Linear":
            out[n] = {"kind": kind, "in": m.in_features, "out": m.out_features}
        elif kind is not None:
            out[n] = {"kind": kind, "out": m.num_features}
    return out


def _describe(cfg: dict) -> str:
    kw = ", ".join(f"{k}={v!r}" for k, v in cfg.get("kwargs", {}).items())
    return f"build_model({cfg.get('name')!r}{', ' if kw else ''}{kw})"


def _build(cfg: dict, meta: bool = False) -> nn.Module:
    """The model ``cfg`` describes (on the meta device: structure only, no memory, no init cost)."""
    from pruninglib.models import build_model

    if meta:
        try:
            with torch.device("meta"):
                return build_model(cfg["name"], **cfg["kwargs"])
        except (NotImplementedError, RuntimeError):  # a constructor that needs real tensors
            pass
    return build_model(cfg["name"], **cfg["kwargs"])


def _structure_mismatches(model: nn.Module, other: nn.Module) -> list[str]:
    """Modules whose name or type differ between ``model`` and the rebuilt ``other``."""
    mine = {n: type(m).__name__ for n, m in model.named_modules()}
    theirs = {n: type(m).__name__ for n, m in other.named_modules()}
    out = [f"{n} is {t} here but {theirs.get(n, 'missing')} in the rebuilt model"
           for n, t in mine.items() if theirs.get(n) != t]
    return out + [f"{n} ({t}) is missing here" for n, t in theirs.items() if n not in mine]


def _shape_mismatches(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> list[str]:
    """Stored layer shapes that name no layer of that kind in the model built from the config."""
    named, built = dict(model.named_modules()), _shapes(model)
    out = []
    for name, shape in shapes.items():
        have = built.get(name)
        there = type(named[name]).__name__ if name in named else "nothing"
        same_kind = have is not None and shape.get("kind", have["kind"]) == have["kind"]
        if not same_kind or shape.keys() - {"kind"} != have.keys() - {"kind"}:  # type: ignore[union-attr]
            stored = shape.get("kind", "layer with " + "/".join(sorted(shape)))
            out.append(f"{name} is a {stored} in the file but {there} in the config's model")
    return out + [f"{n} ({s['kind']}) is in the config's model but not in the file"
                  for n, s in built.items() if n not in shapes]


def _weight_mismatches(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Tensors of ``state`` missing from, extra to, or shaped unlike the (resized) model's."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out = [f"{k} is missing from the weights" for k in want if k not in state]
    out += [f"{k} is in the weights but not in the model" for k in state if k not in want]
    return out + [f"{k} is {tuple(state[k].shape)} in the weights but {want[k]} per the stored shapes"
                  for k in want if k in state and tuple(state[k].shape) != want[k]]


def _refuse(problems: list[str], intro: str, fix: str) -> None:
    if problems:
        more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
        raise ValueError(f"{intro}: {'; '.join(problems[:6])}{more}. {fix}")


def save_pruned(model: nn.Module, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Save a (possibly pruned) pruninglib model as one self-describing, self-verifying file.

    Args:
        model: built with :func:`pruninglib.models.build_model` (so it has ``pl_config``);
            gates should be removed first (:func:`pruninglib.core.gates.remove_gates`).
        path: destination file.
        extra: anything else to store (metrics, history).

    Raises:
        ValueError: no ``pl_config``, gates still attached, or a ``pl_config`` that does not
            describe the model (a layer swapped by hand): checked before anything is written.

    Used in lessons 00 and 04.
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
    _refuse(_structure_mismatches(model, _build(cfg, meta=True)),
            f"model.pl_config {_describe(cfg)} does not describe this model (loading the file would "
            "rebuild another one)",
            "Change layers only with pruninglib.core.surgery, or build the model you want with build_model")
    payload = {"format": _PRUNED_FORMAT, "config": cfg, "shapes": _shapes(model),
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


def _check_payload(path: Path, payload: Any) -> None:
    ok = (isinstance(payload, dict) and payload.get("format") == _PRUNED_FORMAT
          and isinstance(payload.get("config"), dict) and isinstance(payload.get("shapes"), dict)
          and isinstance(payload.get("state_dict"), dict) and {"name", "kwargs"} <= payload["config"].keys())
    if not ok:
        raise ValueError(f"{path} is not a pruninglib pruned-model file (written by save_checkpoint, not "
                         "save_pruned?); load it with load_checkpoint, or save the model with save_pruned")


def load_pruned(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the pruned architecture stored by :func:`save_pruned` and load its weights.

    Raises:
        InterruptedWriteError, ChecksumError: see :func:`load_checkpoint`.
        ValueError: not a pruned-model file, or its config, shapes and weights do not describe
            the same architecture (the message names every layer that does not match).

    Used in lessons 00 and 04.
    """
    path = Path(path)
    payload = load_checkpoint(path, map_location)
    _check_payload(path, payload)
    cfg, fix = payload["config"], "Re-save the model with save_pruned(model, path), or load the file it came from"
    try:
        model = _build(cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its stored config {_describe(cfg)} cannot be built ({e}). {fix}") from e
    intro = f"{path} does not fit its stored config {_describe(cfg)}"
    _refuse(_shape_mismatches(model, payload["shapes"]), intro, fix)
    named = dict(model.named_modules())
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}  # before resizing resets them
    for name, shape in payload["shapes"].items():
        _resize(named[name], shape)
    _refuse(_weight_mismatches(model, payload["state_dict"]), intro, fix)
    model.load_state_dict(payload["state_dict"])
    for n, p in model.named_parameters():
        p.requires_grad_(trainable.get(n, True))
    model.pl_extra = payload.get("extra", {})
    return model
