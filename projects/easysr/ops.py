"""EasySR array operations shared by training, evaluation and inference.

* One intensity normalisation (:class:`Normaliser`): z-score, clip at +-2.58 SD, min-max to [0, 255]. Its
  parameters are fitted on the network *input* (the LR volume) and applied unchanged to the target, so training
  and inference see exactly the same mapping, and it can be inverted to write outputs in the input's units.
* LR synthesis (:func:`make_lr`): cubic-spline resize of one axis by 1/scale on the "extent" grid: LR voxel `i`
  covers HR voxels `scale*i .. scale*i + scale-1` (centre `scale*i + (scale-1)/2`), the same correspondence the
  generator's transposed conv produces and the one `scale_axis_affine(..., anchor="extent")` describes.
The reference's evaluation rules are `projects.easysr.metrics.score_case`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from common.io.layout import CacheLayout

#: The cache and network layout: the thick (through-plane) axis moved to array axis 1, the others in file order.
LAYOUT = CacheLayout(move="thickest", position=1)

CLIP_SD = 2.58
OUT_MAX = 255.0


@dataclass(frozen=True)
class Normaliser:
    """Affine-plus-clip intensity map `v -> [0, 255]` fitted on one volume.

    Attributes:
        mean: mean of the fitting volume.
        std: standard deviation of the fitting volume (> 0).
        low: smallest clipped z-score of the fitting volume (maps to 0).
        high: largest clipped z-score of the fitting volume (maps to 255).
    """

    mean: float
    std: float
    low: float
    high: float

    @classmethod
    def fit(cls, volume: np.ndarray, clip_sd: float = CLIP_SD) -> Normaliser:
        """Returns the normaliser of `volume` (any shape, finite values, not constant)."""
        data = np.asarray(volume, dtype=np.float64)
        mean, std = float(data.mean()), float(data.std())
        std = std if std > 0 else 1.0
        z = np.clip((data - mean) / std, -clip_sd, clip_sd)
        low, high = float(z.min()), float(z.max())
        if high <= low:
            high = low + 1.0
        return cls(mean, std, low, high)

    def apply(self, volume: np.ndarray, clip_sd: float = CLIP_SD) -> np.ndarray:
        """Returns float32 intensities in [0, 255] (values beyond the fitted range are clipped)."""
        z = np.clip((np.asarray(volume, dtype=np.float32) - self.mean) / self.std, -clip_sd, clip_sd)
        out = (z - self.low) * (OUT_MAX / (self.high - self.low))
        return np.clip(out, 0.0, OUT_MAX).astype(np.float32)

    def invert(self, normalised: np.ndarray) -> np.ndarray:
        """Returns float32 intensities in the fitted volume's units (exact for values that were not clipped)."""
        z = np.asarray(normalised, dtype=np.float32) * ((self.high - self.low) / OUT_MAX) + self.low
        return (z * self.std + self.mean).astype(np.float32)

    def to_dict(self) -> dict[str, float]:
        """Returns the parameters as a JSON-serialisable dict."""
        return asdict(self)


def normalise(volume: np.ndarray) -> np.ndarray:
    """Returns `volume` normalised by its own statistics: float32 in [0, 255] (z-score, clip +-2.58, min-max)."""
    return Normaliser.fit(volume).apply(volume)


def make_lr(hr: np.ndarray, axis: int = 1, scale: int = 3, order: int = 3) -> np.ndarray:
    """Returns the thick-slice version of `hr`: axis `axis` resized by 1/scale with splines.

    The resize uses the extent-preserving grid (scipy `grid_mode=True`): the LR field of view equals the HR one,
    and LR voxel `i` is centred on HR position `scale*i + (scale-1)/2`.

    Args:
        hr: float `[X, Y, Z]` volume whose size along `axis` is a multiple of `scale`.
        axis: array axis to thicken.
        scale: integer factor.
        order: spline order (3 = cubic, as in the reference).

    Returns:
        float32 array, `hr.shape` with `shape[axis] // scale`.

    Raises:
        ValueError: the size along `axis` is not a multiple of `scale`.
    """
    if hr.shape[axis] % scale:
        raise ValueError(f"size {hr.shape[axis]} along axis {axis} is not a multiple of {scale}")
    zoom = [1.0] * hr.ndim
    zoom[axis] = 1.0 / scale
    return ndimage.zoom(np.asarray(hr, dtype=np.float32), zoom, order=order, mode="reflect",
                        grid_mode=True).astype(np.float32)


def spline_upsample(lr: np.ndarray, axis: int = 1, scale: int = 3, order: int = 3) -> np.ndarray:
    """Returns `lr` upsampled `scale` times along `axis` on the same extent grid as :func:`make_lr` (baseline).

    Args:
        lr: float `[X, Y, Z]`.
        axis: array axis to upsample.
        scale: integer factor.
        order: spline order (3 = cubic).

    Returns:
        float32 array with `shape[axis] * scale`.
    """
    zoom = [1.0] * lr.ndim
    zoom[axis] = float(scale)
    return ndimage.zoom(np.asarray(lr, dtype=np.float32), zoom, order=order, mode="reflect",
                        grid_mode=True).astype(np.float32)
