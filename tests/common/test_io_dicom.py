"""DICOM series loading: geometric sort, rescale, RAS affine, and the errors of broken series."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from common.errors import DataError
from common.io.dicom import load_dicom_series
from common.io.nifti import load_nifti, save_nifti

ROWS, COLS, SLICES = 12, 16, 6
PIXEL_SPACING = (0.75, 0.9)  # between rows, between columns (mm)
SLICE_STEP = 2.5
ORIGIN_LPS = np.array([-40.0, 25.0, 110.0])


def _orientation() -> tuple[np.ndarray, np.ndarray]:
    """Oblique row / column cosines (LPS): rotated 25 deg about z, then 15 deg about x."""
    a, b = np.deg2rad(25), np.deg2rad(15)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rot = rx @ rz
    return rot[:, 0], rot[:, 1]


def _raw_slices(n: int = SLICES) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 2000, size=(ROWS, COLS), dtype=np.uint16) for _ in range(n)]


def _write_slice(
    path,
    raw,
    position,
    series_uid,
    *,
    instance=1,
    pixel_spacing=PIXEL_SPACING,
    description="ax",
    rescale=(2, -1024),
):
    row, col = _orientation()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.Modality = "CT"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    ds.SliceThickness = SLICE_STEP
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = raw.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _positions(n: int = SLICES) -> list[np.ndarray]:
    row, col = _orientation()
    normal = np.cross(row, col)
    return [ORIGIN_LPS + k * SLICE_STEP * normal for k in range(n)]


def write_series(folder, raws, positions, series_uid="1.2.3.4.5", **kwargs):
    """Write slices in shuffled file order with misleading InstanceNumbers (reversed)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(len(raws)))
    random.Random(1).shuffle(order)
    for file_number, k in enumerate(order):
        sub = folder / ("sub" if file_number % 2 else "")
        sub.mkdir(exist_ok=True)
        _write_slice(
            sub / f"IM{file_number:04d}", raws[k], positions[k], series_uid, instance=len(raws) - k, **kwargs
        )
    return folder


def test_series_volume_and_affine(tmp_path):
    raws = _raw_slices()
    folder = write_series(tmp_path / "series", raws, _positions())
    (folder / "DICOMDIR").write_bytes(b"not really a dicomdir")
    (folder / "._IM0000").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / "notes.txt").write_text("scanner notes")

    vol = load_dicom_series(folder)
    assert vol.shape == (COLS, ROWS, SLICES)
    assert vol.data.dtype == np.float32
    for k in range(SLICES):
        np.testing.assert_array_equal(vol.data[:, :, k], raws[k].T.astype(np.float32) * 2 - 1024)

    # World position of voxel (i=3 column, j=5 row, k=4 slice), computed by hand in LPS, then RAS.
    row, col = _orientation()
    i, j, k = 3, 5, 4
    lps = _positions()[k] + i * PIXEL_SPACING[1] * row + j * PIXEL_SPACING[0] * col
    ras = lps * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(vol.affine @ [i, j, k, 1], [*ras, 1.0], atol=1e-5)
    np.testing.assert_allclose(vol.affine[:3, 3], ORIGIN_LPS * [-1, -1, 1], atol=1e-5)
    np.testing.assert_allclose(vol.spacing, [PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_STEP], atol=1e-5)


def test_dicom_to_nifti_keeps_geometry(tmp_path):
    folder = write_series(tmp_path / "series", _raw_slices(), _positions())
    vol = load_dicom_series(folder, dtype=None)
    assert vol.data.dtype == np.int16  # integral rescale of 0..2000 -> -1024..2974
    out = save_nifti(tmp_path / "ct.nii.gz", vol.data, vol.affine)
    back = load_nifti(out, dtype=None)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_per_slice_rescale_and_gantry_tilt(tmp_path):
    raws = _raw_slices(4)
    row, col = _orientation()
    tilt = 0.4 * col  # each slice shifted 0.4 mm along the columns: a tilted gantry
    positions = [p + k * tilt for k, p in enumerate(_positions(4))]
    folder = tmp_path / "tilt"
    folder.mkdir()
    rescales = [(1, 0), (2, -1024), (0.5, 10.25), (3, -2048)]
    for k in (2, 0, 3, 1):
        _write_slice(folder / f"s{k}", raws[k], positions[k], "1.2.3.4.7", rescale=rescales[k])
    vol = load_dicom_series(folder)
    for k, (slope, intercept) in enumerate(rescales):
        np.testing.assert_allclose(
            vol.data[:, :, k], raws[k].T.astype(np.float64) * slope + intercept, rtol=1e-6
        )
    for k in range(4):  # every slice's first voxel sits at its own ImagePositionPatient
        np.testing.assert_allclose(vol.affine @ [0, 0, k, 1], [*(positions[k] * [-1, -1, 1]), 1], atol=1e-5)
    assert load_dicom_series(folder, dtype=None).data.dtype == np.float32  # non-integral rescale


def test_missing_slice(tmp_path):
    raws, positions = _raw_slices(), _positions()
    folder = write_series(tmp_path / "gap", raws[:3] + raws[4:], positions[:3] + positions[4:])
    with pytest.raises(DataError, match="1 missing slice") as info:
        load_dicom_series(folder)
    assert "gap" in str(info.value) and "expected 2.500 mm" in str(info.value)


def test_mixed_series_lists_them_and_series_uid_selects(tmp_path):
    raws = _raw_slices()
    folder = write_series(tmp_path / "mixed", raws, _positions(), series_uid="1.2.3.4.5")
    write_series(folder / "other", raws[:3], _positions(3), series_uid="1.2.3.4.6", description="scout")
    with pytest.raises(DataError, match="2 series found") as info:
        load_dicom_series(folder)
    assert "1.2.3.4.5 (6 slices" in str(info.value) and "1.2.3.4.6 (3 slices, 'scout')" in str(info.value)
    assert load_dicom_series(folder, series_uid="1.2.3.4.6").shape == (COLS, ROWS, 3)
    with pytest.raises(DataError, match="series 9.9 not found"):
        load_dicom_series(folder, series_uid="9.9")


def test_inconsistent_pixel_spacing(tmp_path):
    raws, positions = _raw_slices(), _positions()
    folder = write_series(tmp_path / "ps", raws, positions)
    _write_slice(folder / "odd", raws[0], positions[0] + 100.0, "1.2.3.4.5", pixel_spacing=(0.8, 0.9))
    with pytest.raises(DataError, match=r"odd: PixelSpacing \[0.8, 0.9\] differs"):
        load_dicom_series(folder)


def test_duplicate_position(tmp_path):
    raws, positions = _raw_slices(), _positions()
    folder = write_series(tmp_path / "dup", raws, positions)
    _write_slice(folder / "again", raws[2], positions[2], "1.2.3.4.5")
    with pytest.raises(DataError, match="duplicate slice position"):
        load_dicom_series(folder)


def test_slice_off_the_line(tmp_path):
    raws, positions = _raw_slices(), _positions()
    row, _ = _orientation()
    positions[3] = positions[3] + 4.0 * row  # shifted in-plane, same depth along the normal
    folder = write_series(tmp_path / "shift", raws, positions)
    with pytest.raises(DataError, match="off the line"):
        load_dicom_series(folder)


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match="empty: no DICOM image slices found"):
        load_dicom_series(tmp_path / "empty")
    sr = Dataset()  # a DICOM object without image geometry (e.g. a report)
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.SeriesInstanceUID = "1.2.3"
    sr.Modality = "SR"
    sr.save_as(tmp_path / "empty" / "report.dcm", enforce_file_format=True)
    with pytest.raises(
        DataError, match="no DICOM image slices found .1 DICOM file.s. lack ImagePositionPatient"
    ):
        load_dicom_series(tmp_path / "empty")
    with pytest.raises(DataError, match="nowhere: DICOM folder not found"):
        load_dicom_series(tmp_path / "nowhere")


def _edit_one(folder, edit) -> Path:
    path = sorted(p for p in folder.rglob("IM*"))[0]
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
    return path


def _mosaic(ds) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]


def _enhanced(ds) -> None:
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.NumberOfFrames = 3
    del ds.ImagePositionPatient  # an enhanced file keeps its positions in per-frame sequences


def _multi_frame(ds) -> None:
    ds.NumberOfFrames = 4


def _no_series(ds) -> None:
    del ds.SeriesInstanceUID


@pytest.mark.parametrize(("edit", "message"), [
    (_mosaic, "not supported: Siemens MOSAIC"),
    (_enhanced, r"not supported: enhanced multi-frame DICOM \(Enhanced CT Image Storage\)"),
    (_multi_frame, r"not supported: enhanced multi-frame DICOM \(4 frames in one file\)"),
    (_no_series, "no SeriesInstanceUID"),
])
def test_unsupported_files_say_what_they_are(tmp_path, edit, message):
    folder = write_series(tmp_path / "series", _raw_slices(), _positions())
    path = _edit_one(folder, edit)
    with pytest.raises(DataError, match=f"{path.name}: {message}"):
        load_dicom_series(folder)


def test_probing_files_that_are_not_dicom_is_silent(tmp_path, capfd, caplog):
    folder = tmp_path / "junk"
    folder.mkdir()
    # A preamble and a UI element with an invalid value: pydicom warns and logs while reading it.
    (folder / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x00abcd" + b"garbage" * 50)
    (folder / "notes.txt").write_text("not an image")
    with warnings.catch_warnings(record=True) as caught, pytest.raises(DataError, match="no DICOM image slices"):
        warnings.simplefilter("always")
        load_dicom_series(folder)
    assert not caught and not caplog.records
    assert capfd.readouterr().err == ""
