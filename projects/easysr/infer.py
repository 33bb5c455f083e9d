"""EasySR inference on NIfTI geometry: find the thick axis, upsample it, write an overlaying affine.

Grid correspondence (the one `ops.make_lr` trains with): a thick voxel `i` of size `s` along the through-plane
axis covers thin voxels `scale*i .. scale*i + scale-1` of size `s/scale`, so the output affine is
`scale_axis_affine(affine, axis, scale, anchor="extent")`: both grids cover the same field of view, and the
centre of thick voxel `i` lies at the centre of thin voxel `scale*i + (scale-1)/2` (for scale 3: voxel `3i+1`).
No registration is needed: the output overlays the input in world space.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from common.errors import DataError
from common.inference import sliding_window_3d
from common.io import Volume, scale_axis_affine, through_plane_axis
from common.runtime import autocast
from projects.easysr.ops import LAYOUT, Normaliser

log = logging.getLogger(__name__)


@torch.no_grad()
def upsample_normalised(generator: torch.nn.Module, lr: np.ndarray | torch.Tensor, patch: Sequence[int] | None = None,
                        overlap: float = 0.25, batch_size: int = 1, precision: str = "32") -> torch.Tensor:
    """Returns the generator's output for a normalised volume, whole or patch-wise with blended overlaps.

    Args:
        generator: an `EasySRGenerator` (put in eval mode here) upsampling tensor dim H by `generator.scale`.
        lr: float `[D, h, W]` in [0, 255], thick axis = 1.
        patch: LR patch `(d, h, w)` for volumes larger than it, or None to run the whole volume at once.
        overlap: fraction of a patch shared with its neighbours.
        batch_size: patches per forward pass.
        precision: "32" or "bf16" (autocast on the generator's device).

    Returns:
        float32 `[D, h * scale, W]` on the CPU.
    """
    generator.eval()
    device = next(generator.parameters()).device
    volume = torch.as_tensor(np.asarray(lr, dtype=np.float32) if not isinstance(lr, torch.Tensor) else lr)
    volume = volume.float()[None]

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device.type):
            return generator(x.to(device)).float()

    if patch is None or all(p >= s for p, s in zip(patch, volume.shape[1:])):
        return run(volume[None])[0, 0].cpu()
    scale = (1, int(generator.scale), 1)
    return sliding_window_3d(run, volume, patch, overlap, scale=scale, batch_size=batch_size, device=device)[0]


def resample_isotropic(data: np.ndarray, affine: np.ndarray, spacing_mm: float,
                       order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Returns `data` resampled to isotropic `spacing_mm` voxels over the same field of view, and its affine.

    Args:
        data: float `[X, Y, Z]`.
        affine: its `[4, 4]` voxel -> RAS mm affine.
        spacing_mm: target voxel size (the reference's 0.15 mm).
        order: spline order.

    Returns:
        float32 `[X', Y', Z']` and the float64 affine of that grid (direction cosines kept, extent kept).
    """
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    new_shape = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(data.shape, spacing)]
    zoom = [m / n for m, n in zip(new_shape, data.shape)]
    out = ndimage.zoom(np.asarray(data, np.float32), zoom, order=order, mode="reflect", grid_mode=True)
    new_affine = np.asarray(affine, dtype=np.float64)
    for axis, (n, factor) in enumerate(zip(data.shape, zoom)):
        new_affine = scale_axis_affine(new_affine, axis, factor, anchor="extent", size=n)
    return out.astype(np.float32), new_affine


def check_scan(volume: Volume) -> None:
    """Raises `DataError` (naming the file) if `volume` is not a usable 3-D scan."""
    if volume.data.ndim != 3:
        raise DataError(volume.path, f"expected a 3-D scan, got shape {volume.shape}")
    if min(volume.shape) < 2:
        raise DataError(volume.path, f"expected a 3-D scan, got a single slice (shape {volume.shape})")
    if not np.all(np.isfinite(volume.data)):
        raise DataError(volume.path, "scan contains NaN or Inf voxels")


def super_resolve(volume: Volume, generator: torch.nn.Module, axis: int | None = None,
                  patch: Sequence[int] | None = None, overlap: float = 0.25, intensity: str = "input",
                  target_spacing: float | None = None, precision: str = "32") -> Volume:
    """Returns the super-resolved scan with an affine that overlays the input.

    Args:
        volume: thick-slice scan `[X, Y, Z]` with its affine (any orientation, oblique allowed).
        generator: trained generator; its `scale` is the thick/thin ratio.
        axis: through-plane array axis, or None for the axis with the largest voxel size.
        patch: LR patch for sliding-window inference (None: whole volume).
        overlap: sliding-window overlap fraction.
        intensity: "input" (map back to the scan's units) or "normalised" (the network's [0, 255]).
        target_spacing: optional isotropic voxel size (mm) to resample the result to.
        precision: "32" or "bf16".

    Returns:
        :class:`Volume` float32, `shape[axis] * scale` along `axis` (or the target grid), same field of view.

    Raises:
        DataError: not a 3-D finite scan; bad `intensity`.
    """
    check_scan(volume)
    if intensity not in ("input", "normalised"):
        raise DataError(volume.path, f"intensity must be 'input' or 'normalised', got {intensity!r}")
    axis = through_plane_axis(volume.affine) if axis is None else int(axis)
    spacing = volume.spacing
    if spacing[axis] <= min(spacing) * 1.05:
        log.warning("%s: voxels are not thicker along axis %d (%s mm); upsampling it anyway",
                    volume.path, axis, [round(s, 4) for s in spacing])
    data, _, axes = LAYOUT.to_cache(np.asarray(volume.data, np.float32), volume.affine, axis)
    norm = Normaliser.fit(data)
    sr = upsample_normalised(generator, norm.apply(data), patch, overlap, precision=precision).numpy()
    if intensity == "input":
        sr = norm.invert(sr)
    sr = np.ascontiguousarray(axes.to_file(sr, np.eye(4))[0])  # the affine: scaled from the file's below
    scale = int(generator.scale)
    affine = scale_axis_affine(volume.affine, axis, scale, anchor="extent", size=volume.shape[axis])
    if target_spacing is not None:
        sr, affine = resample_isotropic(sr, affine, float(target_spacing))
    return Volume(data=sr, affine=affine, header=volume.header, path=None)
