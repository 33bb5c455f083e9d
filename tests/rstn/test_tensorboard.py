"""A demo-sized RSTN run (plane Z) logs the shared scalars and axial panels with the masks over the CT."""

from __future__ import annotations

import numpy as np
import torch

from common.io.cache import VolumeCache
from common.panels import radiological_view


def test_demo_run_logs_shared_scalars_and_oriented_mask_panels(synthetic_cache, tmp_path, logged_run) -> None:
    run = logged_run("rstn", "demo", tmp_path, [
        "plane=Z", f"data.cache_dir={synthetic_cache}", f"data.split_file={synthetic_cache}/splits.json",
        "data.synthetic=null", "trainer.max_epochs=1", "++trainer.limit_train_batches=2"])
    groups = {"lr/adam/coarse_w", "lr/adam/coarse_b", "lr/adam/fine_w", "lr/adam/fine_b"}
    run.check_shared_names({"val/dice", "val/dice_coarse", "val/loss"}, groups, panels=2)  # 2 validation cases
    cache = VolumeCache(synthetic_cache)
    labelled = []
    for tag in sorted(run.images):  # val/<case>/z<index>: the validation slice with the most organ seen
        case, index = tag.split("/")[1], int(tag.split("/")[2][1:])
        view = radiological_view(cache.affine(case), 2)
        label = view.apply(torch.from_numpy(np.asarray(cache.load(case, "label")[:, :, index], np.float32)))
        image = view.apply(torch.from_numpy(np.asarray(cache.load(case, "image")[:, :, index], np.float32)))
        columns = run.columns(tag, label.shape)
        assert np.abs(columns[0][..., 0] - image.clamp(0, 1).numpy()).max() <= 1.5 / 255  # window [0, 1]
        drawn = np.abs(columns[2] - columns[0]).max(axis=-1) > 0.02  # the reference overlay
        assert np.array_equal(drawn, label.numpy() > 0)
        labelled.append(bool(label.any()))
    assert any(labelled)  # an empty slice would not test the overlay's place
