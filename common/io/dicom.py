"""DICOM series -> :class:`~common.io.nifti.Volume` with a RAS affine, sorted by geometry.

Slices are ordered by their position along the slice normal (row cosines x column cosines,
dotted with ImagePositionPatient), never by InstanceNumber or file order. The returned array is
indexed `[column i, row j, slice k]`, like a NIfTI file converted from the same series, and the
affine maps `(i, j, k, 1)` to RAS millimetres (DICOM's LPS with x and y negated).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from common.errors import DataError
from common.io.nifti import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
_DIRECTION_ATOL = 1e-4
_SPACING_ATOL_MM = 1e-3
# Enhanced (multi-frame) image storage: one file holds a whole stack, its geometry in per-frame sequences.
_ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
}


@dataclass
class _Slice:
    path: Path
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient: row cosines (3), column cosines (3)
    pixel_spacing: np.ndarray  # [between rows, between columns], mm
    rows: int
    columns: int
    series_uid: str
    description: str


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences pydicom's warnings and log lines while probing files that may not be DICOM at all."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _read_header(path: Path) -> pydicom.Dataset | None:
    """Return the header of a DICOM file, or None for a file that is not DICOM."""
    with _quiet():
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            pass  # maybe a file without the 128-byte preamble: try once more without the check
        except Exception:  # noqa: BLE001 - an unreadable non-DICOM file is simply not part of a series
            return None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - same as above
            return None
    return ds if "SOPClassUID" in ds or ("SeriesInstanceUID" in ds and "ImagePositionPatient" in ds) else None


def _unsupported(ds: pydicom.Dataset) -> str | None:
    """Returns why an image file cannot be read as one slice of a series, or None when it can."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "MOSAIC" in image_type:
        return "not supported: Siemens MOSAIC (several slices tiled in one image); convert it with dcm2niix first"
    sop_class = str(ds.get("SOPClassUID", ""))
    frames = ds.get("NumberOfFrames")
    if sop_class in _ENHANCED_SOP_CLASSES or (frames is not None and int(frames) > 1):
        kind = _ENHANCED_SOP_CLASSES.get(sop_class, f"{frames} frames in one file")
        return f"not supported: enhanced multi-frame DICOM ({kind}); convert it with dcm2niix first"
    if "SeriesInstanceUID" not in ds and "Rows" in ds:
        return "no SeriesInstanceUID: the image cannot be assigned to a series"
    return None


def _as_slice(path: Path, ds: pydicom.Dataset) -> _Slice | None:
    """Return the geometry of an image slice, or None for a non-image object (DICOMDIR, SR, ...)."""
    if any(tag not in ds for tag in _GEOMETRY_TAGS) or "SeriesInstanceUID" not in ds:
        return None
    try:
        return _Slice(
            path=path,
            position=np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64),
            orientation=np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64),
            pixel_spacing=np.asarray([float(v) for v in ds.PixelSpacing], dtype=np.float64),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            series_uid=str(ds.SeriesInstanceUID),
            description=str(ds.get("SeriesDescription", "")),
        )
    except (TypeError, ValueError) as err:
        raise DataError(path, f"malformed geometry tags ({err})") from err


def _scan_folder(folder: Path) -> tuple[dict[str, list[_Slice]], int]:
    """Read every DICOM header below `folder`; group the image slices by series.

    Returns:
        `{series_uid: slices}` and the number of DICOM files without image geometry.
    """
    series: dict[str, list[_Slice]] = {}
    without_geometry = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":  # `._x` forks, temporary files
                continue
            path = Path(root) / name
            ds = _read_header(path)
            if ds is None:
                continue
            reason = _unsupported(ds)
            if reason is not None:
                raise DataError(path, reason)
            entry = _as_slice(path, ds)
            if entry is None:
                without_geometry += 1
            else:
                series.setdefault(entry.series_uid, []).append(entry)
    return series, without_geometry


def _choose_series(folder: Path, series_uid: str | None) -> list[_Slice]:
    series, without_geometry = _scan_folder(folder)

    def listing() -> str:
        return "; ".join(
            f"{uid} ({len(s)} slices, {s[0].description!r})" for uid, s in sorted(series.items())
        )

    if not series:
        extra = (
            f" ({without_geometry} DICOM file(s) lack {'/'.join(_GEOMETRY_TAGS)})" if without_geometry else ""
        )
        raise DataError(folder, f"no DICOM image slices found{extra}")
    if series_uid is not None:
        if series_uid not in series:
            raise DataError(folder, f"series {series_uid} not found; series present: {listing()}")
        return series[series_uid]
    if len(series) > 1:
        raise DataError(folder, f"{len(series)} series found, pass series_uid to choose one: {listing()}")
    return next(iter(series.values()))


def _check_consistent(slices: list[_Slice]) -> None:
    first = slices[0]
    for s in slices[1:]:
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise DataError(
                s.path, f"{s.rows}x{s.columns} pixels, but {first.path.name} has {first.rows}x{first.columns}"
            )
        if not np.allclose(s.orientation, first.orientation, atol=_DIRECTION_ATOL):
            raise DataError(
                s.path, f"ImageOrientationPatient {s.orientation.tolist()} differs from {first.path.name}"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, atol=_SPACING_ATOL_MM):
            raise DataError(
                s.path,
                f"PixelSpacing {s.pixel_spacing.tolist()} differs from {first.pixel_spacing.tolist()} "
                f"in {first.path.name}",
            )


def _slice_normal(orientation: np.ndarray, path: Path) -> np.ndarray:
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise DataError(
            path, f"ImageOrientationPatient {orientation.tolist()} is not two orthonormal vectors"
        )
    return normal / np.linalg.norm(normal)


def _sort_and_check_spacing(slices: list[_Slice], tolerance: float) -> tuple[list[_Slice], np.ndarray]:
    """Sort slices along the normal; return them and the mean step vector (LPS mm).

    For a single slice there is no step: the unit normal is returned in its place.
    """
    normal = _slice_normal(slices[0].orientation, slices[0].path)
    slices = sorted(slices, key=lambda s: float(normal @ s.position))
    depth = np.array([normal @ s.position for s in slices])
    steps = np.diff(depth)
    for n, step in enumerate(steps):
        if step < _SPACING_ATOL_MM:
            raise DataError(
                slices[n + 1].path,
                f"duplicate slice position {depth[n + 1]:.3f} mm along the normal (same as {slices[n].path.name})",
            )
    if len(slices) < 2:
        return slices, normal
    expected = float(np.median(steps))
    for n, step in enumerate(steps):
        if abs(step - expected) > tolerance * expected + _SPACING_ATOL_MM:
            missing = int(round(step / expected)) - 1
            what = f"{missing} missing slice(s)" if missing >= 1 else "non-uniform slice spacing"
            raise DataError(
                slices[n + 1].path,
                f"{what}: gap of {step:.3f} mm between {slices[n].path.name} and {slices[n + 1].path.name} "
                f"(positions {depth[n]:.3f} and {depth[n + 1]:.3f} mm along the normal), expected {expected:.3f} mm",
            )
    step_vector = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    for k, s in enumerate(slices):
        off_line = float(np.linalg.norm(s.position - (slices[0].position + k * step_vector)))
        if off_line > tolerance * expected + _SPACING_ATOL_MM:
            raise DataError(
                s.path, f"slice position is {off_line:.3f} mm off the line through the other slices"
            )
    return slices, step_vector


def _single_slice_step(path: Path, normal: np.ndarray) -> np.ndarray:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    thickness = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0)
    return normal * thickness


def _pixels(s: _Slice) -> tuple[np.ndarray, float, float]:
    """Return the raw pixel array `[rows, columns]` and the slice's rescale slope and intercept."""
    try:
        ds = pydicom.dcmread(s.path, force=True)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DataError(s.path, "multi-frame DICOM is not supported (one slice per file expected)")
        raw = ds.pixel_array
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - decoders raise many types; all mean "cannot decode"
        raise DataError(s.path, f"cannot read pixel data ({type(err).__name__}: {err})") from err
    if raw.shape != (s.rows, s.columns):
        raise DataError(
            s.path, f"pixel array has shape {raw.shape}, expected ({s.rows}, {s.columns}) grey levels"
        )
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return raw, slope, intercept


def _affine(first: _Slice, step: np.ndarray) -> np.ndarray:
    """RAS affine of `[column i, row j, slice k]` indices."""
    row_cos, col_cos = first.orientation[:3], first.orientation[3:]
    lps = np.eye(4)
    lps[:3, 0] = row_cos * first.pixel_spacing[1]  # i: along a row, one column spacing per step
    lps[:3, 1] = col_cos * first.pixel_spacing[0]  # j: down a column, one row spacing per step
    lps[:3, 2] = step
    lps[:3, 3] = first.position
    return LPS_TO_RAS @ lps


def load_dicom_series(
    folder: str | os.PathLike,
    *,
    series_uid: str | None = None,
    dtype: np.dtype | type | None = np.float32,
    spacing_tolerance: float = 0.05,
) -> Volume:
    """Load one DICOM series from a folder (searched recursively) as a volume with a RAS affine.

    Non-DICOM files, `._*` files, DICOMDIR and non-image objects are skipped. RescaleSlope and
    RescaleIntercept are applied per slice (CT values come out in HU). With a gantry tilt the
    slice step is not parallel to the normal and the affine is sheared, which keeps every
    voxel's true position.

    Args:
        folder: folder holding the series' files (subfolders included).
        series_uid: SeriesInstanceUID to load when the folder holds several series.
        dtype: output dtype; None keeps integers (int16/int32) when the rescale is integral,
            else float32.
        spacing_tolerance: allowed relative deviation of a slice step from the median step.

    Returns:
        :class:`Volume` with data `[columns, rows, slices]` and a float64 `[4, 4]` RAS affine;
        `path` is the folder, `header` None.

    Raises:
        DataError: missing folder, no or several series, slices differing in size, orientation
            or pixel spacing, duplicate positions, a missing slice or irregular spacing, or
            undecodable pixel data; the message names the folder or file at fault.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "DICOM folder not found" if not folder.exists() else "not a folder")
    slices = _choose_series(folder, series_uid)
    _check_consistent(slices)
    slices, step = _sort_and_check_spacing(slices, spacing_tolerance)
    if len(slices) == 1:
        step = _single_slice_step(slices[0].path, step)
    pixels = [_pixels(s) for s in slices]
    data = np.empty((slices[0].columns, slices[0].rows, len(slices)), dtype=_output_dtype(pixels, dtype))
    for k, (raw, slope, intercept) in enumerate(pixels):
        data[:, :, k] = (raw.astype(np.float64) * slope + intercept).T
    return Volume(data=data, affine=_affine(slices[0], step), header=None, path=str(folder))


def _output_dtype(pixels: list[tuple[np.ndarray, float, float]], dtype: np.dtype | type | None) -> np.dtype:
    """The requested dtype, or the smallest integer type that holds an integral rescale exactly."""
    if dtype is not None:
        return np.dtype(dtype)
    if not all(float(slope).is_integer() and float(inter).is_integer() for _, slope, inter in pixels):
        return np.dtype(np.float32)
    ends = [float(v) * slope + inter for raw, slope, inter in pixels for v in (raw.min(), raw.max())]
    info16 = np.iinfo(np.int16)
    return np.dtype(np.int16 if min(ends) >= info16.min and max(ends) <= info16.max else np.int32)
