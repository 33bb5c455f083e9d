"""Fixtures: a tiny synthetic tree in the exact ATLAS R1.2 standard_MNI layout, its cache and split file."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.io.atomic import save_json
from projects.spin.prepare import prepare
from projects.spin.synthetic_atlas import synthetic_scan_ids, write_atlas_tree

SHAPE = (32, 40, 24)


@pytest.fixture(scope="session")
def atlas_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("atlas")
    ids = synthetic_scan_ids(7)
    write_atlas_tree(root / "raw", ids, SHAPE, seed=3, n_lesions=(2, 4), small_fraction=0.6)
    prepare(root / "raw", root / "cache")
    split = root / "split.json"
    save_json(split, {"train": ids[:5], "test": ids[5:]})
    return {"root": root, "raw": root / "raw", "cache": root / "cache", "split": split, "ids": ids}


@pytest.fixture()
def raw_scan(atlas_fixture: dict) -> Path:
    scan = atlas_fixture["ids"][0]
    return atlas_fixture["raw"] / scan[:5] / scan

