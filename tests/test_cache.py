import pytest

from pruninglib.cache import cache_key, cached


def test_cache_hit_skips_compute_and_params_invalidate(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNINGLIB_CACHE", str(tmp_path))
    monkeypatch.delenv("PRUNINGLIB_NO_CACHE", raising=False)
    calls = []

    def train():
        calls.append(1)
        return {"acc": 0.9}

    assert cached("model", {"epochs": 2}, train) == {"acc": 0.9}
    assert cached("model", {"epochs": 2}, train) == {"acc": 0.9}
    assert len(calls) == 1  # the second call was a cache hit
    cached("model", {"epochs": 3}, train)
    assert len(calls) == 2  # a changed parameter retrains


def test_version_is_part_of_the_key(monkeypatch):
    import pruninglib
    k1 = cache_key("m", {"a": 1})
    monkeypatch.setattr(pruninglib, "__version__", "999")
    assert cache_key("m", {"a": 1}) != k1


def _legacy_entry(tmp_path, name, params, value, side):
    """A cache entry as pruninglib wrote it before: torch.save bytes plus ``<file>.sha256``."""
    import hashlib
    import io

    import torch

    buf = io.BytesIO()
    torch.save(value, buf)
    path = tmp_path / f"{name}-{cache_key(name, params)}.pt"
    path.write_bytes(buf.getvalue())
    if side is not None:
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        path.with_name(path.name + ".sha256").write_text(side.format(digest=digest, name=path.name))
    return path


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def test_a_legacy_entry_with_its_sha256_is_still_a_hit(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNINGLIB_CACHE", str(tmp_path))
    monkeypatch.delenv("PRUNINGLIB_NO_CACHE", raising=False)
    _legacy_entry(tmp_path, "m", {"a": 1}, {"acc": 0.5}, "{digest}  {name}\n")
    compute, calls = _counting({"acc": 0.9})
    assert cached("m", {"a": 1}, compute) == {"acc": 0.5} and calls == []


@pytest.mark.parametrize("side", ["", "garbage\n", None])
def test_an_unverifiable_legacy_entry_is_recomputed_and_replaced(tmp_path, monkeypatch, side):
    # an empty .sha256 crashed with IndexError; a missing one let unverified bytes through
    monkeypatch.setenv("PRUNINGLIB_CACHE", str(tmp_path))
    monkeypatch.delenv("PRUNINGLIB_NO_CACHE", raising=False)
    path = _legacy_entry(tmp_path, "m", {"a": 1}, {"acc": 0.1}, side)
    compute, calls = _counting({"acc": 0.9})
    assert cached("m", {"a": 1}, compute) == {"acc": 0.9} and calls == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # the stale side file is gone too
    assert cached("m", {"a": 1}, compute) == {"acc": 0.9} and calls == [1]  # now a verified hit


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_an_interrupted_or_corrupt_entry_is_recomputed(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("PRUNINGLIB_CACHE", str(tmp_path))
    monkeypatch.delenv("PRUNINGLIB_NO_CACHE", raising=False)
    compute, calls = _counting({"acc": 0.9})
    cached("m", {"a": 1}, compute)
    path = next(p for p in tmp_path.iterdir() if p.suffix == ".pt")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF
    path.write_bytes(bytes(data if damage == "flip" else data[: len(data) // 2]))
    assert cached("m", {"a": 1}, compute) == {"acc": 0.9} and calls == [1, 1]
    assert cached("m", {"a": 1}, compute) == {"acc": 0.9} and calls == [1, 1]
