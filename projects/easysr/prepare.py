"""Isotropic NIfTI volumes (the reference's layout) -> the EasySR volume cache.

Accepted raw layouts under `raw_dir`:

* the reference's split (what `utils/data_splitter.py` leaves behind): `training/*.nii[.gz]` and
  `validation/*.nii[.gz]`, optionally `test/*.nii[.gz]`;
* a flat folder `*.nii[.gz]`, split here with a seeded shuffle (`val_fraction`), files left in place.

Per case the cache holds `hr` and `lr` (float32, the thick axis moved to array axis 1 and the HR cropped to a
multiple of `scale` there), both mapped to [0, 255] by the normaliser fitted on the LR (see `ops.Normaliser`);
its meta holds the split, the source file, the voxel size and the normaliser. Case id = file name before the
first '.', as in the reference.

Command line: `python -m projects.easysr.prepare --raw DIR --cache DIR [--overwrite] [--axis 1] [--scale 3]`
(defaults: `$MEDIMG_DATA/raw/easysr` and `$MEDIMG_DATA/cache/easysr`). Training builds the same cache on first
use when `data.raw_dir` exists, and trains from the cache alone when it does not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io import load_nifti, prepare_lock, scale_axis_affine
from common.io.cache import VolumeCache
from common.prepare import add_renamed_flag, prepare_parser, raw_root
from common.splits import load_split, write_split
from projects.easysr.ops import LAYOUT, Normaliser, make_lr

SPLITS = ("training", "validation", "test")
CACHE_FORMAT = 1
SPLIT_FILE = "splits.json"  # in the cache: which case is training, validation or test
_ISO_RTOL = 0.05
#: The raw data: its folder under `$MEDIMG_DATA/raw`, what `--raw` points at, where it comes from.
RAW_DATASET = "easysr"
RAW_HINT = "<folder with training/ and validation/ NIfTI volumes>"
SOURCE = "no public data set: isotropic NIfTI volumes as in projects/easysr/README.md"


def _nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files of `folder`, without hidden ones (`._x.nii.gz` forks, other writers' temporary files)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.endswith((".nii", ".nii.gz")) and not p.name.startswith("."))


def find_volumes(raw_dir: str | Path, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[Path]]:
    """Returns the NIfTI files of each split (`training`, `validation`, `test`).

    Args:
        raw_dir: a folder in one of the layouts of the module docstring.
        val_fraction: share of a flat folder's files that go to validation (at least one when there are two).
        seed: seed of the flat folder's shuffle.

    Returns:
        `{split: [paths]}`, each list sorted; `test` may be empty.

    Raises:
        DataError: the folder is missing, has no NIfTI file, or two files share a case id.
    """
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise DataError(raw, "raw data folder not found")
    if (raw / "training").is_dir():
        splits = {s: _nifti_files(raw / s) if (raw / s).is_dir() else [] for s in SPLITS}
    else:
        files = _nifti_files(raw)
        order = np.random.default_rng(seed).permutation(len(files))
        n_val = int(round(len(files) * val_fraction)) if len(files) > 1 else 0
        n_val = max(n_val, 1) if len(files) > 1 and val_fraction > 0 else n_val
        val = sorted(files[i] for i in order[:n_val])
        splits = {"training": sorted(files[i] for i in order[n_val:]), "validation": val, "test": []}
    if not splits["training"]:
        raise DataError(raw, "no training NIfTI files (*.nii, *.nii.gz) found")
    ids = [case_id(p) for s in SPLITS for p in splits[s]]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(raw, f"several files share the case id(s) {dup}")
    return splits


def case_id(path: Path) -> str:
    """Returns the case id of a file: its name before the first '.'."""
    return Path(path).name.split(".")[0]


def to_training_pair(hr: np.ndarray, axis: int, scale: int) -> tuple[np.ndarray, np.ndarray, Normaliser]:
    """Returns normalised `(lr, hr, normaliser)` with the thick axis at array axis 1.

    Args:
        hr: float `[X, Y, Z]` isotropic volume.
        axis: array axis made thick.
        scale: integer factor; the HR is cropped at the end of `axis` to a multiple of it.

    Returns:
        float32 LR `[X', n, Z']`, float32 HR `[X', n * scale, Z']` in [0, 255], and the normaliser fitted on the LR.
    """
    hr = LAYOUT.axes(np.eye(4), axis).to_cache(np.asarray(hr, dtype=np.float32), np.eye(4))[0]
    keep = (hr.shape[1] // scale) * scale
    hr = np.ascontiguousarray(hr[:, :keep])
    lr = make_lr(hr, axis=1, scale=scale)
    norm = Normaliser.fit(lr)
    return norm.apply(lr), norm.apply(hr), norm


def _prepare_case(path: Path, split: str, axis: int, scale: int, require_isotropic: bool) -> dict[str, Any]:
    vol = load_nifti(path)
    spacing = np.asarray(vol.spacing)
    if require_isotropic and spacing.max() > spacing.min() * (1 + _ISO_RTOL):
        raise DataError(path, f"training needs isotropic volumes, voxel size is {spacing.round(4).tolist()} mm")
    if vol.shape[axis] < 2 * scale:
        raise DataError(path, f"only {vol.shape[axis]} voxels along axis {axis}; need at least {2 * scale}")
    lr, hr, norm = to_training_pair(vol.data, axis, scale)
    # The cached arrays have the thick axis at position 1: keep the affine of that voxel order.
    order = [a for a in range(3) if a != axis]
    order.insert(1, axis)
    affine = vol.affine.copy()
    affine[:3, :3] = vol.affine[:3, order]
    meta = {"split": split, "source": str(path), "spacing_mm": spacing.tolist(), "axis": axis, "scale": scale,
            "normaliser": norm.to_dict(), "format": CACHE_FORMAT,
            "lr_affine": scale_axis_affine(affine, 1, 1.0 / scale, anchor="extent").tolist()}
    return {"arrays": {"lr": lr, "hr": hr}, "affine": affine, "meta": meta}


def cache_is_current(cache: VolumeCache, splits: dict[str, list[Path]], axis: int, scale: int) -> bool:
    """Whether `cache` already holds every file of `splits` prepared with these settings."""
    for split, paths in splits.items():
        for path in paths:
            cid = case_id(path)
            if cid not in cache:
                return False
            meta = cache.meta(cid)
            if (meta.get("split"), meta.get("axis"), meta.get("scale"), meta.get("format"),
                    meta.get("source")) != (split, axis, scale, CACHE_FORMAT, str(path)):
                return False
    return True


def build_cache(raw_dir: str | Path, cache_dir: str | Path, axis: int = 1, scale: int = 3,
                val_fraction: float = 0.2, seed: int = 0, require_isotropic: bool = True,
                force: bool = False) -> VolumeCache:
    """Writes (or reuses) the cache of every raw volume and returns it.

    Args:
        raw_dir: raw data folder (layouts in the module docstring).
        cache_dir: cache folder.
        axis: array axis of the raw volumes that is made thick (1 in the reference).
        scale: thick/thin slice ratio.
        val_fraction: validation share of a flat raw folder.
        seed: seed of that split.
        require_isotropic: reject volumes whose voxel sizes differ by more than 5%.
        force: rebuild even if the cache is current.

    Returns:
        The :class:`VolumeCache`.

    Raises:
        DataError: any bad raw file (named), or a bad layout.
    """
    splits = find_volumes(raw_dir, val_fraction, seed)
    cache = VolumeCache(cache_dir)
    if not force and cache.index_path.exists() and cache_is_current(cache, splits, axis, scale):
        return cache
    with prepare_lock(cache_dir):  # another node or sweep job may be writing this cache
        if not force and cache.index_path.exists() and cache_is_current(cache, splits, axis, scale):
            return cache
        for split, paths in splits.items():
            for path in paths:
                case = _prepare_case(path, split, axis, scale, require_isotropic)
                cache.write_case(case_id(path), case["arrays"], affine=case["affine"], meta=case["meta"])
        ids = {split: [case_id(p) for p in paths] for split, paths in splits.items()}
        write_split(cache.root / SPLIT_FILE, name="easysr", train=ids["training"], val=ids["validation"],
                    test=ids["test"],
                    source=f"{raw_dir}: its training/ validation/ test/ folders, or a seeded shuffle of a flat folder")
    return cache


def cached_splits(cache: VolumeCache, axis: int, scale: int) -> dict[str, list[str]]:
    """Returns `{split: [case ids]}` of a cache written by `build_cache`, read from its metadata.

    Raises:
        DataError: a case prepared with another axis, scale or cache format.
    """
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for cid in sorted(cache.case_ids()):
        meta = cache.meta(cid)
        if (meta.get("axis"), meta.get("scale"), meta.get("format")) != (axis, scale, CACHE_FORMAT):
            raise DataError(cache.root / cid, f"prepared with axis {meta.get('axis')}, scale {meta.get('scale')}; "
                                              f"this run needs axis {axis}, scale {scale}: prepare again")
        splits.setdefault(str(meta.get("split")), []).append(cid)
    if (cache.root / SPLIT_FILE).is_file():  # the split file prepare writes (common.splits format) is the record
        sets = load_split(cache.root / SPLIT_FILE, available=cache.case_ids())
        return {"training": sets["train"], "validation": sets["val"], "test": sets["test"]}
    return splits  # a cache written before the split file: each case's metadata


def build_parser() -> argparse.ArgumentParser:
    """Returns the command line's parser: the flags every prepare command takes, then the project's own."""
    parser = prepare_parser("easysr", __doc__.splitlines()[0],
                            "raw NIfTI folder (training/ + validation/, or flat)", raw_root(RAW_DATASET))
    parser.add_argument("--axis", type=int, default=1)
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    add_renamed_flag(parser, "--force", "--overwrite", switch=True)
    return parser


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 on bad data)."""
    args = build_parser().parse_args(argv)
    cache = build_cache(args.raw, args.cache, args.axis, args.scale, args.val_fraction, args.seed,
                        force=args.overwrite)
    print(f"{len(cache)} cases in {cache.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
