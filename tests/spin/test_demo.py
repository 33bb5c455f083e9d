"""The demo contract: result.json with the model, the tuned baseline and a prediction on the input's grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from common.io.cache import VolumeCache
from projects.spin.data import volume_xyz
from projects.spin.demo import (
    EROSIONS,
    LEVELS,
    compose_demo,
    dice_by_level,
    run_demo,
    threshold_mask,
    tune_threshold,
)
from projects.spin.eval import score_masks

TINY = ["data.n_train=4", "data.n_test=2", "data.shape=[32,40,24]", "data.samples_per_scan=1", "data.batch_size=4",
        "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "logger=none", "model.net.embedding_width=4", "model.net.encoder_widths=[8,8,8,8,8]",
        "model.net.decoder_widths=[8,8,8,8,8,8]", "model.net.downsampler_widths=[4,4]"]


def test_threshold_baseline_marks_dark_voxels_inside_the_brain() -> None:
    t1 = np.full((20, 20, 20), 80.0, dtype=np.float32)
    t1[:2] = 0.0
    t1[9:12, 9:12, 9:12] = 20.0
    mask = threshold_mask(t1, level=30.0, erosion=2)
    assert mask.dtype == np.uint8 and mask.sum() == 27 and mask[10, 10, 10] == 1


def test_demo_writes_the_result_contract(tmp_path: Path) -> None:
    result = run_demo(tmp_path, TINY)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved == json.loads(json.dumps(result))
    for key in ("project", "task", "metric", "higher_is_better", "model", "model_value", "baseline",
                "baseline_value", "n_cases", "prediction", "train_seconds"):
        assert key in saved, key
    assert saved["project"] == "spin" and saved["n_cases"] == 2
    assert 0.0 <= saved["model_value"] <= 1.0 and 0.0 <= saved["baseline_value"] <= 1.0
    pred = nib.load(saved["prediction"])
    scan = Path(saved["prediction"]).name.split("_")[0]
    source = nib.load(tmp_path / "data" / "raw" / scan[:5] / scan / f"{scan}_t1w_stx.nii.gz")
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)


def test_threshold_tuning_matches_scoring_every_grid_mask(atlas_fixture: dict) -> None:
    cache = VolumeCache(atlas_fixture["cache"])
    scans = atlas_fixture["ids"][:3]
    t1s = {s: np.asarray(volume_xyz(cache, s, "t1")) for s in scans}
    brute: dict[str, float] = {"dice": -1.0}
    for erosion in EROSIONS:
        for level in LEVELS:
            def grid_mask(scan: str, level: int = level, erosion: int = erosion) -> np.ndarray:
                return threshold_mask(t1s[scan], level, erosion=erosion)

            dice = score_masks(grid_mask, cache, scans)["mean"]["dice"]
            if dice > brute["dice"]:
                brute = {"dice": dice, "level": float(level), "erosion": float(erosion)}
    assert 0.0 < brute["dice"] < 1.0
    assert tune_threshold(cache, scans) == brute


def test_dice_by_level_counts_voxels_strictly_below_each_level() -> None:
    t1 = np.array([10.0, 20.0, 20.0, 30.0, 40.0])
    interior = np.array([True, True, True, True, False])
    lesion = np.array([True, False, True, False, True])
    # level 20: {10} predicted, 1 hit of 3 lesion voxels -> 2/(1+3); level 31: {10, 20, 20, 30}, 2 hits -> 4/7
    assert dice_by_level(t1, interior, lesion, [5, 20, 31]) == [0.0, 0.5, 4 / 7]


def test_demo_writes_last_checkpoint_with_each_validation(tmp_path: Path) -> None:
    cfg = compose_demo(tmp_path)
    assert cfg.trainer.check_val_every_n_epoch == 10 and cfg.trainer.max_epochs % 10 == 0
    assert cfg.callbacks.last_checkpoint.every_n_epochs == 10  # the final epoch still writes last.ckpt
    assert compose_demo(tmp_path, ["trainer.check_val_every_n_epoch=1"]).callbacks.last_checkpoint.every_n_epochs == 1
