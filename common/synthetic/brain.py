"""Brain-like T1 volumes with stroke-like lesions, on a synthetic anatomy or the MNI152 template.

What it mimics: a defaced, skull-stripped-looking T1-weighted scan on the intensity scale of ATLAS R1.2
``*_t1w_stx`` images (about 0 to 100; white matter > grey matter > CSF, background 0): a folded cortical
ribbon with sulci, deep grey nuclei, lateral ventricles, a smooth multiplicative bias field and Rician
noise; chronic stroke lesions are T1-hypointense blobs with soft edges, about ``small_fraction`` of them
small (at most about 100 voxels in any axial slice, the ATLAS small-lesion protocol's threshold) and the
rest large (territorial, tens of millimetres). ``template="mni"`` paints the same lesions into nilearn's
MNI152 2009 T1 template (197 x 233 x 189 at 1 mm, the ATLAS R1.2 ``standard_MNI`` grid).

What it does not: real gyral anatomy (the synthetic folds are random sheets), skull, scanner-specific
contrast, registration residue, or lesion topography (lesions are placed uniformly in the brain).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from common.errors import DataError
from common.synthetic._fields import centred_affine, ellipsoid, normalised_grid, rician, smooth_noise

#: Mean T1 intensities of the synthetic tissues (ATLAS-like 0-100 scale).
T1_LEVELS: dict[str, float] = {"csf": 22.0, "gm": 52.0, "deep_gm": 60.0, "wm": 78.0}
#: Largest lesion cross-section (voxels in one axial slice) that still counts as small.
SMALL_LESION_MAX_AREA = 100


def brain_t1(
    seed: int,
    shape: Sequence[int] = (96, 112, 80),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    n_lesions: tuple[int, int] = (1, 4),
    small_fraction: float = 0.5,
    template: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns a brain-like T1 volume, its binary lesion mask and its affine.

    Args:
        seed: seed of ``np.random.default_rng``; the same seed gives identical arrays.
        shape: array shape ``(X, Y, Z)`` (axis 2 axial); ignored with ``template="mni"``.
        spacing: voxel size in mm; ignored with ``template="mni"``.
        n_lesions: inclusive range of the number of lesions drawn.
        small_fraction: probability that a lesion is small (<= ``SMALL_LESION_MAX_AREA`` voxels per
            axial slice) rather than large.
        template: ``None`` for the synthetic anatomy, ``"mni"`` for nilearn's MNI152 T1 template.

    Returns:
        ``(t1, lesion, affine)``: float32 ``[X, Y, Z]`` in about [0, 100]; uint8 ``[X, Y, Z]`` in {0, 1};
        float64 ``[4, 4]`` RAS affine (mm).

    Raises:
        ValueError: bad shape, spacing, lesion range or template name.
        ImportError: ``template="mni"`` without nilearn installed.
    """
    if n_lesions[0] < 0 or n_lesions[1] < n_lesions[0]:
        raise ValueError(f"n_lesions must be an inclusive range (low, high) with 0 <= low <= high, got {n_lesions}")
    if not 0.0 <= small_fraction <= 1.0:
        raise ValueError(f"small_fraction must lie in [0, 1], got {small_fraction}")
    rng = np.random.default_rng(seed)
    if template == "mni":
        t1, brain, affine = _mni_anatomy(rng)
    elif template is None:
        t1, brain, affine = _synthetic_anatomy(rng, shape, spacing)
    else:
        raise ValueError(f"template must be None or 'mni', got {template!r}")
    count = int(rng.integers(n_lesions[0], n_lesions[1] + 1))
    lesion = paint_lesions(rng, t1, brain, np.sqrt((affine[:3, :3] ** 2).sum(0)), count, small_fraction)
    return t1, lesion, affine


def _synthetic_anatomy(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Folded cortex, white matter, deep nuclei and ventricles inside an ellipsoid; returns (t1, brain, affine)."""
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"brain_t1 needs a 3-D shape with every size >= 16, got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"brain_t1 needs three positive voxel sizes in mm, got {tuple(spacing)}")
    shape3 = tuple(int(n) for n in shape)
    u, v, w = normalised_grid(shape3)
    semi_mm = np.array([(n - 1) * s / 2 * 0.86 for n, s in zip(shape3, spacing)])
    surface = 0.04 * smooth_noise(rng, shape3, 14)
    radius = ellipsoid((u, v, w), (0, 0.02, 0.05), (0.86, 0.86, 0.82), surface)
    depth_mm = (1.0 - radius) * float(semi_mm.mean())
    # Sulci are the zero sheets of a smooth random field, reaching a variable depth into the brain.
    folds = smooth_noise(rng, shape3, 4.5 / np.asarray(spacing))
    slope = float(np.mean(np.abs(np.diff(folds, axis=0)))) / float(spacing[0]) + 1e-6
    sheet_mm = np.abs(folds) / slope
    sulcal_depth = 13.0 + 4.0 * smooth_noise(rng, shape3, 20)
    pial_mm = np.minimum(depth_mm, sheet_mm + np.maximum(depth_mm - sulcal_depth, 0) * 4.0)
    thickness = 3.4 + 0.5 * smooth_noise(rng, shape3, 10)
    levels = T1_LEVELS
    t1 = np.where(pial_mm < 0.7, levels["csf"], np.where(pial_mm < thickness, levels["gm"], levels["wm"]))
    t1 = t1.astype(np.float32)
    _deep_structures(rng, t1, (u, v, w))
    brain = depth_mm > 0
    t1[~brain] = 0.0
    t1 = ndimage.gaussian_filter(t1, 0.6 / np.asarray(spacing))
    t1 *= np.exp(0.08 * smooth_noise(rng, shape3, 30) + 0.04 * w)
    t1 = rician(rng, t1, 2.0) * ndimage.binary_dilation(brain, iterations=1)
    return np.clip(t1, 0.0, 100.0).astype(np.float32), brain, centred_affine(shape3, spacing)


def _deep_structures(rng: np.random.Generator, t1: np.ndarray, coords: tuple[np.ndarray, ...]) -> None:
    """Paints thalami / basal ganglia and crescent-shaped lateral ventricles in place."""
    u, v, w = coords
    jitter = rng.uniform(-0.03, 0.03, 4)
    for side in (-1.0, 1.0):
        t1[ellipsoid(coords, (0.14 * side, -0.08 + jitter[0], 0.02), (0.1, 0.14, 0.1)) < 1] = T1_LEVELS["deep_gm"]
        t1[ellipsoid(coords, (0.24 * side, 0.12 + jitter[1], 0.08), (0.07, 0.14, 0.1)) < 1] = T1_LEVELS["deep_gm"]
        bend = 0.12 * (v - jitter[2]) ** 2 / 0.3
        horn = ellipsoid((u, v, w - bend), (0.1 * side, 0.0 + jitter[2], 0.2 + jitter[3]), (0.06, 0.36, 0.09))
        t1[horn < 1] = T1_LEVELS["csf"] - 4.0


def paint_lesions(
    rng: np.random.Generator,
    t1: np.ndarray,
    brain: np.ndarray,
    spacing: np.ndarray,
    count: int,
    small_fraction: float,
) -> np.ndarray:
    """Darkens ``count`` stroke-like blobs inside ``brain`` in place and returns their binary mask.

    Args:
        rng: the random generator (consumed).
        t1: float32 ``[X, Y, Z]`` T1 volume, modified in place.
        brain: bool ``[X, Y, Z]`` brain mask.
        spacing: voxel size in mm, shape ``[3]``.
        count: number of lesions.
        small_fraction: probability that a lesion is small.

    Returns:
        uint8 ``[X, Y, Z]`` lesion mask in {0, 1}.
    """
    lesion = np.zeros(t1.shape, dtype=np.uint8)
    interior = ndimage.binary_erosion(brain, iterations=3)
    candidates = np.argwhere(interior[::2, ::2, ::2]) * 2
    if count == 0 or len(candidates) == 0:
        return lesion
    for _ in range(count):
        small = rng.random() < small_fraction
        radius_mm = rng.uniform(1.5, 3.2, 3) if small else rng.uniform(6.0, 14.0, 3)
        for _attempt in range(20):
            centre = candidates[rng.integers(len(candidates))]
            blob, box = _blob(rng, centre, radius_mm, spacing, t1.shape)
            blob &= brain[box]
            if blob.any() and not lesion[box][ndimage.binary_dilation(blob, iterations=2)].any():
                break
        if small:
            blob = _cap_axial_area(blob)
        _darken(rng, t1, box, blob)
        lesion[box][blob] = 1
    return lesion


def _blob(
    rng: np.random.Generator, centre: np.ndarray, radius_mm: np.ndarray, spacing: np.ndarray, shape: Sequence[int]
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """An irregular ellipsoid around ``centre`` (voxel indices); returns (mask, box into the volume)."""
    half = np.ceil(radius_mm * 1.4 / spacing).astype(int) + 1
    low = np.maximum(centre - half, 0)
    high = np.minimum(centre + half + 1, np.asarray(shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    coords = [(np.arange(a, b) - c) * s for a, b, c, s in zip(low, high, centre, spacing)]
    grids = np.meshgrid(*coords, indexing="ij")
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    rotated = np.tensordot(rotation, np.stack(grids), axes=1)
    box_shape = tuple(int(b - a) for a, b in zip(low, high))
    wobble = 0.15 * smooth_noise(rng, box_shape, max(2.0, float(np.mean(radius_mm / spacing)) / 2))
    inside = ellipsoid(tuple(rotated), (0, 0, 0), radius_mm, wobble) < 1
    # The wobble can cut off islands near the surface; a lesion is one connected blob.
    parts, count = ndimage.label(inside)
    if count > 1:
        inside = parts == 1 + int(np.argmax(ndimage.sum_labels(inside, parts, range(1, count + 1))))
    return inside, box


def _cap_axial_area(blob: np.ndarray) -> np.ndarray:
    """Erodes the blob slice by slice until no axial component exceeds ``SMALL_LESION_MAX_AREA`` voxels."""
    blob = blob.copy()
    for k in range(blob.shape[2]):
        while blob[:, :, k].sum() > SMALL_LESION_MAX_AREA:
            blob[:, :, k] = ndimage.binary_erosion(blob[:, :, k])
    return blob


def _darken(rng: np.random.Generator, t1: np.ndarray, box: tuple[slice, ...], blob: np.ndarray) -> None:
    """Blends the lesion towards a CSF-to-GM intensity with soft (partial-volume) edges."""
    weight = ndimage.gaussian_filter(blob.astype(np.float32), 0.8)
    weight = np.maximum(weight, blob)
    target = rng.uniform(0.3, 0.5) * np.maximum(t1[box], 1.0) + rng.uniform(2.0, 8.0)
    t1[box] = (1.0 - weight) * t1[box] + weight * target


def _mni_anatomy(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's MNI152 T1 template rescaled to [0, 100] with a seeded bias field and noise."""
    try:
        from nilearn import datasets
    except ImportError as error:
        raise ImportError(
            "brain_t1(template='mni') needs nilearn (pip install nilearn, or the 'real-data' extra)"
        ) from error
    image = datasets.load_mni152_template(resolution=1)
    mask_image = datasets.load_mni152_brain_mask(resolution=1)
    t1 = np.asarray(image.get_fdata(dtype=np.float32))
    brain = np.asarray(mask_image.dataobj) > 0
    if t1.shape != brain.shape or float(t1.max()) <= 0:
        raise DataError("nilearn MNI152 template", f"unexpected template data: shape {t1.shape}, max {t1.max()}")
    t1 = 100.0 * t1 / float(t1.max())
    t1 *= np.exp(0.05 * smooth_noise(rng, t1.shape, 40))
    t1 = rician(rng, t1, 1.0) * (t1 > 0)
    return np.clip(t1, 0.0, 100.0).astype(np.float32), brain, np.asarray(image.affine, dtype=np.float64)
