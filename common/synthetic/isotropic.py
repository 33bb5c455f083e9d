"""Rat-brain-like isotropic MRI volumes with fine detail along every axis (for through-plane SR).

What it mimics: a T2-weighted, high-resolution (0.15 mm isotropic by default) rodent brain in the
spirit of EasySR's data: a smooth elongated brain (axis 1 anterior-posterior, olfactory bulbs in front,
cerebellum behind) with a layered cortex, white-matter tracts darker than grey matter, bright CSF in thin
ventricles, a C-shaped hippocampus, cerebellar folia (striations along axis 1) and small dark vessels
running in every direction, over a Rician noise floor. The detail is at 2-6 voxels, so a cubic-spline
upsampling of an axis-1-decimated copy cannot restore it, while it is not pure noise either.

What it does not: real rodent anatomy, registration to a template, coil sensitivity profiles beyond a
smooth bias, or T1 contrast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from common.synthetic._fields import (
    centred_affine,
    ellipsoid,
    normalised_grid,
    polyline_distance,
    rician,
    smooth_noise,
)

#: T2-like tissue levels of the synthetic rat brain (arbitrary units, background 0).
RAT_LEVELS: dict[str, float] = {"csf": 1.0, "gm": 0.55, "wm": 0.32, "vessel": 0.12}


def isotropic_volume(
    seed: int, shape: Sequence[int] = (64, 96, 64), spacing: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Returns a rat-brain-like isotropic volume and its affine.

    Args:
        seed: seed of ``np.random.default_rng``; the same seed gives identical arrays.
        shape: array shape ``(X, Y, Z)``; axis 1 is anterior-posterior (the long axis), each size >= 16.
        spacing: isotropic voxel size in mm.

    Returns:
        ``(vol, affine)``: float32 ``[X, Y, Z]`` magnitudes in about [0, 1.1] (background near 0);
        float64 ``[4, 4]`` RAS affine (mm).

    Raises:
        ValueError: if ``shape`` is not three sizes >= 16 or ``spacing`` is not positive.
    """
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"isotropic_volume needs a 3-D shape with every size >= 16, got {tuple(shape)}")
    if spacing <= 0:
        raise ValueError(f"isotropic_volume needs a positive voxel size in mm, got {spacing}")
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    rng = np.random.default_rng(seed)
    coords = normalised_grid(shape3)
    half_vox = np.array(shape3, dtype=np.float64) / 2.0
    vol, brain, depth_vox = _brain_and_cortex(rng, coords, shape3, half_vox)
    _deep_structures(rng, vol, coords)
    _cerebellum(rng, vol, coords, brain)
    _vessels(rng, vol, brain, shape3)
    vol[~brain] = 0.0
    vol = ndimage.gaussian_filter(vol, 0.5)
    vol *= np.exp(0.1 * smooth_noise(rng, shape3, 40) + 0.1 * coords[2])
    vol = rician(rng, vol, 0.025)
    return vol.astype(np.float32), centred_affine(shape3, (spacing,) * 3)


def _brain_and_cortex(
    rng: np.random.Generator, coords: list[np.ndarray], shape: tuple[int, int, int], half_vox: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain outline (with olfactory bulbs) and a cortex whose layers follow the surface."""
    u, v, w = coords
    wobble = 0.03 * smooth_noise(rng, shape, 16)
    semi = np.array([0.8, 0.78, 0.62]) * rng.uniform(0.95, 1.05, 3)
    radius = ellipsoid((u, v, w), (0, -0.08, -0.05), semi, wobble)
    bulbs = np.minimum(*(ellipsoid((u, v, w), (0.16 * side, 0.72, -0.12), (0.14, 0.2, 0.16), wobble) for side in (-1, 1)))
    depth_vox = np.maximum((1.0 - radius) * float(np.mean(semi * half_vox)), (1.0 - bulbs) * 0.15 * half_vox[0])
    brain = depth_vox > 0
    period = rng.uniform(3.0, 4.5)
    cortex = (depth_vox < 4 * period) & (w > -0.35)
    layers = 0.04 * np.sin(2 * np.pi * depth_vox / period) * cortex
    vol = np.where(cortex, RAT_LEVELS["gm"] + layers, RAT_LEVELS["gm"] - 0.05).astype(np.float32)
    vol += 0.03 * smooth_noise(rng, shape, 3)
    callosum = (depth_vox > 4 * period) & (depth_vox < 4 * period + 3) & (w > -0.1)
    vol[callosum] = RAT_LEVELS["wm"]
    return vol, brain, depth_vox


def _deep_structures(rng: np.random.Generator, vol: np.ndarray, coords: list[np.ndarray]) -> None:
    """Lateral ventricles (thin bright slits), a C-shaped hippocampus with a dark inner band, tracts."""
    u, v, w = coords
    shift = rng.uniform(-0.04, 0.04, 3)
    for side in (-1.0, 1.0):
        slit = ellipsoid((u, v, w), (0.2 * side, 0.1 + shift[0], 0.12), (0.025, 0.3, 0.14))
        vol[slit < 1] = RAT_LEVELS["csf"]
        arc = ellipsoid((u, v - 0.15 * (w - 0.0) ** 2), (0.3 * side, -0.28 + shift[1], 0.0), (0.18, 0.1, 0.35))
        vol[(arc < 1) & (arc > 0.55)] = RAT_LEVELS["gm"] + 0.08
        vol[(arc <= 0.55) & (arc > 0.4)] = RAT_LEVELS["wm"] + 0.05
        tract = ellipsoid((u, v, w), (0.35 * side, 0.1 + shift[2], -0.35), (0.05, 0.35, 0.05))
        vol[tract < 1] = RAT_LEVELS["wm"]


def _cerebellum(rng: np.random.Generator, vol: np.ndarray, coords: list[np.ndarray], brain: np.ndarray) -> None:
    """Folia: alternating grey/white stripes across axis 1 at the back of the brain."""
    u, v, w = coords
    start = -0.55 + rng.uniform(-0.05, 0.05)
    folia = np.sin(2 * np.pi * (v * vol.shape[1] / 2 + 2.0 * w) / rng.uniform(4.0, 6.0))
    back = np.broadcast_to((v < start) & (w > -0.3), vol.shape) & brain
    vol[back] = np.where(np.broadcast_to(folia, vol.shape)[back] > 0.2, RAT_LEVELS["gm"] + 0.05, RAT_LEVELS["wm"])


def _vessels(rng: np.random.Generator, vol: np.ndarray, brain: np.ndarray, shape: tuple[int, int, int]) -> None:
    """Short, slightly curved dark vessels (flow voids) in random 3-D directions."""
    inside = np.argwhere(brain[::4, ::4, ::4]) * 4
    if len(inside) == 0:
        return
    count = max(8, int(np.prod(shape) / 6000))
    for _ in range(count):
        start = inside[rng.integers(len(inside))].astype(np.float64)
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        length = rng.uniform(6.0, 18.0)
        t = np.linspace(0, 1, 24)[:, None]
        sag = rng.standard_normal(3) * 1.5
        points = start + t * length * direction + np.sin(np.pi * t) * sag
        dist, _, box = polyline_distance(points, shape, (1.0, 1.0, 1.0), 2.5)
        radius = rng.uniform(0.6, 1.3)
        weight = np.clip(radius + 0.5 - dist, 0.0, 1.0)
        vol[box] = (1 - weight) * vol[box] + weight * RAT_LEVELS["vessel"]
