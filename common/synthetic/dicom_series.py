"""Writes a 3-D CT volume as a single-frame DICOM series (CT Image Storage), one file per slice.

Index convention (the one ``common.io.dicom.load_dicom_series`` and dcm2niix use): the volume is
``[column i, row j, slice k]`` and its affine maps ``(i, j, k, 1)`` to RAS mm. Slice ``k`` is stored with
``pixel_array == stored[:, :, k].T`` (rows x columns), ``InstanceNumber = k + 1`` and
``ImagePositionPatient`` = the LPS position of voxel ``(0, 0, k)``, so a NIfTI written with the same
array and affine overlays the series voxel for voxel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from common.errors import DataError
from common.io.atomic import atomic_path

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def dicom_geometry(affine: np.ndarray, where: str | os.PathLike) -> dict[str, np.ndarray]:
    """Returns the DICOM geometry (LPS) of a RAS affine of ``[column, row, slice]`` indices.

    Args:
        affine: float ``[4, 4]`` RAS affine.
        where: the case or file named in errors.

    Returns:
        ``{"orientation": [6], "pixel_spacing": [2] (row, column spacing mm), "step": [3] (LPS mm per
        slice), "origin": [3] (LPS mm)}``.

    Raises:
        DataError: if the in-plane axes are not orthogonal, or the slice axis does not run along the
            slice normal (row cosines x column cosines), which DICOM readers sort by.
    """
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    col_step, row_step, step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    spacing_i, spacing_j = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    if min(spacing_i, spacing_j, float(np.linalg.norm(step))) <= 0:
        raise DataError(where, "affine has a zero-length voxel axis")
    row_cos, col_cos = col_step / spacing_i, row_step / spacing_j
    if abs(float(row_cos @ col_cos)) > 1e-6:
        raise DataError(where, "the first two voxel axes are not orthogonal; DICOM rows and columns must be")
    if float(np.cross(row_cos, col_cos) @ step) <= 0:
        raise DataError(
            where, "slice axis runs against the DICOM slice normal (affine determinant < 0); flip axis 2 first"
        )
    return {
        "orientation": np.concatenate([row_cos, col_cos]),
        "pixel_spacing": np.array([spacing_j, spacing_i]),
        "step": step,
        "origin": lps[:3, 3],
    }


def stored_values(hu: np.ndarray, slope: float, intercept: float, where: str | os.PathLike) -> np.ndarray:
    """Returns the stored pixel values ``(HU - intercept) / slope`` as uint16 when non-negative, else int16.

    Raises:
        DataError: if ``slope`` is not positive or the values do not fit 16 bits.
    """
    if slope <= 0:
        raise DataError(where, f"RescaleSlope must be positive, got {slope}")
    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    low, high = float(stored.min()), float(stored.max())
    if low >= 0 and high <= np.iinfo(np.uint16).max:
        return stored.astype(np.uint16)
    if low >= np.iinfo(np.int16).min and high <= np.iinfo(np.int16).max:
        return stored.astype(np.int16)
    raise DataError(where, f"stored values {low:g}..{high:g} do not fit 16 bits with slope {slope}, intercept {intercept}")


def write_ct_series(
    folder: str | os.PathLike,
    hu: np.ndarray,
    affine: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    slope: float = 1.0,
    intercept: float = -1024.0,
    file_order: np.ndarray | None = None,
) -> list[Path]:
    """Writes ``hu`` as one DICOM file per slice into ``folder`` (each file atomically).

    Args:
        folder: destination folder (created).
        hu: ``[X, Y, Z]`` Hounsfield units indexed ``[column, row, slice]``.
        affine: float ``[4, 4]`` RAS affine of ``hu``.
        patient_id: PatientID and PatientName.
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID (also seeds the per-slice SOPInstanceUIDs).
        slope: RescaleSlope.
        intercept: RescaleIntercept.
        file_order: permutation of ``range(Z)``; slice ``k`` goes to file ``1-{file_order[k] + 1:03d}.dcm``.
            None keeps slice order.

    Returns:
        The written paths, in slice order.

    Raises:
        DataError: bad volume rank, geometry or value range (see :func:`dicom_geometry`).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise DataError(folder, f"a CT series needs a 3-D volume, got shape {hu.shape}")
    geometry = dicom_geometry(affine, folder)
    stored = stored_values(hu, slope, intercept, folder)
    order = np.arange(hu.shape[2]) if file_order is None else np.asarray(file_order)
    if sorted(order.tolist()) != list(range(hu.shape[2])):
        raise DataError(folder, "file_order must be a permutation of the slice indices")
    base = _series_dataset(hu.shape, geometry, patient_id, study_uid, series_uid, slope, intercept, stored.dtype)
    paths = []
    for k in range(hu.shape[2]):
        position = geometry["origin"] + k * geometry["step"]
        path = Path(folder) / f"1-{int(order[k]) + 1:03d}.dcm"
        ds = _slice_dataset(base, k, position, np.ascontiguousarray(stored[:, :, k].T), series_uid)
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths


def _ds(value: float) -> str:
    """A decimal string (VR DS) of at most 16 characters."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6g}"


def _series_dataset(
    shape: tuple[int, ...], geometry: dict[str, np.ndarray], patient_id: str, study_uid: str,
    series_uid: str, slope: float, intercept: float, dtype: np.dtype,
) -> Dataset:
    """The attributes shared by every slice of the series."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame"])
    ds.SeriesNumber = 1
    ds.ImageOrientationPatient = [_ds(v) for v in geometry["orientation"]]
    ds.PixelSpacing = [_ds(v) for v in geometry["pixel_spacing"]]
    ds.SliceThickness = _ds(float(np.linalg.norm(geometry["step"])))
    ds.Rows, ds.Columns = int(shape[1]), int(shape[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if np.dtype(dtype) == np.int16 else 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "HU"
    ds.KVP = "120"
    return ds


def _slice_dataset(base: Dataset, k: int, position: np.ndarray, pixels: np.ndarray, series_uid: str) -> Dataset:
    """One slice: a copy of ``base`` with position, instance number, UIDs and pixel data."""
    ds = base.copy()
    sop_uid = generate_uid(entropy_srcs=[series_uid, str(k)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(float(position[2]))
    ds.PixelData = pixels.tobytes()
    return ds
