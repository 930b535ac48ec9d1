"""A small result cache keyed by parameters and the pruninglib version.

A class re-running a lesson should not retrain: ``cached("lenet3", {"epochs": 3, ...}, train)``
returns the stored result when the same parameters (and the same pruninglib version) were
computed before, otherwise it calls ``train()`` and stores what it returns. A changed
parameter or a new pruninglib version gives a new key, so stale results are never reused.

The folder is ``PRUNINGLIB_CACHE`` (default ``<repository>/cache``); ``PRUNINGLIB_NO_CACHE=1``
switches the cache off.

Entries are :func:`pruninglib.checkpoint.save_checkpoint` files (atomic, checksum in the
header). An entry that cannot be verified (corrupt, an interrupted write, or one of the
previous format whose ``.sha256`` is missing or damaged) is recomputed and replaced.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from pruninglib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["cache_dir", "cache_key", "cached", "work_path", "clear_work_paths", "state_fingerprint"]

T = TypeVar("T")


def cache_dir() -> Path:
    """The cache folder (created on first use). Used in lessons 01, 02, 03, 04, 05 and 06."""
    env = os.environ.get("PRUNINGLIB_CACHE")
    root = Path(env) if env else Path(__file__).resolve().parent.parent / "cache"
    return root


def cache_key(name: str, params: dict[str, Any]) -> str:
    """A stable hex key for ``name``, ``params`` and the pruninglib version.

    Used in lessons 01, 02, 03, 04, 05 and 06.
    """
    from pruninglib import __version__

    blob = json.dumps({"name": name, "params": params, "version": __version__}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def work_path(name: str, params: dict[str, Any]) -> Path | None:
    """Where the computation of ``cached(name, params, ...)`` keeps its in-progress checkpoint
    (``<cache>/<name>-<key>.partial.pt``; :class:`pruninglib.checkpoint.Resumable`), so a killed run resumes
    when the same command runs again; ``None`` when ``PRUNINGLIB_NO_CACHE`` is set (nothing is kept).
    :func:`cached` removes it once the result is stored. Used in lessons 02, 03, 04, 06, 07 and 08.
    """
    if os.environ.get("PRUNINGLIB_NO_CACHE"):
        return None
    return cache_dir() / f"{name}-{cache_key(name, params)}.partial.pt"


def clear_work_paths(name: str) -> int:
    """Remove every in-progress checkpoint :func:`work_path` made for ``name`` (any key); how many. A lesson
    whose phases keep their finished checkpoints until it is done (lessons 07 and 08's fine-tunes: a rerun
    after a kill reloads them) calls this at its end. Used in lessons 07 and 08.
    """
    if os.environ.get("PRUNINGLIB_NO_CACHE") or not cache_dir().exists():
        return 0
    n = 0
    for path in cache_dir().glob(f"{name}-*.partial.pt"):
        path.unlink(missing_ok=True)
        n += 1
    return n


def state_fingerprint(model: Any) -> str:
    """A short hash of a model's parameter and buffer names and values (a key for work that starts from
    those weights, e.g. a fine-tune of a pruned network). Used in lessons 07 and 08."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]


def cached(name: str, params: dict[str, Any], compute: Callable[[], T], verbose: bool = True) -> T:
    """Return ``compute()``'s result, computed once per (name, params, version).

    Used in lessons 01, 04 and 06 (and by :mod:`pruninglib.lessons.lenet3`, lessons 02 and 03).

    Args:
        name: what is cached (part of the file name).
        params: everything the result depends on (JSON-like values).
        compute: the function that computes it; its result must be ``torch.save``-able.
        verbose: print whether the result was loaded or computed.
    """
    if os.environ.get("PRUNINGLIB_NO_CACHE"):
        return compute()
    path = cache_dir() / f"{name}-{cache_key(name, params)}.pt"
    if path.exists():
        try:
            result = load_checkpoint(path)
            if verbose:
                print(f"[cache] loaded {name} from {path}")
            return result
        except (CheckpointError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
            print(f"[cache] ignoring unreadable {path} ({type(e).__name__}: {e}); recomputing it")
    result = compute()
    save_checkpoint(result, path)
    partial = work_path(name, params)
    if partial is not None:
        partial.unlink(missing_ok=True)  # the phase's in-progress checkpoint is no longer needed
    if verbose:
        print(f"[cache] stored {name} in {path}")
    return result
