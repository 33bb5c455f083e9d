"""Run matrix, second axis: every EasySR experiment runs `fast_dev_run` on the CPU in fp32 and in bf16 autocast.

Both networks, both optimisers (where the experiment trains the discriminator) and the losses are the
experiment's own; the volumes are 32 x 33 x 32 and training uses whole volumes instead of patches.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from common.model_card import experiments


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
@pytest.mark.parametrize("experiment", experiments("easysr"))
def test_fast_dev_run(experiment: str, precision: str, raw32: Path, tmp_path: Path, fast_dev_run) -> None:
    overrides = [f"data.raw_dir={raw32}", f"paths.data_dir={tmp_path}", "model.discriminator.input_shape=[32,33,32]",
                 "data.patch_size=null", "data.batch_size=2"]
    metrics = fast_dev_run("easysr", experiment, tmp_path / "run", overrides, precision)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
    assert 0 < metrics["val/psnr"] < 60 and -1 <= metrics["val/ssim"] <= 1
    assert metrics["val/psnr_spline"] > 10  # the classical baseline is scored beside the model
