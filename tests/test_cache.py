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
