"""Fixtures: a tiny MSD tree in the real task layout (written by the tests) and its prepared cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.synthetic import ct_abdomen, write_msd_task
from projects.saint.demo import write_demo_msd
from projects.saint.prepare import prepare

TINY_SHAPE = (20, 18, 28)



@pytest.fixture(scope="session")
def msd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Task03_Liver (4 training + 2 paper-test cases, AppleDouble junk) and Task10_Colon (one metal case)."""
    root = tmp_path_factory.mktemp("msd")
    write_demo_msd(root, n_train=4, n_test=2, shape=TINY_SHAPE, spacing=(0.9, 0.8, 1.25), seed=3)
    hu, organ, affine = ct_abdomen(9, TINY_SHAPE, (0.9, 0.8, 5.0))
    metal = hu.copy()
    metal[3, 3, 3] = 9500.0  # max - min > 9000
    write_msd_task(root, "Task10_Colon", {"colon_001": (hu, organ, affine), "colon_002": (metal, organ, affine)})
    return root


@pytest.fixture(scope="session")
def cache_dir(msd_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache")
    prepare([msd_root], out)
    return out

