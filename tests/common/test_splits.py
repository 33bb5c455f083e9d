"""The shared split reader: the converted split files resolve to what each project's former reader gave."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import pytest

from common.errors import DataError
from common.io.atomic import load_json
from common.splits import carve_by_count, carve_by_group, load_split, read_split, write_split
from projects.rstn.data import fold_cases
from projects.saint.data import split_cases
from projects.spin.splits import resolve_split, subject_of

REPO = Path(__file__).resolve().parents[2]
#: The commit before the split files were converted: its files and readers are the reference.
BEFORE = "5901259573af63400b52032e0c9027a0b5c9c350"


def _old(path: str, tmp_path: Path) -> Path:
    """Writes the file `path` as it was at BEFORE into tmp_path; returns the copy."""
    text = subprocess.run(["git", "show", f"{BEFORE}:{path}"], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout
    out = tmp_path / path.replace("/", "__")
    out.write_text(text)
    return out


def _old_functions(path: str, tmp_path: Path, names: set[str]) -> SimpleNamespace:
    """Returns the named top-level functions, classes and constants of `path` as it was at BEFORE.

    Only the split readers are taken (their module's other imports have moved since), run with what they used.
    """
    tree = ast.parse(_old(path, tmp_path).read_text())
    keep = [n for n in tree.body if getattr(n, "name", None) in names
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") in names for t in n.targets))]
    namespace: dict[str, Any] = {"np": np, "re": re, "os": os, "Path": Path, "Any": Any, "NamedTuple": NamedTuple,
                                 "Sequence": Sequence, "DataError": DataError, "load_json": load_json,
                                 "__name__": "old_readers", "__file__": str(REPO / path)}
    exec(compile(ast.Module(keep, type_ignores=[]), path, "exec"), namespace)  # noqa: S102
    return SimpleNamespace(**{k: namespace[k] for k in names})


def test_saint_paper_split_resolves_as_before(tmp_path: Path) -> None:
    old = _old_functions("projects/saint/data.py", tmp_path, {"Split", "_flatten", "load_split",
                                                               "split_cases"})
    old_file = _old("projects/saint/splits/paper_test.json", tmp_path)
    new_file = REPO / "projects/saint/splits/paper_test.json"
    every = old.load_split(old_file)["test"]
    assert read_split(new_file)["test"] == every
    cached = every[::3] + [f"liver_{i}" for i in (2, 3, 4, 5, 6, 7, 8)]  # a cache holding some test cases
    for val_count, seed in [(1, 0), (2, 0), (3, 5)]:
        assert split_cases(cached, new_file, val_count, seed) == tuple(old.split_cases(cached, old_file, val_count,
                                                                                          seed))


def test_spin_splits_resolve_as_before(tmp_path: Path) -> None:
    old = _old_functions("projects/spin/splits.py", tmp_path, {
        "SPLIT_DIR", "SCAN_ID", "subject_of", "split_path", "load_split", "_shuffled_subjects", "carve_validation",
        "resolve_split", "check_disjoint"})
    for name, folds in [("atlas_traintest", [None]), ("atlas_6fold", range(6))]:
        old_file = _old(f"projects/spin/splits/{name}.json", tmp_path)
        for fold in folds:
            for fraction, seed in [(0.1, 0), (0.2, 3)]:
                assert resolve_split(name, fold, fraction, seed) == old.resolve_split(old_file, fold, fraction, seed)


def test_rstn_folds_resolve_as_before(tmp_path: Path) -> None:
    old = _old_functions("projects/rstn/data.py", tmp_path, {"load_split"})
    old_file = _old("projects/rstn/splits/nih_pancreas_folds.json", tmp_path)
    for fold in range(4):
        assert fold_cases(REPO / "projects/rstn/splits/nih_pancreas_folds.json", fold) == old.load_split(old_file,
                                                                                                        fold)


def test_every_committed_split_file_is_in_the_shared_format() -> None:
    files = sorted(REPO.glob("projects/*/splits/*.json"))
    assert len(files) == 4
    for path in files:
        data = read_split(path)
        assert data["name"] == path.stem and data["source"]
        assert set(data) <= {"name", "source", "subject_disjoint", "train", "val", "test", "folds"}


def test_folds_fixed_lists_and_carving(tmp_path: Path) -> None:
    path = write_split(tmp_path / "s.json", folds=[["a", "b"], ["c"], ["d", "e"]], name="s", source="test")
    assert load_split(path, 1) == {"train": ["a", "b", "d", "e"], "val": [], "test": ["c"]}
    sets = load_split(path, 0, carve=carve_by_count(1, seed=0))
    assert sorted(sets["train"] + sets["val"]) == ["c", "d", "e"] and len(sets["val"]) == 1
    fixed = write_split(tmp_path / "f.json", train=["a", "b"], val=["c"], test=["d"])
    assert load_split(fixed, carve=carve_by_count(1)) == {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    assert load_split(fixed, available=["a", "d"]) == {"train": ["a"], "val": [], "test": ["d"]}
    ids = ["c0001s0001t01", "c0001s0001t02", "c0001s0002t01", "c0002s0003t01"]
    for seed in range(4):
        train, val = carve_by_group(0.34, seed, subject_of)(ids)
        assert sorted(train + val) == sorted(ids) and ("c0001s0001t01" in val) == ("c0001s0001t02" in val)


@pytest.mark.parametrize(("text", "message"), [
    ('{"train": ["a"]}', "needs a 'test' list or 'folds'"),
    ('{"test": "a"}', "'test' must be a list of case ids"),
    ('{"folds": [["a"], ["b", "b"]]}', "appears twice in 'folds\\[1\\]'"),
    ('{"train": ["a"], "test": ["a"]}', "cases in both train and test"),
])
def test_bad_split_files_name_the_file_and_the_fault(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as caught:
        load_split(path, 0)
    assert "bad.json" in str(caught.value)


def test_a_fold_out_of_range_or_missing_is_named(tmp_path: Path) -> None:
    path = write_split(tmp_path / "s.json", folds=[["a"], ["b"]])
    for fold in (None, 2):
        with pytest.raises(DataError, match=r"2 folds: choose a fold \(data.fold\) in 0..1"):
            load_split(path, fold)
    with pytest.raises(DataError, match="missing.json"):
        load_split(tmp_path / "missing.json")
