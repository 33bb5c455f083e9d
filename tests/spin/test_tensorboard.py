"""A demo-sized SPiN run logs the shared scalars and axial panels (RAS+ cache: anterior up, right on the left)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.io.cache import VolumeCache
from common.panels import radiological_view
from projects.spin.splits import resolve_split

TINY = ["model.net.embedding_width=4", "model.net.encoder_widths=[8,8,8,8,8]",
        "model.net.decoder_widths=[8,8,8,8,8,8]", "model.net.downsampler_widths=[4,4]"]


def test_demo_run_logs_shared_scalars_and_oriented_mask_panels(tmp_path: Path, logged_run) -> None:
    root = tmp_path / "synthetic"
    run = logged_run("spin", "demo", tmp_path / "run", [
        *TINY, f"data.root={root}", "data.n_train=3", "data.n_test=1", "data.shape=[32,40,24]",
        "data.samples_per_scan=1", "data.batch_size=2", "data.eval_batch_size=8", "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1"])
    validation = set(resolve_split(str(root / "split.json"), None, 0.2, 0)["val"])  # the demo's val_fraction, seed
    run.check_shared_names({"val/dice", "val/loss", "val/small_dice"}, {"lr/adam"}, panels=len(validation))
    cache = VolumeCache(root / "cache")
    for tag in run.images:  # val/<scan>/z<index>: the scan's slice with the largest lesion
        scan, index = tag.split("/")[1], int(tag.split("/")[2][1:])
        assert scan in validation
        lesion = np.asarray(cache.load(scan, "lesion"))  # [Z, X, Y]
        assert index == int(np.argmax(lesion.reshape(len(lesion), -1).sum(1)))
        shown = radiological_view(cache.affine(scan), 2).apply(torch.from_numpy(lesion[index].astype(np.float32)))
        assert not torch.equal(shown, shown.flip(0)) and not torch.equal(shown, shown.flip(1))
        columns = run.columns(tag, shown.shape)
        drawn = np.abs(columns[2] - columns[0]).max(axis=-1) > 0.02  # the reference overlay
        assert np.array_equal(drawn, shown.numpy() > 0)
