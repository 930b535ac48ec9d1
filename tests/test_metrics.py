import pytest
import torch
import torch.nn as nn

from pruninglib.core import metrics


def test_macs_by_hand():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    expected = 4 * 4 * 8 * 3 * 9 + 128 * 5
    assert metrics.count_macs(m, (2, 3, 4, 4)) == expected
    assert metrics.count_parameters(m) == 8 * 27 + 8 + 128 * 5 + 5


def test_size_on_disk_grows_with_parameters():
    small, big = nn.Linear(10, 10), nn.Linear(100, 100)
    assert metrics.size_on_disk(big) > metrics.size_on_disk(small) + 4 * (10100 - 110) * 0.9


def test_latency_reports_conditions():
    m = nn.Linear(16, 16)
    r = metrics.measure_latency(m, torch.zeros(4, 16), warmup=1, repeats=5, threads=1)
    assert r.repeats == 5 and r.batch_size == 4 and r.threads == 1
    assert 0 < r.min_s <= r.median_s <= r.max_s
    assert "median" in str(r)


def test_count_macs_nonzero_only_counts_each_nonzero_weight_once_per_output_position():
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    with torch.no_grad():
        m[0].weight[0].zero_()       # one filter of 2*3*3 = 18 weights gone
        m[2].weight[:, :10].zero_()  # 5*10 = 50 Linear weights gone
    dense = metrics.count_macs(m, (1, 2, 4, 4))
    assert dense == 16 * 3 * 18 + 48 * 5
    assert metrics.count_macs(m, (1, 2, 4, 4), nonzero_only=True) == 16 * 2 * 18 + 38 * 5


def test_measure_latency_cpu_clock_runs_on_one_thread_and_refuses_bad_settings():
    m = nn.Linear(8, 4)
    r = metrics.measure_latency(m, torch.randn(2, 8), warmup=1, repeats=3, clock="cpu")
    assert r.threads == 1 and r.repeats == 3 and r.batch_size == 2 and "CPU time" in r.device
    assert r.min_s <= r.median_s <= r.max_s
    with pytest.raises(ValueError, match="one thread"):
        metrics.measure_latency(m, torch.randn(2, 8), clock="cpu", threads=2)
    with pytest.raises(ValueError, match="clock must be"):
        metrics.measure_latency(m, torch.randn(2, 8), clock="gpu")


def test_compare_latency_says_when_a_difference_is_within_the_spread():
    """Scripted clock: 'b' takes 10, 11, 12 units (reference 'a' 10, 12, 14: overlapping -> within the
    spread, not slower); 'c' takes 20 every time (its fastest run beats nothing: a real slow-down)."""
    from pruninglib.core.metrics import compare_latency

    durations = {"a": iter([10, 12, 14]), "b": iter([11, 12, 10]), "c": iter([20, 20, 20])}
    clock = {"t": 0.0}
    current = {"k": None}

    class M(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, x):
            clock["t"] += next(durations[self.k])
            return x

    def timer():
        return clock["t"]

    rows = compare_latency({k: M(k) for k in "abc"}, torch.zeros(1), rounds=3, warmup=0, timer=timer)
    by = {r["label"]: r for r in rows}
    assert by["a"]["speedup"] == 1.0 and by["a"]["within_spread"]
    assert by["b"]["median_ms"] == 11e3 and by["b"]["within_spread"] and not by["b"]["slower"]
    assert abs(by["b"]["speedup"] - 12 / 11) < 1e-12
    assert by["c"]["slower"] and not by["c"]["within_spread"] and by["c"]["speedup"] == 12 / 20
