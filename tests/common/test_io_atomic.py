"""Atomic writes: the target appears only complete, temp files never linger."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.cli import exit_code_on_data_error
from common.errors import DataError
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


def test_a_folder_that_cannot_be_created_is_a_data_error(tmp_path):
    # Tests run as root, which chmod does not stop: a regular file where the folder should be blocks it instead.
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(DataError, match="taken/out: cannot create the output folder"):
        save_json(tmp_path / "taken" / "out" / "scores.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_permission_error_while_writing_is_a_data_error_without_temp_files(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(DataError, match=f"{tmp_path}: cannot write notes.txt in this folder .Permission denied"):
        save_text(tmp_path / "notes.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_prints_one_line_for_an_unwritable_output(tmp_path, capsys):
    @exit_code_on_data_error
    def main() -> int:
        save_text(tmp_path / "file" / "sub" / "out.txt", "x")
        return 0

    (tmp_path / "file").write_text("")
    assert main() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'file' / 'sub'}: cannot create the output folder" in err


def test_the_command_line_turns_a_permission_error_on_a_file_into_one_line(tmp_path, capsys):
    @exit_code_on_data_error
    def main() -> int:
        raise PermissionError(13, "Permission denied", str(tmp_path / "cache" / ".lock"))

    assert main() == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'cache' / '.lock'}: Permission denied\n"

    @exit_code_on_data_error
    def buggy() -> int:
        raise FileNotFoundError(2, "No such file or directory")  # no file name: a bug, not bad input

    with pytest.raises(FileNotFoundError):
        buggy()
