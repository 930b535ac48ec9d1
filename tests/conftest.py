"""Shared test set-up: offline, headless, deterministic."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PRUNINGLIB_OFFLINE", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
