"""Run matrix, second axis: every SPiN experiment runs `fast_dev_run` on the CPU in fp32 and in bf16 autocast.

Paper experiments read the tiny ATLAS-layout fixture cache (a fold split in the 6-fold experiment's format for
the fold experiments); demos generate their synthetic scans into the test's folder. Widths are shrunk.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from common.io.atomic import save_json
from common.model_card import compose_experiment, experiments

SHRINK = {
    "SPiN": ["model.net.embedding_width=4", "model.net.encoder_widths=[8,8,8,8,8]",
             "model.net.decoder_widths=[8,8,8,8,8,8]", "model.net.downsampler_widths=[4,4]"],
    "UNet": ["model.net.encoder_widths=[8,8,8,8,8]", "model.net.decoder_widths=[8,8,8,8,8]"],
}


def _data(experiment: str, atlas_fixture: dict, tmp_path: Path) -> list[str]:
    cfg = compose_experiment("spin", experiment)
    net = str(cfg.model.net._target_).rsplit(".", 1)[1]
    shrink = [*SHRINK[net], "data.batch_size=2", "data.eval_batch_size=8"]
    if str(cfg.data._target_).endswith("SyntheticATLASDataModule"):
        return [*shrink, f"data.root={tmp_path / 'synthetic'}", "data.n_train=3", "data.n_test=1",
                "data.shape=[32,40,24]", "data.samples_per_scan=1"]
    split = atlas_fixture["split"]
    if cfg.data.fold is not None:  # the fold experiments: the fixture's scans in the folds format
        ids = atlas_fixture["ids"]
        split = tmp_path / "folds.json"
        save_json(split, {"folds": [ids[:5], ids[5:]]})
        shrink.append("data.fold=1")
    return [*shrink, f"data.cache_dir={atlas_fixture['cache']}", f"data.split={split}", "data.val_fraction=0.2"]


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
@pytest.mark.parametrize("experiment", experiments("spin"))
def test_fast_dev_run(experiment: str, precision: str, atlas_fixture: dict, tmp_path: Path, fast_dev_run) -> None:
    metrics = fast_dev_run("spin", experiment, tmp_path / "run", _data(experiment, atlas_fixture, tmp_path),
                           precision)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
    assert 0.0 <= metrics["val/dice"] <= 1.0
