"""Small isotropic brain-like volumes for the EasySR tests and demo (no data download needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def brainlike_volume(shape: Sequence[int], seed: int, texture_mm: float = 1.5) -> np.ndarray:
    """Returns a float32 volume: an ellipsoidal "brain" with smooth tissue texture, folds and Gaussian noise.

    Args:
        shape: `(X, Y, Z)` voxels.
        seed: random seed (each seed gives a different volume).
        texture_mm: correlation length of the texture, in voxels.

    Returns:
        float32 `shape`, background about 0, tissue about 100-500.
    """
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    axes = 0.75 + 0.1 * rng.random(3)
    radius = np.sqrt(sum((g / r) ** 2 for g, r in zip(grid, axes)))
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), texture_mm)
    texture /= max(float(texture.std()), 1e-6)
    # Thin bright sheets (cortex-like folds) give the through-plane detail that splines blur.
    folds = np.cos(6.0 * np.pi * radius + 2.0 * texture) > 0.7
    tissue = 200 + 60 * texture + 150 * folds
    vol = np.where(radius < 1, tissue, 0.0) + 10 * rng.standard_normal(shape)
    return vol.astype(np.float32)


def iso_affine(spacing: float = 0.2, origin: Sequence[float] = (-3.0, 2.0, 1.0)) -> np.ndarray:
    """Returns a float64 `[4, 4]` RAS affine with isotropic voxels of `spacing` mm."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    return affine
