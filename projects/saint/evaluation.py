"""The SAINT evaluation protocol and the interpolation baselines along z.

Protocol (reference `utility.calc_psnr` / `trainer.test`): both volumes clipped to [0, 4000] and divided by 4000,
the observed slices (z = 0, f, 2f, ...) removed, x and y cropped to the central half (128..384 of 512), one PSNR
(peak 1) per volume over the remaining block rounded to 2 decimals, and the mean over volumes weighted by their
number of slices. SSIM (absent from the reference) follows the same rules: scikit-image SSIM (7x7 uniform
window, data range 1) per synthesised axial slice, averaged per volume, then the same weighted mean.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from scipy.interpolate import CubicSpline

from common.metrics import ssim_slices

MAX_INTENSITY = 4000.0


def _numpy(volume: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(volume, torch.Tensor):
        return volume.detach().cpu().float().numpy()
    return np.asarray(volume, dtype=np.float32)


def protocol_block(volume: np.ndarray | torch.Tensor, f: int, crop_fraction: float = 0.5) -> np.ndarray:
    """Returns the evaluated part of a `[X, Y, Z]` volume: clipped to [0, 1] (/4000), observed slices removed,
    central crop of `crop_fraction` of x and y. float64 `[cx, cy, Z - ceil(Z / f)]`.
    """
    vol = np.clip(_numpy(volume).astype(np.float64), 0.0, MAX_INTENSITY) / MAX_INTENSITY
    x, y, z = vol.shape
    keep = np.arange(z) % f != 0
    cx, cy = max(1, round(x * crop_fraction)), max(1, round(y * crop_fraction))
    x0, y0 = (x - cx) // 2, (y - cy) // 2
    return vol[x0:x0 + cx, y0:y0 + cy][:, :, keep]


def psnr_saint(sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, f: int, crop_fraction: float = 0.5,
               decimals: int | None = 2) -> float:
    """Returns the PSNR (dB, peak 1) of one volume with the SAINT protocol.

    Args:
        sr: synthesised volume `[X, Y, Z]`, raw units (0..4000).
        hr: reference volume of the same shape (after dropping the first `Z mod f` slices).
        f: the factor: slices 0, f, 2f, ... were observed and are not scored.
        crop_fraction: central fraction of x and y that is scored (0.5: 128..384 of 512).
        decimals: rounding of the result as in the reference (None: none).

    Raises:
        ValueError: shapes differ or no slice is left to score.
    """
    if tuple(sr.shape) != tuple(hr.shape):
        raise ValueError(f"shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    a, b = protocol_block(sr, f, crop_fraction), protocol_block(hr, f, crop_fraction)
    if a.size == 0:
        raise ValueError(f"nothing to score: {tuple(sr.shape)} at factor {f}")
    mse = float(np.mean((a - b) ** 2))
    value = float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)
    return float(round(value, decimals)) if decimals is not None and np.isfinite(value) else float(value)


def ssim_saint(sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, f: int,
               crop_fraction: float = 0.5) -> float:
    """Returns the mean SSIM over the synthesised axial slices of one volume (same rules as `psnr_saint`)."""
    a, b = protocol_block(sr, f, crop_fraction), protocol_block(hr, f, crop_fraction)
    win = min(7, *(s if s % 2 else s - 1 for s in a.shape[:2]))
    return ssim_slices(a, b, data_range=1.0, axis=2, win_size=win)


def score_case(sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, f: int, crop_fraction: float = 0.5,
               with_ssim: bool = True) -> dict[str, float]:
    """Returns the protocol's scores of one volume, `{"psnr"}` (dB, rounded as the reference) and `{"ssim"}`.

    The one scoring of a SAINT output: validation and test (`SaintModule`) and `eval.py` call it.

    Args:
        sr: synthesised volume `[X, Y, Z]`, raw units (0..4000).
        hr: reference volume of the same shape.
        f: the factor (slices 0, f, 2f, ... are not scored).
        crop_fraction: central fraction of x and y that is scored.
        with_ssim: also the SSIM (slow on whole volumes; validation leaves it out).
    """
    scores = {"psnr": psnr_saint(sr, hr, f, crop_fraction)}
    if with_ssim:
        scores["ssim"] = ssim_saint(sr, hr, f, crop_fraction)
    return scores


def weighted_mean(values: Iterable[float], weights: Iterable[float]) -> float:
    """Returns `sum(v * w) / sum(w)` (the reference weights each volume's PSNR by its number of slices)."""
    v, w = np.asarray(list(values), dtype=np.float64), np.asarray(list(weights), dtype=np.float64)
    return float(np.sum(v * w) / np.sum(w)) if w.size else float("nan")


def interpolate_z(lr: np.ndarray | torch.Tensor, f: int, kind: str = "cubic", chunk: int = 32) -> np.ndarray:
    """Returns the classical baseline `[X, Y, Z_lr * f]`: interpolation along z onto the SAINT grid.

    High-resolution slice `z * f + k` lies at low-resolution position `z + k / f`; the last f - 1 slices lie
    beyond the last observed one and take its value (no extrapolation).

    Args:
        lr: `[X, Y, Z_lr]` raw intensities.
        f: factor.
        kind: "linear" or "cubic" (cubic spline, not-a-knot ends).
        chunk: x rows interpolated at a time (bounds the memory of the spline coefficients).

    Raises:
        ValueError: unknown kind.
    """
    vol = _numpy(lr)
    n = vol.shape[2]
    pos = np.minimum(np.arange(n * f) / f, n - 1)
    if kind == "linear" or n < 2:
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        t = (pos - lo).astype(np.float32)
        return vol[:, :, lo] * (1 - t) + vol[:, :, hi] * t
    if kind != "cubic":
        raise ValueError(f"kind must be 'linear' or 'cubic', got {kind!r}")
    out = np.empty((*vol.shape[:2], n * f), dtype=np.float32)
    for start in range(0, vol.shape[0], chunk):
        spline = CubicSpline(np.arange(n), vol[start:start + chunk].astype(np.float64), axis=2)
        out[start:start + chunk] = spline(pos)
    return np.clip(out, 0.0, MAX_INTENSITY)
