"""Subject-disjoint ATLAS splits: the paper's 212/27 train/test lists, seeded validation carving, k folds.

Scan ids read ``c{site:04d}s{subject:04d}t{timepoint:02d}``; the subject is the ``c....s....`` prefix, so a
follow-up scan (``t02``) always falls on the same side of a split as its baseline (``t01``). Split files are
the shared format (``common.splits``): ``{"train": [...], "test": [...]}`` or ``{"folds": [[...], ...]}``,
read by ``common.splits``; this module adds the subject rule. A file may say
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
from common.splits import carve_by_group, read_split, split_path
from common.splits import load_split as load_common_split

SPLIT_DIR = Path(__file__).resolve().parent / "splits"
SCAN_ID = re.compile(r"^c\d{4}s\d{4}t\d{2}$")


def subject_of(scan_id: str) -> str:
    """Returns the subject of a scan id (``c0010s0005t02`` -> ``c0010s0005``); other ids are their own subject."""
    return scan_id[:10] if SCAN_ID.match(scan_id) else scan_id


def load_split(split: str | os.PathLike) -> dict:
    """Returns the checked contents of a split file: a name in ``projects/spin/splits/`` or a path.

    Raises:
        DataError: see ``common.splits.read_split``.
    """
    return read_split(split, SPLIT_DIR)


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
    return carve_by_group(fraction, seed, subject_of)(list(train_ids))


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
    path = split_path(split, SPLIT_DIR)
    sets = load_common_split(path, fold, carve=carve_by_group(val_fraction, val_seed, subject_of))
    sets["test"] = sorted(sets["test"])
    check_disjoint(sets, path, by_subject=read_split(path).get("subject_disjoint", True))
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
