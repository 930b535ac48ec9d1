"""Tiny Shakespeare in pruninglib.data (lesson 09): found on the search path, split 90/10, checked
against its MANIFEST.sha256, and a clear error naming the download when it is missing."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pruninglib import data
from pruninglib.data_check import verify_dataset

SHARED = Path("/work/shared/data")
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40


def _copy(root: Path, text: str = TEXT, manifest: bool = True) -> Path:
    folder = root / "tinyshakespeare"
    folder.mkdir(parents=True)
    (folder / "input.txt").write_text(text, encoding="utf-8")
    if manifest:
        (folder / "MANIFEST.sha256").write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  input.txt\n")
    return folder


def test_registered_and_split_ninety_ten(tmp_path, monkeypatch):
    _copy(tmp_path)
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    assert data.find_dataset("tinyshakespeare") == tmp_path
    train, val = data.load_dataset("tinyshakespeare", "train"), data.load_dataset("tinyshakespeare", "test")
    n = int(0.9 * len(TEXT))
    assert train.text == TEXT[:n] and val.text == TEXT[n:]
    assert train.chars == val.chars == sorted(set(TEXT))  # one vocabulary for both splits
    assert val.decode(val.data) == val.text
    x, y = train[5]
    assert x.shape == (64,) and y.shape == (64,) and (x[1:] == y[:-1]).all()
    train.block_size = 16
    assert len(train) == len(train.text) - 16


def test_missing_copy_names_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    monkeypatch.setenv("PRUNINGLIB_OFFLINE", "1")
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load_dataset("tinyshakespeare")
    assert "karpathy/char-rnn" in str(e.value) and "tinyshakespeare/input.txt" in str(e.value)
    assert str(tmp_path.resolve()) in str(e.value)


def test_empty_file_is_not_a_copy(tmp_path, monkeypatch):
    _copy(tmp_path, text="", manifest=False)
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError):
        data.find_dataset("tinyshakespeare")


def test_a_copy_that_disagrees_with_its_manifest_is_refused(tmp_path, monkeypatch):
    folder = _copy(tmp_path)
    (folder / "input.txt").write_text(TEXT[:-100], encoding="utf-8")  # truncated
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    with pytest.raises(data.DatasetCorruptError, match="does not match"):
        data.load_dataset("tinyshakespeare")
    assert verify_dataset("tinyshakespeare")  # data_check reports it too


def test_the_standin_is_consistent_with_its_manifest(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from tests.standins import text

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    written = text.write(tmp_path)
    assert "tinyshakespeare/input.txt" in written
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    assert verify_dataset("tinyshakespeare") == []
    assert len(data.load_dataset("tinyshakespeare").text) > 10_000


@pytest.mark.skipif(not (SHARED / "tinyshakespeare" / "input.txt").is_file(), reason="no offline copy here")
def test_the_offline_copy_matches_its_manifest(monkeypatch):
    monkeypatch.setenv("PRUNINGLIB_DATA", str(SHARED))
    assert verify_dataset("tinyshakespeare") == []
    train, val = data.load_dataset("tinyshakespeare", "train"), data.load_dataset("tinyshakespeare", "test")
    assert len(train.text) + len(val.text) == 1_115_394 and len(train.chars) == 65
