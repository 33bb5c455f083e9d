"""NIfTI I/O and affine helpers: geometry survives every step; bad files give DataError."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from common.errors import DataError
from common.io.nifti import (
    Volume,
    load_nifti,
    reorient_like,
    save_nifti,
    scale_axis_affine,
    through_plane_axis,
    to_canonical,
    voxel_spacing,
)

SPACING = np.array([0.8, 1.1, 3.0])
ORIGIN = np.array([12.5, -30.2, 41.0])


def _rot(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def oblique_affine() -> np.ndarray:
    """20 deg about z then 20 deg about x, LPS-like flips of x and y, anisotropic voxels."""
    direction = np.diag([-1.0, -1.0, 1.0]) @ _rot(2, 20) @ _rot(0, 20)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(SPACING)
    affine[:3, 3] = ORIGIN
    return affine


def world(affine: np.ndarray, ijk) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(ijk, dtype=float) + affine[:3, 3]


def _write_raw(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


# ---------------------------------------------------------------- round trip and geometry


def test_round_trip_oblique_non_ras(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(5, 6, 7)).astype(np.float32)
    affine = oblique_affine()
    out = save_nifti(tmp_path / "deep" / "vol.nii.gz", data, affine)
    assert out.exists() and [p.name for p in out.parent.iterdir()] == ["vol.nii.gz"]

    vol = load_nifti(out)
    assert vol.data.dtype == np.float32 and vol.shape == (5, 6, 7)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    np.testing.assert_allclose(vol.spacing, SPACING, rtol=1e-6)

    img = nib.load(out)
    qform, qcode = img.header.get_qform(coded=True)
    sform, scode = img.header.get_sform(coded=True)
    assert qcode == scode == 1
    np.testing.assert_allclose(qform, sform, atol=1e-5)
    np.testing.assert_allclose(img.header.get_zooms(), SPACING, rtol=1e-6)


def test_save_keeps_header_fields_but_not_stale_affine(tmp_path):
    header = nib.Nifti1Header()
    header["descrip"] = b"keep me"
    header.set_xyzt_units("micron", "msec")
    header.set_sform(np.diag([9.0, 9.0, 9.0, 1.0]), code=2)
    header.set_qform(np.diag([9.0, 9.0, 9.0, 1.0]), code=2)
    header.set_slope_inter(3.0, 7.0)
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    out = save_nifti(tmp_path / "h.nii", data, oblique_affine(), header=header)
    img = nib.load(out)
    assert img.header["descrip"].item() == b"keep me"
    assert img.header.get_xyzt_units() == ("micron", "msec")
    assert img.header.get_sform(coded=True)[1] == 2 and img.header.get_qform(coded=True)[1] == 2
    np.testing.assert_allclose(img.affine, oblique_affine(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)  # no stale slope / intercept


def test_save_label_dtypes(tmp_path):
    labels = np.zeros((4, 4, 4), dtype=np.int64)
    labels[1:3, 1:3, 1:3] = 2
    out = save_nifti(tmp_path / "seg.nii.gz", labels, np.eye(4))
    assert nib.load(out).get_data_dtype() == np.int32
    vol = load_nifti(out, dtype=None)
    assert vol.data.dtype == np.int32
    np.testing.assert_array_equal(vol.data, labels)

    probs = labels.astype(np.float32) / 2 * 0.9999  # rounds to 0 / 1
    out = save_nifti(tmp_path / "mask.nii.gz", probs, np.eye(4), dtype=np.uint8)
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), (labels > 0).astype(np.uint8))


def test_canonical_keeps_world_position_of_a_marker(tmp_path):
    data = np.zeros((5, 6, 7), dtype=np.float32)
    data[1, 4, 2] = 100.0
    affine = oblique_affine()
    out = save_nifti(tmp_path / "m.nii.gz", data, affine)
    vol = load_nifti(out, canonical=True)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    marker = np.argwhere(vol.data == 100.0)
    assert marker.shape == (1, 3)
    np.testing.assert_allclose(world(vol.affine, marker[0]), world(affine, (1, 4, 2)), atol=1e-4)
    assert sorted(vol.shape) == sorted(data.shape)
    # Its header is consistent with the new array and affine.
    np.testing.assert_allclose(vol.header.get_best_affine(), vol.affine, atol=1e-4)
    assert vol.header.get_data_shape() == vol.shape


def test_reorient_like_brings_a_label_onto_the_image_layout():
    rng = np.random.default_rng(4)
    image = rng.random((5, 6, 7)).astype(np.float32)
    affine = oblique_affine()
    # Label stored with axes 0/1 swapped and slices reversed: old (i, j, k) = (b, a, 6 - c).
    index_map = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 6], [0, 0, 0, 1]], dtype=float)
    label = Volume(np.flip(image, 2).transpose(1, 0, 2).copy(), affine @ index_map)
    assert label.shape == (6, 5, 7)
    aligned = reorient_like(label, affine)
    np.testing.assert_array_equal(aligned.data, image)
    np.testing.assert_allclose(aligned.affine, affine, atol=1e-12)
    assert reorient_like(aligned, affine) is aligned


def test_to_canonical_is_identity_on_ras():
    vol = Volume(np.arange(24.0).reshape(2, 3, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    assert to_canonical(vol) is vol


def test_volume_spacing_and_shape():
    vol = Volume(np.zeros((5, 6, 7)), oblique_affine())
    assert vol.shape == (5, 6, 7)
    np.testing.assert_allclose(vol.spacing, SPACING)
    np.testing.assert_allclose(voxel_spacing(oblique_affine()), SPACING)


# ---------------------------------------------------------------- scale_axis_affine


@pytest.mark.parametrize("factor", [3.0, 2.5, 0.5])
def test_scale_axis_first_anchor(factor):
    affine = oblique_affine()
    new = scale_axis_affine(affine, axis=2, factor=factor, anchor="first")
    for k in range(4):
        # HR voxel k * factor lies where LR voxel k was.
        np.testing.assert_allclose(world(new, (2, 3, k * factor)), world(affine, (2, 3, k)), atol=1e-9)
    # One HR step is the LR step divided by the factor, in the same direction.
    step = world(new, (0, 0, 1)) - world(new, (0, 0, 0))
    np.testing.assert_allclose(step, affine[:3, 2] / factor, atol=1e-12)
    np.testing.assert_allclose(voxel_spacing(new), [0.8, 1.1, 3.0 / factor])
    np.testing.assert_array_equal(new[:3, :2], affine[:3, :2])
    np.testing.assert_array_equal(new[:3, 3], affine[:3, 3])


def test_scale_axis_extent_anchor_hand_computed():
    affine = oblique_affine()
    n, factor = 7, 3.0
    new = scale_axis_affine(affine, axis=2, factor=factor, anchor="extent")
    column = affine[:3, 2]
    # Old lower edge: o - c/2. New voxel 0 centre: half a new voxel (c/6) above it = o - c/3.
    np.testing.assert_allclose(new[:3, 3], ORIGIN - column / 3.0, atol=1e-12)
    # Outer edges of the field of view match.
    m = int(round(n * factor))
    np.testing.assert_allclose(world(new, (0, 0, -0.5)), world(affine, (0, 0, -0.5)), atol=1e-9)
    np.testing.assert_allclose(world(new, (0, 0, m - 0.5)), world(affine, (0, 0, n - 0.5)), atol=1e-9)


@pytest.mark.parametrize(("n", "factor"), [(7, 1.3), (10, 0.35), (9, 2.0)])
def test_scale_axis_extent_with_size_keeps_both_edges(n, factor):
    affine = oblique_affine()
    new = scale_axis_affine(affine, axis=0, factor=factor, anchor="extent", size=n)
    m = max(round(n * factor), 1)
    np.testing.assert_allclose(world(new, (-0.5, 1, 1)), world(affine, (-0.5, 1, 1)), atol=1e-9)
    np.testing.assert_allclose(world(new, (m - 0.5, 1, 1)), world(affine, (n - 0.5, 1, 1)), atol=1e-9)
    # Direction of the scaled column is untouched, other columns identical.
    direction_old = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    direction_new = new[:3, 0] / np.linalg.norm(new[:3, 0])
    np.testing.assert_allclose(direction_new, direction_old, atol=1e-15)
    np.testing.assert_array_equal(new[:3, 1:3], affine[:3, 1:3])


def test_scale_axis_rejects_bad_arguments():
    with pytest.raises(ValueError, match="factor"):
        scale_axis_affine(np.eye(4), 0, 0.0)
    with pytest.raises(ValueError, match="axis"):
        scale_axis_affine(np.eye(4), 3, 2.0)
    with pytest.raises(ValueError, match="anchor"):
        scale_axis_affine(np.eye(4), 0, 2.0, anchor="centre")


# ---------------------------------------------------------------- through_plane_axis


def test_through_plane_axis_oblique_and_permuted():
    assert through_plane_axis(oblique_affine()) == 2
    permuted = np.zeros((4, 4))
    permuted[3, 3] = 1
    permuted[:3, 0] = [0, 0, 5.0]  # axis 0: 5 mm along S
    permuted[:3, 1] = [-0.7, 0, 0]
    permuted[:3, 2] = [0, 0.7, 0]
    assert through_plane_axis(permuted) == 0
    rotated = oblique_affine()[:, [2, 0, 1, 3]]
    assert through_plane_axis(rotated) == 0


def test_through_plane_axis_ties_go_to_the_superior_axis():
    iso = np.zeros((4, 4))
    iso[3, 3] = 1
    iso[:3, 0] = [1.0, 0, 0]
    iso[:3, 1] = [0, 0, 1.0]  # S
    iso[:3, 2] = [0, -1.0, 0]
    assert through_plane_axis(iso) == 1
    assert through_plane_axis(np.eye(4)) == 2
    # Within 0.1 % counts as a tie.
    near = np.diag([1.0, 1.0005, 0.9999, 1.0])
    assert through_plane_axis(near) == 2


# ---------------------------------------------------------------- bad inputs


def _assert_data_error(path, match, **kwargs):
    with pytest.raises(DataError, match=match) as info:
        load_nifti(path, **kwargs)
    assert path.name in str(info.value)
    return info.value


def test_missing_file(tmp_path):
    _assert_data_error(tmp_path / "nope.nii.gz", "not found")


def test_not_a_nifti(tmp_path):
    path = tmp_path / "junk.nii"
    path.write_bytes(b"this is not a nifti file at all" * 20)
    _assert_data_error(path, "NIfTI")
    gz = tmp_path / "junk.nii.gz"
    gz.write_bytes(b"\x00" * 50)
    _assert_data_error(gz, "NIfTI")


def test_truncated_gzip_fails_at_load_time(tmp_path):
    rng = np.random.default_rng(1)
    path = save_nifti(tmp_path / "cut.nii.gz", rng.normal(size=(20, 20, 20)).astype(np.float32), np.eye(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(path.read_bytes())  # the file really is cut
    _assert_data_error(path, "corrupt or truncated")


def test_truncated_uncompressed(tmp_path):
    path = save_nifti(tmp_path / "cut.nii", np.arange(1000, dtype=np.float32).reshape(10, 10, 10), np.eye(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 400])
    _assert_data_error(path, "corrupt or truncated")


def test_wrong_dimensionality(tmp_path):
    flat = _write_raw(tmp_path / "flat.nii.gz", np.arange(20, dtype=np.float32).reshape(4, 5))
    err = _assert_data_error(flat, "3-D")
    assert "(4, 5)" in str(err)
    four = _write_raw(tmp_path / "four.nii.gz", np.arange(240, dtype=np.float32).reshape(4, 5, 6, 2))
    err = _assert_data_error(four, "got 4-D")
    assert "(4, 5, 6, 2)" in str(err)
    assert load_nifti(four, ndim=(3, 4)).shape == (4, 5, 6, 2)
    assert load_nifti(four, ndim=None).shape == (4, 5, 6, 2)


def test_trailing_singleton_is_squeezed(tmp_path):
    path = _write_raw(tmp_path / "one.nii.gz", np.arange(120, dtype=np.float32).reshape(4, 5, 6, 1))
    vol = load_nifti(path)
    assert vol.shape == (4, 5, 6)
    single_slice = _write_raw(tmp_path / "slice.nii.gz", np.arange(20, dtype=np.float32).reshape(4, 5, 1))
    assert load_nifti(single_slice).shape == (4, 5, 1)


def test_nan_and_inf_are_counted(tmp_path):
    data = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    path = _write_raw(tmp_path / "nan.nii.gz", data)
    _assert_data_error(path, "3 voxel")


def test_empty_volume(tmp_path):
    path = _write_raw(tmp_path / "empty.nii", np.zeros((0, 4, 4), dtype=np.float32))
    _assert_data_error(path, "empty")


def test_constant_volume(tmp_path):
    path = _write_raw(tmp_path / "const.nii.gz", np.zeros((3, 4, 5), dtype=np.uint8))
    _assert_data_error(path, "constant")
    vol = load_nifti(path, allow_constant=True, dtype=np.uint8)
    assert vol.data.dtype == np.uint8 and vol.data.max() == 0


def test_non_invertible_affine(tmp_path):
    singular = np.diag([1.0, 1.0, 1.0, 1.0])
    singular[:3, 2] = [1.0, 1.0, 0.0]  # column 2 = column 0 + column 1
    img = nib.Nifti1Image(np.arange(27, dtype=np.float32).reshape(3, 3, 3), None)
    img.header.set_sform(singular, code=1)
    path = tmp_path / "flat_affine.nii.gz"
    nib.save(img, path)
    _assert_data_error(path, "not invertible")


def test_save_rejects_bad_name_and_affine(tmp_path):
    with pytest.raises(DataError, match="out.npy"):
        save_nifti(tmp_path / "out.npy", np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(DataError, match="not invertible"):
        save_nifti(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))
    assert list(tmp_path.iterdir()) == []
