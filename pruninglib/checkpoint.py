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
           "save_pruned", "load_pruned", "CheckpointError", "ChecksumError", "InterruptedWriteError",
           "Resumable", "fit_resumable", "capture_rng", "restore_rng", "RESUME_FORMAT", "KILL_AFTER_SAVES_ENV"]

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
            # groups: a pruned depthwise conv (MobileNetV2, lesson 08) changes it with its widths
            out[n] = {"kind": kind, "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
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
        if not same_kind or shape.keys() - {"kind", "groups"} != have.keys() - {"kind", "groups"}:  # type: ignore[union-attr]
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
        m.groups = shape.get("groups", m.groups)  # files written before groups were stored keep the built value
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


# ------------------------------------------------------------------ resumable loops

RESUME_FORMAT = "pruninglib.resume/1"
#: Test hook (issue 18): with ``PRUNINGLIB_TEST_KILL_AFTER_SAVES=N`` the process SIGKILLs itself right after
#: the N-th :meth:`Resumable.save`, as a power cut or ``kill -9`` in the middle of a long phase would.
KILL_AFTER_SAVES_ENV = "PRUNINGLIB_TEST_KILL_AFTER_SAVES"
_saves_done = 0


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random state a training loop reads: torch's (CPU and CUDA), NumPy's, Python's, and ``generator``'s
    (a DataLoader's shuffling generator). Used by :class:`Resumable` (lessons 02, 03, 04 and 06)."""
    import random

    import numpy as np

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Put back what :func:`capture_rng` captured. Used by :class:`Resumable` (lessons 02, 03, 04 and 06)."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())


class Resumable:
    """A long loop that checkpoints after every unit of work (an epoch, an iteration) and resumes where it stopped.

    The generalisation of lesson 05's :func:`pruninglib.lessons.rethinking.train_resumable`: after unit ``k``
    the state of every object given (``model=``, ``optimizer=``, ``scheduler=``: anything with ``state_dict``
    and ``load_state_dict``), every random state (:func:`capture_rng`, the loader's shuffling generator
    included), the units done and the loop's history go into one :func:`save_checkpoint` file (atomic, checksum
    in the header). Run again with the same settings, :meth:`resume` restores all of it, so the loop continues
    with exactly the state it had: on the CPU the result is bit-identical to an uninterrupted run. A checkpoint
    written with other settings (``signature``) or for a model of other shapes is refused with a message that
    names the fix. Used in lessons 02, 03 (also the greedy loop of :func:`pruninglib.methods.schedule.greedy_prune`),
    04, 06, 07 and 08 (:func:`fit_resumable`).

    Args:
        path: the checkpoint file (``None``: no checkpointing; :meth:`resume` starts from 0).
        signature: everything the loop's result depends on (JSON-like); compared on resume.
        **objects: the stateful objects to save and restore.
    """

    def __init__(self, path: str | os.PathLike | None, signature: dict[str, Any], **objects: Any) -> None:
        self.path = Path(path) if path is not None else None
        self.signature = {k: (list(v) if isinstance(v, tuple) else v) for k, v in signature.items()}
        self.objects = {k: v for k, v in objects.items() if v is not None}

    def resume(self, generator: torch.Generator | None = None) -> tuple[int, list]:
        """``(units done, history)`` from the checkpoint, every object and random state restored; ``(0, [])``
        when there is none.

        Raises:
            ValueError: the checkpoint was written with another signature or for other shapes.
            CheckpointError: the file is corrupt or incomplete (see :func:`load_checkpoint`).
        """
        if self.path is None or not self.path.exists():
            return 0, []
        device = "cpu"
        model = self.objects.get("model")
        if isinstance(model, nn.Module):
            p = next(model.parameters(), None)
            device = p.device if p is not None else "cpu"
        state = load_checkpoint(self.path, map_location=device)
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise ValueError(f"{self.path} is not a pruninglib resume checkpoint; delete it to start the phase afresh")
        if state.get("signature") != self.signature:
            raise ValueError(f"checkpoint {self.path} was written with other settings ({state.get('signature')} "
                             f"instead of {self.signature}); delete it to start this phase afresh")
        for name, obj in self.objects.items():
            if name not in state["objects"]:
                raise ValueError(f"checkpoint {self.path} holds no state for {name!r}; delete it to start afresh")
            if isinstance(obj, nn.Module):
                problems = _weight_mismatches(obj, state["objects"][name])
                _refuse(problems, f"checkpoint {self.path} holds a {name} of other layers or widths",
                        "Delete it (or rerun with the settings that wrote it)")
            obj.load_state_dict(state["objects"][name])
        restore_rng(state["rng"], generator)
        return int(state["done"]), list(state["history"])

    def save(self, done: int, history: list, generator: torch.Generator | None = None) -> None:
        """Checkpoint after ``done`` units (atomically: a kill during the write leaves the previous checkpoint)."""
        global _saves_done
        if self.path is None:
            return
        save_checkpoint({"format": RESUME_FORMAT, "signature": self.signature, "done": int(done),
                         "history": list(history), "rng": capture_rng(generator),
                         "objects": {k: v.state_dict() for k, v in self.objects.items()}}, self.path)
        _saves_done += 1
        limit = os.environ.get(KILL_AFTER_SAVES_ENV)
        if limit and _saves_done >= int(limit):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    def clear(self) -> None:
        """Remove the checkpoint (the phase's result is stored elsewhere now)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def fit_resumable(model: nn.Module, train_loader: Any, epochs: int, ckpt_path: str | os.PathLike | None = None,
                  signature: dict[str, Any] | None = None, optimizer: torch.optim.Optimizer | None = None,
                  scheduler: Any | None = None, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
                  on_epoch_end: Any | None = None, extra_state: dict[str, Any] | None = None,
                  **fit_kwargs: Any) -> list[dict[str, float]]:
    """:func:`pruninglib.train.fit` with a checkpoint after every epoch, resumed where it stopped (:class:`Resumable`).

    Runs ``fit`` one epoch at a time -- the same calls in the same order as one ``fit(model, loader, epochs)``,
    so the numbers are the same -- and after each epoch saves the model, the optimizer, the scheduler, the
    random states (the loader's generator included) and the history to ``ckpt_path``. Called again with the
    same arguments after a kill, it continues from the last finished epoch; on the CPU the final weights are
    bit-identical to an uninterrupted run. ``ckpt_path=None`` is plain ``fit``.

    Args:
        model, train_loader, epochs, optimizer, scheduler, lr, momentum, weight_decay, on_epoch_end,
            **fit_kwargs: as for :func:`pruninglib.train.fit` (the optimizer is made the same way when ``None``).
        ckpt_path: the checkpoint file (e.g. :func:`pruninglib.cache.work_path`); removed by the caller when done.
        signature: what the result depends on, checked on resume (``epochs`` is added).
        extra_state: more stateful objects saved and restored with the model, ``{name: object with state_dict}``
            (e.g. lesson 06's APG optimizer of the block scales and its schedule).

    Returns:
        The history, one dict per epoch (``epoch`` counts from 1 over the whole run).

    Used in lessons 02, 03, 04, 06, 07 and 08.
    """
    from pruninglib.train import fit

    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if ckpt_path is None:
        return fit(model, train_loader, epochs, optimizer=optimizer, scheduler=scheduler, on_epoch_end=on_epoch_end,
                   **fit_kwargs)
    generator = getattr(train_loader, "generator", None)
    extra = dict(extra_state or {})
    clash = {"model", "optimizer", "scheduler"} & set(extra)
    if clash:
        raise ValueError(f"extra_state may not use the names {sorted(clash)}: they are fit_resumable's own")
    state = Resumable(ckpt_path, {**(signature or {}), "epochs": int(epochs)}, model=model, optimizer=optimizer,
                      scheduler=scheduler, **extra)
    start, history = state.resume(generator)
    if start:
        print(f"[resume] {Path(ckpt_path).name}: continuing after epoch {start} of {epochs}")
    for epoch in range(start, epochs):
        row = fit(model, train_loader, 1, optimizer=optimizer, scheduler=scheduler, **fit_kwargs)[0]
        row["epoch"] = epoch + 1
        history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        state.save(epoch + 1, history, generator)
    return history
