"""Shared readers and writers: NIfTI, DICOM, fastMRI HDF5, the npy volume cache, atomic writes,
a lock for folders that several processes prepare."""

from __future__ import annotations

from common.io.atomic import atomic_path, load_json, save_json, save_npy, save_text
from common.io.cache import VolumeCache
from common.io.dicom import load_dicom_series
from common.io.fastmri import (
    FastMRIFile,
    FastMRIHeader,
    header_to_xml,
    parse_header_xml,
    read_header,
    read_reconstruction,
    validate_fastmri_file,
    write_fastmri_volume,
    write_reconstructions,
)
from common.io.lock import prepare_lock
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

__all__ = [
    "FastMRIFile",
    "FastMRIHeader",
    "header_to_xml",
    "parse_header_xml",
    "read_header",
    "read_reconstruction",
    "reorient_like",
    "validate_fastmri_file",
    "write_fastmri_volume",
    "write_reconstructions",
    "Volume",
    "VolumeCache",
    "atomic_path",
    "load_dicom_series",
    "load_nifti",
    "load_json",
    "prepare_lock",
    "save_json",
    "save_nifti",
    "save_npy",
    "save_text",
    "scale_axis_affine",
    "through_plane_axis",
    "to_canonical",
    "voxel_spacing",
]
