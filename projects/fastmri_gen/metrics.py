"""fastmri_gen's scoring of one reconstructed volume: the official fastMRI evaluator's rules.

Both volumes are centre-cropped to the target's width x width, then NMSE over the volume, PSNR with the target
volume's maximum as the peak and the mean slice SSIM (7 x 7 uniform window) are computed
(`common.metrics.fastmri_volume_metrics`). `eval.py` scores every reconstruction file with it;
`FastMRIModule` gathers the same three numbers slice by slice (`common.metrics.ReconstructionVolumeMetric`,
`psnr_range="ref_max"`, on the 320 x 320 crops) so that it stays correct under DDP, and
tests/fastmri_gen/test_train.py checks that both agree.
"""

from __future__ import annotations

import os

import numpy as np

from common.errors import DataError
from common.metrics import fastmri_volume_metrics


def score_case(recon: np.ndarray, target: np.ndarray, where: str | os.PathLike | None = None) -> dict[str, float]:
    """Returns `{"nmse", "psnr", "ssim"}` of a reconstruction `[S, h, w]` against its target `[S, H, W]`.

    Args:
        recon: the reconstruction (raw magnitude units).
        target: the reference volume; its width sets the square crop.
        where: the reconstruction's file, named in errors.

    Raises:
        DataError: a volume smaller than the crop, or crops of different shapes.
    """
    width = target.shape[-1]
    crops = []
    for volume in (target, recon):
        top, left = (volume.shape[-2] - width) // 2, (volume.shape[-1] - width) // 2
        if top < 0 or left < 0:
            raise DataError(where, f"volume {volume.shape} is smaller than the {width} x {width} crop")
        crops.append(volume[..., top: top + width, left: left + width])
    if crops[0].shape != crops[1].shape:
        raise DataError(where, f"shape {crops[1].shape} differs from the target {crops[0].shape}")
    return fastmri_volume_metrics(crops[0], crops[1])
