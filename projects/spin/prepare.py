"""ATLAS R1.2 ``standard_MNI`` tree -> the SPiN volume cache, with integrity checks.

Raw layout (after unzipping ``standard_part1.zip`` and ``standard_part2.zip``)::

    <root>/c00SS/c00SSsNNNNtTT/c00SSsNNNNtTT_t1w_stx.nii.gz
    <root>/c00SS/c00SSsNNNNtTT/c00SSsNNNNtTT_LesionSmooth[_k]_stx.nii.gz   (one or more, OR-combined)

Usage: ``python -m projects.spin.prepare --raw RAW --cache CACHE [--split atlas_traintest] [--overwrite]``
(defaults: ``$MEDIMG_DATA/raw/ATLAS_R1.2/standard_MNI`` and ``$MEDIMG_DATA/cache/spin``). Each scan is
reoriented to RAS+ (a permutation/flip, no resampling), checked (a T1 and at least one mask, equal shapes and
affines, no NaN/Inf), and stored as ``t1`` float32 and ``lesion`` uint8, both ``[Z, X, Y]`` (axial first,
``data.LAYOUT``) with the affine of that array, and ``meta["axes"]`` and per-slice lesion pixel counts in the
metadata.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io.cache import VolumeCache
from common.io.nifti import load_nifti
from common.prepare import add_renamed_flag, prepare_parser, raw_root
from projects.spin.data import LAYOUT
from projects.spin.splits import load_split

SCAN_DIR = re.compile(r"^c\d{4}s\d{4}t\d{2}$")
#: The raw data's folder under `$MEDIMG_DATA/raw`.
RAW_DATASET = "ATLAS_R1.2/standard_MNI"


def find_scans(root: str | os.PathLike) -> dict[str, tuple[Path, list[Path]]]:
    """Returns ``{scan id: (T1 path, [mask paths])}`` for every scan folder under ``root``.

    Raises:
        DataError: ``root`` is missing or holds no scan folder; a scan has no T1 or no LesionSmooth mask.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "ATLAS root folder not found")
    scans = {}
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir() and SCAN_DIR.match(p.name)):
        scan = folder.name
        t1 = [p for p in folder.glob(f"{scan}_t1w_stx.nii*")]
        # not `._x` forks or another writer's hidden temporary files, which `glob("*...")` would match
        masks = sorted(p for p in folder.glob("*LesionSmooth*_stx.nii*") if not p.name.startswith("."))
        if not t1:
            raise DataError(folder, f"scan {scan} has no {scan}_t1w_stx.nii.gz")
        if not masks:
            raise DataError(folder, f"scan {scan} has no *LesionSmooth*_stx.nii.gz mask")
        scans[scan] = (t1[0], masks)
    if not scans:
        raise DataError(root, "no scan folders c00SS/c00SSsNNNNtTT found (is this the standard_MNI tree?)")
    return scans


def load_scan(scan: str, t1_path: Path, mask_paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns ``(t1 float32 [X, Y, Z], lesion uint8 [X, Y, Z], RAS affine)`` of one scan, masks OR-combined.

    Raises:
        DataError: unreadable files, NaN/Inf voxels, or masks whose shape or affine differ from the T1.
    """
    t1 = load_nifti(t1_path, canonical=True)
    lesion = np.zeros(t1.shape, dtype=bool)
    for path in mask_paths:
        mask = load_nifti(path, canonical=True, allow_constant=True)
        if mask.shape != t1.shape:
            raise DataError(path, f"scan {scan}: mask shape {mask.shape} differs from the T1 shape {t1.shape}")
        if not np.allclose(mask.affine, t1.affine, atol=1e-3):
            raise DataError(path, f"scan {scan}: mask affine differs from the T1 affine")
        lesion |= mask.data > 0
    return t1.data.astype(np.float32), lesion.astype(np.uint8), t1.affine


def cache_scan(cache: VolumeCache, scan: str, t1: np.ndarray, lesion: np.ndarray, affine: np.ndarray,
               source: str = "") -> None:
    """Writes one scan (RAS+ ``[X, Y, Z]`` arrays) to the cache in ``data.LAYOUT``, with per-slice lesion counts."""
    t1_axial, cache_affine, axes = LAYOUT.to_cache(np.asarray(t1, dtype=np.float32), affine)
    lesion_axial, _ = axes.to_cache(np.asarray(lesion, dtype=np.uint8), affine)
    meta = {"source": source, "layout": LAYOUT.describe(), "axes": axes.to_meta(), "shape_xyz": list(t1.shape),
            "lesion_px": lesion_axial.reshape(lesion_axial.shape[0], -1).sum(1).astype(int).tolist()}
    cache.write_case(scan, {"t1": t1_axial, "lesion": lesion_axial}, cache_affine, meta)


def prepare(root: str | os.PathLike, cache_dir: str | os.PathLike, only: list[str] | None = None,
            overwrite: bool = False) -> list[str]:
    """Caches every scan under ``root`` (or the listed ones); returns the scan ids written.

    Raises:
        DataError: a listed scan is missing from ``root``, or any scan fails its checks.
    """
    scans = find_scans(root)
    wanted = sorted(scans) if only is None else sorted(only)
    missing = [s for s in wanted if s not in scans]
    if missing:
        raise DataError(root, f"{len(missing)} scans of the split are missing, e.g. {missing[:3]}")
    cache = VolumeCache(cache_dir)
    written = []
    for scan in wanted:
        if scan in cache and not overwrite:
            continue
        t1_path, mask_paths = scans[scan]
        t1, lesion, affine = load_scan(scan, t1_path, mask_paths)
        cache_scan(cache, scan, t1, lesion, affine, str(t1_path))
        written.append(scan)
    return written


def split_scans(split: str) -> list[str]:
    """Returns every scan id of a split file (train and test, or all folds)."""
    data = load_split(split)
    return data["train"] + data["test"] if "train" in data else [s for f in data["folds"] for s in f]


def build_parser() -> argparse.ArgumentParser:
    """Returns the command line's parser: the flags every prepare command takes, then the project's own."""
    parser = prepare_parser("spin", "ATLAS R1.2 standard_MNI -> SPiN volume cache",
                            "folder holding the c00SS/c00SSsNNNNtTT/ scan folders", raw_root(RAW_DATASET))
    parser.add_argument("--split", default=None, help="only the scans of this split (e.g. atlas_traintest)")
    add_renamed_flag(parser, "--root", "--raw")
    return parser


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 on bad input)."""
    args = build_parser().parse_args(argv)
    only = split_scans(args.split) if args.split else None
    written = prepare(args.raw, args.cache, only, args.overwrite)
    print(f"cached {len(written)} scans in {args.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
