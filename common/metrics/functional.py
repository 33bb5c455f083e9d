"""Image-quality and segmentation metrics on whole arrays: numpy in, python float out.

Every function also accepts torch tensors (they are detached and moved to the CPU first). Intensity
metrics take an explicit ``data_range``: nothing is inferred from the dtype or the data behind the
caller's back.

Image quality:
    ``psnr``, ``nmse``, ``ssim2d`` (one 2-D image), ``ssim_slices`` (mean of 2-D SSIM over the slices
    along one axis), ``ssim3d`` (3-D window) and ``fastmri_volume_metrics`` (the rules of the official
    fastMRI evaluator: NMSE over the volume, PSNR of the volume and mean slice SSIM, both with
    ``data_range = target.max()``). SSIM follows scikit-image's conventions: a uniform 7 x 7 window,
    sample covariance, K1 = 0.01, K2 = 0.03, the mean taken over the window positions that lie fully
    inside the image.

Segmentation (boolean arrays of any dimension) lives in ``common.metrics.segmentation`` and is
re-exported here: ``dice``, ``iou``, ``precision``, ``recall``, ``hd95``, ``seg_scores``,
``pooled_seg_scores`` (see that module for the empty-mask rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

from common.metrics._arrays import as_numpy as as_numpy
from common.metrics._arrays import pair
from common.metrics.segmentation import confusion_counts as confusion_counts
from common.metrics.segmentation import dice as dice
from common.metrics.segmentation import hd95 as hd95
from common.metrics.segmentation import iou as iou
from common.metrics.segmentation import pooled_seg_scores as pooled_seg_scores
from common.metrics.segmentation import precision as precision
from common.metrics.segmentation import recall as recall
from common.metrics.segmentation import scores_from_counts as scores_from_counts
from common.metrics.segmentation import seg_scores as seg_scores
from common.metrics.segmentation import surface as surface

K1 = 0.01
K2 = 0.03


def _check_range(data_range: float) -> float:
    value = float(data_range)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return value


# --------------------------------------------------------------------------------------------------
# Image quality
# --------------------------------------------------------------------------------------------------
def psnr(pred: Any, ref: Any, data_range: float) -> float:
    """Return the peak signal-to-noise ratio in dB: ``10 log10(data_range**2 / MSE)``.

    Args:
        pred: predicted image or volume, any shape, any real dtype (computed in float64).
        ref: reference of the same shape.
        data_range: the peak value (max - min of the intensity scale), same units as the images.

    Returns:
        PSNR in dB over all elements; ``inf`` when the images are identical.

    Raises:
        ValueError: shapes differ or ``data_range`` is not positive.
    """
    pred_np, ref_np = pair(pred, ref, "psnr")
    peak = _check_range(data_range)
    mse = float(np.mean((pred_np.astype(np.float64) - ref_np.astype(np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(peak**2 / mse))


def nmse(pred: Any, ref: Any) -> float:
    """Return the normalised squared error ``||ref - pred||^2 / ||ref||^2`` (unitless).

    Args:
        pred: prediction, any shape (computed in float64).
        ref: reference of the same shape.

    Returns:
        NMSE over all elements. A zero reference gives 0.0 when the prediction is zero too, else inf.

    Raises:
        ValueError: shapes differ.
    """
    pred_np, ref_np = pair(pred, ref, "nmse")
    ref64 = ref_np.astype(np.float64)
    error = float(np.sum((ref64 - pred_np.astype(np.float64)) ** 2))
    energy = float(np.sum(ref64**2))
    if energy == 0.0:
        return 0.0 if error == 0.0 else float("inf")
    return error / energy


def ssim2d(pred: Any, ref: Any, data_range: float, win_size: int = 7, gaussian: bool = False) -> float:
    """Return the mean SSIM of one 2-D image pair (scikit-image semantics).

    Args:
        pred: predicted image ``[H, W]`` (computed in float64).
        ref: reference image ``[H, W]``.
        data_range: intensity range of the images (same units).
        win_size: side of the uniform window (odd, at most min(H, W)); ignored when ``gaussian``.
        gaussian: use the 11 x 11 Gaussian window (sigma 1.5) with population covariance of Wang et
            al. (2004) instead of the uniform window with sample covariance.

    Returns:
        SSIM averaged over the window positions fully inside the image, in [-1, 1].

    Raises:
        ValueError: not 2-D, shapes differ, window larger than the image, bad ``data_range``.
    """
    pred_np, ref_np = pair(pred, ref, "ssim2d")
    if pred_np.ndim != 2:
        raise ValueError(f"ssim2d expects 2-D images, got shape {pred_np.shape}")
    return _ssim(pred_np, ref_np, data_range, win_size, gaussian)


def _ssim(pred: np.ndarray, ref: np.ndarray, data_range: float, win_size: int, gaussian: bool) -> float:
    peak = _check_range(data_range)
    pred64, ref64 = pred.astype(np.float64), ref.astype(np.float64)
    if gaussian:
        return float(
            structural_similarity(
                pred64, ref64, data_range=peak, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
        )
    if min(pred.shape) < win_size or win_size % 2 == 0:
        raise ValueError(f"SSIM window {win_size} must be odd and fit in image shape {pred.shape}")
    return float(structural_similarity(pred64, ref64, data_range=peak, win_size=win_size))


def ssim_slices(
    pred: Any, ref: Any, data_range: float | Sequence[float], axis: int = 0, win_size: int = 7
) -> float:
    """Return the mean over slices of the 2-D SSIM, slicing a 3-D volume along ``axis``.

    Args:
        pred: predicted volume, 3-D (computed in float64).
        ref: reference volume of the same shape.
        data_range: intensity range, one value for every slice or one per slice (a sequence as
            long as the volume along ``axis``, e.g. each reference slice's max - min).
        axis: the array axis that indexes the slices (negative values count from the end).
        win_size: side of the uniform window.

    Returns:
        Unweighted mean of the per-slice SSIM values.

    Raises:
        ValueError: not 3-D, shapes differ, window larger than a slice, a ``data_range`` that is
            not positive or has the wrong length.
    """
    pred_np, ref_np = pair(pred, ref, "ssim_slices")
    if pred_np.ndim != 3:
        raise ValueError(f"ssim_slices expects 3-D volumes, got shape {pred_np.shape}")
    pred_np, ref_np = np.moveaxis(pred_np, axis, 0), np.moveaxis(ref_np, axis, 0)
    if np.ndim(data_range) == 0:
        ranges = np.full(len(ref_np), float(np.asarray(data_range)))
    else:
        ranges = np.asarray(data_range, dtype=np.float64).reshape(-1)
    if ranges.shape != (len(ref_np),):
        raise ValueError(f"data_range has {ranges.size} values for {len(ref_np)} slices along axis {axis}")
    values = [_ssim(p, r, d, win_size, False) for p, r, d in zip(pred_np, ref_np, ranges, strict=True)]
    return float(np.mean(values))


def ssim3d(pred: Any, ref: Any, data_range: float, win_size: int = 7) -> float:
    """Return the SSIM of two 3-D volumes with a cubic uniform window (scikit-image semantics).

    Args:
        pred: predicted volume ``[D, H, W]`` (computed in float64).
        ref: reference volume of the same shape.
        data_range: intensity range of the volumes.
        win_size: side of the cubic window (odd, at most the smallest dimension).

    Returns:
        SSIM averaged over the window positions fully inside the volume.

    Raises:
        ValueError: not 3-D, shapes differ, window too large, bad ``data_range``.
    """
    pred_np, ref_np = pair(pred, ref, "ssim3d")
    if pred_np.ndim != 3:
        raise ValueError(f"ssim3d expects 3-D volumes, got shape {pred_np.shape}")
    return _ssim(pred_np, ref_np, data_range, win_size, False)


def fastmri_volume_metrics(target: Any, recon: Any) -> dict[str, float]:
    """Return NMSE, PSNR and SSIM of one volume with the official fastMRI evaluator's rules.

    NMSE = ``||target - recon||^2 / ||target||^2`` over the volume; PSNR of the whole volume with
    ``data_range = target.max()``; SSIM = mean over slices of scikit-image SSIM (7 x 7 uniform window,
    sample covariance) with the same ``data_range``. SSIM runs in the inputs' own float precision, as
    the official script does on the float32 arrays of the HDF5 files.

    Args:
        target: reference magnitude volume ``[S, H, W]`` (slices first), already centre-cropped.
        recon: reconstruction of the same shape.

    Returns:
        ``{"nmse": float, "psnr": float (dB), "ssim": float}``.

    Raises:
        ValueError: not 3-D, shapes differ, or the target maximum is not positive.
    """
    recon_np, target_np = pair(recon, target, "fastmri_volume_metrics")
    if target_np.ndim != 3:
        raise ValueError(f"fastMRI volumes must be [S, H, W], got shape {target_np.shape}")
    peak = _check_range(float(target_np.max()))
    ssim_values = [
        structural_similarity(t, r, data_range=peak) for t, r in zip(target_np, recon_np, strict=True)
    ]
    return {
        "nmse": nmse(recon_np, target_np),
        "psnr": psnr(recon_np, target_np, peak),
        "ssim": float(np.sum(ssim_values) / target_np.shape[0]),
    }
