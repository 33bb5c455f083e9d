"""Synthetic scans written in the exact ATLAS R1.2 ``standard_MNI`` layout (tests and the demo).

Each scan is a brain-like T1 with stroke-like lesions from ``common.synthetic.brain.brain_t1``. When a scan has
several lesion components, they are spread over two mask files (``_LesionSmooth_stx`` and
``_LesionSmooth_1_stx``), as in ATLAS scans traced in several parts, so that loaders must OR-combine them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from common.io.atomic import save_json
from common.io.lock import prepare_lock
from common.synthetic import write_atlas_tree as write_atlas_layout
from common.synthetic.brain import brain_t1
from projects.spin.data import ATLASDataModule
from projects.spin.prepare import prepare


def synthetic_scan_ids(n: int, first_site: int = 3) -> list[str]:
    """Returns ``n`` ATLAS-style scan ids over a few sites, one scan per subject (``c0003s0001t01`` ...)."""
    return [f"c{first_site + i % 3:04d}s{i // 3 + 1:04d}t01" for i in range(n)]


def _mask_parts(lesion: np.ndarray) -> list[np.ndarray]:
    labels, count = ndimage.label(lesion > 0)
    if count < 2:
        return [lesion.astype(np.uint8)]
    first = np.isin(labels, np.arange(1, count + 1, 2))
    return [first.astype(np.uint8), ((labels > 0) & ~first).astype(np.uint8)]


def write_atlas_tree(root: str | os.PathLike, scan_ids: Sequence[str], shape: Sequence[int] = (48, 56, 32),
                     seed: int = 0, n_lesions: tuple[int, int] = (2, 5), small_fraction: float = 0.6,
                     template: str | None = None) -> dict[str, Path]:
    """Writes one synthetic scan per id under ``root/c00SS/<id>/``; returns ``{scan id: scan folder}``.

    Args:
        root: the tree's root (created).
        scan_ids: ATLAS-style ids ``c{site:04d}s{subject:04d}t{tp:02d}``.
        shape: volume shape ``[X, Y, Z]`` (axis 2 axial); ignored with ``template="mni"``.
        seed: base seed; scan ``i`` uses ``seed + i``.
        n_lesions: inclusive range of lesions per scan.
        small_fraction: probability that a lesion is small.
        template: None (synthetic anatomy) or "mni" (the MNI152 template, 197 x 233 x 189).

    Returns:
        The scan folders.
    """
    scans = {}
    for i, scan in enumerate(scan_ids):
        t1, lesion, affine = brain_t1(seed + i, shape=shape, n_lesions=n_lesions, small_fraction=small_fraction,
                                      template=template)
        scans[scan] = (t1, _mask_parts(lesion), affine)
    return dict(zip(scans, write_atlas_layout(root, scans)))


class SyntheticATLASDataModule(ATLASDataModule):
    """An ``ATLASDataModule`` over synthetic scans it creates on first use (the demo's embedded data).

    ``prepare_data`` writes ``root/raw`` in the ATLAS layout, caches it with ``projects.spin.prepare`` into
    ``root/cache`` and writes the subject-disjoint split ``root/split.json`` (the last ``n_test`` scans are the
    test set), unless ``root/split.json`` already exists.

    Args:
        root: folder of the generated data.
        n_train: training scans (validation is carved from them).
        n_test: test scans.
        shape: volume shape ``[X, Y, Z]``.
        seed: base seed of the scans.
        n_lesions: inclusive range of lesions per scan.
        small_fraction: probability that a lesion is small.
        **kwargs: ``ATLASDataModule`` arguments other than ``cache_dir`` and ``split``.
    """

    def __init__(self, root: str, n_train: int = 12, n_test: int = 4, shape: Sequence[int] = (48, 56, 32),
                 seed: int = 0, n_lesions: Sequence[int] = (2, 5), small_fraction: float = 0.6,
                 **kwargs: Any) -> None:
        super().__init__(cache_dir=str(Path(root) / "cache"), split=str(Path(root) / "split.json"), **kwargs)
        self.root = Path(root)
        self.synthetic = {"n_train": n_train, "n_test": n_test, "shape": tuple(shape), "seed": seed,
                          "n_lesions": tuple(n_lesions), "small_fraction": small_fraction}

    def prepare_data(self) -> None:
        if (self.root / "split.json").exists():
            return
        with prepare_lock(self.root):  # another node or sweep job may be writing this folder
            if (self.root / "split.json").exists():
                return
            spec = self.synthetic
            ids = synthetic_scan_ids(spec["n_train"] + spec["n_test"])
            write_atlas_tree(self.root / "raw", ids, spec["shape"], spec["seed"], spec["n_lesions"],
                             spec["small_fraction"])
            prepare(self.root / "raw", self.root / "cache")
            save_json(self.root / "split.json", {"name": "synthetic", "train": ids[:spec["n_train"]],
                                                 "test": ids[spec["n_train"]:]})

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    def check_data(self, stage: str | None = None) -> None:
        """Nothing to check: `prepare_data` writes the synthetic scans when they are missing."""
