"""Small numerical building blocks shared by the synthetic generators (private).

Coordinates follow the project convention: an array is indexed ``[i, j, k]`` and a 4 x 4 affine maps
``(i, j, k, 1)`` to RAS millimetres. The generators describe anatomy in *normalised* coordinates
(``-1 .. 1`` across the field of view) so that the same description works at any array size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Per-axis numbers: a sequence or a 1-D array.
Floats = Sequence[float] | np.ndarray


def centred_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Returns a RAS affine with the given voxel size whose grid centre sits at 0 mm.

    Args:
        shape: array shape ``(X, Y, Z)``.
        spacing: voxel size in mm per array axis.

    Returns:
        float64 ``[4, 4]`` affine, axes along +R, +A, +S.
    """
    affine = np.eye(4)
    sizes = np.asarray(spacing, dtype=np.float64)
    affine[:3, :3] = np.diag(sizes)
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * sizes
    return affine


def normalised_grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Returns open (broadcastable) coordinates running from -1 to 1 along each array axis.

    Args:
        shape: array shape, any number of axes.

    Returns:
        One float32 array per axis, shaped to broadcast against ``shape``.
    """
    axes = []
    for axis, size in enumerate(shape):
        view = [1] * len(shape)
        view[axis] = size
        line = np.linspace(-1.0, 1.0, size, dtype=np.float32) if size > 1 else np.zeros(1, np.float32)
        axes.append(line.reshape(view))
    return axes


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], correlation: float | Floats) -> np.ndarray:
    """Returns a zero-mean, unit-variance smooth Gaussian random field.

    White noise is Gaussian-filtered (sigma = correlation / 2); for long correlations this happens on a
    coarser lattice that is then linearly upsampled axis by axis, which keeps large volumes fast.

    Args:
        rng: the random generator (consumed).
        shape: output shape.
        correlation: correlation length in voxels, one value or one per axis.

    Returns:
        float32 array of ``shape``.
    """
    corr = np.broadcast_to(np.asarray(correlation, dtype=np.float64), (len(shape),))
    factor = np.maximum(1, np.floor(corr / 2.0)).astype(int)
    coarse = tuple(int(np.ceil(n / f)) for n, f in zip(shape, factor))
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sigma=corr / (2 * factor), mode="wrap")
    for axis, (n_out, n_in) in enumerate(zip(shape, coarse)):
        if n_out != n_in:
            field = np.moveaxis(np.tensordot(_linear_upsampler(n_out, n_in), field, axes=([1], [axis])), 0, axis)
    field = np.ascontiguousarray(field, dtype=np.float32)
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def _linear_upsampler(n_out: int, n_in: int) -> np.ndarray:
    """``[n_out, n_in]`` matrix of linear interpolation between cell-centred grids (edges clamped)."""
    position = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    below = np.minimum(np.floor(position).astype(int), n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    frac = position - below
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    matrix[np.arange(n_out), below] = 1.0 - frac
    if n_in > 1:
        matrix[np.arange(n_out), below + 1] += frac
    return matrix


def rician(rng: np.random.Generator, magnitude: np.ndarray, sigma: float) -> np.ndarray:
    """Returns the magnitude of ``magnitude`` plus complex Gaussian noise (an MR magnitude image).

    Args:
        rng: the random generator (consumed).
        magnitude: noise-free magnitude, any shape, float.
        sigma: noise standard deviation per real channel, same unit as ``magnitude``.

    Returns:
        float32 array of the input shape, non-negative.
    """
    real = magnitude + sigma * rng.standard_normal(magnitude.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(magnitude.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def polyline_distance(
    points: np.ndarray, shape: Sequence[int], scale: Floats, margin: float
) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """Returns the distance of voxels near a densely sampled curve to the curve, and the nearest sample.

    Only the bounding box of the curve (plus ``margin``) is evaluated, so thin structures are cheap.

    Args:
        points: ``[N, D]`` curve samples in voxel index units.
        shape: array shape (length D).
        scale: size of one voxel along each axis in the unit in which distance is measured.
        margin: extra extent of the box around the curve, in that unit.

    Returns:
        ``(distance, nearest, box)``: float32 distances and int64 indices of the nearest curve sample for
        the voxels in ``box`` (a tuple of slices into the full array).
    """
    from scipy.spatial import cKDTree

    scale_arr = np.asarray(scale, dtype=np.float64)
    low = np.maximum(np.floor(points.min(0) - margin / scale_arr), 0).astype(int)
    high = np.minimum(np.ceil(points.max(0) + margin / scale_arr) + 1, np.asarray(shape)).astype(int)
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high))
    grids = np.meshgrid(*[np.arange(lo, hi) for lo, hi in zip(low, high)], indexing="ij")
    voxels = np.stack([g.ravel() for g in grids], axis=1) * scale_arr
    distance, nearest = cKDTree(points * scale_arr).query(voxels)
    box_shape = tuple(int(hi - lo) for lo, hi in zip(low, high))
    return distance.reshape(box_shape).astype(np.float32), nearest.reshape(box_shape), box


def ellipsoid(
    coords: Sequence[np.ndarray], centre: Floats, radii: Floats, wobble: np.ndarray | float = 0.0
) -> np.ndarray:
    """Returns the normalised radius of an axis-aligned ellipsoid (< 1 inside).

    Args:
        coords: broadcastable coordinate arrays, one per axis.
        centre: centre in the same coordinates.
        radii: semi-axes in the same coordinates.
        wobble: relative surface perturbation (a field around 0), broadcastable to the output.

    Returns:
        float32 array; the ellipsoid is ``result < 1``.
    """
    total = sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii))
    return (np.sqrt(total) * (1.0 + wobble)).astype(np.float32)


def soft_step(distance: np.ndarray, width: float) -> np.ndarray:
    """Returns a smooth 1 -> 0 transition of ``-distance / width`` (partial-volume edges).

    Args:
        distance: signed distance, negative inside.
        width: edge width in the unit of ``distance``.

    Returns:
        float32 weights in [0, 1].
    """
    return (0.5 * (1.0 - np.tanh(distance / max(width, 1e-6)))).astype(np.float32)
