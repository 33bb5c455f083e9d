"""fastMRI single-coil folders -> a validated slice index (`<cache_dir>/<split>.json`).

The k-space stays in the original HDF5 files (read lazily per slice, reopened per DataLoader worker);
what is cached is the checked list of volumes with the header fields and attributes the transforms
need, so a corrupt or truncated file is reported once, by name, before training starts.

    python -m projects.fastmri_gen.prepare --data-dir DATA --cache-dir CACHE [--splits singlecoil_val]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from common.errors import DataError
from common.io import FastMRIFile, save_json, validate_fastmri_file

SPLITS = ("singlecoil_train", "singlecoil_val", "singlecoil_test")
INDEX_VERSION = 1


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
                        require_target: bool = True) -> list[dict[str, Any]]:
    """Return the index of `folder`, read from `<cache_dir>/<name>.json` when it is up to date.

    The cached index is reused when it names the same files with the same sizes and modification
    times; otherwise it is rebuilt and rewritten atomically.
    """
    folder = Path(folder)
    if cache_dir is None:
        return build_index(folder, require_target)
    stamp = {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in sorted(folder.glob("*.h5"))}
    cache = Path(cache_dir) / f"{folder.name}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("version") == INDEX_VERSION and cached.get("stamp") == stamp:
            return cached["volumes"]
    volumes = build_index(folder, require_target)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_json(cache, {"version": INDEX_VERSION, "folder": str(folder), "stamp": stamp, "volumes": volumes})
    return volumes


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: index the split folders that exist under `--data-dir`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS))
    args = parser.parse_args(argv)
    try:
        for split in args.splits:
            folder = args.data_dir / split
            if not folder.is_dir():
                print(f"{folder}: absent, skipped")
                continue
            volumes = load_or_build_index(folder, args.cache_dir, require_target=split != "singlecoil_test")
            print(f"{split}: {len(volumes)} volumes, {sum(v['slices'] for v in volumes)} slices")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
