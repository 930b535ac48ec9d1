"""Lesson 05's displays in pruninglib.lessons.rethinking (results_rows, plot_arm_bars, training_budget_rows,
spread_verdict, verdict_lines) and the checkpoint names of the split run_experiment."""
from __future__ import annotations

import math

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pruninglib.cache import cache_key  # noqa: E402
from pruninglib.data import synthetic_images  # noqa: E402
from pruninglib.lessons.rethinking import (ARM_LABELS, PAPER_PROTOCOL, Experiment, dataset_fingerprint,  # noqa: E402
                                           plot_arm_bars, results_rows, results_table, run_experiment,
                                           spread_verdict, training_budget_rows, training_cost, verdict_lines)
from pruninglib.methods.l1_filters import predefined_target  # noqa: E402
from pruninglib.tables import markdown_table  # noqa: E402


def _result(name, seed, large, pruned, arms, method="l1", label="VGG-16", pruned_label="VGG-16-A",
            macs=(100, 40), macs_sparse=None):
    """A run_experiment result with only what the displays read (accuracies in [0, 1])."""
    pr = {"accuracy": pruned, "macs": macs[1]}
    if macs_sparse is not None:
        pr["macs_sparse"] = macs_sparse
    return {"experiment": name, "method": method, "label": label, "pruned_label": pruned_label, "seed": seed,
            "large": {"accuracy": large, "epochs": 2, "macs": macs[0], "seconds": 2.0 + seed},
            "pruned": pr,
            "arms": {a: {"accuracy": acc, "epochs": ep, "seconds": 1.0 + seed} for a, (acc, ep) in arms.items()}}


RESULTS = [_result("vgg16_a", 0, 0.80, 0.10, {"finetune": (0.70, 1), "scratch_e": (0.72, 2), "scratch_b": (0.78, 4)}),
           _result("vgg16_a", 1, 0.82, 0.10, {"finetune": (0.72, 1), "scratch_e": (0.73, 2), "scratch_b": (0.80, 4)}),
           _result("vgg16_unstructured", 0, 0.80, 0.10, {"finetune": (0.60, 1), "scratch_e": (0.70, 2)},
                   method="unstructured", pruned_label="80% weights", macs_sparse=20)]


def test_results_rows_are_the_rows_of_results_table():
    rows, headers = results_rows(RESULTS, "synthetic")
    assert results_table(RESULTS, "synthetic") == markdown_table(rows, headers=headers, fmt=str)
    assert markdown_table(rows, headers=headers) == markdown_table(rows, headers=headers, fmt=str)  # cells are str
    assert headers[:4] == ["Dataset", "Model", "", "Unpruned"] and "Uniform-E" not in headers
    assert rows[0][:4] == ["synthetic", "VGG-16", "ours (n=2)", "81.00 (±1.41)"]
    assert rows[1][2] == "paper" and rows[1][3] == "93.63 (±0.16)"  # vgg16_a has a paper row
    assert [r[2] for r in rows] == ["ours (n=2)", "paper", "ours (n=1)"]


def test_plot_arm_bars_draws_mean_bars_and_single_runs():
    fig, ax = plt.subplots()
    assert plot_arm_bars(RESULTS, "vgg16_a", ax, "t") is ax
    heights = [b.get_height() for b in ax.patches]
    assert heights == pytest.approx([81.0, 71.0, 72.5, 79.0])  # large, fine-tuned, Scratch-E, Scratch-B; no "pruned"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["large", "fine-tuned", "Scratch-E", "Scratch-B"]
    assert ax.get_ylim() == pytest.approx((65.0, 84.0))  # 5 below the lowest run, 2 above the highest
    assert ax.get_title() == "t"
    plt.close(fig)


def test_training_budget_rows_count_compute_relative_to_pre_training():
    rows = training_budget_rows(RESULTS, n_train=10)
    assert [r["experiment"] for r in rows] == ["VGG-16 → VGG-16-A", "VGG-16 → 80% weights"]
    pre = training_cost(2, 10, 100)
    ft, se, sb = (training_cost(e, 10, 40) / pre for e in (1, 2, 4))
    assert rows[0]["training compute (× pre-training, FLOPs model)"] == (
        f"pre-training 1.00, pre-training + fine-tuning {1 + ft:.2f}, Scratch-E {se:.2f}, Scratch-B {sb:.2f}")
    # unstructured: the sparse MACs set the small model's cost
    assert rows[1]["training compute (× pre-training, FLOPs model)"] == (
        f"pre-training 1.00, pre-training + fine-tuning {1 + training_cost(1, 10, 20) / pre:.2f}, "
        f"Scratch-E {training_cost(2, 10, 20) / pre:.2f}")
    # wall time: mean over seeds (2 s and 3 s for the large model, 1 s and 2 s for the arms)
    assert rows[0]["measured wall time per run (mean)"] == (
        "pre-training 2.5 s, fine-tuned 1.5 s, Scratch-E 1.5 s, Scratch-B 1.5 s")
    assert training_budget_rows(RESULTS, 10, {**ARM_LABELS, "scratch_e": "E"})[0][
        "training compute (× pre-training, FLOPs model)"].count(", E ") == 1


def test_spread_verdict():
    assert spread_verdict(75.0, 1.0, 74.0, 1.0, 2) == (1.0, "tie")  # |1| <= sqrt(2)
    assert spread_verdict(75.0, 0.5, 73.0, 0.5, 2) == (2.0, "higher")
    assert spread_verdict(71.0, 0.5, 73.0, 0.5, 3) == (-2.0, "lower")
    assert spread_verdict(71.0, 0.0, 73.0, 0.0, 1) == (-2.0, "single")
    d, w = spread_verdict(1.0, 3.0, 0.0, 4.0, 5)
    assert w == "tie" and math.hypot(3.0, 4.0) == 5.0
    assert spread_verdict(5.5, 3.0, 0.0, 4.0, 5)[1] == "higher"


def test_verdict_lines_compare_with_the_paper():
    lines = verdict_lines(RESULTS)
    assert len(lines) == 3  # vgg16_a: Scratch-E, Scratch-B vs fine-tuning; unstructured: Scratch-E
    # ours: +1.50 within hypot(0.71, 1.41) = 1.58; the paper's +0.21 exceeds hypot(0.11, 0.12) = 0.16
    assert lines[0] == ("- **VGG-16 → VGG-16-A**: Scratch-E is +1.50 points, within the seed-to-seed spread of "
                        "fine-tuned; paper +0.21 (above) — **differs**.")
    assert lines[1] == ("- **VGG-16 → VGG-16-A**: Scratch-B is +8.00 points, above fine-tuned; "
                        "paper +0.37 (above) — **agrees**.")  # paper: +0.37 > hypot(0.15, 0.12) = 0.19
    assert lines[2] == ("- **VGG-16 → 80% weights**: Scratch-E is +10.00 points, "
                        "(one seed, so no spread to judge it by) against fine-tuned.")  # no paper row
    assert all(line.endswith(".") for line in lines)


def test_run_experiment_keeps_its_checkpoint_names(tmp_path):
    """The split run_experiment writes the same files as before: <role>/<cache_key(role, key)>.pt."""
    tr = synthetic_images(32, num_classes=4, channels=1, size=16)
    te = synthetic_images(16, num_classes=4, channels=1, size=16, train=False)
    full, pruned = predefined_target("vgg16_a", width=0.125, in_channels=1, num_classes=4)
    p = PAPER_PROTOCOL.replace(epochs=1, finetune_epochs=1, max_batches=1, batch_size=16)
    exp = Experiment("vgg16_a", "l1", full, pruned, input_size=(1, 1, 16, 16))
    res = run_experiment(exp, p, tr, te, seed=3, ckpt_dir=tmp_path, progress=False, log=None)
    sched = dict(lr=p.lr, milestones=p.milestones, gamma=p.gamma, momentum=p.momentum, wd=p.weight_decay,
                 bs=p.batch_size, max_batches=p.max_batches, data=dataset_fingerprint(tr))
    lkey = dict(model=exp.model, s=exp.sparsity, epochs=p.epochs, seed=3, **sched)
    assert (tmp_path / "large" / f"{cache_key('large', lkey)}.pt").exists()
    base = dict(lkey, method="l1", target=exp.target)
    for k, arm in enumerate(exp.arms):
        ep, lr, ms = ((p.finetune_epochs, p.finetune_lr, []) if arm == "finetune" else
                      (res["arms"][arm]["epochs"], p.lr, list(p.milestones)))
        akey = dict(base, arm=arm, epochs_arm=ep, lr_arm=lr, ms=ms, init=3 + 1000 * (k + 1))
        assert (tmp_path / arm / f"{cache_key(arm, akey)}.pt").exists(), arm
    assert sorted(d.name for d in tmp_path.iterdir()) == ["finetune", "large", "scratch_b", "scratch_e"]
