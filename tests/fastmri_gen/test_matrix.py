"""Run matrix, second axis: every stylish-fastMRI experiment runs `fast_dev_run` on the CPU in fp32 and bf16.

Each experiment keeps its own model (baseline, generative, U-Net), fidelity switches, masks and losses; the
U-Net widths are shrunk (the MobileNetV2 trunks of the generative model keep their size) and the data is the
tiny fastMRI-layout fixture tree.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from common.model_card import compose_experiment, experiments


def _shrink(experiment: str) -> list[str]:
    model = compose_experiment("fastmri_gen", experiment).model
    net = model.get("net") or {}
    shrink = []
    if "chans" in net:
        shrink.append("model.net.chans=8")
    if "max_channels" in net:
        shrink += ["model.net.min_channels=8", "model.net.max_channels=16"]
    if model.get("discriminator"):
        shrink.append("model.discriminator.base_channels=8")
    return shrink


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
@pytest.mark.parametrize("experiment", experiments("fastmri_gen"))
def test_fast_dev_run(experiment: str, precision: str, fastmri_root: Path, tmp_path: Path, fast_dev_run) -> None:
    overrides = [f"data.data_dir={fastmri_root}", "data.cache_dir=null", "data.batch_size=2", "data.val_batch_size=3",
                 "data.sample_rate=1.0", "data.val_sample_rate=1.0", *_shrink(experiment)]
    metrics = fast_dev_run("fastmri_gen", experiment, tmp_path / "run", overrides, precision)
    assert math.isfinite(metrics["val/psnr"]) and 0 < metrics["val/ssim"] <= 1
    if "train/loss" in metrics:  # zero-filled has nothing to train
        assert math.isfinite(metrics["train/loss"])
