"""Subject-disjoint ATLAS splits: the paper's 212/27 train/test lists, seeded validation carving, k folds.

Scan ids read ``c{site:04d}s{subject:04d}t{timepoint:02d}``; the subject is the ``c....s....`` prefix, so a
follow-up scan (``t02``) always falls on the same side of a split as its baseline (``t01``). Split files are
JSON: ``{"train": [...], "test": [...]}`` or ``{"folds": [[...], ...]}``. A file may say
``"subject_disjoint": false``: the reference's 6-fold lists (``atlas_6fold.json``) put 9 follow-up scans in another
fold than their baseline; they are kept as published, so only scans (not subjects) are checked to be disjoint
between a fold and the rest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.io.atomic import load_json

SPLIT_DIR = Path(__file__).resolve().parent / "splits"
SCAN_ID = re.compile(r"^c\d{4}s\d{4}t\d{2}$")


def subject_of(scan_id: str) -> str:
    """Returns the subject of a scan id (``c0010s0005t02`` -> ``c0010s0005``); other ids are their own subject."""
    return scan_id[:10] if SCAN_ID.match(scan_id) else scan_id


def split_path(split: str | os.PathLike) -> Path:
    """Returns the JSON file of a split: a name in ``projects/spin/splits/`` or a path."""
    path = Path(split)
    if path.suffix != ".json":
        path = SPLIT_DIR / f"{split}.json"
    return path


def load_split(split: str | os.PathLike) -> dict:
    """Returns the parsed split file (see the module docstring).

    Raises:
        DataError: the file is missing, not JSON, or has neither ``train``/``test`` lists nor ``folds``.
    """
    path = split_path(split)
    data = load_json(path, "split file")
    if not ({"train", "test"} <= set(data) or "folds" in data):
        raise DataError(path, "a split needs 'train' and 'test' lists, or 'folds'")
    return data


def _shuffled_subjects(scan_ids: Sequence[str], seed: int) -> list[str]:
    subjects = sorted({subject_of(s) for s in scan_ids})
    order = np.random.default_rng(seed).permutation(len(subjects))
    return [subjects[i] for i in order]


def carve_validation(train_ids: Sequence[str], fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Returns (train, validation) scan ids: about ``fraction`` of the subjects go to validation.

    Args:
        train_ids: the training scans.
        fraction: share of subjects held out (at least one subject when > 0).
        seed: seed of the subject shuffle.

    Returns:
        Two sorted, subject-disjoint lists whose union is ``train_ids``.
    """
    subjects = _shuffled_subjects(train_ids, seed)
    n_val = max(1, round(fraction * len(subjects))) if fraction > 0 else 0
    val_subjects = set(subjects[:n_val])
    val = sorted(s for s in train_ids if subject_of(s) in val_subjects)
    train = sorted(s for s in train_ids if subject_of(s) not in val_subjects)
    return train, val


def make_folds(scan_ids: Sequence[str], k: int = 6, seed: int = 0) -> list[list[str]]:
    """Returns ``k`` subject-disjoint folds of about equal size (subjects dealt round-robin after a shuffle)."""
    folds: list[list[str]] = [[] for _ in range(k)]
    by_subject: dict[str, list[str]] = {}
    for scan in scan_ids:
        by_subject.setdefault(subject_of(scan), []).append(scan)
    for subject in _shuffled_subjects(scan_ids, seed):
        smallest = min(range(k), key=lambda i: len(folds[i]))
        folds[smallest].extend(by_subject[subject])
    return [sorted(f) for f in folds]


def resolve_split(split: str | os.PathLike, fold: int | None = None, val_fraction: float = 0.1,
                  val_seed: int = 0) -> dict[str, list[str]]:
    """Returns ``{"train", "val", "test"}`` scan ids of a split file (and fold), validation carved from train.

    Raises:
        DataError: a fold is needed but missing or out of range, or the sets share a subject.
    """
    data = load_split(split)
    if "folds" in data:
        folds = data["folds"]
        if fold is None or not 0 <= int(fold) < len(folds):
            raise DataError(split_path(split), f"choose data.fold in 0..{len(folds) - 1}")
        test = list(folds[int(fold)])
        train_all = [s for i, f in enumerate(folds) if i != int(fold) for s in f]
    else:
        train_all, test = list(data["train"]), list(data["test"])
    train, val = carve_validation(train_all, val_fraction, val_seed)
    sets = {"train": train, "val": val, "test": sorted(test)}
    check_disjoint(sets, split_path(split), by_subject=data.get("subject_disjoint", True))
    return sets


def check_disjoint(sets: dict[str, Sequence[str]], source: str | os.PathLike | None = None,
                   by_subject: bool = True) -> None:
    """Raises DataError when two of the named scan lists share a subject (or a scan, with ``by_subject=False``)."""
    key = subject_of if by_subject else str
    what = "subjects" if by_subject else "scans"
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = {key(s) for s in sets[a]} & {key(s) for s in sets[b]}
            if shared:
                raise DataError(source, f"{what} in both {a} and {b}: {sorted(shared)[:5]}")
