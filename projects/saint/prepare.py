"""Medical Segmentation Decathlon CT tasks -> the SAINT volume cache.

Reads `TaskXX_Name/{dataset.json, imagesTr/, imagesTs/}` (labels are not used; macOS `._*` files are skipped),
puts the axial (slice) axis last, rejects volumes with metal artefacts (intensity range above 9000), maps
Hounsfield units to the fixed offset `HU + 1024` clipped to [0, 4000] (uint16), and writes one cache entry per
case: key `image` `[X, Y, Z]`, the affine of that array, and `meta` = spacing (mm), task, source file.

Usage: `python -m projects.saint.prepare --raw ROOT_OR_TASK [...] --cache DIR [--overwrite] [--tasks ...]`
(defaults: `$MEDIMG_DATA/raw/MSD` and `$MEDIMG_DATA/cache/saint`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io.atomic import load_json, save_json
from common.io.cache import VolumeCache
from common.io.nifti import load_nifti, voxel_spacing
from common.prepare import add_renamed_flag, prepare_parser, raw_root
from projects.saint.data import HU_OFFSET, LAYOUT, offset_intensities

log = logging.getLogger(__name__)

PAPER_TASKS = ("Task03_Liver", "Task10_Colon", "Task08_HepaticVessel")
METAL_RANGE = 9000.0
#: The raw data's folder under `$MEDIMG_DATA/raw`.
RAW_DATASET = "MSD"


def find_task_folders(roots: Iterable[str | Path], tasks: Iterable[str] = PAPER_TASKS) -> list[Path]:
    """Returns the MSD task folders named by `roots` (a task folder itself, or a folder holding `Task*/`).

    Args:
        roots: task folders (always used) or folders that hold them.
        tasks: names of the task folders to take from a parent folder (default: the paper's three CT tasks).

    Raises:
        DataError: a root that does not exist or holds no task folder with a `dataset.json`.
    """
    tasks = tuple(tasks)
    folders: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise DataError(root, "not a folder (expected an MSD task folder or a folder of Task*/ folders)")
        if (root / "dataset.json").exists():
            folders.append(root)
            continue
        found = [root / t for t in tasks if (root / t / "dataset.json").exists()]
        if not found:
            raise DataError(root, f"none of the MSD task folders {list(tasks)} (with a dataset.json) is here")
        folders.extend(found)
    return folders


def _dataset_entries(task: Path) -> set[str]:
    """Returns the image paths (relative to the task) that `dataset.json` lists, after checking it parses."""
    path = task / "dataset.json"
    meta = load_json(path, "dataset.json")
    if not isinstance(meta, dict) or "training" not in meta:
        raise DataError(path, "dataset.json has no 'training' list")
    images = [e.get("image") if isinstance(e, dict) else None for e in meta.get("training", [])]
    images += [e if isinstance(e, str) else (e or {}).get("image") for e in meta.get("test", [])]
    return {str(Path(p)) for p in images if p}


def list_task_images(task: Path) -> list[tuple[str, Path]]:
    """Returns `(case_id, path)` of every image in `imagesTr/` and `imagesTs/`, skipping hidden files (`._*`).

    Raises:
        DataError: unreadable `dataset.json`, or an image it lists that is missing.
    """
    listed = _dataset_entries(task)
    images = []
    for sub in ("imagesTr", "imagesTs"):
        for path in sorted((task / sub).glob("*.nii.gz")):
            if not path.name.startswith("."):  # `._x` forks, other writers' temporary files
                images.append((path.name[: -len(".nii.gz")], path))
    present = {str(Path(p.parent.name) / p.name) for _, p in images}
    missing = sorted(p for p in listed if p not in present)
    if missing:
        raise DataError(task / "dataset.json", f"lists {len(missing)} image(s) that are missing, e.g. {missing[0]}")
    return images


def prepare_case(cache: VolumeCache, case_id: str, path: Path, task: str,
                 metal_range: float = METAL_RANGE) -> str:
    """Converts one CT NIfTI into the cache; returns "ok" or the reason it was rejected.

    Raises:
        DataError: unreadable or malformed NIfTI.
    """
    volume = load_nifti(path, dtype=np.float32)
    hu = volume.data
    value_range = float(hu.max() - hu.min())
    if value_range > metal_range:
        return f"metal artefact: intensity range {value_range:.0f} > {metal_range:.0f}"
    data, affine, axes = LAYOUT.to_cache(hu, volume.affine)
    spacing = [float(s) for s in voxel_spacing(affine)]
    cache.write_case(case_id, {"image": offset_intensities(data)}, affine=affine,
                     meta={"spacing": spacing, "task": task, "source": str(path), "hu_offset": HU_OFFSET,
                           "axes": axes.to_meta()})
    return "ok"


def prepare(roots: Iterable[str | Path], out: str | Path, metal_range: float = METAL_RANGE,
            overwrite: bool = False, tasks: Iterable[str] = PAPER_TASKS) -> dict[str, str]:
    """Converts every image of the given MSD tasks; returns `{case_id: status}` (also written to `prepare.json`).

    Args:
        roots: task folders or folders that hold them.
        out: cache folder.
        metal_range: volumes whose max - min exceeds this (HU) are rejected.
        overwrite: redo cases already in the cache.
        tasks: task folder names taken from a parent folder.
    """
    cache = VolumeCache(out)
    report: dict[str, str] = {}
    for task in find_task_folders(roots, tasks):
        for case_id, path in list_task_images(task):
            if case_id in report:
                raise DataError(path, f"case id {case_id!r} appears twice")
            if not overwrite and case_id in cache:
                report[case_id] = "ok (cached)"
                continue
            report[case_id] = prepare_case(cache, case_id, path, task.name, metal_range)
            log.info("%s: %s", case_id, report[case_id])
    save_json(Path(out) / "prepare.json", report)
    return report


def build_parser() -> argparse.ArgumentParser:
    """Returns the command line's parser: the flags every prepare command takes, then the project's own."""
    parser = prepare_parser("saint", __doc__.split("\n")[0], "MSD root(s) holding Task*/ folders, or task folder(s)",
                            raw_root(RAW_DATASET), raw_nargs="+")
    parser.add_argument("--tasks", nargs="+", default=list(PAPER_TASKS), help="task folders to take from a root")
    parser.add_argument("--metal-range", type=float, default=METAL_RANGE)
    add_renamed_flag(parser, "--msd", "--raw", nargs="+")
    add_renamed_flag(parser, "--out", "--cache")
    return parser


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 on bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = prepare(args.raw, args.cache, args.metal_range, args.overwrite, args.tasks)
    rejected = {k: v for k, v in report.items() if not v.startswith("ok")}
    print(f"{len(report) - len(rejected)} case(s) cached in {args.cache}, {len(rejected)} rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
