"""The pruning schedules: importance accumulation, iterative pruning while fine-tuning, greedy."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pruninglib.data import synthetic_images
from pruninglib.criteria.oracle import evaluate_loss, oracle_loss_change
from pruninglib.core.gates import get_gates, insert_gates, zero_units
from pruninglib.core.graph import prunable_layers
from pruninglib.models import LeNet3
from pruninglib.methods.schedule import (ImportanceAccumulator, IterativePruner, greedy_prune, greedy_scorer,
                                 non_gate_parameters, scaled_per_step, select_lowest)
from pruninglib.core.surgery import channel_counts


# tiny models run fastest (and time most reliably on a shared machine) on one thread
pytestmark = pytest.mark.usefixtures("one_thread")


def test_accumulator_average_and_momentum():
    acc = ImportanceAccumulator(momentum=0.9)
    acc.update({"a": torch.tensor([1.0, 2.0])})
    acc.update({"a": torch.tensor([3.0, 4.0])})
    assert acc.count == 2
    torch.testing.assert_close(acc.flush()["a"], torch.tensor([2.0, 3.0]))
    acc.update({"a": torch.tensor([12.0, 13.0])})
    torch.testing.assert_close(acc.flush()["a"], torch.tensor([0.9 * 2 + 0.1 * 12, 0.9 * 3 + 0.1 * 13]))
    plain = ImportanceAccumulator()
    plain.update({"a": torch.tensor([5.0])})
    plain.flush()
    plain.update({"a": torch.tensor([7.0])})
    torch.testing.assert_close(plain.flush()["a"], torch.tensor([7.0]))
    with pytest.raises(ValueError, match="update"):
        plain.flush()
    with pytest.raises(ValueError, match="momentum"):
        ImportanceAccumulator(momentum=1.0)


def test_select_lowest_respects_alive_and_min_keep():
    scores = {"a": torch.tensor([0.1, 0.2, 5.0]), "b": torch.tensor([0.0, 9.0])}
    alive = {"a": torch.tensor([True, True, True]), "b": torch.tensor([True, True])}
    assert select_lowest(scores, alive, 3) == [("b", 0), ("a", 0), ("a", 1)]
    alive["a"][0] = False
    assert select_lowest(scores, alive, 2) == [("b", 0), ("a", 1)]
    assert select_lowest(scores, alive, 10, min_keep=1) == [("b", 0), ("a", 1)]


def test_scaled_per_step():
    assert scaled_per_step(12_000) == 100
    assert scaled_per_step(252) == 2
    assert scaled_per_step(10) == 1
    with pytest.raises(ValueError):
        scaled_per_step(0)


def _tiny(train_steps: int = 0):
    torch.manual_seed(0)
    model = LeNet3(widths=(4, 6, 10, 8))
    x, y = synthetic_images(96, num_classes=4).tensors  # a bright square per class: learnable
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    for _ in range(train_steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]


def test_iterative_pruner_prunes_on_schedule_and_surgery_is_exact():
    model, batches = _tiny()
    pruner = IterativePruner(model, every=2, per_step=3, target=7, momentum=0.9)
    opt = torch.optim.SGD(non_gate_parameters(model), lr=0.01)
    assert not any("pl_gate" in n for n, p in model.named_parameters() if any(p is q for q in opt.param_groups[0]["params"]))
    removed_at = []
    for step, (x, y) in enumerate(batches * 2, start=1):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if pruner.step(model, loss.item()):
            removed_at.append((step, len(pruner.removed)))
        opt.step()
    assert removed_at == [(2, 3), (4, 6), (6, 7)]
    assert pruner.done and pruner.stopped_by == "target"
    gates = get_gates(model)
    assert sum(int((g.weight == 0).sum()) for g in gates.values()) == 7
    model.eval()
    x = batches[0][0]
    with torch.no_grad():
        gated = model(x)
    before = sum(pl.num_units for pl in prunable_layers(model))
    pruner.finalize(model)
    assert sum(channel_counts(model).values()) == before - 7
    assert not get_gates(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), gated, rtol=1e-5, atol=1e-5)


def test_iterative_pruner_stops_on_loss_tolerance():
    model, batches = _tiny()
    pruner = IterativePruner(model, every=1, per_step=1, max_loss_increase=0.5)
    for loss, expect_done in [(1.0, False), (1.4, False), (1.6, True)]:
        x, y = batches[0]
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        pruner.step(model, loss)
        assert pruner.done == expect_done
    assert pruner.stopped_by == "loss" and len(pruner.removed) == 2
    with pytest.raises(ValueError, match="online criterion"):
        IterativePruner(model, criterion="oracle")


def test_greedy_oracle_first_step_is_the_best_single_removal():
    model, batches = _tiny()
    model.eval()
    d, base = oracle_loss_change(model, batches, return_base=True)
    res = greedy_prune(model, batches, greedy_scorer("oracle_signed"), step=1, max_loss_increase=100.0,
                       max_units=3)
    best = min(float(v.min()) for v in d.values())
    assert res.losses[0] == pytest.approx(base, abs=1e-6)
    assert res.losses[1] == pytest.approx(base + best, abs=1e-5)
    assert res.units_removed == [0, 1, 2, 3] and len(set(res.order)) == 3
    # the recorded losses are those of the model with the removed units gated off
    m = copy.deepcopy(model)
    insert_gates(m)
    zero_units(m, res.order)
    assert res.losses[-1] == pytest.approx(evaluate_loss(m, batches), abs=1e-6)
    assert not get_gates(model)  # the original is untouched


def test_greedy_count_and_threshold():
    model, batches = _tiny(train_steps=40)
    res = greedy_prune(model.eval(), batches, greedy_scorer("random", seed=3), step=2, max_loss_increase=0.2)
    assert res.losses[0] < 1.0  # the tiny net has learnt the pattern
    above = [i for i, l in enumerate(res.losses) if l > res.losses[0] + 0.2]
    assert above == [len(res.losses) - 1]  # stopped right after crossing
    assert res.count == res.units_removed[-2] and res.units_removed[-1] == res.count + 2
    with pytest.raises(ValueError, match="step"):
        greedy_prune(model, batches, greedy_scorer("weight_l2"), step=0)


def test_greedy_scores_on_score_batches_but_measures_loss_on_batches():
    model, batches = _tiny()
    model.eval()
    score_set, loss_set = batches[:1], batches[1:]
    assert loss_set, "the fixture must give at least two batches"
    seen = []

    def spy(m, data, alive):
        seen.append(data)
        return greedy_scorer("oracle_signed")(m, data, alive)

    res = greedy_prune(model, loss_set, spy, step=1, max_loss_increase=100.0, max_units=2,
                       score_batches=score_set)
    assert seen and all(d is score_set for d in seen)
    m = copy.deepcopy(model)
    insert_gates(m)
    assert res.losses[0] == pytest.approx(evaluate_loss(m, loss_set), abs=1e-6)
    # the first removal is the oracle's best on the scoring subset, not necessarily on the loss set
    d = oracle_loss_change(m, score_set)
    best = min(((k, int(v.argmin())) for k, v in d.items()), key=lambda u: float(d[u[0]][u[1]]))
    assert res.order[0] == best
    zero_units(m, res.order)
    assert res.losses[-1] == pytest.approx(evaluate_loss(m, loss_set), abs=1e-6)
