"""The demo contract: result.json with the model, the tuned baseline and a prediction on the input's grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from projects.spin.demo import run_demo, threshold_mask

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
