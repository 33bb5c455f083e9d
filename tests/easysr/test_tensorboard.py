"""A demo-sized EasySR run logs the shared scalars and panels of the validation volumes in radiological view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.io.cache import VolumeCache
from common.panels import intensity_window, radiological_view


def test_demo_run_logs_shared_scalars_and_oriented_panels(raw32: Path, tmp_path: Path, logged_run) -> None:
    cache_dir = tmp_path / "cache"
    run = logged_run("easysr", "demo", tmp_path / "run", [
        f"data.raw_dir={raw32}", f"paths.data_dir={tmp_path}", f"data.cache_dir={cache_dir}", "data.patch_size=null",
        "data.batch_size=2", "model.discriminator.input_shape=[32,33,32]", "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1"])
    cache = VolumeCache(cache_dir)
    validation = [c for c in cache.case_ids() if cache.meta(c)["split"] == "validation"]
    run.check_shared_names({"val/psnr", "val/ssim", "val/psnr_spline"}, {"lr/generator", "lr/discriminator"},
                           panels=len(validation))
    tag = sorted(run.images)[0]  # val/<case>/d<index>: the slice along array axis 0, the thick axis in view
    case, index = tag.split("/")[1], int(tag.split("/")[2][1:])
    slice_hr = torch.from_numpy(np.array(cache.load(case, "hr")[index]))
    shown = radiological_view(cache.affine(case), 0).apply(slice_hr)
    lo, hi = intensity_window(shown)
    expected = ((shown - lo) / (hi - lo)).clamp(0, 1).numpy()
    assert not np.allclose(expected, expected[::-1, ::-1], atol=0.02)
    reference = run.columns(tag, expected.shape)[2][..., 0]
    assert reference.shape == expected.shape and np.abs(reference - expected).max() <= 1.5 / 255
