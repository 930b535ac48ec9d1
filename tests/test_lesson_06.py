"""Lesson 06: the exactness of dropping a zero-scale block (Sparse Structure Selection), and the
lesson's bookkeeping in pruninglib.lessons.channel_selection."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pruninglib.criteria import list_criteria
from pruninglib.data import DATASET_STATS, synthetic_images
from pruninglib.lessons.channel_selection import (GATE_TAYLOR_PREFERENCE, find_gate_taylor, record_slug,
                                                  split_train_holdout, transforms_for)
from pruninglib.methods.block_selection import block_scales, drop_blocks, fold_block_scales, train_sss
from pruninglib.models import build_model
from pruninglib.train import make_loader

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_resnet() -> torch.nn.Module:
    return build_model("cifar_resnet", depth=8, in_channels=1, num_classes=4, widths=[4, 8, 8])


@pytest.fixture(scope="module")
def sss_trained():
    """A tiny ResNet trained briefly with Sparse Structure Selection on 14x14 synthetic images."""
    torch.manual_seed(0)
    ds = synthetic_images(64, num_classes=4, channels=1, size=14)
    net = _tiny_resnet()
    trajectory = train_sss(net, make_loader(ds, 16, shuffle=True, seed=0), epochs=2, lr=0.05, gamma=0.1,
                           progress=False)
    return net.eval(), trajectory, ds.tensors[0][:16]


# ------------------------------------------------------------------ Sparse Structure Selection


def test_train_sss_returns_the_trajectory_of_every_block(sss_trained):
    net, trajectory, _ = sss_trained
    assert len(trajectory) == 3  # before training and after each of the 2 epochs
    assert all(set(t) == set(block_scales(net)) for t in trajectory)
    assert all(v == 1.0 for v in trajectory[0].values())  # scales start at 1
    assert trajectory[-1] == block_scales(net)
    assert any(trajectory[-1][n] != 1.0 for n in trajectory[-1])  # APG moved them


def test_dropping_a_zero_scale_block_keeps_the_output(sss_trained):
    """The lesson's exactness probe: a block whose scale is exactly zero is replaced by its shortcut
    without changing the network's output (its input is non-negative, so the ReLU after the sum
    is the identity on the shortcut)."""
    net, _, x = sss_trained
    probe = copy.deepcopy(net)
    scales = block_scales(probe)
    weakest = min(scales, key=lambda n: abs(scales[n]))
    with torch.no_grad():
        dict(probe.named_modules())[weakest].bn2.sss_scale.zero_()
        before = probe(x)
        assert weakest in drop_blocks(probe, threshold=0.0)
        assert (probe(x) - before).abs().max().item() <= 1e-5


def test_every_zero_scale_block_can_go_and_folding_keeps_the_output(sss_trained):
    net, _, x = sss_trained
    probe = copy.deepcopy(net)
    names = list(block_scales(probe))
    with torch.no_grad():
        for name in names[1::2]:  # every other block, including ones with a downsampling shortcut
            dict(probe.named_modules())[name].bn2.sss_scale.zero_()
        before = probe(x)
        assert drop_blocks(probe, threshold=0.0) == names[1::2]
        after_drop = probe(x)
        fold_block_scales(probe)
        assert block_scales(probe) == {}
        after_fold = probe(x)
    assert (after_drop - before).abs().max().item() <= 1e-5
    assert (after_fold - before).abs().max().item() <= 1e-5


def test_a_threshold_drops_non_zero_blocks_and_changes_the_output(sss_trained):
    net, _, x = sss_trained
    probe = copy.deepcopy(net)
    with torch.no_grad():
        before = probe(x)
        dropped = drop_blocks(probe, threshold=float("inf"))
        assert dropped == list(block_scales(net))
        assert (probe(x) - before).abs().max().item() > 1e-5


# ------------------------------------------------------------------ transforms and split


@pytest.mark.parametrize("dataset, channels, side", [("fashion_mnist", 1, 28), ("cifar10", 3, 32)])
def test_transforms_for(dataset, channels, side):
    train_tf, plain_tf, c, s = transforms_for(dataset)
    assert (c, s) == (channels, side)
    img = np.zeros((side, side, channels), dtype=np.uint8).squeeze()
    from PIL import Image

    x = plain_tf(Image.fromarray(img))
    assert x.shape == (channels, side, side)
    mean, std = DATASET_STATS[dataset]
    assert torch.allclose(x[:, 0, 0], -torch.tensor(mean) / torch.tensor(std))
    assert train_tf(Image.fromarray(img)).shape == (channels, side, side)
    if dataset == "cifar10":
        assert train_tf is not plain_tf
    else:
        assert train_tf is plain_tf  # the grey datasets are not augmented


def test_transforms_for_an_unknown_dataset():
    with pytest.raises(KeyError, match="no normalisation"):
        transforms_for("imagenet")


def _split_as_lesson_06_wrote_it(labels, n_hold, n_train, seed):
    rng = np.random.default_rng(seed)
    train_idx, hold_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        hold_idx += idx[:n_hold].tolist()
        rest = idx[n_hold:]
        train_idx += (rest if n_train is None else rest[:n_train]).tolist()
    return train_idx, hold_idx


@pytest.mark.parametrize("n_hold, n_train", [(3, 5), (2, None), (0, 4)])
def test_split_train_holdout(n_hold, n_train):
    labels = np.random.default_rng(1).integers(0, 4, size=60)
    state = np.random.get_state()
    train_idx, hold_idx = split_train_holdout(labels, n_hold, n_train, seed=0)
    assert np.all(np.random.get_state()[1] == state[1])  # the global RNG is left alone
    assert (train_idx, hold_idx) == _split_as_lesson_06_wrote_it(labels, n_hold, n_train, 0)
    assert not set(train_idx) & set(hold_idx)
    for c in range(4):
        in_class = int((labels == c).sum())
        assert sum(labels[i] == c for i in hold_idx) == min(n_hold, in_class)
        expected = in_class - min(n_hold, in_class) if n_train is None else min(n_train, in_class - min(n_hold, in_class))
        assert sum(labels[i] == c for i in train_idx) == expected
    assert split_train_holdout(labels, n_hold, n_train, seed=0) == (train_idx, hold_idx)
    assert split_train_holdout(labels, n_hold, n_train, seed=1) != (train_idx, hold_idx)


def test_split_train_holdout_refuses_negative_counts():
    with pytest.raises(ValueError, match=">= 0"):
        split_train_holdout([0, 1, 1], -1, None, 0)


# ------------------------------------------------------------------ names


def test_find_gate_taylor_prefers_the_listed_names():
    assert find_gate_taylor(["weight_l1", "taylor_2017", "random"]) is None
    assert find_gate_taylor(["taylor_2017", "taylor_fo_gate", "taylor_gate"]) == "taylor_gate"
    assert find_gate_taylor(["taylor_fo_bn", "taylor_fo"]) == "taylor_fo"
    assert find_gate_taylor(["taylor_fo_gate", "my_taylor_2019"]) == "taylor_fo_gate"  # first unlisted one
    assert GATE_TAYLOR_PREFERENCE[0] == "taylor_fo"
    found = find_gate_taylor(list_criteria())
    assert found is None or found in list_criteria()


@pytest.mark.parametrize("label, slug", [("reconstructed + FT", "reconstructed_ft"), ("L1 norm", "l1_norm"),
                                         ("NetAdapt, latency target", "netadapt_latency_target"),
                                         ("Taylor gates", "taylor_gates"), ("  pruned ", "pruned")])
def test_record_slug(label, slug):
    assert record_slug(label) == slug
