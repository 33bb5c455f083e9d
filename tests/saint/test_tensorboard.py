"""A demo-sized SAINT run logs the shared scalars and coronal panels (superior up, patient's right on the left)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.io.cache import VolumeCache
from common.panels import radiological_view
from projects.saint.data import lr_from_hr
from projects.saint.module import CT_PANEL_WINDOW

TINY = ["model.net.g0=8", "model.net.n_rdb=1", "model.net.n_layers=2", "model.net.growth=4",
        "model.net.gw_hidden=[4,8,8,8]"]


def test_demo_run_logs_shared_scalars_and_oriented_panels(cache_dir: Path, tmp_path: Path, logged_run) -> None:
    run = logged_run("saint", "demo", tmp_path, [f"data.cache_dir={cache_dir}", "data.batch_size=2",
                                                 "data.samples_per_epoch=4", "trainer.max_steps=2",
                                                 "trainer.max_epochs=1", *TINY])
    # the demo's kernel generator learns at 1/100 of the trunk's rate: two groups of one Adam
    run.check_shared_names({"val/psnr", "val/psnr_x4", "val/psnr_x6"}, {"lr/adam/trunk", "lr/adam/kernel_generator"},
                           panels=4)  # 2 validation cases x factors 4 and 6
    tag = sorted(t for t in run.images if "_x4/" in t)[0]  # val/<case>_x4/y<index>
    name, plane = tag.split("/")[1:]
    case, index = name.rsplit("_x", 1)[0], int(plane[1:])
    cache = VolumeCache(cache_dir)
    hr, _ = lr_from_hr(np.asarray(cache.load(case, "image"), np.float32), 4)
    shown = radiological_view(cache.affine(case), 1).apply(torch.from_numpy(hr[:, index])).numpy()
    lo, hi = CT_PANEL_WINDOW
    expected = np.clip((shown - lo) / (hi - lo), 0, 1)
    assert not np.allclose(expected, expected[::-1, ::-1], atol=0.02)  # a flipped panel would not pass
    reference = run.columns(tag, expected.shape)[2][..., 0]
    assert reference.shape == expected.shape and np.abs(reference - expected).max() <= 1.5 / 255
    # z (rows, e.g. 1.25 mm) against x (columns, 0.9 mm): each voxel drawn in proportion, taller than wide
    sx, _, sz = np.linalg.norm(cache.affine(case)[:3, :3], axis=0)
    panel = run.events.Images(tag)[-1]
    row_px = (panel.height - run.CAPTION_PX) / expected.shape[0]
    col_px = (panel.width - 3 * run.GAP_PX) / 4 / expected.shape[1]
    assert sz > sx and abs(row_px / col_px - sz / sx) <= 0.5 / col_px
