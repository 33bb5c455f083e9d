"""NIfTI volumes with their geometry: load with checks, save atomically, and affine helpers.

Conventions:
    * Arrays are indexed like the file (`[i, j, k]`); the 4x4 affine maps `(i, j, k, 1)` to
      world millimetres in RAS+ (x = Right, y = Anterior, z = Superior), as nibabel reports it.
    * The project's canonical orientation (`canonical=True`, :func:`to_canonical`) is nibabel's
      closest canonical orientation: array axes permuted and flipped so that they point as close
      as possible to R, A and S. Obliquity is kept: it is the affine that carries it, the voxels
      are never resampled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from common.errors import DataError
from common.io.atomic import atomic_path

NDimSpec = int | Sequence[int] | None

# Relative tolerance under which two voxel sizes count as equal (through_plane_axis ties).
_SPACING_RTOL = 1e-3


@dataclass
class Volume:
    """A voxel array and the affine that places it in world space.

    Attributes:
        data: voxel array `[i, j, k]` (or `[i, j, k, t]`), any dtype.
        affine: float64 `[4, 4]`, voxel index -> RAS+ millimetres.
        header: the NIfTI header it came from (its affine fields may be stale: `affine` rules).
        path: the file it was read from, if any.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: str | None = None

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial array axis (norms of the affine's columns)."""
        n = min(self.data.ndim, 3)
        return tuple(float(s) for s in voxel_spacing(self.affine)[:n])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the voxel array."""
        return tuple(self.data.shape)


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Return the voxel size in mm along array axes 0, 1, 2.

    Args:
        affine: `[4, 4]` voxel -> world affine.

    Returns:
        float64 `[3]`: the norms of the affine's first three columns.
    """
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def through_plane_axis(affine: np.ndarray) -> int:
    """Return the array axis with the largest voxel size (the slice / through-plane axis).

    Ties (voxel sizes within 0.1% of each other, e.g. an isotropic volume) go to the axis whose
    direction is closest to the world superior-inferior axis (the usual slice axis of an axial
    acquisition); if that is still a tie, to the highest array index.

    Args:
        affine: `[4, 4]` voxel -> world affine; obliquity, flips and permutations are allowed.

    Returns:
        0, 1 or 2.
    """
    spacing = voxel_spacing(affine)
    tied = np.flatnonzero(spacing >= spacing.max() * (1.0 - _SPACING_RTOL))
    if len(tied) == 1:
        return int(tied[0])
    directions = np.asarray(affine, dtype=np.float64)[:3, :3] / spacing
    z_alignment = np.abs(directions[2, tied])
    best = np.flatnonzero(z_alignment >= z_alignment.max() - 1e-9)
    return int(tied[best[-1]])


def scale_axis_affine(
    affine: np.ndarray,
    axis: int,
    factor: float,
    anchor: str = "first",
    size: int | None = None,
) -> np.ndarray:
    """Return the affine of a grid whose voxel size along `axis` is divided by `factor`.

    `factor > 1` is upsampling (more, thinner voxels), `factor < 1` downsampling. Direction
    cosines (obliquity, flips, axis permutations) are kept exactly: only the length of column
    `axis` changes, and the origin moves along that column.

    Anchors:
        * ``"first"``: the centre of voxel 0 stays in place. New voxel `k * factor` lies where old
          voxel `k` was: the slice-interleaving convention (HR index = LR index * factor + phase).
        * ``"extent"``: the outer edge of voxel 0 stays in place, so a grid of `n` voxels resized
          to `n * factor` voxels covers the same field of view. If `size` (the old number of
          voxels `n` along `axis`) is given, the factor actually used is `round(n * factor) / n`,
          so that both outer edges stay exactly for the integer new size.

    Args:
        affine: `[4, 4]` voxel -> world affine (mm).
        axis: array axis to rescale (0, 1 or 2).
        factor: positive scale factor (any float).
        anchor: ``"first"`` or ``"extent"``.
        size: number of voxels along `axis` in the old grid (``"extent"`` only, optional).

    Returns:
        float64 `[4, 4]` affine of the new grid.

    Raises:
        ValueError: bad axis, factor or anchor.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor must be a positive number, got {factor}")
    if anchor not in ("first", "extent"):
        raise ValueError(f"anchor must be 'first' or 'extent', got {anchor!r}")
    old = np.asarray(affine, dtype=np.float64)
    if anchor == "extent" and size is not None:
        factor = max(round(size * factor), 1) / size
    new = old.copy()
    new[:3, axis] = old[:3, axis] / factor
    if anchor == "extent":
        # Old edge at index -0.5 must equal the new edge at index -0.5.
        new[:3, 3] = old[:3, 3] - 0.5 * old[:3, axis] + 0.5 * new[:3, axis]
    return new


def _allowed_ndims(ndim: NDimSpec) -> tuple[int, ...] | None:
    if ndim is None:
        return None
    if isinstance(ndim, int):
        return (ndim,)
    return tuple(int(n) for n in ndim)


def _check_ndim(data: np.ndarray, ndim: NDimSpec, path: Path) -> np.ndarray:
    """Return `data` with trailing singleton non-spatial axes squeezed to fit `ndim`."""
    allowed = _allowed_ndims(ndim)
    if allowed is None:
        return data
    while data.ndim not in allowed and data.ndim > max(3, max(allowed)) and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in allowed:
        want = " or ".join(f"{n}-D" for n in allowed)
        raise DataError(path, f"expected a {want} volume, got {data.ndim}-D with shape {tuple(data.shape)}")
    return data


def _check_affine(affine: np.ndarray, path: str | os.PathLike | None) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise DataError(path, f"affine must be a finite 4x4 matrix, got {affine.tolist()}")
    spacing = voxel_spacing(affine)
    det = abs(np.linalg.det(affine[:3, :3]))
    if np.any(spacing <= 0) or det <= 1e-6 * float(np.prod(spacing)):
        raise DataError(path, f"affine is not invertible (voxel sizes {spacing.round(6).tolist()} mm)")
    return affine


def _check_values(data: np.ndarray, path: Path, allow_constant: bool) -> None:
    if data.size == 0:
        raise DataError(path, f"volume is empty (shape {tuple(data.shape)})")
    if np.issubdtype(data.dtype, np.inexact):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise DataError(path, f"{bad} voxel(s) are NaN or Inf")
    if not allow_constant and data.min() == data.max():
        raise DataError(path, f"volume is constant (every voxel = {data.flat[0]})")


def _read_image(path: Path) -> tuple[nib.Nifti1Pair, np.ndarray]:
    """Open a NIfTI file and read its voxels eagerly, so that corruption is reported here."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, not a NIfTI file")
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types for bad files; all mean "not readable"
        raise DataError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if not isinstance(img, nib.Nifti1Pair):
        raise DataError(path, f"not a NIfTI file (nibabel reads it as {type(img).__name__})")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # truncated gzip: EOFError, zlib.error, OSError, ValueError...
        raise DataError(
            path, f"voxel data cannot be read, file corrupt or truncated ({type(err).__name__}: {err})"
        ) from err
    return img, data


def load_nifti(
    path: str | os.PathLike,
    *,
    dtype: np.dtype | type | None = np.float32,
    ndim: NDimSpec = 3,
    canonical: bool = False,
    allow_constant: bool = False,
) -> Volume:
    """Load a NIfTI volume, check it, and return it with its affine.

    Args:
        path: `.nii` or `.nii.gz` file.
        dtype: dtype of the returned array (None: as stored, after nibabel's slope/intercept).
        ndim: allowed number of dimensions (an int, a tuple of ints, or None for any). A
            trailing singleton axis beyond the third (e.g. `[X, Y, Z, 1]`) is squeezed to fit.
        canonical: reorient to the project's canonical orientation (RAS+, see module doc).
        allow_constant: accept a volume whose voxels all have one value (e.g. an empty mask).

    Returns:
        :class:`Volume` with `data` `[i, j, k]` of `dtype` and a float64 `[4, 4]` RAS affine.

    Raises:
        DataError: missing, unreadable, corrupt or truncated file; wrong dimensionality; NaN or
            Inf voxels; empty or (unless allowed) constant volume; non-invertible affine.
    """
    path = Path(path)
    img, data = _read_image(path)
    data = _check_ndim(data, ndim, path)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    _check_values(data, path, allow_constant)
    affine = _check_affine(img.affine, path)
    volume = Volume(data=data, affine=affine, header=img.header, path=str(path))
    return to_canonical(volume) if canonical else volume


def to_canonical(volume: Volume) -> Volume:
    """Return the volume reoriented to nibabel's closest canonical orientation (RAS+).

    Voxels are only permuted and flipped (no interpolation); the world position of every voxel
    is unchanged.

    Args:
        volume: any :class:`Volume` with at least 3 dimensions.

    Returns:
        A new :class:`Volume` whose array axes point closest to R, A, S (or `volume` itself
        when it already does).
    """
    return _reorient(volume, orientations.axcodes2ornt(("R", "A", "S")))


def reorient_like(volume: Volume, affine: np.ndarray) -> Volume:
    """Return the volume with its axes permuted and flipped to match the orientation of `affine`.

    Use it to bring a label map stored in another axis order or slice direction onto an image's
    array layout. Only flips and permutations are applied (no interpolation), so the world
    position of every voxel is unchanged; when both volumes sample the same grid the returned
    affine equals `affine`.

    Args:
        volume: the volume to reorient, at least 3-D.
        affine: `[4, 4]` affine whose axis orientation is wanted.

    Returns:
        A new :class:`Volume` (or `volume` itself when nothing changes).
    """
    return _reorient(volume, orientations.io_orientation(np.asarray(affine, dtype=np.float64)))


def _reorient(volume: Volume, target: np.ndarray) -> Volume:
    transform = orientations.ornt_transform(orientations.io_orientation(volume.affine), target)
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return volume  # every axis kept in place, unflipped
    data = orientations.apply_orientation(volume.data, transform)
    affine = volume.affine @ orientations.inv_ornt_aff(transform, volume.data.shape)
    header = None
    if volume.header is not None:
        header = _header_for(data, affine, volume.header)
    return Volume(data=np.ascontiguousarray(data), affine=affine, header=header, path=volume.path)


def _header_for(data: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None) -> nib.Nifti1Header:
    """Return a header for `data` whose qform, sform and pixdims all agree with `affine`.

    Other fields of `header` (description, units, intent, TR) are kept; the affine fields and
    any intensity scaling are replaced.
    """
    if header is None:
        out = nib.Nifti1Header()
        out.set_xyzt_units("mm", "sec")
    else:
        out = header.copy()
    qcode = int(out["qform_code"]) or 1
    scode = int(out["sform_code"]) or 1
    out.set_data_dtype(data.dtype)
    out.set_data_shape(data.shape)
    out.set_sform(affine, code=scode)
    # Quaternions cannot hold shears; nibabel then stores the nearest rigid form in the qform.
    out.set_qform(affine, code=qcode)
    out.set_slope_inter(np.nan, np.nan)
    return out


def _output_array(data: np.ndarray, dtype: np.dtype | type | None) -> np.ndarray:
    """Cast to the on-disk dtype ourselves, so nibabel never adds a silent slope/intercept."""
    data = np.asanyarray(data)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.integer) and np.issubdtype(data.dtype, np.floating):
            data = np.rint(data)
        return data.astype(dtype, copy=False)
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype == np.int64 or data.dtype == np.uint64:
        info = np.iinfo(np.int32)
        if data.size and (data.min() < info.min or data.max() > info.max):
            raise ValueError(f"int64 values do not fit int32 (range {data.min()}..{data.max()})")
        return data.astype(np.int32)
    if data.dtype == np.float16:
        return data.astype(np.float32)
    return data


def save_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    dtype: np.dtype | type | None = None,
) -> Path:
    """Write a NIfTI file atomically with a consistent geometry.

    The sform and the qform are both set to `affine` (codes kept from `header` when it has
    them, else 1 = scanner) and the pixdims follow from the affine. A sheared affine (e.g. a
    gantry-tilted CT) cannot be held by a quaternion: the qform then holds nibabel's nearest
    unsheared approximation and the sform stays exact (readers prefer the sform). Other fields of `header`
    (description, xyzt units, intent) are kept, never its affine.

    Args:
        path: destination, ending in `.nii` or `.nii.gz`.
        data: voxel array `[i, j, k]` (or with extra axes). bool is stored as uint8, int64 as
            int32 (when it fits), float16 as float32.
        affine: `[4, 4]` voxel -> RAS mm affine.
        header: optional header whose non-geometric fields are kept.
        dtype: on-disk dtype (float data cast to an integer dtype is rounded first).

    Returns:
        The destination path.

    Raises:
        DataError: bad file extension or non-invertible affine (naming `path`).
    """
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise DataError(path, "a NIfTI file name must end in .nii or .nii.gz")
    affine = _check_affine(affine, path)
    try:
        array = _output_array(data, dtype)
    except ValueError as err:
        raise DataError(path, str(err)) from err
    hdr = _header_for(array, affine, header)
    img = nib.Nifti1Image(array, affine, hdr)
    # The constructor may reset codes; set them again so that the file says exactly what we mean.
    img.set_sform(affine, code=int(hdr["sform_code"]))
    img.set_qform(affine, code=int(hdr["qform_code"]))
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path
