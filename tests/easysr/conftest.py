"""Fixtures of the EasySR tests: small isotropic brain-like NIfTI volumes in the reference's layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.io import save_nifti
from projects.easysr.synthetic import brainlike_volume, iso_affine


def write_volumes(folder: Path, n: int, shape=(16, 18, 16), seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"rat{i:02d}.T2w.nii.gz"
        save_nifti(path, brainlike_volume(shape, seed + i), iso_affine())
        paths.append(path)
    return paths


@pytest.fixture
def flat_raw(tmp_path: Path) -> Path:
    """Five isotropic volumes in one folder (split by the data module)."""
    write_volumes(tmp_path / "raw", 5)
    return tmp_path / "raw"


@pytest.fixture
def split_raw(tmp_path: Path) -> Path:
    """The reference's split layout: training/ and validation/."""
    root = tmp_path / "train_data"
    write_volumes(root / "training", 3, seed=0)
    write_volumes(root / "validation", 1, seed=10)
    (root / "validation" / "rat00.T2w.nii.gz").rename(root / "validation" / "val00.nii.gz")
    return root
