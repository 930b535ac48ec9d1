"""Hassibi & Stork's own XOR criterion (issue 15, item 1): after a method deletes its first weight its
own way (OBS with its Eq. 5 correction, magnitude and OBD with the weight zeroed), does the network still
classify all four patterns?"""
import torch
from torch.func import hessian

from pruninglib.criteria.obs import obs_update
from pruninglib.lessons.xor import XOR_T, obs_deleted, xor_error, xor_forward, xor_pruning_trial

D = torch.float64
# a hand-built XOR net: h1 = OR(x1, x2), h2 = AND(x1, x2), o = h1 AND NOT h2
#                      u11  u12  u21  u22  a1   a2    v1   v2    c
HAND = torch.tensor([[10., 10., 10., 10., -5., -15., 8., -16., -4.]], dtype=D)


def _solves(theta):
    return bool(((xor_forward(theta) - XOR_T).abs() < 0.5).all())


def test_the_hand_built_net_solves_xor_and_magnitude_breaks_it():
    assert _solves(HAND[0])
    trial = xor_pruning_trial(HAND, weight_decay=1e-3, steps=2, iters=50, stage_iters=5)
    # magnitude deletes the smallest |weight|: the output bias c = -4. Without it,
    # o(0, 0) = sigmoid(8 sigmoid(-5) - 16 sigmoid(-15)) = sigmoid(0.054) = 0.513: (0, 0) is misclassified.
    assert int(trial.choice["magnitude"][0]) == 8
    zeroed = HAND[0].clone()
    zeroed[8] = 0
    assert abs(float(xor_forward(zeroed)[0]) - 0.5134) < 1e-3
    assert not bool(trial.still_solves["magnitude"][0])
    assert trial.fraction_still_solving("magnitude") == 0.0


def test_obs_is_judged_after_its_own_update():
    trial = xor_pruning_trial(HAND, weight_decay=1e-3, steps=2, iters=50, stage_iters=5)
    H_inv = torch.linalg.inv(hessian(lambda t: xor_error(t, 1e-3))(HAND[0]))
    rows = obs_deleted(HAND, H_inv.unsqueeze(0))[0]
    for q in range(9):
        expect = HAND[0] + obs_update(HAND[0], H_inv, q)
        expect[q] = 0.0
        assert torch.allclose(rows[q], expect, atol=1e-12)
    q = int(trial.choice["OBS"][0])
    assert bool(trial.still_solves["OBS"][0]) == _solves(rows[q])
    # the no-retraining reference of OBS is the error after its update, not after plain zeroing
    assert torch.allclose(trial.updated_error[0], xor_error(rows, 1e-3), atol=1e-12)
    assert bool(trial.correct("OBS", retrained=False)[0]) == bool(
        trial.updated_error[0, q] <= trial.updated_error[0].min() + 1e-6)
