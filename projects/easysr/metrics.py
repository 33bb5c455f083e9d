"""EasySR's scoring, the reference's rules, one function for validation, test and `eval.py`.

PSNR over all voxels with the HR volume's range as the peak; SSIM the mean 2-D SSIM over the slices along one
axis (scikit-image defaults: 7x7 uniform window, sample covariance), each slice with its own HR range. An HR
slice of constant value (range 0, NaN in the reference) scores 1 when SR equals HR there, else 0. Both come from
`common.metrics` (`psnr`, `ssim_slices`); what is EasySR's is the choice of ranges and the constant-slice rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.metrics import psnr, ssim_slices

_TINY_RANGE = 1e-12  # a constant HR volume still gets a finite PSNR peak, as in the reference


def score_case(sr: Any, hr: Any, with_ssim: bool = True, slice_axis: int = 0) -> dict[str, float]:
    """Returns `{"psnr"}` (dB) and, with `with_ssim`, `{"ssim"}` of one super-resolved volume.

    Args:
        sr: float `[X, Y, Z]` (the network's [0, 255] scale or any other, the same as `hr`).
        hr: the reference volume, same shape.
        with_ssim: also the slice SSIM (slow on big volumes; validation may leave it out).
        slice_axis: the axis the SSIM slices along (the reference: 0).
    """
    sr64, hr64 = np.asarray(sr, np.float64), np.asarray(hr, np.float64)
    scores = {"psnr": psnr(sr64, hr64, max(float(hr64.max() - hr64.min()), _TINY_RANGE))}
    if with_ssim:
        scores["ssim"] = _slice_ssim(sr64, hr64, slice_axis)
    return scores


def _slice_ssim(sr: np.ndarray, hr: np.ndarray, axis: int) -> float:
    ranges = np.ptp(hr, axis=tuple(a for a in range(hr.ndim) if a != axis % hr.ndim))
    varying = np.flatnonzero(ranges > 0)
    constant = np.flatnonzero(ranges == 0)
    total = sum(float(np.array_equal(np.take(sr, k, axis), np.take(hr, k, axis))) for k in constant)
    if varying.size:
        total += varying.size * ssim_slices(np.take(sr, varying, axis), np.take(hr, varying, axis),
                                            ranges[varying], axis=axis)
    return total / len(ranges)
