"""A demo-sized stylish-fastMRI run logs the shared scalars and panels of each validation volume, as stored."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from common.panels import intensity_window


def test_demo_run_logs_shared_scalars_and_panels(fastmri_root: Path, tmp_path: Path, logged_run) -> None:
    run = logged_run("fastmri_gen", "demo", tmp_path / "run", [
        f"data.data_dir={fastmri_root}", "data.cache_dir=null", "data.batch_size=2", "data.val_batch_size=3",
        "data.sample_rate=1.0", "data.val_sample_rate=1.0", "trainer.max_epochs=1", "+trainer.limit_train_batches=2"])
    volumes = sorted((fastmri_root / "singlecoil_val").glob("*.h5"))
    run.check_shared_names({"val/psnr", "val/ssim", "val/nmse"}, {"lr/generator", "lr/discriminator"}, panels=len(volumes))
    for path in volumes:
        with h5py.File(path, "r") as f:
            target = np.asarray(f["reconstruction_esc"], np.float32)
        index = int(np.argmax(target.mean(axis=(1, 2))))  # the slice with the most signal
        lo, hi = (float(v) for v in intensity_window(torch.from_numpy(target[index])))
        expected = np.clip((target[index] - lo) / (hi - lo), 0, 1)
        reference = run.columns(f"val/{path.name}/z{index}", target.shape[1:])[2][..., 0]
        assert np.abs(reference - expected).max() <= 1.5 / 255
