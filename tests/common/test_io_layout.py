"""Cache layouts: each project's declared layout round-trips a NIfTI with an oblique affine exactly."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from common.errors import DataError
from common.io.layout import AxisMap, CacheLayout
from common.io.nifti import load_nifti
from projects.rstn.data import LAYOUT as RSTN_LAYOUT
from projects.saint.data import LAYOUT as SAINT_LAYOUT
from projects.spin.data import LAYOUT as SPIN_LAYOUT
from projects.spin.data import RAS as SPIN_RAS

LAYOUTS = {"saint": SAINT_LAYOUT, "rstn": RSTN_LAYOUT, "spin": SPIN_LAYOUT, "spin_predict": SPIN_RAS}


def _oblique_nifti(tmp_path: Path, euler_deg: tuple[float, float, float]) -> Path:
    """Writes a [7, 6, 5] volume whose affine is rotated, anisotropic and shifted."""
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", euler_deg, degrees=True).as_matrix() @ np.diag([0.83, 1.1, 2.7])
    affine[:3, 3] = [-91.37, 12.113, 40.9]
    data = np.random.default_rng(0).normal(size=(7, 6, 5)).astype(np.float32)
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.mark.parametrize("project", sorted(LAYOUTS))
@pytest.mark.parametrize("euler", [(12.0, -7.0, 31.0), (95.0, 3.0, -80.0), (170.0, 10.0, 5.0)])
def test_round_trip_is_exact_and_keeps_world_positions(tmp_path: Path, project: str,
                                                       euler: tuple[float, float, float]) -> None:
    volume = load_nifti(_oblique_nifti(tmp_path, euler))
    cached, affine, axes = LAYOUTS[project].to_cache(volume.data, volume.affine)
    assert cached.flags.c_contiguous and sorted(cached.shape) == sorted(volume.shape)
    for index in [(0, 0, 0), (1, 2, 3), tuple(n - 1 for n in cached.shape)]:
        file_index = [0, 0, 0]
        for i, a in enumerate(axes.order):
            file_index[a] = cached.shape[i] - 1 - index[i] if axes.flip[i] else index[i]
        assert cached[index] == volume.data[tuple(file_index)]
        np.testing.assert_allclose(affine @ [*index, 1], volume.affine @ [*file_index, 1], atol=1e-9)
    back, back_affine = axes.to_file(cached, affine)
    assert np.array_equal(back, volume.data) and np.array_equal(back_affine, volume.affine)
    stored = AxisMap.from_meta(axes.to_meta())
    assert stored == axes and np.array_equal(stored.to_file(cached, affine)[1], volume.affine)


def test_rules_pick_the_axial_and_the_thickest_axis() -> None:
    affine = np.array([[0, 0.7, 0, 0], [0, 0, 0.8, 0], [2.5, 0, 0, 0], [0, 0, 0, 1.0]])  # axis 0 is S-I
    assert SAINT_LAYOUT.axes(affine).order == (1, 2, 0)
    assert CacheLayout(move="thickest", position=1).axes(affine).order == (1, 0, 2)
    assert CacheLayout(move="thickest", position=1).axes(affine, axis=2).order == (0, 2, 1)
    flipped = np.diag([-1.0, 1.0, -2.0, 1.0])
    assert SPIN_RAS.axes(flipped) == AxisMap((0, 1, 2), (True, False, True))
    assert SPIN_LAYOUT.axes(flipped) == AxisMap((2, 0, 1), (True, True, False))


def test_a_layout_that_depends_on_the_affine_needs_the_stored_axes() -> None:
    assert RSTN_LAYOUT.stored_axes({}) == AxisMap((1, 0, 2))
    assert SAINT_LAYOUT.stored_axes({"axes": {"order": [1, 2, 0], "flip": [0, 0, 0]}}) == AxisMap((1, 2, 0))
    with pytest.raises(DataError, match="case7.*prepare again with --overwrite"):
        SPIN_LAYOUT.stored_axes({"layout": "old"}, "case7")
    with pytest.raises(ValueError, match="permutation"):
        AxisMap((0, 0, 1))
