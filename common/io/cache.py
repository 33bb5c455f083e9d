"""A preprocessed-volume cache: one `.npy` per case and key, memory-mapped on load, plus `index.json`.

Layout::

    root/
      index.json             {"version": 1, "cases": {case_id: {"keys": {key: {"shape", "dtype"}},
                                                                "affine": 4x4 list | null,
                                                                "meta": {...}}}}
      <case_id>/<key>.npy    one array per key (image, label, ...)

Every file is written atomically and the index is rewritten whole (temp file + rename), so
readers (DataLoader workers, other processes) always see a complete index; writers in several
processes serialise their index updates with a lock file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import DataError
from common.io.atomic import save_json, save_npy, writable_folder
from common.io.lock import exclusive_lock

INDEX_NAME = "index.json"
_LOCK_NAME = ".index.lock"
_VERSION = 1


def _check_name(name: str, what: str) -> str:
    """Reject names that would escape the cache folder or hide files."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"invalid {what} {name!r}: must be a plain, non-hidden file name")
    return name


class VolumeCache:
    """Read and write preprocessed arrays of many cases under one folder.

    Args:
        root: the cache folder (created on first write).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._index: dict[str, Any] | None = None
        self._index_stamp: tuple[int, int, int] | None = None

    # ------------------------------------------------------------------ index

    @property
    def index_path(self) -> Path:
        """Path of `index.json`."""
        return self.root / INDEX_NAME

    def _read_index_file(self) -> dict[str, Any]:
        try:
            with open(self.index_path, encoding="utf-8") as f:
                index = json.load(f)
        except FileNotFoundError:
            return {"version": _VERSION, "cases": {}}
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(self.index_path, f"cache index cannot be read ({err})") from err
        if not isinstance(index, dict) or not isinstance(index.get("cases"), dict):
            raise DataError(self.index_path, "cache index has no 'cases' table")
        return index

    def _cases(self) -> dict[str, Any]:
        """The index's case table, reread only when the file changed (cheap in every worker)."""
        try:
            st = os.stat(self.index_path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if self._index is None or stamp != self._index_stamp:
            self._index = self._read_index_file()
            self._index_stamp = stamp
        return self._index["cases"]

    def _entry(self, case_id: str) -> dict[str, Any]:
        entry = self._cases().get(case_id)
        if entry is None:
            raise DataError(
                self.root / case_id, f"case {case_id!r} is not in the cache index {self.index_path}"
            )
        return entry

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with exclusive_lock(writable_folder(self.root) / _LOCK_NAME, required=True):
            yield

    # ------------------------------------------------------------------ writing

    def write_case(
        self,
        case_id: str,
        arrays: dict[str, np.ndarray],
        affine: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        update: bool = False,
    ) -> Path:
        """Write the arrays of one case and record them in the index.

        Args:
            case_id: case name (a plain file name).
            arrays: `{key: array}`; each becomes `root/<case_id>/<key>.npy`.
            affine: optional `[4, 4]` voxel -> RAS mm affine shared by the case's arrays.
            meta: optional JSON-serialisable metadata (spacing, source file, split...).
            update: merge into an existing entry (other keys, affine and meta are kept unless
                given) instead of replacing it.

        Returns:
            The case folder.
        """
        _check_name(case_id, "case id")
        for key in arrays:
            _check_name(key, "key")
        case_dir = self.root / case_id
        keys: dict[str, dict[str, Any]] = {}
        for key, array in arrays.items():
            array = np.asarray(array)
            save_npy(case_dir / f"{key}.npy", array)
            keys[key] = {"shape": list(array.shape), "dtype": array.dtype.str}
        entry: dict[str, Any] = {
            "keys": keys,
            "affine": None if affine is None else np.asarray(affine, dtype=np.float64).tolist(),
            "meta": dict(meta or {}),
        }
        with self._locked():
            index = self._read_index_file()
            old = index["cases"].get(case_id)
            if update and old is not None:
                entry["keys"] = {**old["keys"], **keys}
                entry["affine"] = old.get("affine") if affine is None else entry["affine"]
                entry["meta"] = {**old.get("meta", {}), **entry["meta"]}
            elif old is not None:
                for stale in set(old["keys"]) - set(keys):
                    (case_dir / f"{stale}.npy").unlink(missing_ok=True)
            index["cases"][case_id] = entry
            index["version"] = _VERSION
            save_json(self.index_path, index, indent=1)
        self._index = None
        return case_dir

    # ------------------------------------------------------------------ reading

    def case_ids(self) -> list[str]:
        """Sorted ids of the cases in the index."""
        return sorted(self._cases())

    def has(self, case_id: str) -> bool:
        """Whether `case_id` is in the index."""
        return case_id in self._cases()

    def __contains__(self, case_id: object) -> bool:
        return isinstance(case_id, str) and self.has(case_id)

    def __len__(self) -> int:
        return len(self._cases())

    def keys(self, case_id: str) -> list[str]:
        """Array keys stored for `case_id`, in write order."""
        return list(self._entry(case_id)["keys"])

    def affine(self, case_id: str) -> np.ndarray | None:
        """The case's float64 `[4, 4]` affine, or None when none was stored."""
        affine = self._entry(case_id).get("affine")
        return None if affine is None else np.asarray(affine, dtype=np.float64)

    def meta(self, case_id: str) -> dict[str, Any]:
        """The case's metadata dict (a copy)."""
        return dict(self._entry(case_id).get("meta") or {})

    def shape(self, case_id: str, key: str) -> tuple[int, ...]:
        """Shape of array `key` of `case_id`, from the index (no file access)."""
        return tuple(self._key_info(case_id, key)["shape"])

    def _key_info(self, case_id: str, key: str) -> dict[str, Any]:
        keys = self._entry(case_id)["keys"]
        if key not in keys:
            raise DataError(self.root / case_id, f"case {case_id!r} has no key {key!r} (has {sorted(keys)})")
        return keys[key]

    def load(self, case_id: str, key: str, mmap: bool = True) -> np.ndarray:
        """Return array `key` of `case_id`.

        Args:
            case_id: a case in the index.
            key: one of :meth:`keys`.
            mmap: memory-map read-only (`np.memmap`, nothing read until used) instead of reading.

        Returns:
            The array with the shape and dtype recorded in the index.

        Raises:
            DataError: unknown case or key, missing, truncated or corrupt `.npy`, or a shape or
                dtype that disagrees with the index.
        """
        info = self._key_info(case_id, key)
        path = self.root / case_id / f"{key}.npy"
        if not path.exists():
            raise DataError(path, "file not found (the cache index lists it)")
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise DataError(path, f"cannot read the array, file truncated or corrupt ({err})") from err
        if list(array.shape) != list(info["shape"]) or array.dtype.str != info["dtype"]:
            raise DataError(
                path,
                f"array is {array.dtype.str} {list(array.shape)} but the index says "
                f"{info['dtype']} {info['shape']} (stale or truncated file)",
            )
        return array
