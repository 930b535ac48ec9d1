"""The Rethinking protocol (pruninglib.lessons.rethinking) and unstructured pruning (pruninglib.methods.unstructured)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from pruninglib.data import synthetic_images
from pruninglib.methods.l1_filters import predefined_target
from pruninglib.core.metrics import count_macs
from pruninglib.models import CifarVGG, build_model
from pruninglib.lessons.rethinking import (PAPER_PROTOCOL, PAPER_RESULTS, Experiment, fresh_like, lr_milestones,
                                   paper_experiments, results_table, run_experiment, scratch_b_epochs,
                                   summarize, train_resumable)
from pruninglib.methods.unstructured import apply_masks, get_masks, magnitude_prune, sparse_macs, sparsity


# tiny models run fastest (and time most reliably on a shared machine) on one thread
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ budgets


def test_scratch_b_epochs_follow_flops_ratio():
    for name in ("vgg16_a", "resnet56_a", "resnet56_b"):
        full, pruned = predefined_target(name)
        mf = count_macs(build_model(full["name"], **full["kwargs"]), (1, 3, 32, 32))
        mp = count_macs(build_model(pruned["name"], **pruned["kwargs"]), (1, 3, 32, 32))
        eb = scratch_b_epochs(160, mf, mp)
        assert eb == int(160 * mf / mp)  # the paper code's int(160 * flops_std / flops_small)
        assert eb * mp <= 160 * mf < (eb + 1) * mp  # same budget, to within one epoch
    assert scratch_b_epochs(160, 313_201_664, 206_146_048) == 243  # VGG-16-A: 34.2 % fewer FLOPs
    assert scratch_b_epochs(160, 125_485_696, 90_907_264) == 220   # ResNet-56-B
    assert scratch_b_epochs(10, 4.0, 1.0) == 40
    assert scratch_b_epochs(10, 4.0, 1.0, max_factor=2) == 20
    assert scratch_b_epochs(10, 1.0, 1.0) == 10
    with pytest.raises(ValueError, match="positive"):
        scratch_b_epochs(10, 1.0, 0.0)


def test_lr_milestones_and_schedule():
    assert lr_milestones(160) == [80, 120]
    assert lr_milestones(243) == [121, 182]
    assert lr_milestones(1) == []
    m = CifarVGG([4, "M", 4], in_channels=1, num_classes=4)
    ds = synthetic_images(16, num_classes=4, size=8)
    hist = train_resumable(m, ds, 4, 0.1, batch_size=8, progress=False)
    assert [round(h["lr"], 6) for h in hist] == [0.1, 0.1, 0.01, 0.001]
    hist = train_resumable(m, ds, 3, 1e-3, milestones=(), batch_size=8, progress=False)
    assert [h["lr"] for h in hist] == [1e-3] * 3


# ------------------------------------------------------------------------------ resume


def _tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return CifarVGG([6, "M", 8, "M", 8], in_channels=1, num_classes=4)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    ds = synthetic_images(64, num_classes=4, size=12)
    kw = dict(lr=0.1, batch_size=16, seed=5, progress=False, after_backward=None)
    a = _tiny_model(0)
    hist_a = train_resumable(a, ds, 4, ckpt_path=tmp_path / "a.pt", **kw)

    b = _tiny_model(0)
    part = train_resumable(b, ds, 4, ckpt_path=tmp_path / "b.pt", stop_after=2, **kw)
    assert len(part) == 2
    b2 = _tiny_model(123)  # a new process: other weights in memory, everything comes from the file
    hist_b = train_resumable(b2, ds, 4, ckpt_path=tmp_path / "b.pt", **kw)
    assert [h["epoch"] for h in hist_b] == [1, 2, 3, 4]
    assert [h["train_loss"] for h in hist_b] == [h["train_loss"] for h in hist_a]
    sa, sb = a.state_dict(), b2.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # a finished checkpoint only reloads
    c = _tiny_model(7)
    hist_c = train_resumable(c, ds, 4, ckpt_path=tmp_path / "a.pt", **kw)
    assert hist_c == hist_a and all(torch.equal(c.state_dict()[k], sa[k]) for k in sa)
    # other settings with the same file: a clear error
    with pytest.raises(ValueError, match="other settings"):
        train_resumable(_tiny_model(0), ds, 5, ckpt_path=tmp_path / "a.pt", **kw)


def test_fresh_like_rebuilds_pruned_architectures():
    m = build_model("cifar_vgg", cfg=[8, "M", 6, 4], in_channels=1, num_classes=3)
    f1, f2 = fresh_like(m, 1), fresh_like(m, 1)
    assert f1.conv_widths() == [8, 6, 4]
    assert all(torch.equal(p, q) for p, q in zip(f1.parameters(), f2.parameters()))
    assert not torch.equal(f1.features[0].weight, fresh_like(m, 2).features[0].weight)
    r = build_model("cifar_resnet", depth=20, mid_channels=[3, 4, 5, 6, 7, 8, 9, 10, 11])
    fr = fresh_like(r, 0)
    assert [b.conv1.out_channels for _, b in fr.blocks()] == [3, 4, 5, 6, 7, 8, 9, 10, 11]


# ------------------------------------------------------------------------------ unstructured


def test_magnitude_pruning_masks():
    torch.manual_seed(0)
    m = CifarVGG([8, "M", 8], in_channels=1, num_classes=4)
    dense = count_macs(m, (1, 1, 8, 8))
    assert sparse_macs(m, (1, 1, 8, 8)) == dense
    magnitude_prune(m, 0.7)
    assert sparsity(m) == pytest.approx(0.7, abs=1e-3)
    magnitude_prune(m, 0.8)  # iterative: masks compose up to the new total
    assert sparsity(m) == pytest.approx(0.8, abs=1e-3)
    assert sparse_macs(m, (1, 1, 8, 8)) < 0.3 * dense
    masks = get_masks(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    assert sparsity(m) == pytest.approx(0.8, abs=1e-3)  # pruned weights stay zero through training
    fresh = fresh_like(m, 3)
    apply_masks(fresh, masks)
    for name, mod in fresh.named_modules():
        if name in masks:
            assert torch.equal(mod.weight == 0, masks[name] == 0)
    with pytest.raises(ValueError, match="fraction"):
        magnitude_prune(m, 80)


# ------------------------------------------------------------------------------ runner


def test_runner_l1_slimming_unstructured_on_synthetic(tmp_path):
    tr = synthetic_images(64, num_classes=4, channels=1, size=16)
    te = synthetic_images(32, num_classes=4, channels=1, size=16, train=False)
    full, pruned = predefined_target("vgg16_a", width=0.125, in_channels=1, num_classes=4)
    p = PAPER_PROTOCOL.replace(epochs=2, finetune_epochs=1, max_batches=2, batch_size=16)
    exps = [Experiment("vgg16_a", "l1", full, pruned, input_size=(1, 1, 16, 16), label="VGG-16"),
            Experiment("unstr", "unstructured", full, 0.5, arms=("finetune", "scratch_e"), input_size=(1, 1, 16, 16)),
            Experiment("slim", "slimming", full, 0.5, sparsity=1e-4, arms=("scratch_e", "uniform_e"),
                       input_size=(1, 1, 16, 16))]
    res = [run_experiment(e, p, tr, te, seed=s, ckpt_dir=tmp_path, progress=False, log=None)
           for e in exps for s in (0, 1)]
    r0 = res[0]
    assert r0["pruned"]["widths"] == [4, 8, 16, 16, 32, 32, 32, 32, 32, 32, 32, 32, 32]
    assert r0["arms"]["scratch_b"]["epochs"] == scratch_b_epochs(2, r0["large"]["macs"], r0["pruned"]["macs"])
    assert r0["arms"]["finetune"]["epochs"] == 1 and r0["arms"]["scratch_e"]["epochs"] == 2
    # L1 and unstructured share the large model (same spec, seed and protocol): one checkpoint per seed
    assert len(list((tmp_path / "large").glob("*.pt"))) == 4  # 2 seeds x (plain, slimming-penalised)
    assert res[2]["large"]["accuracy"] == r0["large"]["accuracy"]
    assert res[2]["pruned"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    u = res[4]["arms"]["uniform_e"]
    assert abs(u["params"] - res[4]["pruned"]["params"]) / res[4]["pruned"]["params"] < 0.1
    # a second call with the same settings loads every run from its checkpoint
    again = run_experiment(exps[0], p, tr, te, seed=0, ckpt_dir=tmp_path, progress=False, log=None)
    assert again["arms"]["scratch_b"]["history"] == r0["arms"]["scratch_b"]["history"]
    s = summarize(res)
    acc = [100 * r["arms"]["scratch_e"]["accuracy"] for r in res[:2]]
    assert s["vgg16_a"]["scratch_e"][0] == pytest.approx(sum(acc) / 2)
    assert s["vgg16_a"]["scratch_e"][2] == 2
    table = results_table(res, "synthetic")
    assert "| synthetic | VGG-16 | ours (n=2) |" in table
    assert "93.63 (±0.16)" in table and "Uniform-E" in table


def test_paper_mode_runs_end_to_end_on_a_tiny_stand_in():
    """Every paper-mode experiment (full-width VGG-16-A, ResNet-56-A/B, VGG-19 slimming) through
    the same runner, one batch per epoch, with synthetic 3x32x32 data standing in for CIFAR-10."""
    tr = synthetic_images(8, num_classes=10, channels=3, size=32)
    te = synthetic_images(4, num_classes=10, channels=3, size=32, train=False)
    p = PAPER_PROTOCOL.replace(epochs=1, finetune_epochs=1, max_batches=1, batch_size=4, eval_batch_size=4)
    assert PAPER_PROTOCOL.epochs == 160 and PAPER_PROTOCOL.finetune_lr == 1e-3 and PAPER_PROTOCOL.batch_size == 64
    exps = paper_experiments()
    assert [e.name for e in exps] == ["vgg16_a", "resnet56_a", "resnet56_b", "vgg19_slim"]
    out = {}
    for e in exps:
        r = run_experiment(e, p, tr, te, seed=0, progress=False, log=None)
        out[e.name] = r
        assert set(r["arms"]) == set(e.arms)
        for arm in r["arms"].values():
            assert 0.0 <= arm["accuracy"] <= 1.0 and len(arm["history"]) == arm["epochs"]
            assert math.isfinite(arm["history"][-1]["train_loss"])
    assert out["vgg16_a"]["pruned"]["flops_pruned"] == pytest.approx(0.342, abs=0.005)
    assert out["resnet56_b"]["pruned"]["flops_pruned"] == pytest.approx(0.276, abs=0.005)
    assert set(PAPER_RESULTS) == {e.name for e in exps}


def test_experiment_validation():
    full, pruned = predefined_target("vgg16_a")
    with pytest.raises(ValueError, match="method"):
        Experiment("x", "random", full, pruned)
    with pytest.raises(ValueError, match="uniform_e"):
        Experiment("x", "l1", full, pruned, arms=("uniform_e",))
    with pytest.raises(ValueError, match="unknown Protocol fields"):
        PAPER_PROTOCOL.replace(epoch=3)


def test_dataset_fingerprint_keys_checkpoints():
    from pruninglib.lessons.rethinking import dataset_fingerprint

    a = synthetic_images(32, num_classes=4, size=8, seed=0)
    b = torch.utils.data.TensorDataset(a.tensors[0], a.tensors[1].flip(0))  # same size, other labels
    assert dataset_fingerprint(a) == dataset_fingerprint(synthetic_images(32, num_classes=4, size=8, seed=0))
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
