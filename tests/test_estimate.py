"""pruninglib.estimate: the timed warm-up behind "lesson NN paper mode: about N h on this device" (issue 18)."""
from __future__ import annotations

import time

import pytest
import torch

from pruninglib import estimate
from pruninglib.estimate import Phase, estimate_run, gpu_hours, time_step


def test_time_step_counts_calls_and_takes_the_median():
    calls = []
    t = time_step(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and t >= 0.0
    with pytest.raises(ValueError):
        time_step(lambda: None, repeats=0)


def test_estimate_extrapolates_counts_and_per_call(capsys):
    phases = [Phase("sleep 20 ms", lambda: time.sleep(0.02), count=3600, flops=1e12),
              Phase("a quarter of a 40 ms unit", lambda: time.sleep(0.01), count=360, per_call=0.25),
              Phase("not run", lambda: 1 / 0, count=0)]
    est = estimate_run("99", phases, warmup=0, repeats=1, record_it=False)
    # 3600 x 20 ms = 72 s, 360 x 40 ms = 14.4 s: about 86 s (sleep only ever oversleeps)
    assert 84 <= est.seconds <= 84 * 3
    assert est.tflop == pytest.approx(3600.0)
    assert [r["units"] for r in est.rows] == [3600, 360, 0]
    out = capsys.readouterr().out
    assert "lesson 99 paper mode: about" in out and "on this device" in out and "estimate" in out


def test_bad_phases_are_refused():
    with pytest.raises(ValueError, match="at least one Phase"):
        estimate_run("99", [], record_it=False)
    with pytest.raises(ValueError, match="count must be >= 0"):
        estimate_run("99", [Phase("x", lambda: None, -1)], record_it=False)
    with pytest.raises(ValueError, match="per_call must be positive"):
        estimate_run("99", [Phase("x", lambda: None, 1, per_call=0)], record_it=False)


def test_gpu_hours_and_training_flops():
    assert gpu_hours(360.0, sustained_tflops=100.0) == pytest.approx(0.001)
    with pytest.raises(ValueError):
        gpu_hours(1.0, 0.0)
    assert estimate.training_flops(10, 4) == 2 * 10 * 4 * 3
    assert estimate.steps_per_epoch("cifar10", 128) == 391
    assert estimate.steps_per_epoch("mnist", 64, n_per_class=10) == 2
    assert estimate.timing_batch(128, "cpu") == 8 and estimate.timing_batch(128, "cpu", cpu_max=1) == 1


def test_steps_leave_the_model_alone():
    net = torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    step = estimate.sgd_step(net, (8, 4), 3)
    step(); step()
    estimate.forward_step(net, (8, 4))()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # sgd_step trains a copy
