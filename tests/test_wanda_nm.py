"""Lesson 09: Wanda's scores and per-row comparison, magnitude masks, and N:M masks
(pruninglib.methods.wanda, nm_sparsity)."""
from __future__ import annotations

import pytest
import torch

from pruninglib.methods.nm_sparsity import layer_mask, nm_mask, nm_problems, row_mask, semi_structured_available
from pruninglib.methods.sparsegpt import sparsegpt_prune
from pruninglib.methods.obc import layer_hessian
from pruninglib.methods.wanda import input_norms, magnitude_mask, wanda_mask, wanda_scores


def test_wanda_scores_are_weight_magnitude_times_input_norm():
    w = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 0.5, 0.0]])
    x = torch.tensor([[1.0, 0.0, 2.0], [1.0, 3.0, 0.0]])  # column norms sqrt(2), 3, 2
    norms = input_norms(x)
    assert torch.allclose(norms, torch.tensor([2 ** 0.5, 3.0, 2.0], dtype=torch.float64))
    expected = torch.tensor([[2 ** 0.5, 6.0, 6.0], [4 * 2 ** 0.5, 1.5, 0.0]], dtype=torch.float64)
    assert torch.allclose(wanda_scores(w, norms), expected)


def test_wanda_compares_within_each_row_not_over_the_layer():
    # row 0 has all large scores, row 1 all small: per row, each loses its own smallest half
    w = torch.tensor([[10.0, 11.0, 12.0, 13.0], [1.0, 2.0, 3.0, 4.0]])
    norms = torch.ones(4)
    m = wanda_mask(w, norms, 0.5)
    assert m.tolist() == [[True, True, False, False], [True, True, False, False]]
    layer = layer_mask(wanda_scores(w, norms), 0.5)
    assert layer.tolist() == [[False] * 4, [True] * 4]  # a per-layer threshold empties row 1


def test_input_norms_can_flip_the_magnitude_ranking():
    w = torch.tensor([[1.0, 2.0]])
    assert magnitude_mask(w, 0.5, "row").tolist() == [[True, False]]
    assert wanda_mask(w, torch.tensor([10.0, 1.0]), 0.5).tolist() == [[False, True]]


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_masks_have_exactly_n_zeros_in_each_group_of_m(n, m):
    s = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    mask = nm_mask(s, n, m)
    assert (mask.reshape(16, -1, m).sum(2) == n).all()
    # and they are the n smallest of their group
    groups, gm = s.reshape(16, -1, m), mask.reshape(16, -1, m)
    assert (groups.masked_fill(~gm, -1e9).amax(2) <= groups.masked_fill(gm, 1e9).amin(2)).all()
    assert nm_problems(s.masked_fill(mask, 0), n, m) == []


def test_nm_problems_reports_a_group_with_too_few_zeros():
    w = torch.ones(2, 8)
    w[0, :2] = 0
    w[1, [0, 1, 4, 5]] = 0
    assert nm_problems(w, 2, 4) == ["row 0, group 1: 0 zeros, need 2"]


def test_sparsegpt_nm_masks_are_valid_nm():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 16, generator=g)
    w = torch.randn(6, 16, generator=g)
    for n, m in [(2, 4), (4, 8)]:
        pruned, mask = sparsegpt_prune(w, layer_hessian(x).float(), prunen=n, prunem=m, blocksize=16)
        assert (mask.reshape(6, -1, m).sum(2) == n).all()
        assert nm_problems(pruned, n, m) == []


def test_row_and_layer_masks_count_exactly():
    s = torch.randn(5, 10)
    assert (row_mask(s, 0.3).sum(1) == 3).all()
    assert int(layer_mask(s, 0.3).sum()) == 15


def test_bad_patterns_name_the_fix():
    with pytest.raises(ValueError, match="multiple of M"):
        nm_mask(torch.randn(2, 6), 2, 4)
    with pytest.raises(ValueError, match="N:M"):
        nm_mask(torch.randn(2, 8), 5, 4)
    with pytest.raises(ValueError, match="one input norm per column"):
        wanda_scores(torch.randn(2, 3), torch.ones(4))
    with pytest.raises(ValueError, match="scope"):
        magnitude_mask(torch.randn(2, 4), 0.5, "global")


def test_semi_structured_needs_cuda():
    ok, why = semi_structured_available()
    if not torch.cuda.is_available():
        assert not ok and "no CPU kernel" in why
