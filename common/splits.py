"""The one split format of every project, its reader and validation carving.

A split file is JSON::

    {"name": "atlas_6fold", "source": "where the lists come from", "subject_disjoint": false,
     "train": ["case", ...], "val": [...], "test": [...]}          # fixed lists, and/or
    {"folds": [["case", ...], ...]}                                 # k folds: fold i tests, the others train

``train``/``val``/``test`` and ``folds`` hold case ids. ``name``, ``source`` (e.g. the reference repository's
file the lists come from) and flags such as ``subject_disjoint`` are optional. :func:`load_split` resolves a file
(and a fold) to ``{"train", "val", "test"}``; a project without a ``val`` list passes a ``carve`` function that
takes the validation cases out of ``train`` (:func:`carve_by_count`, :func:`carve_by_group`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import DataError
from common.io.atomic import load_json, save_json

__all__ = ["SETS", "carve_by_count", "carve_by_group", "load_split", "read_split", "split_path", "write_split"]

SETS = ("train", "val", "test")
#: Takes the training ids, returns (train, val).
Carve = Callable[[list[str]], tuple[list[str], list[str]]]


def split_path(split: str | os.PathLike, split_dir: str | os.PathLike | None = None) -> Path:
    """Returns the JSON file of a split: a path ending in ``.json``, or a name in ``split_dir``."""
    path = Path(split)
    if path.suffix != ".json" and split_dir is not None:
        path = Path(split_dir) / f"{split}.json"
    return path


def _ids(path: Path, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(path, f"'{key}' must be a list of case ids (strings)")
    return list(value)


def read_split(split: str | os.PathLike, split_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Returns the checked contents of a split file (the lists as lists of str, the other fields as written).

    Raises:
        DataError: the file is missing or not JSON; it has neither a ``test`` list nor ``folds``; a list is not
            a list of strings; a case id appears twice in one list.
    """
    path = split_path(split, split_dir)
    data = load_json(path, "split file")
    if not isinstance(data, dict) or not ("test" in data or "folds" in data):
        raise DataError(path, "a split file needs a 'test' list or 'folds' (a list of lists of case ids)")
    for key in SETS:
        if key in data:
            data[key] = _ids(path, key, data[key])
    if "folds" in data:
        if not isinstance(data["folds"], list) or not data["folds"]:
            raise DataError(path, "'folds' must be a non-empty list of lists of case ids")
        data["folds"] = [_ids(path, f"folds[{i}]", f) for i, f in enumerate(data["folds"])]
    named: list[tuple[str, list[str]]] = [(k, data[k]) for k in SETS if k in data]
    named += [(f"folds[{i}]", fold) for i, fold in enumerate(data.get("folds", []))]
    for key, ids in named:
        if len(set(ids)) != len(ids):
            raise DataError(path, f"a case id appears twice in {key!r}")
    return data


def load_split(split: str | os.PathLike, fold: int | None = None, *, split_dir: str | os.PathLike | None = None,
               carve: Carve | None = None, available: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Returns ``{"train", "val", "test"}`` case ids of a split file (and fold).

    Args:
        split: a ``.json`` path, or a name in ``split_dir``.
        fold: with ``folds``: the test fold (0-based); the other folds train. Ignored without ``folds``.
        split_dir: the project's folder of named splits.
        carve: when the file has no ``val`` list, ``carve(train) -> (train, val)``; without it val is empty.
        available: keep only these ids (e.g. the cached cases); None keeps all. With a file that has only a
            ``test`` list, the other available ids are the training ids.

    Raises:
        DataError: unreadable file (see :func:`read_split`), fold missing or out of range, or a case in two sets.
    """
    path = split_path(split, split_dir)
    data = read_split(path)
    if "folds" in data:
        folds = data["folds"]
        if fold is None or not 0 <= int(fold) < len(folds):
            raise DataError(path, f"the split has {len(folds)} folds: choose a fold (data.fold) in 0..{len(folds) - 1}")
        sets = {"train": [c for i, f in enumerate(folds) if i != int(fold) for c in f], "test": list(folds[int(fold)])}
    else:
        sets = {"train": data.get("train", []), "test": data["test"]}
    keep = None if available is None else set(available)
    sets = {k: [c for c in v if keep is None or c in keep] for k, v in sets.items()}
    if "train" not in data and "folds" not in data and keep is not None:
        # A test-only file (SAINT's paper list): every other available case trains.
        sets["train"] = sorted(keep - set(sets["test"]))
    if "val" in data:
        sets["val"] = [c for c in data["val"] if keep is None or c in keep]
    elif carve is not None:
        sets["train"], sets["val"] = carve(sets["train"])
    else:
        sets["val"] = []
    for i, a in enumerate(SETS):
        for b in SETS[i + 1:]:
            shared = set(sets[a]) & set(sets[b])
            if shared:
                raise DataError(path, f"cases in both {a} and {b}: {sorted(shared)[:5]}")
    return {k: sets[k] for k in SETS}


def carve_by_count(count: int, seed: int = 0) -> Carve:
    """Returns a carve that draws ``count`` validation ids (seeded permutation of the sorted ids).

    Both returned lists are sorted.
    """
    def carve(train: list[str]) -> tuple[list[str], list[str]]:
        rest = sorted(train)
        order = np.random.default_rng(seed).permutation(len(rest))
        val = sorted(rest[i] for i in order[:count])
        return [c for c in rest if c not in set(val)], val

    return carve


def carve_by_group(fraction: float, seed: int = 0, group_of: Callable[[str], str] = str) -> Carve:
    """Returns a carve that holds out about ``fraction`` of the groups (e.g. subjects), at least one when > 0.

    Groups are sorted, shuffled with ``seed``, and the first ones go to validation; both lists are sorted, and
    no group is on both sides.
    """
    def carve(train: list[str]) -> tuple[list[str], list[str]]:
        groups = sorted({group_of(c) for c in train})
        order = np.random.default_rng(seed).permutation(len(groups))
        n_val = max(1, round(fraction * len(groups))) if fraction > 0 else 0
        held = {groups[i] for i in order[:n_val]}
        return sorted(c for c in train if group_of(c) not in held), sorted(c for c in train if group_of(c) in held)

    return carve


def write_split(path: str | os.PathLike, *, folds: Sequence[Sequence[str]] | None = None,
                name: str | None = None, source: str | None = None, **lists_and_flags: Any) -> Path:
    """Writes a split file atomically; returns its path.

    Args:
        path: the ``.json`` file.
        folds: k lists of case ids.
        name, source: optional descriptions.
        **lists_and_flags: ``train``/``val``/``test`` lists and flags such as ``subject_disjoint``.
    """
    data: dict[str, Any] = {k: v for k, v in (("name", name), ("source", source)) if v is not None}
    data.update(lists_and_flags)
    if folds is not None:
        data["folds"] = [list(f) for f in folds]
    return save_json(Path(path), data)
