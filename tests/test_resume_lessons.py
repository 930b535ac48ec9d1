"""Long runs resume (issue 18, Sec. 3): kill a phase in the middle, run the same command again, get the same bits.

Lessons 02, 03, 04, 06, 07 and 09 checkpoint their long training phases through
:class:`pruninglib.checkpoint.Resumable` (:func:`pruninglib.checkpoint.fit_resumable`), the generalisation of
lesson 05's ``train_resumable``. Each test runs one lesson's phase, at the lesson's paper widths on stand-in
data, in a child process three times: once uninterrupted; once killed with SIGKILL right after its first
per-epoch checkpoint (``PRUNINGLIB_TEST_KILL_AFTER_SAVES=1``: a ``kill -9`` at a known point, in the middle
of the phase); once more with the same command, which must resume -- and end with weights and history
bit-identical to the uninterrupted run (CPU, one thread).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import standins

ROOT = Path(__file__).resolve().parents[1]

_PRELUDE = """
import sys, torch
torch.set_num_threads(1)
from pruninglib.utils import set_seed
out = sys.argv[1]
"""

#: lesson -> the phase, as a child-process script that saves ``{"state": ..., "history": ...}`` to ``out``.
PHASES = {
    # lessons 02 and 03: the shared LeNet3, trained (and cached) by reference_model
    "02_lenet3_reference": """
from pruninglib.lessons.lenet3 import reference_model
m, h = reference_model("lenet3", {}, "mnist", 10, 3, 64, 0.01, 0.9, 0.0, 0, device=torch.device("cpu"), progress=False)
torch.save({"state": m.state_dict(), "history": h}, out)
""",
    # lesson 03: the CIFAR VGG-16 of its BatchNorm study (paper width), same mechanism
    "03_cifar_vgg16_reference": """
from pruninglib.lessons.lenet3 import reference_model
kw = {"cfg": "vgg16", "in_channels": 3, "width": 1.0, "batch_norm": True}
m, h = reference_model("cifar_vgg", kw, "cifar10", 2, 3, 16, 0.05, 0.9, 5e-4, 0, device=torch.device("cpu"),
                       progress=False)
torch.save({"state": m.state_dict(), "history": h}, out)
""",
    # lesson 04: a fine-tune of the pruning loop (VGG16 transfer model, all layers trained; small photos here)
    "04_vgg16_finetune": """
from pruninglib import data
from pruninglib.cache import work_path
from pruninglib.lessons.transfer import finetune
from pruninglib.models import vgg16_transfer
set_seed(0)
model = vgg16_transfer(pretrained=False)
ds = data.to_tensor_dataset(data.load_dataset("cats_vs_dogs", "train", data.image_transforms(32, train=True)))
key = {"lesson": "04", "it": 1}
h = finetune(model, ds, 3, batch_size=4, seed=1, progress=False, ckpt_path=work_path("04_finetune", key), signature=key)
torch.save({"state": model.state_dict(), "history": h}, out)
""",
    # lesson 06: the VGG's training with SGD, weight decay and a cosine schedule
    "06_cifar_vgg16_cosine": """
from pruninglib import data, models
from pruninglib.cache import work_path
from pruninglib.checkpoint import fit_resumable
from pruninglib.lessons.channel_selection import transforms_for
from pruninglib.train import make_loader
train_tf, _, ch, _ = transforms_for("cifar10")
ds = data.subset_per_class(data.load_dataset("cifar10", "train", train_tf), 2)  # 20 images
set_seed(0)
net = models.build_model("cifar_vgg", cfg="vgg16", in_channels=ch, num_classes=10, width=1.0)
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
key = {"lesson": "06", "epochs": 3}
h = fit_resumable(net, make_loader(ds, 16, shuffle=True, seed=0), 3, ckpt_path=work_path("l06_vgg", key), signature=key,
                  optimizer=opt, scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3), progress=False)
torch.save({"state": net.state_dict(), "history": h}, out)
""",
    # lesson 06: Sparse Structure Selection on the paper's ResNet-56 (SGD + APG on the block scales, two schedules)
    "06_resnet56_sss": """
from pruninglib import data, models
from pruninglib.cache import work_path
from pruninglib.lessons.channel_selection import transforms_for
from pruninglib.methods.block_selection import train_sss
from pruninglib.train import make_loader
train_tf, _, ch, _ = transforms_for("cifar10")
ds = data.subset_per_class(data.load_dataset("cifar10", "train", train_tf), 1)  # 10 images
set_seed(0)
net = models.build_model("resnet56")
key = {"lesson": "06", "sss": 3}
traj = train_sss(net, make_loader(ds, 10, shuffle=True, seed=0), 3, 0.1, 0.05, progress=False,
                 ckpt_path=work_path("l06_sss", key), signature=key)
torch.save({"state": net.state_dict(), "history": traj}, out)
""",
    # lesson 07: the paper's ResNet-32 on CIFAR-100 (stand-in), trained by kfac_structured.trained (cached + resumable)
    "07_resnet32_train": """
from pruninglib.lessons import kfac_structured as L
cfg = {"res_depth": 32, "res_widths": (16, 32, 64), "dataset": "cifar100", "n_train": 1, "epochs": 3, "lr": 0.1,
       "batch": 32}
ds = L.lesson_data("cifar100", 1, 1, 0)
net = L.trained("resnet", cfg, ds, 0, torch.device("cpu"))
torch.save({"state": net.state_dict(), "history": [0, 0, 0]}, out)
""",
    # lesson 09: the char GPT's training loop (AdamW, the window sampler's generator), checkpointed at every evaluation
    "09_char_gpt_train": """
from pruninglib.cache import work_path
from pruninglib.lessons.transformers import train_char_gpt
from pruninglib.models import build_model
torch.manual_seed(0)
ids = torch.randint(0, 20, (3000,), generator=torch.Generator().manual_seed(1))
model = build_model("char_gpt", vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)
key = {"lesson": "09"}
h = train_char_gpt(model, ids[:2500], ids[2500:], 30, 4, eval_every=10, eval_windows=4, progress=False,
                   ckpt_path=work_path("char_gpt", key), signature=key)
torch.save({"state": model.state_dict(), "history": h}, out)
""",
}
#: what the resumed run prints (epoch-based phases: "continuing after epoch 1 of 3")
RESUME_MESSAGE = {"09_char_gpt_train": "continuing after iteration 10 of 30"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    standins.vision.write(root)
    return root


def _run(script: str, out: Path, data_root: Path, cache: Path, kill_after: int | None = None):
    env = {**os.environ, **standins.vision.env(data_root), "PRUNINGLIB_CACHE": str(cache), "PRUNINGLIB_DEVICE": "cpu"}
    env.pop("PRUNINGLIB_NO_CACHE", None)
    env.pop("PRUNINGLIB_TEST_KILL_AFTER_SAVES", None)
    if kill_after is not None:
        env["PRUNINGLIB_TEST_KILL_AFTER_SAVES"] = str(kill_after)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(_PRELUDE) + textwrap.dedent(script), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _same(a: dict, b: dict) -> list[str]:
    diff = [k for k in a["state"] if not torch.equal(a["state"][k], b["state"][k])]
    if a["history"] != b["history"]:
        diff.append("history")
    return diff


#: ``make test`` kills lesson 02's phase, lesson 06's SSS, lesson 07's ResNet-32 and lesson 09's GPT (seconds); the
#: others (CIFAR VGG-16 training, VGG16 fine-tuning at 224 px)
#: take minutes each on a CPU: ``make test-paper`` (PRUNINGLIB_SLOW_TESTS=1) kills them all.
_SLOW = os.environ.get("PRUNINGLIB_SLOW_TESTS", "") == "1"


@pytest.mark.parametrize("phase", [pytest.param(p, marks=() if _SLOW or p.startswith(("02_", "06_resnet", "07_", "09_")) else pytest.mark.skip(
    reason="minutes on a CPU: make test-paper runs it")) for p in sorted(PHASES)])
def test_killed_phase_resumes_bit_identically(phase, data_root, tmp_path):
    script = PHASES[phase]
    ref = _run(script, tmp_path / "ref.pt", data_root, tmp_path / "cache_ref")
    assert ref.returncode == 0, ref.stderr[-3000:]

    cache = tmp_path / "cache_killed"
    killed = _run(script, tmp_path / "never.pt", data_root, cache, kill_after=1)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    assert not (tmp_path / "never.pt").exists()
    partial = list(cache.glob("*.partial.pt"))
    assert len(partial) == 1, list(cache.iterdir())  # the phase's checkpoint after its first epoch

    again = _run(script, tmp_path / "resumed.pt", data_root, cache)
    assert again.returncode == 0, again.stderr[-3000:]
    expected = RESUME_MESSAGE.get(phase, "continuing after epoch 1 of 3")
    assert "[resume]" in again.stdout and expected in again.stdout, again.stdout[-2000:]
    a = torch.load(tmp_path / "ref.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert len(a["history"]) in (3, 4)  # 3 epochs (SSS: its scale trajectory, the start and 3 epochs)
    assert not _same(a, b), f"resumed run differs from the uninterrupted one in {_same(a, b)[:5]}"


def test_resume_refuses_other_settings(tmp_path):
    """A checkpoint written with other settings is refused, and the message says how to start afresh."""
    from pruninglib.checkpoint import Resumable

    net = torch.nn.Linear(3, 2)
    Resumable(tmp_path / "c.pt", {"epochs": 3}, model=net).save(1, [{"epoch": 1}])
    with pytest.raises(ValueError, match="other settings.*delete it"):
        Resumable(tmp_path / "c.pt", {"epochs": 4}, model=net).resume()
    with pytest.raises(ValueError, match="other layers or widths"):
        Resumable(tmp_path / "c.pt", {"epochs": 3}, model=torch.nn.Linear(3, 5)).resume()
    done, hist = Resumable(tmp_path / "c.pt", {"epochs": 3}, model=net).resume()
    assert (done, hist) == (1, [{"epoch": 1}])


def test_fit_resumable_without_checkpoint_is_fit(data_root):
    """No checkpoint path: exactly :func:`pruninglib.train.fit` (quick mode's numbers do not move)."""
    from torch.utils.data import TensorDataset

    from pruninglib.checkpoint import fit_resumable
    from pruninglib.train import fit, make_loader

    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    runs = []
    for fn in (fit, fit_resumable):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        h = fn(net, make_loader(TensorDataset(x, y), 8, shuffle=True, seed=0), 3, progress=False)
        runs.append(({k: v.clone() for k, v in net.state_dict().items()}, h))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])


def test_fit_resumable_checkpointed_equals_fit(tmp_path):
    """With a checkpoint path (epoch by epoch), the same numbers as one fit over all epochs."""
    from torch.utils.data import TensorDataset

    from pruninglib.checkpoint import fit_resumable
    from pruninglib.train import fit, make_loader

    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    out = []
    for ckpt in (None, tmp_path / "r.pt"):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
        loader = make_loader(TensorDataset(x, y), 8, shuffle=True, seed=0)
        if ckpt is None:
            h = fit(net, loader, 3, optimizer=opt, scheduler=sched, progress=False)
        else:
            h = fit_resumable(net, loader, 3, ckpt_path=ckpt, optimizer=opt, scheduler=sched, progress=False)
        out.append((net.state_dict(), h))
    assert out[0][1] == out[1][1]
    assert all(torch.equal(out[0][0][k], out[1][0][k]) for k in out[0][0])


def test_greedy_prune_resumes_where_it_stopped(tmp_path):
    """Lesson 03's greedy loop (re-scoring every step): interrupted after a few steps and run again, it
    continues from its checkpoint and ends with the same trajectory as an uninterrupted run."""
    from pruninglib.methods.schedule import greedy_prune, greedy_scorer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(6 * 6 * 6, 10))
    batches = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(2)]
    kw = dict(step=1, max_loss_increase=10.0, stop_at_threshold=False)
    for rescore in (True, False):
        ref = greedy_prune(net, batches, greedy_scorer("taylor_fo_gate"), rescore=rescore, **kw)
        calls, real = [0], greedy_scorer("taylor_fo_gate")

        def failing(m, b, alive):
            calls[0] += 1
            if calls[0] == 4:
                raise KeyboardInterrupt  # stands in for a kill between two steps
            return real(m, b, alive)

        ckpt = tmp_path / f"greedy_{rescore}.partial.pt"
        if rescore:
            with pytest.raises(KeyboardInterrupt):
                greedy_prune(net, batches, failing, rescore=rescore, ckpt_path=ckpt, signature={"t": 1}, **kw)
        else:  # scored once: interrupt through the loss instead, after three steps
            import pruninglib.criteria.oracle as oracle

            orig, n = oracle.evaluate_loss, [0]

            def loss(*a, **k):
                n[0] += 1
                if n[0] == 4:
                    raise KeyboardInterrupt
                return orig(*a, **k)

            oracle.evaluate_loss = loss
            try:
                with pytest.raises(KeyboardInterrupt):
                    greedy_prune(net, batches, real, rescore=rescore, ckpt_path=ckpt, signature={"t": 1}, **kw)
            finally:
                oracle.evaluate_loss = orig
        assert ckpt.exists()
        with pytest.raises(ValueError, match="other settings"):
            greedy_prune(net, batches, real, rescore=rescore, ckpt_path=ckpt, signature={"t": 2}, **kw)
        again = greedy_prune(net, batches, real, rescore=rescore, ckpt_path=ckpt, signature={"t": 1}, **kw)
        assert not ckpt.exists()  # removed once the loop is done
        assert again.order == ref.order and again.losses == ref.losses and again.count == ref.count
        assert again.units_removed == ref.units_removed


def test_fit_resumable_extra_state_is_saved_and_names_are_checked(tmp_path):
    """``extra_state`` objects (lesson 06's APG optimizer) go into the checkpoint; fit_resumable's own names are refused."""
    from torch.utils.data import TensorDataset

    from pruninglib.checkpoint import fit_resumable, load_checkpoint
    from pruninglib.train import make_loader

    net = torch.nn.Linear(3, 2)
    loader = make_loader(TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,))), 4, shuffle=True, seed=0)
    extra = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="extra_state may not use the names"):
        fit_resumable(net, loader, 1, ckpt_path=tmp_path / "a.pt", extra_state={"model": extra}, progress=False)
    extra.param_groups[0]["lr"] = 0.123
    fit_resumable(net, loader, 1, ckpt_path=tmp_path / "b.pt", extra_state={"apg": extra}, progress=False)
    saved = load_checkpoint(tmp_path / "b.pt")
    assert saved["objects"]["apg"]["param_groups"][0]["lr"] == 0.123


def test_lesson07_finetunes_are_kept_until_the_lesson_clears_them(tmp_path, monkeypatch, capsys):
    """Lesson 07's fine-tunes (and lesson 08's, through the same work_path mechanism) checkpoint under the data key
    and the pruned weights; a rerun reloads a finished one bit for bit; clear_work_paths removes them."""
    from torch.utils.data import TensorDataset

    from pruninglib.cache import clear_work_paths, state_fingerprint
    from pruninglib.lessons.kfac_structured import finetune
    from pruninglib.train import make_loader

    monkeypatch.setenv("PRUNINGLIB_CACHE", str(tmp_path))
    monkeypatch.delenv("PRUNINGLIB_NO_CACHE", raising=False)
    ds = TensorDataset(torch.randn(32, 5), torch.randint(0, 3, (32,)))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        out = finetune(net, make_loader(ds, 8, shuffle=True, seed=0), make_loader(ds, 32), 2, 0.05,
                       resume_key={"t": 1})
        runs.append(out)
    assert "[resume]" in capsys.readouterr().out  # the second call reloaded the finished fine-tune
    assert runs[0]["history"] == runs[1]["history"]
    assert all(torch.equal(a, b) for a, b in zip(runs[0]["model"].state_dict().values(),
                                                  runs[1]["model"].state_dict().values()))
    assert state_fingerprint(runs[0]["model"]) != state_fingerprint(net)
    assert len(list(tmp_path.glob("l07_finetune-*.partial.pt"))) == 1
    assert clear_work_paths("l07_finetune") == 1 and not list(tmp_path.glob("*.partial.pt"))
