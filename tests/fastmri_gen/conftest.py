"""Fixtures: a tiny fastMRI single-coil tree written in the public layout by common.synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.synthetic import knee_images, single_coil_kspace, write_fastmri_singlecoil

SIZE = 32  # target rows and columns
WIDTHS = (40, 40, 38)  # k-space columns of the three volumes of each split


def write_tree(root: Path, size: int = SIZE, slices: int = 3) -> Path:
    """Write train / val / test splits of a few small volumes under `root`; returns `root`."""
    for split, offset in (("singlecoil_train", 0), ("singlecoil_val", 10)):
        volumes = {}
        for i, width in enumerate(WIDTHS):
            images = knee_images(seed=offset + i, n_slices=slices, size=(size, size))
            volumes[f"file{1_000_001 + offset * 10_000 + i}.h5"] = single_coil_kspace(images, seed=i, width=width)
        write_fastmri_singlecoil(root, split, volumes)
    kspace, _ = single_coil_kspace(knee_images(seed=99, n_slices=2, size=(size, size)), seed=5, width=40)
    mask = np.zeros(40, bool)
    mask[::4] = True
    mask[18:22] = True
    write_fastmri_singlecoil(root, "singlecoil_test", {"file1200001.h5": (kspace * mask, None)},
                             masks={"file1200001.h5": mask}, acceleration=4, recon_size=(size, size))
    return root


@pytest.fixture(scope="session")
def fastmri_root(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("fastmri"))

