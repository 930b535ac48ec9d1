"""`-p SEED 1.5` used to fail deep inside NumPy with a cast error; set_seed and setup now name SEED and THREADS
(issue 14, item 14)."""
import numpy as np
import pytest
import torch

from pruninglib import set_seed, setup


@pytest.mark.parametrize("bad", [1.5, "1", None, True, float("nan")])
def test_set_seed_names_the_parameter(bad):
    state = torch.get_rng_state()
    with pytest.raises(TypeError, match="SEED must be an integer"):
        set_seed(bad)
    assert torch.equal(torch.get_rng_state(), state)  # nothing was seeded


def test_set_seed_refuses_a_negative_seed_and_takes_numpy_ints():
    with pytest.raises(ValueError, match="SEED must be >= 0"):
        set_seed(-1)
    set_seed(np.int64(3))
    a = torch.rand(1)
    set_seed(3)
    assert torch.equal(torch.rand(1), a)


@pytest.mark.parametrize("threads, err", [(0, ValueError), (1.5, TypeError), ("2", TypeError)])
def test_setup_names_threads(threads, err):
    n = torch.get_num_threads()
    with pytest.raises(err, match="THREADS"):
        setup("quick", 0, threads, {"quick": {}, "laptop": {}, "paper": {}}, show_data=False)
    assert torch.get_num_threads() == n


def test_setup_refuses_an_unknown_mode_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"MODE must be one of \['quick', 'laptop', 'paper'\]"):
        setup("fast", 0, None, {"quick": {}, "laptop": {}, "paper": {}})
