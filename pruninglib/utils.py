"""Seeds, device choice and small shared helpers used by every lesson."""
from __future__ import annotations

import os
import platform
import random
from typing import Any

import numpy as np
import torch

__all__ = ["set_seed", "get_device", "describe_device", "make_generator", "choose_mode", "setup", "smoke_settings", "is_smoke",
           "close_bar", "MODES"]


def set_seed(seed: int = 0, deterministic: bool = True) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA). Used in every lesson.

    With ``deterministic=True`` PyTorch is asked for deterministic kernels, so the
    same seed gives bit-identical results on the CPU.

    Args:
        seed: the seed, a non-negative integer (a lesson's ``SEED`` parameter).
        deterministic: also switch on ``torch.use_deterministic_algorithms`` (warn only).

    Raises:
        TypeError: ``seed`` is not an integer (e.g. ``-p SEED 1.5``).
        ValueError: ``seed`` is negative.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"SEED must be an integer (e.g. -p SEED 1), got {seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"SEED must be >= 0, got {seed}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        # Paper mode on a GPU trades determinism for speed (pruninglib.accel); elsewhere a no-op.
        from pruninglib import accel

        accel.apply_backends()


def make_generator(seed: int = 0) -> torch.Generator:
    """A seeded ``torch.Generator`` for DataLoader shuffling. Used in lessons 00, 02, 03, 04, 05 and 06."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def get_device(prefer: str | None = None) -> torch.device:
    """Pick the device: ``cuda``, then ``mps``, then ``cpu``.

    Args:
        prefer: force a device (``"cpu"``, ``"cuda"``, ...); ``PRUNINGLIB_DEVICE`` does the same.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    prefer = prefer or os.environ.get("PRUNINGLIB_DEVICE")
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device: torch.device | None = None) -> str:
    """One line naming the device, thread count and torch version (for tables and logs).

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    device = device or get_device()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = "Apple MPS"
    else:
        name = platform.processor() or platform.machine()
    return (f"{device.type} ({name}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


MODES = ("quick", "laptop", "paper")


def choose_mode(mode: str, settings: dict[str, dict]) -> dict:
    """The settings for ``mode`` from ``{"quick": {...}, "laptop": {...}, "paper": {...}}``.

    Raises:
        ValueError: for an unknown mode, listing the valid ones.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    if mode not in settings:
        raise ValueError(f"MODE must be one of {list(settings)}, got {mode!r}")
    return dict(settings[mode])


def smoke_settings(mode: str, modes: dict[str, dict]) -> dict:
    """Paper mode's settings with the ``"smoke"`` overrides on top (``--smoke``, issue 18).

    A smoke run executes paper mode's *code path* -- the same models, schedules and code -- with
    every loop capped and every dataset cut to a few examples, so a paper run cannot fail on a
    typo after hours on a GPU. A lesson lists its caps under ``modes["smoke"]``: only loop counts,
    epochs, batch counts and dataset sizes belong there, never a model or a method. Used by
    :func:`setup` in every lesson.

    Raises:
        ValueError: ``mode`` is not ``"paper"``, or the lesson has no ``"smoke"`` caps.
    """
    if mode != "paper":
        raise ValueError(f"SMOKE = True runs paper mode's code path with capped loops: set MODE = \"paper\" "
                         f"(python -m pruninglib.run --smoke does), got MODE = {mode!r}")
    if "smoke" not in modes or "paper" not in modes:
        raise ValueError("SMOKE = True needs the lesson's modes to have \"paper\" settings and \"smoke\" caps")
    unknown = sorted(set(modes["smoke"]) - set(modes["paper"]))
    if unknown:
        raise ValueError(f"smoke caps may only override paper settings; not in paper mode: {unknown}")
    return {**modes["paper"], **modes["smoke"], "smoke": True}


def is_smoke() -> bool:
    """Whether this process runs a smoke run (``setup(..., smoke=True)`` sets ``PRUNINGLIB_SMOKE=1``).

    Library code reads it to label what it prints and saves as a smoke result. Used in every lesson.
    """
    return os.environ.get("PRUNINGLIB_SMOKE", "") == "1"


def setup(mode: str, seed: int = 0, threads: int | None = None, modes: dict[str, dict] | None = None,
          show_data: bool = True, smoke: bool = False) -> dict:
    """What every lesson does first: pick the mode's settings, set threads and seeds, choose the
    device, set the run's GPU switches (:func:`pruninglib.accel.configure`: on in paper mode on a
    GPU only), and print a banner (version, mode, seed, device, the GPU switches, and the datasets
    found on the search path). Used in every lesson's first code cell.

    Args:
        mode: the lesson's ``MODE`` parameter (``"quick"``, ``"laptop"`` or ``"paper"``).
        seed: the lesson's ``SEED`` parameter (:func:`set_seed`).
        threads: the lesson's ``THREADS`` parameter: torch CPU threads; ``None`` takes the mode's
            ``"threads"`` setting if it has one, else leaves torch's default.
        modes: ``{"quick": {...}, "laptop": {...}, "paper": {...}}`` settings per mode
            (:func:`choose_mode`). A ``"device"`` setting forces a device for that mode.
        show_data: also list the datasets found in each folder of the search path.
        smoke: the lesson's ``SMOKE`` parameter: paper mode's code path with the lesson's
            ``modes["smoke"]`` caps (:func:`smoke_settings`); the banner says so.

    Returns:
        The mode's settings (a new dict) with ``"device"`` set to the chosen ``torch.device``
        and ``"smoke"`` (True in a smoke run, else False).

    Raises:
        ValueError: an unknown mode, a non-positive ``threads``, or ``smoke`` outside paper mode.
        TypeError: a non-integer ``seed`` or ``threads``.
    """
    modes = modes if modes is not None else {m: {} for m in MODES}
    if not isinstance(smoke, bool):
        raise TypeError(f"SMOKE must be True or False, got {smoke!r}")
    if smoke:
        cfg = smoke_settings(mode, modes)
        os.environ["PRUNINGLIB_SMOKE"] = "1"
    else:
        cfg = choose_mode(mode, {m: v for m, v in modes.items() if m != "smoke"})
        cfg["smoke"] = False
        os.environ.pop("PRUNINGLIB_SMOKE", None)
    threads = threads if threads is not None else cfg.get("threads")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
            raise TypeError(f"THREADS must be an integer or None, got {threads!r}")
        if threads <= 0:
            raise ValueError(f"THREADS must be positive (or None for torch's default), got {threads}")
        torch.set_num_threads(int(threads))
    set_seed(seed)
    device = get_device(cfg.get("device"))
    cfg["device"] = device
    from pruninglib import __version__, accel

    policy = accel.configure(mode, device)  # the GPU switches of this run: on in paper mode on a GPU only
    shown = "paper (SMOKE: paper code path, loops capped, a few examples; not results)" if smoke else mode
    print(f"pruninglib {__version__} | mode: {shown} | seed: {seed} | {describe_device(device)}")
    print(policy.describe())
    if show_data:
        from pruninglib import data

        print("data search path:")
        for p in data.search_path():
            found = [n + (" (stand-in)" if spec.folder and (p / spec.folder / data.STANDIN_MARKER).exists() else "")
                     for n, spec in data.DATASETS.items() if spec.present(p)]
            print(f"  {p.resolve()}  ->  {', '.join(found) or 'nothing'}")
    return cfg


def close_bar(bar: Any) -> None:
    """Close a tqdm bar as complete at the count it reached.

    A loop that stops before (or runs past) the total it announced -- a greedy schedule that
    stops at its loss threshold, a search that meets its target early -- would leave the
    notebook widget red ("danger"), which a learner reads as a failure. Used in lessons 03 and 06.
    """
    if bar.total is not None and bar.n != bar.total:
        bar.total = bar.n
        bar.refresh()
    bar.close()
