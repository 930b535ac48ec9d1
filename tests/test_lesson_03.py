"""Lesson 03's bookkeeping in :mod:`pruninglib.lessons.correlation`: counting a greedy curve."""
from __future__ import annotations

import pytest

from pruninglib.lessons.correlation import units_before_rise
from pruninglib.methods.schedule import GreedyResult

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


def _curve():
    # unpruned loss 0.5; rises by 0.1, 0.15, 0.3, 1.2 after 2, 4, 6, 8 units
    return GreedyResult(units_removed=[0, 2, 4, 6, 8], losses=[0.5, 0.6, 0.65, 0.8, 1.7], count=6, threshold=1.0)


def test_units_before_rise_counts_up_to_the_first_crossing():
    r = _curve()
    assert units_before_rise(r, 1.0) == r.count == 6
    assert units_before_rise(r, 0.2) == 4
    assert units_before_rise(r, 0.05) == 0  # the first step already rises too much
    assert units_before_rise(r, 10.0) == 8  # never crossed: all the units of the curve


def test_units_before_rise_stops_at_the_first_crossing():
    # the curve falls back under the threshold later: the count stays at the first crossing
    r = GreedyResult(units_removed=[0, 1, 2, 3], losses=[1.0, 1.5, 1.1, 1.2])
    assert units_before_rise(r, 0.3) == 0


def test_units_before_rise_matches_greedy_prune():
    import torch
    from pruninglib.methods.schedule import greedy_prune, greedy_scorer
    from pruninglib.models import LeNet3

    torch.manual_seed(0)
    model = LeNet3(widths=(4, 6, 8, 6)).eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(20, 1, 28, 28, generator=g), torch.randint(0, 10, (20,), generator=g))]
    r = greedy_prune(model, batches, greedy_scorer("weight_l2"), step=2, max_loss_increase=0.05)
    assert units_before_rise(r, 0.05) == r.count


def test_units_before_rise_needs_a_curve():
    with pytest.raises(ValueError, match="no loss curve"):
        units_before_rise(GreedyResult(units_removed=[], losses=[]), 1.0)
    with pytest.raises(ValueError, match="no loss curve"):
        units_before_rise(GreedyResult(units_removed=[0, 1], losses=[0.3]), 1.0)
