"""Atomic writes: the target appears only complete, temp files never linger."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.io.atomic import atomic_path, save_json, save_npy, save_text


def test_atomic_path_keeps_extension_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "brain.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.endswith(".nii.gz")
        assert tmp != target
        tmp.write_bytes(b"payload")
        assert not target.exists()
    assert target.read_bytes() == b"payload"
    assert sorted(p.name for p in target.parent.iterdir()) == ["brain.nii.gz"]


def test_atomic_path_explicit_suffix(tmp_path):
    with atomic_path(tmp_path / "x.weird", suffix=".h5") as tmp:
        assert tmp.name.endswith(".h5")
        tmp.write_text("1")
    assert (tmp_path / "x.weird").read_text() == "1"


def test_atomic_path_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "table.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]


def test_atomic_path_nothing_written_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "empty.txt"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_save_json_converts_numpy(tmp_path):
    obj = {"n": np.int64(3), "x": np.float32(0.5), "arr": np.arange(3), "p": tmp_path / "q"}
    out = save_json(tmp_path / "sub" / "m.json", obj)
    loaded = json.loads(out.read_text())
    assert loaded == {"n": 3, "x": 0.5, "arr": [0, 1, 2], "p": str(tmp_path / "q")}


def test_save_npy_exact_name_and_round_trip(tmp_path):
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    out = save_npy(tmp_path / "vol.bin", arr)
    assert out == tmp_path / "vol.bin"
    assert [p.name for p in tmp_path.iterdir()] == ["vol.bin"]
    back = np.load(out)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, arr)


def test_save_text(tmp_path):
    out = save_text(tmp_path / "notes" / "readme.md", "héllo\n")
    assert out.read_text(encoding="utf-8") == "héllo\n"
