"""Lesson 02's bookkeeping (pruninglib.lessons.taylor_checks)."""
import pytest
import torch
from torch.utils.data import TensorDataset

from pruninglib.lessons.taylor_checks import SameOrderLoader, lowest_of_all, units_per_layer
from pruninglib.methods.schedule import select_lowest
from pruninglib.train import make_loader


def test_lowest_of_all_is_select_lowest_with_every_unit_alive():
    scores = {"a": torch.tensor([0.5, 0.1, 0.9]), "b": torch.tensor([0.2, 0.05])}
    chosen = lowest_of_all(scores, 2)
    assert sorted(chosen) == sorted([("b", 1), ("a", 1)])
    alive = {k: torch.ones(len(v), dtype=torch.bool) for k, v in scores.items()}
    assert chosen == select_lowest(scores, alive, 2)


def test_lowest_of_all_keeps_min_keep_units_per_layer():
    scores = {"a": torch.tensor([0.5, 0.1, 0.9]), "b": torch.tensor([0.2, 0.05])}
    chosen = lowest_of_all(scores, 10)  # only 2 + 1 can go with one unit kept per layer
    assert len(chosen) == 3
    assert ("b", 0) not in chosen  # b keeps its best unit although a's 0.5 scores higher
    assert units_per_layer(chosen, ["a", "b"]) == {"a": 2, "b": 1}
    assert lowest_of_all(scores, 10, min_keep=2) == [("a", 1)]


def test_units_per_layer_counts_in_the_order_given():
    units = [("x", 0), ("y", 3), ("x", 2)]
    counts = units_per_layer(units, ["y", "x", "z"])
    assert counts == {"y": 1, "x": 2, "z": 0}
    assert list(counts) == ["y", "x", "z"]
    assert units_per_layer([], ["x"]) == {"x": 0}


def test_same_order_loader_repeats_the_first_pass():
    ds = TensorDataset(torch.arange(20.0).unsqueeze(1), torch.arange(20))
    loader = SameOrderLoader(ds, 6, seed=3)
    first = [y.tolist() for _, y in loader]
    second = [y.tolist() for _, y in loader]
    assert first == second == [y.tolist() for _, y in make_loader(ds, 6, shuffle=True, seed=3)]
    assert len(loader) == len(first) == 4
    assert sorted(sum(first, [])) == list(range(20))  # a permutation: every example once per pass
    reused = make_loader(ds, 6, shuffle=True, seed=3)  # what SameOrderLoader is not
    assert [y.tolist() for _, y in reused] != [y.tolist() for _, y in reused]


def test_same_order_loader_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        SameOrderLoader(TensorDataset(torch.zeros(3, 1)), 0)
