"""fastMRI single-coil folders -> a validated slice index (`<cache_dir>/<split>.json`).

The k-space stays in the original HDF5 files (read lazily per slice, reopened per DataLoader worker);
what is cached is the checked list of volumes with the header fields and attributes the transforms
need, so a corrupt or truncated file is reported once, by name, before training starts.

    python -m projects.fastmri_gen.prepare --raw DIR --cache DIR [--overwrite] [--splits singlecoil_val]

(defaults: `$MEDIMG_DATA/raw/fastmri`, the folder `conf/fastmri_gen/data/knee.yaml` reads, and
`$MEDIMG_DATA/cache/fastmri_gen`). Training builds a missing index on first use, so this is a check ahead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io import FastMRIFile, save_json, validate_fastmri_file
from common.prepare import add_renamed_flag, prepare_parser, raw_root

SPLITS = ("singlecoil_train", "singlecoil_val", "singlecoil_test")
INDEX_VERSION = 1
#: The raw data: its folder under `$MEDIMG_DATA/raw`, and where it comes from.
RAW_DATASET = "fastmri"
SOURCE = "fastMRI single-coil knee, https://fastmri.med.nyu.edu, unpacked in --raw as singlecoil_train/ etc."


def volume_record(path: Path, require_target: bool) -> dict[str, Any]:
    """Return the index record of one volume file after validating its layout.

    Args:
        path: a fastMRI `.h5` file.
        require_target: the split has targets (`reconstruction_esc`), so they must be present.

    Returns:
        `{"file", "slices", "width", "encoding_size", "recon_size", "padding_left", "padding_right",
        "attrs"}` with JSON-serialisable values.

    Raises:
        DataError: the file is unreadable/truncated or lacks `kspace`, header or target.
    """
    header = validate_fastmri_file(path, require_target="reconstruction_esc" if require_target else False)
    with FastMRIFile(path) as volume:
        attrs = {k: v for k, v in volume.attrs.items() if isinstance(v, (int, float, str))}
        width = int(volume.kspace(0).shape[-1])
        slices = volume.num_slices
    return {"file": path.name, "slices": slices, "width": width,
            "encoding_size": list(header.encoding_size), "recon_size": list(header.recon_size),
            "padding_left": header.padding_left, "padding_right": header.padding_right, "attrs": attrs}


def build_index(folder: str | os.PathLike, require_target: bool = True) -> list[dict[str, Any]]:
    """Return the records of every `.h5` volume in `folder`, sorted by file name.

    Raises:
        DataError: the folder is missing or empty, or one file is invalid (named in the message).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "fastMRI split folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".h5" and not p.name.startswith("."))
    if not files:
        raise DataError(folder, "no .h5 volumes in this folder")
    return [volume_record(path, require_target) for path in files]


def load_or_build_index(folder: str | os.PathLike, cache_dir: str | os.PathLike | None,
                        require_target: bool = True, overwrite: bool = False) -> list[dict[str, Any]]:
    """Return the index of `folder`, read from `<cache_dir>/<name>.json` when it is up to date.

    The cached index is reused when it names the same files with the same sizes and modification
    times (and `overwrite` is off); otherwise it is rebuilt and rewritten atomically.
    """
    folder = Path(folder)
    if cache_dir is None:
        return build_index(folder, require_target)
    stamp = {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in sorted(folder.glob("*.h5"))}
    cache = Path(cache_dir) / f"{folder.name}.json"
    if cache.is_file() and not overwrite:
        cached = json.loads(cache.read_text())
        if cached.get("version") == INDEX_VERSION and cached.get("stamp") == stamp:
            return cached["volumes"]
    volumes = build_index(folder, require_target)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_json(cache, {"version": INDEX_VERSION, "folder": str(folder), "stamp": stamp, "volumes": volumes})
    return volumes


def write_synthetic_tree(root: str | os.PathLike, train_volumes: int = 12, val_volumes: int = 4, slices: int = 8,
                         size: int = 64, seed: int = 0, test_volumes: int = 0, holdout_volumes: int = 0) -> Path:
    """Write synthetic single-coil volumes in the public fastMRI layout under `root`; returns `root`.

    Magnitudes from `common.synthetic.knee_images`, k-space from `single_coil_kspace` (smooth phase,
    noise, readout oversampled x2, about 15 % extra phase-encoding columns as in the real data).

    Args:
        root: receives `singlecoil_train/`, `singlecoil_val/` (and `singlecoil_test/` when asked).
        train_volumes / val_volumes / test_volumes: volumes per split (the test split gets targets
            too, unlike the public one); `holdout_volumes` go to `singlecoil_holdout/` (same layout as
            the validation split), for scoring after model selection on the validation split.
        slices: slices per volume.
        size: target rows and columns (e.g. 64; 320 is the real recon size).
        seed: base seed; volume v of split s uses its own seed.
    """
    from common.synthetic import knee_images, single_coil_kspace, write_fastmri_singlecoil

    root = Path(root)
    counts = {"singlecoil_train": train_volumes, "singlecoil_val": val_volumes, "singlecoil_test": test_volumes,
              "singlecoil_holdout": holdout_volumes}
    for split_no, (split, count) in enumerate(counts.items()):
        volumes = {}
        for v in range(count):
            volume_seed = seed + 1000 * split_no + v
            images = knee_images(seed=volume_seed, n_slices=slices, size=(size, size))
            volumes[f"file{1_000_000 + 100_000 * split_no + v}.h5"] = single_coil_kspace(images, seed=volume_seed)
        if volumes:
            write_fastmri_singlecoil(root, split, volumes)
    return root


def build_parser() -> argparse.ArgumentParser:
    """Returns the command line's parser: the flags every prepare command takes, then the project's own."""
    parser = prepare_parser("fastmri_gen", __doc__.splitlines()[0],
                            "fastMRI folder holding singlecoil_train/, singlecoil_val/, singlecoil_test/",
                            raw_root(RAW_DATASET))
    parser.add_argument("--splits", nargs="+", default=list(SPLITS))
    parser.add_argument("--synthetic", action="store_true", help="first write a small synthetic tree in --raw")
    add_renamed_flag(parser, "--data-dir", "--raw")
    add_renamed_flag(parser, "--cache-dir", "--cache")
    return parser


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    """Command-line entry: index the split folders that exist under `--raw`."""
    args = build_parser().parse_args(argv)
    raw = Path(args.raw)
    if args.synthetic:
        write_synthetic_tree(raw)
    if not raw.is_dir():
        raise DataError(raw, "data folder not found")
    if not any((raw / split).is_dir() for split in args.splits):
        raise DataError(raw, f"none of the split folders {args.splits} is here")
    for split in args.splits:
        folder = raw / split
        if not folder.is_dir():
            print(f"{folder}: absent, skipped")
            continue
        volumes = load_or_build_index(folder, args.cache, split != "singlecoil_test", args.overwrite)
        print(f"{split}: {len(volumes)} volumes, {sum(v['slices'] for v in volumes)} slices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
