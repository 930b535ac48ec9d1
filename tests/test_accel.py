"""The GPU switches (pruninglib.accel, issue 18 section 2), tested on the CPU where they can be:
policy defaults per mode and device, overrides, autocast dtype, fp32 forcing, memory format,
device-held loaders, and that the CPU defaults change nothing."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision import transforms as T

from pruninglib import accel
from pruninglib.data import synthetic_images
from pruninglib.models import build_model
from pruninglib.train import evaluate, fit, make_loader, train_epoch
from pruninglib.utils import make_generator, set_seed, setup

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _policy_off():
    """Every test starts and ends with the OFF policy and the backend flags it found."""
    saved = accel._backend_state()
    accel.set_policy(accel.OFF)
    yield
    accel.set_policy(accel.OFF)
    accel._restore_backends(saved)


@pytest.fixture
def bf16_everywhere(monkeypatch):
    """Pretend the accelerator runs bf16 natively (no GPU here)."""
    monkeypatch.setattr(accel, "_bf16_ok", lambda device: True)


CPU_ON = dict(autocast=True, channels_last=True)  # what can run on a CPU


# ------------------------------------------------------------------------- policy choice


@pytest.mark.parametrize("mode", ["quick", "laptop", "paper"])
def test_cpu_is_off_in_every_mode(mode):
    p = accel.policy_for(mode, "cpu", env={})
    assert not p.active and p == dataclasses.replace(accel.OFF, reason=p.reason)


@pytest.mark.parametrize("device", ["cuda", "mps"])
@pytest.mark.parametrize("mode", ["quick", "laptop"])
def test_quick_and_laptop_are_off_on_a_gpu_too(mode, device, bf16_everywhere):
    assert not accel.policy_for(mode, device, env={}).active


def test_paper_on_cuda_turns_everything_on(bf16_everywhere):
    p = accel.policy_for("paper", "cuda", env={})
    assert p.active and p.autocast and p.dtype == torch.bfloat16
    assert p.channels_last and p.cudnn_benchmark and not p.deterministic and p.tf32 is False
    assert p.device_data and p.pin_memory and p.workers >= 1 and not p.compile
    assert "bfloat16 autocast" in p.describe() and "paper mode on cuda" in p.describe()


def test_paper_on_cuda_without_native_bf16_stays_fp32(monkeypatch):
    monkeypatch.setattr(accel, "_bf16_ok", lambda device: False)  # e.g. a V100 or T4
    p = accel.policy_for("paper", "cuda", env={})
    assert not p.autocast and p.channels_last and p.device_data


def test_paper_on_mps_is_sensible(bf16_everywhere):
    p = accel.policy_for("paper", "mps", env={})
    assert p.autocast and p.device_data
    assert not p.channels_last and not p.cudnn_benchmark and not p.pin_memory and p.deterministic


def test_environment_overrides_and_arguments_win(bf16_everywhere):
    assert not accel.policy_for("paper", "cuda", env={"PRUNINGLIB_ACCEL": "0"}).active
    on = accel.policy_for("laptop", "cuda", env={"PRUNINGLIB_ACCEL": "1"})
    assert on.autocast and on.channels_last and "PRUNINGLIB_ACCEL=1" in on.describe()
    p = accel.policy_for("paper", "cuda", env={"PRUNINGLIB_AUTOCAST": "off", "PRUNINGLIB_WORKERS": "3",
                                               "PRUNINGLIB_COMPILE": "yes"})
    assert not p.autocast and p.workers == 3 and p.compile and p.channels_last
    assert "PRUNINGLIB_AUTOCAST" in p.describe()
    q = accel.policy_for("paper", "cuda", env={"PRUNINGLIB_AUTOCAST": "0"}, autocast=True)
    assert q.autocast  # an argument beats the variable
    cpu = accel.policy_for("quick", "cpu", env={"PRUNINGLIB_AUTOCAST": "1"})
    assert cpu.active and cpu.autocast and not cpu.channels_last
    assert accel.policy_for("paper", "cpu", env={"PRUNINGLIB_PIN_MEMORY": "1"}).pin_memory is False
    assert accel.policy_for("paper", "cuda", env={"PRUNINGLIB_DEVICE_DATA_MB": "2"}).device_data_max_bytes == 2 * 2**20


@pytest.mark.parametrize("env, match", [({"PRUNINGLIB_AUTOCAST": "maybe"}, "PRUNINGLIB_AUTOCAST='maybe'"),
                                        ({"PRUNINGLIB_WORKERS": "-1"}, "PRUNINGLIB_WORKERS"),
                                        ({"PRUNINGLIB_WORKERS": "two"}, "PRUNINGLIB_WORKERS"),
                                        ({"PRUNINGLIB_ACCEL": "fast"}, "PRUNINGLIB_ACCEL"),
                                        ({"PRUNINGLIB_DEVICE_DATA_MB": "lots"}, "PRUNINGLIB_DEVICE_DATA_MB")])
def test_bad_values_are_refused_by_name(env, match):
    with pytest.raises(ValueError, match=match):
        accel.policy_for("paper", "cuda", env=env)


def test_unknown_switch_is_refused():
    with pytest.raises(ValueError, match="unknown GPU switch"):
        accel.policy_for("paper", "cuda", env={}, autocats=True)


# ------------------------------------------------------------------------------ precision


def test_autocast_context_is_bf16_when_on_and_nothing_when_off():
    lin = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    on = accel.policy_for("quick", "cpu", env={}, **CPU_ON)
    with accel.autocast(on):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert lin(x).dtype == torch.bfloat16
    with accel.autocast(accel.OFF):
        assert not torch.is_autocast_enabled("cpu")
        assert lin(x).dtype == torch.float32


def test_full_precision_forces_fp32_inside_autocast():
    lin = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    on = accel.policy_for("quick", "cpu", env={}, **CPU_ON)

    @accel.full_precision()
    def exact(v):
        return lin(v)

    with accel.autocast(on):
        with accel.full_precision():
            assert accel.is_full_precision() and lin(x).dtype == torch.float32
            with accel.autocast(on):  # the policy's autocast is a no-op in here
                assert lin(x).dtype == torch.float32
        assert not accel.is_full_precision() and lin(x).dtype == torch.bfloat16
        assert exact(x).dtype == torch.float32  # the decorator form
    assert torch.equal(exact(x), lin(x))  # outside autocast: the same fp32 numbers


def test_evaluate_under_autocast_is_close_and_exact_in_full_precision():
    set_seed(0)
    net = build_model("cifar_vgg", cfg=[8, "M", 16], in_channels=1, num_classes=4).eval()
    batches = [(x, y) for x, y in DataLoader(synthetic_images(32, size=16), 16)]
    ref = evaluate(net, batches)
    on = accel.policy_for("quick", "cpu", env={}, **CPU_ON)
    with accel.use_policy(on):
        low = evaluate(net, batches)
        with accel.full_precision():
            exact = evaluate(net, batches)
    assert low["loss"] == pytest.approx(ref["loss"], rel=0.05)
    assert exact["loss"] == pytest.approx(ref["loss"], rel=1e-6, abs=1e-7)


# -------------------------------------------------------------------------- memory format


def test_channels_last_model_and_batches():
    net = build_model("cifar_vgg", cfg=[8, "M", 16], in_channels=3, num_classes=4)
    params = list(net.parameters())
    conv = net.features[0]
    on = accel.policy_for("quick", "cpu", env={}, **CPU_ON)
    accel.prepare_model(net, accel.OFF)
    assert conv.weight.is_contiguous()
    accel.prepare_model(net, on)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]  # an optimizer keeps working
    x = torch.randn(2, 3, 8, 8)
    assert accel.to_device(x, "cpu", on).is_contiguous(memory_format=torch.channels_last)
    assert accel.to_device(x, "cpu", accel.OFF) is x
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    assert not accel.uses_channels_last(mlp, on) and accel.uses_channels_last(net, on)
    assert accel.to_device(x, "cpu", on, channels_last=False).is_contiguous()


def _conv2(net):
    """The second conv (a 1-channel first conv is contiguous in both memory formats at once)."""
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)][1]


def test_channels_last_and_autocast_training_runs_and_differs():
    """The switches are wired into the loop: with them training still learns, and its weights
    differ from the fp32 run (so this test could fail if the policy were ignored)."""
    seen = []

    def run(policy):
        set_seed(0)
        net = build_model("cifar_vgg", cfg=[8, "M", 16], in_channels=1, num_classes=4)
        h = fit(net, make_loader(synthetic_images(64, size=16), 16, shuffle=True, seed=0), 3, lr=0.05,
                progress=False, policy=policy, after_backward=lambda m: seen.append(
                    (_conv2(m).weight.is_contiguous(memory_format=torch.channels_last),
                     _conv2(m).weight.grad.is_contiguous(memory_format=torch.channels_last))))
        return net, h
    ref, h_ref = run(accel.OFF)
    assert seen and not any(a for a, _ in seen)
    seen.clear()
    on = accel.policy_for("quick", "cpu", env={}, **CPU_ON)
    low, h_low = run(on)
    assert seen and all(a and b for a, b in seen)  # NHWC weights and gradients inside the loop
    assert _conv2(low).weight.is_contiguous()  # and the model leaves the loop as it came in
    assert h_low[-1]["train_loss"] < h_low[0]["train_loss"]
    assert not torch.equal(_conv2(ref).weight, _conv2(low).weight)


# ------------------------------------------------------------------------ CPU changes nothing


def test_setup_on_cpu_sets_the_off_policy_and_leaves_backends(capsys):
    before = (torch.backends.cudnn.benchmark, accel._tf32_get())
    cfg = setup("quick", 0, 1, {"quick": {}, "laptop": {}, "paper": {}}, show_data=False)
    assert cfg["device"].type == "cpu" and "accel" not in cfg
    assert not accel.current_policy().active
    assert (torch.backends.cudnn.benchmark, accel._tf32_get()) == before
    assert torch.are_deterministic_algorithms_enabled()
    assert "GPU switches: off (quick mode on cpu" in capsys.readouterr().out
    assert type(make_loader(synthetic_images(8), 4)) is DataLoader


def test_backend_switches_are_set_and_restored(bf16_everywhere):
    set_seed(0)
    before = accel._backend_state()
    with accel.use_policy(accel.policy_for("paper", "cuda", env={})):
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        set_seed(1)  # a lesson seeding again keeps the paper-mode switches
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        assert accel._tf32_get()[1:] in (("ieee", "ieee"), (False, False))
    assert accel._backend_state() == before


def test_loader_kwargs():
    assert accel.loader_kwargs(accel.OFF) == {"num_workers": 0}
    assert accel.loader_kwargs(accel.OFF, 2) == {"num_workers": 2}
    p = dataclasses.replace(accel.OFF, pin_memory=True, workers=3)
    assert accel.loader_kwargs(p) == {"num_workers": 3, "pin_memory": True, "persistent_workers": True,
                                      "prefetch_factor": 4}


# --------------------------------------------------------------------- data on the device


def _pairs(loader):
    return [tuple(t.clone() for t in b) for b in loader]


@pytest.mark.parametrize("shuffle, drop_last, n", [(True, False, 50), (True, True, 50), (False, False, 48),
                                                    (True, True, 48)])
def test_device_loader_gives_the_dataloaders_batches(shuffle, drop_last, n):
    ds = TensorDataset(torch.randn(n, 1, 4, 4), torch.arange(n))
    held = accel.device_loader(ds, 16, shuffle, make_generator(3) if shuffle else None, drop_last, force=True)
    plain = DataLoader(ds, 16, shuffle=shuffle, generator=make_generator(3) if shuffle else None, drop_last=drop_last)
    assert isinstance(held, accel.DeviceLoader) and len(held) == len(plain)
    for epoch in range(2):  # and the generator advances alike across epochs
        torch.manual_seed(epoch)
        a = _pairs(held)
        iter(held)  # an iterator made and dropped (as tqdm.auto does) draws alike too
        after_a = torch.rand(1)
        torch.manual_seed(epoch)
        b = _pairs(plain)
        iter(plain)
        after_b = torch.rand(1)
        assert len(a) == len(b) and all(torch.equal(u, v) for p, q in zip(a, b) for u, v in zip(p, q))
        assert torch.equal(after_a, after_b)  # the global RNG was drawn from alike
    if shuffle:
        assert torch.equal(held.generator.get_state(), plain.generator.get_state())


def test_device_loader_of_a_subset_and_training_is_bit_identical():
    """make_loader with data on the device trains to the very same weights as the plain loader."""
    base = synthetic_images(96, size=16)
    ds = Subset(base, list(range(5, 85)))

    def run(policy):
        set_seed(0)
        net = build_model("cifar_vgg", cfg=[8, "M", 16], in_channels=1, num_classes=4)
        loader = make_loader(ds, 16, shuffle=True, seed=2, policy=policy)
        h = fit(net, loader, 2, lr=0.05, progress=False, policy=policy)
        return net, h, loader
    held_policy = accel.policy_for("quick", "cpu", env={}, device_data=True)
    n1, h1, l1 = run(accel.OFF)
    n2, h2, l2 = run(held_policy)
    assert type(l1) is DataLoader and isinstance(l2, accel.DeviceLoader)
    assert h1 == h2
    assert all(torch.equal(a, b) for a, b in zip(n1.state_dict().values(), n2.state_dict().values()))


class _FakeCifar(torch.utils.data.Dataset):
    """The parts of torchvision's CIFAR10 the device loader reads: uint8 NHWC ``data``, ``targets``,
    ``transform``; ``__getitem__`` as torchvision does it (PIL image through the transform)."""

    def __init__(self, n, transform, seed=0):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
        self.targets = list(rng.integers(0, 10, size=n))
        self.transform = transform
        self.target_transform = None

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


NORM = ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))


def test_image_dataset_replayed_on_device_equals_the_host_transform():
    ds = _FakeCifar(20, T.Compose([T.ToTensor(), T.Normalize(*NORM)]))
    held = accel.device_loader(ds, 8, force=True)
    assert held is not None
    for (xa, ya), (xb, yb) in zip(held, DataLoader(ds, 8)):
        assert torch.allclose(xa, xb, atol=1e-6) and torch.equal(ya, yb.long())


def test_random_crop_and_flip_on_device_are_crops_and_flips():
    ds = _FakeCifar(12, T.Compose([T.RandomCrop(8, padding=2), T.RandomHorizontalFlip(), T.ToTensor(),
                                   T.Normalize(*NORM)]))
    held = accel.device_loader(ds, 12, force=True)
    torch.manual_seed(0)
    (x, y), = list(held)
    assert x.shape == (12, 3, 8, 8)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORM)
    flips = 0
    for i in range(12):
        img = torch.nn.functional.pad(torch.as_tensor(ds.data[i]).permute(2, 0, 1).float() / 255, (2,) * 4)
        crops = [(img[:, r:r + 8, c:c + 8] - mean) / std for r in range(5) for c in range(5)]
        plain = [k for k, cr in enumerate(crops) if torch.allclose(cr, x[i], atol=1e-5)]
        flipped = [k for k, cr in enumerate(crops) if torch.allclose(cr.flip(2), x[i], atol=1e-5)]
        assert plain or flipped, f"image {i} is no (flipped) crop of its padded original"
        flips += bool(flipped) and not plain
    assert 0 < flips < 12  # both outcomes of the coin were drawn


def test_unknown_transforms_and_big_data_stay_on_the_host():
    ds = _FakeCifar(4, T.Compose([T.ColorJitter(0.1), T.ToTensor()]))
    assert accel.device_loader(ds, 2, force=True) is None
    small = dataclasses.replace(accel.OFF, device_data=True, device_data_max_bytes=10)
    assert accel.device_loader(TensorDataset(torch.randn(10, 4)), 2, policy=small) is None
    assert accel.device_loader(TensorDataset(torch.randn(10, 4)), 2, policy=accel.OFF) is None
    assert accel.dataset_nbytes(TensorDataset(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))) == 240


def test_train_epoch_accepts_a_device_loader_with_limited_batches():
    ds = synthetic_images(40, size=16)
    held = accel.device_loader(ds, 8, True, make_generator(0), force=True)
    net = build_model("cifar_vgg", cfg=[8, "M", 16], in_channels=1, num_classes=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    held.generator.manual_seed(5)  # what lesson 05's resumable training does each epoch
    out = train_epoch(net, held, opt, progress=False)
    assert 0 <= out["accuracy"] <= 1 and out["loss"] > 0


def test_surgery_on_a_channels_last_model_is_exact_and_reconverted():
    """Exactness checks keep their tolerance with channels_last: pruning a NHWC model gives the
    contiguous model's outputs, and the next loop puts every (new) conv back in NHWC."""
    from pruninglib.core import surgery

    set_seed(0)
    ref = build_model("cifar_vgg", cfg=[8, "M", 16, "M", 16], in_channels=1, num_classes=4).eval()
    nhwc = build_model("cifar_vgg", cfg=[8, "M", 16, "M", 16], in_channels=1, num_classes=4).eval()
    nhwc.load_state_dict(ref.state_dict())
    on = accel.policy_for("quick", "cpu", env={}, channels_last=True)
    accel.prepare_model(nhwc, on)
    plan = {"features.0": [0, 3], "features.4": [1, 2, 3, 5]}
    surgery.prune_channels(ref, plan)
    surgery.prune_channels(nhwc, plan)
    x = torch.randn(3, 1, 16, 16)
    assert torch.allclose(nhwc(accel.to_device(x, "cpu", on)), ref(x), atol=1e-5, rtol=1e-5)
    accel.prepare_model(nhwc, on)
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in nhwc.modules() if isinstance(m, nn.Conv2d))


def test_cpu_default_loop_is_the_plain_fp32_loop_bit_for_bit():
    """After setup() on the CPU, fit() gives exactly the weights of a plain fp32 loop (no switch
    leaks into quick or laptop mode)."""
    import torch.nn.functional as F

    setup("quick", 0, 1, {"quick": {}, "laptop": {}, "paper": {}}, show_data=False)
    ds = synthetic_images(48, size=16)

    def net():
        set_seed(0)
        return build_model("cifar_vgg", cfg=[8, "M", 16], in_channels=1, num_classes=4)
    a = net()
    fit(a, make_loader(ds, 16, shuffle=True, seed=1), 2, lr=0.05, progress=False)
    b = net()
    opt = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(ds, 16, shuffle=True, generator=make_generator(1))
    for _ in range(2):
        b.train()
        iter(loader)  # the loop's tqdm.auto makes (and drops) one iterator per epoch: draw alike
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(b(x), y).backward()
            opt.step()
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_cpu_model_in_a_gpu_run_gets_no_switches(bf16_everywhere):
    gpu = accel.policy_for("paper", "cuda", env={})
    assert accel.for_device("cuda:0", gpu) is gpu
    assert accel.for_device("cpu", gpu) is accel.OFF
    with accel.use_policy(gpu):  # a CPU copy of a model evaluated in a paper run on a GPU: plain fp32
        net = build_model("cifar_vgg", cfg=[8, "M", 16], in_channels=1, num_classes=4)
        batches = [(x, y) for x, y in DataLoader(synthetic_images(16, size=16), 8)]
        assert evaluate(net, batches) == evaluate(net, batches, policy=accel.OFF)
