"""Seeds, device choice and small shared helpers used by every lesson."""
from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

__all__ = ["set_seed", "get_device", "describe_device", "seed_worker", "make_generator", "choose_mode", "MODES"]


def set_seed(seed: int = 0, deterministic: bool = True) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA).

    With ``deterministic=True`` PyTorch is asked for deterministic kernels, so the
    same seed gives bit-identical results on the CPU.

    Args:
        seed: the seed.
        deterministic: also switch on ``torch.use_deterministic_algorithms`` (warn only).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:  # pragma: no cover - runs in DataLoader workers
    """``worker_init_fn`` for DataLoaders: derive NumPy/random seeds from torch's."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_generator(seed: int = 0) -> torch.Generator:
    """A seeded ``torch.Generator`` for DataLoader shuffling."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def get_device(prefer: str | None = None) -> torch.device:
    """Pick the device: ``cuda``, then ``mps``, then ``cpu``.

    Args:
        prefer: force a device (``"cpu"``, ``"cuda"``, ...); ``PRUNINGLIB_DEVICE`` does the same.
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
    """One line naming the device, thread count and torch version (for tables and logs)."""
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
    """
    if mode not in settings:
        raise ValueError(f"MODE must be one of {list(settings)}, got {mode!r}")
    return dict(settings[mode])
