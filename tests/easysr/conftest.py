"""Fixtures of the EasySR tests: small isotropic rat-brain-like NIfTI volumes in the reference's layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.synthetic import isotropic_volume, write_ratbrain_nifti


@pytest.fixture
def flat_raw(tmp_path: Path) -> Path:
    """Five isotropic volumes in one folder (split by the data module)."""
    write_ratbrain_nifti(tmp_path / "raw", {f"rat{i:02d}": isotropic_volume(i, (16, 18, 16)) for i in range(5)})
    return tmp_path / "raw"


@pytest.fixture
def split_raw(tmp_path: Path) -> Path:
    """The reference's split layout: training/ and validation/."""
    root = tmp_path / "train_data"
    write_ratbrain_nifti(root, {f"rat{i:02d}": isotropic_volume(i, (16, 18, 16)) for i in range(3)}, "training")
    write_ratbrain_nifti(root, {"val00": isotropic_volume(10, (16, 18, 16))}, "validation")
    return root


@pytest.fixture(scope="session")
def raw32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three isotropic 32 x 33 x 32 volumes in one folder: big enough for the paper discriminator's strides."""
    raw = tmp_path_factory.mktemp("easysr") / "raw"
    write_ratbrain_nifti(raw, {f"rat{i}": isotropic_volume(i, (32, 33, 32)) for i in range(3)})
    return raw
