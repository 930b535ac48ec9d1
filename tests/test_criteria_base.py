import pytest
import torch

from pruninglib.criteria import (check_ratio, get_criterion, list_criteria, lowest_per_layer, lowest_units,
                                 normalize_per_layer)
from pruninglib.models import CifarVGG


def test_ratio_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"\[0, 1\).*got 1.2"):
        check_ratio(1.2)
    with pytest.raises(ValueError, match="did you mean 0.5"):
        check_ratio(50)
    with pytest.raises(ValueError, match="number"):
        check_ratio("half")
    assert check_ratio(0) == 0.0


def test_lowest_units_never_empties_a_layer():
    scores = {"a": torch.tensor([0.1, 0.2]), "b": torch.tensor([5.0, 6.0, 0.05])}
    assert lowest_units(scores, 2) == [("b", 2), ("a", 0)]
    assert sorted(lowest_units(scores, 3)) == [("a", 0), ("b", 0), ("b", 2)]
    with pytest.raises(ValueError, match="only 3 can go"):
        lowest_units(scores, 4)


def test_lowest_per_layer_and_normalisation():
    scores = {"a": torch.tensor([3.0, 1.0, 2.0, 4.0]), "b": torch.tensor([1.0])}
    assert lowest_per_layer(scores, 0.5) == {"a": [1, 2], "b": []}
    n = normalize_per_layer(scores)
    assert torch.allclose(n["a"].norm(), torch.tensor(1.0)) and torch.allclose(n["b"], torch.tensor([1.0]))


def test_magnitude_criteria_values():
    m = CifarVGG([2, "M", 3], in_channels=1, num_classes=2)
    with torch.no_grad():
        m.features[0].weight.copy_(torch.arange(18.0).view(2, 1, 3, 3) - 9)
        m.features[1].weight.copy_(torch.tensor([-0.3, 0.7]))
    l1 = get_criterion("weight_l1")(m)["features.0"]
    assert l1.tolist() == [45.0, 36.0]
    assert get_criterion("bn_scale")(m)["features.0"].tolist() == pytest.approx([0.3, 0.7])
    r1, r2 = get_criterion("random")(m, seed=1), get_criterion("random")(m, seed=1)
    assert all(torch.equal(r1[k], r2[k]) for k in r1)
    with pytest.raises(KeyError, match="weight_l1"):
        get_criterion("nope")
    assert {"weight_l1", "weight_l2", "bn_scale", "random", "taylor_2017"} <= set(list_criteria())


def test_lowest_units_with_alive_mask_skips_removed_units_and_keeps_min_keep():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([0.05, 0.5])}
    alive = {"a": torch.tensor([False, True, True]), "b": torch.tensor([True, True])}
    # a[0] is already gone: it is never picked, and layer a has only 2 left, so with min_keep=1 one can go
    assert lowest_units(scores, 2, min_keep=1, alive=alive) == [("b", 0), ("a", 1)]
    with pytest.raises(ValueError, match="only 2 can go"):
        lowest_units(scores, 3, min_keep=1, alive=alive)
