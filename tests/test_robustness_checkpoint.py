"""Checkpoints are written atomically, always verified, checked against their architecture,
and written with the user's umask (issue 14, items 6-9).

Each test here failed on main before the fix: a kill between the two renames made the intact
previous checkpoint fail its check; a truncated file was reported as corrupt; a file without its
``.sha256`` loaded unverified (single-byte flips went through); an empty ``.sha256`` gave
``IndexError``; a config naming another architecture gave ``AttributeError``/``KeyError``/
``RuntimeError``; the folder was never fsynced; orphan ``.tmp`` files stayed; every file was 0600.
"""
import hashlib
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from pruninglib import checkpoint
from pruninglib.checkpoint import ChecksumError, InterruptedWriteError
from pruninglib.core import surgery
from pruninglib.models import build_model

REPO = Path(__file__).resolve().parent.parent


def _pruned() -> nn.Module:
    m = build_model("cifar_vgg", cfg=[8, "M", 16], in_channels=1, num_classes=4).eval()
    surgery.prune_channels(m, {"features.0": [0, 3], "features.4": [1, 2]})
    return m


def _write_legacy(path: Path, obj, side_text: str | None = "auto") -> Path:
    """A file as pruninglib wrote it before: plain torch.save bytes plus ``<file>.sha256``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getvalue())
    if side_text == "auto":
        side_text = f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {path.name}\n"
    if side_text is not None:
        path.with_name(path.name + ".sha256").write_text(side_text)
    return path


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------ item 6: atomic writes


class _Killed(BaseException):
    """Stands in for the process dying at this point."""


@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_write_killed_at_any_rename_leaves_a_loadable_checkpoint(tmp_path, monkeypatch, kill_at):
    path = tmp_path / "c.pt"
    checkpoint.save_checkpoint({"v": torch.full((500,), 1.0)}, path)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == kill_at:
            raise _Killed
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    try:
        checkpoint.save_checkpoint({"v": torch.full((500,), 2.0)}, path)
    except _Killed:
        pass
    monkeypatch.setattr(os, "replace", real)
    v = checkpoint.load_checkpoint(path)["v"]  # never "corrupt": the old or the new one
    assert torch.equal(v, torch.full((500,), 1.0)) or torch.equal(v, torch.full((500,), 2.0))
    if kill_at == 1:  # killed before the only rename: the previous checkpoint is untouched
        assert torch.equal(v, torch.full((500,), 1.0))


_KILL = r"""
import os, sys, torch
from pruninglib import checkpoint
real, calls = os.replace, []
def replace(src, dst):
    calls.append(dst)
    if len(calls) == int(sys.argv[2]):
        os._exit(137)  # killed: no except or finally clause runs
    real(src, dst)
os.replace = replace
checkpoint.save_checkpoint({"v": torch.full((500,), 2.0)}, sys.argv[1])
"""


@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_killed_process_leaves_a_loadable_checkpoint_and_the_next_save_cleans_up(tmp_path, kill_at):
    path = tmp_path / "c.pt"
    checkpoint.save_checkpoint({"v": torch.full((500,), 1.0)}, path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", _KILL, str(path), str(kill_at)], env=env, check=False)
    v = checkpoint.load_checkpoint(path)["v"]
    assert torch.equal(v, torch.full((500,), 1.0)) or torch.equal(v, torch.full((500,), 2.0))
    checkpoint.save_checkpoint({"v": torch.full((500,), 3.0)}, path)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert torch.equal(checkpoint.load_checkpoint(path)["v"], torch.full((500,), 3.0))


def test_the_file_then_the_rename_then_the_folder_are_fsynced(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append(f"replace {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    checkpoint.save_checkpoint({"w": torch.ones(3)}, tmp_path / "c.pt")
    assert events == ["fsync file", "replace c.pt", "fsync folder"]


@pytest.mark.parametrize("keep", [0, 5, 60, 0.5, -1])
def test_a_truncated_file_is_reported_as_an_interrupted_write(tmp_path, keep):
    path = checkpoint.save_pruned(_pruned(), tmp_path / "pruned.pt")
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:n])
    before = _listing(tmp_path)
    with pytest.raises(InterruptedWriteError, match=r"interrupted.*rerun the step that saved it") as e:
        checkpoint.load_pruned(path)
    assert not isinstance(e.value, ChecksumError)  # told apart from corrupt data
    assert _listing(tmp_path) == before


def test_a_new_file_replaces_a_legacy_one_and_its_stale_sha256(tmp_path):
    path = _write_legacy(tmp_path / "c.pt", {"v": 1})
    checkpoint.save_checkpoint({"v": 2}, path)
    assert checkpoint.load_checkpoint(path) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_a_stale_legacy_sha256_beside_a_new_file_is_ignored(tmp_path):
    # killed after the rename, before the old side file was removed
    stale = _write_legacy(tmp_path / "old.pt", {"v": 1}).with_name("old.pt.sha256").read_text()
    path = checkpoint.save_checkpoint({"v": 2}, tmp_path / "c.pt")
    path.with_name("c.pt.sha256").write_text(stale)
    assert checkpoint.load_checkpoint(path) == {"v": 2}


def test_legacy_files_with_their_sha256_still_load(tmp_path):
    m = _pruned()
    old = checkpoint.save_pruned(m, tmp_path / "new.pt")
    payload = checkpoint.load_checkpoint(old)
    for s in payload["shapes"].values():  # the shapes the old version stored had no "kind"
        s.pop("kind", None)
    path = _write_legacy(tmp_path / "legacy.pt", payload)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(checkpoint.load_pruned(path).eval()(x), m(x))
    assert checkpoint.load_checkpoint(_write_legacy(tmp_path / "c.pt", {"v": 1})) == {"v": 1}


# ------------------------------------------------------------------ item 7: always verified


def test_single_byte_flips_in_a_copied_pruned_file_are_all_refused(tmp_path):
    path = checkpoint.save_pruned(_pruned(), tmp_path / "pruned.pt")
    path.with_name("pruned.pt.sha256").unlink(missing_ok=True)  # the file alone, e.g. copied elsewhere
    good = path.read_bytes()
    n = len(good)
    positions = sorted({0, 1, 7, 23, 30, 40, 60, 90, 110, 125, 130, n - 1} | {n * k // 20 for k in range(1, 20)})
    for i in positions:
        bad = bytearray(good)
        bad[i] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(ChecksumError, match=r"(corrupt|damaged).*(rerun|regenerate)"):
            checkpoint.load_pruned(path)
        assert path.read_bytes() == bytes(bad)  # nothing "repaired" behind the user's back
    path.write_bytes(good)
    checkpoint.load_pruned(path)


@pytest.mark.parametrize("side, match", [
    ("", r"\.sha256 is empty.*regenerate"),
    ("   \n", r"\.sha256 is empty.*regenerate"),
    ("not-a-digest  c.pt\n", r"\.sha256 is malformed.*regenerate"),
    ("abc123  c.pt\n", r"\.sha256 is malformed.*regenerate"),
])
def test_an_empty_or_malformed_legacy_sha256_is_a_clear_error(tmp_path, side, match):
    path = _write_legacy(tmp_path / "c.pt", {"v": 1}, side_text=side)
    before = _listing(tmp_path)
    with pytest.raises(ChecksumError, match=match):
        checkpoint.load_checkpoint(path)
    assert _listing(tmp_path) == before


def test_a_legacy_file_without_its_sha256_is_refused(tmp_path):
    path = _write_legacy(tmp_path / "c.pt", {"v": 1}, side_text=None)
    with pytest.raises(ChecksumError, match=r"no checksum.*regenerate"):
        checkpoint.load_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_a_legacy_file_that_does_not_match_its_sha256_is_refused(tmp_path):
    path = _write_legacy(tmp_path / "c.pt", {"v": torch.ones(100)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"corrupt.*regenerate"):
        checkpoint.load_checkpoint(path)


# ------------------------------------------------------------------ item 8: config vs weights


def _resave_with(tmp_path: Path, change) -> Path:
    path = checkpoint.save_pruned(_pruned(), tmp_path / "pruned.pt")
    payload = checkpoint.load_checkpoint(path)
    change(payload)
    return checkpoint.save_checkpoint(payload, path)


@pytest.mark.parametrize("config, layer", [
    ({"name": "cifar_vgg", "kwargs": {"cfg": [8, 8, 16], "in_channels": 1, "num_classes": 4}}, "features.5"),
    ({"name": "lenet3", "kwargs": {"num_classes": 4}}, "features.1"),
    ({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [8], "num_classes": 4}}, "features.0"),
])
def test_a_config_naming_another_architecture_says_what_does_not_match(tmp_path, config, layer):
    path = _resave_with(tmp_path, lambda p: p.update(config=config))
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match=rf"does not fit.*{layer}.*save_pruned"):
        checkpoint.load_pruned(path)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("change, what", [
    (lambda p: p["state_dict"].update({"classifier.1.weight": torch.zeros(4, 99)}), r"classifier\.1\.weight"),
    (lambda p: p["state_dict"].pop("features.1.running_mean"), r"features\.1\.running_mean"),
    (lambda p: p["state_dict"].update({"extra.weight": torch.zeros(1)}), r"extra\.weight"),
])
def test_weights_that_do_not_fit_the_stored_shapes_are_named(tmp_path, change, what):
    path = _resave_with(tmp_path, change)
    with pytest.raises(ValueError, match=rf"does not fit.*{what}.*save_pruned"):
        checkpoint.load_pruned(path)


def test_save_pruned_refuses_a_model_its_config_does_not_describe(tmp_path):
    path = checkpoint.save_pruned(_pruned(), tmp_path / "pruned.pt")
    before = _listing(tmp_path)
    m = _pruned()
    m.features[2] = nn.Tanh()  # swapped by hand: the rebuilt model would silently differ
    with pytest.raises(ValueError, match=r"pl_config.*does not describe.*features\.2.*Tanh.*ReLU"):
        checkpoint.save_pruned(m, path)
    assert _listing(tmp_path) == before


# ------------------------------------------------------------------ item 9: tmp files, umask


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_files_are_created_with_the_users_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = checkpoint.save_checkpoint({"v": 1}, tmp_path / "sub" / "c.pt")
        checkpoint.save_pruned(_pruned(), tmp_path / "sub" / "p.pt")
    finally:
        os.umask(old)
    for p in (tmp_path / "sub").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, p.name
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o777 & ~mask


def test_orphan_tmp_files_are_removed_by_the_next_write_to_the_folder(tmp_path):
    orphans = [".c.pt.k3j5h2a9.tmp", ".c.pt.sha256.ab_cd123.tmp", ".other.pt.0f1e2d3c.tmp"]
    for name in orphans:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("the user's own file")
    checkpoint.save_checkpoint({"v": 1}, tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "notes.tmp"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX file locks")
def test_the_tmp_file_of_a_write_in_progress_is_kept(tmp_path):
    import fcntl

    live = tmp_path / ".big.pt.1a2b3c4d.tmp"
    with open(live, "wb") as f:  # another process is still writing big.pt
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        checkpoint.save_checkpoint({"v": 1}, tmp_path / "c.pt")
        assert live.exists()
    checkpoint.save_checkpoint({"v": 2}, tmp_path / "c.pt")  # that writer has died: now an orphan
    assert not live.exists()


@pytest.mark.parametrize("config", [{"name": "no_such_model", "kwargs": {}},
                                    {"name": "cifar_vgg", "kwargs": {"no_such_argument": 1}}])
def test_a_config_that_cannot_be_built_names_the_fix(tmp_path, config):
    path = _resave_with(tmp_path, lambda p: p.update(config=config))
    with pytest.raises(ValueError, match=r"stored config .* cannot be built.*save_pruned"):
        checkpoint.load_pruned(path)


def test_a_file_that_is_not_a_pruned_model_names_the_fix(tmp_path):
    path = checkpoint.save_checkpoint({"w": torch.ones(2)}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"not a pruninglib pruned-model file.*load_checkpoint"):
        checkpoint.load_pruned(path)
