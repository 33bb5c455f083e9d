"""NIH Pancreas-CT or MSD Task07_Pancreas (or synthetic CT) -> the shared volume cache, plus the fold split.

Cache layout (one case per entry of `common.io.cache.VolumeCache`):
- `image`: float16 [R, C, S], CT windowed to HU [-100, 240] and scaled to [0, 1];
- `label`: uint8 [R, C, S], 1 = pancreas;
- affine: the source affine with its first two columns swapped, because the arrays are stored in the
  reference's DICOM order (row, column, slice) rather than NIfTI's (column, row, slice); planes X, Y, Z are
  array axes 0, 1, 2 of this layout (coronal, sagittal, axial for an axial acquisition).
`data.LAYOUT` (`common.io.layout`) maps both ways, so masks are written on the CT grid with the CT's own affine.

Usage (defaults: `--raw $MEDIMG_DATA/raw/Pancreas-CT` or `raw/MSD/Task07_Pancreas`, `--cache
$MEDIMG_DATA/cache/rstn/<layout>`, the folder `conf/rstn/data/<layout>.yaml` reads):
    python -m projects.rstn.prepare --raw DATA/raw/Pancreas-CT --cache DATA/cache/rstn/nih [--layout nih]
    python -m projects.rstn.prepare --raw DATA/raw/MSD/Task07_Pancreas --cache DATA/cache/rstn/msd --layout msd
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io.cache import VolumeCache
from common.io.dicom import load_dicom_series
from common.io.lock import prepare_lock
from common.io.nifti import Volume, load_nifti, reorient_like
from common.prepare import add_renamed_flag, cache_root, prepare_parser, raw_root
from common.splits import write_split as save_split
from projects.rstn.data import LAYOUT, WINDOW, window

log = logging.getLogger(__name__)

SPLIT_DIR = Path(__file__).resolve().parent / "splits"
NIH_SPLIT = SPLIT_DIR / "nih_pancreas_folds.json"
#: The raw data of each layout: its folder under `$MEDIMG_DATA/raw`.
RAW_DATASETS = {"nih": "Pancreas-CT", "msd": "MSD/Task07_Pancreas"}


def fold_split(case_ids: Sequence[str], n_folds: int = 4) -> list[list[str]]:
    """Returns `n_folds` consecutive blocks of the sorted ids; the last `len % n_folds` blocks take one more.

    With the 82 NIH cases: 1-20, 21-40, 41-61, 62-82, the reference's folds.
    """
    ids = sorted(case_ids)
    base, extra = divmod(len(ids), n_folds)
    folds, start = [], 0
    for fold in range(n_folds):
        size = base + (1 if fold >= n_folds - extra else 0)
        folds.append(ids[start:start + size])
        start += size
    return folds


def write_split(path: str | Path, folds: list[list[str]], source: str) -> None:
    """Writes the split file of a cache (`common.splits` format: `source`, `folds`) atomically."""
    save_split(path, folds=folds, source=source)


def store_case(cache: VolumeCache, case_id: str, hu: Volume, label: np.ndarray, source: str,
               foreground: Sequence[int] = (1,)) -> None:
    """Windows and stores one case (NIfTI-ordered HU volume and label on the same grid) in the cache.

    Raises:
        DataError: the label does not have the image's shape.
    """
    if label.shape != hu.data.shape:
        raise DataError(source, f"label shape {label.shape} differs from image shape {hu.data.shape}")
    image, affine, axes = LAYOUT.to_cache(window(hu.data), hu.affine)
    mask, _ = axes.to_cache(np.isin(label, list(foreground)).astype(np.uint8), hu.affine)
    cache.write_case(case_id, {"image": image, "label": mask}, affine=affine,
                     meta={"source": source, "layout": "row,col,slice", "axes": axes.to_meta(),
                           "window_hu": list(WINDOW), "foreground_voxels": int(mask.sum())})


def _label_on_grid(label_path: Path, image: Volume, label_layout: str) -> np.ndarray:
    """Returns the label array on the image grid: reoriented by affine, or taken as stored ("array")."""
    label = load_nifti(label_path, dtype=np.float32)
    if label_layout == "affine":
        label = reorient_like(label, image.affine)
    elif label_layout != "array":
        raise ValueError(f"label_layout must be 'affine' or 'array', got {label_layout!r}")
    return np.rint(label.data).astype(np.int16)


def find_nih_cases(src: Path) -> list[tuple[str, Path, Path]]:
    """Returns (case id "00XX", DICOM folder, label file) for every `PANCREAS_00XX` folder under `src`.

    Raises:
        DataError: no case folder, or a case without its `label00XX.nii.gz`.
    """
    labels = {m.group(1): p for p in src.rglob("label*.nii*") if (m := re.fullmatch(r"label(\d+)\.nii(\.gz)?", p.name))}
    cases = []
    for folder in sorted(p for p in src.rglob("PANCREAS_*") if p.is_dir()):
        case_id = folder.name.split("_", 1)[1]
        if case_id not in labels:
            raise DataError(folder, f"no label{case_id}.nii.gz found under {src}")
        cases.append((case_id, folder, labels[case_id]))
    if not cases:
        raise DataError(src, "no PANCREAS_00XX folders (NIH Pancreas-CT layout) found")
    return cases


def find_msd_cases(src: Path) -> list[tuple[str, Path, Path]]:
    """Returns (case id, image, label) for every `imagesTr/*.nii.gz` of an MSD task folder.

    Raises:
        DataError: no `imagesTr` folder, no images, or an image without its label.
    """
    images_dir = src / "imagesTr"
    if not images_dir.is_dir():
        raise DataError(src, "not an MSD task folder (no imagesTr/)")
    cases = []
    for image in sorted(images_dir.glob("*.nii.gz")):
        if image.name.startswith("._"):  # macOS resource forks shipped inside the MSD archives
            continue
        label = src / "labelsTr" / image.name
        if not label.is_file():
            raise DataError(image, f"no label {label}")
        cases.append((image.name.removesuffix(".nii.gz"), image, label))
    if not cases:
        raise DataError(images_dir, "no .nii.gz images")
    return cases


def prepare_nih(src: str | Path, cache_root: str | Path, label_layout: str = "affine",
                overwrite: bool = False) -> list[str]:
    """Caches every NIH Pancreas-CT case (DICOM series with rescale slope/intercept applied, label == 1).

    Returns:
        The case ids in the cache, those already there (kept unless `overwrite`) included.
    """
    cache = VolumeCache(cache_root)
    done = []
    for case_id, folder, label_path in find_nih_cases(Path(src)):
        if case_id in cache and not overwrite:
            done.append(case_id)
            continue
        image = load_dicom_series(folder)
        store_case(cache, case_id, image, _label_on_grid(label_path, image, label_layout), str(folder))
        done.append(case_id)
        log.info("cached NIH case %s", case_id)
    return done


def prepare_msd(src: str | Path, cache_root: str | Path, n_folds: int = 4, overwrite: bool = False) -> list[str]:
    """Caches every MSD Task07 case (pancreas and tumour both count as pancreas) and writes `splits.json`.

    Returns:
        The case ids in the cache, those already there (kept unless `overwrite`) included.
    """
    cache = VolumeCache(cache_root)
    done = []
    for case_id, image_path, label_path in find_msd_cases(Path(src)):
        if case_id in cache and not overwrite:
            done.append(case_id)
            continue
        image = load_nifti(image_path, dtype=np.float32)
        store_case(cache, case_id, image, _label_on_grid(label_path, image, "affine"), str(image_path),
                   foreground=(1, 2))
        done.append(case_id)
        log.info("cached MSD case %s", case_id)
    write_split(Path(cache_root) / "splits.json", fold_split(done, n_folds), f"MSD {Path(src).name}")
    return done


def prepare_synthetic(cache_root: str | Path, n_cases: int, shape: Sequence[int], seed: int = 0,
                      n_folds: int = 4) -> list[str]:
    """Caches `n_cases` synthetic CT-like abdomens (`common.synthetic.ct_abdomen`) and writes `splits.json`.

    Returns:
        The case ids ("synth000", ...).
    """
    from common.synthetic.ct import CT_LABELS, ct_abdomen

    cache = VolumeCache(cache_root)
    ids = [f"synth{i:03d}" for i in range(n_cases)]
    with prepare_lock(cache_root):  # another node or sweep job may be writing this cache
        for i, case_id in enumerate(ids):
            if not cache.has(case_id):
                hu, organ, affine = ct_abdomen(seed + i, shape=tuple(shape))
                store_case(cache, case_id, Volume(hu, affine), organ, f"ct_abdomen(seed={seed + i})",
                           foreground=(CT_LABELS["pancreas"],))
        write_split(Path(cache_root) / "splits.json", fold_split(ids, n_folds), "synthetic")
    return ids


def default_paths(layout: str) -> tuple[Path, Path]:
    """Returns `(--raw, --cache)` of a layout when not given: `raw/<data set>` and `cache/rstn/<layout>`."""
    return raw_root(RAW_DATASETS[layout]), cache_root("rstn") / layout


def build_parser() -> argparse.ArgumentParser:
    """Returns the command line's parser: the flags every prepare command takes, then the project's own."""
    parser = prepare_parser("rstn", __doc__.split("\n", 1)[0],
                            "NIH folder (PANCREAS_00XX + labels) or MSD Task07_Pancreas folder", None, "")
    parser.add_argument("--layout", choices=list(RAW_DATASETS), default="nih", help="the raw data set (default: nih)")
    parser.add_argument("--label-layout", choices=["affine", "array"], default="affine",
                        help="NIH: align labels by their affine, or take the array as stored")
    add_renamed_flag(parser, "--src", "--raw")
    return parser


@exit_code_on_data_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 on bad input)."""
    args = build_parser().parse_args(argv)
    raw, cache = default_paths(args.layout)
    raw, cache = args.raw or raw, args.cache or cache
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.layout == "nih":
        ids = prepare_nih(raw, cache, args.label_layout, overwrite=args.overwrite)
    else:
        ids = prepare_msd(raw, cache, overwrite=args.overwrite)
    print(f"cached {len(ids)} cases in {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
