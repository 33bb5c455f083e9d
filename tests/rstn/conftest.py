"""Fixtures: tiny synthetic CT cases in the NIH Pancreas-CT and MSD Task07 layouts, and a tiny cache."""

from __future__ import annotations

import numpy as np
import pytest

from common.synthetic.ct import CT_LABELS, ct_abdomen
from projects.rstn.prepare import prepare_synthetic

SHAPE = (24, 20, 12)


def _small_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hu, organ, affine = ct_abdomen(seed, shape=SHAPE)
    return hu, (organ == CT_LABELS["pancreas"]).astype(np.uint8), affine


@pytest.fixture(scope="session")
def small_case():
    """Returns seed -> (hu [24, 20, 12], pancreas label 0/1, affine) of a tiny CT-like abdomen."""
    return _small_case


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory):
    """A cache of 8 synthetic cases (2 per fold) with its splits.json."""
    root = tmp_path_factory.mktemp("rstn_cache")
    prepare_synthetic(root, 8, (32, 32, 16), seed=3)
    return root

