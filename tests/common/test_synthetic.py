"""Seeded synthetic generators: determinism, geometry, value ranges, labels and the k-space identity."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy import ndimage

from common.io.nifti import voxel_spacing
from common.synthetic import (
    CT_LABELS,
    SMALL_LESION_MAX_AREA,
    brain_t1,
    center_crop,
    ct_abdomen,
    fft2c,
    ifft2c,
    isotropic_volume,
    knee_images,
    single_coil_kspace,
)

SMALL_CALLS = {
    "ct_abdomen": lambda seed: ct_abdomen(seed, (40, 40, 16)),
    "brain_t1": lambda seed: brain_t1(seed, (40, 48, 32)),
    "isotropic_volume": lambda seed: isotropic_volume(seed, (24, 32, 24)),
    "knee_images": lambda seed: (knee_images(seed, 2, (48, 48)),),
    "single_coil_kspace": lambda seed: single_coil_kspace(knee_images(0, 2, (48, 48)), seed),
}


@functools.cache
def _ct(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Default-size CT cases are shared by several tests (read-only)."""
    return ct_abdomen(seed)


def _max_axial_areas(mask: np.ndarray) -> list[int]:
    """Largest 8-connected axial cross-section (voxels) of each 3-D lesion component."""
    components, count = ndimage.label(mask)
    areas = []
    for index in range(1, count + 1):
        lesion = components == index
        per_slice = [np.bincount(ndimage.label(lesion[:, :, k], np.ones((3, 3)))[0].ravel())[1:].max(initial=0)
                     for k in range(mask.shape[2])]
        areas.append(int(max(per_slice)))
    return areas


@pytest.mark.parametrize("name", sorted(SMALL_CALLS))
def test_same_seed_same_arrays_other_seed_other_arrays(name: str) -> None:
    first, again, other = SMALL_CALLS[name](3), SMALL_CALLS[name](3), SMALL_CALLS[name](4)
    for a, b in zip(first, again):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_ct_abdomen_geometry_and_hounsfield_ranges() -> None:
    hu, organ, affine = ct_abdomen(0, (48, 48, 20), spacing=(0.7, 0.7, 3.0))
    assert hu.shape == organ.shape == (48, 48, 20)
    assert hu.dtype == np.float32 and organ.dtype == np.uint8
    np.testing.assert_allclose(voxel_spacing(affine), [0.7, 0.7, 3.0])
    np.testing.assert_allclose(affine[:3, :3] @ (np.array([47, 47, 19]) / 2) + affine[:3, 3], 0, atol=1e-9)
    assert hu.min() >= -1024 and np.all(hu[0, 0, :] < -900)  # air in the corners
    assert hu[organ == CT_LABELS["bone"]].max() > 700
    assert set(np.unique(organ)) <= set(CT_LABELS.values())
    liver = hu[organ == CT_LABELS["liver"]]
    assert 40 < np.median(liver) < 80


def test_ct_anatomy_changes_along_z() -> None:
    _, organ, _ = _ct(1)
    liver_area = (organ == CT_LABELS["liver"]).sum((0, 1)).astype(float)
    z = np.arange(liver_area.size)
    residual = liver_area - np.polyval(np.polyfit(z, liver_area, 1), z)
    assert residual.std() > 0.1 * liver_area.max()  # not a linear ramp
    assert set(np.unique(organ[..., 0])) != set(np.unique(organ[..., -1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ct_pancreas_is_small_thin_and_low_contrast(seed: int) -> None:
    hu, organ, _ = _ct(seed)
    pancreas = organ == CT_LABELS["pancreas"]
    assert ndimage.label(pancreas)[1] == 1
    fraction = pancreas.sum() / (hu > -500).sum()
    assert 0.005 <= fraction <= 0.015
    ring = ndimage.binary_dilation(pancreas, iterations=3) & ~pancreas & (organ == 0) & (hu > -30) & (hu < 120)
    contrast = hu[pancreas].mean() - hu[ring].mean()
    assert 8 <= contrast <= 35
    # thin: in its largest axial cross-section the organ is much longer than it is wide
    k = int(np.argmax(pancreas.sum((0, 1))))
    rows, cols = np.nonzero(pancreas[:, :, k])
    extent = max(np.ptp(rows), np.ptp(cols)) + 1
    assert pancreas[:, :, k].sum() < 0.5 * extent**2


def test_ct_pancreas_moves_with_the_seed() -> None:
    centres = [ndimage.center_of_mass(_ct(seed)[1] == CT_LABELS["pancreas"]) for seed in (0, 1)]
    assert np.linalg.norm(np.subtract(*centres)) > 1.0


def test_brain_t1_range_contrast_and_lesions() -> None:
    t1, lesion, affine = brain_t1(0, (64, 72, 56), spacing=(1.0, 1.0, 1.2), n_lesions=(2, 2))
    assert t1.dtype == np.float32 and lesion.dtype == np.uint8
    assert t1.min() >= 0 and t1.max() <= 100
    np.testing.assert_allclose(voxel_spacing(affine), [1.0, 1.0, 1.2])
    assert set(np.unique(lesion)) == {0, 1}
    brain = ndimage.binary_erosion(t1 > 10, iterations=2)
    tissue = t1[brain & (lesion == 0)]
    assert np.percentile(tissue, 90) > 70  # white matter
    assert 40 < np.percentile(tissue, 25) < 65  # grey matter
    assert t1[lesion > 0].mean() < 0.75 * tissue.mean()  # hypointense
    assert not lesion[t1 == 0].any()


def test_brain_lesion_sizes_follow_small_fraction() -> None:
    small = [a for seed in range(3) for a in _max_axial_areas(brain_t1(seed, (48, 56, 40), small_fraction=1.0)[1])]
    large = [a for seed in range(3) for a in _max_axial_areas(brain_t1(seed, (48, 56, 40), small_fraction=0.0)[1])]
    assert small and max(small) <= SMALL_LESION_MAX_AREA
    assert large and min(large) > SMALL_LESION_MAX_AREA
    mixed = [a for seed in range(4) for a in _max_axial_areas(brain_t1(seed, (64, 72, 56))[1])]
    assert min(mixed) <= SMALL_LESION_MAX_AREA < max(mixed)
    assert not brain_t1(0, (40, 48, 32), n_lesions=(0, 0))[1].any()


def test_brain_t1_on_the_mni_template() -> None:
    t1, lesion, affine = brain_t1(5, template="mni", n_lesions=(1, 1))
    assert t1.shape == lesion.shape == (197, 233, 189)
    np.testing.assert_allclose(voxel_spacing(affine), [1.0, 1.0, 1.0])
    assert t1.min() >= 0 and 95 <= t1.max() <= 100
    assert 0 < lesion.sum() and t1[lesion > 0].mean() < 0.75 * t1[t1 > 20].mean()


def test_brain_t1_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="template"):
        brain_t1(0, template="colin27")
    with pytest.raises(ValueError, match="n_lesions"):
        brain_t1(0, n_lesions=(3, 1))


def test_isotropic_volume_has_detail_cubic_upsampling_misses() -> None:
    vol, affine = isotropic_volume(0)
    assert vol.shape == (64, 96, 64) and vol.dtype == np.float32
    np.testing.assert_allclose(voxel_spacing(affine), [0.15, 0.15, 0.15])
    assert vol.min() >= 0 and 0.7 < vol.max() < 1.5
    brain = vol > 0.1
    cubic = ndimage.zoom(vol[:, ::3, :], (1, 3, 1), order=3)
    error = np.sqrt(np.mean((cubic - vol)[brain] ** 2))
    noise_sigma = 0.025
    assert 2 * noise_sigma < error < 0.3 * np.sqrt(np.mean(vol[brain] ** 2))


def test_knee_images_shape_and_range() -> None:
    images = knee_images(0, 3, (64, 80))
    assert images.shape == (3, 64, 80) and images.dtype == np.float32
    assert images.min() >= 0 and 0.5 < images.max() < 1.5
    assert not np.array_equal(images[0], images[-1])  # anatomy changes across slices


def _torch_ifft2c(kspace: np.ndarray) -> np.ndarray:
    data = torch.fft.ifftshift(torch.from_numpy(kspace), dim=(-2, -1))
    data = torch.fft.ifftn(data, dim=(-2, -1), norm="ortho")
    return torch.fft.fftshift(data, dim=(-2, -1)).numpy()


def test_single_coil_kspace_matches_fastmri_conventions() -> None:
    images = knee_images(1, 1, (320, 320))
    kspace, target = single_coil_kspace(images, seed=0)
    assert kspace.shape == (1, 640, 368) and kspace.dtype == np.complex64
    assert target.shape == (1, 320, 320) and target.dtype == np.float32
    np.testing.assert_array_equal(np.abs(center_crop(ifft2c(kspace), (320, 320))), target)
    torch_target = np.abs(center_crop(_torch_ifft2c(kspace), (320, 320)))
    np.testing.assert_allclose(torch_target, target, atol=1e-5 * target.max())
    assert np.abs(target - images).mean() < 0.03 * images.max()  # noise about 1 % of the maximum


def test_single_coil_kspace_phase_and_grid_options() -> None:
    images = knee_images(2, 2, (40, 48))
    kspace, target = single_coil_kspace(images, seed=1, readout_oversampling=3, width=60)
    assert kspace.shape == (2, 120, 60) and target.shape == (2, 40, 48)
    complex_image = center_crop(ifft2c(kspace), (40, 48))
    obj = images > 0.3
    assert np.angle(complex_image[obj]).std() > 0.3  # a real phase, not a real-valued image
    np.testing.assert_allclose(fft2c(ifft2c(kspace)), kspace, atol=1e-5 * np.abs(kspace).max())
    with pytest.raises(ValueError, match="non-negative"):
        single_coil_kspace(-images, seed=0)
    with pytest.raises(ValueError, match="smaller"):
        single_coil_kspace(images, seed=0, width=20)
