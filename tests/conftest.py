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


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (restored afterwards): tiny models are fastest there and
    time most reliably on a shared machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
