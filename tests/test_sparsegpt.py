"""Lesson 09: OBC against brute force, SparseGPT against the straightforward OBS loop, and the
reconstruction-error orderings that the mathematics guarantees (pruninglib.methods.obc, sparsegpt)."""
from __future__ import annotations

import pytest
import torch

from pruninglib.methods.nm_sparsity import layer_mask
from pruninglib.methods.obc import (brute_force_prune, damped, layer_hessian, masked_optimum, obc_prune,
                                    obs_column_loop, reconstruction_error)
from pruninglib.methods.sparsegpt import inverse_cholesky, sparsegpt_prune

pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(rows=5, d=10, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    w = torch.randn(rows, d, generator=g, dtype=torch.float64)
    return w, x, layer_hessian(x)


def test_layer_hessian_is_twice_the_mean_outer_product_and_error_is_the_output_change():
    w, x, h = _layer()
    assert torch.allclose(h, 2 * x.T @ x / x.shape[0])
    w_hat = w.clone()
    w_hat[:, :3] = 0
    direct = float(((x @ (w - w_hat).T) ** 2).sum(1).mean())
    assert reconstruction_error(w, w_hat, h) == pytest.approx(direct, rel=1e-10)


def test_obc_with_one_weight_per_row_is_the_brute_force_optimum():
    w, _, h = _layer()
    w_obc, m_obc = obc_prune(w, h, 1 / 10)
    m_best, e_best = brute_force_prune(w, h, 1)
    assert torch.equal(m_obc, m_best)
    assert reconstruction_error(w, w_obc, h) == pytest.approx(e_best, rel=1e-8)


@pytest.mark.parametrize("k", [2, 4, 5])
def test_obc_greedy_is_never_better_than_brute_force_and_its_update_is_optimal_for_its_mask(k):
    w, x, h = _layer()
    w_obc, m_obc = obc_prune(w, h, k / 10)
    assert (m_obc.sum(1) == k).all()
    assert (w_obc[m_obc] == 0).all()
    _, e_best = brute_force_prune(w, h, k)
    e_obc = reconstruction_error(w, w_obc, h)
    assert e_obc >= e_best - 1e-9
    # OBS's update after greedy removals is the least-squares optimum for the mask it reached
    assert e_obc == pytest.approx(reconstruction_error(w, masked_optimum(w, x, m_obc), h), rel=1e-6)


def test_brute_force_error_formula_matches_least_squares():
    w, x, h = _layer(rows=3, d=8)
    mask, total = brute_force_prune(w, h, 3)
    assert total == pytest.approx(reconstruction_error(w, masked_optimum(w, x, mask), h), rel=1e-6)


def test_inverse_cholesky_factors_the_damped_inverse():
    _, _, h = _layer()
    u = inverse_cholesky(h, 0.01)
    assert torch.allclose(u, torch.triu(u))
    assert torch.allclose(u.T @ u, torch.linalg.inv(damped(h, 0.01)), atol=1e-10)


def test_sparsegpt_full_block_no_lazy_updates_equals_the_obs_loop():
    w, _, h = _layer(rows=6, d=12)
    hd = damped(h, 0.01)
    w_sg, m_sg = sparsegpt_prune(w, h, 0.5, blocksize=12, percdamp=0.01, dtype=torch.float64)
    # the loop's mask: OBS saliency with [(H_FF)^-1]_00 on the original weights, one threshold over all
    sal = torch.stack([w[:, j] ** 2 / torch.linalg.inv(hd[j:, j:])[0, 0] for j in range(12)], 1)
    assert torch.equal(m_sg, layer_mask(sal, 0.5))
    w_loop = obs_column_loop(w, hd, m_sg)
    assert float((w_sg - w_loop).abs().max()) < 1e-5
    assert (w_sg[m_sg] == 0).all() and m_sg.sum() == 36


def test_lazy_batch_updates_do_not_change_the_result_for_a_fixed_mask():
    w, _, h = _layer(rows=6, d=12)
    _, mask = sparsegpt_prune(w, h, 0.5, blocksize=12, dtype=torch.float64)
    full, _ = sparsegpt_prune(w, h, mask=mask, blocksize=12, dtype=torch.float64)
    for b in (1, 4, 5):
        lazy, _ = sparsegpt_prune(w, h, mask=mask, blocksize=b, dtype=torch.float64)
        assert float((lazy - full).abs().max()) < 1e-10


def test_sparsegpt_update_beats_masking_alone_and_masked_optimum_beats_both():
    w, x, h = _layer(rows=8, d=10)
    w_sg, m = sparsegpt_prune(w, h, 0.5, blocksize=4, percdamp=0.0, dtype=torch.float64)
    e_sg = reconstruction_error(w, w_sg, h)
    e_mask = reconstruction_error(w, w.masked_fill(m, 0), h)
    e_opt = reconstruction_error(w, masked_optimum(w, x, m), h)
    assert e_opt <= e_sg + 1e-9   # least squares over all kept weights is optimal for the mask
    assert e_sg <= e_mask + 1e-9  # each OBS step is optimal given the columns still free


def test_sparsegpt_blocks_hold_exactly_the_sparsity_and_dead_inputs_are_zeroed():
    w, x, _ = _layer(rows=4, d=16)
    x[:, 3] = 0
    h = layer_hessian(x)
    w_sg, m = sparsegpt_prune(w.float(), h.float(), 0.5, blocksize=8)
    for i in (0, 8):
        assert int(m[:, i:i + 8].sum()) == 16
    assert (w_sg[:, 3] == 0).all()


def test_bad_arguments_are_refused():
    w, _, h = _layer()
    with pytest.raises(ValueError, match="sparsity"):
        sparsegpt_prune(w, h, 1.0)
    with pytest.raises(ValueError, match="N:M"):
        sparsegpt_prune(w, h, prunen=3, prunem=2)
    with pytest.raises(ValueError, match="sparsity"):
        obc_prune(w, h, -0.1)
    with pytest.raises(ValueError, match="d <= 16"):
        brute_force_prune(torch.randn(2, 20), torch.eye(20), 2)
